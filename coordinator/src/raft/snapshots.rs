//! Where a node keeps its snapshots. Raft messages carry only a snapshot's metadata; the bytes
//! are a file (`SnapshotDir`) that the transport streams, or an in-memory blob in the
//! simulation (`MemSnapshots`).
//!
//! A snapshot holds one line of JSON with the member address book, then the state machine's
//! own bytes, then a trailer: [`MAGIC`], the length of what precedes the trailer (u64, big
//! endian) and its SHA-256. The trailer is verified before a snapshot is used, received or
//! streamed on, so a torn or corrupted file is an error and never a state.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::storage::Members;

/// Writes a consistent copy of the state, away from the Raft thread.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

pub trait SnapshotStore: Send + Sync + 'static {
    /// Writes the snapshot of (`term`, `index`): durable under its final name on return, and
    /// never visible half-written. Returns its size in bytes.
    fn write(
        &self,
        term: u64,
        index: u64,
        members: &Members,
        body: SnapshotWriter,
    ) -> std::io::Result<u64>;
    /// The member address book of a snapshot and a reader positioned at the state bytes.
    fn open(&self, term: u64, index: u64) -> std::io::Result<(Members, Box<dyn Read + Send>)>;
    /// Forgets snapshots older than `index` (a newer one may be a transfer in progress).
    fn retain_from(&self, index: u64);
}

/// Marks the trailer of a checksummed snapshot (format 1).
pub const MAGIC: &[u8; 8] = b"GSNAP\x00\x00\x01";
/// Magic, length and SHA-256.
pub const TRAILER_LEN: u64 = 8 + 8 + 32;

/// Counts and hashes what is written through it, for the trailer.
pub struct Sealing<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Sealing<W> {
    pub fn new(inner: W) -> Self {
        Sealing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// Writes the trailer and hands back the inner writer.
    pub fn seal(mut self) -> std::io::Result<W> {
        let digest = self.hash.finalize();
        self.inner.write_all(MAGIC)?;
        self.inner.write_all(&self.len.to_be_bytes())?;
        self.inner.write_all(&digest)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn invalid(what: &str, why: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("snapshot {what}: {why}"),
    )
}

/// Reads a whole snapshot of `size` bytes from `r` and checks its trailer; returns the length
/// of the header and state (what a reader may consume). `what` names it in the error.
pub fn verify(r: &mut dyn Read, size: u64, what: &str) -> std::io::Result<u64> {
    if size < TRAILER_LEN {
        return Err(invalid(
            what,
            format!("{size} bytes is too short to be a snapshot"),
        ));
    }
    let content = size - TRAILER_LEN;
    let mut hash = Sha256::new();
    let copied = std::io::copy(&mut (&mut *r).take(content), &mut HashInto(&mut hash))?;
    if copied != content {
        return Err(invalid(
            what,
            format!("truncated at {copied} of {size} bytes"),
        ));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    r.read_exact(&mut trailer)
        .map_err(|e| invalid(what, format!("no trailer: {e}")))?;
    if &trailer[..8] != MAGIC {
        return Err(invalid(
            what,
            "no checksum trailer (not a Gantry snapshot, or torn)",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&trailer[8..16]);
    if u64::from_be_bytes(len) != content {
        return Err(invalid(
            what,
            format!(
                "the trailer says {} bytes, the file holds {content}",
                u64::from_be_bytes(len)
            ),
        ));
    }
    if hash.finalize().as_slice() != &trailer[16..] {
        return Err(invalid(what, "checksum mismatch (the file is corrupt)"));
    }
    Ok(content)
}

struct HashInto<'a>(&'a mut Sha256);

impl Write for HashInto<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    ) -> std::io::Result<u64> {
        let mut w = Sealing::new(Vec::new());
        write_header(&mut w, members)?;
        body(&mut w)?;
        let bytes = w.seal()?;
        let size = bytes.len() as u64;
        self.put(term, index, Arc::new(bytes));
        Ok(size)
    }

    fn open(&self, term: u64, index: u64) -> std::io::Result<(Members, Box<dyn Read + Send>)> {
        let bytes = self.bytes(term, index).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no snapshot at index {index} (term {term})"),
            )
        })?;
        let what = format!("{term}/{index}");
        let content = verify(&mut bytes.as_slice(), bytes.len() as u64, &what)?;
        let mut r = std::io::Cursor::new(bytes.to_vec()).take(content);
        let members = read_header(&mut r, &what)?;
        Ok((members, Box::new(r)))
    }

    fn retain_from(&self, index: u64) {
        self.lock().retain(|(_, i), _| *i >= index);
    }
}
