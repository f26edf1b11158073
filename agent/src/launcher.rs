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
//! (`task_id` may hold `/`), shown to the step at the runtime's [`PathMap`] step root:
//! `/gantry` under Docker, the host path itself under the process runtime.
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

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_model::{validate_artifact_name, ArtifactRef, ParamType, StepOutcome, StepSpec};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{is_supported_uri, ArtifactError, ArtifactStores};
use crate::placeholders::{self, StepArtifact};
use crate::runtime::{ContainerRun, LogLine, LogStream, Mount, PathMap, Runtime};
use crate::secrets::{self, Masker, SecretStore};
use crate::volumes::Volumes;

/// Stderr lines quoted in a failure message.
const STDERR_TAIL: usize = 20;
/// Longest stderr line quoted in a failure message.
const STDERR_LINE_MAX: usize = 1000;
/// Largest output parameter file or executor output the launcher reads.
pub const MAX_OUTPUT_FILE_BYTES: u64 = 16 * 1024 * 1024;

const METRICS_TYPES: [&str; 3] = [
    "system.Metrics",
    "system.ClassificationMetrics",
    "system.SlicedClassificationMetrics",
];

fn is_metrics(schema_title: &str) -> bool {
    METRICS_TYPES.contains(&schema_title)
}

/// Namespace of `{{$.pipeline_task_uuid}}` values (a v5 UUID of `run_id/task_id`).
const TASK_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a1f_3c2e_9b7d_4e58_a0c4_d2f1_8e63_b915);

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
}

/// The attempt directory and how the step sees it.
struct Layout {
    host: PathBuf,
    map: PathMap,
}

impl Layout {
    fn host(&self, rel: &str) -> PathBuf {
        self.host.join(rel)
    }

    fn step(&self, rel: &str) -> String {
        self.map
            .container_path(&self.host.join(rel))
            .unwrap_or_else(|| self.host.join(rel).to_string_lossy().into_owned())
    }

    /// `host` if it exists and, symbolic links resolved, stays inside the attempt directory;
    /// `Ok(None)` if it does not exist.
    fn confined(&self, host: &Path) -> Result<Option<PathBuf>, String> {
        let real = match std::fs::canonicalize(host) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling link is "not written"; a link to outside is refused below.
                return match std::fs::symlink_metadata(host) {
                    Ok(m) if m.file_type().is_symlink() => Err(format!(
                        "{} is a symbolic link that leads nowhere on this host",
                        self.display(host)
                    )),
                    _ => Ok(None),
                };
            }
            Err(e) => return Err(format!("{}: {e}", self.display(host))),
        };
        let root = std::fs::canonicalize(&self.host)
            .map_err(|e| format!("{}: {e}", self.host.display()))?;
        if real.starts_with(&root) {
            Ok(Some(real))
        } else {
            Err(format!(
                "{} leads outside the attempt directory",
                self.display(host)
            ))
        }
    }

    fn display(&self, host: &Path) -> String {
        self.map
            .container_path(host)
            .unwrap_or_else(|| host.display().to_string())
    }
}

/// Reads a small output file the step wrote, refusing links out of the attempt directory and
/// files over [`MAX_OUTPUT_FILE_BYTES`]; `Ok(None)` if it does not exist.
fn read_output_file(layout: &Layout, host: &Path) -> Result<Option<Vec<u8>>, String> {
    let Some(real) = layout.confined(host)? else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", layout.display(host)))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", layout.display(host)));
    }
    if meta.len() > MAX_OUTPUT_FILE_BYTES {
        return Err(format!(
            "{} holds {} bytes; at most {MAX_OUTPUT_FILE_BYTES} are accepted",
            layout.display(host),
            meta.len()
        ));
    }
    std::fs::read(&real)
        .map(Some)
        .map_err(|e| format!("{}: {e}", layout.display(host)))
}

/// The last segment of a URI, usable as a file name (`data` when there is none).
fn last_segment(uri: &str) -> String {
    let seg = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if seg.is_empty() || seg == "." || seg == ".." || seg.contains(':') {
        "data".into()
    } else {
        seg.to_string()
    }
}

/// `uri` lies under `root` (`root` itself or below `root/`), with no `..` segment.
fn under_root(uri: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    !root.is_empty()
        && (uri == root || uri.starts_with(&format!("{root}/")))
        && !uri.split('/').any(|seg| seg == "..")
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    validate_artifact_name(name).map_err(|e| format!("{what} {name:?}: {e}"))
}

/// The run id and every segment of the task id are safe directory names.
fn check_task_path(run_id: &str, task_id: &str) -> Result<(), String> {
    check_name("run id", run_id)?;
    if task_id.is_empty() {
        return Err("task id is empty".into());
    }
    for seg in task_id.split('/') {
        check_name(&format!("task id {task_id:?}: segment"), seg)?;
    }
    Ok(())
}

/// `run_id` and every segment of `task_id` must be safe directory names.
fn check_ids(spec: &StepSpec) -> Result<(), String> {
    check_task_path(&spec.run_id, &spec.task_id)?;
    for name in spec.inputs.artifacts.keys() {
        check_name("input artifact", name)?;
    }
    for name in spec.outputs.parameters.keys() {
        check_name("output parameter", name)?;
    }
    for name in spec.outputs.artifacts.keys() {
        check_name("output artifact", name)?;
    }
    Ok(())
}

async fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|e| format!("cannot set permissions of {}: {e}", path.display()))
}

/// Identity of the run and task, for the pipeline-level placeholders.
fn identity(spec: &StepSpec) -> placeholders::Context {
    let task_uuid = uuid::Uuid::new_v5(
        &TASK_UUID_NAMESPACE,
        format!("{}/{}", spec.run_id, spec.task_id).as_bytes(),
    );
    placeholders::Context {
        job_name: spec.pipeline_name.clone(),
        job_resource_name: format!("{}-{}", spec.pipeline_name, spec.run_id),
        job_uuid: spec.run_id.clone(),
        task_name: spec.task_name.clone(),
        task_uuid: task_uuid.to_string(),
        pipeline_root: spec.pipeline_root.clone(),
        ..Default::default()
    }
}

/// Resolves placeholders inside string parameter values: pipeline-level ones given as
/// constants (`{{$.pipeline_job_uuid}}`) and references to other inputs of the same task
/// (f-strings: `"{{$.inputs.parameters['pipelinechannel--x']}}-suffix"`), as Kubeflow's
/// driver does. A value that does not resolve is passed on unchanged.
pub fn resolve_parameter_values(
    params: &BTreeMap<String, Value>,
    ident: &placeholders::Context,
) -> BTreeMap<String, Value> {
    let ctx = placeholders::Context {
        input_parameters: params.clone(),
        ..ident.clone()
    };
    params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s.contains("{{$") => {
                    match placeholders::substitute_str(s, &ctx) {
                        Ok(r) => Value::String(r),
                        Err(e) => {
                            tracing::warn!(parameter = %k, error = %e,
                                "parameter value keeps its unresolved placeholder");
                            v.clone()
                        }
                    }
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
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

/// What [`Launcher::prepare`] made of a spec: the process to run and the names the outputs
/// will be found under.
struct Prepared {
    run: ContainerRun,
    layout: Layout,
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
        }
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
        match secrets::resolve(self.secrets.as_deref(), &spec.container.secret_env) {
            Ok((_, masker)) => masker,
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
            .join(&spec.run_id)
            .join(&spec.task_id)
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
        if let Err(error) = check_ids(spec) {
            return StepOutcome::Failed {
                error,
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
    async fn read_record(&self, labels: &BTreeMap<String, String>) -> Result<StepSpec, String> {
        let label = |k: &str| labels.get(k).ok_or_else(|| format!("it has no {k} label"));
        let (run, task) = (label("gantry.run")?, label("gantry.task")?);
        let attempt: u32 = label("gantry.attempt")?
            .parse()
            .map_err(|_| "its gantry.attempt label is not a number".to_string())?;
        // Labels are anyone's to set who reaches the engine: no path may climb out.
        check_task_path(run, task)?;
        let path = self
            .work_root
            .join(run)
            .join(task)
            .join(format!("attempt-{attempt}"))
            .join(SPEC_RECORD);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let spec: StepSpec = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a step spec: {e}", path.display()))?;
        if (&spec.run_id, &spec.task_id, spec.attempt) != (run, task, attempt) {
            return Err(format!("{} belongs to another attempt", path.display()));
        }
        check_ids(&spec)?;
        Ok(spec)
    }

    /// The outcome of an attempt's result, its directory cleaned up.
    async fn settle(
        &self,
        dir: &Path,
        result: Result<StepOutcome, String>,
        cancel: &CancellationToken,
    ) -> StepOutcome {
        let outcome = match result {
            Ok(o) => o,
            Err(_) if cancel.is_cancelled() => StepOutcome::Canceled,
            Err(error) => StepOutcome::Failed {
                error,
                exit_code: None,
            },
        };
        self.clean_up(dir, &outcome).await;
        outcome
    }

    async fn clean_up(&self, dir: &Path, outcome: &StepOutcome) {
        let targets = match outcome {
            StepOutcome::Failed { .. } => vec![dir.join("inputs"), dir.join("tmp")],
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
    ) -> Result<StepOutcome, String> {
        let prepared = tokio::select! {
            p = self.prepare(spec, dir) => p?,
            _ = cancel.cancelled() => return Ok(StepOutcome::Canceled),
        };
        // Before the container starts: a restarted agent finds the attempt through it.
        let record =
            serde_json::to_vec(spec).map_err(|e| format!("cannot encode the step spec: {e}"))?;
        let path = dir.join(SPEC_RECORD);
        tokio::fs::write(&path, record)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
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
    ) -> Result<StepOutcome, String> {
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
        let Some(exit) = exit.map_err(|e| e.to_string())? else {
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

    /// Makes the attempt directory, stages the inputs, writes the executor input and
    /// substitutes the placeholders.
    async fn prepare(&self, spec: &StepSpec, dir: &Path) -> Result<Prepared, String> {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot clear {}: {e}", dir.display())),
        }
        for sub in ["inputs", "outputs/params", "outputs/artifacts"] {
            tokio::fs::create_dir_all(dir.join(sub))
                .await
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        // The container may run as a non-root user: it must read inputs and write outputs.
        set_mode(dir, 0o755).await?;
        for sub in ["outputs", "outputs/params", "outputs/artifacts"] {
            set_mode(&dir.join(sub), 0o777).await?;
        }
        let layout = Layout {
            host: dir.to_path_buf(),
            map: self.runtime.path_map(dir),
        };
        // A missing image fails the step before any input is downloaded.
        self.runtime
            .ensure_image(&spec.container.image)
            .await
            .map_err(|e| e.to_string())?;

        let ident = identity(spec);
        let parameters = resolve_parameter_values(&spec.inputs.parameters, &ident);
        let mut ctx = placeholders::Context {
            input_parameters: parameters.clone(),
            output_file: layout.step("outputs/executor_output.json"),
            ..ident
        };

        for (name, list) in &spec.inputs.artifacts {
            let mut items = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let step_art = |path: String| StepArtifact {
                    name: a.name.clone(),
                    schema_title: a.schema_title.clone(),
                    schema_version: a.schema_version.clone(),
                    uri: path.clone(),
                    path,
                    metadata: a.metadata.clone(),
                };
                if !is_supported_uri(&a.uri) {
                    tracing::warn!(input = %name, uri = %a.uri,
                        "input artifact URI has no supported scheme; not downloaded");
                    items.push(step_art(a.uri.clone()));
                    continue;
                }
                let rel = format!("inputs/{name}/{i}/{}", last_segment(&a.uri));
                match self.stores.download(&a.uri, &layout.host(&rel)).await {
                    Ok(_) => {}
                    Err(ArtifactError::NotFound(_)) if is_metrics(&a.schema_title) => {
                        // Metrics live in their metadata; the file is optional.
                    }
                    Err(e) => return Err(format!("input artifact {name:?}: {e}")),
                }
                items.push(step_art(layout.step(&rel)));
            }
            ctx.input_artifacts.insert(name.clone(), items);
        }
        for name in spec.outputs.parameters.keys() {
            ctx.output_parameter_files
                .insert(name.clone(), layout.step(&format!("outputs/params/{name}")));
        }
        for (name, a) in &spec.outputs.artifacts {
            let path = layout.step(&format!("outputs/artifacts/{name}"));
            ctx.output_artifacts.insert(
                name.clone(),
                StepArtifact {
                    name: name.clone(),
                    schema_title: a.schema_title.clone(),
                    schema_version: a.schema_version.clone(),
                    uri: path.clone(),
                    path,
                    metadata: Map::new(),
                },
            );
        }
        let executor_input = executor_input_json(&ctx);
        ctx.executor_input = executor_input.to_string();
        // For whoever inspects a failed attempt; the step gets it through `{{$}}`.
        if let Err(e) = tokio::fs::write(dir.join("executor_input.json"), &ctx.executor_input).await
        {
            tracing::debug!(error = %e, "could not keep executor_input.json");
        }
        let command = placeholders::substitute_all(&spec.container.command, &ctx)
            .map_err(|e| format!("command: {e}"))?;
        let args = placeholders::substitute_all(&spec.container.args, &ctx)
            .map_err(|e| format!("args: {e}"))?;

        // Which attempt this is lets a step tell a retry from a first run (Argo's
        // `{{retries}}`); the component's own variables come after, so they win.
        let mut env: Vec<(String, String)> = self.step_env.clone();
        env.extend([
            ("GANTRY_RUN_ID".into(), spec.run_id.clone()),
            ("GANTRY_TASK_ID".into(), spec.task_id.clone()),
            ("GANTRY_ATTEMPT".into(), spec.attempt.to_string()),
            // Only the assigned GPUs; `void` keeps a CUDA base image's `all` from exposing the
            // host's GPUs to a step that was given none.
            (
                "NVIDIA_VISIBLE_DEVICES".into(),
                if spec.gpus.is_empty() {
                    "void".into()
                } else {
                    spec.gpus.join(",")
                },
            ),
            ("CUDA_VISIBLE_DEVICES".into(), spec.gpus.join(",")),
        ]);
        env.extend(
            spec.container
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone())),
        );
        let (secret_env, _) =
            secrets::resolve(self.secrets.as_deref(), &spec.container.secret_env)?;
        env.extend(secret_env);
        let mut mounts = self.mounts.clone();
        if !spec.container.volumes.is_empty() {
            if self.runtime.name() == "process" {
                return Err(format!(
                    "the step mounts volume(s) {}, and the process runtime cannot show a host \
                     directory at another path; run the agent with --runtime docker",
                    spec.container
                        .volumes
                        .iter()
                        .map(|v| format!("{:?} at {}", v.volume, v.mount_path))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            mounts.extend(self.volumes.mounts_for(&spec.container.volumes)?);
        }
        let mut labels = self.labels.clone();
        labels.extend(
            [
                ("gantry.managed", "true".to_string()),
                ("gantry.run", spec.run_id.clone()),
                ("gantry.task", spec.task_id.clone()),
                ("gantry.attempt", spec.attempt.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        let run = ContainerRun {
            name: container_run_name(spec),
            image: spec.container.image.clone(),
            command,
            args,
            env,
            mounts,
            work_dir: dir.to_path_buf(),
            labels,
            cpu_limit: spec.container.resources.cpu_limit,
            memory_limit_bytes: spec.container.resources.memory_limit_bytes,
            network: self.network.clone(),
            gpus: spec.gpus.clone(),
        };
        Ok(Prepared { run, layout })
    }

    /// Reads the outputs of a step that exited 0 and uploads its artifacts.
    async fn collect(&self, spec: &StepSpec, layout: &Layout) -> Result<StepOutcome, String> {
        let exec_out = match read_output_file(layout, &layout.host("outputs/executor_output.json"))?
        {
            Some(bytes) => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("executor output is not valid JSON: {e}"))?,
            None => Value::Null,
        };
        let mut parameters = BTreeMap::new();
        for (name, ptype) in &spec.outputs.parameters {
            let rel = format!("outputs/params/{name}");
            let value = match exec_out["parameterValues"].get(name) {
                Some(v) => ptype
                    .coerce(v)
                    .map_err(|e| format!("output parameter {name:?}: {e}"))?,
                None => {
                    let bytes = read_output_file(layout, &layout.host(&rel))
                        .map_err(|e| format!("output parameter {name:?}: {e}"))?
                        .ok_or_else(|| {
                            format!(
                                "output parameter {name:?} was not written (expected in {} or in \
                                 the executor output's parameterValues)",
                                layout.step(&rel)
                            )
                        })?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| format!("output parameter {name:?} is not UTF-8 text"))?;
                    match ptype {
                        ParamType::String => Value::String(text),
                        other => other
                            .parse_text(&text)
                            .map_err(|e| format!("output parameter {name:?}: {e}"))?,
                    }
                }
            };
            parameters.insert(name.clone(), value);
        }

        let mut artifacts = BTreeMap::new();
        for (name, out) in &spec.outputs.artifacts {
            let rel = format!("outputs/artifacts/{name}");
            let default_step_path = layout.step(&rel);
            let reported = &exec_out["artifacts"][name]["artifacts"][0];
            let metadata = reported["metadata"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let (local, uri) = match reported["uri"].as_str() {
                None | Some("") => (Some(layout.host(&rel)), out.uri.clone()),
                Some(u) if u == default_step_path => (Some(layout.host(&rel)), out.uri.clone()),
                // The step stored it itself and says where: accepted under the run's
                // pipeline root only (a step must not point downstream steps at, say,
                // file:///etc on an agent host).
                Some(u) if u.contains("://") => {
                    if !under_root(u, &spec.pipeline_root) {
                        return Err(format!(
                            "output artifact {name:?}: the step reported URI {u}, which is not \
                             under the pipeline root {}",
                            spec.pipeline_root
                        ));
                    }
                    (None, u.to_string())
                }
                Some(u) => match layout.map.host_path(u) {
                    Some(h) => (Some(h), out.uri.clone()),
                    None => {
                        return Err(format!(
                            "output artifact {name:?}: the step reported it at {u}, outside {}",
                            layout.map.step_root().display()
                        ))
                    }
                },
            };
            if let Some(local) = local {
                match layout
                    .confined(&local)
                    .map_err(|e| format!("output artifact {name:?}: {e}"))?
                {
                    Some(real) => {
                        self.stores
                            .upload(&real, &uri)
                            .await
                            .map_err(|e| format!("uploading output artifact {name:?}: {e}"))?;
                    }
                    None if is_metrics(&out.schema_title) => {}
                    None => {
                        return Err(format!(
                            "output artifact {name:?} was not written (expected at {})",
                            layout.display(&local)
                        ))
                    }
                }
            }
            artifacts.insert(
                name.clone(),
                vec![ArtifactRef {
                    name: name.clone(),
                    uri,
                    schema_title: out.schema_title.clone(),
                    schema_version: out.schema_version.clone(),
                    metadata,
                }],
            );
        }
        Ok(StepOutcome::Succeeded {
            parameters,
            artifacts,
        })
    }
}

/// The executor input (KFP's `ExecutorInput` in protobuf JSON, camelCase) of a context whose
/// inputs and outputs are filled in.
pub fn executor_input_json(ctx: &placeholders::Context) -> Value {
    let in_artifacts: Map<String, Value> = ctx
        .input_artifacts
        .iter()
        .map(|(name, list)| {
            let items: Vec<Value> = list.iter().map(StepArtifact::to_json).collect();
            (name.clone(), json!({ "artifacts": items }))
        })
        .collect();
    let out_params: Map<String, Value> = ctx
        .output_parameter_files
        .iter()
        .map(|(name, path)| (name.clone(), json!({ "outputFile": path })))
        .collect();
    let out_artifacts: Map<String, Value> = ctx
        .output_artifacts
        .iter()
        .map(|(name, a)| (name.clone(), json!({ "artifacts": [a.to_json()] })))
        .collect();
    json!({
        "inputs": {
            "parameterValues": ctx.input_parameters,
            "artifacts": in_artifacts,
        },
        "outputs": {
            "parameters": out_params,
            "artifacts": out_artifacts,
            "outputFile": ctx.output_file,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_model::{
        ContainerSpec, OutputArtifactSpec, ResourceRequest, StepInputs, StepOutputs,
    };

    fn spec() -> StepSpec {
        StepSpec {
            run_id: "run-1".into(),
            task_id: "for-loop-2/0/train".into(),
            task_name: "train".into(),
            attempt: 1,
            pipeline_name: "my-pipeline".into(),
            pipeline_root: "file:///tmp/root".into(),
            container: ContainerSpec {
                image: "img".into(),
                command: vec![],
                args: vec![],
                env: vec![],
                resources: ResourceRequest::default(),
                secret_env: vec![],
                volumes: vec![],
            },
            inputs: StepInputs {
                parameters: BTreeMap::from([
                    ("n".to_string(), json!(3)),
                    ("job".to_string(), json!("{{$.pipeline_job_uuid}}")),
                    ("task".to_string(), json!("{{$.pipeline_task_name}}")),
                    (
                        "greeting".to_string(),
                        json!("hi-{{$.inputs.parameters['n']}}-there"),
                    ),
                    ("ws".to_string(), json!("{{$.workspace_path}}")),
                ]),
                artifacts: BTreeMap::new(),
            },
            outputs: StepOutputs {
                parameters: BTreeMap::from([("acc".to_string(), ParamType::NumberDouble)]),
                artifacts: BTreeMap::from([(
                    "model".to_string(),
                    OutputArtifactSpec {
                        uri: "file:///tmp/root/run-1/train/attempt-1/model".into(),
                        schema_title: "system.Model".into(),
                        schema_version: "0.0.1".into(),
                    },
                )]),
            },
            gpus: vec![],
        }
    }

    #[test]
    fn parameter_values_resolve_self_references_and_run_identity() {
        let s = spec();
        let ident = identity(&s);
        let p = resolve_parameter_values(&s.inputs.parameters, &ident);
        assert_eq!(p["job"], json!("run-1"));
        assert_eq!(p["task"], json!("train"));
        assert_eq!(p["greeting"], json!("hi-3-there"));
        assert_eq!(p["n"], json!(3));
        // Unknown: kept as it was, for the step to see.
        assert_eq!(p["ws"], json!("{{$.workspace_path}}"));
        assert_eq!(ident.job_resource_name, "my-pipeline-run-1");
        assert!(ident.job_resource_name.starts_with("my-pipeline-"));
        assert_eq!(ident.task_uuid.len(), 36);
        assert_eq!(identity(&s).task_uuid, ident.task_uuid);
        let mut other = s.clone();
        other.task_id = "for-loop-2/1/train".into();
        assert_ne!(identity(&other).task_uuid, ident.task_uuid);
    }

    #[test]
    fn executor_input_has_kfp_shape() {
        let ctx = placeholders::Context {
            input_parameters: BTreeMap::from([("n".to_string(), json!(3))]),
            input_artifacts: BTreeMap::from([(
                "data".to_string(),
                vec![StepArtifact {
                    name: "data".into(),
                    schema_title: "system.Dataset".into(),
                    schema_version: "0.0.1".into(),
                    path: "/gantry/inputs/data/0/data".into(),
                    uri: "/gantry/inputs/data/0/data".into(),
                    metadata: json!({"rows": 2}).as_object().cloned().unwrap_or_default(),
                }],
            )]),
            output_parameter_files: BTreeMap::from([(
                "acc".to_string(),
                "/gantry/outputs/params/acc".to_string(),
            )]),
            output_artifacts: BTreeMap::from([(
                "model".to_string(),
                StepArtifact {
                    name: "model".into(),
                    schema_title: "system.Model".into(),
                    schema_version: "0.0.1".into(),
                    path: "/gantry/outputs/artifacts/model".into(),
                    uri: "/gantry/outputs/artifacts/model".into(),
                    metadata: Map::new(),
                },
            )]),
            output_file: "/gantry/outputs/executor_output.json".into(),
            ..Default::default()
        };
        assert_eq!(
            executor_input_json(&ctx),
            json!({
                "inputs": {
                    "parameterValues": {"n": 3},
                    "artifacts": {"data": {"artifacts": [{
                        "name": "data",
                        "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
                        "uri": "/gantry/inputs/data/0/data",
                        "metadata": {"rows": 2},
                    }]}},
                },
                "outputs": {
                    "parameters": {"acc": {"outputFile": "/gantry/outputs/params/acc"}},
                    "artifacts": {"model": {"artifacts": [{
                        "name": "model",
                        "type": {"schemaTitle": "system.Model", "schemaVersion": "0.0.1"},
                        "uri": "/gantry/outputs/artifacts/model",
                        "metadata": {},
                    }]}},
                    "outputFile": "/gantry/outputs/executor_output.json",
                },
            })
        );
    }

    #[test]
    fn ids_and_names_are_checked() {
        assert!(check_ids(&spec()).is_ok());
        let mut s = spec();
        s.task_id = "a/../../etc".into();
        assert!(check_ids(&s).is_err());
        let mut s = spec();
        s.run_id = "../x".into();
        assert!(check_ids(&s).is_err());
        let mut s = spec();
        s.outputs
            .parameters
            .insert("../evil".into(), ParamType::String);
        let e = check_ids(&s).expect_err("evil");
        assert!(e.contains("output parameter"), "{e}");
    }

    #[test]
    fn reported_uris_must_stay_under_the_root() {
        assert!(under_root("s3://b/root/x/y", "s3://b/root"));
        assert!(under_root("s3://b/root/x", "s3://b/root/"));
        assert!(!under_root("s3://b/rootx/y", "s3://b/root"));
        assert!(!under_root("s3://b/root/../other", "s3://b/root"));
        assert!(!under_root(
            "file:///etc/shadow",
            "file:///var/gantry/artifacts"
        ));
        assert!(!under_root("s3://b/x", ""));
    }

    #[test]
    fn last_segments() {
        assert_eq!(last_segment("s3://b/r/t/attempt-1/model"), "model");
        assert_eq!(last_segment("s3://b/r/t/attempt-1/model/"), "model");
        assert_eq!(last_segment("s3://b"), "b");
        assert_eq!(last_segment("file:///"), "data");
        assert_eq!(last_segment("x/.."), "data");
    }
}
