//! Snapshot files: one file per (term, index), written to a temporary name, fsynced and renamed,
//! so a crash never leaves a half-written file under a final name. The transport streams these
//! files to peers.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::snapshots::{read_header, write_header, SnapshotStore, SnapshotWriter};
use super::storage::Members;

#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Opens (creating) `dir` and removes leftovers of interrupted writes or transfers.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "tmp") {
                tracing::info!(path = %p.display(), "removing an incomplete snapshot file");
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(SnapshotDir { dir })
    }

    pub fn path(&self, term: u64, index: u64) -> PathBuf {
        self.dir.join(format!("snap-{term:020}-{index:020}.snap"))
    }

    /// A fresh temporary path for a snapshot this node writes.
    pub fn temp_path(&self, term: u64, index: u64) -> PathBuf {
        let n = uuid::Uuid::new_v4().simple();
        self.dir
            .join(format!("snap-{term:020}-{index:020}-{n}.tmp"))
    }

    /// A fresh temporary path for a snapshot being received from the leader.
    pub fn receive_path(&self, term: u64, index: u64) -> PathBuf {
        let n = uuid::Uuid::new_v4().simple();
        self.dir
            .join(format!("recv-{term:020}-{index:020}-{n}.tmp"))
    }

    /// Writes a snapshot: header, then `body`; durable under its final name on return.
    pub fn write(
        &self,
        term: u64,
        index: u64,
        members: &Members,
        body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<PathBuf> {
        let tmp = self.temp_path(term, index);
        let result = (|| {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            write_header(&mut w, members)?;
            body(&mut w)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            Ok::<(), std::io::Error>(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.publish(&tmp, term, index)
    }

    /// Renames a complete, synced temporary file to its final name and syncs the directory.
    pub fn publish(&self, tmp: &Path, term: u64, index: u64) -> std::io::Result<PathBuf> {
        let path = self.path(term, index);
        std::fs::rename(tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Opens a snapshot: its member address book and a reader positioned at the state bytes.
    pub fn open_snapshot(
        &self,
        term: u64,
        index: u64,
    ) -> std::io::Result<(Members, BufReader<File>)> {
        let path = self.path(term, index);
        let mut r = BufReader::with_capacity(1 << 20, File::open(&path)?);
        let members = read_header(&mut r, &path.display().to_string())?;
        Ok((members, r))
    }

    /// Deletes snapshot files older than `index` (a newer one may be a transfer in progress).
    pub fn retain_from(&self, index: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_none_or(|e| e != "snap") {
                continue;
            }
            let file_index = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if file_index.is_some_and(|i| i < index) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

impl SnapshotStore for SnapshotDir {
    fn write(
        &self,
        term: u64,
        index: u64,
        members: &Members,
        body: SnapshotWriter,
    ) -> std::io::Result<()> {
        SnapshotDir::write(self, term, index, members, body).map(|_| ())
    }

    fn open(&self, term: u64, index: u64) -> std::io::Result<(Members, Box<dyn Read + Send>)> {
        let (members, r) = self.open_snapshot(term, index)?;
        Ok((members, Box::new(r)))
    }

    fn retain_from(&self, index: u64) {
        SnapshotDir::retain_from(self, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_round_trips_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path().join("s")).unwrap();
        let members: Members = [(1, "a:1".to_string()), (2, "b:2".to_string())].into();
        snaps
            .write(3, 10, &members, |w| w.write_all(b"{\"x\":1}"))
            .unwrap();
        snaps
            .write(3, 20, &members, |w| w.write_all(b"new"))
            .unwrap();
        std::fs::write(snaps.temp_path(3, 30), b"partial").unwrap();
        let (m, mut r) = snaps.open_snapshot(3, 10).unwrap();
        assert_eq!(m, members);
        let mut body = String::new();
        r.read_to_string(&mut body).unwrap();
        assert_eq!(body, "{\"x\":1}");
        snaps.retain_from(20);
        assert!(snaps.open_snapshot(3, 10).is_err());
        assert!(snaps.open_snapshot(3, 20).is_ok());
        // reopening removes the partial transfer
        let again = SnapshotDir::open(dir.path().join("s")).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(again.open_snapshot(3, 20).is_ok());
    }
}
