//! What the leader decides each pass, from the replicated state: which ready steps to place
//! (in order), on which agents ([`placement`]), which time-outs are due and which tasks the
//! cache may serve. Pure: no I/O, no clock (the leader passes `now`).
//!
//! Order: higher run priority first, then older runs, then each run's tasks in the order they
//! became ready.

mod index;
pub(crate) mod matching;
mod placement;
mod placer;

pub use matching::gpu_model_matches;
pub use placement::{schedule, AgentView, CpuPolicy, GpuSlot, Plan};
pub use placer::Placer;

use std::collections::{BTreeMap, BTreeSet};

use gantry_model::{AgentId, ResourceRequest, RunId, TaskId};

use crate::engine::RunRecord;
use crate::state::{AgentRecord, ClusterState};

/// Why a ready step waits when no agent is placeable (none connected, or all lost).
pub const NO_AGENT: &str = "no agent is connected";

#[derive(Debug, Clone, PartialEq)]
pub struct ReadyStep {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub request: ResourceRequest,
}

/// Runs not yet ended, oldest first.
fn active_runs(state: &ClusterState) -> impl Iterator<Item = (&RunId, &RunRecord)> {
    state
        .run_order
        .iter()
        .filter_map(|(_, id)| state.runs.get(id).map(|r| (id, &**r)))
        .filter(|(_, r)| !r.state.is_terminal())
}

/// The active runs among `ids` (oldest first), or every active run when `ids` is `None`.
fn active_among<'a>(
    state: &'a ClusterState,
    ids: Option<impl Iterator<Item = &'a RunId> + 'a>,
) -> Box<dyn Iterator<Item = (&'a RunId, &'a RunRecord)> + 'a> {
    match ids {
        Some(ids) => Box::new(
            ids.filter_map(|id| state.runs.get(id).map(|r| (id, &**r)))
                .filter(|(_, r)| !r.state.is_terminal()),
        ),
        None => Box::new(active_runs(state)),
    }
}

/// The time-outs due at `now`: runs past their deadline, then attempts past their task's.
pub fn timeouts_due(state: &ClusterState, now: i64) -> Vec<crate::state::Command> {
    use crate::engine::{attempt_deadline, run_deadline, RunState};
    use crate::state::{AttemptKey, Command};
    let mut out = Vec::new();
    for (run_id, run) in active_among(state, state.watch.timed()) {
        if run.state != RunState::Canceling && run_deadline(run).is_some_and(|d| d <= now) {
            out.push(Command::TimeOutRun {
                run_id: run_id.clone(),
                at: now,
            });
            continue;
        }
        for (task_id, limit) in crate::engine::approval::overdue(run, now) {
            out.push(Command::DecideApproval {
                run_id: run_id.clone(),
                task_id,
                decision: crate::engine::approval::Decision {
                    approved: false,
                    by: "gantry".into(),
                    reason: format!(
                        "no decision within its approval timeout of {}",
                        crate::engine::human_ms(limit)
                    ),
                    at: now,
                },
            });
        }
        if run.limits.task_timeout_ms.is_empty() {
            continue;
        }
        for t in run.tasks.values() {
            if let Some((attempt, deadline)) = attempt_deadline(run, t) {
                if deadline <= now {
                    out.push(Command::TimeOutAttempt {
                        attempt: AttemptKey {
                            run_id: run_id.clone(),
                            task_id: t.task_id.clone(),
                            attempt,
                        },
                        at: now,
                    });
                }
            }
        }
    }
    out
}

/// A ready task that a cache entry may serve, once its artifacts are known to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheCandidate {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub key: String,
    pub artifact_uris: Vec<String>,
}

/// Ready tasks with a usable cache entry, oldest run first.
pub fn cache_candidates(state: &ClusterState, now: i64) -> Vec<CacheCandidate> {
    let mut out = Vec::new();
    if state.cache.is_empty() {
        return out;
    }
    for (run_id, run) in active_among(state, state.watch.caching()) {
        for t in run
            .ready_tasks()
            .filter(|t| !crate::engine::approval::awaiting(run, t))
        {
            let (Some(key), Some(entry)) = (
                t.cache_key.as_ref(),
                state.usable_cache_entry_for(run, t, now),
            ) else {
                continue;
            };
            out.push(CacheCandidate {
                run_id: run_id.clone(),
                task_id: t.task_id.clone(),
                key: key.clone(),
                artifact_uris: entry.artifact_uris().map(String::from).collect(),
            });
        }
    }
    out
}

/// The ready steps of every active run whose backoff has passed: higher run priority first,
/// then oldest run first.
pub fn ready_steps(state: &ClusterState, now: i64) -> Vec<ReadyStep> {
    let mut by_run: Vec<(i32, Vec<ReadyStep>)> = Vec::new();
    for (run_id, run) in active_runs(state) {
        let mut out = Vec::new();
        // A task with a usable cache entry waits for the leader's cache check instead.
        let mut ready: Vec<_> = run
            .ready_tasks()
            .filter(|t| t.not_before.is_none_or(|nb| nb <= now))
            .filter(|t| !crate::engine::approval::awaiting(run, t))
            .filter(|t| state.usable_cache_entry_for(run, t, now).is_none())
            .collect();
        ready.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.task_id.cmp(&b.task_id))
        });
        for t in ready {
            let request = crate::engine::task_resources(run, t).unwrap_or_default();
            out.push(ReadyStep {
                run_id: run_id.clone(),
                task_id: t.task_id.clone(),
                attempt: t.attempts.len() as u32 + 1,
                request,
            });
        }
        if !out.is_empty() {
            by_run.push((run.priority, out));
        }
    }
    // Stable: runs of equal priority keep their age order.
    by_run.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    by_run.into_iter().flat_map(|(_, steps)| steps).collect()
}

/// The agents in `connected` as placement sees them.
pub fn agent_views(state: &ClusterState, connected: &BTreeSet<AgentId>) -> Vec<AgentView> {
    state
        .agents
        .values()
        .filter(|a| is_placeable(a, connected))
        .map(agent_view)
        .collect()
}

/// Whether placement sees the agent at all: connected to this node and not declared lost.
fn is_placeable(a: &AgentRecord, connected: &BTreeSet<AgentId>) -> bool {
    connected.contains(&a.agent_id) && a.lost_at.is_none()
}

/// One agent as placement sees it.
fn agent_view(a: &AgentRecord) -> AgentView {
    AgentView {
        agent_id: a.agent_id.clone(),
        total_cpu: a.inventory.cpu_cores,
        free_cpu: (a.inventory.cpu_cores - a.cpu_allocated).max(0.0),
        total_memory: a.inventory.memory_bytes,
        free_memory: a.inventory.memory_bytes.saturating_sub(a.memory_allocated),
        gpus: a
            .inventory
            .gpus
            .iter()
            .map(|g| GpuSlot {
                uuid: g.uuid.clone(),
                model: g.name.clone(),
                healthy: g.healthy,
                in_use: a.gpus_in_use.contains_key(&g.uuid),
            })
            .collect(),
        labels: a.placement_labels(),
        taints: a.taints.clone(),
        accepting: !a.draining,
    }
}

/// Why each ready task of a run is waiting, for `gantry run get`.
pub fn waiting_reasons(plan: &Plan) -> BTreeMap<(RunId, TaskId), String> {
    plan.waiting
        .iter()
        .map(|(s, why)| ((s.run_id.clone(), s.task_id.clone()), why.clone()))
        .collect()
}

#[cfg(test)]
mod placer_tests;
#[cfg(test)]
mod tests;
