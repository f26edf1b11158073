//! What the coordinator hands an agent to run (`StepSpec`) and what comes back (`StepOutcome`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ArtifactRef, AttemptKey, ParamType, ResourceRequest, RunId, TaskId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// A container executor with its placeholders still in place: the agent's launcher substitutes
/// them, as Kubeflow's launcher does inside the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub resources: ResourceRequest,
    /// Variables the agent fills from its secret store (kfp-kubernetes `use_secret_as_env`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// Agent volumes shown to the step (kfp-kubernetes `mount_pvc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Variables the agent sets to its namespace (`--namespace`): kfp-kubernetes
    /// `use_field_path_as_env(..., "metadata.namespace")`. The other pod fields arrive in
    /// `env`, filled in by the coordinator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_env: Vec<String>,
    /// Secrets of the agent's store shown as directories of files, one per key
    /// (kfp-kubernetes `use_secret_as_volume`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_volumes: Vec<SecretVolume>,
    /// Variables from the agent's config map store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_map_env: Vec<ConfigMapEnv>,
    /// Config maps of the agent's store shown as directories of files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_map_volumes: Vec<ConfigMapVolume>,
    /// Scratch directories of the attempt's own (kfp-kubernetes `empty_dir_mount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub empty_dirs: Vec<EmptyDirMount>,
    /// A `/dev/shm` of its own in memory (the `enabledSharedMemory` Kubernetes setting);
    /// `None`: the runtime's (64 MiB under Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<SharedMemory>,
}

/// `/dev/shm` as a tmpfs of `size_bytes` (`None`: as large as the kernel allows a tmpfs,
/// half the host's memory, within the step's memory limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMemory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// An empty directory the attempt sees at `mount_path`, made when it starts and removed with
/// it (a Kubernetes emptyDir volume). `memory`: in memory (a tmpfs), as `medium: Memory`;
/// otherwise a directory beside the attempt's files on the agent's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyDirMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
    /// Bytes the directory may hold: the tmpfs's size in memory. On disk it is not enforced
    /// (the agent's work directory bounds it), which the README says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit_bytes: Option<u64>,
}

/// Environment variable `env` holds key `key` of config map `config_map` from the agent's
/// config map store (kfp-kubernetes `use_config_map_as_env`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMapEnv {
    pub config_map: String,
    pub key: String,
    pub env: String,
    /// A missing config map or key leaves the variable unset instead of failing the step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Config map `config_map` of the agent's store, mounted read-only at `mount_path`, one file
/// per key (kfp-kubernetes `use_config_map_as_volume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMapVolume {
    pub config_map: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Secret `secret` of the agent's secret store, mounted read-only at `mount_path`: one file
/// per key, as Kubernetes mounts a secret volume. Only the name travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVolume {
    pub secret: String,
    pub mount_path: String,
    /// A missing secret mounts nothing instead of failing the step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Environment variable `env` holds key `key` of secret `secret` from the agent's secret store.
/// Only the reference travels (the spec is committed to the Raft log and sent over the wire);
/// the value is read by the agent that runs the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub secret: String,
    pub key: String,
    pub env: String,
    /// A missing secret or key leaves the variable unset instead of failing the step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The agent's volume `volume` (`--volume NAME=HOST_PATH`), or its `sub_path` below it, seen
/// by the step at `mount_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub volume: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    /// A volume the run made (kfp-kubernetes `CreatePVC`, the pipeline's workspace) rather
    /// than one of the agent's: the agent keeps it under its work directory, by run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_claim: bool,
}

/// Where a run's workspace (`platforms.kubernetes.pipelineConfig.workspace`) is mounted in every
/// step, as in Kubeflow: the value of `{{$.workspace_path}}` (`dsl.WORKSPACE_PATH_PLACEHOLDER`).
pub const WORKSPACE_PATH: &str = "/kfp-workspace";

/// Label an agent carries when its secret store holds secret `name`: steps that need the
/// secret select it, so they are placed only where it can be resolved.
pub fn secret_label(name: &str) -> String {
    format!("secret.gantry.dev/{name}")
}

/// Label an agent carries when it has volume `name` (see [`secret_label`]).
pub fn volume_label(name: &str) -> String {
    format!("volume.gantry.dev/{name}")
}

/// Label an agent carries when its config map store holds config map `name`.
pub fn config_map_label(name: &str) -> String {
    format!("configmap.gantry.dev/{name}")
}

/// Value of the [`secret_label`] and [`volume_label`] labels.
pub const RESOURCE_LABEL_VALUE: &str = "true";

/// Why a text cannot name a secret or a volume, or be a secret's key. The messages are the
/// end of a sentence whose subject the caller gives (`the name must have 1 to 63 characters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must have 1 to 63 characters")]
    ResourceNameLength,
    #[error(
        "may hold only ASCII letters, digits, '-', '_' and '.', and must start and end with a \
         letter or digit"
    )]
    ResourceNameCharacters,
    #[error("must have 1 to 253 characters and not be '.' or '..'")]
    SecretKeyLength,
    #[error("may hold only ASCII letters, digits, '-', '_' and '.'")]
    SecretKeyCharacters,
}

/// Whether `name` can name a secret or a volume: it becomes a directory name on the agent and
/// part of a label key, so 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting and ending
/// with a letter or digit (a Kubernetes label name; secret and claim names fit).
pub fn validate_resource_name(name: &str) -> Result<(), NameError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 {
        return Err(NameError::ResourceNameLength);
    }
    if !name.chars().all(ok_char) || !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(NameError::ResourceNameCharacters);
    }
    Ok(())
}

/// Whether `key` can be a key of a secret: a file name in the secret's directory (Kubernetes
/// allows letters, digits, `-`, `_` and `.`).
pub fn validate_secret_key(key: &str) -> Result<(), NameError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if key.is_empty() || key.len() > 253 || key == "." || key == ".." {
        return Err(NameError::SecretKeyLength);
    }
    if !key.chars().all(ok_char) {
        return Err(NameError::SecretKeyCharacters);
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepInputs {
    /// Resolved values, already in their IR types. Absent optional inputs are absent here.
    pub parameters: BTreeMap<String, Value>,
    pub artifacts: BTreeMap<String, Vec<ArtifactRef>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputArtifactSpec {
    pub uri: String,
    pub schema_title: String,
    #[serde(default)]
    pub schema_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutputs {
    pub parameters: BTreeMap<String, ParamType>,
    pub artifacts: BTreeMap<String, OutputArtifactSpec>,
}

/// One attempt of one task, as committed to the log and sent to the agent that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub run_id: RunId,
    /// Path of the task in the run, unique within it (`condition-1/train`).
    pub task_id: TaskId,
    /// The IR task name (`train`).
    pub task_name: String,
    pub attempt: u32,
    pub pipeline_name: String,
    /// Artifact root of the run (`s3://bucket/prefix` or `file:///dir`).
    pub pipeline_root: String,
    pub container: ContainerSpec,
    pub inputs: StepInputs,
    pub outputs: StepOutputs,
    /// UUIDs of the GPUs the coordinator assigned to this attempt; the step sees only these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

impl StepSpec {
    /// Identifies the attempt everywhere (container labels, logs, reports); it displays as
    /// `run/task/attempt`.
    pub fn attempt_key(&self) -> AttemptKey {
        AttemptKey {
            run_id: self.run_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
        }
    }
}

/// How an attempt ended, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded {
        #[serde(default)]
        parameters: BTreeMap<String, Value>,
        #[serde(default)]
        artifacts: BTreeMap<String, Vec<ArtifactRef>>,
    },
    Failed {
        error: String,
        #[serde(default)]
        exit_code: Option<i64>,
    },
    /// The attempt was stopped because its run was canceled.
    Canceled,
    /// The agent running it was declared lost (no heartbeat within its lease): recorded by the
    /// coordinator, never reported by an agent. Retried elsewhere apart from the retry policy.
    Lost { error: String },
}
