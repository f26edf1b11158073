//! Timeouts: a run that outlives its `--timeout` fails, stopping what still runs; an attempt
//! that outlives its task's timeout fails (and may be retried), its container stopped.
//!
//! The clock stays outside: the leader compares these deadlines with its `now` and proposes
//! the time-out, which the state machine checks again against the time the command carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::cancel_run_because;
use super::{RunRecord, RunState, TaskKind, TaskRecord, TaskState};

/// Limits chosen at submit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLimits {
    /// The whole run, from its creation (ms).
    pub timeout_ms: Option<i64>,
    /// Each attempt of the task with this IR name, from its assignment (ms).
    pub task_timeout_ms: BTreeMap<String, i64>,
    /// Most tasks the run may create (the coordinator's `--max-tasks-per-run` when it was
    /// submitted): a loop that would go over it fails when it starts. `None` for runs created
    /// before the limit existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tasks: Option<u64>,
    /// How long the run is kept once finished (ms; `gantry submit --ttl`), instead of the
    /// coordinator's `--retain-runs-for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
    /// The evaluation budget of each CEL condition and selector of the run (the coordinator's
    /// `--cel-evaluation-budget` when it was submitted), recorded so that every replica stops
    /// an expensive expression at the same point. `None`: [`crate::ir::cel::DEFAULT_BUDGET`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel_budget: Option<u64>,
}

impl RunLimits {
    /// The CEL evaluation budget of the run.
    pub fn cel_budget(&self) -> u64 {
        self.cel_budget.unwrap_or(crate::ir::cel::DEFAULT_BUDGET)
    }
}

/// `90000` → `1m30s`, for messages.
pub fn human_ms(ms: i64) -> String {
    let (mut rest, mut out) = (ms.max(0), String::new());
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if rest >= len {
            out.push_str(&format!("{}{unit}", rest / len));
            rest %= len;
        }
    }
    if rest > 0 || out.is_empty() {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

/// When the run must be over, if it has a timeout.
pub fn run_deadline(run: &RunRecord) -> Option<i64> {
    run.limits
        .timeout_ms
        .map(|t| run.restarted_at.unwrap_or(run.created_at) + t)
}

/// When the current attempt of `task` must be over, if it is running and its task has a
/// timeout.
pub fn attempt_deadline(run: &RunRecord, task: &TaskRecord) -> Option<(u32, i64)> {
    if task.kind != TaskKind::Container || task.state != TaskState::Running {
        return None;
    }
    let limit = run.limits.task_timeout_ms.get(&task.name)?;
    let a = task.attempts.last().filter(|a| a.outcome.is_none())?;
    Some((a.number, a.assigned_at + limit))
}

/// Fails a run past its deadline at `now`: tasks not running are canceled, the returned
/// running attempts (task id, attempt, agent) must be stopped, and the run ends FAILED once
/// they report. Nothing happens before the deadline or to a run already ending.
pub fn time_out_run(
    run: &mut RunRecord,
    now: i64,
) -> Option<Vec<(gantry_model::TaskId, u32, gantry_model::AgentId)>> {
    let deadline = run_deadline(run)?;
    if now < deadline || run.state.is_terminal() || run.state == RunState::Canceling {
        return None;
    }
    let limit = run.limits.timeout_ms.unwrap_or_default();
    run.timed_out = Some(format!(
        "the run exceeded its timeout of {}",
        human_ms(limit)
    ));
    Some(cancel_run_because(run, now, "run timed out"))
}
