//! Step log lines: kept on the node the agent streams them to (not replicated), and fanned out
//! to followers of `gantry run logs -f`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use gantry_model::{RunId, TaskId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub stream: String,
    pub line: String,
    pub at_ms: i64,
    /// Arrival order on this node, assigned by the store.
    #[serde(default)]
    pub seq: u64,
}

pub struct StepLogs {
    tree: sled::Tree,
    seq: AtomicU64,
    tx: broadcast::Sender<LogRecord>,
    caps: LogStoreCaps,
    usage: Mutex<Usage>,
    /// A write failed (the disk full, say): said once, and again when writes work.
    failing: AtomicBool,
}

/// What the node's step-log store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStoreCaps {
    /// One run's lines, all its steps and attempts together (`--max-log-bytes-per-run`).
    pub run_bytes: u64,
    /// Every run's lines on this node (`--max-step-log-bytes`): over it, the runs whose logs
    /// began first are dropped whole.
    pub total_bytes: u64,
}

impl Default for LogStoreCaps {
    fn default() -> Self {
        LogStoreCaps {
            run_bytes: 1 << 30,
            total_bytes: 8 << 30,
        }
    }
}

/// Bytes stored, in all and per run (counted at open by one scan, then kept up to date).
#[derive(Debug, Default)]
struct Usage {
    total: u64,
    runs: HashMap<RunId, RunUsage>,
}

#[derive(Debug, Default, Clone, Copy)]
struct RunUsage {
    bytes: u64,
    /// The run's first stored line: runs that began first are dropped first.
    first_seq: u64,
    /// The run reached its cap; its later lines are dropped.
    capped: bool,
}

/// Lines per page when a run's stored log is read.
pub const PAGE_LINES: usize = 1000;

fn key(run_id: &RunId, seq: u64) -> Vec<u8> {
    let mut k = prefix(run_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(run_id: &RunId) -> Vec<u8> {
    let mut k = Vec::with_capacity(run_id.as_str().len() + 9);
    k.extend_from_slice(run_id.as_str().as_bytes());
    k.push(0);
    k
}

/// The sequence number at the end of a key.
fn seq_of(k: &[u8]) -> Option<u64> {
    let at = k.len().checked_sub(8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[at..]);
    Some(u64::from_be_bytes(b))
}

impl StepLogs {
    pub fn open(db: &sled::Db, caps: LogStoreCaps) -> Result<Self, sled::Error> {
        let tree = db.open_tree("logs")?;
        let (tx, _) = broadcast::channel(4096);
        let mut usage = Usage::default();
        let mut last = 0;
        for kv in tree.iter() {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            last = last.max(seq);
            let Some(run) = k
                .iter()
                .position(|b| *b == 0)
                .and_then(|at| std::str::from_utf8(&k[..at]).ok())
            else {
                continue;
            };
            let bytes = (k.len() + v.len()) as u64;
            usage.total += bytes;
            let u = usage.runs.entry(RunId::from(run)).or_insert(RunUsage {
                first_seq: seq,
                ..Default::default()
            });
            u.bytes += bytes;
            u.first_seq = u.first_seq.min(seq);
            u.capped = u.bytes >= caps.run_bytes;
        }
        Ok(StepLogs {
            tree,
            seq: AtomicU64::new(last + 1),
            tx,
            caps,
            usage: Mutex::new(usage),
            failing: AtomicBool::new(false),
        })
    }

    /// Stores a line (within the caps) and hands it to followers of the run's log.
    pub fn append(&self, mut rec: LogRecord) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        rec.seq = seq;
        let value = match serde_json::to_vec(&rec) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "could not encode a log line");
                return;
            }
        };
        let k = key(&rec.run_id, seq);
        let bytes = (k.len() + value.len()) as u64;
        match self.admit(&rec, bytes) {
            Admit::Store => {}
            Admit::Drop => return,
            Admit::CapMarker => {
                let marker = LogRecord {
                    line: format!(
                        "[gantry] this run's log reached {} bytes (--max-log-bytes-per-run); \
                         its later lines are not kept",
                        self.caps.run_bytes
                    ),
                    stream: "stderr".into(),
                    ..rec
                };
                if let Ok(v) = serde_json::to_vec(&marker) {
                    self.store(k, v);
                }
                let _ = self.tx.send(marker);
                return;
            }
        }
        self.store(k, value);
        let _ = self.tx.send(rec);
    }

    fn store(&self, k: Vec<u8>, v: Vec<u8>) {
        match self.tree.insert(k, v) {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("step log lines are stored again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e,
                        "cannot store step log lines (is the disk full?); they are dropped \
                         until a write works again");
                }
            }
        }
    }

    /// Counts the line against its run and the store, dropping the oldest other runs' logs
    /// when the store is over its cap.
    fn admit(&self, rec: &LogRecord, bytes: u64) -> Admit {
        let evict = {
            let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            let u = usage.runs.entry(rec.run_id.clone()).or_insert(RunUsage {
                first_seq: rec.seq,
                ..Default::default()
            });
            if u.capped {
                return Admit::Drop;
            }
            if u.bytes + bytes > self.caps.run_bytes {
                u.capped = true;
                return Admit::CapMarker;
            }
            u.bytes += bytes;
            usage.total += bytes;
            if usage.total <= self.caps.total_bytes {
                return Admit::Store;
            }
            // Drop whole runs, oldest first, down to nine tenths of the cap.
            let mut order: Vec<(u64, RunId, u64)> = usage
                .runs
                .iter()
                .filter(|(id, _)| **id != rec.run_id)
                .map(|(id, u)| (u.first_seq, id.clone(), u.bytes))
                .collect();
            order.sort();
            let target = self.caps.total_bytes / 10 * 9;
            let mut evict = Vec::new();
            for (_, id, b) in order {
                if usage.total <= target {
                    break;
                }
                usage.total = usage.total.saturating_sub(b);
                usage.runs.remove(&id);
                evict.push(id);
            }
            evict
        };
        for id in evict {
            let n = self.remove_lines(&id);
            tracing::info!(run = %id, lines = n,
                "dropped the step logs of the oldest run: this node's log store reached \
                 --max-step-log-bytes ({} bytes)", self.caps.total_bytes);
        }
        Admit::Store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogRecord> {
        self.tx.subscribe()
    }

    /// Drops every stored line of a run (retention removed it); returns how many.
    pub fn remove_run(&self, run_id: &RunId) -> usize {
        {
            let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(u) = usage.runs.remove(run_id) {
                usage.total = usage.total.saturating_sub(u.bytes);
            }
        }
        self.remove_lines(run_id)
    }

    fn remove_lines(&self, run_id: &RunId) -> usize {
        let mut removed = 0;
        for key in self
            .tree
            .scan_prefix(prefix(run_id))
            .keys()
            .filter_map(Result::ok)
        {
            match self.tree.remove(key) {
                Ok(_) => removed += 1,
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "could not drop a log line");
                    break;
                }
            }
        }
        removed
    }

    /// Up to `limit` stored lines of a run after sequence number `after`, in arrival order:
    /// a run's log is read a page at a time, never whole.
    pub fn read_page(&self, run_id: &RunId, after: u64, limit: usize) -> Vec<LogRecord> {
        let from = key(run_id, after.saturating_add(1));
        let mut end = prefix(run_id);
        // The byte after the separator: every key of this run sorts below it.
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        self.tree
            .range(from..end)
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .take(limit)
            .collect()
    }

    /// Bytes stored in all, and for `run_id`.
    pub fn usage(&self, run_id: &RunId) -> (u64, u64) {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        (usage.total, usage.runs.get(run_id).map_or(0, |u| u.bytes))
    }
}

enum Admit {
    Store,
    Drop,
    /// The line that crosses the run's cap: a marker is kept in its place.
    CapMarker,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(run: &str, text: &str) -> LogRecord {
        LogRecord {
            run_id: run.into(),
            task_id: "t".into(),
            attempt: 1,
            stream: "stdout".into(),
            line: text.into(),
            at_ms: 0,
            seq: 0,
        }
    }

    #[test]
    fn removing_a_run_drops_its_lines_and_only_its() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let logs = StepLogs::open(&db, LogStoreCaps::default()).unwrap();
        for i in 0..3 {
            logs.append(line("r1", &format!("a{i}")));
            logs.append(line("r10", &format!("b{i}")));
        }
        assert_eq!(logs.remove_run(&"r1".into()), 3);
        assert!(logs.read_page(&"r1".into(), 0, 100).is_empty());
        // r10 shares r1's first bytes; the key's separator keeps it apart.
        assert_eq!(logs.read_page(&"r10".into(), 0, 100).len(), 3);
        assert_eq!(logs.remove_run(&"r1".into()), 0);
        assert_eq!(logs.usage(&"r1".into()).1, 0);
    }

    #[test]
    fn a_run_is_read_a_page_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let logs = StepLogs::open(&db, LogStoreCaps::default()).unwrap();
        for i in 0..25 {
            logs.append(line("r", &format!("l{i}")));
            logs.append(line("other", "x"));
        }
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = logs.read_page(&"r".into(), after, 10);
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = page.last().unwrap().seq;
            seen.extend(page.into_iter().map(|r| r.line));
        }
        let want: Vec<String> = (0..25).map(|i| format!("l{i}")).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_run_over_its_cap_keeps_a_marker_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let caps = LogStoreCaps {
            run_bytes: 2_000,
            total_bytes: 1 << 20,
        };
        let logs = StepLogs::open(&db, caps).unwrap();
        for i in 0..100 {
            logs.append(line("r", &format!("line {i} {}", "x".repeat(40))));
        }
        let kept = logs.read_page(&"r".into(), 0, 1000);
        assert!(kept.len() > 5 && kept.len() < 30, "{}", kept.len());
        let last = kept.last().unwrap();
        assert!(
            last.line.contains("--max-log-bytes-per-run"),
            "{}",
            last.line
        );
        assert!(logs.usage(&"r".into()).1 <= 2_000 + 400);
        // The count survives a reopen: the run stays capped.
        drop(logs);
        let logs = StepLogs::open(&db, caps).unwrap();
        logs.append(line("r", "after the reopen"));
        assert_eq!(logs.read_page(&"r".into(), 0, 1000).len(), kept.len());
    }

    #[test]
    fn over_the_total_cap_the_oldest_runs_go_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let caps = LogStoreCaps {
            run_bytes: 1 << 20,
            total_bytes: 10_000,
        };
        let logs = StepLogs::open(&db, caps).unwrap();
        for run in ["a", "b", "c", "d", "e"] {
            for i in 0..20 {
                logs.append(line(run, &format!("{run} {i} {}", "y".repeat(40))));
            }
        }
        let lines = |r: &str| logs.read_page(&r.into(), 0, 1000).len();
        // Each run holds about 3 kB: the newest three fit, the two oldest went whole.
        assert_eq!((lines("a"), lines("b")), (0, 0));
        assert_eq!(lines("e"), 20);
        assert!(lines("d") == 20 && lines("c") == 20);
        assert!(logs.usage(&"e".into()).0 <= 10_000);
        // The total is the same after a reopen's scan.
        let total = logs.usage(&"e".into()).0;
        drop(logs);
        let logs = StepLogs::open(&db, caps).unwrap();
        assert_eq!(logs.usage(&"e".into()).0, total);
    }
}
