//! Container runtimes: how an attempt's process is started, watched, stopped and logged.
//!
//! A [`Runtime`] runs one fully resolved [`ContainerRun`] (placeholders already substituted) to
//! its end, streaming its output line by line, and stops it when the cancellation token fires.
//! It decides nothing about what the step means: the launcher does that.
//!
//! Two runtimes:
//! - [`DockerRuntime`]: a container through the Docker Engine API; the attempt directory is
//!   bind-mounted at [`docker::STEP_ROOT`] (`/gantry`).
//! - [`ProcessRuntime`]: a local process group; the step sees host paths unchanged.
//!
//! Where the attempt directory appears to the step is a [`PathMap`], which the launcher uses to
//! write every path the step is given.

mod docker;
mod process;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use docker::{DockerRuntime, STEP_ROOT};
pub use process::ProcessRuntime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a step wrote, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

/// An extra host directory or file shown to the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// A directory in memory (a tmpfs) shown to the step: a `medium: Memory` emptyDir, or
/// `/dev/shm`. `size_bytes`: `None`, the kernel's default for a tmpfs (half the host's
/// memory); the step's memory limit counts what it holds either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub container_path: String,
    pub size_bytes: Option<u64>,
}

/// One attempt's process, fully resolved (placeholders substituted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerRun {
    /// Unique name of the attempt; the container name under Docker (sanitized there).
    pub name: String,
    /// Image reference; ignored by the process runtime.
    pub image: String,
    /// KFP `command`: replaces the image's ENTRYPOINT. May be empty (the image's entrypoint).
    pub command: Vec<String>,
    /// KFP `args`: the CMD.
    pub args: Vec<String>,
    /// Added to the image's environment (Docker) or the agent's (process).
    pub env: Vec<(String, String)>,
    /// Extra mounts besides the attempt directory.
    pub mounts: Vec<Mount>,
    /// Directories in memory (Docker runtime only).
    pub tmpfs: Vec<Tmpfs>,
    /// The attempt's private directory on the host; the runtime shows it to the step at
    /// [`Runtime::path_map`]`(work_dir).step_root()`.
    pub work_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// CPU cores (Docker `NanoCpus`). Not enforced by the process runtime.
    pub cpu_limit: Option<f64>,
    /// Memory limit (Docker `Memory`, swap disallowed). Not enforced by the process runtime.
    pub memory_limit_bytes: Option<u64>,
    /// Docker network mode (`none`, `bridge`, `host`, a network name); default: the engine's.
    pub network: Option<String>,
    /// UUIDs of the GPUs assigned to the step: a device request under Docker, and in both
    /// runtimes the only GPUs named in `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES`.
    pub gpus: Vec<String>,
}

impl ContainerRun {
    /// Command then args: the full argv as the step runs it.
    pub fn argv(&self) -> Vec<String> {
        self.command
            .iter()
            .chain(self.args.iter())
            .cloned()
            .collect()
    }
}

/// How the step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit status; a process killed by signal N reports 128 + N, as a shell does; -1
    /// when the step was canceled before it started.
    pub exit_code: i64,
    /// The step was stopped because the cancellation token fired.
    pub canceled: bool,
    /// The kernel's OOM killer ended it (Docker reports this; the process runtime cannot tell).
    pub oom_killed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image:?} is not present locally and pulling it failed: {message}")]
    ImagePull { image: String, message: String },
    #[error("cannot create the container for {name}: {message}")]
    Create { name: String, message: String },
    #[error("cannot start {name}: {message}")]
    Start { name: String, message: String },
    #[error("lost track of {name}: {message}")]
    Wait { name: String, message: String },
    #[error("no usable runtime: {0}")]
    Unavailable(String),
}

/// How paths under the attempt directory on the host appear to the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    host_root: PathBuf,
    step_root: PathBuf,
}

impl PathMap {
    /// `host_root` (the attempt directory) is seen by the step at `step_root`.
    pub fn new(host_root: impl Into<PathBuf>, step_root: impl Into<PathBuf>) -> Self {
        PathMap {
            host_root: host_root.into(),
            step_root: step_root.into(),
        }
    }

    /// The step sees host paths unchanged (the process runtime).
    pub fn identity(host_root: impl Into<PathBuf>) -> Self {
        let host_root = host_root.into();
        PathMap {
            step_root: host_root.clone(),
            host_root,
        }
    }

    pub fn host_root(&self) -> &Path {
        &self.host_root
    }

    pub fn step_root(&self) -> &Path {
        &self.step_root
    }

    /// The path the step sees for `host`, a path under the attempt directory; `None` when
    /// `host` is outside it.
    pub fn container_path(&self, host: &Path) -> Option<String> {
        let rel = host.strip_prefix(&self.host_root).ok()?;
        Some(
            self.step_root
                .join(rel)
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
        )
    }

    /// The host path of a path the step reported (an artifact URI it rewrote, say); `None`
    /// when it is outside the attempt directory as the step sees it, relative, or climbs
    /// with `..`. Symbolic links are not resolved here: callers that read the result must
    /// still check where it leads.
    pub fn host_path(&self, step_path: &str) -> Option<PathBuf> {
        let p = Path::new(step_path);
        if !p.is_absolute() {
            return None;
        }
        let rel = p.strip_prefix(&self.step_root).ok()?;
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        Some(self.host_root.join(rel))
    }
}

/// A step's container left running (or ended, not yet removed) by an earlier agent process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The container's name, as [`ContainerRun::name`] gave it (sanitized by the runtime).
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A way of running steps. Object-safe: the agent holds an `Arc<dyn Runtime>`.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// `docker` or `process`.
    fn name(&self) -> &'static str;

    /// Where `work_dir` (an attempt directory) and the paths below it appear to the step.
    fn path_map(&self, work_dir: &Path) -> PathMap;

    /// Whether a [`Mount`] shows its host directory to the step at its `container_path`. A
    /// step that mounts a volume (kfp-kubernetes `mount_pvc`) reads and writes at the path it
    /// chose; where the runtime cannot put the volume there (the process runtime, whose steps
    /// see host paths unchanged) the launcher refuses the step, and the agent refuses
    /// `--volume`, rather than let the step use whatever lies at that path on the host.
    fn mounts_host_dirs(&self) -> bool;

    /// The path the step sees for `host`, a path under `work_dir`.
    fn container_path(&self, work_dir: &Path, host: &Path) -> Option<String> {
        self.path_map(work_dir).container_path(host)
    }

    /// Makes sure `image` can be run (Docker: present locally, else pulled), so that a step
    /// whose image is missing fails before its inputs are downloaded. [`Runtime::run`] checks
    /// again. The default does nothing.
    async fn ensure_image(&self, _image: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Runs to completion, streaming log lines into `logs`; `cancel` stops it (the result is
    /// then `Ok` with `canceled: true`). A non-zero exit is `Ok` with that code: errors are for
    /// steps that could not run or be watched. Whatever it started is gone when this returns.
    async fn run(
        &self,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError>;

    /// Whether steps outlive the agent process, so that a restarted agent can
    /// [`Runtime::reattach`] to them. The process runtime's steps die with their agent.
    fn survives_agent_restart(&self) -> bool {
        false
    }

    /// The containers carrying all of `labels` (those an earlier process of this agent
    /// started), running or ended.
    async fn orphans(&self, _labels: &[(&str, &str)]) -> Result<Vec<Orphan>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Follows the existing container named `name` (a [`ContainerRun::name`]) to its end, as
    /// [`Runtime::run`] would have: its output from the start, then its exit; it is removed
    /// afterwards. `Ok(None)`: there is no such container.
    async fn reattach(
        &self,
        _name: &str,
        _logs: mpsc::Sender<LogLine>,
        _cancel: CancellationToken,
    ) -> Result<Option<ExitInfo>, RuntimeError> {
        Ok(None)
    }

    /// Removes a container that cannot be reattached (its attempt's record is gone).
    async fn discard(&self, _name: &str) {}
}

/// The runtime an agent asks for (`gantry-agent --runtime`, `gantry dev --runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeChoice {
    /// Docker; with no engine answering the agent does not start (it never falls back to
    /// running steps as host processes).
    #[default]
    Auto,
    Docker,
    /// Steps as host processes, without isolation: only when asked for by name.
    Process,
}

/// How Docker runs every step: the isolation the agent's flags choose
/// (`--step-no-new-privileges`, `--step-cap-add`, `--step-pids-limit`,
/// `--default-step-memory`). The network is [`ContainerRun::network`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepIsolation {
    /// `no-new-privileges`: setuid binaries and file capabilities give a step nothing more.
    pub no_new_privileges: bool,
    /// Every capability is dropped, then these are added back.
    pub cap_add: Vec<String>,
    /// Most processes and threads in a step's container; `None`: the engine's default
    /// (unlimited).
    pub pids_limit: Option<i64>,
    /// The memory limit of a step whose pipeline sets none; `None`: unlimited.
    pub default_memory_bytes: Option<u64>,
}

/// The capabilities steps keep by default, of Docker's default set: what root needs to
/// `pip install` and `apt-get install` inside its container. `CHOWN`, `DAC_OVERRIDE`,
/// `FOWNER`, `FSETID`: unpack archives and write files owned by other users; `SETUID`,
/// `SETGID`: apt drops to its `_apt` user, `su`/`gosu` in entrypoints; `KILL`: signal the
/// step's own processes of other users; `NET_BIND_SERVICE`: serve on a port below 1024.
/// Dropped from Docker's defaults: `NET_RAW` (raw sockets: spoofing on the bridge), `MKNOD`,
/// `SETFCAP`, `SETPCAP`, `SYS_CHROOT`, `AUDIT_WRITE`.
pub const DEFAULT_STEP_CAPS: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETUID",
    "SETGID",
    "KILL",
    "NET_BIND_SERVICE",
];

/// The default `--step-pids-limit`.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// The default `--default-step-memory`: 4 GiB.
pub const DEFAULT_STEP_MEMORY: u64 = 4 << 30;

impl Default for StepIsolation {
    fn default() -> Self {
        StepIsolation {
            no_new_privileges: true,
            cap_add: DEFAULT_STEP_CAPS.iter().map(|c| c.to_string()).collect(),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            default_memory_bytes: Some(DEFAULT_STEP_MEMORY),
        }
    }
}

/// The runtime `choice` names; [`Runtime::name`] says which one it is. `Auto` is Docker, and
/// an error when no engine answers: a host whose engine is down must not run steps unconfined.
/// The process runtime is used only when asked for by name, with a loud warning. `isolation`
/// applies to Docker.
pub async fn select(
    choice: RuntimeChoice,
    isolation: StepIsolation,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    select_from(choice, isolation, DockerRuntime::connect()).await
}

/// [`select`] with the engine connection given (tests give one that fails); it is awaited
/// only for Docker.
async fn select_from(
    choice: RuntimeChoice,
    isolation: StepIsolation,
    docker: impl std::future::Future<Output = Result<DockerRuntime, RuntimeError>>,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    match choice {
        RuntimeChoice::Process => {
            tracing::warn!(
                "PROCESS RUNTIME: steps run as host processes with this agent's user and \
                 file system, without container isolation, resource limits or network \
                 settings; use it only for trusted pipelines on a development machine"
            );
            Ok(Arc::new(ProcessRuntime::new()))
        }
        RuntimeChoice::Docker => Ok(Arc::new(docker.await?.with_isolation(isolation))),
        RuntimeChoice::Auto => match docker.await {
            Ok(d) => Ok(Arc::new(d.with_isolation(isolation))),
            Err(e) => Err(RuntimeError::Unavailable(format!(
                "{e}; --runtime auto runs steps only in Docker and never falls back to host \
                 processes: start the Docker engine, or pass --runtime process to run steps \
                 as host processes without isolation"
            ))),
        },
    }
}

/// Where steps' containers are attached (`--step-network`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StepNetwork {
    /// Docker's default bridge: egress to wherever the host routes (package indexes, object
    /// stores, the LAN), no inbound port published.
    #[default]
    Bridge,
    /// No network at all but loopback.
    None,
    /// The host's own network stack (the agent's addresses and ports).
    Host,
}

impl StepNetwork {
    /// The Docker network mode.
    pub fn mode(self) -> &'static str {
        match self {
            StepNetwork::Bridge => "bridge",
            StepNetwork::None => "none",
            StepNetwork::Host => "host",
        }
    }
}

/// Parses a byte size: a number with an optional unit `K`, `M`, `G`, `T` (powers of 1000),
/// `Ki`, `Mi`, `Gi`, `Ti` or `KiB`…`TiB` (powers of 1024); `0` means unlimited (`None`).
pub fn parse_byte_size(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 4GiB, 512Mi, 0 for none)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use Mi, Gi, MiB, GiB, …)"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    Ok((bytes > 0).then_some(bytes))
}

/// Longest line forwarded as one [`LogLine`]; longer output without a newline (progress bars,
/// binary junk) is cut into pieces of this size so it never accumulates in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Splits a byte stream into lines, keeping a trailing partial line for the next chunk.
#[derive(Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

impl LineSplitter {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..pos]);
            out.push(line_text(&self.partial));
            self.partial.clear();
            rest = &rest[pos + 1..];
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE_BYTES {
            let piece: Vec<u8> = self.partial.drain(..MAX_LINE_BYTES).collect();
            out.push(String::from_utf8_lossy(&piece).into_owned());
        }
        out
    }

    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            None
        } else {
            let s = line_text(&self.partial);
            self.partial.clear();
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_units_and_zero_is_unlimited() {
        assert_eq!(parse_byte_size("4GiB"), Ok(Some(4 << 30)));
        assert_eq!(parse_byte_size("512Mi"), Ok(Some(512 << 20)));
        assert_eq!(parse_byte_size("2G"), Ok(Some(2_000_000_000)));
        assert_eq!(parse_byte_size("1024"), Ok(Some(1024)));
        assert_eq!(parse_byte_size("0"), Ok(None));
        for bad in ["", "GiB", "4 parsecs", "-1", "99999999999999999999Ti"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn auto_never_falls_back_to_host_processes() {
        let no_engine = || async { Err(RuntimeError::Unavailable("no engine here".into())) };
        let e = select_from(RuntimeChoice::Auto, StepIsolation::default(), no_engine())
            .await
            .err()
            .expect("no runtime without an engine");
        let e = e.to_string();
        assert!(e.contains("no engine here"), "{e}");
        assert!(e.contains("never falls back"), "{e}");
        assert!(e.contains("--runtime process"), "{e}");
        assert!(
            select_from(RuntimeChoice::Docker, StepIsolation::default(), no_engine())
                .await
                .is_err()
        );
        let r = select_from(
            RuntimeChoice::Process,
            StepIsolation::default(),
            no_engine(),
        )
        .await
        .expect("the process runtime by name");
        assert_eq!(r.name(), "process");
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), vec!["a"]);
        assert_eq!(s.push(b"c\r\nd\n"), vec!["bc", "d"]);
        assert_eq!(s.push(b"\n"), vec![""]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn cuts_endless_lines() {
        let mut s = LineSplitter::default();
        let big = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let lines = s.push(&big);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE_BYTES));
        assert_eq!(s.finish().map(|l| l.len()), Some(10));
    }

    #[test]
    fn path_map_both_ways() {
        let m = PathMap::new("/var/gantry/r/t/attempt-1", "/gantry");
        assert_eq!(
            m.container_path(Path::new("/var/gantry/r/t/attempt-1/outputs/params/n"))
                .as_deref(),
            Some("/gantry/outputs/params/n")
        );
        assert_eq!(
            m.container_path(Path::new("/var/gantry/r/t/attempt-1"))
                .as_deref(),
            Some("/gantry")
        );
        assert_eq!(m.container_path(Path::new("/etc/passwd")), None);
        assert_eq!(
            m.host_path("/gantry/outputs/model"),
            Some(PathBuf::from("/var/gantry/r/t/attempt-1/outputs/model"))
        );
        assert_eq!(m.host_path("/gantry/../etc/passwd"), None);
        assert_eq!(m.host_path("/gantry/outputs/../../x"), None);
        assert_eq!(m.host_path("/tmp/x"), None);
        assert_eq!(m.host_path("outputs/x"), None);

        let id = PathMap::identity("/w/a");
        assert_eq!(
            id.container_path(Path::new("/w/a/inputs/x")).as_deref(),
            Some("/w/a/inputs/x")
        );
        assert_eq!(
            id.host_path("/w/a/outputs/y"),
            Some(PathBuf::from("/w/a/outputs/y"))
        );
    }
}
