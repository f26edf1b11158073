//! The leader's placer: the fleet index kept across passes, so a pass costs what changed
//! since the last one (agents whose [`AgentRecord::changes`] moved, each O(log n)) and what it
//! places, plus one scan of the agents' change counters, instead of rebuilding the index of
//! every agent each pass.
//!
//! Its plans are exactly those of [`schedule`](super::schedule) on
//! [`agent_views`](super::agent_views) of the same state and connected agents: the index holds
//! the same agents in the same order with the same capacity, and a pass's takes are put back
//! at its end. Changes that move an agent between classes or views (drain, taints, labels,
//! GPU models) or change which agents are placeable (registration, loss, connection) rebuild
//! the index: they are rare next to placements and results.

use std::collections::BTreeSet;

use gantry_model::AgentId;

use super::index::Fleet;
use super::placement::{plan_pass, CpuPolicy, Plan};
use super::{agent_view, agent_views, is_placeable, ReadyStep};
use crate::state::ClusterState;

/// Views the index may hold before it drops them all: each distinct node selector and GPU
/// mask gets one per class, and each costs every later update of its members.
const MAX_VIEWS: usize = 512;

/// The fleet index kept across passes. Pure: no I/O, clock or randomness.
pub struct Placer {
    policy: CpuPolicy,
    fleet: Fleet,
    /// Per agent of the state, in id order: its change counter when last read, and its
    /// position in the fleet if placeable.
    seen: Vec<(u64, Option<usize>)>,
    /// The connected agents as of `generation`.
    connected: BTreeSet<AgentId>,
    generation: Option<u64>,
    /// Whether the fleet was ever built from a state.
    built: bool,
}

impl Placer {
    pub fn new(policy: CpuPolicy) -> Self {
        Self {
            policy,
            fleet: Fleet::new(&[], policy),
            seen: Vec::new(),
            connected: BTreeSet::new(),
            generation: None,
            built: false,
        }
    }

    /// Brings the index up to date with `state` and the connected agents. `generation` moves
    /// whenever the connected set does; `connected` is asked for only then.
    pub fn sync(
        &mut self,
        state: &ClusterState,
        generation: u64,
        connected: impl FnOnce() -> BTreeSet<AgentId>,
    ) {
        let reconnected = self.generation != Some(generation);
        if reconnected {
            self.connected = connected();
            self.generation = Some(generation);
        }
        let patched = self.built
            && state.agents.len() == self.seen.len()
            && !(reconnected && self.membership_moved(state))
            && self.patch(state);
        if !patched {
            self.rebuild(state);
        }
        if self.fleet.view_count() > MAX_VIEWS {
            self.fleet.forget_views();
        }
    }

    /// Whether any agent was placeable as of the last [`Self::sync`].
    pub fn has_agents(&self) -> bool {
        !self.fleet.agents().is_empty()
    }

    /// Places `steps` (in priority order) on the agents as of the last [`Self::sync`].
    pub fn schedule(&mut self, steps: &[ReadyStep]) -> Plan {
        let plan = plan_pass(&mut self.fleet, steps);
        self.fleet.restore();
        plan
    }

    /// Whether the connected set now makes another set of agents placeable.
    fn membership_moved(&self, state: &ClusterState) -> bool {
        state
            .agents
            .values()
            .zip(&self.seen)
            .any(|(a, (_, pos))| is_placeable(a, &self.connected) != pos.is_some())
    }

    /// Moves every changed agent in place; false if one cannot be (the index must be rebuilt).
    /// Relies on the state never forgetting an agent: same length, same agents in order.
    fn patch(&mut self, state: &ClusterState) -> bool {
        for (a, seen) in state.agents.values().zip(self.seen.iter_mut()) {
            if a.changes == seen.0 {
                continue;
            }
            if is_placeable(a, &self.connected) != seen.1.is_some() {
                return false;
            }
            if let Some(i) = seen.1 {
                let view = agent_view(a);
                if !self.fleet.can_replace(i, &view) {
                    return false;
                }
                self.fleet.set_agent(i, view);
            }
            seen.0 = a.changes;
        }
        true
    }

    fn rebuild(&mut self, state: &ClusterState) {
        // `agent_views` lists agents in id order, as the fleet keeps them.
        self.fleet = Fleet::new(&agent_views(state, &self.connected), self.policy);
        let mut next = 0;
        self.seen = state
            .agents
            .values()
            .map(|a| {
                let pos = is_placeable(a, &self.connected).then(|| {
                    next += 1;
                    next - 1
                });
                (a.changes, pos)
            })
            .collect();
        self.built = true;
    }
}
