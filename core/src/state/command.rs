//! The log vocabulary: every change to the cluster's state is one of these, committed through
//! Raft before anything acts on it. Ids and timestamps are chosen by the proposer.

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_model::{AgentId, AttemptKey, HostInventory, RunId, StepOutcome, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{CachePolicy, RunLimits};
use crate::ir::PipelineSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub agent_id: AgentId,
    /// UUIDs of the agent's GPUs given to the attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

/// What a `CreateRun` command brings. `P` is how its pipeline is held: decoded, or (while an
/// entry is being decoded, `CommandDecoder`) its JSON text still undecoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRun<P = Arc<PipelineSpec>> {
    pub run_id: RunId,
    /// Client request id: a retried submission with the same id creates one run.
    pub request_id: Option<String>,
    pub pipeline: P,
    pub pipeline_root: String,
    /// Already resolved against the pipeline's inputs.
    pub parameters: BTreeMap<String, Value>,
    /// The root's input artifacts, already checked against its declarations.
    #[serde(default)]
    pub artifacts: BTreeMap<String, Vec<gantry_model::ArtifactRef>>,
    pub at: i64,
    #[serde(default)]
    pub caching: CachePolicy,
    #[serde(default)]
    pub limits: RunLimits,
    /// Placement order across runs: higher first.
    #[serde(default)]
    pub priority: i32,
    /// The URIs the run's importers may name at run time (its parameters decide some);
    /// absent in entries written before there was a policy: then nothing is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_policy: Option<crate::ir::UriPolicy>,
    /// What the KFP API attaches to the run (name, experiment, source); absent for runs
    /// submitted through Gantry's own API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<super::catalog::RunInfo>>,
    /// How long `request_id` names its run: a repeat after this (from the run's creation)
    /// makes a new run. `None`: for as long as the run is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_window_ms: Option<i64>,
}

impl<P> NewRun<P> {
    /// The same run with its pipeline held as `pipeline`.
    pub fn with_pipeline<Q>(self, pipeline: Q) -> NewRun<Q> {
        NewRun {
            run_id: self.run_id,
            request_id: self.request_id,
            pipeline,
            pipeline_root: self.pipeline_root,
            parameters: self.parameters,
            artifacts: self.artifacts,
            at: self.at,
            caching: self.caching,
            limits: self.limits,
            priority: self.priority,
            uri_policy: self.uri_policy,
            info: self.info,
            request_window_ms: self.request_window_ms,
        }
    }
}

impl Command {
    /// A committed entry's command (see `CommandDecoder`, which also keeps the pipelines it
    /// decoded lately).
    pub fn decode(data: &[u8]) -> serde_json::Result<Command> {
        super::command_decoder::CommandDecoder::default().decode(data)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A new run (its fields stand beside `type` in the JSON, as a struct variant's did).
    CreateRun(NewRun),
    RegisterAgent {
        agent_id: AgentId,
        inventory: HostInventory,
        labels: BTreeMap<String, String>,
        #[serde(default)]
        taints: Vec<gantry_model::Taint>,
        at: i64,
    },
    /// The agent has not been heard from within its lease: its unfinished attempts end LOST
    /// (and are placed again elsewhere); it takes no steps until it registers again.
    DeclareAgentLost {
        agent_id: AgentId,
        at: i64,
    },
    /// A registered agent's host changed (a GPU failed, vanished or came back).
    UpdateInventory {
        agent_id: AgentId,
        inventory: HostInventory,
    },
    /// Drain (no new placements; running attempts finish) or undrain an agent.
    SetAgentDraining {
        agent_id: AgentId,
        draining: bool,
    },
    /// Placements chosen by the leader's scheduler in one pass. Each is re-checked at apply.
    AssignAttempts {
        placements: Vec<Placement>,
        at: i64,
    },
    AttemptStarted {
        attempt: AttemptKey,
        at: i64,
    },
    AttemptFinished {
        attempt: AttemptKey,
        outcome: StepOutcome,
        at: i64,
    },
    CancelRun {
        run_id: RunId,
        at: i64,
    },
    /// The leader found a usable cache entry for this ready task and checked that its
    /// artifacts exist: the task takes the entry's outputs instead of running.
    UseCachedResult {
        run_id: RunId,
        task_id: TaskId,
        at: i64,
    },
    /// Cache entries whose artifacts are gone: they are never used again.
    ForgetCache {
        keys: Vec<String>,
    },
    /// Run a FAILED or CANCELED run again from where it failed, keeping what succeeded.
    RetryRun {
        run_id: RunId,
        at: i64,
    },
    /// The run passed its deadline (checked again at apply against `at`).
    TimeOutRun {
        run_id: RunId,
        at: i64,
    },
    /// The attempt passed its task's deadline (checked again at apply against `at`).
    TimeOutAttempt {
        attempt: AttemptKey,
        at: i64,
    },
    /// The first admin token: refused once any bootstrap was applied.
    AclBootstrap {
        token: super::acl::TokenRecord,
    },
    CreateToken {
        token: super::acl::TokenRecord,
    },
    /// Removes a token, named by accessor id or name.
    RevokeToken {
        accessor: String,
    },
    /// No connected agent could ever run these ready tasks (placement's reasons): they fail.
    /// Checked again at apply: a task no longer READY is left alone.
    FailUnschedulable {
        tasks: Vec<Unschedulable>,
        at: i64,
    },
    /// Retention: these finished runs go, with their request ids and the cache entries they
    /// produced. A run that is no longer finished (retried meanwhile) is left alone.
    RemoveRuns {
        run_ids: Vec<RunId>,
    },
    /// Retention: these agents, lost long ago, are forgotten (one that is no longer lost or
    /// still holds attempts is left alone). An agent that comes back registers again.
    ForgetLostAgents {
        agent_ids: Vec<AgentId>,
    },
    /// The data directory (store id) member `node` speaks from, as its peers first heard it.
    /// Committed so that every member refuses a wiped copy of `node`, also one that never
    /// talked to it before. A different store for a recorded member is refused.
    RecordMemberStore {
        node: u64,
        store: u64,
    },
    /// `node` left the cluster (or is about to join again): its record goes, so that it may
    /// come back with a new data directory.
    ForgetMemberStore {
        node: u64,
    },
    CreateExperiment {
        experiment: super::catalog::Experiment,
    },
    /// Archiving an experiment archives its runs too (as KFP does); unarchiving does not
    /// bring them back.
    SetExperimentArchived {
        experiment_id: String,
        archived: bool,
    },
    /// Refused while runs still belong to it.
    DeleteExperiment {
        experiment_id: String,
    },
    /// A pipeline and, from an upload, its first version.
    CreatePipeline {
        pipeline: super::catalog::Pipeline,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Box<super::catalog::PipelineVersion>>,
    },
    CreatePipelineVersion {
        version: Box<super::catalog::PipelineVersion>,
    },
    /// Refused while it has versions, unless `cascade` (then they go too).
    DeletePipeline {
        pipeline_id: String,
        cascade: bool,
    },
    DeletePipelineVersion {
        pipeline_id: String,
        pipeline_version_id: String,
    },
    SetRunArchived {
        run_id: RunId,
        archived: bool,
    },
    /// A decision on a task's approval gate: an approval lets it be placed, a rejection fails
    /// it. Refused unless the task is READY and waits for one.
    DecideApproval {
        run_id: RunId,
        task_id: TaskId,
        decision: crate::engine::approval::Decision,
    },
    CreateRecurringRun {
        recurring: Box<crate::schedule::RecurringRun>,
    },
    SetRecurringRunEnabled {
        id: String,
        enabled: bool,
        at: i64,
    },
    DeleteRecurringRun {
        id: String,
    },
    /// A hook is sent the state changes committed from now on.
    AddWebhook {
        hook: super::notify::Webhook,
    },
    RemoveWebhook {
        id: String,
    },
    /// The leader posted hook `id` every notice up to `upto`.
    WebhookDelivered {
        id: String,
        upto: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unschedulable {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub reason: String,
}

impl Placement {
    /// The attempt this placement assigns.
    pub fn attempt_key(&self) -> AttemptKey {
        AttemptKey {
            run_id: self.run_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
        }
    }
}
