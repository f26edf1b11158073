//! The typed pipeline model that the IR parser produces and the engine consumes.

use std::collections::BTreeMap;

use gantry_model::{ParamType, ResourceRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A validated pipeline: what `CreateRun` stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    /// `pipelineInfo.name`.
    pub name: String,
    pub description: Option<String>,
    pub sdk_version: Option<String>,
    pub schema_version: Option<String>,
    /// `defaultPipelineRoot`, if the pipeline names one.
    pub default_pipeline_root: Option<String>,
    /// The root DAG. Its inputs are the pipeline's parameters.
    pub root: ComponentSpec,
    /// Components by their key in `components` (`comp-train`).
    pub components: BTreeMap<String, ComponentSpec>,
    /// Executors by their key in `deploymentSpec.executors` (`exec-train`).
    pub executors: BTreeMap<String, ExecutorSpec>,
    /// The platform spec document (kfp-kubernetes), kept as is for later interpretation.
    pub platform_spec: Option<Value>,
}

impl PipelineSpec {
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.get(name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterDef {
    pub ptype: ParamType,
    pub default: Option<Value>,
    pub optional: bool,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactDef {
    /// `artifactType.schemaTitle` (`system.Dataset`).
    pub schema_title: String,
    pub schema_version: String,
    /// `isArtifactList`: the input or output is a list of artifacts.
    pub is_list: bool,
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Key in `components`, or `root`.
    pub name: String,
    pub input_parameters: BTreeMap<String, ParameterDef>,
    pub input_artifacts: BTreeMap<String, ArtifactDef>,
    pub output_parameters: BTreeMap<String, ParameterDef>,
    pub output_artifacts: BTreeMap<String, ArtifactDef>,
    pub implementation: Implementation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Implementation {
    /// `executorLabel`: key into [`PipelineSpec::executors`].
    Executor(String),
    Dag(DagSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagSpec {
    /// Tasks by their key in `dag.tasks` (the IR task name).
    pub tasks: BTreeMap<String, TaskSpec>,
    pub output_parameters: BTreeMap<String, DagOutputParameter>,
    pub output_artifacts: BTreeMap<String, Vec<OutputSelector>>,
}

/// `producerSubtask` + output key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSelector {
    pub producer_task: String,
    pub output_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DagOutputParameter {
    /// `valueFromParameter`.
    Single(OutputSelector),
    /// `valueFromOneof.parameterSelectors`: the first producer that ran (dsl.OneOf).
    OneOf(Vec<OutputSelector>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Key in `dag.tasks`.
    pub name: String,
    /// `taskInfo.name`.
    pub display_name: String,
    /// `componentRef.name`.
    pub component: String,
    /// `dependentTasks`.
    pub dependent_tasks: Vec<String>,
    pub parameters: BTreeMap<String, ParameterBinding>,
    pub artifacts: BTreeMap<String, ArtifactSource>,
    /// `triggerPolicy.condition`, a CEL expression over `inputs.parameter_values`.
    pub condition: Option<String>,
    pub trigger_strategy: TriggerStrategy,
    pub iterator: Option<Iterator>,
    pub cache_enabled: bool,
    pub retry: Option<RetryPolicy>,
}

impl TaskSpec {
    /// The siblings this task waits for: `dependentTasks` and the producers of its inputs.
    pub fn upstream(&self) -> std::collections::BTreeSet<&str> {
        let mut up: std::collections::BTreeSet<&str> =
            self.dependent_tasks.iter().map(String::as_str).collect();
        for b in self.parameters.values() {
            match &b.source {
                ParameterSource::TaskOutput(sel) => {
                    up.insert(&sel.producer_task);
                }
                ParameterSource::TaskFinalStatus(p) => {
                    up.insert(p);
                }
                ParameterSource::Constant(_) | ParameterSource::ComponentInput(_) => {}
            }
        }
        for a in self.artifacts.values() {
            if let ArtifactSource::TaskOutput(sel) = a {
                up.insert(&sel.producer_task);
            }
        }
        up
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerStrategy {
    /// Default: every upstream task succeeded (or was skipped by its condition).
    AllUpstreamSucceeded,
    /// `ALL_UPSTREAM_TASKS_COMPLETED`: also after upstream failures (ignore_upstream_failure,
    /// exit handlers).
    AllUpstreamCompleted,
}

/// A task input parameter: where its value comes from, and an optional
/// `parameterExpressionSelector` applied to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterBinding {
    pub source: ParameterSource,
    pub selector: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParameterSource {
    /// `runtimeValue.constant`.
    Constant(Value),
    /// `componentInputParameter`: an input of the enclosing DAG.
    ComponentInput(String),
    /// `taskOutputParameter`.
    TaskOutput(OutputSelector),
    /// `taskFinalStatus.producerTask` (exit handlers).
    TaskFinalStatus(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArtifactSource {
    /// `componentInputArtifact`.
    ComponentInput(String),
    /// `taskOutputArtifact`.
    TaskOutput(OutputSelector),
}

/// `parameterIterator` / `artifactIterator` (dsl.ParallelFor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iterator {
    /// `itemInput`: the name under which each item reaches the loop body.
    pub item_input: String,
    pub items: IteratorItems,
    /// `iteratorPolicy.parallelismLimit`; 0 means unlimited.
    pub parallelism: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IteratorItems {
    /// `items.raw`: a JSON list written into the IR.
    Raw(Value),
    /// `items.inputParameter`: a list-valued input of the loop task.
    InputParameter(String),
    /// `artifactIterator.items.inputArtifact`.
    InputArtifact(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_retry_count: u32,
    pub backoff_duration_ms: u64,
    pub backoff_factor: f64,
    pub backoff_max_duration_ms: u64,
}

// A pipeline holds a handful of executors: the size difference costs nothing worth boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExecutorSpec {
    Container(ContainerExecutor),
    Importer(ImporterSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerExecutor {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `env` name/value pairs, in order.
    pub env: Vec<(String, String)>,
    pub resources: ResourceRequest,
    /// Resource fields the IR takes from a task input at run time
    /// (`resourceCpuLimit: "{{$.inputs.parameters['pipelinechannel--cpu']}}"`); empty when every
    /// request is a constant (the usual case). A field set here is `None` in [`Self::resources`].
    #[serde(default)]
    pub dynamic_resources: DynamicResources,
}

/// For each resource field decided at run time, the name of the task input parameter holding
/// its value. Validation guarantees that every task running the executor binds that input.
/// The values are Kubernetes quantities: parse them with [`crate::ir::parse_cpu_quantity`],
/// [`crate::ir::parse_memory_quantity`] and [`crate::ir::parse_accelerator_count`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicResources {
    pub cpu_limit: Option<String>,
    pub cpu_request: Option<String>,
    pub memory_limit: Option<String>,
    pub memory_request: Option<String>,
    pub accelerator_type: Option<String>,
    pub accelerator_count: Option<String>,
}

impl DynamicResources {
    pub fn is_empty(&self) -> bool {
        self.fields().all(|(_, v)| v.is_none())
    }

    /// `(field, input name)` pairs, in a fixed order.
    pub fn fields(&self) -> impl std::iter::Iterator<Item = (&'static str, Option<&str>)> {
        [
            ("cpu limit", self.cpu_limit.as_deref()),
            ("cpu request", self.cpu_request.as_deref()),
            ("memory limit", self.memory_limit.as_deref()),
            ("memory request", self.memory_request.as_deref()),
            ("accelerator type", self.accelerator_type.as_deref()),
            ("accelerator count", self.accelerator_count.as_deref()),
        ]
        .into_iter()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImporterSpec {
    /// `artifactUri`: a constant URI or the name of an input parameter holding it.
    pub artifact_uri: ImporterUri,
    pub schema_title: String,
    pub schema_version: String,
    pub metadata: serde_json::Map<String, Value>,
    pub reimport: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ImporterUri {
    Constant(String),
    /// `runtimeParameter`: name of an input parameter of the importer component.
    Parameter(String),
}
