//! lossyfs: a FUSE file system for power-loss tests, after Jepsen's LazyFS.
//!
//! A mount shows the contents of a backing directory. Writes, truncates, creates, renames and
//! unlinks take effect at once for every reader, but they reach "the disk" only as POSIX says
//! they must: a file's data and size with `fsync`/`fdatasync` of that file, a directory entry
//! (create, rename, unlink) with `fsync` of its directory. [`LossyFs::power_cut`] then does
//! what a power cut does: everything unsynced is gone, the kernel's caches with it (the file
//! system is unmounted and mounted again), and the backing directory holds exactly what the
//! disk would hold. The rules, and what they mean for `sync_file_range`, are in [`model`] and
//! [`fuse`]; docs/durability.md describes how the coordinator's tests use them.
//!
//! The file system runs in the test process, on a thread per mount, and is controlled through
//! this API; the programs under test (other processes) see an ordinary directory. Mounting
//! needs root (or `fusermount3`) and `/dev/fuse`: [`available`] says whether this machine has
//! them, so tests can skip with a message where it does not.
//!
//! A mount is unmounted when its [`LossyFs`] is dropped, also when a test fails; a mount left
//! behind by a killed test process is removed by [`sweep_stale_mounts`].

pub mod fuse;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use model::{CutMode, CutReport, Stats};

use fuse::{LossyFuse, Shared};
use model::Model;

/// The file system type name in `/proc/mounts` (`fuse.lossyfs`).
const NAME: &str = "lossyfs";

/// Whether FUSE file systems can be mounted here: `/dev/fuse` opens and we are root.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("lossyfs mounts need root".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(|_| ())
        .map_err(|e| format!("/dev/fuse: {e}"))
}

/// A mounted lossy file system.
pub struct LossyFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    shared: Arc<Mutex<Shared>>,
    session: Option<fuser::BackgroundSession>,
    cuts: u64,
}

impl LossyFs {
    /// Mounts at `mountpoint` (an existing, empty directory) a file system holding what
    /// `backing` holds, all of it durable.
    pub fn mount(backing: impl AsRef<Path>, mountpoint: impl AsRef<Path>) -> std::io::Result<Self> {
        let backing = backing.as_ref().canonicalize()?;
        let mountpoint = mountpoint.as_ref().canonicalize()?;
        let shared = Arc::new(Mutex::new(Shared {
            model: Model::load(&backing)?,
            generation: 0,
        }));
        let session = Self::session(&shared, 0, &mountpoint)?;
        Ok(LossyFs {
            backing,
            mountpoint,
            shared,
            session: Some(session),
            cuts: 0,
        })
    }

    fn session(
        shared: &Arc<Mutex<Shared>>,
        generation: u64,
        mountpoint: &Path,
    ) -> std::io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(NAME.into()),
            fuser::MountOption::Subtype(NAME.into()),
        ];
        let fs = LossyFuse {
            shared: shared.clone(),
            generation,
        };
        fuser::spawn_mount(fs, mountpoint, &config)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `sync(2)`: everything written so far becomes durable.
    pub fn sync_all(&self) {
        self.shared().model.sync_all();
    }

    /// True when a cut now would lose nothing.
    pub fn is_synced(&self) -> bool {
        self.shared().model.is_synced()
    }

    /// What programs did on this mount since it was mounted or last cut.
    pub fn stats(&self) -> Stats {
        self.shared().model.stats.clone()
    }

    /// How many cuts this file system went through.
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// The power goes and comes back. From this instant every request fails; then the file
    /// system is unmounted (dropping the kernel's caches), the backing directory is rewritten
    /// to hold only what was durable (with [`CutMode::Torn`], some unsynced pages too), and it
    /// is mounted again from there.
    ///
    /// Kill the processes that use the mount first (`kill -9` and reap them): a process still
    /// holding a file open keeps the old mount busy, which is then detached lazily and keeps
    /// failing every request.
    pub fn power_cut(&mut self, mode: CutMode) -> std::io::Result<CutReport> {
        let report = {
            let mut g = self.shared();
            g.generation += 1;
            g.model.cut(mode)
        };
        self.unmount_session();
        {
            let g = self.shared();
            g.model.materialize(&self.backing)?;
        }
        let model = Model::load(&self.backing)?;
        let generation = {
            let mut g = self.shared();
            g.model = model;
            g.generation
        };
        self.session = Some(Self::session(&self.shared, generation, &self.mountpoint)?);
        self.cuts += 1;
        Ok(report)
    }

    /// A clean shutdown: everything is synced, the file system unmounted and the backing
    /// directory left holding all of it.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let mut g = self.shared();
        g.model.sync_all();
        g.generation += 1;
        drop(g);
        self.unmount_session();
        self.shared().model.materialize(&self.backing)
    }

    fn unmount_session(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if unmount(&self.mountpoint, 0).is_ok() {
            // The kernel ended the connection: the session thread has stopped reading.
            let _ = session.join();
        } else {
            // Busy: detach it; its requests fail (old generation) until its users close.
            let _ = unmount(&self.mountpoint, libc::MNT_DETACH);
            std::mem::forget(session);
        }
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        self.unmount_session();
    }
}

fn unmount(path: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lazily unmounts lossyfs mounts whose process is gone (their connection answers ENOTCONN),
/// left behind by a test process that was killed before it could unmount. Live mounts of
/// other test processes are left alone.
pub fn sweep_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(_src), Some(at), Some(fstype)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if fstype != format!("fuse.{NAME}") {
            continue;
        }
        // /proc/mounts escapes spaces and the like in octal.
        let at = at.replace("\\040", " ");
        let path = PathBuf::from(at);
        if let Err(e) = std::fs::metadata(&path) {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                let _ = unmount(&path, libc::MNT_DETACH);
            }
        }
    }
}
