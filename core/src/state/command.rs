//! The log vocabulary: every change to the cluster's state is one of these, committed through
//! Raft before anything acts on it. Ids and timestamps are chosen by the proposer.

use std::collections::BTreeMap;

use gantry_model::{HostInventory, StepOutcome};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{CachePolicy, RunLimits};
use crate::ir::PipelineSpec;

/// One attempt of one task of one run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptKey {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
}

impl std::fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.run_id, self.task_id, self.attempt)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub agent_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    CreateRun {
        run_id: String,
        /// Client request id: a retried submission with the same id creates one run.
        request_id: Option<String>,
        pipeline: Box<PipelineSpec>,
        pipeline_root: String,
        /// Already resolved against the pipeline's inputs.
        parameters: BTreeMap<String, Value>,
        at: i64,
        #[serde(default)]
        caching: CachePolicy,
        #[serde(default)]
        limits: RunLimits,
    },
    RegisterAgent {
        agent_id: String,
        inventory: HostInventory,
        labels: BTreeMap<String, String>,
        at: i64,
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
        run_id: String,
        at: i64,
    },
    /// The leader found a usable cache entry for this ready task and checked that its
    /// artifacts exist: the task takes the entry's outputs instead of running.
    UseCachedResult {
        run_id: String,
        task_id: String,
        at: i64,
    },
    /// Cache entries whose artifacts are gone: they are never used again.
    ForgetCache {
        keys: Vec<String>,
    },
    /// Run a FAILED or CANCELED run again from where it failed, keeping what succeeded.
    RetryRun {
        run_id: String,
        at: i64,
    },
    /// The run passed its deadline (checked again at apply against `at`).
    TimeOutRun {
        run_id: String,
        at: i64,
    },
    /// The attempt passed its task's deadline (checked again at apply against `at`).
    TimeOutAttempt {
        attempt: AttemptKey,
        at: i64,
    },
}
