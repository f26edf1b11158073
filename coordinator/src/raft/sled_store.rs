//! The Raft log in sled, as versions before the redb log kept it: entries under `e<index>`
//! (big-endian, so keys sort by index), the small records under `m:` keys. Every write is one
//! sled batch followed by a flush, which sled makes durable with `sync_file_range`: not across
//! a power cut (docs/durability.md). Kept to read such a log once and move it to redb
//! ([`super::redb_store::migrate_from_sled`]).

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use super::log_codec::{decode, decode_pair, encode, encode_pair, within_size};
use super::storage::{LogStore, LogStoreError, Persisted, WriteBatch};

const ENTRY_PREFIX: u8 = b'e';
const KEY_HARD_STATE: &[u8] = b"m:hard_state";
const KEY_CONF_STATE: &[u8] = b"m:conf_state";
const KEY_SNAPSHOT_META: &[u8] = b"m:snapshot_meta";
const KEY_MEMBERS: &[u8] = b"m:members";
const KEY_COMPACTED: &[u8] = b"m:compacted";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn sled_err(e: sled::Error) -> LogStoreError {
    LogStoreError::Backend(format!("sled: {e}"))
}

/// The Raft log of one node in a sled tree.
#[derive(Clone)]
pub struct SledLogStore {
    tree: sled::Tree,
    db: sled::Db,
}

impl SledLogStore {
    pub fn open(db: sled::Db) -> Result<Self, LogStoreError> {
        let tree = db.open_tree("raft").map_err(sled_err)?;
        Ok(SledLogStore { tree, db })
    }

    /// Removes the whole log, durably.
    pub fn clear(&self) -> Result<(), LogStoreError> {
        self.tree.clear().map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        Ok(())
    }

    fn get<M: protobuf::Message + Default>(&self, key: &[u8]) -> Result<M, LogStoreError> {
        match self.tree.get(key).map_err(sled_err)? {
            Some(v) => decode(&String::from_utf8_lossy(key), &v),
            None => Ok(M::default()),
        }
    }
}

impl LogStore for SledLogStore {
    fn load(&self) -> Result<Persisted, LogStoreError> {
        let hard_state: HardState = self.get(KEY_HARD_STATE)?;
        let conf_state: ConfState = self.get(KEY_CONF_STATE)?;
        let snapshot_meta: SnapshotMetadata = self.get(KEY_SNAPSHOT_META)?;
        let members = match self.tree.get(KEY_MEMBERS).map_err(sled_err)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| LogStoreError::Corrupt {
                key: "m:members".into(),
                reason: e.to_string(),
            })?,
            None => Default::default(),
        };
        let compacted = match self.tree.get(KEY_COMPACTED).map_err(sled_err)? {
            Some(v) => decode_pair(&v).ok_or_else(|| LogStoreError::Corrupt {
                key: "m:compacted".into(),
                reason: format!("{} bytes, want 16", v.len()),
            })?,
            None => (0, 0),
        };
        let last_entry = match self.tree.scan_prefix([ENTRY_PREFIX]).next_back() {
            Some(kv) => {
                let (k, _) = kv.map_err(sled_err)?;
                let b: [u8; 8] = k.get(1..9).and_then(|s| s.try_into().ok()).ok_or_else(|| {
                    LogStoreError::Corrupt {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        reason: "entry key is not 9 bytes".into(),
                    }
                })?;
                Some(u64::from_be_bytes(b))
            }
            None => None,
        };
        Ok(Persisted {
            hard_state,
            conf_state,
            snapshot_meta,
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
        let rows = self.tree.range(entry_key(low)..entry_key(high));
        within_size(
            max_size,
            rows.map(|kv| {
                let (k, v) = kv.map_err(sled_err)?;
                decode(&String::from_utf8_lossy(&k), &v)
            }),
        )
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError> {
        let key = entry_key(index);
        match self.tree.get(key).map_err(sled_err)? {
            Some(v) => decode(&String::from_utf8_lossy(&key), &v).map(Some),
            None => Ok(None),
        }
    }

    fn write(&self, b: WriteBatch) -> Result<(), LogStoreError> {
        let mut batch = sled::Batch::default();
        for (from, to) in b.remove {
            for idx in from..=to {
                batch.remove(&entry_key(idx));
            }
        }
        for e in &b.entries {
            batch.insert(&entry_key(e.index), encode(e)?);
        }
        if let Some(hs) = &b.hard_state {
            batch.insert(KEY_HARD_STATE, encode(hs)?);
        }
        if let Some(cs) = &b.conf_state {
            batch.insert(KEY_CONF_STATE, encode(cs)?);
        }
        if let Some(meta) = &b.snapshot_meta {
            batch.insert(KEY_SNAPSHOT_META, encode(meta)?);
        }
        if let Some(m) = &b.members {
            let v = serde_json::to_vec(m).map_err(|e| LogStoreError::Encode(e.to_string()))?;
            batch.insert(KEY_MEMBERS, v);
        }
        if let Some(p) = b.compacted {
            batch.insert(KEY_COMPACTED, &encode_pair(p));
        }
        self.tree.apply_batch(batch).map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        Ok(())
    }
}
