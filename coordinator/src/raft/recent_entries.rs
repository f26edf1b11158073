//! The newest entries of the log, kept in memory as they were written. raft-rs reads every
//! entry back from storage after it is persisted (to apply it, and to send it to a follower
//! that was behind), and reading means a `pread`, an allocation and a protobuf decode per
//! entry; an entry held here is a reference-counted clone. (TiKV keeps an entry cache for the
//! same reason.) What is held is always a run of consecutive indexes that equals the log at
//! those indexes; the log on disk stays the only authority.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// How many bytes of entries a node keeps (the newest ones).
pub const RECENT_ENTRY_BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
    cap: usize,
}

fn size(e: &Entry) -> usize {
    e.compute_size() as usize
}

impl RecentEntries {
    pub fn new(cap: usize) -> Self {
        RecentEntries {
            cap,
            ..Default::default()
        }
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first()?;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(at)
    }

    /// Forgets the entries of `from..=to` (and, to stay one run, any after them).
    pub fn remove(&mut self, from: u64, to: u64) {
        let Some(first) = self.first() else { return };
        if from > to {
            return;
        }
        if from <= first {
            while self.entries.front().is_some_and(|e| e.index <= to) {
                self.pop_front();
            }
        } else {
            while self.entries.back().is_some_and(|e| e.index >= from) {
                if let Some(e) = self.entries.pop_back() {
                    self.bytes -= size(&e);
                }
            }
        }
    }

    /// Takes entries just written (consecutive, ascending), dropping the oldest past the cap.
    pub fn append(&mut self, entries: Vec<Entry>) {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return;
        };
        if let Some(last) = self.entries.back().map(|e| e.index) {
            if first_new <= last {
                self.remove(first_new, last);
            } else if first_new != last + 1 {
                self.clear();
            }
        }
        for e in entries {
            if self.entries.back().is_some_and(|b| b.index + 1 != e.index) {
                self.clear();
            }
            self.bytes += size(&e);
            self.entries.push_back(e);
        }
        while self.bytes > self.cap && !self.entries.is_empty() {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= size(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![1; 100].into(),
            ..Default::default()
        }
    }

    fn held(r: &RecentEntries) -> Vec<(u64, u64)> {
        r.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn holds_the_newest_run_and_follows_truncation_and_compaction() {
        let mut r = RecentEntries::new(1 << 20);
        r.append((1..=5).map(|i| e(i, 1)).collect());
        assert_eq!(r.get(3).map(|x| x.term), Some(1));
        assert!(r.get(0).is_none() && r.get(6).is_none());
        // A new leader's entries replace a conflicting suffix.
        r.append(vec![e(4, 2)]);
        assert_eq!(held(&r), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
        // Compaction drops a prefix.
        r.remove(1, 2);
        assert_eq!(held(&r), vec![(3, 1), (4, 2)]);
        // A removed suffix.
        r.remove(4, 9);
        assert_eq!(held(&r), vec![(3, 1)]);
        // A gap (entries after a snapshot) starts a new run.
        r.append(vec![e(10, 3), e(11, 3)]);
        assert_eq!(held(&r), vec![(10, 3), (11, 3)]);
        // A removal that covers everything.
        r.remove(1, u64::MAX);
        assert!(held(&r).is_empty());
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn stays_within_its_byte_cap() {
        let one = size(&e(1, 1));
        let mut r = RecentEntries::new(3 * one);
        r.append((1..=10).map(|i| e(i, 1)).collect());
        assert_eq!(held(&r), vec![(8, 1), (9, 1), (10, 1)]);
        assert!(r.bytes <= 3 * one);
    }
}
