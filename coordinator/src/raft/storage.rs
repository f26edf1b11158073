//! The Raft log, hard state and conf state, served to raft-rs through its `Storage` trait.
//!
//! [`RaftStorage`] holds the logic (suffix truncation, compaction behind a snapshot, which
//! snapshot may be offered to which peer) and a cache of the small records; the bytes live in a
//! [`LogStore`], a narrow backend whose one write operation is atomic and durable on return.
//! The node persists before it sends, applies or acknowledges, so nothing promised is lost with
//! the process. `RedbLogStore` is the on-disk backend (`SledLogStore` remains to read logs
//! written by older versions), `MemLogStore` the in-memory twin that the deterministic
//! simulation runs on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::recent_terms::RecentTerms;

/// Node id → the address its peers and clients use.
pub type Members = std::collections::BTreeMap<u64, String>;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("log backend: {0}")]
    Backend(String),
    /// The device holding the log is full (ENOSPC, or a quota: EDQUOT).
    #[error("{0}")]
    NoSpace(String),
    #[error("corrupt raft record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("encode: {0}")]
    Encode(String),
    #[error("raft log: {0}")]
    Raft(#[from] raft::Error),
}

impl LogStoreError {
    /// Whether the write failed for want of space, so that it can succeed once some is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, LogStoreError::NoSpace(_))
    }
}

/// Whether an I/O error means "the disk is full" (ENOSPC) or "over quota" (EDQUOT).
pub fn io_is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

/// Everything small a backend keeps beside the entries, read once at open.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot_meta: SnapshotMetadata,
    pub members: Members,
    /// Index and term of the last entry removed by compaction (the log's "dummy" entry).
    pub compacted: (u64, u64),
    /// The highest entry index held, if any.
    pub last_entry: Option<u64>,
}

/// One atomic, durable change. Fields left `None` (or empty) are not touched.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Inclusive index ranges of entries to remove first (a conflicting suffix, a compacted
    /// prefix, the whole log under an installed snapshot).
    pub remove: Vec<(u64, u64)>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub conf_state: Option<ConfState>,
    pub snapshot_meta: Option<SnapshotMetadata>,
    pub members: Option<Members>,
    pub compacted: Option<(u64, u64)>,
}

/// Where the Raft log's bytes live. `write` must be atomic (all of the batch or none of it
/// survives a crash) and durable when it returns.
pub trait LogStore: Send + Sync + 'static {
    fn load(&self) -> Result<Persisted, LogStoreError>;
    /// Entries with `low <= index < high`, in order; stops early once `max_size` bytes are
    /// exceeded (at least one entry is returned when any exists).
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError>;
    fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError>;
    fn write(&self, batch: WriteBatch) -> Result<(), LogStoreError>;
}

#[derive(Default)]
struct Cache {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    last_index: u64,
    members: Members,
    compacted: (u64, u64),
    /// The terms of the entries written since start, so `term` rarely reads the disk.
    terms: RecentTerms,
    /// `hard_state`'s commit index is newer than the stored one (nothing else in it is).
    commit_unwritten: bool,
}

/// The durable Raft log of one node, as raft-rs sees it.
#[derive(Clone)]
pub struct RaftStorage {
    backend: Arc<dyn LogStore>,
    cache: Arc<RwLock<Cache>>,
    /// Set when a peer needs a snapshot that the newest one cannot serve (it predates the
    /// peer's membership); the node takes a fresh one as soon as it can.
    snapshot_wanted: Arc<AtomicBool>,
}

impl RaftStorage {
    pub fn open(backend: Arc<dyn LogStore>) -> Result<Self, LogStoreError> {
        let p = backend.load()?;
        let last_index = p
            .last_entry
            .unwrap_or_else(|| p.snapshot_meta.index.max(p.compacted.0));
        let cache = Cache {
            hard_state: p.hard_state,
            conf_state: p.conf_state,
            snapshot_meta: p.snapshot_meta,
            last_index,
            members: p.members,
            compacted: p.compacted,
            terms: RecentTerms::new(last_index),
            commit_unwritten: false,
        };
        Ok(RaftStorage {
            backend,
            cache: Arc::new(RwLock::new(cache)),
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        // A poisoned lock only means a panic elsewhere; the cache itself is still consistent
        // because every update replaces whole fields after the disk write succeeded.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Cache)) {
        f(&mut self.cache.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// True when this store has never been given a configuration.
    pub fn is_fresh(&self) -> bool {
        let c = self.read();
        c.conf_state.voters.is_empty() && c.conf_state.learners.is_empty()
    }

    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }

    pub fn snapshot_meta(&self) -> SnapshotMetadata {
        self.read().snapshot_meta.clone()
    }

    /// True once, after a peer asked for a snapshot newer than the one on disk.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    pub fn members(&self) -> Members {
        self.read().members.clone()
    }

    /// Replaces the member address book.
    pub fn set_members(&self, members: &Members) -> Result<(), LogStoreError> {
        self.write(WriteBatch {
            members: Some(members.clone()),
            ..Default::default()
        })?;
        self.update(|c| c.members = members.clone());
        Ok(())
    }

    /// Writes `batch` durably, with the newest commit index when it is not stored yet (the
    /// batch's own hard state, if it has one, is at least as new).
    fn write(&self, mut batch: WriteBatch) -> Result<(), LogStoreError> {
        let carried = {
            let c = self.read();
            if batch.hard_state.is_none() && c.commit_unwritten {
                batch.hard_state = Some(c.hard_state.clone());
            }
            batch.hard_state.as_ref().map(|hs| hs.commit)
        };
        self.backend.write(batch)?;
        if let Some(commit) = carried {
            self.update(|c| {
                if c.hard_state.commit <= commit {
                    c.commit_unwritten = false;
                }
            });
        }
        Ok(())
    }

    /// Records a snapshot this node wrote itself and drops the log up to and including
    /// `compact_index` (at most the snapshot's index: a leader keeps a tail for slow peers so
    /// they catch up from the log rather than by a whole snapshot). The snapshot must already
    /// be durable.
    pub fn compact_to(
        &self,
        meta: &SnapshotMetadata,
        compact_index: u64,
    ) -> Result<(), LogStoreError> {
        let compact_index = compact_index.min(meta.index);
        let (old_first, last) = {
            let c = self.read();
            (first_index(&c), c.last_index)
        };
        let mut batch = WriteBatch {
            snapshot_meta: Some(meta.clone()),
            ..Default::default()
        };
        if compact_index >= old_first && compact_index <= last {
            let term = raft::Storage::term(self, compact_index)?;
            batch.remove.push((old_first, compact_index));
            batch.compacted = Some((compact_index, term));
        }
        let compacted = batch.compacted;
        self.write(batch)?;
        self.update(|c| {
            c.snapshot_meta = meta.clone();
            if let Some(p) = compacted {
                c.compacted = p;
                c.terms.compacted(first_index(c));
            }
        });
        Ok(())
    }

    /// Installs a snapshot received from the leader: the whole log is replaced by it. The
    /// snapshot must already be durable.
    pub fn apply_snapshot(
        &self,
        meta: &SnapshotMetadata,
        members: &Members,
    ) -> Result<(), LogStoreError> {
        let (first, last, mut hs) = {
            let c = self.read();
            (first_index(&c), c.last_index, c.hard_state.clone())
        };
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let mut batch = WriteBatch {
            hard_state: Some(hs.clone()),
            conf_state: Some(meta.get_conf_state().clone()),
            snapshot_meta: Some(meta.clone()),
            members: Some(members.clone()),
            compacted: Some((meta.index, meta.term)),
            ..Default::default()
        };
        if first <= last {
            batch.remove.push((first, last));
        }
        self.write(batch)?;
        self.update(|c| {
            c.snapshot_meta = meta.clone();
            c.hard_state = hs;
            c.conf_state = meta.get_conf_state().clone();
            c.last_index = meta.index;
            c.members = members.clone();
            c.compacted = (meta.index, meta.term);
            c.terms.reset(meta.index);
        });
        Ok(())
    }

    /// Writes entries (truncating any conflicting suffix), hard state and conf state in one
    /// durable batch.
    pub fn persist(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        conf_state: Option<&ConfState>,
    ) -> Result<(), LogStoreError> {
        let old_last = self.read().last_index;
        let mut batch = WriteBatch {
            hard_state: hard_state.cloned(),
            conf_state: conf_state.cloned(),
            ..Default::default()
        };
        let mut new_last = old_last;
        if let Some(first) = entries.first() {
            if first.index <= old_last {
                batch.remove.push((first.index, old_last));
            }
            batch.entries = entries.to_vec();
            new_last = entries.last().map_or(old_last, |e| e.index);
        }
        self.write(batch)?;
        self.update(|c| {
            c.last_index = new_last;
            c.terms.append(entries.iter().map(|e| (e.index, e.term)));
            if let Some(hs) = hard_state {
                c.hard_state = hs.clone();
            }
            if let Some(cs) = conf_state {
                c.conf_state = cs.clone();
            }
        });
        Ok(())
    }

    /// Records a new commit index in the hard state, stored with the next write.
    pub fn set_commit(&self, commit: u64) {
        self.update(|c| {
            if c.hard_state.commit != commit {
                c.hard_state.commit = commit;
                c.commit_unwritten = true;
            }
        });
    }

    /// Writes a Ready's entries and hard state. A hard state that differs from the last one in
    /// its commit index only is not written now but with the next write (etcd's `MustSync`
    /// rule): term and vote must be on disk before any message that follows them, entries
    /// before they are acknowledged, but a commit index is a fact any node learns again from
    /// the leader, and nothing a reply or a message promised depends on it. Every write
    /// carries it, so the stored one is never behind a compaction (raft-rs refuses to start
    /// from a commit index below the log's first entry).
    pub fn persist_ready(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogStoreError> {
        match hard_state {
            Some(hs) if entries.is_empty() => self.persist_hard_state(hs),
            _ => self.persist(entries, hard_state, None),
        }
    }

    fn persist_hard_state(&self, hs: &HardState) -> Result<(), LogStoreError> {
        let last = self.hard_state();
        if hs.term == last.term && hs.vote == last.vote {
            if hs.commit != last.commit {
                self.update(|c| {
                    c.hard_state = hs.clone();
                    c.commit_unwritten = true;
                });
            }
            return Ok(());
        }
        self.write(WriteBatch {
            hard_state: Some(hs.clone()),
            ..Default::default()
        })?;
        self.update(|c| c.hard_state = hs.clone());
        Ok(())
    }

    fn storage_err(e: impl std::fmt::Display) -> raft::Error {
        raft::Error::Store(StorageError::Other(e.to_string().into()))
    }
}

fn first_index(c: &Cache) -> u64 {
    c.compacted.0 + 1
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.read();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        {
            let c = self.read();
            if low < first_index(&c) {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if high > c.last_index + 1 {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        let out = self
            .backend
            .entries(low, high, max_size)
            .map_err(Self::storage_err)?;
        if out.len() as u64 != high - low && max_size.is_none() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let c = self.read();
            if idx == c.compacted.0 {
                return Ok(c.compacted.1);
            }
            if idx < first_index(&c) {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if idx > c.last_index {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            if let Some(term) = c.terms.term(idx, c.last_index) {
                return Ok(term);
            }
        }
        match self.backend.entry(idx).map_err(Self::storage_err)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(first_index(&self.read()))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Only metadata travels inside raft-rs: the state itself is the snapshot file of that
        // index and term, which the transport streams in chunks.
        let meta = self.snapshot_meta();
        // A node refuses a snapshot whose configuration leaves it out, so one taken before a
        // peer joined cannot bring that peer up: ask for a new one and let raft retry.
        let cs = meta.get_conf_state();
        let includes_peer = [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ]
        .iter()
        .any(|ids| ids.contains(&to));
        if meta.index == 0 || meta.index < request_index || !includes_peer {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{MemLogStore, SledLogStore};
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    /// The same script against each backend, reopened from what it persisted.
    fn persists_truncates_and_reopens(open: impl Fn() -> Arc<dyn LogStore>) {
        {
            let s = RaftStorage::open(open()).unwrap();
            assert!(s.is_fresh());
            let cs = ConfState {
                voters: vec![1],
                ..Default::default()
            };
            s.persist(
                &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
                None,
                Some(&cs),
            )
            .unwrap();
            // a new leader overwrites index 2 onwards
            s.persist(&[entry(2, 2, b"x")], None, None).unwrap();
            let hs = HardState {
                term: 2,
                commit: 2,
                ..Default::default()
            };
            s.persist(&[], Some(&hs), None).unwrap();
            assert_eq!(s.last_index().unwrap(), 2);
        }
        {
            let s = RaftStorage::open(open()).unwrap();
            assert!(!s.is_fresh());
            assert_eq!(s.last_index().unwrap(), 2);
            assert_eq!(s.first_index().unwrap(), 1);
            assert_eq!(s.term(2).unwrap(), 2);
            assert_eq!(s.hard_state().commit, 2);
            let ents = s
                .entries(1, 3, None, GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(ents.len(), 2);
            assert_eq!(&ents[1].data[..], b"x");
            assert!(s.term(3).is_err());

            // Compaction keeps what is after the compaction point, across a reopen too.
            let mut meta = SnapshotMetadata {
                index: 2,
                term: 2,
                ..Default::default()
            };
            meta.set_conf_state(s.conf_state());
            s.persist(&[entry(3, 2, b"y")], None, None).unwrap();
            s.compact_to(&meta, 1).unwrap();
        }
        let s = RaftStorage::open(open()).unwrap();
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(1).unwrap(), 1, "the compaction point keeps its term");
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.snapshot_meta().index, 2);
    }

    #[test]
    fn sled_persists_truncates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        // sled holds a lock on its directory: reopen only after the previous handle is gone.
        let db = std::sync::Mutex::new(None::<sled::Db>);
        persists_truncates_and_reopens(|| {
            let mut slot = db.lock().unwrap();
            *slot = None;
            // sled's flusher thread lets go of the directory's lock a moment after the last
            // handle is dropped.
            let d = (0..100)
                .find_map(|_| {
                    sled::open(&path)
                        .map_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                        .ok()
                })
                .expect("sled reopens within 5 s");
            *slot = Some(d.clone());
            Arc::new(SledLogStore::open(d).unwrap())
        });
    }

    #[test]
    fn redb_persists_truncates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        persists_truncates_and_reopens(|| {
            Arc::new(crate::raft::RedbLogStore::open(&path).unwrap())
        });
    }

    #[test]
    fn redb_stores_a_commit_index_that_moved_alone_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        stores_a_commit_index_that_moved_alone_with_the_next_write(|| {
            Arc::new(crate::raft::RedbLogStore::open(&path).unwrap())
        });
    }

    #[test]
    fn wal_stores_a_commit_index_that_moved_alone_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-wal");
        stores_a_commit_index_that_moved_alone_with_the_next_write(|| {
            Arc::new(crate::raft::WalLogStore::open(&path).unwrap())
        });
    }

    #[test]
    fn wal_persists_truncates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-wal");
        persists_truncates_and_reopens(|| Arc::new(crate::raft::WalLogStore::open(&path).unwrap()));
    }

    /// Reopened after each step: a commit index that moved alone is stored by the next write.
    fn stores_a_commit_index_that_moved_alone_with_the_next_write(
        backend: impl Fn() -> Arc<dyn LogStore>,
    ) {
        let open = || RaftStorage::open(backend()).unwrap();
        {
            let s = open();
            s.persist(&[entry(1, 1, b"a"), entry(2, 1, b"b")], None, None)
                .unwrap();
            s.set_commit(1);
        }
        assert_eq!(open().hard_state().commit, 0, "not written by itself");
        {
            let s = open();
            s.set_commit(1);
            s.persist(&[entry(3, 1, b"c")], None, None).unwrap();
        }
        assert_eq!(open().hard_state().commit, 1);
        {
            // A compaction carries it too: raft-rs will not start from a commit index below
            // the first entry.
            let s = open();
            s.set_commit(3);
            let meta = SnapshotMetadata {
                index: 3,
                term: 1,
                ..Default::default()
            };
            s.compact_to(&meta, 3).unwrap();
        }
        let s = open();
        assert_eq!(s.hard_state().commit, 3);
        assert_eq!(raft::Storage::first_index(&s).unwrap(), 4);
    }

    #[test]
    fn memory_persists_truncates_and_reopens() {
        let mem = MemLogStore::default();
        persists_truncates_and_reopens(|| Arc::new(mem.clone()));
    }

    /// Records the hard state each write stores (if any), then stores it in memory.
    #[derive(Default)]
    struct Recording {
        inner: MemLogStore,
        hard_states: std::sync::Mutex<Vec<Option<HardState>>>,
    }

    impl LogStore for Recording {
        fn load(&self) -> Result<Persisted, LogStoreError> {
            self.inner.load()
        }
        fn entries(
            &self,
            low: u64,
            high: u64,
            max_size: Option<u64>,
        ) -> Result<Vec<Entry>, LogStoreError> {
            self.inner.entries(low, high, max_size)
        }
        fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError> {
            self.inner.entry(index)
        }
        fn write(&self, batch: WriteBatch) -> Result<(), LogStoreError> {
            self.hard_states
                .lock()
                .unwrap()
                .push(batch.hard_state.clone());
            self.inner.write(batch)
        }
    }

    #[test]
    fn a_commit_index_that_moves_alone_waits_for_the_next_write() {
        let rec = Arc::new(Recording::default());
        let s = RaftStorage::open(rec.clone()).unwrap();
        let hs = |term, vote, commit| HardState {
            term,
            vote,
            commit,
            ..Default::default()
        };
        // A vote and a new term must be durable before the vote is answered.
        s.persist_ready(&[], Some(&hs(1, 2, 0))).unwrap();
        // Entries must be durable before they are acknowledged, whatever the hard state.
        s.persist_ready(&[entry(1, 1, b"a")], Some(&hs(1, 2, 0)))
            .unwrap();
        // Only the commit index moves: no write, here and through set_commit.
        s.persist_ready(&[], Some(&hs(1, 2, 1))).unwrap();
        s.set_commit(1);
        assert_eq!(s.hard_state(), hs(1, 2, 1), "the cache has it");
        // The next write carries it, even one without a hard state of its own.
        s.persist_ready(&[entry(2, 1, b"b")], None).unwrap();
        s.set_commit(2);
        s.set_members(&Members::default()).unwrap();
        // Then nothing is carried until it moves again.
        s.persist_ready(&[entry(3, 1, b"c")], None).unwrap();
        // The vote changes (the rule compares with the last hard state, whatever raft
        // allows), then a new term, commit unchanged: both written at once.
        s.persist_ready(&[], Some(&hs(1, 3, 2))).unwrap();
        s.persist_ready(&[], Some(&hs(2, 3, 2))).unwrap();
        assert_eq!(
            *rec.hard_states.lock().unwrap(),
            [
                Some(hs(1, 2, 0)),
                Some(hs(1, 2, 0)),
                Some(hs(1, 2, 1)),
                Some(hs(1, 2, 2)),
                None,
                Some(hs(1, 3, 2)),
                Some(hs(2, 3, 2)),
            ]
        );
        assert_eq!(s.hard_state(), hs(2, 3, 2), "the cache follows every write");
    }

    #[test]
    fn a_snapshot_that_predates_a_peer_is_not_offered_to_it() {
        let s = RaftStorage::open(Arc::new(MemLogStore::default())).unwrap();
        let cs = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        s.persist(&[entry(1, 1, b"a"), entry(2, 1, b"b")], None, Some(&cs))
            .unwrap();
        let mut meta = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        meta.set_conf_state(cs);
        s.compact_to(&meta, 2).unwrap();
        assert!(!s.take_snapshot_wanted());

        // Node 1 is in the snapshot's configuration: it is served.
        assert_eq!(s.snapshot(0, 1).unwrap().get_metadata().index, 2);
        assert!(!s.take_snapshot_wanted());
        // Node 2 joined later: refused for now, and a new snapshot is asked for once.
        assert!(matches!(
            s.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted());
    }
}
