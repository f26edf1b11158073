//! The Raft log in redb (`raft.redb` in the data directory): entries by index in one table,
//! the small records by name in another. Every write is one redb transaction committed with
//! `Durability::Immediate`, which fsyncs before it returns. (A commit index that moved alone
//! is not written by itself: `RaftStorage` adds it to the next write.)
//!
//! It replaced sled for the log: sled 0.34 makes its flushes durable with `sync_file_range`,
//! which does not survive a power cut, and the power-loss test lost acknowledged submissions
//! on it (docs/durability.md). A data directory written by an older version has its log in
//! sled; [`migrate_from_sled`] moves it over once, at start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use raft::eraftpb::{Entry, HardState};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::log_codec::{decode, decode_pair, encode, encode_pair, within_size};
use super::storage::{io_is_no_space, LogStore, LogStoreError, Persisted, WriteBatch};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT_META: &str = "snapshot_meta";
const MEMBERS: &str = "members";
const COMPACTED: &str = "compacted";

fn db_err(e: impl Into<redb::Error>) -> LogStoreError {
    match e.into() {
        redb::Error::Io(io) if io_is_no_space(&io) => LogStoreError::NoSpace(format!("redb: {io}")),
        other => LogStoreError::Backend(format!("redb: {other}")),
    }
}

/// The Raft log of one node in a redb file.
///
/// After an I/O error redb refuses every later operation (`PreviousIo`) until the file is
/// opened again, which recovers its last committed transaction. So a write that fails with an
/// I/O error (the disk full, typically) marks the store, and the next write reopens it first:
/// the node retries the same write once space is freed, and nothing committed is lost.
pub struct RedbLogStore {
    path: PathBuf,
    /// `None` only while a reopen has failed; the next write tries again.
    db: RwLock<Option<Database>>,
    reopen: AtomicBool,
}

impl RedbLogStore {
    /// Opens (or creates) the file; both tables exist afterwards.
    pub fn open(path: &Path) -> Result<Self, LogStoreError> {
        Ok(RedbLogStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Self::open_file(path)?)),
            reopen: AtomicBool::new(false),
        })
    }

    fn open_file(path: &Path) -> Result<Database, LogStoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) if io_is_no_space(&io) => {
                LogStoreError::NoSpace(format!("redb: cannot open {}: {io}", path.display()))
            }
            e => LogStoreError::Backend(format!("redb: cannot open {}: {e}", path.display())),
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(ENTRIES).map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(db)
    }

    fn db(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, LogStoreError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(LogStoreError::Backend(format!(
                "redb: {} is being opened again after a failed write",
                self.path.display()
            )));
        }
        Ok(guard)
    }

    /// Opens the file again after a failed write (see the type's doc).
    fn reopen_if_needed(&self) -> Result<(), LogStoreError> {
        if !self.reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be closed first: redb locks the file.
        drop(slot.take());
        *slot = Some(Self::open_file(&self.path)?);
        self.reopen.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "raft log reopened after a failed write");
        Ok(())
    }

    /// Whether nothing was ever written (no entry and no hard state).
    pub fn is_empty(&self) -> Result<bool, LogStoreError> {
        let db = self.db()?;
        let tx = begin_read(&db)?;
        let entries = tx.open_table(ENTRIES).map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        Ok(entries.is_empty().map_err(db_err)? && meta.is_empty().map_err(db_err)?)
    }

    fn meta<M: protobuf::Message + Default>(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<M, LogStoreError> {
        match table.get(key).map_err(db_err)? {
            Some(v) => decode(key, v.value()),
            None => Ok(M::default()),
        }
    }
}

impl LogStore for RedbLogStore {
    fn load(&self) -> Result<Persisted, LogStoreError> {
        let db = self.db()?;
        let tx = begin_read(&db)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        let entries = tx.open_table(ENTRIES).map_err(db_err)?;
        let members = match meta.get(MEMBERS).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| LogStoreError::Corrupt {
                key: MEMBERS.into(),
                reason: e.to_string(),
            })?,
            None => Default::default(),
        };
        let compacted = match meta.get(COMPACTED).map_err(db_err)? {
            Some(v) => decode_pair(v.value()).ok_or_else(|| LogStoreError::Corrupt {
                key: COMPACTED.into(),
                reason: format!("{} bytes, want 16", v.value().len()),
            })?,
            None => (0, 0),
        };
        let last_entry = entries.last().map_err(db_err)?.map(|(k, _)| k.value());
        Ok(Persisted {
            hard_state: Self::meta(&meta, HARD_STATE)?,
            conf_state: Self::meta(&meta, CONF_STATE)?,
            snapshot_meta: Self::meta(&meta, SNAPSHOT_META)?,
            members,
            compacted,
            last_entry,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let db = self.db()?;
        let tx = begin_read(&db)?;
        let table = tx.open_table(ENTRIES).map_err(db_err)?;
        let rows = table.range(low..high).map_err(db_err)?;
        within_size(
            max_size,
            rows.map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                decode(&format!("entry {}", k.value()), v.value())
            }),
        )
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError> {
        let db = self.db()?;
        let tx = begin_read(&db)?;
        let table = tx.open_table(ENTRIES).map_err(db_err)?;
        match table.get(index).map_err(db_err)? {
            Some(v) => decode(&format!("entry {index}"), v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn write(&self, b: WriteBatch) -> Result<(), LogStoreError> {
        self.reopen_if_needed()?;
        let result = self.write_once(&b);
        if let Err(e) = &result {
            if !matches!(e, LogStoreError::Encode(_)) {
                self.reopen.store(true, Ordering::Release);
            }
        }
        result
    }
}

fn begin_read(db: &Option<Database>) -> Result<redb::ReadTransaction, LogStoreError> {
    match db {
        Some(db) => db.begin_read().map_err(db_err),
        None => Err(LogStoreError::Backend("redb: the log is closed".into())),
    }
}

impl RedbLogStore {
    fn write_once(&self, b: &WriteBatch) -> Result<(), LogStoreError> {
        let db = self.db()?;
        let Some(db) = db.as_ref() else {
            return Err(LogStoreError::Backend("redb: the log is closed".into()));
        };
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut entries = tx.open_table(ENTRIES).map_err(db_err)?;
            for &(from, to) in &b.remove {
                if from > to {
                    continue;
                }
                // Only the keys that exist: a range may span far more indexes than entries.
                let keys: Vec<u64> = entries
                    .range(from..=to)
                    .map_err(db_err)?
                    .map(|kv| kv.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for k in keys {
                    entries.remove(k).map_err(db_err)?;
                }
            }
            for e in &b.entries {
                entries
                    .insert(e.index, encode(e)?.as_slice())
                    .map_err(db_err)?;
            }
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let mut put = |key: &str, v: &[u8]| meta.insert(key, v).map(|_| ()).map_err(db_err);
            if let Some(hs) = &b.hard_state {
                put(HARD_STATE, &encode(hs)?)?;
            }
            if let Some(cs) = &b.conf_state {
                put(CONF_STATE, &encode(cs)?)?;
            }
            if let Some(m) = &b.snapshot_meta {
                put(SNAPSHOT_META, &encode(m)?)?;
            }
            if let Some(m) = &b.members {
                let v = serde_json::to_vec(m).map_err(|e| LogStoreError::Encode(e.to_string()))?;
                put(MEMBERS, &v)?;
            }
            if let Some(p) = b.compacted {
                put(COMPACTED, &encode_pair(p))?;
            }
        }
        tx.commit().map_err(db_err)
    }
}

/// Moves a log that an older version kept in sled into `to`, in one durable write, when `to`
/// is empty and sled holds one; then empties sled's copy so it is never read again. Returns
/// how many entries moved.
pub fn migrate_from_sled(
    from: &super::SledLogStore,
    to: &RedbLogStore,
) -> Result<usize, LogStoreError> {
    if !to.is_empty()? {
        return Ok(0);
    }
    let old = from.load()?;
    if old.last_entry.is_none() && old.hard_state == HardState::default() {
        return Ok(0);
    }
    let entries = match old.last_entry {
        Some(last) => from.entries(0, last.saturating_add(1), None)?,
        None => Vec::new(),
    };
    let moved = entries.len();
    to.write(WriteBatch {
        remove: Vec::new(),
        entries,
        hard_state: Some(old.hard_state),
        conf_state: Some(old.conf_state),
        snapshot_meta: Some(old.snapshot_meta),
        members: Some(old.members),
        compacted: Some(old.compacted),
    })?;
    from.clear()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::SledLogStore;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_sled_log_moves_to_redb_once_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledLogStore::open(sled::open(dir.path().join("sled")).unwrap()).unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 4,
            ..Default::default()
        };
        sled.write(WriteBatch {
            entries: (3..=5).map(|i| entry(i, 3)).collect(),
            hard_state: Some(hs.clone()),
            members: Some([(1, "a:1".to_string()), (2, "b:2".to_string())].into()),
            compacted: Some((2, 1)),
            ..Default::default()
        })
        .unwrap();
        let redb = RedbLogStore::open(&dir.path().join("raft.redb")).unwrap();
        assert_eq!(migrate_from_sled(&sled, &redb).unwrap(), 3);
        let p = redb.load().unwrap();
        assert_eq!(p.hard_state, hs);
        assert_eq!(p.compacted, (2, 1));
        assert_eq!(p.last_entry, Some(5));
        assert_eq!(p.members.len(), 2);
        assert_eq!(
            redb.entries(3, 6, None).unwrap(),
            (3..=5).map(|i| entry(i, 3)).collect::<Vec<_>>()
        );
        // sled's copy is gone, and a second start moves nothing.
        assert_eq!(sled.load().unwrap().last_entry, None);
        assert_eq!(migrate_from_sled(&sled, &redb).unwrap(), 0);
        assert_eq!(redb.load().unwrap().last_entry, Some(5));
    }
}
