//! Steps as local processes: for `gantry dev` without Docker, and for development.
//!
//! The process inherits the agent's environment (plus the step's), runs in the attempt's
//! private directory, and is killed with its whole process group on cancel. The image is
//! ignored and CPU and memory limits are not enforced.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ContainerRun, ExitInfo, LineSplitter, LogLine, LogStream, Runtime, RuntimeError};

pub struct ProcessRuntime;

async fn pump(mut r: impl AsyncRead + Unpin, stream: LogStream, tx: mpsc::Sender<LogLine>) {
    let mut buf = vec![0u8; 8192];
    let mut split = LineSplitter::default();
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                for line in split.push(&buf[..n]) {
                    let _ = tx.send(LogLine { stream, line }).await;
                }
            }
        }
    }
    if let Some(line) = split.finish() {
        let _ = tx.send(LogLine { stream, line }).await;
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn step_root(&self, attempt_dir: &Path) -> PathBuf {
        attempt_dir.to_path_buf()
    }

    async fn run(
        &self,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError> {
        let argv: Vec<&String> = spec.command.iter().chain(spec.args.iter()).collect();
        let Some((program, rest)) = argv.split_first() else {
            return Err(RuntimeError::Start("the step has no command".into()));
        };
        let work = spec.attempt_dir.join("work");
        std::fs::create_dir_all(&work)
            .map_err(|e| RuntimeError::Start(format!("{}: {e}", work.display())))?;
        let mut cmd = Command::new(program);
        cmd.args(rest.iter().map(|s| s.as_str()))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("HOME", &work)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError::Start(format!("{program}: {e}")))?;
        let pid = child.id();
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(pump(s, LogStream::Stdout, logs.clone())));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(pump(s, LogStream::Stderr, logs.clone())));
        let (status, canceled) = tokio::select! {
            s = child.wait() => (s, false),
            _ = cancel.cancelled() => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) on the process group we created for this child.
                    unsafe { libc::kill(-pid, libc::SIGKILL); }
                }
                (child.wait().await, true)
            }
        };
        for h in [out, err].into_iter().flatten() {
            let _ = h.await;
        }
        let status = status.map_err(|e| RuntimeError::Other(e.to_string()))?;
        let exit_code = status.code().map(i64::from).unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + i64::from(status.signal().unwrap_or(0))
        });
        Ok(ExitInfo {
            exit_code,
            canceled,
        })
    }
}
