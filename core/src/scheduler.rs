//! Placement: ready steps and agents with free capacity in, assignments out. Pure.
//!
//! Runs are served first-in first-out (oldest run first, then each run's tasks in the order
//! they became ready); each step goes to the connected agent with the most free CPU among
//! those it fits on, so load spreads across hosts. GPU models, labels, taints and priorities
//! come with the fleet-scheduling work.

use std::collections::{BTreeMap, BTreeSet};

use gantry_model::ResourceRequest;

use crate::engine::RunRecord;
use crate::state::{ClusterState, Placement};

#[derive(Debug, Clone, PartialEq)]
pub struct ReadyStep {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub request: ResourceRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentCapacity {
    pub agent_id: String,
    pub free_cpu: f64,
    pub free_memory: u64,
    pub free_gpus: u32,
    pub total_cpu: f64,
    pub total_memory: u64,
    pub total_gpus: u32,
}

impl AgentCapacity {
    fn fits(&self, r: &ResourceRequest) -> bool {
        r.cpu_reserved() <= self.free_cpu + 1e-9
            && r.memory_reserved() <= self.free_memory
            && r.accelerator_count <= self.free_gpus
    }

    fn could_ever_fit(&self, r: &ResourceRequest) -> bool {
        r.cpu_reserved() <= self.total_cpu + 1e-9
            && r.memory_reserved() <= self.total_memory
            && r.accelerator_count <= self.total_gpus
    }

    fn take(&mut self, r: &ResourceRequest) {
        self.free_cpu -= r.cpu_reserved();
        self.free_memory -= r.memory_reserved();
        self.free_gpus -= r.accelerator_count;
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Steps left waiting, with the reason shown to users.
    pub waiting: Vec<(ReadyStep, String)>,
}

/// Places `steps` (in priority order) on `agents`.
pub fn schedule(steps: &[ReadyStep], agents: &[AgentCapacity]) -> Plan {
    let mut agents: Vec<AgentCapacity> = agents.to_vec();
    let mut plan = Plan::default();
    for step in steps {
        let best = agents
            .iter_mut()
            .filter(|a| a.fits(&step.request))
            .max_by(|a, b| {
                a.free_cpu
                    .total_cmp(&b.free_cpu)
                    // deterministic tie-break: the smaller id wins
                    .then_with(|| b.agent_id.cmp(&a.agent_id))
            });
        match best {
            Some(agent) => {
                agent.take(&step.request);
                plan.placements.push(Placement {
                    run_id: step.run_id.clone(),
                    task_id: step.task_id.clone(),
                    attempt: step.attempt,
                    agent_id: agent.agent_id.clone(),
                });
            }
            None => {
                let why = if agents.is_empty() {
                    "no agent is connected".to_string()
                } else if agents.iter().any(|a| a.could_ever_fit(&step.request)) {
                    "waiting for free capacity".to_string()
                } else {
                    format!(
                        "no connected agent is large enough (needs {} CPU, {} bytes memory, {} GPUs)",
                        step.request.cpu_reserved(),
                        step.request.memory_reserved(),
                        step.request.accelerator_count
                    )
                };
                plan.waiting.push((step.clone(), why));
            }
        }
    }
    plan
}

/// Runs not yet ended, oldest first.
fn active_runs(state: &ClusterState) -> impl Iterator<Item = (&String, &RunRecord)> {
    state
        .run_order
        .iter()
        .filter_map(|(_, id)| state.runs.get(id).map(|r| (id, &**r)))
        .filter(|(_, r)| !r.state.is_terminal())
}

/// The time-outs due at `now`: runs past their deadline, then attempts past their task's.
pub fn timeouts_due(state: &ClusterState, now: i64) -> Vec<crate::state::Command> {
    use crate::engine::{attempt_deadline, run_deadline, RunState};
    use crate::state::{AttemptKey, Command};
    let mut out = Vec::new();
    for (run_id, run) in active_runs(state) {
        if run.state != RunState::Canceling && run_deadline(run).is_some_and(|d| d <= now) {
            out.push(Command::TimeOutRun {
                run_id: run_id.clone(),
                at: now,
            });
            continue;
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
    pub run_id: String,
    pub task_id: String,
    pub key: String,
    pub artifact_uris: Vec<String>,
}

/// Ready tasks with a usable cache entry, oldest run first.
pub fn cache_candidates(state: &ClusterState, now: i64) -> Vec<CacheCandidate> {
    let mut out = Vec::new();
    for (run_id, run) in active_runs(state) {
        for t in run.ready_tasks() {
            let (Some(key), Some(entry)) = (
                t.cache_key.as_ref(),
                state.usable_cache_entry(run_id, &t.task_id, now),
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

/// The ready steps of every active run whose backoff has passed, oldest run first.
pub fn ready_steps(state: &ClusterState, now: i64) -> Vec<ReadyStep> {
    let mut out = Vec::new();
    for (run_id, run) in active_runs(state) {
        // A task with a usable cache entry waits for the leader's cache check instead.
        let mut ready: Vec<_> = run
            .ready_tasks()
            .filter(|t| t.not_before.is_none_or(|nb| nb <= now))
            .filter(|t| state.usable_cache_entry(run_id, &t.task_id, now).is_none())
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
    }
    out
}

/// Free capacity of the agents in `connected`.
pub fn agent_capacity(state: &ClusterState, connected: &BTreeSet<String>) -> Vec<AgentCapacity> {
    state
        .agents
        .values()
        .filter(|a| connected.contains(&a.agent_id))
        .map(|a| AgentCapacity {
            agent_id: a.agent_id.clone(),
            free_cpu: (a.inventory.cpu_cores - a.cpu_allocated).max(0.0),
            free_memory: a.inventory.memory_bytes.saturating_sub(a.memory_allocated),
            free_gpus: (a.inventory.gpus.len() as u32).saturating_sub(a.gpus_allocated),
            total_cpu: a.inventory.cpu_cores,
            total_memory: a.inventory.memory_bytes,
            total_gpus: a.inventory.gpus.len() as u32,
        })
        .collect()
}

/// Why each ready task of a run is waiting, for `gantry run get`.
pub fn waiting_reasons(plan: &Plan) -> BTreeMap<(String, String), String> {
    plan.waiting
        .iter()
        .map(|(s, why)| ((s.run_id.clone(), s.task_id.clone()), why.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, cpu: f64, mem: u64, gpus: u32) -> AgentCapacity {
        AgentCapacity {
            agent_id: id.into(),
            free_cpu: cpu,
            free_memory: mem,
            free_gpus: gpus,
            total_cpu: cpu,
            total_memory: mem,
            total_gpus: gpus,
        }
    }

    fn step(id: &str, cpu: f64, mem: u64, gpus: u32) -> ReadyStep {
        ReadyStep {
            run_id: "r".into(),
            task_id: id.into(),
            attempt: 1,
            request: ResourceRequest {
                cpu_request: Some(cpu),
                memory_request_bytes: Some(mem),
                accelerator_count: gpus,
                ..Default::default()
            },
        }
    }

    #[test]
    fn never_oversubscribes_an_agent() {
        let agents = vec![agent("a", 4.0, 8 << 30, 1), agent("b", 2.0, 4 << 30, 0)];
        let steps: Vec<_> = (0..20)
            .map(|i| step(&format!("t{i}"), 1.0, 1 << 30, i % 2))
            .collect();
        let plan = schedule(&steps, &agents);
        for a in &agents {
            let mine: Vec<_> = plan
                .placements
                .iter()
                .filter(|p| p.agent_id == a.agent_id)
                .map(|p| &steps[p.task_id[1..].parse::<usize>().unwrap()].request)
                .collect();
            let cpu: f64 = mine.iter().map(|r| r.cpu_reserved()).sum();
            let mem: u64 = mine.iter().map(|r| r.memory_reserved()).sum();
            let gpus: u32 = mine.iter().map(|r| r.accelerator_count).sum();
            assert!(cpu <= a.total_cpu && mem <= a.total_memory && gpus <= a.total_gpus);
        }
        assert_eq!(plan.placements.len(), 6);
        assert_eq!(plan.waiting.len(), 14);
    }

    #[test]
    fn explains_steps_that_can_never_fit() {
        let plan = schedule(&[step("big", 64.0, 1, 0)], &[agent("a", 4.0, 1 << 30, 0)]);
        assert!(
            plan.waiting[0].1.contains("large enough"),
            "{:?}",
            plan.waiting
        );
        let plan = schedule(&[step("x", 1.0, 1, 0)], &[]);
        assert_eq!(plan.waiting[0].1, "no agent is connected");
    }

    #[test]
    fn spreads_by_free_cpu_with_stable_ties() {
        let plan = schedule(
            &[step("t0", 1.0, 0, 0), step("t1", 1.0, 0, 0)],
            &[agent("b", 2.0, 0, 0), agent("a", 2.0, 0, 0)],
        );
        assert_eq!(plan.placements[0].agent_id, "a");
        assert_eq!(plan.placements[1].agent_id, "b");
    }
}
