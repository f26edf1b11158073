//! The terms of the log's newest entries, kept beside the log so that raft-rs's many `term`
//! lookups (on every append, commit and response) do not read and decode a whole entry from
//! disk. Terms change rarely, so runs of equal terms are stored: a handful of pairs for any
//! length of log.

/// Terms of the entries from `from` to the log's last index, as runs `(first index, term)` in
/// increasing order. Invariant: when anything is covered, the first run starts at `from`.
/// Older entries are not covered; their terms are read from the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecentTerms {
    from: u64,
    runs: Vec<(u64, u64)>,
}

impl RecentTerms {
    /// Nothing covered yet: a log that ends at `last_index`, read from disk at start.
    pub fn new(last_index: u64) -> Self {
        RecentTerms {
            from: last_index + 1,
            runs: Vec::new(),
        }
    }

    /// Entries `(index, term)`, contiguous, were written; any entry from the first of them on
    /// was replaced (raft-rs truncates a conflicting suffix by appending over it).
    pub fn append(&mut self, entries: impl IntoIterator<Item = (u64, u64)>) {
        let mut entries = entries.into_iter().peekable();
        let Some(&(first, _)) = entries.peek() else {
            return;
        };
        if first < self.from {
            self.from = first;
            self.runs.clear();
        } else {
            while self.runs.last().is_some_and(|&(start, _)| start >= first) {
                self.runs.pop();
            }
        }
        for (index, term) in entries {
            if self.runs.last().map(|&(_, t)| t) != Some(term) {
                self.runs.push((index, term));
            }
        }
    }

    /// The term of entry `index`, when covered; `last_index` is the log's last index.
    pub fn term(&self, index: u64, last_index: u64) -> Option<u64> {
        if index < self.from || index > last_index {
            return None;
        }
        let at = self.runs.partition_point(|&(start, _)| start <= index);
        at.checked_sub(1).map(|i| self.runs[i].1)
    }

    /// Entries below `first_index` were compacted away: their runs are dropped.
    pub fn compacted(&mut self, first_index: u64) {
        if first_index <= self.from {
            return;
        }
        let keep_from = self
            .runs
            .partition_point(|&(start, _)| start <= first_index);
        // The run holding `first_index` stays, restarted there.
        let drop = keep_from.saturating_sub(1);
        self.runs.drain(..drop);
        if let Some(run) = self.runs.first_mut() {
            run.0 = run.0.max(first_index);
        }
        self.from = first_index;
    }

    /// The whole log was replaced by a snapshot ending at `index`.
    pub fn reset(&mut self, index: u64) {
        *self = RecentTerms::new(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: every entry's term, by index.
    fn model(log: &[(u64, u64)], index: u64) -> Option<u64> {
        log.iter().find(|&&(i, _)| i == index).map(|&(_, t)| t)
    }

    #[test]
    fn terms_follow_appends_truncations_compaction_and_snapshots() {
        let mut t = RecentTerms::new(10);
        assert_eq!(
            t.term(10, 10),
            None,
            "what was on disk at start is not covered"
        );
        t.append([(11, 2), (12, 2), (13, 3)]);
        assert_eq!(
            (
                t.term(10, 13),
                t.term(11, 13),
                t.term(12, 13),
                t.term(13, 13)
            ),
            (None, Some(2), Some(2), Some(3))
        );
        assert_eq!(t.term(14, 13), None);
        // A new leader overwrites from 12.
        t.append([(12, 4), (13, 4), (14, 4)]);
        assert_eq!(
            (t.term(11, 14), t.term(12, 14), t.term(14, 14)),
            (Some(2), Some(4), Some(4))
        );
        assert_eq!(t.runs, vec![(11, 2), (12, 4)]);
        // An overwrite reaching below what is covered restarts the coverage there.
        t.append([(8, 5), (9, 5)]);
        assert_eq!(
            (t.term(7, 9), t.term(8, 9), t.term(9, 9)),
            (None, Some(5), Some(5))
        );
        t.append([(10, 5), (11, 6)]);
        t.compacted(11);
        assert_eq!((t.term(10, 11), t.term(11, 11)), (None, Some(6)));
        t.append([(12, 6)]);
        t.compacted(12);
        assert_eq!(t.runs, vec![(12, 6)]);
        t.reset(100);
        assert_eq!(t.term(100, 100), None);
        t.append([(101, 7)]);
        assert_eq!(t.term(101, 101), Some(7));
    }

    #[test]
    fn any_sequence_of_raft_appends_matches_the_full_log() {
        // A small deterministic generator: appends at any point up to the end, with terms
        // that never go down within one append, and compactions.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut log: Vec<(u64, u64)> = Vec::new();
            let mut t = RecentTerms::new(0);
            let (mut first, mut term) = (1u64, 1u64);
            for _ in 0..40 {
                let last = log.last().map_or(first - 1, |e| e.0);
                if next(5) == 0 && last >= first {
                    first += next(last - first + 1) + 1;
                    log.retain(|e| e.0 >= first);
                    t.compacted(first);
                } else {
                    let from = first + next(last + 2 - first);
                    term += next(2);
                    log.retain(|e| e.0 < from);
                    let n = next(4) + 1;
                    let batch: Vec<(u64, u64)> = (from..from + n).map(|i| (i, term)).collect();
                    log.extend(&batch);
                    t.append(batch);
                    let last = from + n - 1;
                    assert_eq!(
                        t.term(last, last),
                        Some(term),
                        "what was appended is covered"
                    );
                }
                let last = log.last().map_or(first - 1, |e| e.0);
                for i in first..=last + 1 {
                    if let Some(got) = t.term(i, last) {
                        assert_eq!(Some(got), model(&log, i), "index {i} of {log:?}: {t:?}");
                    }
                }
            }
        }
    }
}
