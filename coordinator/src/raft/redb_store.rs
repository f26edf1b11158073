//! The Raft log in redb (`raft.redb` in the data directory): entries by index in one table,
//! the small records by name in another. Every write is one redb transaction committed with
//! `Durability::Immediate`, which fsyncs before it returns.
//!
//! It replaced sled for the log: sled 0.34 makes its flushes durable with `sync_file_range`,
//! which does not survive a power cut, and the power-loss test lost acknowledged submissions
//! on it (docs/durability.md). A data directory written by an older version has its log in
//! sled; [`migrate_from_sled`] moves it over once, at start.

use raft::eraftpb::{Entry, HardState};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::log_codec::{decode, decode_pair, encode, encode_pair, within_size};
use super::storage::{LogStore, LogStoreError, Persisted, WriteBatch};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT_META: &str = "snapshot_meta";
const MEMBERS: &str = "members";
const COMPACTED: &str = "compacted";

fn db_err(e: impl Into<redb::Error>) -> LogStoreError {
    LogStoreError::Backend(format!("redb: {}", e.into()))
}

/// The Raft log of one node in a redb file.
pub struct RedbLogStore {
    db: Database,
}

impl RedbLogStore {
    /// Opens (or creates) the file; both tables exist afterwards.
    pub fn open(path: &std::path::Path) -> Result<Self, LogStoreError> {
        let db = Database::create(path).map_err(|e| {
            LogStoreError::Backend(format!("redb: cannot open {}: {e}", path.display()))
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(ENTRIES).map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(RedbLogStore { db })
    }

    /// Whether nothing was ever written (no entry and no hard state).
    pub fn is_empty(&self) -> Result<bool, LogStoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
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
        let tx = self.db.begin_read().map_err(db_err)?;
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
        let tx = self.db.begin_read().map_err(db_err)?;
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
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(ENTRIES).map_err(db_err)?;
        match table.get(index).map_err(db_err)? {
            Some(v) => decode(&format!("entry {index}"), v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn write(&self, b: WriteBatch) -> Result<(), LogStoreError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut entries = tx.open_table(ENTRIES).map_err(db_err)?;
            for (from, to) in b.remove {
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
