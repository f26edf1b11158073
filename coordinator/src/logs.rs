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
