//! The Kubernetes platform spec (`platforms.kubernetes`, written by `kfp-kubernetes`): what
//! Gantry honours, what it may ignore, and what it refuses because the step would run without
//! something it counts on.
//!
//! - honoured: `activeDeadlineSeconds` (kfp-kubernetes `set_timeout`) becomes the task's timeout;
//!   `nodeSelector` labels (`add_node_selector`) must all be labels of the agent that runs the
//!   step; `tolerations` (`add_toleration`) let the step onto agents with those taints;
//!   `secretAsEnv` (`use_secret_as_env`) becomes references (secret, key, variable) the agent
//!   resolves from its secret store, and `pvcMount` (`mount_pvc`) a mount of the agent volume
//!   of that name; both add the label the agent advertises for the secret or volume
//!   ([`gantry_model::secret_label`], [`gantry_model::volume_label`]) to the node selector, so
//!   the step goes only where they exist. A secret or claim name taken from a parameter of the
//!   enclosing DAG or from another task's output is resolved for each task when it becomes
//!   ready, before it is placed ([`task_placement`], [`task_needs`]); one that gives no valid
//!   name fails the task, saying where the name came from. Secret values never enter the spec
//!   or the run state;
//! - `secretAsVolume` (`use_secret_as_volume`) mounts the secret's directory of the agent's
//!   store read-only ([`gantry_model::SecretVolume`]), with the same label;
//! - `fieldPathAsEnv` (`use_field_path_as_env`) sets variables from pod fields as Gantry gives
//!   them ([`PodField`]): the attempt's name, the agent's namespace, the executor's
//!   `podMetadata` labels and annotations, the agent, the service account;
//! - ignored, as they change nothing a step computes: `imagePullSecret` and `imagePullPolicy`
//!   (images are local to the agents); `podMetadata` itself (read by `fieldPathAsEnv` and
//!   approval gates);
//! - `nodeAffinity` (`add_node_affinity`, `add_node_affinity_json`): a required term of `In`
//!   expressions with one value each adds those labels to the node selector; preferred
//!   (weighted) terms are ignored; other required forms are refused (or, from JSON, fail the
//!   task);
//! - `configMapAsEnv` and `configMapAsVolume` (`use_config_map_as_env`,
//!   `use_config_map_as_volume`) are served by the agent's config map store, with the label
//!   [`gantry_model::config_map_label`], as secrets are;
//! - `emptyDirMounts` (`empty_dir_mount`): an empty directory of the attempt's own, on the
//!   agent's disk or, with `medium: Memory`, a tmpfs of `sizeLimit`; `enabledSharedMemory`:
//!   `/dev/shm` as a tmpfs of `size` ([`gantry_model::EmptyDirMount`],
//!   [`gantry_model::SharedMemory`]; Docker runtime);
//! - claims the pipeline creates and deletes (`CreatePVC`, `DeletePVC`) and its workspace
//!   (`pipelineConfig.workspace`, mounted at `/kfp-workspace` in every step) are volumes of the
//!   run on the agent the first task that mounts them runs on ([`super::claims`]);
//! - refused, naming the executor and the feature: other volumes (`genericEphemeralVolume`),
//!   pod fields Gantry has no value for (`status.podIP`, ...).
//!
//! Node selectors, tolerations and node affinity given as JSON from a parameter or a task
//! output (`nodeSelectorJson`, `tolerationJson`, `nodeAffinityJson`: kfp-kubernetes
//! `add_node_selector_json`, `add_toleration_json`, `add_node_affinity_json`) are read for each
//! task when it is ready, like names; absent, they ask for nothing.

use std::collections::BTreeMap;

use serde_json::Value;

use gantry_model::{
    config_map_label, secret_label, validate_resource_name, validate_secret_key, volume_label,
    ConfigMapEnv, ConfigMapVolume, EmptyDirMount, NameError, SecretEnv, SecretVolume, SharedMemory,
    TaintEffect, Toleration, VolumeMount, RESOURCE_LABEL_VALUE,
};

use super::{claims, RunRecord, TaskRecord, ROOT_TASK_ID};
use crate::ir::{Implementation, PipelineSpec};

const IGNORED: &[&str] = &["podMetadata", "imagePullSecret", "imagePullPolicy"];
const TIMEOUT: &str = "activeDeadlineSeconds";
const NODE_SELECTOR: &str = "nodeSelector";
const TOLERATIONS: &str = "tolerations";
const SECRET_AS_ENV: &str = "secretAsEnv";
const PVC_MOUNT: &str = "pvcMount";
const FIELD_PATH_AS_ENV: &str = "fieldPathAsEnv";
const SECRET_AS_VOLUME: &str = "secretAsVolume";
const NODE_AFFINITY: &str = "nodeAffinity";
const CONFIG_MAP_AS_ENV: &str = "configMapAsEnv";
const CONFIG_MAP_AS_VOLUME: &str = "configMapAsVolume";
const EMPTY_DIR_MOUNTS: &str = "emptyDirMounts";
const SHARED_MEMORY: &str = "enabledSharedMemory";
/// Where Kubernetes (and Docker) show shared memory.
const SHM_PATH: &str = "/dev/shm";

/// Why an executor's Kubernetes settings cannot be honoured (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// `nodeSelectorJson` or `tolerationJson` (`what`) resolved to a value of the wrong shape.
    #[error("{what} from {from} is {value}, not {want}")]
    RuntimeJson {
        what: &'static str,
        from: String,
        value: Value,
        want: &'static str,
    },
    #[error("node selector label {key:?} is not a string: {value}")]
    LabelNotString { key: String, value: Value },
    /// A required node affinity placement cannot honour (it places by label equality).
    #[error(
        "nodeAffinity: {0}; Gantry places by agent labels, so a required affinity must be one \
         term of `In` expressions with one value each (preferred ones are ignored)"
    )]
    Affinity(String),
    #[error("toleration operator {0:?} is not Equal or Exists")]
    TolerationOperator(String),
    #[error("toleration effect {0:?} is unknown")]
    TolerationEffect(String),
    #[error("{field} is not a list: {value}")]
    NotAList { field: String, value: Value },
    /// A secret or claim name given as a constant that is not a string.
    #[error("{param_field}: the {what} {value} is not a string")]
    NameNotString {
        param_field: String,
        what: &'static str,
        value: Value,
    },
    /// A secret or claim name taken at run time from `from` (a parameter, a task output)
    /// that gives none.
    #[error("its {what} comes from {from}, which {problem}")]
    RuntimeName {
        what: &'static str,
        from: String,
        problem: String,
    },
    /// Likewise, a parameter without a value: an optional entry is then left out.
    #[error("its {what} comes from {from}, which has no value")]
    RuntimeNameMissing { what: &'static str, from: String },
    #[error("an entry gives no {what} ({param_field} or {legacy})")]
    NoName {
        what: &'static str,
        param_field: String,
        legacy: String,
    },
    #[error("environment variable name {0:?} is empty or holds '=' or a control character")]
    EnvName(String),
    #[error("mount path {0:?} must be an absolute path below / without '..'")]
    MountPath(String),
    #[error("secret name {secret:?} {error}")]
    SecretName { secret: String, error: NameError },
    #[error("keyToEnv of secret {secret:?} is not a list: {value}")]
    KeyToEnvNotAList { secret: String, value: Value },
    #[error("an entry of keyToEnv of secret {secret:?} has no {field}")]
    KeyToEnvField { secret: String, field: String },
    #[error("key {key:?} of secret {secret:?} {error}")]
    SecretKey {
        key: String,
        secret: String,
        error: NameError,
    },
    #[error("config map name {name:?} {error}")]
    ConfigMapName { name: String, error: NameError },
    #[error("an entry of keyToEnv of config map {name:?} has no {field}")]
    ConfigMapKeyField { name: String, field: &'static str },
    #[error("key {key:?} of config map {name:?} {error}")]
    ConfigMapKey {
        key: String,
        name: String,
        error: NameError,
    },
    #[error("claim name {claim:?} {error}")]
    ClaimName { claim: String, error: NameError },
    #[error("the mount of {0:?} has no mountPath")]
    NoMountPath(String),
    #[error("subPath {sub_path:?} of {volume:?} must be relative, without '..'")]
    SubPath { sub_path: String, volume: String },
    #[error("two volumes are mounted at {0:?}")]
    MountPathTaken(String),
    #[error("claim {claim:?} was deleted by task {by:?} before this task could mount it")]
    ClaimDeleted { claim: String, by: String },
    #[error(
        "it mounts claims of the run that live on two agents, {first:?} and {second:?}; a \
         task may mount the run's claims only from one agent"
    )]
    ClaimsApart { first: String, second: String },
    #[error("emptyDir {name:?}: medium {medium:?} is not offered; use Memory, or none for disk")]
    EmptyDirMedium { name: String, medium: String },
    #[error("emptyDir volume name {name:?} {error}")]
    EmptyDirName { name: String, error: NameError },
    #[error("emptyDir {name:?}: sizeLimit {error}")]
    EmptyDirSize {
        name: String,
        error: crate::ir::QuantityError,
    },
    #[error("an emptyDir entry has no {0}")]
    EmptyDirField(&'static str),
    #[error("the shared memory size {0}")]
    SharedMemorySize(crate::ir::QuantityError),
    #[error("enabledSharedMemory is not an object: {0}")]
    SharedMemoryShape(Value),
    #[error(
        "fieldPath {0:?} has no value on Gantry agents; the fields given are metadata.name, \
         metadata.uid, metadata.namespace, metadata.labels['KEY'], metadata.annotations['KEY'], \
         spec.nodeName and spec.serviceAccountName"
    )]
    FieldPath(String),
    #[error("an entry gives no {0}")]
    FieldEnvEntry(&'static str),
    /// A problem with one setting (`secretAsEnv`, `pvcMount`) of an executor.
    #[error("{feature}: {error}")]
    InSetting {
        feature: &'static str,
        error: Box<PlatformError>,
    },
    /// A problem with the settings of executor `label`.
    #[error("executor {label:?}: {error}")]
    InExecutor {
        label: String,
        error: Box<PlatformError>,
    },
}

impl PlatformError {
    /// This error, as a problem of setting `feature`.
    fn in_setting(feature: &'static str) -> impl Fn(PlatformError) -> PlatformError {
        move |e| PlatformError::InSetting {
            feature,
            error: Box::new(e),
        }
    }

    /// This error, as a problem of executor `label`'s settings.
    fn in_executor(label: &str) -> impl Fn(PlatformError) -> PlatformError + '_ {
        move |e| PlatformError::InExecutor {
            label: label.to_string(),
            error: Box::new(e),
        }
    }
}

fn what(feature: &str) -> &'static str {
    match feature {
        "pvcMount" => "a Kubernetes persistent volume claim mount",
        "secretAsVolume" => "a Kubernetes secret mounted as a volume",
        "secretAsEnv" => "environment variables from a Kubernetes secret",
        "configMapAsVolume" => "a Kubernetes config map mounted as a volume",
        "configMapAsEnv" => "environment variables from a Kubernetes config map",
        "fieldPathAsEnv" => "environment variables from Kubernetes pod fields",
        "emptyDirMounts" => "a Kubernetes emptyDir volume",
        "genericEphemeralVolume" => "a Kubernetes ephemeral volume",
        "nodeSelector" => "a Kubernetes node selector",
        "nodeAffinity" => "Kubernetes node affinity",
        "enabledSharedMemory" => "a Kubernetes shared-memory volume",
        _ => "a Kubernetes-only setting",
    }
}

fn executors(spec: &PipelineSpec) -> Option<&serde_json::Map<String, Value>> {
    spec.platform_spec
        .as_ref()?
        .pointer("/platforms/kubernetes/deploymentSpec/executors")?
        .as_object()
}

/// Why the platform spec cannot be honoured on Gantry's agents, one line per feature used.
pub fn refusals(spec: &PipelineSpec) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(execs) = executors(spec) {
        for (label, settings) in execs {
            let Some(settings) = settings.as_object() else {
                continue;
            };
            if let Err(e) = placement_of(settings, None) {
                out.push(PlatformError::in_executor(label)(e).to_string());
            }
            if let Err(e) = needs_of(settings, None) {
                out.push(PlatformError::in_executor(label)(e).to_string());
            }
            for feature in settings.keys() {
                if IGNORED.contains(&feature.as_str())
                    || [
                        TIMEOUT,
                        NODE_SELECTOR,
                        TOLERATIONS,
                        SECRET_AS_ENV,
                        PVC_MOUNT,
                        FIELD_PATH_AS_ENV,
                        SECRET_AS_VOLUME,
                        NODE_AFFINITY,
                        CONFIG_MAP_AS_ENV,
                        CONFIG_MAP_AS_VOLUME,
                        EMPTY_DIR_MOUNTS,
                        SHARED_MEMORY,
                    ]
                    .contains(&feature.as_str())
                {
                    continue;
                }
                out.push(format!(
                    "executor {label:?} uses {feature} ({}), which has no equivalent on Gantry agents",
                    what(feature)
                ));
            }
        }
    }
    out
}

/// Gives the value a `nodeSelectorJson` or `tolerationJson` reference holds for one task
/// (`None`: no value), and where it came from; `None` checks a pipeline before it runs.
type JsonLookup<'a> = Option<&'a dyn Fn(&Value) -> Result<Option<(String, Value)>, PlatformError>>;

fn toleration_of(t: &Value) -> Result<Toleration, PlatformError> {
    let text = |f: &str| t.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    let exists = match text("operator").as_str() {
        "" | "Equal" => false,
        "Exists" => true,
        other => return Err(PlatformError::TolerationOperator(other.to_string())),
    };
    let effect = match text("effect").as_str() {
        "" => None,
        e => Some(
            TaintEffect::parse(e).ok_or_else(|| PlatformError::TolerationEffect(e.to_string()))?,
        ),
    };
    Ok(Toleration {
        key: text("key"),
        exists,
        value: text("value"),
        effect,
    })
}

fn selector_labels(
    map: &serde_json::Map<String, Value>,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), PlatformError> {
    for (k, v) in map {
        let v = v.as_str().ok_or_else(|| PlatformError::LabelNotString {
            key: k.clone(),
            value: v.clone(),
        })?;
        labels.insert(k.clone(), v.to_string());
    }
    Ok(())
}

/// The labels a required node affinity term asks for (kfp-kubernetes `add_node_affinity`
/// without a weight, or one `nodeSelectorTerms` entry): `In` with one value is a label the
/// agent must carry. A weighted (preferred) term asks for nothing.
fn affinity_labels(
    term: &Value,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), PlatformError> {
    if term.get("weight").is_some_and(|w| !w.is_null()) {
        return Ok(());
    }
    if term
        .get("matchFields")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
    {
        return Err(PlatformError::Affinity(
            "matchFields is not supported".into(),
        ));
    }
    let exprs = match term.get("matchExpressions") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(e)) => e,
        Some(other) => {
            return Err(PlatformError::Affinity(format!(
                "matchExpressions {other} is not a list"
            )))
        }
    };
    for e in exprs {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match (op, values.as_slice()) {
            ("In", [one]) if !key.is_empty() => {
                labels.insert(key.to_string(), one.to_string());
            }
            _ => {
                return Err(PlatformError::Affinity(format!(
                    "expression {e} (key {key:?}, operator {op:?}, {} value(s))",
                    values.len()
                )))
            }
        }
    }
    Ok(())
}

/// The agent labels and taint tolerations an executor's platform settings ask for. Those
/// given as JSON from a parameter or a task output (`add_node_selector_json`,
/// `add_toleration_json`) are read through `json` for one task; without it they are left out.
fn placement_of(
    settings: &serde_json::Map<String, Value>,
    json: JsonLookup<'_>,
) -> Result<(BTreeMap<String, String>, Vec<Toleration>), PlatformError> {
    let mut labels = BTreeMap::new();
    if let Some(sel) = settings.get(NODE_SELECTOR) {
        if let Some(map) = sel.get("labels").and_then(Value::as_object) {
            selector_labels(map, &mut labels)?;
        }
        if let (Some(reference), Some(json)) = (sel.get("nodeSelectorJson"), json) {
            match json(reference)? {
                None => {}
                Some((_, Value::Object(map))) => selector_labels(&map, &mut labels)?,
                Some((from, value)) => {
                    return Err(PlatformError::RuntimeJson {
                        what: "nodeSelectorJson",
                        from,
                        value,
                        want: "an object of labels",
                    })
                }
            }
        }
    }
    for entry in list(settings, NODE_AFFINITY)? {
        match entry.get("nodeAffinityJson") {
            None => affinity_labels(entry, &mut labels)?,
            Some(reference) => {
                let Some(json) = json else { continue };
                match json(reference)? {
                    None => {}
                    Some((_, affinity @ Value::Object(_))) => {
                        let required = affinity
                            .get("requiredDuringSchedulingIgnoredDuringExecution")
                            .and_then(|r| r.get("nodeSelectorTerms"));
                        match required {
                            None | Some(Value::Null) => {}
                            Some(Value::Array(terms)) if terms.len() == 1 => {
                                affinity_labels(&terms[0], &mut labels)?
                            }
                            Some(other) => {
                                return Err(PlatformError::Affinity(format!(
                                    "nodeSelectorTerms {other} is not a list of one term"
                                )))
                            }
                        }
                    }
                    Some((from, value)) => {
                        return Err(PlatformError::RuntimeJson {
                            what: "nodeAffinityJson",
                            from,
                            value,
                            want: "a Kubernetes NodeAffinity object",
                        })
                    }
                }
            }
        }
    }
    let mut tolerations = Vec::new();
    for t in settings
        .get(TOLERATIONS)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(reference) = t.get("tolerationJson") else {
            tolerations.push(toleration_of(t)?);
            continue;
        };
        let Some(json) = json else { continue };
        match json(reference)? {
            None => {}
            Some((_, t @ Value::Object(_))) => tolerations.push(toleration_of(&t)?),
            Some((_, Value::Array(ts))) if ts.iter().all(Value::is_object) => {
                for t in &ts {
                    tolerations.push(toleration_of(t)?);
                }
            }
            Some((from, value)) => {
                return Err(PlatformError::RuntimeJson {
                    what: "tolerationJson",
                    from,
                    value,
                    want: "a toleration or a list of them",
                })
            }
        }
    }
    Ok((labels, tolerations))
}

/// The node selector and tolerations of the tasks running executor `label`, as far as the
/// pipeline alone tells (names known only at run time are left out; see [`task_placement`]).
pub fn executor_placement(
    spec: &PipelineSpec,
    label: &str,
) -> (BTreeMap<String, String>, Vec<Toleration>) {
    placement(spec, label, None, None).unwrap_or_default()
}

/// The node selector and tolerations of task `rec`, which runs executor `label`.
///
/// The selector also names the agent label of every secret (unless optional) and volume the
/// task needs, so that only agents holding them qualify and the scheduler's reasons
/// (`lacks label secret.gantry.dev/…`) say what is missing. A name taken from a parameter or
/// a task output that gives none is an error naming where it comes from.
pub fn task_placement(
    run: &RunRecord,
    rec: &TaskRecord,
    label: &str,
) -> Result<(BTreeMap<String, String>, Vec<Toleration>), PlatformError> {
    let lookup = task_lookup(run, rec);
    let json = |reference: &Value| task_json(run, rec, reference);
    let (mut labels, tolerations) = placement(&run.pipeline, label, Some(&lookup), Some(&json))?;
    if !run.claims.is_empty() {
        // A claim the run made is on no agent's list of volumes: the task goes where it lives.
        let mut home: Option<&str> = None;
        for v in task_needs(run, rec, label)?
            .volumes
            .iter()
            .filter(|v| v.run_claim)
        {
            labels.remove(&volume_label(&v.volume));
            let Some(h) = run
                .claims
                .get(&v.volume)
                .and_then(|c| c.home.as_ref())
                .map(|h| h.as_str())
            else {
                continue;
            };
            match home {
                Some(other) if other != h => {
                    return Err(PlatformError::in_executor(label)(
                        PlatformError::ClaimsApart {
                            first: other.to_string(),
                            second: h.to_string(),
                        },
                    ))
                }
                _ => home = Some(h),
            }
        }
        if let Some(h) = home {
            labels.insert(claims::AGENT_ID_LABEL.to_string(), h.to_string());
        }
    }
    Ok((labels, tolerations))
}

fn placement(
    spec: &PipelineSpec,
    label: &str,
    lookup: NameLookup<'_>,
    json: JsonLookup<'_>,
) -> Result<(BTreeMap<String, String>, Vec<Toleration>), PlatformError> {
    let Some(settings) = executors(spec)
        .and_then(|e| e.get(label))
        .and_then(Value::as_object)
    else {
        return Ok(Default::default());
    };
    let (mut labels, tolerations) = match placement_of(settings, json) {
        Ok(p) => p,
        Err(e) if json.is_some() => return Err(PlatformError::in_executor(label)(e)),
        Err(_) => Default::default(),
    };
    let needs = match needs_of(settings, lookup) {
        Ok(needs) => needs,
        // Refused at submit already; a name resolved at run time is this task's problem.
        Err(e) if lookup.is_some() => return Err(PlatformError::in_executor(label)(e)),
        Err(_) => HostNeeds::default(),
    };
    let present = || RESOURCE_LABEL_VALUE.to_string();
    let secrets = needs
        .secret_env
        .iter()
        .filter(|s| !s.optional)
        .map(|s| &s.secret)
        .chain(
            needs
                .secret_volumes
                .iter()
                .filter(|v| !v.optional)
                .map(|v| &v.secret),
        );
    for secret in secrets.filter(|s| *s != LATER) {
        labels.insert(secret_label(secret), present());
    }
    for v in needs.volumes.iter().filter(|v| v.volume != LATER) {
        labels.insert(volume_label(&v.volume), present());
    }
    let config_maps = needs
        .config_map_env
        .iter()
        .filter(|c| !c.optional)
        .map(|c| &c.config_map)
        .chain(
            needs
                .config_map_volumes
                .iter()
                .filter(|c| !c.optional)
                .map(|c| &c.config_map),
        );
    for name in config_maps.filter(|n| *n != LATER) {
        labels.insert(config_map_label(name), present());
    }
    Ok((labels, tolerations))
}

/// What the steps of an executor need from the agent that runs them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostNeeds {
    pub secret_env: Vec<SecretEnv>,
    pub volumes: Vec<VolumeMount>,
    /// Variables from pod fields (`fieldPathAsEnv`, kfp-kubernetes `use_field_path_as_env`).
    pub field_env: Vec<(String, PodField)>,
    /// Secrets shown as directories (`secretAsVolume`, kfp-kubernetes `use_secret_as_volume`).
    pub secret_volumes: Vec<SecretVolume>,
    /// `configMapAsEnv` (kfp-kubernetes `use_config_map_as_env`).
    pub config_map_env: Vec<ConfigMapEnv>,
    /// `configMapAsVolume` (kfp-kubernetes `use_config_map_as_volume`).
    pub config_map_volumes: Vec<ConfigMapVolume>,
    /// `emptyDirMounts` (kfp-kubernetes `empty_dir_mount`).
    pub empty_dirs: Vec<EmptyDirMount>,
    /// `enabledSharedMemory`: a `/dev/shm` of this size (`None`: as large as memory allows).
    pub shared_memory: Option<SharedMemory>,
}

impl HostNeeds {
    /// Whether one of these mounts is already at `path`.
    fn mounts_at(&self, path: &str) -> bool {
        self.volumes.iter().any(|v| v.mount_path == path)
            || self.secret_volumes.iter().any(|v| v.mount_path == path)
            || self.config_map_volumes.iter().any(|v| v.mount_path == path)
            || self.empty_dirs.iter().any(|v| v.mount_path == path)
            || (self.shared_memory.is_some() && path == SHM_PATH)
    }
}

/// A pod field a step may read as a variable, and what it holds on Gantry (see
/// [`pod_field_value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodField {
    /// `metadata.name`: the attempt's name, `<run>-<task>-<attempt>`.
    Name,
    /// `metadata.uid`: the attempt's name too (unique per attempt, stable across reads).
    Uid,
    /// `metadata.namespace`: the agent's `--namespace`.
    Namespace,
    /// `metadata.labels['KEY']`: the executor's pod label (kfp-kubernetes
    /// `add_pod_label`), or empty, as Kubernetes gives an absent one.
    Label(String),
    /// `metadata.annotations['KEY']`, likewise.
    Annotation(String),
    /// `spec.nodeName`: the agent the attempt runs on.
    NodeName,
    /// `spec.serviceAccountName`: the run's service account (KFP API), or `default`.
    ServiceAccount,
}

impl PodField {
    fn parse(path: &str) -> Option<PodField> {
        let keyed = |prefix: &str| -> Option<String> {
            let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
            (!rest.is_empty() && !rest.contains('\'')).then(|| rest.to_string())
        };
        Some(match path {
            "metadata.name" => PodField::Name,
            "metadata.uid" => PodField::Uid,
            "metadata.namespace" => PodField::Namespace,
            "spec.nodeName" => PodField::NodeName,
            "spec.serviceAccountName" => PodField::ServiceAccount,
            _ => {
                if let Some(k) = keyed("metadata.labels['") {
                    PodField::Label(k)
                } else {
                    PodField::Annotation(keyed("metadata.annotations['")?)
                }
            }
        })
    }
}

/// The pod name Gantry gives an attempt: lowercase letters, digits and `-`, as Kubernetes
/// names are.
pub fn attempt_pod_name(run: &RunRecord, task_id: &str, attempt: u32) -> String {
    let raw = format!("{}-{}-{attempt}", run.run_id, task_id);
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name.trim_matches('-').to_string()
}

/// The value of `field` for attempt `attempt` of task `rec`, which runs executor `label`;
/// `None` for the namespace, which the agent fills in.
pub fn pod_field_value(
    run: &RunRecord,
    rec: &TaskRecord,
    label: &str,
    attempt: u32,
    field: &PodField,
) -> Option<String> {
    let metadata = |kind: &str, key: &str| -> String {
        executors(&run.pipeline)
            .and_then(|e| e.get(label))
            .and_then(|s| s.get("podMetadata"))
            .and_then(|m| m.get(kind))
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some(match field {
        PodField::Name | PodField::Uid => attempt_pod_name(run, rec.task_id.as_str(), attempt),
        PodField::Namespace => return None,
        PodField::Label(k) => metadata("labels", k),
        PodField::Annotation(k) => metadata("annotations", k),
        PodField::NodeName => rec
            .attempts
            .iter()
            .find(|a| a.number == attempt)
            .map(|a| a.agent.to_string())
            .unwrap_or_default(),
        PodField::ServiceAccount => run
            .info
            .as_ref()
            .map(|i| i.service_account.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string()),
    })
}

/// The secrets-as-variables and volume mounts of the tasks running executor `label`, as far
/// as the pipeline alone tells (a name known only at run time stands as a placeholder).
pub fn executor_needs(spec: &PipelineSpec, label: &str) -> Result<HostNeeds, PlatformError> {
    match executors(spec)
        .and_then(|e| e.get(label))
        .and_then(Value::as_object)
    {
        Some(settings) => needs_of(settings, None).map_err(PlatformError::in_executor(label)),
        None => Ok(HostNeeds::default()),
    }
}

/// The secrets-as-variables and volume mounts of task `rec`, names resolved.
pub fn task_needs(
    run: &RunRecord,
    rec: &TaskRecord,
    label: &str,
) -> Result<HostNeeds, PlatformError> {
    let lookup = task_lookup(run, rec);
    match executors(&run.pipeline)
        .and_then(|e| e.get(label))
        .and_then(Value::as_object)
    {
        Some(settings) => {
            needs_of(settings, Some(&lookup)).map_err(PlatformError::in_executor(label))
        }
        None => Ok(HostNeeds::default()),
    }
    .and_then(|needs| with_run_claims(run, needs).map_err(PlatformError::in_executor(label)))
}

/// Marks the mounts of claims the run made, refuses a deleted one, and adds the workspace.
fn with_run_claims(run: &RunRecord, mut needs: HostNeeds) -> Result<HostNeeds, PlatformError> {
    if run.claims.is_empty() {
        return Ok(needs);
    }
    for v in &mut needs.volumes {
        let Some(c) = run.claims.get(&v.volume) else {
            continue;
        };
        if let Some(by) = &c.deleted_by {
            return Err(PlatformError::ClaimDeleted {
                claim: v.volume.clone(),
                by: by.to_string(),
            });
        }
        v.run_claim = true;
    }
    if run.claims.contains_key(claims::WORKSPACE_CLAIM) && !needs.mounts_at(claims::WORKSPACE_PATH)
    {
        needs.volumes.push(VolumeMount {
            volume: claims::WORKSPACE_CLAIM.to_string(),
            mount_path: claims::WORKSPACE_PATH.to_string(),
            sub_path: String::new(),
            run_claim: true,
        });
    }
    Ok(needs)
}

/// A value from the task's enclosing DAG (its input parameters, its other tasks' outputs),
/// and where it came from.
fn dag_value<'a>(
    run: &'a RunRecord,
    rec: &TaskRecord,
    source: &NameSource,
    what: &'static str,
) -> Result<(String, Option<&'a Value>), PlatformError> {
    let parent_id = rec.parent.as_ref().map_or(ROOT_TASK_ID, |p| p.as_str());
    match source {
        NameSource::Constant(_) => Ok((String::new(), None)),
        NameSource::Input(name) => Ok((
            format!("parameter {name:?}"),
            run.tasks
                .get(parent_id)
                .and_then(|p| p.inputs.parameters.get(name)),
        )),
        NameSource::TaskOutput { producer, output } => {
            let from = format!("output {output:?} of task {producer:?}");
            match run.tasks.get(&RunRecord::child_id(parent_id, producer)) {
                Some(t) if t.state.is_success() => Ok((from, t.outputs.parameters.get(output))),
                _ => Err(PlatformError::RuntimeName {
                    what,
                    from,
                    problem: "did not succeed".into(),
                }),
            }
        }
    }
}

/// Names from the task's enclosing DAG.
fn task_lookup<'a>(
    run: &'a RunRecord,
    rec: &'a TaskRecord,
) -> impl Fn(&NameSource, &'static str) -> Result<String, PlatformError> + 'a {
    move |source, what| {
        if let NameSource::Constant(n) = source {
            return Ok(n.clone());
        }
        match dag_value(run, rec, source, what)? {
            (_, Some(Value::String(s))) => Ok(s.clone()),
            (from, Some(other)) => Err(PlatformError::RuntimeName {
                what,
                from,
                problem: format!("is {other}, not a string"),
            }),
            (from, None) => Err(PlatformError::RuntimeNameMissing { what, from }),
        }
    }
}

/// The JSON a `nodeSelectorJson` or `tolerationJson` reference holds for a task: a constant,
/// or a value of its enclosing DAG (JSON text is read as JSON); `None` when there is none.
fn task_json(
    run: &RunRecord,
    rec: &TaskRecord,
    reference: &Value,
) -> Result<Option<(String, Value)>, PlatformError> {
    const WHAT: &str = "JSON of a node selector or toleration";
    if let Some(c) = reference.pointer("/runtimeValue/constant") {
        return Ok(Some(("a constant".into(), c.clone())).filter(|(_, v)| !v.is_null()));
    }
    let source = name_source(reference, "", "", WHAT)?;
    let (from, value) = dag_value(run, rec, &source, WHAT)?;
    Ok(match value {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.trim().is_empty() => None,
        Some(Value::String(text)) => Some((
            from,
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())),
        )),
        Some(v) => Some((from, v.clone())),
    })
}

fn list<'a>(
    settings: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<&'a [Value], PlatformError> {
    match settings.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(PlatformError::NotAList {
            field: field.to_string(),
            value: other.clone(),
        }),
    }
}

/// Where a secret or claim name comes from. kfp-kubernetes writes a constant as
/// `<param_field>: {runtimeValue: {constant: NAME}}` and, in older releases, as a plain field
/// beside it (`secretName`, `constant`); a name taken from a parameter of the enclosing DAG
/// (`componentInputParameter`) or a sibling task's output (`taskOutputParameter`) is resolved
/// for each task when it becomes ready ([`task_needs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameSource {
    Constant(String),
    Input(String),
    TaskOutput { producer: String, output: String },
}

fn name_source(
    entry: &Value,
    param_field: &str,
    legacy: &str,
    what: &'static str,
) -> Result<NameSource, PlatformError> {
    let reference = entry.get(param_field).unwrap_or(entry);
    if let Some(c) = reference.pointer("/runtimeValue/constant") {
        return c
            .as_str()
            .map(|c| NameSource::Constant(c.to_string()))
            .ok_or_else(|| PlatformError::NameNotString {
                param_field: param_field.to_string(),
                what,
                value: c.clone(),
            });
    }
    if let Some(out) = reference.get("taskOutputParameter") {
        let text = |f: &str| out.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let (producer, output) = (text("producerTask"), text("outputParameterKey"));
        if producer.is_empty() || output.is_empty() {
            return Err(PlatformError::NoName {
                what,
                param_field: format!("{param_field}.taskOutputParameter"),
                legacy: "producerTask and outputParameterKey".to_string(),
            });
        }
        return Ok(NameSource::TaskOutput { producer, output });
    }
    if let Some(input) = reference.get("componentInputParameter") {
        if let Some(n) = input.as_str().filter(|n| !n.is_empty()) {
            return Ok(NameSource::Input(n.to_string()));
        }
    }
    if let Some(name) = entry.get(legacy).and_then(Value::as_str) {
        return Ok(NameSource::Constant(name.to_string()));
    }
    Err(PlatformError::NoName {
        what,
        param_field: param_field.to_string(),
        legacy: legacy.to_string(),
    })
}

/// Gives the name a [`NameSource`] holds for one task; `None` checks a pipeline before it runs
/// (names known only at run time are then taken as valid).
type NameLookup<'a> =
    Option<&'a dyn Fn(&NameSource, &'static str) -> Result<String, PlatformError>>;

fn resolve_name(
    source: NameSource,
    lookup: NameLookup<'_>,
    what: &'static str,
) -> Result<Option<String>, PlatformError> {
    match (source, lookup) {
        (NameSource::Constant(n), _) => Ok(Some(n)),
        (other, Some(lookup)) => lookup(&other, what).map(Some),
        (_, None) => Ok(None),
    }
}

/// The config map an entry names and whether it is optional; `None` for an optional one
/// whose name was not given at run time.
fn config_map_name(
    entry: &Value,
    lookup: NameLookup<'_>,
) -> Result<Option<(String, bool)>, PlatformError> {
    const WHAT: &str = "Kubernetes config map name";
    let optional = entry
        .get("optional")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let source = name_source(entry, "configMapNameParameter", "configMapName", WHAT)?;
    let name = match resolve_name(source, lookup, WHAT) {
        Ok(name) => name.unwrap_or_else(|| LATER.to_string()),
        Err(PlatformError::RuntimeNameMissing { .. }) if optional => return Ok(None),
        Err(e) => return Err(e),
    };
    validate_resource_name(&name).map_err(|error| PlatformError::ConfigMapName {
        name: name.clone(),
        error,
    })?;
    Ok(Some((name, optional)))
}

/// A variable name Docker and the process runtime can set.
fn check_env_name(name: &str) -> Result<(), PlatformError> {
    if name.is_empty() || name.contains('=') || name.chars().any(char::is_control) {
        return Err(PlatformError::EnvName(name.to_string()));
    }
    Ok(())
}

/// A path inside the container: absolute, without `..`.
fn check_mount_path(path: &str) -> Result<(), PlatformError> {
    if !path.starts_with('/') || path == "/" || path.split('/').any(|seg| seg == "..") {
        return Err(PlatformError::MountPath(path.to_string()));
    }
    Ok(())
}

/// A valid name that stands for one known only at run time, while a pipeline is checked.
const LATER: &str = "known-at-run-time";

fn needs_of(
    settings: &serde_json::Map<String, Value>,
    lookup: NameLookup<'_>,
) -> Result<HostNeeds, PlatformError> {
    let mut needs = HostNeeds::default();
    let secret_env = PlatformError::in_setting(SECRET_AS_ENV);
    for entry in list(settings, SECRET_AS_ENV)? {
        const WHAT: &str = "Kubernetes secret name";
        let source =
            name_source(entry, "secretNameParameter", "secretName", WHAT).map_err(&secret_env)?;
        let optional = entry
            .get("optional")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let secret = match resolve_name(source, lookup, WHAT) {
            Ok(name) => name.unwrap_or_else(|| LATER.to_string()),
            // An optional secret whose name was not given is not there.
            Err(PlatformError::RuntimeNameMissing { .. }) if optional => continue,
            Err(e) => return Err(secret_env(e)),
        };
        validate_resource_name(&secret).map_err(|error| {
            secret_env(PlatformError::SecretName {
                secret: secret.clone(),
                error,
            })
        })?;
        let pairs = match entry.get("keyToEnv") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(other) => {
                return Err(secret_env(PlatformError::KeyToEnvNotAList {
                    secret: secret.clone(),
                    value: other.clone(),
                }))
            }
        };
        for pair in pairs {
            let field = |f: &str| {
                pair.get(f).and_then(Value::as_str).ok_or_else(|| {
                    secret_env(PlatformError::KeyToEnvField {
                        secret: secret.clone(),
                        field: f.to_string(),
                    })
                })
            };
            let (key, env) = (field("secretKey")?, field("envVar")?);
            validate_secret_key(key).map_err(|error| {
                secret_env(PlatformError::SecretKey {
                    key: key.to_string(),
                    secret: secret.clone(),
                    error,
                })
            })?;
            check_env_name(env).map_err(&secret_env)?;
            needs.secret_env.push(SecretEnv {
                secret: secret.clone(),
                key: key.to_string(),
                env: env.to_string(),
                optional,
            });
        }
    }
    let pvc_mount = PlatformError::in_setting(PVC_MOUNT);
    for entry in list(settings, PVC_MOUNT)? {
        const WHAT: &str = "Kubernetes persistent volume claim name";
        let source =
            name_source(entry, "pvcNameParameter", "constant", WHAT).map_err(&pvc_mount)?;
        let volume = resolve_name(source, lookup, WHAT)
            .map_err(&pvc_mount)?
            .unwrap_or_else(|| LATER.to_string());
        validate_resource_name(&volume).map_err(|error| {
            pvc_mount(PlatformError::ClaimName {
                claim: volume.clone(),
                error,
            })
        })?;
        let mount_path = entry
            .get("mountPath")
            .and_then(Value::as_str)
            .ok_or_else(|| pvc_mount(PlatformError::NoMountPath(volume.clone())))?;
        check_mount_path(mount_path).map_err(&pvc_mount)?;
        let sub_path = entry.get("subPath").and_then(Value::as_str).unwrap_or("");
        if sub_path.starts_with('/') || sub_path.split('/').any(|seg| seg == "..") {
            return Err(pvc_mount(PlatformError::SubPath {
                sub_path: sub_path.to_string(),
                volume,
            }));
        }
        if needs.mounts_at(mount_path) {
            return Err(pvc_mount(PlatformError::MountPathTaken(
                mount_path.to_string(),
            )));
        }
        needs.volumes.push(VolumeMount {
            volume,
            mount_path: mount_path.to_string(),
            sub_path: sub_path.trim_end_matches('/').to_string(),
            run_claim: false,
        });
    }
    let secret_volume = PlatformError::in_setting(SECRET_AS_VOLUME);
    for entry in list(settings, SECRET_AS_VOLUME)? {
        const WHAT: &str = "Kubernetes secret name";
        let source = name_source(entry, "secretNameParameter", "secretName", WHAT)
            .map_err(&secret_volume)?;
        let optional = entry
            .get("optional")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let secret = match resolve_name(source, lookup, WHAT) {
            Ok(name) => name.unwrap_or_else(|| LATER.to_string()),
            Err(PlatformError::RuntimeNameMissing { .. }) if optional => continue,
            Err(e) => return Err(secret_volume(e)),
        };
        validate_resource_name(&secret).map_err(|error| {
            secret_volume(PlatformError::SecretName {
                secret: secret.clone(),
                error,
            })
        })?;
        let mount_path = entry
            .get("mountPath")
            .and_then(Value::as_str)
            .ok_or_else(|| secret_volume(PlatformError::NoMountPath(secret.clone())))?;
        check_mount_path(mount_path).map_err(&secret_volume)?;
        if needs.mounts_at(mount_path) {
            return Err(secret_volume(PlatformError::MountPathTaken(
                mount_path.to_string(),
            )));
        }
        needs.secret_volumes.push(SecretVolume {
            secret,
            mount_path: mount_path.to_string(),
            optional,
        });
    }
    let cm_env = PlatformError::in_setting(CONFIG_MAP_AS_ENV);
    for entry in list(settings, CONFIG_MAP_AS_ENV)? {
        let Some((name, optional)) = config_map_name(entry, lookup).map_err(&cm_env)? else {
            continue;
        };
        for pair in
            list(entry.as_object().unwrap_or(&Default::default()), "keyToEnv").map_err(&cm_env)?
        {
            let field = |f: &'static str| {
                pair.get(f).and_then(Value::as_str).ok_or_else(|| {
                    cm_env(PlatformError::ConfigMapKeyField {
                        name: name.clone(),
                        field: f,
                    })
                })
            };
            let (key, env) = (field("configMapKey")?, field("envVar")?);
            validate_secret_key(key).map_err(|error| {
                cm_env(PlatformError::ConfigMapKey {
                    key: key.to_string(),
                    name: name.clone(),
                    error,
                })
            })?;
            check_env_name(env).map_err(&cm_env)?;
            needs.config_map_env.push(ConfigMapEnv {
                config_map: name.clone(),
                key: key.to_string(),
                env: env.to_string(),
                optional,
            });
        }
    }
    let cm_volume = PlatformError::in_setting(CONFIG_MAP_AS_VOLUME);
    for entry in list(settings, CONFIG_MAP_AS_VOLUME)? {
        let Some((name, optional)) = config_map_name(entry, lookup).map_err(&cm_volume)? else {
            continue;
        };
        let mount_path = entry
            .get("mountPath")
            .and_then(Value::as_str)
            .ok_or_else(|| cm_volume(PlatformError::NoMountPath(name.clone())))?;
        check_mount_path(mount_path).map_err(&cm_volume)?;
        if needs.mounts_at(mount_path) {
            return Err(cm_volume(PlatformError::MountPathTaken(
                mount_path.to_string(),
            )));
        }
        needs.config_map_volumes.push(ConfigMapVolume {
            config_map: name,
            mount_path: mount_path.to_string(),
            optional,
        });
    }
    let field_env = PlatformError::in_setting(FIELD_PATH_AS_ENV);
    for entry in list(settings, FIELD_PATH_AS_ENV)? {
        let text = |f: &'static str| {
            entry
                .get(f)
                .and_then(Value::as_str)
                .ok_or_else(|| field_env(PlatformError::FieldEnvEntry(f)))
        };
        let (env, path) = (text("name")?, text("fieldPath")?);
        check_env_name(env).map_err(&field_env)?;
        let field = PodField::parse(path)
            .ok_or_else(|| field_env(PlatformError::FieldPath(path.to_string())))?;
        needs.field_env.push((env.to_string(), field));
    }
    empty_dirs_of(settings, &mut needs)?;
    Ok(needs)
}

/// `enabledSharedMemory`, then `emptyDirMounts`: each at a path no other mount takes.
fn empty_dirs_of(
    settings: &serde_json::Map<String, Value>,
    needs: &mut HostNeeds,
) -> Result<(), PlatformError> {
    let shm = PlatformError::in_setting(SHARED_MEMORY);
    match settings.get(SHARED_MEMORY) {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            let size = match o.get("size").and_then(Value::as_str).unwrap_or("") {
                "" => None,
                text => Some(
                    crate::ir::parse_memory_quantity(text)
                        .map_err(|e| shm(PlatformError::SharedMemorySize(e)))?,
                ),
            };
            needs.shared_memory = Some(SharedMemory { size_bytes: size });
        }
        Some(other) => return Err(shm(PlatformError::SharedMemoryShape(other.clone()))),
    }
    let empty_dir = PlatformError::in_setting(EMPTY_DIR_MOUNTS);
    for entry in list(settings, EMPTY_DIR_MOUNTS)? {
        let text = |f: &'static str| entry.get(f).and_then(Value::as_str);
        let name = text("volumeName")
            .ok_or_else(|| empty_dir(PlatformError::EmptyDirField("volumeName")))?;
        validate_resource_name(name).map_err(|error| {
            empty_dir(PlatformError::EmptyDirName {
                name: name.to_string(),
                error,
            })
        })?;
        let mount_path = text("mountPath")
            .ok_or_else(|| empty_dir(PlatformError::NoMountPath(name.to_string())))?;
        check_mount_path(mount_path).map_err(&empty_dir)?;
        if needs.mounts_at(mount_path) {
            return Err(empty_dir(PlatformError::MountPathTaken(
                mount_path.to_string(),
            )));
        }
        let memory = match text("medium").unwrap_or("") {
            "" => false,
            "Memory" => true,
            other => {
                return Err(empty_dir(PlatformError::EmptyDirMedium {
                    name: name.to_string(),
                    medium: other.to_string(),
                }))
            }
        };
        let size_limit_bytes = match text("sizeLimit").unwrap_or("") {
            "" => None,
            limit => Some(crate::ir::parse_memory_quantity(limit).map_err(|error| {
                empty_dir(PlatformError::EmptyDirSize {
                    name: name.to_string(),
                    error,
                })
            })?),
        };
        needs.empty_dirs.push(EmptyDirMount {
            name: name.to_string(),
            mount_path: mount_path.to_string(),
            memory,
            size_limit_bytes,
        });
    }
    Ok(())
}

/// Task timeouts (ms) by IR task name from `activeDeadlineSeconds`, for every task that runs
/// an executor carrying one.
pub fn task_timeouts(spec: &PipelineSpec) -> BTreeMap<String, i64> {
    let mut by_executor = BTreeMap::new();
    if let Some(execs) = executors(spec) {
        for (label, settings) in execs {
            let secs = settings.get(TIMEOUT).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            });
            if let Some(secs) = secs.filter(|s| *s > 0) {
                by_executor.insert(label.clone(), secs.saturating_mul(1000));
            }
        }
    }
    let mut out = BTreeMap::new();
    if by_executor.is_empty() {
        return out;
    }
    for comp in std::iter::once(&spec.root).chain(spec.components.values()) {
        let Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for t in dag.tasks.values() {
            let label = spec
                .component(&t.component)
                .and_then(|c| match &c.implementation {
                    Implementation::Executor(l) => Some(l),
                    Implementation::Dag(_) => None,
                });
            if let Some(ms) = label.and_then(|l| by_executor.get(l)) {
                out.insert(t.name.clone(), *ms);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::parse_pipeline;

    const PIPELINE: &str = include_str!("testdata/linear.yaml");

    fn with_platform(platform: &str) -> PipelineSpec {
        parse_pipeline(&format!("{PIPELINE}---\n{platform}")).unwrap()
    }

    /// A root-level container task `name` of the test pipeline, running `comp-<name>`.
    fn container_task(name: &str) -> TaskRecord {
        TaskRecord::new(
            name.into(),
            name.into(),
            format!("comp-{name}"),
            super::super::TaskKind::Container,
            0,
        )
    }

    #[test]
    fn empty_dirs_and_shared_memory_become_the_steps_scratch_mounts() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          emptyDirMounts:\n          - {volumeName: scratch, mountPath: /scratch}\n          - {volumeName: fast, mountPath: /fast, medium: Memory, sizeLimit: 64Mi}\n          enabledSharedMemory: {volumeName: shm, size: 1Gi}\n",
        );
        assert!(refusals(&spec).is_empty(), "{:?}", refusals(&spec));
        let needs = executor_needs(&spec, "exec-make-data").unwrap();
        assert_eq!(
            needs.empty_dirs,
            vec![
                EmptyDirMount {
                    name: "scratch".into(),
                    mount_path: "/scratch".into(),
                    memory: false,
                    size_limit_bytes: None,
                },
                EmptyDirMount {
                    name: "fast".into(),
                    mount_path: "/fast".into(),
                    memory: true,
                    size_limit_bytes: Some(64 << 20),
                },
            ]
        );
        assert_eq!(
            needs.shared_memory,
            Some(SharedMemory {
                size_bytes: Some(1 << 30)
            })
        );
        let unsized_shm = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          enabledSharedMemory: {volumeName: shm}\n",
        );
        assert_eq!(
            executor_needs(&unsized_shm, "exec-make-data")
                .unwrap()
                .shared_memory,
            Some(SharedMemory { size_bytes: None })
        );
        for (bad, says) in [
            (
                "- {volumeName: h, mountPath: /h, medium: HugePages}",
                "medium \"HugePages\" is not offered",
            ),
            (
                "- {volumeName: s, mountPath: /s, sizeLimit: lots}",
                "sizeLimit \"lots\" is not a memory amount",
            ),
            (
                "- {volumeName: s, mountPath: relative}",
                "mount path \"relative\"",
            ),
            (
                "- {volumeName: s, mountPath: /dev/shm}\n          enabledSharedMemory: {}",
                "two volumes are mounted at \"/dev/shm\"",
            ),
            (
                "- {volumeName: a, mountPath: /x}\n          - {volumeName: b, mountPath: /x}",
                "two volumes are mounted at \"/x\"",
            ),
            ("- {mountPath: /x}", "no volumeName"),
        ] {
            let spec = with_platform(&format!(
                "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          emptyDirMounts:\n          {bad}\n"
            ));
            let r = refusals(&spec);
            assert!(
                r.len() == 1 && r[0].contains("exec-make-data") && r[0].contains(says),
                "{bad}: {r:?}"
            );
        }
    }

    #[test]
    fn kubernetes_only_features_are_refused_by_name_and_harmless_ones_ignored() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          genericEphemeralVolume:\n          - volumeName: scratch\n            mountPath: /scratch\n          podMetadata:\n            labels: {a: b}\n",
        );
        let r = refusals(&spec);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("exec-make-data") && r[0].contains("genericEphemeralVolume"),
            "{r:?}"
        );
        let err = crate::engine::check_supported(&spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Kubernetes ephemeral volume"), "{err}");
        let ws = with_platform(
            "platforms:\n  kubernetes:\n    pipelineConfig:\n      workspace:\n        size: 1Gi\n",
        );
        assert!(
            refusals(&ws).is_empty(),
            "a workspace is the run's own volume"
        );
    }

    /// As kfp-kubernetes 2.16.1 writes `use_secret_as_env` and `mount_pvc` with constant names.
    const SECRETS_AND_VOLUMES: &str = "platforms:
  kubernetes:
    deploymentSpec:
      executors:
        exec-make-data:
          nodeSelector:
            labels: {zone: a}
          pvcMount:
          - constant: v1
            mountPath: /data
            pvcNameParameter:
              runtimeValue:
                constant: v1
          - constant: v2
            mountPath: /data2
            pvcNameParameter:
              runtimeValue:
                constant: v2
            subPath: sub/dir
          secretAsEnv:
          - keyToEnv:
            - envVar: ENV1
              secretKey: k
            - envVar: ENV2
              secretKey: k2
            optional: false
            secretName: s1
            secretNameParameter:
              runtimeValue:
                constant: s1
          - keyToEnv:
            - envVar: ENV3
              secretKey: k
            optional: true
            secretName: s2
            secretNameParameter:
              runtimeValue:
                constant: s2
";

    #[test]
    fn secrets_as_env_and_pvc_mounts_become_references_and_placement_labels() {
        let spec = with_platform(SECRETS_AND_VOLUMES);
        assert!(refusals(&spec).is_empty(), "{:?}", refusals(&spec));
        let needs = executor_needs(&spec, "exec-make-data").unwrap();
        let env = |secret: &str, key: &str, env: &str, optional| SecretEnv {
            secret: secret.into(),
            key: key.into(),
            env: env.into(),
            optional,
        };
        assert_eq!(
            needs.secret_env,
            vec![
                env("s1", "k", "ENV1", false),
                env("s1", "k2", "ENV2", false),
                env("s2", "k", "ENV3", true)
            ]
        );
        assert_eq!(
            needs.volumes,
            vec![
                VolumeMount {
                    volume: "v1".into(),
                    mount_path: "/data".into(),
                    sub_path: String::new(),
                    run_claim: false,
                },
                VolumeMount {
                    volume: "v2".into(),
                    mount_path: "/data2".into(),
                    sub_path: "sub/dir".into(),
                    run_claim: false,
                },
            ]
        );
        let (labels, _) = executor_placement(&spec, "exec-make-data");
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        // The optional secret does not restrict placement.
        assert_eq!(
            keys,
            vec![
                "secret.gantry.dev/s1",
                "volume.gantry.dev/v1",
                "volume.gantry.dev/v2",
                "zone"
            ]
        );
        assert_eq!(labels["secret.gantry.dev/s1"], "true");
        assert_eq!(
            executor_needs(&spec, "exec-other"),
            Ok(HostNeeds::default())
        );

        // Older kfp-kubernetes wrote only the plain names.
        let legacy = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          pvcMount:\n          - constant: v1\n            mountPath: /data\n          secretAsEnv:\n          - secretName: s1\n            keyToEnv:\n            - {secretKey: k, envVar: E}\n",
        );
        let needs = executor_needs(&legacy, "exec-make-data").unwrap();
        assert_eq!(needs.secret_env, vec![env("s1", "k", "E", false)]);
        assert_eq!(needs.volumes[0].volume, "v1");
    }

    fn refusal_of(executor_settings: &str) -> String {
        let spec = with_platform(&format!(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n{executor_settings}"
        ));
        let r = refusals(&spec);
        assert_eq!(r.len(), 1, "{r:?}");
        r[0].clone()
    }

    #[test]
    fn names_known_only_at_run_time_are_resolved_per_task_and_bad_names_refused_clearly() {
        // As kfp-kubernetes writes a name from a parameter of the enclosing DAG and one from
        // another task's output: accepted at submit.
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-scale:\n          secretAsEnv:\n          - keyToEnv:\n            - {envVar: E, secretKey: k}\n            optional: false\n            secretNameParameter:\n              componentInputParameter: factor\n        exec-report:\n          pvcMount:\n          - mountPath: /data\n            taskOutputParameter: {outputParameterKey: Output, producerTask: make-data}\n            pvcNameParameter:\n              taskOutputParameter: {outputParameterKey: Output, producerTask: make-data}\n",
        );
        assert_eq!(refusals(&spec), Vec::<String>::new());
        // Statically, they add no placement label.
        assert!(executor_placement(&spec, "exec-scale").0.is_empty());

        // Each task resolves them from its own DAG when it becomes ready.
        let params = BTreeMap::from([("factor".to_string(), Value::from("db-creds"))]);
        let mut run = RunRecord::new("r".into(), spec, "file:///tmp/r".into(), params, 0);
        let scale = container_task("scale");
        let needs = task_needs(&run, &scale, "exec-scale").unwrap();
        assert_eq!(needs.secret_env[0].secret, "db-creds");
        let (labels, _) = task_placement(&run, &scale, "exec-scale").unwrap();
        assert!(labels.contains_key(&secret_label("db-creds")), "{labels:?}");

        let report = container_task("report");
        let err = task_needs(&run, &report, "exec-report")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exec-report")
                && err.contains("claim name comes from output \"Output\" of task \"make-data\", which did not succeed"),
            "{err}"
        );
        let mut made = container_task("make-data");
        made.state = super::super::TaskState::Succeeded;
        made.outputs
            .parameters
            .insert("Output".into(), Value::from("shared-claim"));
        run.tasks.insert("make-data".into(), made.clone());
        let needs = task_needs(&run, &report, "exec-report").unwrap();
        assert_eq!(needs.volumes[0].volume, "shared-claim");
        let (labels, _) = task_placement(&run, &report, "exec-report").unwrap();
        assert!(
            labels.contains_key(&volume_label("shared-claim")),
            "{labels:?}"
        );

        // A value that is no name fails the task, saying where it came from.
        made.outputs
            .parameters
            .insert("Output".into(), Value::from(3));
        run.tasks.insert("make-data".into(), made.clone());
        let err = task_placement(&run, &report, "exec-report")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is 3, not a string"), "{err}");
        made.outputs
            .parameters
            .insert("Output".into(), Value::from("../etc"));
        run.tasks.insert("make-data".into(), made);
        let err = task_needs(&run, &report, "exec-report")
            .unwrap_err()
            .to_string();
        assert!(err.contains("claim name \"../etc\" may hold only"), "{err}");
        run.tasks
            .get_mut("")
            .unwrap()
            .inputs
            .parameters
            .remove("factor");
        let err = task_needs(&run, &scale, "exec-scale")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("comes from parameter \"factor\", which has no value"),
            "{err}"
        );
        // Optional, and no name given: the secret is simply not there.
        let optional = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-scale:\n          secretAsEnv:\n          - keyToEnv:\n            - {envVar: E, secretKey: k}\n            optional: true\n            secretNameParameter:\n              componentInputParameter: factor\n          secretAsVolume:\n          - mountPath: /s\n            optional: true\n            secretNameParameter:\n              componentInputParameter: factor\n",
        );
        let run = RunRecord::new(
            "r".into(),
            optional,
            "file:///tmp/r".into(),
            BTreeMap::new(),
            0,
        );
        assert_eq!(
            task_needs(&run, &scale, "exec-scale").unwrap(),
            HostNeeds::default()
        );

        for (settings, needle) in [
            (
                "          secretAsEnv:\n          - secretName: ../etc\n            keyToEnv: [{envVar: E, secretKey: k}]\n",
                "secret name \"../etc\" may hold only",
            ),
            (
                "          secretAsEnv:\n          - secretName: s\n            keyToEnv: [{envVar: E, secretKey: ..}]\n",
                "key \"..\" of secret \"s\"",
            ),
            (
                "          secretAsEnv:\n          - secretName: s\n            keyToEnv: [{envVar: 'A=B', secretKey: k}]\n",
                "variable name \"A=B\"",
            ),
            (
                "          secretAsEnv:\n          - secretName: s\n            keyToEnv: [{secretKey: k}]\n",
                "has no envVar",
            ),
            (
                "          pvcMount:\n          - constant: v\n            mountPath: data\n",
                "mount path \"data\" must be an absolute path",
            ),
            (
                "          pvcMount:\n          - constant: v\n            mountPath: /d\n            subPath: ../x\n",
                "subPath \"../x\"",
            ),
            (
                "          pvcMount:\n          - {constant: v, mountPath: /d}\n          - {constant: w, mountPath: /d}\n",
                "two volumes are mounted at \"/d\"",
            ),
        ] {
            let r = refusal_of(settings);
            assert!(r.contains(needle), "{needle:?} not in {r}");
        }
    }

    #[test]
    fn pod_fields_become_variables_with_the_attempts_values() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          fieldPathAsEnv:\n          - {name: POD_NAME, fieldPath: metadata.name}\n          - {name: NS, fieldPath: metadata.namespace}\n          - {name: TEAM, fieldPath: \"metadata.labels['team']\"}\n          - {name: NOTE, fieldPath: \"metadata.annotations['note']\"}\n          - {name: MISSING, fieldPath: \"metadata.labels['absent']\"}\n          - {name: NODE, fieldPath: spec.nodeName}\n          - {name: SA, fieldPath: spec.serviceAccountName}\n          podMetadata:\n            labels: {team: vision}\n            annotations: {note: hello}\n",
        );
        assert_eq!(refusals(&spec), Vec::<String>::new());
        let params = crate::ir::resolve_run_parameters(&spec, &BTreeMap::new()).unwrap();
        let mut run = RunRecord::new("Run_1".into(), spec, "file:///tmp/r".into(), params, 0);
        crate::engine::advance(&mut run, 0);
        let task: gantry_model::TaskId = "make-data".into();
        run.tasks
            .get_mut(&task)
            .unwrap()
            .attempts
            .push(super::super::AttemptRecord {
                number: 2,
                agent: "gpu-7".into(),
                gpus: vec![],
                assigned_at: 0,
                started_at: None,
                finished_at: None,
                outcome: None,
            });
        let step = crate::engine::step_spec(&run, &task, 2).unwrap();
        let env: BTreeMap<&str, &str> = step
            .container
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env["POD_NAME"], "run-1-make-data-2");
        assert_eq!(env["TEAM"], "vision");
        assert_eq!(env["NOTE"], "hello");
        assert_eq!(
            env["MISSING"], "",
            "an absent label reads as empty, as on Kubernetes"
        );
        assert_eq!(env["NODE"], "gpu-7");
        assert_eq!(env["SA"], "default");
        assert!(!env.contains_key("NS"), "the agent fills the namespace in");
        assert_eq!(step.container.namespace_env, vec!["NS".to_string()]);

        for (settings, needle) in [
            (
                "          fieldPathAsEnv:\n          - {name: IP, fieldPath: status.podIP}\n",
                "fieldPath \"status.podIP\" has no value on Gantry agents",
            ),
            (
                "          fieldPathAsEnv:\n          - {fieldPath: metadata.name}\n",
                "fieldPathAsEnv: an entry gives no name",
            ),
            (
                "          fieldPathAsEnv:\n          - {name: 'A=B', fieldPath: metadata.name}\n",
                "variable name \"A=B\"",
            ),
        ] {
            let r = refusal_of(settings);
            assert!(r.contains(needle), "{needle:?} not in {r}");
        }
    }

    #[test]
    fn secrets_as_volumes_become_read_only_mounts_and_placement_labels() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          secretAsVolume:\n          - mountPath: /mnt/creds\n            optional: false\n            secretName: creds\n            secretNameParameter:\n              runtimeValue:\n                constant: creds\n          - {secretName: extra, mountPath: /mnt/extra, optional: true}\n",
        );
        assert_eq!(refusals(&spec), Vec::<String>::new());
        let needs = executor_needs(&spec, "exec-make-data").unwrap();
        assert_eq!(
            needs.secret_volumes,
            vec![
                SecretVolume {
                    secret: "creds".into(),
                    mount_path: "/mnt/creds".into(),
                    optional: false
                },
                SecretVolume {
                    secret: "extra".into(),
                    mount_path: "/mnt/extra".into(),
                    optional: true
                },
            ]
        );
        let (labels, _) = executor_placement(&spec, "exec-make-data");
        assert!(labels.contains_key(&secret_label("creds")), "{labels:?}");
        assert!(
            !labels.contains_key(&secret_label("extra")),
            "optional: {labels:?}"
        );
        for (settings, needle) in [
            (
                "          secretAsVolume:\n          - {secretName: s}\n",
                "secretAsVolume: the mount of \"s\" has no mountPath",
            ),
            (
                "          secretAsVolume:\n          - {secretName: s, mountPath: rel}\n",
                "mount path \"rel\" must be an absolute path",
            ),
            (
                "          secretAsVolume:\n          - {secretName: s, mountPath: /d}\n          pvcMount:\n          - {constant: v, mountPath: /d}\n",
                "two volumes are mounted at \"/d\"",
            ),
        ] {
            let r = refusal_of(settings);
            assert!(r.contains(needle), "{needle:?} not in {r}");
        }
    }

    #[test]
    fn node_selectors_and_tolerations_become_placement_constraints() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          nodeSelector:\n            labels: {zone: a, gpu.model: h100}\n          tolerations:\n          - key: nvidia.com/gpu\n            operator: Exists\n            effect: NoSchedule\n          - key: team\n            value: ml\n",
        );
        assert!(refusals(&spec).is_empty(), "{:?}", refusals(&spec));
        let (labels, tolerations) = executor_placement(&spec, "exec-make-data");
        assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(labels.get("gpu.model").map(String::as_str), Some("h100"));
        assert_eq!(tolerations.len(), 2);
        assert!(tolerations[0].exists);
        assert_eq!(tolerations[0].effect, Some(TaintEffect::NoSchedule));
        assert_eq!(
            (tolerations[1].key.as_str(), tolerations[1].value.as_str()),
            ("team", "ml")
        );

        // From a parameter (`add_node_selector_json`, `add_toleration_json`): accepted at
        // submit, read for each task when it is ready; absent, nothing is asked.
        let dynamic = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          nodeSelector:\n            labels: {zone: a}\n            nodeSelectorJson:\n              componentInputParameter: rows\n          tolerations:\n          - tolerationJson:\n              componentInputParameter: factor\n          - tolerationJson:\n              runtimeValue:\n                constant: {key: fixed, operator: Exists}\n",
        );
        assert_eq!(refusals(&dynamic), Vec::<String>::new());
        let task = container_task("make-data");
        let run_with = |rows: Value, factor: Value| {
            let mut params = BTreeMap::new();
            for (k, v) in [("rows", rows), ("factor", factor)] {
                if !v.is_null() {
                    params.insert(k.to_string(), v);
                }
            }
            RunRecord::new("r".into(), dynamic.clone(), "file:///r".into(), params, 0)
        };
        let run = run_with(Value::Null, Value::Null);
        let (labels, tolerations) = task_placement(&run, &task, "exec-make-data").unwrap();
        assert_eq!(labels, BTreeMap::from([("zone".into(), "a".into())]));
        assert_eq!(
            tolerations.len(),
            1,
            "only the constant one: {tolerations:?}"
        );
        let run = run_with(
            serde_json::json!({"disk": "ssd"}),
            Value::from(r#"[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]"#),
        );
        let (labels, tolerations) = task_placement(&run, &task, "exec-make-data").unwrap();
        assert_eq!(labels.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0].key, "gpu");
        assert_eq!(tolerations[0].effect, Some(TaintEffect::NoSchedule));
        let run = run_with(Value::from(3), Value::Null);
        let err = task_placement(&run, &task, "exec-make-data")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nodeSelectorJson from parameter \"rows\" is 3, not an object of labels"),
            "{err}"
        );
        let bad = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          tolerations:\n          - key: a\n            operator: Lt\n",
        );
        assert!(
            refusals(&bad)[0].contains("operator \"Lt\""),
            "{:?}",
            refusals(&bad)
        );
    }

    #[test]
    fn config_maps_become_variables_mounts_and_placement_labels() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          configMapAsEnv:\n          - configMapName: app\n            configMapNameParameter:\n              runtimeValue: {constant: app}\n            keyToEnv:\n            - {configMapKey: mode, envVar: MODE}\n          - keyToEnv:\n            - {configMapKey: k, envVar: K}\n            optional: true\n            configMapNameParameter:\n              componentInputParameter: rows\n          configMapAsVolume:\n          - {configMapName: app, mountPath: /etc/app, optional: false}\n",
        );
        assert_eq!(refusals(&spec), Vec::<String>::new());
        let (labels, _) = executor_placement(&spec, "exec-make-data");
        assert!(labels.contains_key(&config_map_label("app")), "{labels:?}");
        let task = container_task("make-data");
        // The optional one, named by a parameter without a value, is left out.
        let run = RunRecord::new("r".into(), spec, "file:///r".into(), BTreeMap::new(), 0);
        let needs = task_needs(&run, &task, "exec-make-data").unwrap();
        assert_eq!(
            needs.config_map_env,
            vec![ConfigMapEnv {
                config_map: "app".into(),
                key: "mode".into(),
                env: "MODE".into(),
                optional: false
            }]
        );
        assert_eq!(needs.config_map_volumes[0].mount_path, "/etc/app");
        for (settings, needle) in [
            (
                "          configMapAsEnv:\n          - configMapName: ../x\n            keyToEnv: [{configMapKey: k, envVar: K}]\n",
                "config map name \"../x\"",
            ),
            (
                "          configMapAsEnv:\n          - configMapName: c\n            keyToEnv: [{configMapKey: k}]\n",
                "keyToEnv of config map \"c\" has no envVar",
            ),
            (
                "          configMapAsVolume:\n          - {configMapName: c, mountPath: /d}\n          secretAsVolume:\n          - {secretName: s, mountPath: /d}\n",
                "two volumes are mounted at \"/d\"",
            ),
        ] {
            let r = refusal_of(settings);
            assert!(r.contains(needle), "{needle:?} not in {r}");
        }
    }

    #[test]
    fn a_required_node_affinity_of_one_value_per_key_becomes_labels() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          nodeAffinity:\n          - matchExpressions:\n            - {key: zone, operator: In, values: [a]}\n          - matchExpressions:\n            - {key: disk, operator: In, values: [ssd, nvme]}\n            weight: 10\n          - nodeAffinityJson:\n              componentInputParameter: rows\n",
        );
        assert_eq!(refusals(&spec), Vec::<String>::new());
        let (labels, _) = executor_placement(&spec, "exec-make-data");
        assert_eq!(labels, BTreeMap::from([("zone".into(), "a".into())]));
        let task = container_task("make-data");
        let run_with = |affinity: Value| {
            let params = BTreeMap::from([("rows".to_string(), affinity)]);
            RunRecord::new("r".into(), spec.clone(), "file:///r".into(), params, 0)
        };
        let run = run_with(serde_json::json!({
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
            ]}
        }));
        let (labels, _) = task_placement(&run, &task, "exec-make-data").unwrap();
        assert_eq!(labels.get("gpu").map(String::as_str), Some("h100"));
        assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
        let run = run_with(serde_json::json!({
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["t4"]}]}
            ]}
        }));
        let err = task_placement(&run, &task, "exec-make-data")
            .unwrap_err()
            .to_string();
        assert!(err.contains("operator \"NotIn\""), "{err}");
        // Refused at submit when fixed in the pipeline.
        let r = refusal_of(
            "          nodeAffinity:\n          - matchExpressions:\n            - {key: zone, operator: Exists}\n",
        );
        assert!(
            r.contains("nodeAffinity:") && r.contains("\"Exists\""),
            "{r}"
        );
    }

    #[test]
    fn active_deadline_seconds_becomes_the_timeout_of_the_tasks_running_the_executor() {
        let spec = with_platform(
            "platforms:\n  kubernetes:\n    deploymentSpec:\n      executors:\n        exec-make-data:\n          activeDeadlineSeconds: '30'\n",
        );
        assert!(refusals(&spec).is_empty());
        assert_eq!(
            task_timeouts(&spec),
            BTreeMap::from([("make-data".to_string(), 30_000)])
        );
        assert!(task_timeouts(&parse_pipeline(PIPELINE).unwrap()).is_empty());
    }
}
