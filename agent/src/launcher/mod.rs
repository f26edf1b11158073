//! The KFP executor contract for one attempt, as Kubeflow's launcher fulfils it inside a pod:
//!
//! ```text
//!  attempt dir ── download inputs ── executor input + placeholders ── run (runtime)
//!       │                                                                │ exit 0
//!       └── outputs: executor_output.json, parameter files, artifacts ── upload ── outcome
//! ```
//!
//! # What the step sees
//!
//! Everything lives under the attempt directory `WORK_ROOT/<run>/<task_id>/attempt-<n>`
//! (`task_id` may hold `/`), shown to the step at the runtime's
//! [`PathMap`](crate::runtime::PathMap) step root: `/gantry` under Docker, the host path
//! itself under the process runtime.
//!
//! | what | path the step sees |
//! | --- | --- |
//! | input artifact `N`, i-th of its list | `ROOT/inputs/N/i/<last segment of its URI, or data>` (a file or a directory) |
//! | output artifact `N` | `ROOT/outputs/artifacts/N` (the step writes a file or a directory there) |
//! | output parameter `N` | `ROOT/outputs/params/N` |
//! | executor output | `ROOT/outputs/executor_output.json` |
//!
//! In the executor input (`{{$}}`), every artifact's `uri` is that local path — KFP's Python
//! executor uses a URI without a scheme as the path — and the launcher records the real
//! `s3://`/`file://` URIs of the [`StepSpec`]. Input artifacts whose URI object_store cannot
//! address (`gs://`, `https://`) are not downloaded; the step gets their URI unchanged, as
//! Kubeflow's launcher does.
//!
//! # Outcome
//!
//! - exit code ≠ 0 → [`StepOutcome::Failed`] with `exit code N` and the last stderr lines;
//!   canceled → [`StepOutcome::Canceled`];
//! - exit 0 → output parameters from `executor_output.json`'s `parameterValues`, else from their
//!   files (converted by the declared type; a `STRING` file is taken verbatim); a declared
//!   parameter with neither is a failure naming it. Output artifacts are uploaded from their
//!   local path (or the local path the executor output reports for them) to their URI in the
//!   spec, with the metadata the executor output reports. A missing artifact file is a failure
//!   naming the output, except for metrics types (`system.Metrics`,
//!   `system.ClassificationMetrics`, `system.SlicedClassificationMetrics`), whose content is
//!   their metadata: those are recorded without uploading anything.
//!
//! # Cleanup
//!
//! Succeeded and canceled attempts' directories are removed. A failed attempt keeps its
//! directory for inspection (outputs, `executor_input.json`, the process runtime's `work/`)
//! minus `inputs/` (copies of stored artifacts, possibly large) and `tmp/`; the next run of
//! the same attempt replaces it. Nothing prunes old failed attempts yet.
//!
//! # Agent restarts
//!
//! While the step runs its spec is kept in the attempt directory (`step.json`). Under Docker
//! the container outlives the agent process: a new process with the same agent id and work
//! directory finds it by its labels ([`Launcher::orphans`]), follows it to its end and
//! collects its outputs ([`Launcher::resume`]), so the step is not run twice. Its output is
//! streamed again from the start.
//!
//! # Where it lives
//!
//! This module runs, follows and settles attempts. `layout` is the attempt directory and
//! what keeps paths inside it; `prepare` turns a spec into a [`ContainerRun`]; `collect`
//! reads the outputs and uploads the artifacts; `executor_input` builds `{{$}}`.

mod collect;
mod executor_input;
mod layout;
mod prepare;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_model::{ParamError, StepOutcome, StepSpec, VolumeMount};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::executor_input::executor_input_json;
pub use self::layout::{LayoutError, MAX_OUTPUT_FILE_BYTES};
pub use self::prepare::resolve_parameter_values;

use self::layout::{check_ids, check_task_path, Layout};
use crate::access::UriAccess;
use crate::artifacts::{ArtifactError, ArtifactStores};
use crate::config_maps::{ConfigMapError, ConfigMapStore};
use crate::placeholders::PlaceholderError;
use crate::runtime::{ContainerRun, LogLine, LogStream, Mount, Runtime, RuntimeError};
use crate::secrets::{self, Masker, SecretError, SecretStore};
use crate::volumes::{VolumeError, Volumes};

/// Why an attempt could not be prepared, run or collected: it ends FAILED with this message
/// (or CANCELED, when it was canceled meanwhile).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error(transparent)]
    ConfigMaps(#[from] ConfigMapError),
    #[error(transparent)]
    Volumes(#[from] VolumeError),
    #[error("cannot clear {}: {error}", path.display())]
    ClearDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot create {}: {error}", path.display())]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot set permissions of {}: {error}", path.display())]
    SetMode {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A placeholder of the step's `command` or `args` (`field`) does not resolve.
    #[error("{field}: {error}")]
    Placeholder {
        field: &'static str,
        error: PlaceholderError,
    },
    #[error("input artifact {name:?}: {error}")]
    InputArtifact { name: String, error: ArtifactError },
    /// The agent does not read that URI ([`crate::access`]).
    #[error("input artifact {name:?}: {why}")]
    InputRefused { name: String, why: String },
    /// The agent does not write that URI ([`crate::access`]).
    #[error("output artifact {name:?}: {why}")]
    UploadRefused { name: String, why: String },
    /// The runtime cannot show a host directory at another path ([`Runtime::mounts_host_dirs`]).
    #[error(
        "the step mounts volume(s) {}, and the process runtime cannot show a host directory at \
         another path; run the agent with --runtime docker",
        volumes.iter().map(|v| format!("{:?} at {}", v.volume, v.mount_path)).collect::<Vec<_>>().join(", ")
    )]
    VolumesNeedDocker { volumes: Vec<VolumeMount> },
    /// Secrets or config maps (`what`) to mount, on a runtime that cannot.
    #[error(
        "the step mounts {what} {} as volumes, and the process runtime cannot show a directory \
         at another path; run the agent with --runtime docker",
        names.join(", ")
    )]
    StoreVolumesNeedDocker {
        what: &'static str,
        names: Vec<String>,
    },
    #[error(
        "{what} {name:?} would be mounted at {mount_path}, which hides the step's own files \
         under {}",
        crate::runtime::STEP_ROOT
    )]
    MountHidesStepRoot {
        what: &'static str,
        name: String,
        mount_path: String,
    },
    /// A container of an earlier agent process lacks a label the launcher sets.
    #[error("it has no {0} label")]
    MissingLabel(&'static str),
    #[error("its gantry.attempt label is not a number")]
    AttemptLabel,
    #[error("cannot read {}: {error}", path.display())]
    ReadRecord {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a step spec: {error}", path.display())]
    BadRecord {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{} belongs to another attempt", .0.display())]
    OtherAttempt(PathBuf),
    #[error("cannot encode the step spec: {0}")]
    EncodeSpec(serde_json::Error),
    #[error("cannot write {}: {error}", path.display())]
    WriteRecord {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("executor output is not valid JSON: {0}")]
    ExecutorOutput(serde_json::Error),
    #[error(
        "output artifact {name:?}: the step reported URI {uri}, which is not under the pipeline \
         root {root}"
    )]
    ArtifactOutsideRoot {
        name: String,
        uri: String,
        root: String,
    },
    #[error("output artifact {name:?}: the step reported it at {path}, outside {}", step_root.display())]
    ArtifactOutsideDir {
        name: String,
        path: String,
        step_root: PathBuf,
    },
    #[error("output artifact {name:?}: {error}")]
    ArtifactFile { name: String, error: LayoutError },
    #[error("uploading output artifact {name:?}: {error}")]
    Upload { name: String, error: ArtifactError },
    /// `expected` is where the step should have written it, as the step sees it.
    #[error("output artifact {name:?} was not written (expected at {expected})")]
    ArtifactNotWritten { name: String, expected: String },
    #[error("output parameter {name:?}: {error}")]
    ParameterValue { name: String, error: ParamError },
    #[error("output parameter {name:?}: {error}")]
    ParameterFile { name: String, error: LayoutError },
    #[error(
        "output parameter {name:?} was not written (expected in {expected} or in the executor \
         output's parameterValues)"
    )]
    ParameterNotWritten { name: String, expected: String },
    #[error("output parameter {0:?} is not UTF-8 text")]
    ParameterNotUtf8(String),
}

/// Stderr lines quoted in a failure message.
const STDERR_TAIL: usize = 20;
/// Longest stderr line quoted in a failure message.
const STDERR_LINE_MAX: usize = 1000;

const METRICS_TYPES: [&str; 3] = [
    "system.Metrics",
    "system.ClassificationMetrics",
    "system.SlicedClassificationMetrics",
];

fn is_metrics(schema_title: &str) -> bool {
    METRICS_TYPES.contains(&schema_title)
}

pub struct Launcher {
    runtime: Arc<dyn Runtime>,
    stores: Arc<ArtifactStores>,
    work_root: PathBuf,
    network: Option<String>,
    /// The operator's variables for every step (proxies, a package index), before Gantry's.
    step_env: Vec<(String, String)>,
    mounts: Vec<Mount>,
    labels: BTreeMap<String, String>,
    /// Where `secret_env` references are resolved; `None`: steps needing a secret fail.
    secrets: Option<Arc<SecretStore>>,
    /// What `volumes` of a step name.
    volumes: Volumes,
    /// Where inputs may come from and outputs go ([`crate::access`]).
    access: Arc<UriAccess>,
    /// What a step's `namespace_env` variables hold (`--namespace`).
    namespace: String,
    /// Where `config_map_env` and `config_map_volumes` are read (`--config-maps-dir`).
    config_maps: Option<Arc<ConfigMapStore>>,
}

/// The attempt's spec, kept in its directory while it runs so that a restarted agent can
/// finish it.
const SPEC_RECORD: &str = "step.json";

/// The name of an attempt's container: the same for every agent process, so a restarted one
/// finds it.
fn container_run_name(spec: &StepSpec) -> String {
    format!("gantry-{}-{}-{}", spec.run_id, spec.task_id, spec.attempt)
}

/// Whether [`Launcher::watch`] starts the step or follows one already running.
enum Follow<'a> {
    Start(&'a ContainerRun),
    Reattach(&'a str),
}

impl Launcher {
    /// Artifact stores from the environment (`AWS_*`).
    pub fn new(runtime: Arc<dyn Runtime>, work_root: PathBuf) -> Self {
        Self::with_stores(runtime, Arc::new(ArtifactStores::from_env()), work_root)
    }

    pub fn with_stores(
        runtime: Arc<dyn Runtime>,
        stores: Arc<ArtifactStores>,
        work_root: PathBuf,
    ) -> Self {
        Launcher {
            runtime,
            stores,
            work_root,
            network: None,
            step_env: Vec::new(),
            mounts: Vec::new(),
            labels: BTreeMap::new(),
            secrets: None,
            volumes: Volumes::default(),
            access: Arc::new(UriAccess::default()),
            namespace: "gantry".into(),
            config_maps: None,
        }
    }

    /// The config map store steps' `config_map_env` and `config_map_volumes` are read from.
    pub fn config_maps(mut self, store: Option<ConfigMapStore>) -> Self {
        self.config_maps = store.map(Arc::new);
        self
    }

    /// What steps read as their namespace (`--namespace`).
    pub fn namespace(mut self, namespace: String) -> Self {
        self.namespace = namespace;
        self
    }

    /// This agent's import roots and buckets (`--import-root`, `--allow-bucket`); by default
    /// inputs come only from under the run's artifact root.
    pub fn uri_access(mut self, access: UriAccess) -> Self {
        self.access = Arc::new(access);
        self
    }

    /// The secret store steps' `secret_env` references are read from (`--secrets-dir`).
    pub fn secrets(mut self, store: Option<SecretStore>) -> Self {
        self.secrets = store.map(Arc::new);
        self
    }

    /// The volumes steps may mount by name (`--volume`).
    pub fn volumes(mut self, volumes: Volumes) -> Self {
        self.volumes = volumes;
        self
    }

    /// The masker of the secret values `spec` uses, read afresh from the store: a step this
    /// process reattaches to had its values read by an earlier one.
    fn masker(&self, spec: &StepSpec) -> Masker {
        let volumes = secrets::volumes(self.secrets.as_deref(), &spec.container.secret_volumes);
        match secrets::resolve(self.secrets.as_deref(), &spec.container.secret_env) {
            Ok((env, _)) => Masker::new(
                env.into_iter()
                    .map(|(_, v)| v)
                    .chain(volumes.map(|m| m.values).unwrap_or_default()),
            ),
            Err(e) => {
                tracing::warn!(attempt = %spec.attempt_key(), error = %e,
                    "cannot read the step's secrets: its logs are not masked");
                Masker::default()
            }
        }
    }

    /// Variables every step gets (an HTTP proxy, `PIP_INDEX_URL` of a local mirror); the
    /// `GANTRY_*` ones and the component's own come after and win.
    pub fn step_env(mut self, env: Vec<(String, String)>) -> Self {
        self.step_env = env;
        self
    }

    /// Labels added to every step's container besides the `gantry.*` ones the launcher sets
    /// (which win). They identify this agent's containers to a later process of it
    /// ([`Launcher::orphans`]): `gantry.agent=<id>` and `gantry.work-dir=<path>`, as two
    /// agents may share an engine.
    pub fn labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// Docker network mode for every step (`none` to cut steps off the network).
    pub fn network(mut self, network: Option<String>) -> Self {
        self.network = network;
        self
    }

    /// Extra host paths shown to every step.
    pub fn mounts(mut self, mounts: Vec<Mount>) -> Self {
        self.mounts = mounts;
        self
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    /// `WORK_ROOT/<run>/<task_id>/attempt-<n>`.
    pub fn attempt_dir(&self, spec: &StepSpec) -> PathBuf {
        self.work_root
            .join(spec.run_id.as_str())
            .join(spec.task_id.as_str())
            .join(format!("attempt-{}", spec.attempt))
    }

    /// Runs one attempt to its outcome. Never panics on step behaviour: every problem is a
    /// failed outcome with a message.
    pub async fn run_step(
        &self,
        spec: &StepSpec,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> StepOutcome {
        if let Err(e) = check_ids(spec) {
            return StepOutcome::Failed {
                error: e.to_string(),
                exit_code: None,
            };
        }
        let dir = self.attempt_dir(spec);
        let result = self.attempt(spec, &dir, logs, &cancel).await;
        self.settle(&dir, result, &cancel).await
    }

    /// Finishes an attempt an earlier process of this agent started (one of
    /// [`Launcher::orphans`]): follows its container to its end, then collects its outputs as
    /// [`Launcher::run_step`] would have. A container that is gone meanwhile makes the attempt
    /// [`StepOutcome::Lost`]: nothing is known of how it ended.
    pub async fn resume(
        &self,
        spec: &StepSpec,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> StepOutcome {
        let dir = self.attempt_dir(spec);
        let layout = Layout {
            host: dir.clone(),
            map: self.runtime.path_map(&dir),
        };
        let name = container_run_name(spec);
        let result = self
            .watch(spec, &layout, Follow::Reattach(&name), logs, &cancel)
            .await;
        self.settle(&dir, result, &cancel).await
    }

    /// The attempts an earlier process of this agent left in containers that outlive it
    /// (Docker), found by the labels this launcher puts on every container ([`Self::labels`]
    /// must name the agent and its work directory), each with the spec kept in its attempt
    /// directory. A container whose spec cannot be read back is removed: nothing could report
    /// its outcome, and the coordinator sends the attempt again.
    pub async fn orphans(&self) -> Vec<StepSpec> {
        if !self.runtime.survives_agent_restart() || self.labels.is_empty() {
            return Vec::new();
        }
        let mut labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        labels.push(("gantry.managed", "true"));
        let found = match self.runtime.orphans(&labels).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for the steps of an earlier agent process");
                return Vec::new();
            }
        };
        let mut specs = Vec::new();
        for orphan in found {
            match self.read_record(&orphan.labels).await {
                Ok(spec) => specs.push(spec),
                Err(why) => {
                    tracing::warn!(container = %orphan.name, %why,
                        "a step container of an earlier agent process cannot be reattached; removing it");
                    self.runtime.discard(&orphan.name).await;
                }
            }
        }
        specs
    }

    /// The spec kept in the attempt directory that a container's labels name.
    async fn read_record(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<StepSpec, LaunchError> {
        let label = |k: &'static str| labels.get(k).ok_or(LaunchError::MissingLabel(k));
        let (run, task) = (label("gantry.run")?, label("gantry.task")?);
        let attempt: u32 = label("gantry.attempt")?
            .parse()
            .map_err(|_| LaunchError::AttemptLabel)?;
        // Labels are anyone's to set who reaches the engine: no path may climb out.
        check_task_path(run, task)?;
        let path = self
            .work_root
            .join(run)
            .join(task)
            .join(format!("attempt-{attempt}"))
            .join(SPEC_RECORD);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => return Err(LaunchError::ReadRecord { path, error }),
        };
        let spec: StepSpec = match serde_json::from_slice(&bytes) {
            Ok(spec) => spec,
            Err(error) => return Err(LaunchError::BadRecord { path, error }),
        };
        if (spec.run_id.as_str(), spec.task_id.as_str(), spec.attempt)
            != (run.as_str(), task.as_str(), attempt)
        {
            return Err(LaunchError::OtherAttempt(path));
        }
        check_ids(&spec)?;
        Ok(spec)
    }

    /// The outcome of an attempt's result, its directory cleaned up.
    async fn settle(
        &self,
        dir: &Path,
        result: Result<StepOutcome, LaunchError>,
        cancel: &CancellationToken,
    ) -> StepOutcome {
        let outcome = match result {
            Ok(o) => o,
            Err(_) if cancel.is_cancelled() => StepOutcome::Canceled,
            Err(e) => StepOutcome::Failed {
                error: e.to_string(),
                exit_code: None,
            },
        };
        self.clean_up(dir, &outcome).await;
        outcome
    }

    async fn clean_up(&self, dir: &Path, outcome: &StepOutcome) {
        let targets = match outcome {
            // A failed attempt's files stay for whoever looks into it; its scratch space does
            // not (an emptyDir lives as long as its pod).
            StepOutcome::Failed { .. } => vec![
                dir.join("inputs"),
                dir.join("tmp"),
                dir.join(prepare::EMPTY_DIRS),
            ],
            _ => vec![dir.to_path_buf()],
        };
        for target in targets {
            if let Err(e) = tokio::fs::remove_dir_all(&target).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %target.display(), error = %e, "could not clean up");
                }
            }
        }
        // Empty task and run directories go too (remove_dir refuses non-empty ones).
        let mut p = dir.parent();
        while let Some(d) = p {
            if d == self.work_root || !d.starts_with(&self.work_root) {
                break;
            }
            if tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            p = d.parent();
        }
    }

    async fn attempt(
        &self,
        spec: &StepSpec,
        dir: &Path,
        logs: mpsc::Sender<LogLine>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, LaunchError> {
        let prepared = tokio::select! {
            p = self.prepare(spec, dir) => p?,
            _ = cancel.cancelled() => return Ok(StepOutcome::Canceled),
        };
        // Before the container starts: a restarted agent finds the attempt through it.
        let record = serde_json::to_vec(spec).map_err(LaunchError::EncodeSpec)?;
        let path = dir.join(SPEC_RECORD);
        if let Err(error) = tokio::fs::write(&path, record).await {
            return Err(LaunchError::WriteRecord { path, error });
        }
        self.watch(
            spec,
            &prepared.layout,
            Follow::Start(&prepared.run),
            logs,
            cancel,
        )
        .await
    }

    /// Runs or follows the step's container to its end and makes its outcome.
    async fn watch(
        &self,
        spec: &StepSpec,
        layout: &Layout,
        how: Follow<'_>,
        logs: mpsc::Sender<LogLine>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, LaunchError> {
        // Forward logs, keeping the stderr tail for the failure message; secret values are
        // masked first, so neither the coordinator nor the failure message ever sees them.
        let (tx, mut rx) = mpsc::channel::<LogLine>(1024);
        let masker = self.masker(spec);
        let tail = tokio::spawn(async move {
            let mut tail: VecDeque<String> = VecDeque::new();
            while let Some(mut l) = rx.recv().await {
                if let std::borrow::Cow::Owned(masked) = masker.mask(&l.line) {
                    l.line = masked;
                }
                if l.stream == LogStream::Stderr {
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(l.line.chars().take(STDERR_LINE_MAX).collect());
                }
                let _ = logs.send(l).await;
            }
            tail
        });
        let exit = match how {
            Follow::Start(run) => self.runtime.run(run, tx, cancel.clone()).await.map(Some),
            Follow::Reattach(name) => self.runtime.reattach(name, tx, cancel.clone()).await,
        };
        let tail = tail.await.unwrap_or_default();
        let Some(exit) = exit? else {
            return Ok(StepOutcome::Lost {
                error: "the step's container was gone when its agent restarted".into(),
            });
        };
        if exit.canceled {
            return Ok(StepOutcome::Canceled);
        }
        if exit.exit_code != 0 {
            let mut error = format!("exit code {}", exit.exit_code);
            if exit.oom_killed {
                let limit = spec
                    .container
                    .resources
                    .memory_limit_bytes
                    .map(|m| format!(" of {m} bytes"))
                    .unwrap_or_default();
                error.push_str(&format!(" (killed: out of memory; memory limit{limit})"));
            }
            if !tail.is_empty() {
                let tail: Vec<String> = tail.into_iter().collect();
                error.push_str(": ");
                error.push_str(&tail.join("\n"));
            }
            return Ok(StepOutcome::Failed {
                error,
                exit_code: Some(exit.exit_code),
            });
        }
        tokio::select! {
            r = self.collect(spec, layout) => r,
            _ = cancel.cancelled() => Ok(StepOutcome::Canceled),
        }
    }
}

#[cfg(test)]
mod tests;
