//! Child processes of a test: a guard that kills them whatever happens, and finding programs.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
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

    /// How the process ended, once it has (it is then reaped); None while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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

/// How a program run by [`run_within`] ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end, for at most `timeout`: how it ended, or, if it is still running
/// then (a program that should have refused to start and did not), `Err` with its output so
/// far; it is killed either way.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Result<Exited, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?} does not start: {e}"))?;
    let mut p = Proc::new(child, format!("{cmd:?}"));
    // Read on threads of their own, so a chatty program never blocks on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        p.child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        p.child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = poll(timeout, || match p.child.try_wait() {
        Ok(Some(status)) => Ok(status),
        _ => Err(()),
    });
    if status.is_err() {
        p.kill9();
    }
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Ok(status) => Ok(Exited {
            status,
            stdout,
            stderr,
        }),
        Err(()) => Err(format!(
            "{} was still running after {timeout:?}\nstdout: {stdout}\nstderr: {stderr}",
            p.name
        )),
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
