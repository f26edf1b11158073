//! Steps as local processes: for `gantry dev` without Docker, and for development.
//!
//! - The argv (command then args) runs in `<work_dir>/work` with a clean environment: only the
//!   agent's [`INHERITED_ENV`] (`PATH`, `HOME`, the locale, …), `TMPDIR=<work_dir>/tmp`, then
//!   the step's own variables (which include the operator's `--step-env`). Nothing else of the
//!   agent's environment (`AWS_*` credentials, tokens) reaches the step.
//! - It runs in a process group of its own. When the main process exits, whatever it left
//!   running in that group is killed, as a container's processes die with it; on cancel the
//!   group gets SIGTERM, then SIGKILL after [`ProcessRuntime::grace`].
//! - The image, extra mounts and the network setting are ignored, and CPU and memory limits are
//!   **not enforced**: this runtime isolates nothing. Use Docker for untrusted or heavy steps.
//! - The step sees host paths unchanged ([`PathMap::identity`]).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ContainerRun, ExitInfo, LineSplitter, LogLine, LogStream, PathMap, Runtime, RuntimeError,
};

/// The agent's variables a process step inherits; everything else is cleared.
pub const INHERITED_ENV: [&str; 10] = [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
];

/// How long the output pumps may run on after the step ended (a daemon that escaped the
/// process group may hold the pipes open forever).
const PUMP_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    grace: Duration,
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessRuntime {
    pub fn new() -> Self {
        ProcessRuntime {
            grace: Duration::from_secs(2),
        }
    }

    /// Time between SIGTERM and SIGKILL on cancel.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

async fn pump(mut r: impl AsyncRead + Unpin, stream: LogStream, tx: mpsc::Sender<LogLine>) {
    let mut buf = vec![0u8; 8192];
    let mut split = LineSplitter::default();
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                for line in split.push(&buf[..n]) {
                    // A closed receiver only means nobody listens; keep draining the pipe.
                    let _ = tx.send(LogLine { stream, line }).await;
                }
            }
        }
    }
    if let Some(line) = split.finish() {
        let _ = tx.send(LogLine { stream, line }).await;
    }
}

/// Signals every process of the group `pgid`.
fn signal_group(pgid: Option<i32>, signal: libc::c_int) {
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
        // process group this runtime created for the step (`process_group(0)`).
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Kills the step's process group if `run` is dropped before it finished (the agent's task
/// was aborted): nothing the step started outlives the attempt.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => i64::from(c),
        (None, Some(sig)) => 128 + i64::from(sig),
        (None, None) => -1,
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn path_map(&self, work_dir: &Path) -> PathMap {
        PathMap::identity(work_dir)
    }

    /// A process sees the host's file system as it is: a host directory cannot appear at
    /// another path for it.
    fn mounts_host_dirs(&self) -> bool {
        false
    }

    async fn run(
        &self,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError> {
        let start_err = |message: String| RuntimeError::Start {
            name: spec.name.clone(),
            message,
        };
        tracing::debug!(step = %spec.name, image = %spec.image,
            "process runtime: the image is ignored");
        if !spec.mounts.is_empty() || spec.network.as_deref().is_some_and(|n| n != "bridge") {
            tracing::warn!(step = %spec.name,
                "process runtime: extra mounts and the network setting are ignored");
        }
        let argv = spec.argv();
        let Some((program, rest)) = argv.split_first() else {
            return Err(start_err(
                "the step has no command (the process runtime cannot use an image's entrypoint)"
                    .into(),
            ));
        };
        let work = spec.work_dir.join("work");
        let tmp = spec.work_dir.join("tmp");
        for d in [&work, &tmp] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| start_err(format!("{}: {e}", d.display())))?;
        }
        let mut cmd = Command::new(program);
        cmd.args(rest)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
            )
            .env("TMPDIR", &tmp)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| start_err(format!("{program}: {e}")))?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        let guard = GroupGuard(pgid);
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(pump(s, LogStream::Stdout, logs.clone())));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(pump(s, LogStream::Stderr, logs.clone())));
        drop(logs);

        let (status, canceled) = tokio::select! {
            s = child.wait() => (s, false),
            _ = cancel.cancelled() => {
                signal_group(pgid, libc::SIGTERM);
                let s = match tokio::time::timeout(self.grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        signal_group(pgid, libc::SIGKILL);
                        child.wait().await
                    }
                };
                (s, true)
            }
        };
        // The main process is gone: so is everything it left behind in its group.
        drop(guard);
        for h in [out, err].into_iter().flatten() {
            let abort = h.abort_handle();
            if tokio::time::timeout(PUMP_DRAIN, h).await.is_err() {
                abort.abort();
            }
        }
        let status = status.map_err(|e| RuntimeError::Wait {
            name: spec.name.clone(),
            message: e.to_string(),
        })?;
        Ok(ExitInfo {
            exit_code: exit_code(status),
            canceled,
            oom_killed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Running and not a zombie (a zombie is dead; reaping it is its new parent's business).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(false)
    }

    fn spec(dir: &Path, script: &str) -> ContainerRun {
        ContainerRun {
            name: "t".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            work_dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    async fn run(spec: &ContainerRun, cancel: CancellationToken) -> (ExitInfo, Vec<LogLine>) {
        let (tx, mut rx) = mpsc::channel(64);
        let collect = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(l) = rx.recv().await {
                v.push(l);
            }
            v
        });
        let exit = ProcessRuntime::new()
            .run(spec, tx, cancel)
            .await
            .expect("run");
        (exit, collect.await.expect("collect"))
    }

    #[tokio::test]
    async fn streams_lines_and_reports_exit_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spec(
            dir.path(),
            "echo \"$GREETING\"; printf 'no newline'; echo oops >&2; pwd; exit 3",
        );
        let (exit, lines) = run(&s, CancellationToken::new()).await;
        assert_eq!(exit.exit_code, 3);
        assert!(!exit.canceled);
        let out: Vec<&str> = lines
            .iter()
            .filter(|l| l.stream == LogStream::Stdout)
            .map(|l| l.line.as_str())
            .collect();
        let work = dir.path().join("work");
        assert_eq!(out, vec!["hello", &format!("no newline{}", work.display())]);
        assert!(lines
            .iter()
            .any(|l| l.stream == LogStream::Stderr && l.line == "oops"));
    }

    #[tokio::test]
    async fn the_step_gets_an_allowlisted_environment_not_the_agents() {
        // `cargo test` gives this process CARGO_* variables, standing in for the agent's
        // AWS_* credentials: none may reach the step.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        let s = spec(dir.path(), "env");
        let (exit, lines) = run(&s, CancellationToken::new()).await;
        assert_eq!(exit.exit_code, 0);
        let names: Vec<&str> = lines
            .iter()
            .filter(|l| l.stream == LogStream::Stdout)
            .filter_map(|l| l.line.split_once('=').map(|(k, _)| k))
            .collect();
        // What `sh` adds itself.
        let shell = ["PWD", "SHLVL", "_", "OLDPWD"];
        for n in &names {
            assert!(
                INHERITED_ENV.contains(n)
                    || shell.contains(n)
                    || ["TMPDIR", "GREETING"].contains(n),
                "the step sees the agent's {n}: {names:?}"
            );
        }
        assert!(
            names.contains(&"GREETING") && names.contains(&"TMPDIR"),
            "{names:?}"
        );
        if std::env::var_os("PATH").is_some() {
            assert!(names.contains(&"PATH"), "{names:?}");
        }
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pids");
        let s = spec(
            dir.path(),
            &format!(
                "trap '' TERM; sleep 300 & echo $! > {p}; echo $$ >> {p}; wait",
                p = pidfile.display()
            ),
        );
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let pf = pidfile.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                if std::fs::read_to_string(&pf)
                    .map(|s| s.lines().count() == 2)
                    .unwrap_or(false)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c2.cancel();
        });
        let t0 = std::time::Instant::now();
        let (tx, _rx) = mpsc::channel(64);
        let exit = ProcessRuntime::new()
            .grace(Duration::from_millis(300))
            .run(&s, tx, cancel)
            .await
            .expect("run");
        assert!(exit.canceled);
        assert_eq!(exit.exit_code, 128 + i64::from(libc::SIGKILL));
        assert!(t0.elapsed() < Duration::from_secs(10));
        let pids = std::fs::read_to_string(&pidfile).expect("pids");
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            assert!(dies_soon(pid), "process {pid} survived the cancel");
        }
    }

    /// SIGKILL is delivered asynchronously: a killed process may still be on its way out
    /// (not yet a zombie) for a moment after `kill` returns, more so on a loaded machine.
    fn dies_soon(pid: i32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[tokio::test]
    async fn leftovers_die_with_the_main_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        // The background sleep holds stdout open: the pumps must not wait for it.
        let s = spec(
            dir.path(),
            &format!("sleep 300 & echo $! > {}; echo done", pidfile.display()),
        );
        let t0 = std::time::Instant::now();
        let (exit, lines) = run(&s, CancellationToken::new()).await;
        assert_eq!(exit.exit_code, 0);
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        assert!(lines.iter().any(|l| l.line == "done"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("pid number");
        assert!(dies_soon(pid), "leftover {pid} survived");
    }

    #[tokio::test]
    async fn missing_program_is_a_start_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = spec(dir.path(), "");
        s.command = vec!["/nonexistent/program".into()];
        s.args.clear();
        let (tx, _rx) = mpsc::channel(4);
        let err = ProcessRuntime::new()
            .run(&s, tx, CancellationToken::new())
            .await
            .expect_err("must fail");
        assert!(matches!(err, RuntimeError::Start { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/program"), "{err}");
    }
}
