//! Placement: ready steps (in priority order) and the connected agents in, assignments out.
//! Pure: the same inputs always give the same plan.
//!
//! For each step, in order:
//! 1. **Filters.** An agent can *ever* run the step when it carries every label of the step's
//!    node selector, has no `NoSchedule`/`NoExecute` taint the step does not tolerate, and its
//!    total CPU, memory and number of GPUs of the requested model cover the request. It can run
//!    it *now* when, besides, it accepts work (not drained) and enough CPU, memory and healthy
//!    GPUs of that model are free. A step no connected agent could ever run is unschedulable
//!    (failed at once, with each agent's reason); one that fits nowhere now waits, with why.
//! 2. **Score.** GPU steps bin-pack: the agent left with the fewest free GPUs of that model wins,
//!    so whole hosts stay free for large requests. CPU-only steps prefer hosts without GPUs, then
//!    spread by free CPU (or pack, by policy). Untolerated `PreferNoSchedule` taints rank an
//!    agent last; ties go to the smaller agent id.
//! 3. **GPUs by UUID.** The step gets the first free healthy GPUs of its model, in the agent's
//!    order.
//! 4. **Reservation.** A waiting step that some agent could run once work there ends holds that
//!    agent's free resources (the agent nearest to fitting it) for the rest of the pass, so a
//!    stream of small steps behind it cannot starve a large GPU request.
//!
//! The best agent is found through the fleet index ([`super::index`]) in about log n steps
//! rather than by looking at every agent. Only a request shape that fits nowhere looks at the
//! whole fleet, once per pass, to put reasons into words and choose the agent it holds.

use std::collections::BTreeMap;
// Only for lookup-only memos: a map that is never iterated cannot leak its random order into
// a plan (core/clippy.toml bans the type otherwise).
#[allow(clippy::disallowed_types)]
use std::collections::HashMap;

use gantry_model::{ResourceRequest, Taint};

use super::index::{Fleet, Shape};
#[cfg(test)]
use super::matching::untolerated_preferences;
use super::matching::{blocking_taint, gpu_model_matches, missing_label};
use super::ReadyStep;
use crate::state::Placement;

/// One GPU of an agent as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSlot {
    pub uuid: String,
    /// NVML's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    pub healthy: bool,
    /// Assigned to a running attempt (or, within a pass, reserved).
    pub in_use: bool,
}

/// An agent as placement sees it: capacity, what is free, and what steps it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub agent_id: gantry_model::AgentId,
    pub total_cpu: f64,
    pub free_cpu: f64,
    pub total_memory: u64,
    pub free_memory: u64,
    pub gpus: Vec<GpuSlot>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// False while the agent is drained: it keeps its running steps and takes no new ones.
    pub accepting: bool,
}

/// How CPU-only steps choose among agents that fit them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuPolicy {
    /// The agent with the most free CPU: load spreads across hosts.
    #[default]
    Spread,
    /// The agent with the least free CPU that fits: hosts fill up one by one.
    BinPack,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// Steps left waiting, with the reason shown to users.
    pub waiting: Vec<(ReadyStep, String)>,
    /// Steps that no connected agent could ever run, with each agent's reason.
    pub unschedulable: Vec<(ReadyStep, String)>,
}

pub(super) const EPSILON: f64 = 1e-9;

fn gpu_label(r: &ResourceRequest) -> String {
    match r.accelerator_type.as_deref() {
        Some(t) if !t.is_empty() => format!("{} {t} GPU(s)", r.accelerator_count),
        _ => format!("{} GPU(s)", r.accelerator_count),
    }
}

impl AgentView {
    fn matching_gpus<'a>(&'a self, r: &'a ResourceRequest) -> impl Iterator<Item = &'a GpuSlot> {
        self.gpus
            .iter()
            .filter(move |g| gpu_model_matches(r.accelerator_type.as_deref(), &g.model))
    }

    fn free_gpus<'a>(&'a self, r: &'a ResourceRequest) -> impl Iterator<Item = &'a GpuSlot> {
        self.matching_gpus(r).filter(|g| g.healthy && !g.in_use)
    }

    /// Whether this agent could ever run `r` ([`Self::never_fits`] without the words). The
    /// index asks the same through its classes; the oracle asks here.
    #[cfg(test)]
    fn could_ever_fit(&self, r: &ResourceRequest) -> bool {
        r.cpu_reserved() <= self.total_cpu + EPSILON
            && r.memory_reserved() <= self.total_memory
            && (r.accelerator_count == 0
                || self.matching_gpus(r).count() >= r.accelerator_count as usize)
            && missing_label(&r.node_selector, &self.labels).is_none()
            && blocking_taint(&self.taints, &r.tolerations).is_none()
    }

    /// Whether it can run `r` now, given that it could ever ([`Self::busy`] without the words).
    #[cfg(test)]
    fn fits_now(&self, r: &ResourceRequest) -> bool {
        self.accepting
            && r.cpu_reserved() <= self.free_cpu + EPSILON
            && r.memory_reserved() <= self.free_memory
            && (r.accelerator_count == 0
                || self.free_gpus(r).count() >= r.accelerator_count as usize)
    }

    /// Why this agent could never run `r`, whatever ends on it.
    fn never_fits(&self, r: &ResourceRequest) -> Option<String> {
        if let Some(l) = missing_label(&r.node_selector, &self.labels) {
            return Some(format!("lacks label {l}"));
        }
        if let Some(t) = blocking_taint(&self.taints, &r.tolerations) {
            return Some(format!("taint {t} not tolerated"));
        }
        if r.cpu_reserved() > self.total_cpu + EPSILON {
            return Some(format!(
                "has {} CPU, needs {}",
                self.total_cpu,
                r.cpu_reserved()
            ));
        }
        if r.memory_reserved() > self.total_memory {
            return Some(format!(
                "has {} bytes of memory, needs {}",
                self.total_memory,
                r.memory_reserved()
            ));
        }
        if r.accelerator_count > 0 {
            let have = self.matching_gpus(r).count();
            if (have as u32) < r.accelerator_count {
                return Some(format!("has {have} of the {} needed", gpu_label(r)));
            }
        }
        None
    }

    /// Why this agent cannot run `r` now (it could once work on it ends or it is undrained).
    fn busy(&self, r: &ResourceRequest) -> Option<String> {
        if !self.accepting {
            return Some("drained".into());
        }
        if r.cpu_reserved() > self.free_cpu + EPSILON {
            return Some(format!(
                "{:.2} of {} CPU free",
                self.free_cpu.max(0.0),
                self.total_cpu
            ));
        }
        if r.memory_reserved() > self.free_memory {
            return Some(format!(
                "{} of {} bytes of memory free",
                self.free_memory, self.total_memory
            ));
        }
        if r.accelerator_count > 0 {
            let free = self.free_gpus(r).count();
            if (free as u32) < r.accelerator_count {
                let unhealthy = self.matching_gpus(r).filter(|g| !g.healthy).count();
                let sick = if unhealthy > 0 {
                    format!(", {unhealthy} unhealthy")
                } else {
                    String::new()
                };
                return Some(format!("{free} of the {} free{sick}", gpu_label(r)));
            }
        }
        None
    }

    /// Takes `r` (and the GPUs `gpus`) out of what is free.
    fn take(&mut self, r: &ResourceRequest, gpus: &[String]) {
        self.free_cpu -= r.cpu_reserved();
        self.free_memory = self.free_memory.saturating_sub(r.memory_reserved());
        for g in &mut self.gpus {
            if gpus.contains(&g.uuid) {
                g.in_use = true;
            }
        }
    }

    /// Takes `r` with the first free healthy GPUs of its model (as many as it asks for, or
    /// as are free), and returns their UUIDs.
    pub(super) fn take_with_gpus(&mut self, r: &ResourceRequest) -> Vec<String> {
        let gpus: Vec<String> = self
            .free_gpus(r)
            .take(r.accelerator_count as usize)
            .map(|g| g.uuid.clone())
            .collect();
        self.take(r, &gpus);
        gpus
    }
}

/// How many agents' reasons a message lists before it counts the rest.
const REASONS_SHOWN: usize = 4;

/// Agents' reasons for a message: the first [`REASONS_SHOWN`] in words, the rest counted.
#[derive(Default)]
struct Reasons {
    shown: Vec<String>,
    more: usize,
}

impl Reasons {
    fn add(&mut self, a: &AgentView, why: impl FnOnce() -> Option<String>) {
        if self.shown.len() < REASONS_SHOWN {
            let why = why().unwrap_or_default();
            self.shown.push(format!("{}: {why}", a.agent_id));
        } else {
            self.more += 1;
        }
    }

    fn summary(&self) -> String {
        let mut parts = self.shown.clone();
        if self.more > 0 {
            parts.push(format!("and {} more", self.more));
        }
        parts.join("; ")
    }
}

/// The ordering key of an agent that fits `r` now: smaller is better.
#[cfg(test)]
fn score(a: &AgentView, r: &ResourceRequest, policy: CpuPolicy) -> (usize, usize, i64, i64) {
    let penalty = untolerated_preferences(&a.taints, &r.tolerations);
    // CPU in millicores keeps the key integral (and so totally ordered).
    let milli = |c: f64| (c * 1000.0).round() as i64;
    if r.accelerator_count > 0 {
        let left = a.free_gpus(r).count() - r.accelerator_count as usize;
        (penalty, left, milli(a.free_cpu), 0)
    } else {
        let has_gpus = usize::from(!a.gpus.is_empty());
        let cpu = match policy {
            CpuPolicy::Spread => -milli(a.free_cpu),
            CpuPolicy::BinPack => milli(a.free_cpu),
        };
        (penalty, has_gpus, cpu, 0)
    }
}

/// Places `steps` (already in priority order) on `agents`.
pub fn schedule(steps: &[ReadyStep], agents: &[AgentView], policy: CpuPolicy) -> Plan {
    plan_pass(&mut Fleet::new(agents, policy), steps)
}

/// Places `steps` on `fleet`, leaving in it what the pass took (see [`Fleet::restore`]).
pub(super) fn plan_pass(fleet: &mut Fleet, steps: &[ReadyStep]) -> Plan {
    let mut plan = Plan::default();
    // Keyed by the request's whole content, so thousands of pending copies of a step share
    // one look at the classes, and once one found no room, its verdict.
    #[allow(clippy::disallowed_types)] // looked up, never iterated
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    for step in steps {
        if fleet.agents().is_empty() {
            plan.waiting
                .push((step.clone(), super::NO_AGENT.to_string()));
            continue;
        }
        let shape = shapes
            .entry(format!("{:?}", step.request))
            .or_insert_with(|| fleet.shape(&step.request));
        place(fleet, shape, step, &mut plan);
    }
    plan
}

/// Places one step, or records why it waits or can never run.
fn place(fleet: &mut Fleet, shape: &mut Shape, step: &ReadyStep, plan: &mut Plan) {
    // Within a pass free capacity only shrinks: a request that found no room (or could never
    // fit) finds none for every later step asking the same.
    if shape.verdict.is_none() {
        if let Some(i) = fleet.best(shape) {
            let gpus = fleet.take(i, &step.request);
            plan.placements.push(Placement {
                run_id: step.run_id.clone(),
                task_id: step.task_id.clone(),
                attempt: step.attempt,
                agent_id: fleet.agents()[i].agent_id.clone(),
                gpus,
            });
            return;
        }
        shape.verdict = Some(no_room(fleet, shape, &step.request));
    }
    if let Some((never, why)) = &shape.verdict {
        let entry = (step.clone(), why.clone());
        if *never {
            plan.unschedulable.push(entry);
        } else {
            plan.waiting.push(entry);
        }
    }
}

/// Why `r` fits no agent now, and whether none could ever run it. If some could, the accepting
/// one nearest to fitting it holds its free resources for `r`: nothing smaller may take them
/// in this pass. Looks at every agent, but once per request shape and pass.
fn no_room(fleet: &mut Fleet, shape: &Shape, r: &ResourceRequest) -> (bool, String) {
    // Only the reasons a message shows are put into words; the rest are counted.
    let mut never = Reasons::default();
    let mut busy = Reasons::default();
    let mut any_busy = false;
    let mut nearest: Option<usize> = None;
    for (i, a) in fleet.agents().iter().enumerate() {
        if !fleet.could_ever_fit(i, shape, r) {
            never.add(a, || a.never_fits(r));
            continue;
        }
        busy.add(a, || a.busy(r));
        any_busy = true;
        // The last of equals wins, as `Iterator::max_by` chose before.
        if a.accepting && nearest.is_none_or(|n| nearer(fleet, shape, i, n).is_ge()) {
            nearest = Some(i);
        }
    }
    if !any_busy {
        let why = format!("no connected agent could ever run it: {}", never.summary());
        return (true, why);
    }
    if let Some(i) = nearest {
        fleet.take(i, r);
    }
    (false, format!("waiting for capacity: {}", busy.summary()))
}

/// How agent `x` compares with `y` in nearness to fitting: most free GPUs of the model, then
/// most free CPU, then memory, then the smaller id.
fn nearer(fleet: &Fleet, shape: &Shape, x: usize, y: usize) -> std::cmp::Ordering {
    let (a, b) = (&fleet.agents()[x], &fleet.agents()[y]);
    fleet
        .free_gpus(x, shape)
        .cmp(&fleet.free_gpus(y, shape))
        .then(a.free_cpu.total_cmp(&b.free_cpu))
        .then(a.free_memory.cmp(&b.free_memory))
        .then(b.agent_id.cmp(&a.agent_id))
}

/// The scheduler as it was before the index: every agent looked at for every step. Kept as
/// the oracle the indexed [`schedule`] must agree with.
#[cfg(test)]
pub(super) fn schedule_naive(steps: &[ReadyStep], agents: &[AgentView], policy: CpuPolicy) -> Plan {
    let mut agents: Vec<AgentView> = agents.to_vec();
    // Ties go to the smaller id, whatever order the agents came in.
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let mut plan = Plan::default();
    // Within a pass free capacity only shrinks: a request that found no room (or could never
    // fit) finds none for every later step asking the same. Keyed by the request's whole
    // content, so thousands of pending copies of a step cost one look at the fleet.
    #[allow(clippy::disallowed_types)] // looked up, never iterated
    let mut no_room: HashMap<String, (bool, String)> = HashMap::new();
    for step in steps {
        let r = &step.request;
        if agents.is_empty() {
            plan.waiting
                .push((step.clone(), super::NO_AGENT.to_string()));
            continue;
        }
        let key = format!("{r:?}");
        if let Some((never, why)) = no_room.get(&key) {
            let entry = (step.clone(), why.clone());
            if *never {
                plan.unschedulable.push(entry);
            } else {
                plan.waiting.push(entry);
            }
            continue;
        }
        // First without words: most steps fit somewhere, and the reasons are only needed when
        // none does.
        let mut best: Option<(usize, (usize, usize, i64, i64))> = None;
        for (i, a) in agents.iter().enumerate() {
            if a.fits_now(r) && a.could_ever_fit(r) {
                let s = score(a, r, policy);
                if best.as_ref().is_none_or(|(_, b)| s < *b) {
                    best = Some((i, s));
                }
            }
        }
        // Only the reasons a message shows are put into words; the rest are counted.
        let mut never = Reasons::default();
        let mut busy = Reasons::default();
        let mut busy_agents = Vec::new();
        if best.is_none() {
            for (i, a) in agents.iter().enumerate() {
                if !a.could_ever_fit(r) {
                    never.add(a, || a.never_fits(r));
                } else {
                    busy.add(a, || a.busy(r));
                    busy_agents.push(i);
                }
            }
        }
        if let Some((i, _)) = best {
            let agent = &mut agents[i];
            let gpus = agent.take_with_gpus(r);
            plan.placements.push(Placement {
                run_id: step.run_id.clone(),
                task_id: step.task_id.clone(),
                attempt: step.attempt,
                agent_id: agent.agent_id.clone(),
                gpus,
            });
            continue;
        }
        if busy_agents.is_empty() {
            let why = format!("no connected agent could ever run it: {}", never.summary());
            no_room.insert(key, (true, why.clone()));
            plan.unschedulable.push((step.clone(), why));
            continue;
        }
        // The accepting agent nearest to fitting: most free GPUs of the model, then most free
        // CPU, then memory.
        let nearest = busy_agents
            .iter()
            .filter(|i| agents[**i].accepting)
            .max_by(|x, y| {
                let (a, b) = (&agents[**x], &agents[**y]);
                a.free_gpus(r)
                    .count()
                    .cmp(&b.free_gpus(r).count())
                    .then(a.free_cpu.total_cmp(&b.free_cpu))
                    .then(a.free_memory.cmp(&b.free_memory))
                    .then(b.agent_id.cmp(&a.agent_id))
            })
            .copied();
        if let Some(i) = nearest {
            // Held for this step: nothing smaller may take it in this pass.
            agents[i].take_with_gpus(r);
        }
        let why = format!("waiting for capacity: {}", busy.summary());
        no_room.insert(key, (false, why.clone()));
        plan.waiting.push((step.clone(), why));
    }
    plan
}
