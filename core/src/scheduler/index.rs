//! The fleet index placement searches instead of looking at every agent for every step.
//!
//! Agents fall into *classes* that placement cannot tell apart by their static traits: whether
//! they accept work, their taints and the set of their GPU models. A request either may use a
//! whole class or none of it, and ranks every member with the same `PreferNoSchedule` penalty.
//! Within a class, a *view* holds the members one kind of request may use (those whose labels
//! carry its node selector), ordered by the rest of placement's score, in a treap whose subtrees
//! also know the most GPUs, CPU and memory free below them. The best member that fits is then
//! the first in key order that fits, found by entering only the subtrees that could hold one:
//! about log n steps (log² n where CPU and memory disagree) instead of n.
//!
//! Views are built the first time a request needs them and follow every placement and
//! reservation after that, so a placement costs O(classes · log n) and an update
//! O(views holding the agent · log n). The leader's [`super::Placer`] keeps a fleet across
//! passes: what a pass takes is put back at its end ([`Fleet::restore`]), and agents whose
//! committed state changed are moved in place ([`Fleet::set_agent`]).

use std::collections::BTreeMap;

use gantry_model::{ResourceRequest, Taint};

use super::matching::{blocking_taint, gpu_model_matches, has_labels, untolerated_preferences};
use super::placement::{AgentView, CpuPolicy, EPSILON};

/// A slot that holds no node.
const NIL: u32 = u32::MAX;

/// The order of a view: smaller is better. The last field is the agent's position in the
/// fleet sorted by id, so keys are unique and ties go to the smaller id.
type Key = (i64, i64, usize);

/// What one agent offers a view: free GPUs of the view's models, CPU and memory free and total.
#[derive(Debug, Clone, Copy, Default)]
struct Room {
    gpus: usize,
    cpu: f64,
    cpu_total: f64,
    mem: u64,
    mem_total: u64,
}

/// The most any node of a subtree offers in each dimension: a node below can fit a need only
/// if this covers it.
#[derive(Debug, Clone, Copy)]
struct Reach {
    gpus: usize,
    cpu: f64,
    mem: u64,
}

impl Reach {
    fn of(r: &Room) -> Self {
        Self {
            gpus: r.gpus,
            cpu: r.cpu.min(r.cpu_total),
            mem: r.mem.min(r.mem_total),
        }
    }

    fn max(self, o: Self) -> Self {
        Self {
            gpus: self.gpus.max(o.gpus),
            cpu: self.cpu.max(o.cpu),
            mem: self.mem.max(o.mem),
        }
    }
}

/// What a step asks of an agent, in the terms of [`Room`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Need {
    gpus: usize,
    cpu: f64,
    mem: u64,
}

impl Need {
    pub(super) fn of(r: &ResourceRequest) -> Self {
        Self {
            gpus: r.accelerator_count as usize,
            cpu: r.cpu_reserved(),
            mem: r.memory_reserved(),
        }
    }

    /// Placement's own test of free and total capacity (the class settles the rest), written
    /// the same way so that rounding decides alike.
    fn fits(&self, r: &Room) -> bool {
        (self.gpus == 0 || r.gpus >= self.gpus)
            && self.cpu <= r.cpu + EPSILON
            && self.cpu <= r.cpu_total + EPSILON
            && self.mem <= r.mem
            && self.mem <= r.mem_total
    }

    fn may_fit(&self, r: &Reach) -> bool {
        r.gpus >= self.gpus && self.cpu <= r.cpu + EPSILON && self.mem <= r.mem
    }
}

#[derive(Debug, Clone, Copy)]
struct Node {
    key: Key,
    room: Room,
    reach: Reach,
    left: u32,
    right: u32,
    /// In this view at all (its labels carry the selector); fixed for the pass.
    member: bool,
}

impl Default for Node {
    fn default() -> Self {
        let room = Room::default();
        Self {
            key: (0, 0, 0),
            room,
            reach: Reach::of(&room),
            left: NIL,
            right: NIL,
            member: false,
        }
    }
}

/// A fixed pseudo-random priority per slot (splitmix64, a bijection): the tree's shape is
/// balanced in expectation and the same on every run.
fn priority(slot: u32) -> u64 {
    let mut z = u64::from(slot).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An ordered set of a class's members (by slot) with subtree maxima. Slots are the members'
/// positions in the class, so every view of a class numbers its nodes alike.
#[derive(Debug)]
struct Treap {
    nodes: Vec<Node>,
    root: u32,
}

impl Treap {
    fn new(slots: usize) -> Self {
        Self {
            nodes: vec![Node::default(); slots],
            root: NIL,
        }
    }

    fn node(&self, t: u32) -> Option<&Node> {
        self.nodes.get(t as usize)
    }

    fn reach(&self, t: u32) -> Option<Reach> {
        self.node(t).map(|n| n.reach)
    }

    /// Recomputes `t`'s subtree maxima from its children.
    fn pull(&mut self, t: u32) {
        let n = self.nodes[t as usize];
        let mut reach = Reach::of(&n.room);
        for child in [n.left, n.right] {
            if let Some(r) = self.reach(child) {
                reach = reach.max(r);
            }
        }
        self.nodes[t as usize].reach = reach;
    }

    /// Adds a member, or moves it to its new key and room.
    fn put(&mut self, slot: u32, key: Key, room: Room) {
        if self.nodes[slot as usize].member {
            self.root = self.remove_at(self.root, slot);
        }
        let n = &mut self.nodes[slot as usize];
        *n = Node {
            key,
            room,
            reach: Reach::of(&room),
            left: NIL,
            right: NIL,
            member: true,
        };
        self.root = self.insert_at(self.root, slot);
    }

    fn insert_at(&mut self, t: u32, slot: u32) -> u32 {
        if t == NIL {
            return slot;
        }
        let key = self.nodes[slot as usize].key;
        if priority(slot) > priority(t) {
            let (l, r) = self.split(t, key);
            let n = &mut self.nodes[slot as usize];
            n.left = l;
            n.right = r;
            self.pull(slot);
            return slot;
        }
        let n = self.nodes[t as usize];
        if key < n.key {
            self.nodes[t as usize].left = self.insert_at(n.left, slot);
        } else {
            self.nodes[t as usize].right = self.insert_at(n.right, slot);
        }
        self.pull(t);
        t
    }

    /// Splits the subtree at `t` into the keys below `key` and the rest.
    fn split(&mut self, t: u32, key: Key) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let n = self.nodes[t as usize];
        if n.key < key {
            let (l, r) = self.split(n.right, key);
            self.nodes[t as usize].right = l;
            self.pull(t);
            (t, r)
        } else {
            let (l, r) = self.split(n.left, key);
            self.nodes[t as usize].left = r;
            self.pull(t);
            (l, t)
        }
    }

    /// Joins two subtrees, every key of `a` below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if priority(a) > priority(b) {
            let right = self.nodes[a as usize].right;
            self.nodes[a as usize].right = self.merge(right, b);
            self.pull(a);
            a
        } else {
            let left = self.nodes[b as usize].left;
            self.nodes[b as usize].left = self.merge(a, left);
            self.pull(b);
            b
        }
    }

    fn remove_at(&mut self, t: u32, slot: u32) -> u32 {
        let Some(n) = self.node(t).copied() else {
            return NIL;
        };
        if t == slot {
            return self.merge(n.left, n.right);
        }
        if self.nodes[slot as usize].key < n.key {
            self.nodes[t as usize].left = self.remove_at(n.left, slot);
        } else {
            self.nodes[t as usize].right = self.remove_at(n.right, slot);
        }
        self.pull(t);
        t
    }

    /// The member with the smallest key that fits `need`.
    fn first_fit(&self, need: &Need) -> Option<Key> {
        self.first_at(self.root, need)
    }

    fn first_at(&self, t: u32, need: &Need) -> Option<Key> {
        let n = self.node(t)?;
        if !need.may_fit(&n.reach) {
            return None;
        }
        self.first_at(n.left, need)
            .or_else(|| need.fits(&n.room).then_some(n.key))
            .or_else(|| self.first_at(n.right, need))
    }
}

/// Which ordering a view keeps.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// CPU-only steps: spread or pack by free CPU.
    Cpu,
    /// GPU steps of the class models marked: fewest such GPUs free first, then least CPU.
    Gpu(Vec<bool>),
}

#[derive(Debug)]
struct View {
    kind: Kind,
    selector: BTreeMap<String, String>,
    tree: Treap,
}

#[derive(Debug)]
struct Class {
    /// The first member: it speaks for the class's taints, drain state and GPU models.
    rep: usize,
    members: Vec<usize>,
    /// The distinct models of the members' GPUs, sorted.
    models: Vec<String>,
    views: Vec<View>,
}

/// Where an agent sits in the index, and its GPUs counted by its class's models.
#[derive(Debug)]
struct Home {
    class: usize,
    slot: u32,
    free: Vec<usize>,
    total: Vec<usize>,
    /// The views of its class that hold it.
    views: Vec<usize>,
}

/// How a class stands towards one request.
#[derive(Debug, Clone)]
struct ClassFit {
    /// No `NoSchedule`/`NoExecute` taint of the class blocks the request.
    open: bool,
    /// Which of the class's models the request's accelerator type matches.
    mask: Vec<bool>,
}

/// A class view worth searching for a request, with the part of the score the class fixes.
#[derive(Debug, Clone)]
struct Target {
    class: usize,
    view: usize,
    rank: (usize, usize),
}

/// One request content as placement sees it in this pass: worked out once, then shared by
/// every step asking exactly the same.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    need: Need,
    classes: Vec<ClassFit>,
    targets: Vec<Target>,
    /// Once it found no room: whether no agent could ever run it, and why it waits.
    pub(super) verdict: Option<(bool, String)>,
}

/// The agents of a pass, sorted by id, with their index. Owns their free capacity as the pass
/// takes it.
pub(super) struct Fleet {
    agents: Vec<AgentView>,
    homes: Vec<Home>,
    classes: Vec<Class>,
    policy: CpuPolicy,
    /// The agents this pass took from, as they were before: put back at its end, so a
    /// persistent fleet never carries one pass's tentative takes into the next.
    saved: BTreeMap<usize, AgentView>,
}

fn sum_marked(counts: &[usize], mask: &[bool]) -> usize {
    counts
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(c, _)| *c)
        .sum()
}

/// CPU in millicores, as placement's score has it: integral, so totally ordered.
fn milli(c: f64) -> i64 {
    (c * 1000.0).round() as i64
}

fn distinct_models(a: &AgentView) -> Vec<String> {
    let mut models: Vec<String> = a.gpus.iter().map(|g| g.model.clone()).collect();
    models.sort();
    models.dedup();
    models
}

/// GPUs per model of `models`: all of them, and those healthy and not in use.
fn count_gpus(a: &AgentView, models: &[String]) -> (Vec<usize>, Vec<usize>) {
    let mut total = vec![0; models.len()];
    let mut free = vec![0; models.len()];
    for g in &a.gpus {
        if let Ok(m) = models.binary_search(&g.model) {
            total[m] += 1;
            free[m] += usize::from(g.healthy && !g.in_use);
        }
    }
    (total, free)
}

impl Fleet {
    pub(super) fn new(agents: &[AgentView], policy: CpuPolicy) -> Self {
        let mut agents: Vec<AgentView> = agents.to_vec();
        // Ties go to the smaller id, whatever order the agents came in.
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut fleet = Self {
            agents,
            homes: Vec::new(),
            classes: Vec::new(),
            policy,
            saved: BTreeMap::new(),
        };
        fleet.classify();
        fleet
    }

    fn classify(&mut self) {
        let mut by_traits: BTreeMap<(bool, Vec<Taint>, Vec<String>), usize> = BTreeMap::new();
        for (i, a) in self.agents.iter().enumerate() {
            let models = distinct_models(a);
            let (total, free) = count_gpus(a, &models);
            let traits = (a.accepting, a.taints.clone(), models);
            let class = *by_traits
                .entry(traits)
                .or_insert_with_key(|(_, _, models)| {
                    self.classes.push(Class {
                        rep: i,
                        members: Vec::new(),
                        models: models.clone(),
                        views: Vec::new(),
                    });
                    self.classes.len() - 1
                });
            let members = &mut self.classes[class].members;
            self.homes.push(Home {
                class,
                slot: members.len() as u32,
                free,
                total,
                views: Vec::new(),
            });
            members.push(i);
        }
    }

    pub(super) fn agents(&self) -> &[AgentView] {
        &self.agents
    }

    /// Works out how each class stands towards `r`, building the views it needs.
    pub(super) fn shape(&mut self, r: &ResourceRequest) -> Shape {
        let need = Need::of(r);
        let mut classes = Vec::with_capacity(self.classes.len());
        let mut targets = Vec::new();
        for c in 0..self.classes.len() {
            let class = &self.classes[c];
            let rep = &self.agents[class.rep];
            let fit = ClassFit {
                open: blocking_taint(&rep.taints, &r.tolerations).is_none(),
                mask: class
                    .models
                    .iter()
                    .map(|m| gpu_model_matches(r.accelerator_type.as_deref(), m))
                    .collect(),
            };
            // A drained class never fits now, and a GPU step needs a model it has.
            if fit.open && rep.accepting && (need.gpus == 0 || fit.mask.contains(&true)) {
                let (kind, bias) = if need.gpus == 0 {
                    (Kind::Cpu, usize::from(!rep.gpus.is_empty()))
                } else {
                    (Kind::Gpu(fit.mask.clone()), 0)
                };
                let penalty = untolerated_preferences(&rep.taints, &r.tolerations);
                targets.push(Target {
                    class: c,
                    view: self.view(c, kind, &r.node_selector),
                    rank: (penalty, bias),
                });
            }
            classes.push(fit);
        }
        Shape {
            need,
            classes,
            targets,
            verdict: None,
        }
    }

    /// The view of class `c` for `kind` and `selector`, built now if no request needed it yet.
    fn view(&mut self, c: usize, kind: Kind, selector: &BTreeMap<String, String>) -> usize {
        let class = &self.classes[c];
        if let Some(v) = class
            .views
            .iter()
            .position(|v| v.kind == kind && &v.selector == selector)
        {
            return v;
        }
        let v = class.views.len();
        let mut tree = Treap::new(class.members.len());
        for &i in &class.members {
            if has_labels(selector, &self.agents[i].labels) {
                let (key, room) = self.entry(i, &kind);
                tree.put(self.homes[i].slot, key, room);
                self.homes[i].views.push(v);
            }
        }
        self.classes[c].views.push(View {
            kind,
            selector: selector.clone(),
            tree,
        });
        v
    }

    /// Agent `i`'s key and room in a view of `kind`.
    fn entry(&self, i: usize, kind: &Kind) -> (Key, Room) {
        let a = &self.agents[i];
        let mut room = Room {
            gpus: 0,
            cpu: a.free_cpu,
            cpu_total: a.total_cpu,
            mem: a.free_memory,
            mem_total: a.total_memory,
        };
        let cpu = milli(a.free_cpu);
        let key = match kind {
            Kind::Gpu(mask) => {
                room.gpus = sum_marked(&self.homes[i].free, mask);
                (room.gpus as i64, cpu, i)
            }
            // Wrapping, as the plain negation it stands for does in a release build.
            Kind::Cpu if self.policy == CpuPolicy::Spread => (0, cpu.wrapping_neg(), i),
            Kind::Cpu => (0, cpu, i),
        };
        (key, room)
    }

    /// The agent that fits `shape` now with the best score, if any.
    pub(super) fn best(&self, shape: &Shape) -> Option<usize> {
        shape
            .targets
            .iter()
            .filter_map(|t| {
                let view = &self.classes[t.class].views[t.view];
                view.tree.first_fit(&shape.need).map(|key| (t.rank, key))
            })
            .min()
            .map(|(_, (_, _, i))| i)
    }

    /// Whether agent `i` could ever run the request of `shape`, whatever ends on it.
    pub(super) fn could_ever_fit(&self, i: usize, shape: &Shape, r: &ResourceRequest) -> bool {
        let (a, home) = (&self.agents[i], &self.homes[i]);
        let fit = &shape.classes[home.class];
        let need = &shape.need;
        fit.open
            && need.cpu <= a.total_cpu + EPSILON
            && need.mem <= a.total_memory
            && (need.gpus == 0 || sum_marked(&home.total, &fit.mask) >= need.gpus)
            && has_labels(&r.node_selector, &a.labels)
    }

    /// How many healthy GPUs of the request's model agent `i` has free.
    pub(super) fn free_gpus(&self, i: usize, shape: &Shape) -> usize {
        let home = &self.homes[i];
        sum_marked(&home.free, &shape.classes[home.class].mask)
    }

    /// Takes `r` on agent `i` (see [`AgentView::take_with_gpus`]) and moves the agent in every
    /// view that holds it.
    pub(super) fn take(&mut self, i: usize, r: &ResourceRequest) -> Vec<String> {
        self.saved
            .entry(i)
            .or_insert_with(|| self.agents[i].clone());
        let gpus = self.agents[i].take_with_gpus(r);
        self.reindex(i);
        gpus
    }

    /// Recounts agent `i`'s GPUs and moves it in every view that holds it.
    fn reindex(&mut self, i: usize) {
        let c = self.homes[i].class;
        let (total, free) = count_gpus(&self.agents[i], &self.classes[c].models);
        self.homes[i].free = free;
        self.homes[i].total = total;
        let slot = self.homes[i].slot;
        for k in 0..self.homes[i].views.len() {
            let v = self.homes[i].views[k];
            let (key, room) = self.entry(i, &self.classes[c].views[v].kind);
            self.classes[c].views[v].tree.put(slot, key, room);
        }
    }

    /// Puts back what the pass took, as if the fleet were built afresh from the same agents.
    pub(super) fn restore(&mut self) {
        for (i, a) in std::mem::take(&mut self.saved) {
            self.agents[i] = a;
            self.reindex(i);
        }
    }

    /// Whether `a` can replace agent `i` in place: same id and the same traits that decide its
    /// class and the views holding it (drain state, taints, GPU models, labels).
    pub(super) fn can_replace(&self, i: usize, a: &AgentView) -> bool {
        let old = &self.agents[i];
        old.agent_id == a.agent_id
            && old.accepting == a.accepting
            && old.taints == a.taints
            && old.labels == a.labels
            && distinct_models(old) == distinct_models(a)
    }

    /// Replaces agent `i` (see [`Self::can_replace`]) with its capacity and GPUs as now.
    pub(super) fn set_agent(&mut self, i: usize, a: AgentView) {
        debug_assert!(self.saved.is_empty(), "set between passes only");
        self.agents[i] = a;
        self.reindex(i);
    }

    /// How many views the classes hold.
    pub(super) fn view_count(&self) -> usize {
        self.classes.iter().map(|c| c.views.len()).sum()
    }

    /// Drops every view: they are built again as requests need them.
    pub(super) fn forget_views(&mut self) {
        for c in &mut self.classes {
            c.views.clear();
        }
        for h in &mut self.homes {
            h.views.clear();
        }
    }
}
