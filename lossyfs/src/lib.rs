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

/// The file system name: the source of its mounts in `/proc/mounts`.
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
    /// The kernel's number for the current mount's FUSE connection (its device minor), the
    /// name of its directory under `/sys/fs/fuse/connections`.
    connection: Option<u64>,
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
        let connection = connection_of(&mountpoint);
        Ok(LossyFs {
            backing,
            mountpoint,
            shared,
            session: Some(session),
            connection,
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
        self.unmount_session()?;
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
        self.connection = connection_of(&self.mountpoint);
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
        self.unmount_session()?;
        self.shared().model.materialize(&self.backing)
    }

    /// Ends the current mount for good. A plain unmount is not enough: it fails while a file
    /// is open, and even when it succeeds the kernel keeps the connection alive as long as
    /// anything still refers to the file system (the first power-loss runs hung here, the
    /// session thread still waiting for requests). So the connection is aborted through
    /// fusectl, which fails every request at once and stops the session thread, and the mount
    /// is detached.
    fn unmount_session(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if let Some(connection) = self.connection.take() {
            if let Err(e) = abort_connection(connection) {
                eprintln!("lossyfs: could not abort FUSE connection {connection}: {e}");
            }
        }
        if unmount(&self.mountpoint, 0).is_err() {
            let _ = unmount(&self.mountpoint, libc::MNT_DETACH);
        }
        // A session thread that does not stop is left behind rather than hanging the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.join());
        });
        match rx.recv_timeout(SESSION_STOP) {
            Ok(_) => Ok(()),
            Err(_) => Err(std::io::Error::other(format!(
                "lossyfs: the session of {} did not stop within {SESSION_STOP:?}",
                self.mountpoint.display()
            ))),
        }
    }
}

/// How long an unmount waits for the session thread to see its connection end.
const SESSION_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the kernel lists FUSE connections (the `fusectl` file system).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// The FUSE connection number of the lossyfs mount at `mountpoint`, from /proc/self/mountinfo
/// (reading it does not send the file system a request).
fn connection_of(mountpoint: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_str()?.replace(' ', "\\040");
    // The newest mount at a path is listed last.
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        let (fstype, source) = (fields.get(dash + 1)?, fields.get(dash + 2)?);
        if fields.get(4) != Some(&want.as_str()) || !is_lossyfs(fstype, source) {
            return None;
        }
        let (major, minor) = fields.get(2)?.split_once(':')?;
        // Anonymous devices have major 0; the connection is named by the whole dev_t.
        (major == "0").then(|| minor.parse().ok()).flatten()
    })
}

/// Whether a mount table entry is ours. Mounting as root (no fusermount) records the subtype
/// nowhere: the type is plain `fuse` and the source is the file system name.
fn is_lossyfs(fstype: &str, source: &str) -> bool {
    fstype == format!("fuse.{NAME}") || (fstype == "fuse" && source == NAME)
}

/// Aborts a FUSE connection: every pending and future request of it fails, and reads of its
/// device end. Mounts fusectl first where nobody has.
fn abort_connection(connection: u64) -> std::io::Result<()> {
    let dir = Path::new(FUSECTL);
    if !dir.join(connection.to_string()).exists() {
        mount_fusectl()?;
    }
    std::fs::write(dir.join(connection.to_string()).join("abort"), "1")
}

fn mount_fusectl() -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(std::io::Error::other);
    let (src, target, fstype) = (c("fusectl")?, c(FUSECTL)?, c("fusectl")?);
    // SAFETY: all three are valid NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_session() {
            eprintln!("{e}");
        }
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
        let (Some(source), Some(at), Some(fstype)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !is_lossyfs(fstype, source) {
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
