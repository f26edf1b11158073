//! Steps in Docker containers through the Engine API (bollard).
//!
//! One container per attempt:
//! - the image is used if present locally, else pulled (a failed pull is
//!   [`RuntimeError::ImagePull`], naming the image);
//! - KFP semantics: the step's `command` replaces the image's ENTRYPOINT and its `args` are
//!   the CMD (an empty `command` keeps the image's entrypoint);
//! - the attempt directory is bind-mounted read-write at [`STEP_ROOT`] (`/gantry`); the
//!   container runs as the image's user (root unless the image says otherwise), so the launcher
//!   makes the output directories world-writable for images with a non-root `USER`;
//! - labels `gantry.*` from the launcher, `NanoCpus` from the CPU limit, `Memory` (and the same
//!   `MemorySwap`, so no swap) from the memory limit (or [`StepIsolation::default_memory_bytes`]
//!   when the pipeline sets none), `NetworkMode` if set;
//! - isolation ([`StepIsolation`], the agent's `--step-*` flags): every capability dropped but
//!   a small set added back, `no-new-privileges`, a PID limit;
//! - logs are followed (stdout and stderr) line by line; on cancel the container is stopped
//!   with a short grace period; the container is always removed afterwards, also on errors
//!   and when `run` is dropped half-way;
//! - containers outlive the agent process: a restarted agent finds its own by their labels
//!   ([`Runtime::orphans`]) and follows them to their end ([`Runtime::reattach`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount as DockerMount, MountTmpfsOptions,
    MountType,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ContainerRun, ExitInfo, LineSplitter, LogLine, LogStream, Orphan, PathMap, Runtime,
    RuntimeError, StepIsolation,
};

/// Where the attempt directory is mounted in every container.
pub const STEP_ROOT: &str = "/gantry";

/// Seconds between SIGTERM and SIGKILL when a step is canceled.
const STOP_GRACE_S: i32 = 2;
/// How long the log pump may run on after the container ended.
const LOG_DRAIN: Duration = Duration::from_secs(5);
/// How often, and how far apart, a SIGKILLed container is asked whether it ran out of memory
/// (the engine's OOM event may trail the exit by a moment).
const OOM_EVENT_TRIES: u32 = 10;
const OOM_EVENT_WAIT: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    isolation: StepIsolation,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").finish_non_exhaustive()
    }
}

/// A valid container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`) made from the attempt name.
pub(crate) fn container_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        s.insert_str(0, "gantry");
    }
    s
}

/// `repo[:tag]` or `repo@digest` → the `fromImage` and `tag` of a pull.
pub(crate) fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    match image.rsplit_once(':') {
        // A ':' before the last '/' is a registry port, not a tag.
        Some((repo, tag)) if !tag.contains('/') && !repo.is_empty() && !tag.is_empty() => {
            (repo.to_string(), Some(tag.to_string()))
        }
        _ => (image.to_string(), Some("latest".to_string())),
    }
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the engine (`DOCKER_HOST`, else the local socket), agrees on an API version
    /// the engine speaks (bollard asks for a newer one than many engines serve) and checks that
    /// it answers.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| RuntimeError::Unavailable(format!("docker: {e}")))?;
        Self::from_client(docker).await
    }

    /// Like [`DockerRuntime::connect`] over an existing client (a custom timeout, a remote
    /// engine).
    pub async fn from_client(docker: Docker) -> Result<Self, RuntimeError> {
        let docker = docker.negotiate_version().await.map_err(|e| {
            RuntimeError::Unavailable(format!("docker engine does not answer: {e}"))
        })?;
        docker.ping().await.map_err(|e| {
            RuntimeError::Unavailable(format!("docker engine does not answer: {e}"))
        })?;
        Ok(DockerRuntime {
            docker,
            isolation: StepIsolation::default(),
        })
    }

    /// Runs steps with `isolation` instead of the defaults.
    pub fn with_isolation(mut self, isolation: StepIsolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Removes every container (running or not) carrying all of `labels`, e.g.
    /// `[("gantry.managed", "true"), ("gantry.agent", id)]` when an agent starts again after
    /// a crash: their attempts are lost to the coordinator anyway. Returns how many went.
    pub async fn remove_labelled(&self, labels: &[(&str, &str)]) -> Result<usize, RuntimeError> {
        let found = self.list_labelled(labels).await?;
        let mut n = 0;
        for id in found.into_iter().filter_map(|c| c.id) {
            self.remove(&id).await;
            n += 1;
        }
        Ok(n)
    }

    /// Every container (running or not) carrying all of `labels`.
    async fn list_labelled(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("listing containers: {e}")))?;
        Ok(found)
    }

    /// The engine client, for callers that need more (tests listing containers).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn pull_if_missing(&self, image: &str) -> Result<(), RuntimeError> {
        let pull_err = |message: String| RuntimeError::ImagePull {
            image: image.to_string(),
            message,
        };
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(pull_err(format!("inspecting the image failed: {e}"))),
        }
        tracing::info!(image, "image not present locally; pulling");
        let (from_image, tag) = pull_reference(image);
        let opts = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = pull.next().await {
            match item {
                Err(e) => return Err(pull_err(e.to_string())),
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(pull_err(detail));
                    }
                }
            }
        }
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| pull_err(format!("the pull ended but the image is absent: {e}")))
    }

    async fn remove(&self, name: &str) {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(name, Some(opts)).await {
            if !is_not_found(&e) {
                tracing::warn!(container = name, error = %e, "could not remove container");
            }
        }
    }

    fn create_body(spec: &ContainerRun, iso: &StepIsolation) -> ContainerCreateBody {
        let mut mounts = vec![DockerMount {
            target: Some(STEP_ROOT.to_string()),
            source: Some(spec.work_dir.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        }];
        mounts.extend(spec.mounts.iter().map(|m| DockerMount {
            target: Some(m.container_path.clone()),
            source: Some(m.host_path.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(m.read_only),
            ..Default::default()
        }));
        mounts.extend(spec.tmpfs.iter().map(|t| DockerMount {
            target: Some(t.container_path.clone()),
            typ: Some(MountType::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: t.size_bytes.and_then(|b| i64::try_from(b).ok()),
                // Writable by whichever user the image runs as, as an emptyDir is.
                mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let memory = spec
            .memory_limit_bytes
            .filter(|m| *m > 0)
            .or(iso.default_memory_bytes)
            .and_then(|m| i64::try_from(m).ok());
        let host_config = HostConfig {
            mounts: Some(mounts),
            nano_cpus: spec
                .cpu_limit
                .filter(|c| c.is_finite() && *c > 0.0)
                .map(|c| (c * 1e9).round() as i64),
            memory,
            memory_swap: memory,
            network_mode: spec.network.clone(),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(iso.cap_add.clone()),
            security_opt: iso
                .no_new_privileges
                .then(|| vec!["no-new-privileges:true".into()]),
            pids_limit: iso.pids_limit,
            // The NVIDIA container toolkit exposes exactly these devices, by UUID.
            device_requests: (!spec.gpus.is_empty()).then(|| {
                vec![DeviceRequest {
                    driver: Some("nvidia".into()),
                    device_ids: Some(spec.gpus.clone()),
                    capabilities: Some(vec![vec!["gpu".into()]]),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: Some(spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone().into_iter().collect::<HashMap<_, _>>()),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn create_and_start(&self, name: &str, spec: &ContainerRun) -> Result<(), RuntimeError> {
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(opts), Self::create_body(spec, &self.isolation))
            .await
            .map_err(|e| RuntimeError::Create {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| RuntimeError::Start {
                name: name.to_string(),
                message: e.to_string(),
            })
    }

    /// Waits for the container to stop; its exit code.
    async fn wait(&self, name: &str) -> Result<i64, RuntimeError> {
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard surfaces a non-zero exit as an error carrying the code.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(RuntimeError::Wait {
                name: name.to_string(),
                message: e.to_string(),
            }),
            None => Err(RuntimeError::Wait {
                name: name.to_string(),
                message: "the engine closed the wait without an answer".into(),
            }),
        }
    }

    /// Whether the kernel's OOM killer ended the container. The engine learns of the OOM from
    /// an event of its own, which on a loaded host can come after the exit it caused: a
    /// SIGKILL exit (137) is asked about a few times before it is taken for some other kill.
    async fn oom_killed(&self, name: &str, exit_code: i64) -> bool {
        let tries = if exit_code == 137 { OOM_EVENT_TRIES } else { 1 };
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(OOM_EVENT_WAIT).await;
            }
            let oom = self
                .docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.oom_killed)
                .unwrap_or(false);
            if oom {
                return true;
            }
        }
        false
    }

    fn spawn_log_pump(
        &self,
        name: &str,
        logs: mpsc::Sender<LogLine>,
    ) -> tokio::task::JoinHandle<()> {
        let opts = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(name, Some(opts));
        tokio::spawn(async move {
            let mut out = LineSplitter::default();
            let mut err = LineSplitter::default();
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "log stream ended");
                        break;
                    }
                };
                let (stream, split, bytes) = match chunk {
                    bollard::container::LogOutput::StdErr { message } => {
                        (LogStream::Stderr, &mut err, message)
                    }
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => {
                        (LogStream::Stdout, &mut out, message)
                    }
                    bollard::container::LogOutput::StdIn { .. } => continue,
                };
                for line in split.push(&bytes) {
                    let _ = logs.send(LogLine { stream, line }).await;
                }
            }
            for (stream, split) in [(LogStream::Stdout, &mut out), (LogStream::Stderr, &mut err)] {
                if let Some(line) = split.finish() {
                    let _ = logs.send(LogLine { stream, line }).await;
                }
            }
        })
    }

    async fn run_container(
        &self,
        name: &str,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError> {
        self.create_and_start(name, spec).await?;
        self.follow(name, logs, cancel).await
    }

    /// Streams the output of the started container `name` from its start and waits for its
    /// end; `cancel` stops it.
    async fn follow(
        &self,
        name: &str,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError> {
        let pump = self.spawn_log_pump(name, logs);
        let result = tokio::select! {
            r = self.wait(name) => r.map(|exit_code| (exit_code, false)),
            _ = cancel.cancelled() => {
                let opts = StopContainerOptions { t: Some(STOP_GRACE_S), ..Default::default() };
                if let Err(e) = self.docker.stop_container(name, Some(opts)).await {
                    tracing::warn!(container = %name, error = %e, "stop failed; removing by force");
                }
                let code = match tokio::time::timeout(Duration::from_secs(10), self.wait(name)).await {
                    Ok(Ok(code)) => code,
                    _ => 137,
                };
                Ok((code, true))
            }
        };
        let abort = pump.abort_handle();
        if tokio::time::timeout(LOG_DRAIN, pump).await.is_err() {
            abort.abort();
        }
        let (exit_code, canceled) = result?;
        let oom_killed = exit_code != 0 && !canceled && self.oom_killed(name, exit_code).await;
        Ok(ExitInfo {
            exit_code,
            canceled,
            oom_killed,
        })
    }
}

/// Removes the container if `run` is dropped before it could (the agent's task was aborted).
struct RemoveGuard {
    docker: Docker,
    name: String,
    armed: bool,
}

impl Drop for RemoveGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&name, Some(opts)).await;
            });
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn path_map(&self, work_dir: &Path) -> PathMap {
        PathMap::new(work_dir, STEP_ROOT)
    }

    /// Bind mounts put any host directory at any path in the container.
    fn mounts_host_dirs(&self) -> bool {
        true
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.pull_if_missing(image).await
    }

    fn survives_agent_restart(&self) -> bool {
        true
    }

    async fn orphans(&self, labels: &[(&str, &str)]) -> Result<Vec<Orphan>, RuntimeError> {
        Ok(self
            .list_labelled(labels)
            .await?
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_string();
                Some(Orphan {
                    name,
                    labels: c.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect())
    }

    async fn reattach(
        &self,
        name: &str,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<Option<ExitInfo>, RuntimeError> {
        let name = container_name(name);
        match self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(RuntimeError::Wait {
                    name,
                    message: e.to_string(),
                })
            }
        }
        let mut guard = RemoveGuard {
            docker: self.docker.clone(),
            name: name.clone(),
            armed: true,
        };
        let result = self.follow(&name, logs, cancel).await;
        self.remove(&name).await;
        guard.armed = false;
        result.map(Some)
    }

    async fn discard(&self, name: &str) {
        self.remove(&container_name(name)).await;
    }

    async fn run(
        &self,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError> {
        tokio::select! {
            r = self.pull_if_missing(&spec.image) => r?,
            _ = cancel.cancelled() => {
                return Ok(ExitInfo { exit_code: -1, canceled: true, oom_killed: false });
            }
        }
        let name = container_name(&spec.name);
        // A container of this very attempt left behind by an earlier agent process.
        self.remove(&name).await;
        let mut guard = RemoveGuard {
            docker: self.docker.clone(),
            name: name.clone(),
            armed: true,
        };
        let result = self.run_container(&name, spec, logs, cancel).await;
        self.remove(&name).await;
        guard.armed = false;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    #[test]
    fn pull_references() {
        assert_eq!(
            pull_reference("gantry/busybox"),
            ("gantry/busybox".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_reference("python:3.11"),
            ("python".into(), Some("3.11".into()))
        );
        assert_eq!(
            pull_reference("localhost:5000/img"),
            ("localhost:5000/img".into(), Some("latest".into()))
        );
        assert_eq!(
            pull_reference("localhost:5000/img:v2"),
            ("localhost:5000/img".into(), Some("v2".into()))
        );
        assert_eq!(
            pull_reference("img@sha256:abc"),
            ("img@sha256:abc".into(), None)
        );
    }

    #[test]
    fn container_names_are_valid() {
        assert_eq!(
            container_name("gantry-r1-for-loop-2/3/sq-1"),
            "gantry-r1-for-loop-2_3_sq-1"
        );
        assert_eq!(container_name("/x"), "gantry_x");
    }

    #[test]
    fn create_body_follows_kfp_semantics() {
        let spec = ContainerRun {
            name: "n".into(),
            image: "img:1".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec!["echo hi".into()],
            env: vec![("A".into(), "1".into())],
            mounts: vec![super::super::Mount {
                host_path: PathBuf::from("/data"),
                container_path: "/data".into(),
                read_only: true,
            }],
            tmpfs: vec![super::super::Tmpfs {
                container_path: "/dev/shm".into(),
                size_bytes: Some(1 << 30),
            }],
            work_dir: PathBuf::from("/w/r/t/attempt-1"),
            labels: BTreeMap::from([("gantry.run".to_string(), "r".to_string())]),
            cpu_limit: Some(1.5),
            memory_limit_bytes: Some(1 << 30),
            network: Some("none".into()),
            gpus: vec![],
        };
        let iso = StepIsolation::default();
        let body = DockerRuntime::create_body(&spec, &iso);
        assert_eq!(
            body.entrypoint,
            Some(vec!["sh".to_string(), "-c".to_string()])
        );
        assert_eq!(body.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.nano_cpus, Some(1_500_000_000));
        assert_eq!(hc.memory, Some(1 << 30));
        assert_eq!(hc.memory_swap, Some(1 << 30));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        let mounts = hc.mounts.expect("mounts");
        assert_eq!(mounts[0].target.as_deref(), Some(STEP_ROOT));
        assert_eq!(mounts[0].source.as_deref(), Some("/w/r/t/attempt-1"));
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(mounts[2].typ, Some(MountType::TMPFS));
        assert_eq!(mounts[2].target.as_deref(), Some("/dev/shm"));
        let tmpfs = mounts[2].tmpfs_options.as_ref().expect("tmpfs options");
        assert_eq!(
            (tmpfs.size_bytes, tmpfs.mode),
            (Some(1 << 30), Some(0o1777))
        );
        assert_eq!(hc.device_requests, None, "no GPUs, no device request");
        let with_gpus = ContainerRun {
            gpus: vec!["GPU-a".into(), "GPU-b".into()],
            ..spec.clone()
        };
        let hc = DockerRuntime::create_body(&with_gpus, &iso)
            .host_config
            .expect("host config");
        let req = &hc.device_requests.expect("a device request")[0];
        assert_eq!(req.driver.as_deref(), Some("nvidia"));
        assert_eq!(
            req.device_ids,
            Some(vec!["GPU-a".to_string(), "GPU-b".to_string()])
        );

        let no_cmd = ContainerRun {
            command: vec![],
            ..spec
        };
        assert_eq!(DockerRuntime::create_body(&no_cmd, &iso).entrypoint, None);
    }

    #[test]
    fn create_body_isolates_the_step() {
        let spec = ContainerRun {
            name: "n".into(),
            image: "img:1".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            mounts: vec![],
            tmpfs: vec![],
            work_dir: PathBuf::from("/w"),
            labels: BTreeMap::new(),
            cpu_limit: None,
            memory_limit_bytes: None,
            network: None,
            gpus: vec![],
        };
        let hc = DockerRuntime::create_body(&spec, &StepIsolation::default())
            .host_config
            .expect("host config");
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            hc.cap_add,
            Some(super::super::DEFAULT_STEP_CAPS.map(String::from).to_vec())
        );
        assert_eq!(
            hc.security_opt,
            Some(vec!["no-new-privileges:true".to_string()])
        );
        assert_eq!(hc.pids_limit, Some(4096));
        assert_eq!(hc.memory, Some(4 << 30), "the default memory limit");
        assert_eq!(hc.memory_swap, Some(4 << 30));
        // The pipeline's own limit wins; the operator can loosen everything.
        let loose = StepIsolation {
            no_new_privileges: false,
            cap_add: vec![],
            pids_limit: None,
            default_memory_bytes: None,
        };
        let hc = DockerRuntime::create_body(
            &ContainerRun {
                memory_limit_bytes: Some(1 << 20),
                ..spec.clone()
            },
            &loose,
        )
        .host_config
        .expect("host config");
        assert_eq!(hc.memory, Some(1 << 20));
        assert_eq!(hc.security_opt, None);
        assert_eq!(hc.pids_limit, None);
        assert_eq!(hc.cap_add, Some(vec![]));
        let hc = DockerRuntime::create_body(&spec, &loose)
            .host_config
            .expect("host config");
        assert_eq!(hc.memory, None);
    }
}
