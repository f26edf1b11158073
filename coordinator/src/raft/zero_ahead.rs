//! Zeros written and synced ahead of the newest segment's end, by a thread of their own, so
//! that an append overwrites blocks the file already has (PostgreSQL's `wal_init_zero`). An
//! fdatasync after an append that grows the file must also write the file's new size (and,
//! on a journalling file system, commit the journal); after an overwrite it writes the data
//! alone. On this project's CI disk (ext4, virtio): 3 KB written and fdatasynced in 0.23 ms
//! as an append, 0.16 ms over zeros; `fallocate` does not help (its blocks are "unwritten",
//! and the first write to them changes the extent tree).
//!
//! Appends never wait for zeros: one that goes past them writes as an append does. Only an
//! append whose range the thread is writing zeros to at that moment waits for that chunk, so
//! the two never write the same bytes. A failed zero write (a full disk) stops the zeroing
//! of that segment; appends go on without it.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// How far ahead of the end of the log zeros are kept, and how many are written at a time.
pub const ZERO_AHEAD: u64 = 4 << 20;
pub const ZERO_CHUNK: u64 = 1 << 20;

struct Target {
    seq: u64,
    file: Arc<File>,
    /// The end of what appends wrote or are writing.
    write_end: u64,
    /// Zeros are written and synced up to here.
    zeroed_end: u64,
    failed: bool,
}

#[derive(Default)]
struct State {
    target: Option<Target>,
    /// The segment and range the thread is writing zeros to now.
    busy: Option<(u64, u64, u64)>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    ahead: u64,
    /// No zeros past this offset (the segment size: a segment is closed once it is full).
    limit: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }
}

/// The zeroing thread of one log; it stops (and is joined) when this is dropped.
pub struct ZeroAhead {
    shared: Option<Arc<Shared>>,
    thread: Option<JoinHandle<()>>,
}

impl ZeroAhead {
    /// No thread, no zeros (a log being copied in once, for example).
    pub fn disabled() -> Self {
        ZeroAhead {
            shared: None,
            thread: None,
        }
    }

    /// Keeps `ahead` bytes of zeros after the data, written `chunk` bytes at a time, never
    /// past `limit` bytes of a segment.
    pub fn start(ahead: u64, chunk: u64, limit: u64) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            ahead,
            limit,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("raft-wal-zeros".into())
            .spawn(move || zero_loop(&s, chunk));
        match thread {
            Ok(t) => ZeroAhead {
                shared: Some(shared),
                thread: Some(t),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that writes zeros ahead of the raft log; appending without them");
                Self::disabled()
            }
        }
    }

    /// Appends now go to segment `seq`, whose data ends at `write_end` and whose file holds
    /// synced zeros up to `zeroed_end`.
    pub fn follow(&self, seq: u64, file: Arc<File>, write_end: u64, zeroed_end: u64) {
        let Some(shared) = &self.shared else { return };
        let mut g = shared.lock();
        g.target = Some(Target {
            seq,
            file,
            write_end,
            zeroed_end: zeroed_end.max(write_end),
            failed: false,
        });
        shared.changed.notify_all();
    }

    /// Called before appending `off..end` to segment `seq`: waits only while the thread is
    /// writing zeros over part of that range, and wakes it when the zeros run short.
    pub fn reserve(&self, seq: u64, off: u64, end: u64) {
        let Some(shared) = &self.shared else { return };
        let mut g = shared.lock();
        while g
            .busy
            .is_some_and(|(s, from, to)| s == seq && from < end && off < to)
        {
            g = shared.wait(g);
        }
        if let Some(t) = g.target.as_mut().filter(|t| t.seq == seq) {
            t.write_end = t.write_end.max(end);
            if !t.failed && t.zeroed_end < t.write_end + shared.ahead / 2 {
                shared.changed.notify_all();
            }
        }
    }

    /// A failed append was cut back: the file ends at `len`.
    pub fn cut(&self, seq: u64, len: u64) {
        let Some(shared) = &self.shared else { return };
        let mut g = shared.lock();
        if let Some(t) = g.target.as_mut().filter(|t| t.seq == seq) {
            t.write_end = len;
            t.zeroed_end = len;
        }
    }
}

impl Drop for ZeroAhead {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().stop = true;
            shared.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            // Joined so that no zero lands in the file after the log is closed (and perhaps
            // opened again by another handle that appends there).
            let _ = t.join();
        }
    }
}

fn zero_loop(shared: &Shared, chunk: u64) {
    let zeros = vec![0u8; chunk as usize];
    loop {
        let (seq, file, from, len) = {
            let mut g = shared.lock();
            loop {
                if g.stop {
                    return;
                }
                let due = g.target.as_ref().and_then(|t| {
                    let from = t.zeroed_end.max(t.write_end);
                    let want = (t.write_end + shared.ahead).min(shared.limit);
                    (!t.failed && from < want)
                        .then(|| (t.seq, t.file.clone(), from, chunk.min(want - from)))
                });
                if let Some(job) = due {
                    // Claimed in the same hold of the lock that chose it: an append that
                    // reserves a range after this waits for the chunk instead of racing it.
                    g.busy = Some((job.0, job.2, job.2 + job.3));
                    break job;
                }
                g = shared.wait(g);
            }
        };
        let to = from + len;
        let written = file
            .write_all_at(&zeros[..len as usize], from)
            .and_then(|_| file.sync_data());
        let mut g = shared.lock();
        g.busy = None;
        if let Some(t) = g.target.as_mut().filter(|t| t.seq == seq) {
            match written {
                // Zeros over a range an append claimed meanwhile cannot happen: it waited.
                Ok(()) if t.zeroed_end <= from => t.zeroed_end = to,
                Ok(()) => {}
                Err(e) => {
                    t.failed = true;
                    tracing::warn!(segment = seq, error = %e,
                        "cannot write zeros ahead of the raft log; appending without them");
                }
            }
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends race the zeroing thread (small chunks, so it is nearly always busy): no zero
    /// may land on appended bytes, and zeros stay ahead of the data.
    fn new_file(dir: &tempfile::TempDir) -> (std::path::PathBuf, Arc<File>) {
        let path = dir.path().join("seg");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, Arc::new(file))
    }

    #[test]
    fn zeros_never_land_on_appended_bytes() {
        // A race: several rounds, so that a missing wait shows in one of them.
        for _ in 0..8 {
            append_beside_the_zeroing_thread();
        }
    }

    fn append_beside_the_zeroing_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = new_file(&dir);
        let z = ZeroAhead::start(64 << 10, 4 << 10, 1 << 30);
        z.follow(1, file.clone(), 0, 0);
        let mut end = 0u64;
        let mut want = Vec::new();
        for i in 0..3000u32 {
            let rec: Vec<u8> = (0..(97 + i % 300)).map(|j| (i + j) as u8 | 1).collect();
            z.reserve(1, end, end + rec.len() as u64);
            file.write_all_at(&rec, end).unwrap();
            end += rec.len() as u64;
            want.extend_from_slice(&rec);
        }
        // The thread catches up with the appends once they stop.
        for _ in 0..1000 {
            if file.metadata().unwrap().len() > end {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(z);
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 > end, "zeros were written ahead");
        assert_eq!(&got[..end as usize], &want[..]);
        assert!(got[end as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn no_zeros_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = new_file(&dir);
        let z = ZeroAhead::start(1 << 20, 64 << 10, 100_000);
        z.follow(1, file.clone(), 0, 0);
        z.reserve(1, 0, 10);
        // The thread stops at the limit.
        for _ in 0..500 {
            if file.metadata().unwrap().len() >= 100_000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(z);
        assert_eq!(file.metadata().unwrap().len(), 100_000);
    }
}
