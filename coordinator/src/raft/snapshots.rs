//! Where a node keeps its snapshots. Raft messages carry only a snapshot's metadata; the bytes
//! are a file (`SnapshotDir`) that the transport streams, or an in-memory blob in the
//! simulation (`MemSnapshots`).
//!
//! A snapshot holds one line of JSON with the member address book, then the state machine's
//! own bytes.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::sync::{Arc, Mutex};

use super::storage::Members;

/// Writes a consistent copy of the state, away from the Raft thread.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

pub trait SnapshotStore: Send + Sync + 'static {
    /// Writes the snapshot of (`term`, `index`): durable under its final name on return, and
    /// never visible half-written.
    fn write(
        &self,
        term: u64,
        index: u64,
        members: &Members,
        body: SnapshotWriter,
    ) -> std::io::Result<()>;
    /// The member address book of a snapshot and a reader positioned at the state bytes.
    fn open(&self, term: u64, index: u64) -> std::io::Result<(Members, Box<dyn Read + Send>)>;
    /// Forgets snapshots older than `index` (a newer one may be a transfer in progress).
    fn retain_from(&self, index: u64);
}

/// Encodes the header line of a snapshot.
pub fn write_header(w: &mut dyn Write, members: &Members) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, members)?;
    w.write_all(b"\n")
}

/// Reads the header line of a snapshot; `what` names it in the error.
pub fn read_header(r: &mut dyn BufRead, what: &str) -> std::io::Result<Members> {
    let mut header = String::new();
    r.read_line(&mut header)?;
    serde_json::from_str(header.trim_end()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("snapshot {what}: bad header: {e}"),
        )
    })
}

/// Snapshot bytes by (term, index).
type Blobs = BTreeMap<(u64, u64), Arc<Vec<u8>>>;

/// Snapshots as byte blobs in memory; a clone shares them.
#[derive(Clone, Default)]
pub struct MemSnapshots(Arc<Mutex<Blobs>>);

impl MemSnapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Blobs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole snapshot of (`term`, `index`), as a transport would stream it.
    pub fn bytes(&self, term: u64, index: u64) -> Option<Arc<Vec<u8>>> {
        self.lock().get(&(term, index)).cloned()
    }

    /// Stores a snapshot received whole from a peer.
    pub fn put(&self, term: u64, index: u64, bytes: Arc<Vec<u8>>) {
        self.lock().insert((term, index), bytes);
    }
}

impl SnapshotStore for MemSnapshots {
    fn write(
        &self,
        term: u64,
        index: u64,
        members: &Members,
        body: SnapshotWriter,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        write_header(&mut buf, members)?;
        body(&mut buf)?;
        self.put(term, index, Arc::new(buf));
        Ok(())
    }

    fn open(&self, term: u64, index: u64) -> std::io::Result<(Members, Box<dyn Read + Send>)> {
        let bytes = self.bytes(term, index).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no snapshot at index {index} (term {term})"),
            )
        })?;
        let mut r = std::io::Cursor::new(bytes.to_vec());
        let members = read_header(&mut r, &format!("{term}/{index}"))?;
        Ok((members, Box::new(r)))
    }

    fn retain_from(&self, index: u64) {
        self.lock().retain(|(_, i), _| *i >= index);
    }
}
