//! Container runtimes: how an attempt's process is started, watched, stopped and logged.

mod docker;
mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use docker::DockerRuntime;
pub use process::ProcessRuntime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

/// One attempt's process, fully resolved (placeholders substituted).
#[derive(Debug, Clone, Default)]
pub struct ContainerRun {
    /// Unique name, also the container name under Docker.
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint (KFP `command`).
    pub command: Vec<String>,
    /// KFP `args`.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The attempt's private directory on the host; mounted at [`Runtime::step_root`].
    pub attempt_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub cpu_limit: Option<f64>,
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub exit_code: i64,
    pub canceled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image:?} is not present locally and pulling it failed: {message}")]
    ImagePull { image: String, message: String },
    #[error("cannot start the step: {0}")]
    Start(String),
    #[error("runtime error: {0}")]
    Other(String),
    #[error("no usable runtime: {0}")]
    Unavailable(String),
}

#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;

    /// Where the attempt directory appears to the step (`/gantry` in a container, the host
    /// path for a local process). The launcher writes every path the step sees below it.
    fn step_root(&self, attempt_dir: &Path) -> PathBuf;

    /// Runs to completion, streaming log lines; `cancel` stops it.
    async fn run(
        &self,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError>;
}

/// `docker`, `process`, or `auto` (Docker when an engine answers, else process).
pub async fn select(choice: &str) -> Result<(Arc<dyn Runtime>, String), RuntimeError> {
    match choice {
        "process" => Ok((Arc::new(ProcessRuntime), "process".into())),
        "docker" => {
            let d = DockerRuntime::connect().await?;
            Ok((Arc::new(d), "docker".into()))
        }
        "auto" => match DockerRuntime::connect().await {
            Ok(d) => Ok((Arc::new(d), "docker".into())),
            Err(e) => {
                tracing::info!(error = %e, "no Docker engine answered; using the process runtime");
                Ok((Arc::new(ProcessRuntime), "process".into()))
            }
        },
        other => Err(RuntimeError::Unavailable(format!(
            "unknown runtime {other:?} (expected docker, process or auto)"
        ))),
    }
}

/// Splits a byte stream into lines, keeping a trailing partial line for the next chunk.
#[derive(Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            out.push(
                String::from_utf8_lossy(&line[..line.len() - 1])
                    .trim_end_matches('\r')
                    .to_string(),
            );
        }
        out
    }

    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            None
        } else {
            let s = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), vec!["a"]);
        assert_eq!(s.push(b"c\r\nd\n"), vec!["bc", "d"]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
    }
}
