//! Callers waiting for their entries, keyed by the entry's (term, index).
//!
//! A leader learns an entry's index and term the moment raft-rs appends it, and no other entry
//! in the cluster's history ever has both: a new leader that overwrites the slot does so with a
//! higher term. So a caller is answered only with the outcome of its own entry, whatever
//! restarts, leader changes or replays happen meanwhile (a per-process counter in the entry's
//! context, as before, matched a restarted leader's first proposal to an old entry).

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::RaftError;

type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

/// Waiters of one kind (proposals, or membership changes).
pub(super) struct Waiters<T> {
    by_index: BTreeMap<u64, (u64, Reply<T>)>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters {
            by_index: BTreeMap::new(),
        }
    }
}

impl<T> Waiters<T> {
    pub fn insert(&mut self, term: u64, index: u64, reply: Reply<T>) {
        if let Some((_, old)) = self.by_index.insert(index, (term, reply)) {
            // Only possible if raft-rs appended twice at one index in one term, which it
            // never does; refuse the older caller rather than leave it hanging.
            let _ = old.send(Err(RaftError::Dropped(format!(
                "entry {index} was proposed again"
            ))));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }

    /// The waiter of the entry at `index` if it was this very entry (same term). A waiter of
    /// an earlier term at that index lost its entry to another leader's: it is told so.
    pub fn take(&mut self, term: u64, index: u64) -> Option<Reply<T>> {
        self.drop_through(index.saturating_sub(1), "its slot was overwritten");
        let (t, reply) = self.by_index.remove(&index)?;
        if t == term {
            return Some(reply);
        }
        let _ = reply.send(Err(RaftError::Dropped(format!(
            "entry {index} of term {t} was replaced by another leader's entry of term {term}"
        ))));
        None
    }

    /// Refuses every waiter at or below `index` (applied past them without their entry: a
    /// snapshot was installed over them, or their slot was taken).
    pub fn drop_through(&mut self, index: u64, why: &str) {
        while let Some(entry) = self.by_index.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (i, (_, reply)) = entry.remove_entry();
            let _ = reply.send(Err(RaftError::Dropped(format!("entry {i}: {why}"))));
        }
    }

    pub fn fail_all(&mut self, err: &RaftError) {
        for (_, (_, reply)) in std::mem::take(&mut self.by_index) {
            let _ = reply.send(Err(err.clone()));
        }
    }
}
