//! The Raft log as a write-ahead log (`raft-wal/` in the data directory), as etcd keeps its
//! own: every write is one record appended to the newest segment file and made durable with
//! one `fdatasync`. A B-tree store (redb, before it) rewrote about seven scattered pages per
//! write; an append writes what changed and nothing else.
//!
//! - A segment (`{seq:016x}.wal`) starts with [`SEGMENT_MAGIC`] and a checkpoint record that
//!   holds every small field (hard state, configuration, snapshot metadata, members,
//!   compaction point), so once no live entry lies in the oldest segments they are deleted
//!   without losing anything. A new segment is written under a temporary name, fsynced,
//!   renamed, and its directory fsynced, before anything is appended to it.
//! - In memory: where each live entry's bytes lie, and the small fields. Entries are read
//!   back with `pread` and decoded on demand; opening reads every segment once.
//! - A record whose frame is short or whose CRC does not match at the end of the newest
//!   segment is a write that never finished (never acknowledged: the write returns only after
//!   its fdatasync), and is cut off at open. Anywhere else it is damage, and opening fails
//!   with the segment and offset named rather than serving a log with a hole in it.
//! - A failed write (a full disk) cuts its bytes off again; if even that fails, the next
//!   write reads the directory back first.
//! - Zeros are kept written ahead of the newest segment's data ([`super::zero_ahead`]), so an
//!   append's fdatasync writes data and no file size; zeros after the last record are the
//!   clean end of a segment, not a tear.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::Entry;

use super::log_codec::{decode, within_size};
use super::recent_entries::{RecentEntries, RECENT_ENTRY_BYTES};
use super::storage::{io_is_no_space, LogStore, LogStoreError, Persisted, WriteBatch};
use super::wal_record::{
    encode_record, parse_ops, read_frame, Frame, Op, FRAME_HEADER, SEGMENT_MAGIC,
};
use super::zero_ahead::{ZeroAhead, ZERO_AHEAD, ZERO_CHUNK};

/// A segment is closed and a new one started once the next record would take it past this
/// (etcd's segment size).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Where a live entry's protobuf bytes lie.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    seq: u64,
    file: Arc<File>,
    /// Bytes of whole records (the append offset).
    len: u64,
    /// The file's blocks are written (records or zeros) up to here, as found at open.
    zeroed_end: u64,
    /// Whether anything follows its checkpoint (a segment that holds only one is never closed
    /// for a new one, however large the next record).
    has_batches: bool,
}

#[derive(Default)]
struct Log {
    /// Oldest first; writes go to the last.
    segments: Vec<Segment>,
    index: BTreeMap<u64, Loc>,
    /// The newest entries as written, so they are not read back from disk.
    recent: RecentEntries,
    persisted: Persisted,
    /// A failed write could not be cut off again: the directory is read again before the next.
    damaged: bool,
}

enum Found {
    Held(Entry),
    OnDisk(u64, Loc, Arc<File>),
}

/// The Raft log of one node in a directory of append-only segment files.
pub struct WalLogStore {
    dir: PathBuf,
    segment_bytes: u64,
    log: Mutex<Log>,
    zeros: ZeroAhead,
}

fn io_err(what: String, e: std::io::Error) -> LogStoreError {
    if io_is_no_space(&e) {
        LogStoreError::NoSpace(format!("raft log: {what}: {e}"))
    } else {
        LogStoreError::Backend(format!("raft log: {what}: {e}"))
    }
}

fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> LogStoreError {
    LogStoreError::Corrupt {
        key: key.into(),
        reason: reason.into(),
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn follow_newest(zeros: &ZeroAhead, log: &Log) {
    if let Some(s) = log.segments.last() {
        zeros.follow(s.seq, s.file.clone(), s.len, s.zeroed_end);
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl WalLogStore {
    /// Opens the log in `dir`, creating an empty one if `dir` does not exist.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, LogStoreError> {
        if !dir.exists() {
            Self::create_from(dir, None, segment_bytes)?;
        }
        let log = scan(dir)?;
        let zeros = ZeroAhead::start(ZERO_AHEAD, ZERO_CHUNK, segment_bytes);
        follow_newest(&zeros, &log);
        Ok(WalLogStore {
            dir: dir.to_path_buf(),
            segment_bytes,
            log: Mutex::new(log),
            zeros,
        })
    }

    /// Creates the log in `dir` (which must not exist) holding everything `from` holds, in
    /// one step: it is written under a temporary name and renamed whole, so a crash leaves
    /// either no log (and `from` is copied again) or all of it. Returns how many entries it
    /// copied.
    pub fn create_from(
        dir: &Path,
        from: Option<&dyn LogStore>,
        segment_bytes: u64,
    ) -> Result<usize, LogStoreError> {
        let what = |w: &str| format!("{w} {}", dir.display());
        let mut tmp = dir.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_err(what("clear a partial"), e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io_err(what("create"), e))?;
        let log = Log::default();
        let first = write_segment(&tmp, 1, &log).map_err(|e| io_err(what("create"), e))?;
        let store = WalLogStore {
            dir: tmp.clone(),
            segment_bytes,
            log: Mutex::new(Log {
                segments: vec![first],
                ..log
            }),
            zeros: ZeroAhead::disabled(),
        };
        let mut copied = 0;
        if let Some(from) = from {
            let p = from.load()?;
            store.write(WriteBatch {
                hard_state: Some(p.hard_state),
                conf_state: Some(p.conf_state),
                snapshot_meta: Some(p.snapshot_meta),
                members: Some(p.members),
                compacted: Some(p.compacted),
                ..Default::default()
            })?;
            if let Some(last) = p.last_entry {
                let mut next = p.compacted.0.saturating_add(1);
                while next <= last {
                    let entries = from.entries(next, last.saturating_add(1), Some(8 << 20))?;
                    let Some(end) = entries.last().map(|e| e.index) else {
                        break;
                    };
                    copied += entries.len();
                    store.write(WriteBatch {
                        entries,
                        ..Default::default()
                    })?;
                    next = end.saturating_add(1);
                }
            }
        }
        drop(store);
        std::fs::rename(&tmp, dir).map_err(|e| io_err(what("rename into"), e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(|e| io_err(format!("fsync {}", parent.display()), e))?;
        }
        Ok(copied)
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entries of `low..high`, at most about `max_size` bytes (at least one): those in
    /// memory, and where the others lie, so reading them happens outside the lock.
    fn locate(&self, low: u64, high: u64, max_size: Option<u64>) -> Vec<Found> {
        let log = self.lock();
        let mut out = Vec::new();
        let mut size = 0u64;
        for (&i, &loc) in log.index.range(low..high) {
            size += u64::from(loc.len);
            if max_size.is_some_and(|max| !out.is_empty() && size > max) {
                break;
            }
            if let Some(e) = log.recent.get(i) {
                out.push(Found::Held(e.clone()));
            } else if let Some(s) = log.segment(loc.seq) {
                out.push(Found::OnDisk(i, loc, s.file.clone()));
            }
        }
        out
    }

    fn read(&self, found: Found) -> Result<Entry, LogStoreError> {
        match found {
            Found::Held(e) => Ok(e),
            Found::OnDisk(i, loc, file) => self.read_entry(i, loc, &file),
        }
    }

    fn read_entry(&self, index: u64, loc: Loc, file: &File) -> Result<Entry, LogStoreError> {
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
            io_err(
                format!("read entry {index} in {}", segment_name(loc.seq)),
                e,
            )
        })?;
        let e: Entry = decode(&format!("entry {index}"), &buf)?;
        if e.index != index {
            return Err(corrupt(
                format!("entry {index}"),
                format!("the bytes hold entry {}", e.index),
            ));
        }
        Ok(e)
    }

    /// Starts segment `seq + 1` with a checkpoint of the fields as they stand.
    fn roll(&self, log: &mut Log) -> Result<(), LogStoreError> {
        let seq = log.segments.last().map_or(1, |s| s.seq + 1);
        let seg = write_segment(&self.dir, seq, log)
            .map_err(|e| io_err(format!("start {}", segment_name(seq)), e))?;
        log.segments.push(seg);
        follow_newest(&self.zeros, log);
        Ok(())
    }

    /// Deletes the oldest segments once no live entry lies in them (the newest is kept).
    fn drop_dead_segments(&self, log: &mut Log) {
        let Some(active) = log.segments.last().map(|s| s.seq) else {
            return;
        };
        let first_live = log.index.values().next().map_or(active, |l| l.seq);
        let mut dropped = false;
        while log.segments.len() > 1 && log.segments[0].seq < first_live {
            let path = self.dir.join(segment_name(log.segments[0].seq));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot delete a raft log segment that holds no live entry; trying again \
                     after the next compaction");
                break;
            }
            log.segments.remove(0);
            dropped = true;
        }
        if dropped {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "fsync after deleting segments");
            }
        }
    }
}

/// Writes a segment holding only a checkpoint of `log`'s fields: under a temporary name,
/// fsynced, renamed, directory fsynced.
fn write_segment(dir: &Path, seq: u64, log: &Log) -> std::io::Result<Segment> {
    let p = &log.persisted;
    let checkpoint = WriteBatch {
        hard_state: Some(p.hard_state.clone()),
        conf_state: Some(p.conf_state.clone()),
        snapshot_meta: Some(p.snapshot_meta.clone()),
        members: Some(p.members.clone()),
        compacted: Some(p.compacted),
        ..Default::default()
    };
    let rec = encode_record(&checkpoint, true).map_err(std::io::Error::other)?;
    let path = dir.join(segment_name(seq));
    let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(SEGMENT_MAGIC)?;
        f.write_all(&rec)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        Ok(f)
    })();
    match result {
        Ok(f) => Ok(Segment {
            seq,
            file: Arc::new(f),
            len: (SEGMENT_MAGIC.len() + rec.len()) as u64,
            zeroed_end: (SEGMENT_MAGIC.len() + rec.len()) as u64,
            has_batches: false,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads every segment of `dir` (see the module's doc for what is cut off and what fails).
fn scan(dir: &Path) -> Result<Log, LogStoreError> {
    let listing =
        std::fs::read_dir(dir).map_err(|e| io_err(format!("list {}", dir.display()), e))?;
    let mut seqs = Vec::new();
    for item in listing {
        let item = item.map_err(|e| io_err(format!("list {}", dir.display()), e))?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            // A segment that was never renamed into place: it held only a checkpoint.
            let _ = std::fs::remove_file(item.path());
        } else if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    if seqs.is_empty() {
        return Err(corrupt(
            dir.display().to_string(),
            "the raft log directory holds no segment file",
        ));
    }
    let mut log = Log {
        recent: RecentEntries::new(RECENT_ENTRY_BYTES),
        ..Log::default()
    };
    let newest = seqs.len() - 1;
    for (n, &seq) in seqs.iter().enumerate() {
        let path = dir.join(segment_name(seq));
        let key = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| io_err(format!("read {key}"), e))?;
        if !bytes.starts_with(SEGMENT_MAGIC) {
            return Err(corrupt(key, "not a Gantry raft log segment (wrong header)"));
        }
        let mut pos = SEGMENT_MAGIC.len();
        let mut records = 0usize;
        let mut zeroed_end = 0;
        while pos < bytes.len() {
            match read_frame(&bytes[pos..]) {
                Frame::Whole { payload, len } => {
                    let ops =
                        parse_ops(payload).map_err(|r| corrupt(format!("{key} at {pos}"), r))?;
                    if records == 0 && !matches!(ops.first(), Some(Op::Checkpoint)) {
                        return Err(corrupt(key, "the first record is not a checkpoint"));
                    }
                    log.apply(seq, pos as u64, &ops);
                    records += 1;
                    pos += len;
                }
                // Zeros written ahead of the appends (zero_ahead.rs): the clean end of the data.
                Frame::Torn if records > 0 && bytes[pos..].iter().all(|&b| b == 0) => {
                    zeroed_end = bytes.len() as u64;
                    break;
                }
                Frame::Torn if n == newest && records > 0 => {
                    let cut = bytes.len() - pos;
                    tracing::warn!(segment = %key, offset = pos, bytes = cut,
                        "the raft log ends in a write that never finished (never acknowledged); \
                         cutting it off");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io_err(format!("open {key}"), e))?;
                    f.set_len(pos as u64)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io_err(format!("cut the torn end of {key}"), e))?;
                    break;
                }
                Frame::Torn => {
                    return Err(corrupt(
                        format!("{key} at {pos}"),
                        if n == newest {
                            "the segment's checkpoint is damaged".to_string()
                        } else {
                            format!(
                                "a damaged record with {} newer segment(s) after it",
                                newest - n
                            )
                        },
                    ));
                }
            }
        }
        if records == 0 {
            return Err(corrupt(key, "the segment holds no checkpoint"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(format!("open {key}"), e))?;
        log.segments.push(Segment {
            seq,
            file: Arc::new(file),
            len: pos as u64,
            zeroed_end: zeroed_end.max(pos as u64),
            has_batches: records > 1,
        });
    }
    // A segment whose deletion was lost could bring back entries behind the compaction point.
    let keep = log
        .index
        .split_off(&log.persisted.compacted.0.saturating_add(1));
    log.index = keep;
    Ok(log)
}

impl Log {
    fn segment(&self, seq: u64) -> Option<&Segment> {
        self.segments
            .binary_search_by_key(&seq, |s| s.seq)
            .ok()
            .map(|i| &self.segments[i])
    }

    /// Applies the operations of the record at `record` in segment `seq`: on write and on
    /// replay alike.
    fn apply(&mut self, seq: u64, record: u64, ops: &[Op]) {
        let p = &mut self.persisted;
        for op in ops {
            match op {
                Op::Checkpoint => {}
                &Op::Remove(from, to) => {
                    if from <= to {
                        let mut tail = self.index.split_off(&from);
                        if let Some(after) = to.checked_add(1) {
                            self.index.append(&mut tail.split_off(&after));
                        }
                    }
                }
                &Op::Entry { index, offset, len } => {
                    self.index.insert(
                        index,
                        Loc {
                            seq,
                            offset: record + (FRAME_HEADER + offset) as u64,
                            len: len as u32,
                        },
                    );
                }
                Op::HardState(hs) => p.hard_state = hs.clone(),
                Op::ConfState(cs) => p.conf_state = cs.clone(),
                Op::SnapshotMeta(m) => p.snapshot_meta = m.clone(),
                Op::Members(m) => p.members = m.clone(),
                &Op::Compacted(index, term) => p.compacted = (index, term),
            }
        }
    }
}

impl LogStore for WalLogStore {
    fn load(&self) -> Result<Persisted, LogStoreError> {
        let log = self.lock();
        let mut p = log.persisted.clone();
        p.last_entry = log.index.keys().next_back().copied();
        Ok(p)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let found = self.locate(low, high, max_size);
        within_size(max_size, found.into_iter().map(|f| self.read(f)))
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, LogStoreError> {
        match self.locate(index, index.saturating_add(1), None).pop() {
            Some(f) => self.read(f).map(Some),
            None => Ok(None),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), LogStoreError> {
        let rec = encode_record(&batch, false)?;
        let mut log = self.lock();
        if log.damaged {
            *log = scan(&self.dir)?;
            follow_newest(&self.zeros, &log);
            tracing::info!(dir = %self.dir.display(), "raft log read again after a failed write");
        }
        let needs_new = match log.segments.last() {
            Some(s) => s.has_batches && s.len + rec.len() as u64 > self.segment_bytes,
            None => true,
        };
        if needs_new {
            self.roll(&mut log)?;
        }
        let Some(active) = log.segments.last_mut() else {
            return Err(LogStoreError::Backend(
                "raft log: no segment to write".into(),
            ));
        };
        let (seq, offset) = (active.seq, active.len);
        self.zeros.reserve(seq, offset, offset + rec.len() as u64);
        let written = active
            .file
            .write_all_at(&rec, offset)
            .and_then(|_| active.file.sync_data());
        if let Err(e) = written {
            let cut = active
                .file
                .set_len(offset)
                .and_then(|_| active.file.sync_data());
            self.zeros.cut(seq, offset);
            log.damaged = cut.is_err();
            return Err(io_err(format!("append to {}", segment_name(seq)), e));
        }
        active.len += rec.len() as u64;
        active.has_batches = true;
        let ops =
            parse_ops(&rec[FRAME_HEADER..]).map_err(|r| corrupt("a record just written", r))?;
        log.apply(seq, offset, &ops);
        for &(from, to) in &batch.remove {
            log.recent.remove(from, to);
        }
        log.recent.append(batch.entries);
        if !batch.remove.is_empty() {
            self.drop_dead_segments(&mut log);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::HardState;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 300].into(),
            ..Default::default()
        }
    }

    fn append(s: &WalLogStore, range: std::ops::RangeInclusive<u64>, term: u64) {
        s.write(WriteBatch {
            entries: range.map(|i| entry(i, term)).collect(),
            hard_state: Some(HardState {
                term,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        dir.join(segments(dir).last().unwrap())
    }

    #[test]
    fn an_unfinished_write_at_the_end_is_cut_off_and_writing_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let s = WalLogStore::open(&dir).unwrap();
        append(&s, 1..=3, 1);
        append(&s, 4..=5, 2);
        let whole = s.lock().segments[0].len;
        drop(s);
        let path = newest_segment(&dir);
        // The last record loses its end (as a power cut before its fdatasync can leave it),
        // and the zeros written ahead of it with it.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(whole - 10).unwrap();
        drop(f);
        let s = WalLogStore::open(&dir).unwrap();
        let p = s.load().unwrap();
        assert_eq!(
            p.last_entry,
            Some(3),
            "the torn batch is gone, the rest is there"
        );
        assert_eq!(p.hard_state.term, 1);
        assert_eq!(
            s.entries(1, 4, None).unwrap(),
            (1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>()
        );
        append(&s, 4..=4, 3);
        drop(s);
        let s = WalLogStore::open(&dir).unwrap();
        assert_eq!(s.entry(4).unwrap(), Some(entry(4, 3)));
        assert_eq!(s.load().unwrap().hard_state.term, 3);

        // Garbage after the last whole record (pages of a write that never finished).
        drop(s);
        let path = newest_segment(&dir);
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        (&f).write_all(&[0xAB; 5000]).unwrap();
        drop(f);
        let s = WalLogStore::open(&dir).unwrap();
        assert_eq!(s.load().unwrap().last_entry, Some(4));
    }

    #[test]
    fn zeros_after_the_data_are_a_clean_end_and_are_written_over() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let s = WalLogStore::open(&dir).unwrap();
        append(&s, 1..=3, 1);
        let path = newest_segment(&dir);
        let data = s.lock().segments[0].len;
        let zeroed = (0..500).find_map(|_| {
            let len = std::fs::metadata(&path).unwrap().len();
            (len > data).then_some(len).or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
        });
        assert!(zeroed.is_some(), "no zeros written ahead of the data");
        drop(s);
        let len = std::fs::metadata(&path).unwrap().len();
        let s = WalLogStore::open(&dir).unwrap();
        assert_eq!(s.load().unwrap().last_entry, Some(3));
        assert!(
            std::fs::metadata(&path).unwrap().len() >= len,
            "the zeros were not cut off as a tear"
        );
        // Written over, and read back after a reopen.
        append(&s, 4..=6, 2);
        drop(s);
        let s = WalLogStore::open(&dir).unwrap();
        assert_eq!(
            s.entries(1, 7, None).unwrap(),
            (1..=3)
                .map(|i| entry(i, 1))
                .chain((4..=6).map(|i| entry(i, 2)))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn damage_before_the_end_is_an_error_naming_the_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let s = WalLogStore::open_with(&dir, 4096).unwrap();
        for i in 1..=40 {
            append(&s, i..=i, 1);
        }
        drop(s);
        let names = segments(&dir);
        assert!(names.len() > 2, "{names:?}");
        // A byte flipped in a closed segment's record: not a tear, there are newer segments.
        let path = dir.join(&names[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 20;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = WalLogStore::open(&dir).err().expect("a damaged log opens");
        let msg = err.to_string();
        assert!(
            msg.contains(&names[0]) && msg.contains("newer segment"),
            "{msg}"
        );
    }

    #[test]
    fn old_segments_go_once_compacted_and_the_fields_survive_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let s = WalLogStore::open_with(&dir, 4096).unwrap();
        s.write(WriteBatch {
            members: Some([(1, "a:1".to_string()), (2, "b:2".to_string())].into()),
            ..Default::default()
        })
        .unwrap();
        for i in 1..=60 {
            append(&s, i..=i, 2);
        }
        let before = segments(&dir).len();
        assert!(before > 4, "{before} segments");
        s.write(WriteBatch {
            remove: vec![(1, 50)],
            compacted: Some((50, 2)),
            ..Default::default()
        })
        .unwrap();
        let after = segments(&dir).len();
        assert!(after < before && after >= 1, "{before} -> {after}");
        drop(s);
        let s = WalLogStore::open(&dir).unwrap();
        let p = s.load().unwrap();
        assert_eq!(
            p.members.len(),
            2,
            "members were written in a deleted segment"
        );
        assert_eq!(p.compacted, (50, 2));
        assert_eq!(p.hard_state.term, 2);
        assert_eq!(s.entry(50).unwrap(), None);
        assert_eq!(
            s.entries(51, 61, None).unwrap(),
            (51..=60).map(|i| entry(i, 2)).collect::<Vec<_>>()
        );
        // Reads stop at max_size, with at least one entry.
        assert_eq!(s.entries(51, 61, Some(1)).unwrap().len(), 1);
    }

    #[test]
    fn a_rewritten_suffix_replaces_the_old_one_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let s = WalLogStore::open_with(&dir, 2048).unwrap();
        append(&s, 1..=10, 1);
        for i in 11..=20 {
            append(&s, i..=i, 1);
        }
        s.write(WriteBatch {
            remove: vec![(8, 20)],
            entries: (8..=9).map(|i| entry(i, 5)).collect(),
            ..Default::default()
        })
        .unwrap();
        // The same from memory (the entries just written) and, after a reopen, from disk.
        let check = |s: &WalLogStore| {
            assert_eq!(s.load().unwrap().last_entry, Some(9));
            assert_eq!(s.entry(9).unwrap(), Some(entry(9, 5)));
            assert_eq!(s.entry(7).unwrap(), Some(entry(7, 1)));
            assert_eq!(s.entry(12).unwrap(), None);
            let mut want: Vec<Entry> = (1..=7).map(|i| entry(i, 1)).collect();
            want.extend((8..=9).map(|i| entry(i, 5)));
            assert_eq!(s.entries(1, 30, None).unwrap(), want);
        };
        check(&s);
        drop(s);
        check(&WalLogStore::open(&dir).unwrap());
    }

    #[test]
    fn a_log_is_copied_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let from = crate::raft::MemLogStore::default();
        from.write(WriteBatch {
            entries: (3..=500).map(|i| entry(i, 4)).collect(),
            hard_state: Some(HardState {
                term: 4,
                vote: 2,
                commit: 400,
                ..Default::default()
            }),
            members: Some([(2, "b:2".to_string())].into()),
            compacted: Some((2, 3)),
            ..Default::default()
        })
        .unwrap();
        let dir = tmp.path().join("wal");
        // A copy that crashed half-way left its temporary directory behind.
        std::fs::create_dir_all(tmp.path().join("wal.tmp/junk")).unwrap();
        assert_eq!(
            WalLogStore::create_from(&dir, Some(&from), 16 << 10).unwrap(),
            498
        );
        assert!(!tmp.path().join("wal.tmp").exists());
        let s = WalLogStore::open(&dir).unwrap();
        let p = s.load().unwrap();
        assert_eq!(p.hard_state.commit, 400);
        assert_eq!(p.hard_state.vote, 2);
        assert_eq!(p.compacted, (2, 3));
        assert_eq!(p.last_entry, Some(500));
        assert_eq!(p.members.len(), 1);
        assert_eq!(s.entries(3, 501, None).unwrap().len(), 498);
    }
}
