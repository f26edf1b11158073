//! Step log lines: kept on the node the agent streams them to (not replicated), and fanned out
//! to followers of `gantry run logs -f`.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

fn key(run_id: &RunId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(run_id.as_str().len() + 9);
    k.extend_from_slice(run_id.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl StepLogs {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let tree = db.open_tree("logs")?;
        let (tx, _) = broadcast::channel(4096);
        let last = tree
            .iter()
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| {
                k.len().checked_sub(8).map(|at| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&k[at..]);
                    u64::from_be_bytes(b)
                })
            })
            .max()
            .unwrap_or(0);
        Ok(StepLogs {
            tree,
            seq: AtomicU64::new(last + 1),
            tx,
        })
    }

    pub fn append(&self, mut rec: LogRecord) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        rec.seq = seq;
        match serde_json::to_vec(&rec) {
            Ok(v) => {
                if let Err(e) = self.tree.insert(key(&rec.run_id, seq), v) {
                    tracing::warn!(error = %e, "could not store a log line");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode a log line"),
        }
        let _ = self.tx.send(rec);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogRecord> {
        self.tx.subscribe()
    }

    /// Drops every stored line of a run (retention removed it); returns how many.
    pub fn remove_run(&self, run_id: &RunId) -> usize {
        let mut prefix = run_id.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut removed = 0;
        for key in self.tree.scan_prefix(prefix).keys().filter_map(Result::ok) {
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

    /// Every stored line of a run, in arrival order.
    pub fn read_run(&self, run_id: &RunId) -> Vec<LogRecord> {
        let mut prefix = run_id.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.tree
            .scan_prefix(prefix)
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }
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
        let logs = StepLogs::open(&db).unwrap();
        for i in 0..3 {
            logs.append(line("r1", &format!("a{i}")));
            logs.append(line("r10", &format!("b{i}")));
        }
        assert_eq!(logs.remove_run(&"r1".into()), 3);
        assert!(logs.read_run(&"r1".into()).is_empty());
        // r10 shares r1's first bytes; the key's separator keeps it apart.
        assert_eq!(logs.read_run(&"r10".into()).len(), 3);
        assert_eq!(logs.remove_run(&"r1".into()), 0);
    }
}
