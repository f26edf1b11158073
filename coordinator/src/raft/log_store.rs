//! The Raft log, hard state and conf state in sled, behind raft-rs's `Storage` trait.
//!
//! Every write goes through [`SledLogStore::persist`], which applies one batch and flushes
//! before returning: nothing is acknowledged or applied before it is on disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

const ENTRY_PREFIX: u8 = b'e';
const KEY_HARD_STATE: &[u8] = b"m:hard_state";
const KEY_CONF_STATE: &[u8] = b"m:conf_state";
const KEY_SNAPSHOT_META: &[u8] = b"m:snapshot_meta";
const KEY_MEMBERS: &[u8] = b"m:members";
/// Index and term of the last entry removed by compaction (the log's "dummy" entry).
const KEY_COMPACTED: &[u8] = b"m:compacted";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt raft record {key}: {source}")]
    Decode {
        key: String,
        source: protobuf::ProtobufError,
    },
    #[error("encode: {0}")]
    Encode(#[from] protobuf::ProtobufError),
    #[error("raft log: {0}")]
    Raft(#[from] raft::Error),
    #[error("member addresses: {0}")]
    Members(#[from] serde_json::Error),
}

/// Node id → the address its peers and clients use.
pub type Members = std::collections::BTreeMap<u64, String>;

#[derive(Default)]
struct Cache {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    last_index: u64,
    members: Members,
    compacted: (u64, u64),
}

fn encode_pair(p: (u64, u64)) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&p.0.to_be_bytes());
    b[8..].copy_from_slice(&p.1.to_be_bytes());
    b
}

/// The durable Raft log of one node.
#[derive(Clone)]
pub struct SledLogStore {
    tree: sled::Tree,
    db: sled::Db,
    cache: Arc<RwLock<Cache>>,
    /// Set when a peer needs a snapshot that the newest one cannot serve (it predates the
    /// peer's membership); the node takes a fresh one as soon as it can.
    snapshot_wanted: Arc<AtomicBool>,
}

fn decode<M: protobuf::Message>(key: &[u8], bytes: &[u8]) -> Result<M, LogStoreError> {
    M::parse_from_bytes(bytes).map_err(|source| LogStoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

impl SledLogStore {
    pub fn open(db: sled::Db) -> Result<Self, LogStoreError> {
        let tree = db.open_tree("raft")?;
        let mut cache = Cache::default();
        if let Some(v) = tree.get(KEY_HARD_STATE)? {
            cache.hard_state = decode(KEY_HARD_STATE, &v)?;
        }
        if let Some(v) = tree.get(KEY_CONF_STATE)? {
            cache.conf_state = decode(KEY_CONF_STATE, &v)?;
        }
        if let Some(v) = tree.get(KEY_SNAPSHOT_META)? {
            cache.snapshot_meta = decode(KEY_SNAPSHOT_META, &v)?;
        }
        if let Some(v) = tree.get(KEY_MEMBERS)? {
            cache.members = serde_json::from_slice(&v)?;
        }
        if let Some(v) = tree.get(KEY_COMPACTED)? {
            if v.len() == 16 {
                let mut a = [0u8; 8];
                let mut b = [0u8; 8];
                a.copy_from_slice(&v[..8]);
                b.copy_from_slice(&v[8..]);
                cache.compacted = (u64::from_be_bytes(a), u64::from_be_bytes(b));
            }
        }
        cache.last_index = match tree.scan_prefix([ENTRY_PREFIX]).next_back() {
            Some(kv) => {
                let (k, _) = kv?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[1..9]);
                u64::from_be_bytes(b)
            }
            None => cache.snapshot_meta.index.max(cache.compacted.0),
        };
        Ok(SledLogStore {
            tree,
            db,
            cache: Arc::new(RwLock::new(cache)),
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // A poisoned lock only means a panic elsewhere; the cache itself is still consistent
        // because every update replaces whole fields after the disk write succeeded.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
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

    /// Replaces the member address book (flushed).
    pub fn set_members(&self, members: &Members) -> Result<(), LogStoreError> {
        self.tree
            .insert(KEY_MEMBERS, serde_json::to_vec(members)?)?;
        self.db.flush()?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .members = members.clone();
        Ok(())
    }

    /// Records a snapshot this node wrote itself and drops the log up to and including
    /// `compact_index` (at most the snapshot's index: a leader keeps a tail for slow peers so
    /// they catch up from the log rather than by a whole snapshot). The snapshot file must
    /// already be durable.
    pub fn compact_to(
        &self,
        meta: &SnapshotMetadata,
        compact_index: u64,
    ) -> Result<(), LogStoreError> {
        let compact_index = compact_index.min(meta.index);
        let (old_first, last) = {
            let c = self.read();
            (Self::first_index_inner(&c), c.last_index)
        };
        let mut batch = sled::Batch::default();
        batch.insert(KEY_SNAPSHOT_META, meta.write_to_bytes()?);
        let mut compacted = None;
        if compact_index >= old_first && compact_index <= last {
            let term = raft::Storage::term(self, compact_index)?;
            for idx in old_first..=compact_index {
                batch.remove(&entry_key(idx));
            }
            batch.insert(KEY_COMPACTED, &encode_pair((compact_index, term)));
            compacted = Some((compact_index, term));
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        c.snapshot_meta = meta.clone();
        if let Some(p) = compacted {
            c.compacted = p;
        }
        Ok(())
    }

    /// Installs a snapshot received from the leader: the whole log is replaced by it. The
    /// snapshot file must already be durable.
    pub fn apply_snapshot(
        &self,
        meta: &SnapshotMetadata,
        members: &Members,
    ) -> Result<(), LogStoreError> {
        let (first, last) = {
            let c = self.read();
            (Self::first_index_inner(&c), c.last_index)
        };
        let mut batch = sled::Batch::default();
        for idx in first..=last {
            batch.remove(&entry_key(idx));
        }
        let mut hs = self.hard_state();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        batch.insert(KEY_SNAPSHOT_META, meta.write_to_bytes()?);
        batch.insert(KEY_HARD_STATE, hs.write_to_bytes()?);
        batch.insert(KEY_CONF_STATE, meta.get_conf_state().write_to_bytes()?);
        batch.insert(KEY_MEMBERS, serde_json::to_vec(members)?);
        batch.insert(KEY_COMPACTED, &encode_pair((meta.index, meta.term)));
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        c.snapshot_meta = meta.clone();
        c.hard_state = hs;
        c.conf_state = meta.get_conf_state().clone();
        c.last_index = meta.index;
        c.members = members.clone();
        c.compacted = (meta.index, meta.term);
        Ok(())
    }

    /// Writes entries (truncating any conflicting suffix), hard state and conf state in one
    /// batch, then flushes.
    pub fn persist(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        conf_state: Option<&ConfState>,
    ) -> Result<(), LogStoreError> {
        let mut batch = sled::Batch::default();
        let old_last = self.read().last_index;
        let mut new_last = old_last;
        if let Some(first) = entries.first() {
            for idx in first.index..=old_last {
                batch.remove(&entry_key(idx));
            }
            for e in entries {
                batch.insert(&entry_key(e.index), e.write_to_bytes()?);
            }
            new_last = entries.last().map_or(old_last, |e| e.index);
        }
        if let Some(hs) = hard_state {
            batch.insert(KEY_HARD_STATE, hs.write_to_bytes()?);
        }
        if let Some(cs) = conf_state {
            batch.insert(KEY_CONF_STATE, cs.write_to_bytes()?);
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        c.last_index = new_last;
        if let Some(hs) = hard_state {
            c.hard_state = hs.clone();
        }
        if let Some(cs) = conf_state {
            c.conf_state = cs.clone();
        }
        Ok(())
    }

    /// Records a new commit index in the hard state.
    pub fn set_commit(&self, commit: u64) -> Result<(), LogStoreError> {
        let mut hs = self.hard_state();
        if hs.commit == commit {
            return Ok(());
        }
        hs.commit = commit;
        self.persist(&[], Some(&hs), None)
    }

    fn first_index_inner(c: &Cache) -> u64 {
        c.compacted.0 + 1
    }

    fn storage_err(e: impl std::fmt::Display) -> raft::Error {
        raft::Error::Store(StorageError::Other(e.to_string().into()))
    }
}

impl raft::Storage for SledLogStore {
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
            if low < Self::first_index_inner(&c) {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if high > c.last_index + 1 {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for kv in self.tree.range(entry_key(low)..entry_key(high)) {
            let (k, v) = kv.map_err(Self::storage_err)?;
            let e: Entry = decode(&k, &v).map_err(Self::storage_err)?;
            size += u64::from(e.compute_size());
            if let Some(max) = max_size {
                if !out.is_empty() && size > max {
                    break;
                }
            }
            out.push(e);
        }
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
            if idx < Self::first_index_inner(&c) {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if idx > c.last_index {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        let key = entry_key(idx);
        match self.tree.get(key).map_err(Self::storage_err)? {
            Some(v) => {
                let e: Entry = decode(&key, &v).map_err(Self::storage_err)?;
                Ok(e.term)
            }
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(Self::first_index_inner(&self.read()))
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
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn persists_truncates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let s = SledLogStore::open(db).unwrap();
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
        let db = sled::open(dir.path()).unwrap();
        let s = SledLogStore::open(db).unwrap();
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
    }

    #[test]
    fn a_snapshot_that_predates_a_peer_is_not_offered_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledLogStore::open(sled::open(dir.path()).unwrap()).unwrap();
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
