//! Snapshot files: one file per (term, index), written to a temporary name, fsynced and renamed,
//! so a crash never leaves a half-written file under a final name. The transport streams these
//! files to peers.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::snapshots::{read_header, verify, write_header, Sealing, SnapshotStore, SnapshotWriter};
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
        if let Err(e) = write_file(&tmp, members, body).and_then(|f| f.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.publish(&tmp, term, index)?;
        Ok(self.path(term, index))
    }

    /// A temporary copy of snapshot (term, index) with its state rewritten by `rewrite` (for a
    /// peer that reads only an older format); the caller removes it once sent, and a crash
    /// leaves a `.tmp` that [`Self::open`] removes.
    pub fn rewritten_copy(
        &self,
        term: u64,
        index: u64,
        rewrite: impl FnOnce(&mut dyn Read, &mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<PathBuf> {
        let (members, mut state) = self.open_snapshot(term, index)?;
        let n = uuid::Uuid::new_v4().simple();
        let tmp = self
            .dir
            .join(format!("send-{term:020}-{index:020}-{n}.tmp"));
        write_file(&tmp, &members, |w| rewrite(&mut state, w))?;
        Ok(tmp)
    }

    /// Renames a complete, synced temporary file to its final name and syncs the directory.
    /// An existing snapshot of the same (term, index) is never replaced: Raft guarantees it
    /// holds the same state, and it may be the live one being read or streamed. The temporary
    /// file is then removed. Returns false in that case.
    pub fn publish(&self, tmp: &Path, term: u64, index: u64) -> std::io::Result<bool> {
        let path = self.path(term, index);
        // Checked, then renamed: the one place that publishes received snapshots takes one
        // at a time, and a snapshot this node writes of the same (term, index) holds the same
        // state. (A hard link would make the check atomic, but not every file system has them.)
        if path.exists() {
            std::fs::remove_file(tmp)?;
            return Ok(false);
        }
        std::fs::rename(tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }

    /// Checks a complete snapshot file's checksum; `Ok` holds the length of its header and state.
    pub fn verify_file(path: &Path) -> std::io::Result<u64> {
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        verify(
            &mut BufReader::with_capacity(1 << 20, f),
            size,
            &path.display().to_string(),
        )
    }

    /// Opens a snapshot after checking its checksum: its member address book and a reader
    /// positioned at the state bytes, ending before the trailer.
    pub fn open_snapshot(
        &self,
        term: u64,
        index: u64,
    ) -> std::io::Result<(Members, std::io::Take<BufReader<File>>)> {
        Self::open_file(&self.path(term, index))
    }

    /// [`Self::open_snapshot`] for a file at any path (a snapshot still being received).
    pub fn open_file(path: &Path) -> std::io::Result<(Members, std::io::Take<BufReader<File>>)> {
        let content = Self::verify_file(path)?;
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?).take(content);
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
    ) -> std::io::Result<u64> {
        let path = SnapshotDir::write(self, term, index, members, body)?;
        Ok(std::fs::metadata(path)?.len())
    }

    fn open(&self, term: u64, index: u64) -> std::io::Result<(Members, Box<dyn Read + Send>)> {
        let (members, r) = self.open_snapshot(term, index)?;
        Ok((members, Box::new(r)))
    }

    fn retain_from(&self, index: u64) {
        SnapshotDir::retain_from(self, index)
    }
}

/// A snapshot file at `path`: header, `body`, trailer; removed again if any of it fails.
fn write_file(
    path: &Path,
    members: &Members,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<File> {
    let result = (|| {
        let mut w = Sealing::new(BufWriter::with_capacity(1 << 20, File::create(path)?));
        write_header(&mut w, members)?;
        body(&mut w)?;
        w.seal()?.into_inner().map_err(|e| e.into_error())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
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

    #[test]
    fn a_corrupt_or_torn_snapshot_is_an_error_not_a_state() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path().to_path_buf()).unwrap();
        let members: Members = [(1, "a:1".to_string())].into();
        let path = snaps
            .write(2, 5, &members, |w| w.write_all(b"{\"runs\":[1,2,3]}"))
            .unwrap();
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        flipped[20] ^= 1; // in the state bytes
        std::fs::write(&path, &flipped).unwrap();
        let err = snaps.open_snapshot(2, 5).err().unwrap().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");

        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        let err = snaps.open_snapshot(2, 5).err().unwrap().to_string();
        assert!(err.contains("trailer"), "{err}");

        std::fs::write(&path, b"{}\n{}").unwrap();
        assert!(snaps.open_snapshot(2, 5).is_err());

        std::fs::write(&path, &good).unwrap();
        let (_, mut r) = snaps.open_snapshot(2, 5).unwrap();
        let mut body = String::new();
        r.read_to_string(&mut body).unwrap();
        assert_eq!(
            body, "{\"runs\":[1,2,3]}",
            "the reader stops before the trailer"
        );
    }

    #[test]
    fn a_received_snapshot_never_replaces_the_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path().to_path_buf()).unwrap();
        let members: Members = [(1, "a:1".to_string())].into();
        let live = snaps
            .write(2, 5, &members, |w| w.write_all(b"ours"))
            .unwrap();
        let before = std::fs::read(&live).unwrap();
        let tmp = snaps.receive_path(2, 5);
        std::fs::write(&tmp, b"theirs").unwrap();
        assert!(!snaps.publish(&tmp, 2, 5).unwrap());
        assert_eq!(std::fs::read(&live).unwrap(), before);
        assert!(!tmp.exists(), "the received copy is removed");
        let tmp = snaps.receive_path(2, 6);
        std::fs::write(&tmp, b"newer").unwrap();
        assert!(snaps.publish(&tmp, 2, 6).unwrap());
        assert_eq!(std::fs::read(snaps.path(2, 6)).unwrap(), b"newer");
    }
}
