//! The run engine: a pure state machine over one run's tasks.
//!
//! [`advance`] takes a run and moves it as far as the recorded facts allow: it instantiates
//! tasks whose upstream tasks are done, resolves their inputs, evaluates their conditions,
//! marks them ready (containers), running (DAGs), done (importers) or skipped, completes DAGs
//! whose children are all done, and finally the run. Attempts and their results are recorded
//! by the state machine through [`record_assignment`] and [`record_outcome`]. Nothing here
//! does I/O or reads a clock: `now` comes in as an argument.

mod advance;
pub mod approval;
mod cache;
pub mod claims;
mod host_rules;
mod loops;
mod outcome_check;
pub mod platform;
mod record;
mod resolve;
mod step;
mod timeouts;

use std::collections::BTreeMap;

use gantry_model::{AgentId, ArtifactRef, RunId, StepInputs, StepOutcome, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ir::PipelineSpec;

pub use advance::{advance, advance_from, Progress};
pub use cache::{record_cached, CacheEntry, CachePolicy};
pub use host_rules::{check_host_rules, is_reserved_env, HostRefusal, RESERVED_ENV};
pub use loops::MAX_ITERATIONS;
pub use platform::PlatformError;
pub use record::{
    cancel_run, fail_unschedulable, record_assignment, record_outcome, record_started, retry_run,
    AttemptError, NotRetryable, OutcomeEffect, MAX_LOST_ATTEMPTS,
};
pub use resolve::ResolveError;
pub use step::{step_spec, task_resources, ResourceError, StepError};
pub use timeouts::{attempt_deadline, human_ms, run_deadline, time_out_run, RunLimits};

/// The id of the hidden task that stands for the root DAG.
pub const ROOT_TASK_ID: &str = "";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceling,
    Canceled,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Canceling => "CANCELING",
            Self::Canceled => "CANCELED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Waiting to be placed on an agent (containers only).
    Ready,
    /// A container attempt is assigned, or a DAG has children still going.
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cached,
    Canceled,
}

/// As the API and messages spell it (`SUCCEEDED`).
impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As the API and messages spell it (`SKIPPED`).
impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cached | Self::Canceled
        )
    }

    /// Terminal with outputs available.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Succeeded | Self::Cached)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
            Self::Cached => "CACHED",
            Self::Canceled => "CANCELED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    Container,
    Importer,
    Dag,
    /// A `dsl.ParallelFor`: its children are the iterations, each a [`TaskKind::Dag`].
    Loop,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskOutputs {
    pub parameters: BTreeMap<String, Value>,
    pub artifacts: BTreeMap<String, Vec<ArtifactRef>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    pub agent: AgentId,
    /// UUIDs of the GPUs the attempt was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    pub assigned_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub outcome: Option<StepOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    /// IR task name (key in its DAG's `tasks`).
    pub name: String,
    /// Task id of the enclosing DAG task; `None` at the root.
    pub parent: Option<TaskId>,
    pub iteration: Option<u32>,
    /// Component key (`comp-train`).
    pub component: String,
    pub kind: TaskKind,
    pub state: TaskState,
    pub inputs: StepInputs,
    pub attempts: Vec<AttemptRecord>,
    pub outputs: TaskOutputs,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// A retried task is not placed before this time (retry backoff).
    pub not_before: Option<i64>,
    /// Set on a ready container task that may be served from the cache.
    #[serde(default)]
    pub cache_key: Option<String>,
    /// `<run>/<task>` of the execution whose outputs a CACHED task reused.
    #[serde(default)]
    pub cached_from: Option<String>,
    /// The decision on its approval gate ([`approval`]), once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<approval::Decision>,
}

impl TaskRecord {
    /// A ready task with nothing recorded yet; callers set what differs.
    pub(crate) fn new(
        task_id: TaskId,
        name: String,
        component: String,
        kind: TaskKind,
        now: i64,
    ) -> Self {
        TaskRecord {
            task_id,
            name,
            parent: None,
            iteration: None,
            component,
            kind,
            state: TaskState::Ready,
            inputs: StepInputs::default(),
            attempts: Vec::new(),
            outputs: TaskOutputs::default(),
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            not_before: None,
            cache_key: None,
            cached_from: None,
            approval: None,
        }
    }

    pub fn current_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }
}

/// One run: the pipeline it runs, its parameters, and the record of every task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: RunId,
    /// Shared by the runs of one pipeline (see `state::pipelines`): most runs repeat a few
    /// pipelines, and a compiled KFP pipeline (component sources included) is most of a run.
    /// A snapshot names it by position in a table of its own (`state::snapshot_codec`).
    #[serde(with = "crate::state::snapshot_codec::pipeline_field")]
    pub pipeline: std::sync::Arc<PipelineSpec>,
    pub pipeline_root: String,
    pub parameters: BTreeMap<String, Value>,
    pub state: RunState,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Every instantiated task by task id, the root DAG included (id [`ROOT_TASK_ID`]).
    pub tasks: BTreeMap<TaskId, TaskRecord>,
    #[serde(default)]
    pub caching: CachePolicy,
    #[serde(default)]
    pub limits: RunLimits,
    /// Set when the run outlived its timeout: it ends FAILED with this error.
    #[serde(default)]
    pub timed_out: Option<String>,
    /// When the run was last retried; its timeout counts from then.
    #[serde(default)]
    pub restarted_at: Option<i64>,
    /// Higher runs' steps are placed first; equal priorities go oldest first.
    #[serde(default)]
    pub priority: i32,
    /// What URIs its importers may name ([`crate::ir::UriPolicy`]); `None` for runs created
    /// before the policy existed, whose importers are not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_policy: Option<crate::ir::UriPolicy>,
    /// What the KFP API attaches to the run; `None` for runs submitted through Gantry's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<crate::state::catalog::RunInfo>>,
    /// Volumes the run made (`CreatePVC`, its workspace) by name ([`claims`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, claims::RunClaim>,
}

impl RunRecord {
    /// A new run with its root DAG instantiated. `parameters` must already be resolved and
    /// type-checked against the pipeline's inputs.
    pub fn new(
        run_id: RunId,
        pipeline: impl Into<std::sync::Arc<PipelineSpec>>,
        pipeline_root: String,
        parameters: BTreeMap<String, Value>,
        now: i64,
    ) -> Self {
        let pipeline: std::sync::Arc<PipelineSpec> = pipeline.into();
        let claims = claims::initial_claims(&pipeline);
        let root = TaskRecord {
            state: TaskState::Running,
            inputs: StepInputs {
                parameters: parameters.clone(),
                artifacts: BTreeMap::new(),
            },
            started_at: Some(now),
            ..TaskRecord::new(
                TaskId::from(ROOT_TASK_ID),
                pipeline.name.clone(),
                "root".to_string(),
                TaskKind::Dag,
                now,
            )
        };
        let mut tasks = BTreeMap::new();
        tasks.insert(TaskId::from(ROOT_TASK_ID), root);
        RunRecord {
            run_id,
            pipeline,
            pipeline_root,
            parameters,
            state: RunState::Pending,
            error: None,
            created_at: now,
            finished_at: None,
            tasks,
            caching: CachePolicy::default(),
            limits: RunLimits::default(),
            timed_out: None,
            restarted_at: None,
            priority: 0,
            uri_policy: None,
            info: None,
            claims,
        }
    }

    /// The id of a child task of the DAG task `parent_id`.
    pub fn child_id(parent_id: &str, name: &str) -> TaskId {
        if parent_id.is_empty() {
            TaskId::from(name)
        } else {
            TaskId::from(format!("{parent_id}/{name}"))
        }
    }

    /// Tasks waiting for placement, in a stable order.
    pub fn ready_tasks(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks
            .values()
            .filter(|t| t.kind == TaskKind::Container && t.state == TaskState::Ready)
    }
}

#[cfg(test)]
mod tests;

/// A pipeline that uses what the engine cannot run yet: one line per feature and task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct Unsupported {
    pub problems: Vec<String>,
}

/// Refuses, at submit, what the engine cannot run yet, naming the feature and the task.
pub fn check_supported(p: &PipelineSpec) -> Result<(), Unsupported> {
    let mut problems = Vec::new();
    let comps = std::iter::once(&p.root).chain(p.components.values());
    for comp in comps {
        let crate::ir::Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for t in dag.tasks.values() {
            for (input, b) in &t.parameters {
                if let Some(sel) = &b.selector {
                    if let Err(e) = crate::ir::selector::compile(sel) {
                        problems.push(format!(
                            "task {:?} in {}: input {input:?}: parameterExpressionSelector {sel:?}: {e}",
                            t.name, comp.name
                        ));
                    }
                }
            }
        }
    }
    problems.extend(platform::refusals(p));
    problems.extend(approval::refusals(p));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Unsupported { problems })
    }
}
