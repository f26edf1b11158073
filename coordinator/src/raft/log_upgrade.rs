//! Opens a data directory's Raft log, moving it first from where an older version kept it:
//! `raft.redb` (before the write-ahead log), or sled (before redb). The copy is made whole
//! under a temporary name and renamed into place ([`WalLogStore::create_from`]); only then is
//! the old copy removed, so a crash at any point leaves one complete log to start from.

use std::path::Path;

use super::redb_store::migrate_from_sled;
use super::storage::{LogStore, LogStoreError};
use super::{RedbLogStore, SledLogStore, WalLogStore};

/// The log's directory inside a data directory.
pub const WAL_DIR: &str = "raft-wal";
/// Where versions before the write-ahead log kept it.
pub const REDB_FILE: &str = "raft.redb";

/// The data directory's log, moved from an older version's store if need be.
pub fn open_raft_log(data_dir: &Path, sled: &sled::Db) -> Result<WalLogStore, LogStoreError> {
    let wal = data_dir.join(WAL_DIR);
    let redb = data_dir.join(REDB_FILE);
    if !wal.exists() {
        let old = SledLogStore::open(sled.clone())?;
        let (moved, from) = if redb.exists() {
            let r = RedbLogStore::open(&redb)?;
            migrate_from_sled(&old, &r)?;
            let moved = WalLogStore::create_from(
                &wal,
                Some(&r as &dyn LogStore),
                super::wal_store::SEGMENT_BYTES,
            )?;
            (moved, REDB_FILE)
        } else {
            let moved = WalLogStore::create_from(
                &wal,
                Some(&old as &dyn LogStore),
                super::wal_store::SEGMENT_BYTES,
            )?;
            (moved, "sled")
        };
        if moved > 0 {
            tracing::info!(
                entries = moved,
                from,
                to = WAL_DIR,
                "moved the Raft log to the write-ahead log"
            );
        }
        old.clear()?;
    }
    if redb.exists() {
        // Copied already (the rename above is durable before this runs).
        std::fs::remove_file(&redb).map_err(|e| {
            LogStoreError::Backend(format!(
                "cannot remove {} after moving its log: {e}",
                redb.display()
            ))
        })?;
    }
    WalLogStore::open(&wal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::WriteBatch;
    use raft::eraftpb::{Entry, HardState};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn batch() -> WriteBatch {
        WriteBatch {
            entries: (3..=5).map(|i| entry(i, 3)).collect(),
            hard_state: Some(HardState {
                term: 3,
                vote: 2,
                commit: 4,
                ..Default::default()
            }),
            members: Some([(1, "a:1".to_string()), (2, "b:2".to_string())].into()),
            compacted: Some((2, 1)),
            ..Default::default()
        }
    }

    fn assert_moved(log: &WalLogStore) {
        let p = log.load().unwrap();
        assert_eq!(p.hard_state.vote, 2);
        assert_eq!(p.hard_state.commit, 4);
        assert_eq!(p.compacted, (2, 1));
        assert_eq!(p.members.len(), 2);
        assert_eq!(
            log.entries(3, 6, None).unwrap(),
            (3..=5).map(|i| entry(i, 3)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_redb_log_moves_to_the_wal_once_and_the_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("sled")).unwrap();
        {
            let r = RedbLogStore::open(&dir.path().join(REDB_FILE)).unwrap();
            r.write(batch()).unwrap();
        }
        let log = open_raft_log(dir.path(), &db).unwrap();
        assert_moved(&log);
        assert!(!dir.path().join(REDB_FILE).exists());
        log.write(WriteBatch {
            entries: vec![entry(6, 3)],
            ..Default::default()
        })
        .unwrap();
        drop(log);
        // A second start reads the WAL, with what was written since.
        let log = open_raft_log(dir.path(), &db).unwrap();
        assert_eq!(log.load().unwrap().last_entry, Some(6));
    }

    #[test]
    fn a_sled_log_moves_to_the_wal_and_leaves_sled() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("sled")).unwrap();
        SledLogStore::open(db.clone())
            .unwrap()
            .write(batch())
            .unwrap();
        let log = open_raft_log(dir.path(), &db).unwrap();
        assert_moved(&log);
        let sled_log = SledLogStore::open(db.clone()).unwrap().load().unwrap();
        assert_eq!(sled_log.last_entry, None, "sled's copy is emptied");
    }

    #[test]
    fn a_new_directory_starts_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("sled")).unwrap();
        let log = open_raft_log(dir.path(), &db).unwrap();
        let p = log.load().unwrap();
        assert_eq!(p.last_entry, None);
        assert_eq!(p.hard_state, HardState::default());
        assert!(dir.path().join(WAL_DIR).is_dir());
    }
}
