//! Retention: which finished runs and long-lost agents the leader removes, by policy.
//!
//! The leader asks [`runs_to_remove`] and [`agents_to_forget`] what is due and proposes the
//! answer as [`Command::RemoveRuns`](super::Command::RemoveRuns) and
//! [`Command::ForgetLostAgents`](super::Command::ForgetLostAgents); apply checks again that
//! each is still finished (or still lost and idle), so a plan made on an older state never
//! removes a run that was retried meanwhile.

use std::collections::BTreeSet;

use gantry_model::{AgentId, RunId};

use super::ClusterState;

/// How long finished runs are kept, and how many of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionPolicy {
    /// A finished run is removed this long after it finished (ms), unless it has a ttl of its
    /// own ([`RunLimits::ttl_ms`](crate::engine::RunLimits::ttl_ms)). `None`: kept for ever.
    pub retain_runs_for_ms: Option<i64>,
    /// At most this many finished runs are kept; the ones that finished first go first.
    pub max_finished_runs: Option<usize>,
    /// An agent lost (and idle) for this long is forgotten (ms); it registers again if it
    /// comes back. `None`: kept for ever.
    pub forget_lost_agents_after_ms: Option<i64>,
}

impl RetentionPolicy {
    /// Whether nothing is ever removed (no run has a ttl of its own either, then nothing to do
    /// unless some run carries one).
    pub fn keeps_everything(&self) -> bool {
        self.retain_runs_for_ms.is_none()
            && self.max_finished_runs.is_none()
            && self.forget_lost_agents_after_ms.is_none()
    }
}

/// Finished runs due for removal at `now`, at most `batch` of them: the ones past their ttl
/// (their own, else the policy's), then the oldest finished beyond the policy's count.
pub fn runs_to_remove(
    state: &ClusterState,
    policy: &RetentionPolicy,
    now: i64,
    batch: usize,
) -> Vec<RunId> {
    let busy = state.runs_on_agents();
    // (finished_at, run id) of every finished run, oldest first.
    let mut finished: Vec<(i64, &RunId)> = state
        .runs
        .values()
        .filter(|r| r.state.is_terminal() && !busy.contains(&r.run_id))
        .filter_map(|r| r.finished_at.map(|at| (at, &r.run_id)))
        .collect();
    finished.sort_unstable();
    let mut due: BTreeSet<&RunId> = BTreeSet::new();
    for (finished_at, run_id) in &finished {
        let ttl = state
            .runs
            .get(*run_id)
            .and_then(|r| r.limits.ttl_ms)
            .or(policy.retain_runs_for_ms);
        if ttl.is_some_and(|ttl| finished_at.saturating_add(ttl) <= now) {
            due.insert(run_id);
        }
    }
    if let Some(max) = policy.max_finished_runs {
        let over = finished.len().saturating_sub(max);
        for (_, run_id) in finished.iter().take(over) {
            due.insert(run_id);
        }
    }
    // Oldest first, so a batch limit removes in order.
    finished
        .iter()
        .filter(|(_, id)| due.contains(id))
        .take(batch)
        .map(|(_, id)| (*id).clone())
        .collect()
}

/// Agents lost longer than the policy allows and running nothing, at most `batch`.
pub fn agents_to_forget(
    state: &ClusterState,
    policy: &RetentionPolicy,
    now: i64,
    batch: usize,
) -> Vec<AgentId> {
    let Some(after) = policy.forget_lost_agents_after_ms else {
        return Vec::new();
    };
    state
        .agents
        .values()
        .filter(|a| a.running.is_empty())
        .filter(|a| a.lost_at.is_some_and(|at| at.saturating_add(after) <= now))
        .take(batch)
        .map(|a| a.agent_id.clone())
        .collect()
}
