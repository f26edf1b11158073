//! The Raft log in memory: the backend of the deterministic simulation, and of any test that
//! needs a node without a disk. A clone shares the same log, so a "restarted" node reopens
//! exactly what its predecessor persisted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use raft::eraftpb::Entry;

use super::log_codec::within_size;
use super::storage::{LogStore, LogStoreError, Persisted, WriteBatch};

#[derive(Default)]
struct Inner {
    persisted: Persisted,
    entries: BTreeMap<u64, Entry>,
}

#[derive(Clone, Default)]
pub struct MemLogStore(Arc<Mutex<Inner>>);

impl MemLogStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LogStore for MemLogStore {
    fn load(&self) -> Result<Persisted, LogStoreError> {
        let inner = self.lock();
        let mut p = inner.persisted.clone();
        p.last_entry = inner.entries.keys().next_back().copied();
        Ok(p)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let inner = self.lock();
        within_size(
            max_size,
            inner.entries.range(low..high).map(|(_, e)| Ok(e.clone())),
        )
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError> {
        Ok(self.lock().entries.get(&index).cloned())
    }

    fn write(&self, b: WriteBatch) -> Result<(), LogStoreError> {
        let mut inner = self.lock();
        for (from, to) in b.remove {
            let doomed: Vec<u64> = inner.entries.range(from..=to).map(|(k, _)| *k).collect();
            for k in doomed {
                inner.entries.remove(&k);
            }
        }
        for e in b.entries {
            inner.entries.insert(e.index, e);
        }
        let p = &mut inner.persisted;
        if let Some(hs) = b.hard_state {
            p.hard_state = hs;
        }
        if let Some(cs) = b.conf_state {
            p.conf_state = cs;
        }
        if let Some(meta) = b.snapshot_meta {
            p.snapshot_meta = meta;
        }
        if let Some(m) = b.members {
            p.members = m;
        }
        if let Some(c) = b.compacted {
            p.compacted = c;
        }
        Ok(())
    }
}
