//! What the coordinator hands an agent to run (`StepSpec`) and what comes back (`StepOutcome`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ArtifactRef, ParamType, ResourceRequest};

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
    pub run_id: String,
    /// Path of the task in the run, unique within it (`condition-1/train`).
    pub task_id: String,
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
    /// Identifies the attempt everywhere (container labels, logs, reports).
    pub fn attempt_key(&self) -> String {
        format!("{}/{}/{}", self.run_id, self.task_id, self.attempt)
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
