//! Child processes of a test: a guard that kills them whatever happens, and finding programs.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::poll::poll;

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn new(child: Child, name: impl Into<String>) -> Proc {
        Proc {
            child,
            name: name.into(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this guard holds and has not reaped, so the pid
        // cannot name another process.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Whether the process has ended (and is now reaped).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if poll(grace, || if self.exited() { Ok(()) } else { Err(()) }).is_err() {
            self.kill9();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where `name` is installed: on `PATH`, else in Cargo's `bin` directory (`cargo install`
/// puts tools such as s3s-fs there, and CI shells do not always have it on `PATH`).
pub fn program(name: &str) -> Option<PathBuf> {
    if let Ok(p) = which::which(name) {
        return Some(p);
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?
        .join("bin");
    let cwd = std::env::current_dir().ok()?;
    which::which_in(name, Some(cargo_bin), cwd).ok()
}
