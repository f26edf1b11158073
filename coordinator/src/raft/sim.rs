//! A deterministic, single-threaded simulation of a Raft cluster: N nodes running the real
//! Ready-loop code ([`Node`]) over in-memory logs and snapshots, a simulated network that drops,
//! delays, reorders and partitions, and a manual tick. A seed replays a run exactly: raft-rs's
//! election timeouts are pinned per node, and every other choice comes from the seeded
//! generator below.
//!
//! Invariants checked after every step:
//! - at most one leader per term;
//! - an index, once applied anywhere, holds the same data everywhere, forever;
//! - a proposer that hears back gets the outcome of its own entry.
//!
//! The tests are in `sim/tests.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::{mpsc, Arc, Mutex, RwLock};

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Message,
    MessageType,
};
use tokio::sync::oneshot;

use super::handle::{Mail, RaftHandle};
use super::node::{
    Fatal, Feedback, Node, NodeConfig, NodeStatus, Parts, SnapshotWrites, StateMachine, Transport,
};
use super::{MemLogStore, MemSnapshots, Members, RaftError, RaftStorage, SnapshotWriter};

mod tests;

/// xorshift64*: small, fast and good enough to pick delays and drops from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a proposal's entry holds: the state machine echoes it back with its index.
pub type Output = (u64, Vec<u8>);

/// The test state machine: the list of applied (index, data). A command starting with
/// `poison` cannot be applied (as an undecodable command cannot).
struct ListMachine {
    applied: Arc<Mutex<Vec<Output>>>,
}

impl StateMachine for ListMachine {
    type Output = Output;

    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Output, Fatal> {
        if data.starts_with(b"poison") {
            return Err(Fatal(format!("cannot apply entry {index}")));
        }
        self.applied.lock().unwrap().push((index, data.to_vec()));
        Ok((index, data.to_vec()))
    }

    /// A list holding an entry starting with `unsnapshottable` writes a snapshot that does not
    /// decode.
    fn snapshot(&self) -> SnapshotWriter {
        let copy = self.applied.lock().unwrap().clone();
        if copy.iter().any(|(_, d)| d.starts_with(b"unsnapshottable")) {
            return Box::new(|w| w.write_all(b"[not json"));
        }
        Box::new(move |w| serde_json::to_writer(w, &copy).map_err(std::io::Error::from))
    }

    fn check(r: &mut dyn Read) -> std::io::Result<()> {
        let _: Vec<Output> = serde_json::from_reader(r)?;
        Ok(())
    }

    fn restore(&mut self, r: &mut dyn Read) -> std::io::Result<()> {
        let list: Vec<Output> = serde_json::from_reader(r)?;
        *self.applied.lock().unwrap() = list;
        Ok(())
    }
}

/// Messages a node sent since the simulation last looked.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<Message>>>);

struct SimTransport {
    outbox: Outbox,
}

impl Transport for SimTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        self.outbox.0.lock().unwrap().extend(msgs);
    }

    fn set_members(&mut self, _members: &Members) {}
}

/// One simulated coordinator: what survives a crash (log, snapshots) and what does not.
struct SimNode {
    id: u64,
    store: MemLogStore,
    snaps: MemSnapshots,
    running: Option<Running>,
}

struct Running {
    node: Node<ListMachine, SimTransport>,
    mailbox: mpsc::Receiver<Mail<Output>>,
    handle: RaftHandle<Output>,
    outbox: Outbox,
    applied: Arc<Mutex<Vec<Output>>>,
}

/// A proposal whose answer is awaited.
pub struct Waiting {
    pub node: u64,
    pub data: Vec<u8>,
    rx: oneshot::Receiver<Result<Output, RaftError>>,
}

/// How a proposal ended, as its caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Applied(u64),
    Refused(String),
    /// The node died before answering.
    Lost,
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Percent of messages lost.
    pub drop_percent: u64,
    /// A message arrives 0 to `max_delay` steps after it was sent (so later ones may pass it).
    pub max_delay: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            drop_percent: 0,
            max_delay: 1,
        }
    }
}

pub struct Sim {
    pub rng: Rng,
    nodes: BTreeMap<u64, SimNode>,
    cfg: NodeConfig,
    pub net: NetConfig,
    /// Pairs (from, to) whose messages are lost.
    cut: BTreeSet<(u64, u64)>,
    in_flight: Vec<(u64, Message)>,
    /// Steps so far; every step is one tick of every node.
    step: u64,
    /// Index → data, as first applied anywhere.
    applied: BTreeMap<u64, Vec<u8>>,
    leaders: HashMap<u64, u64>,
    pub answers: Vec<(Vec<u8>, Answer)>,
    waiting: Vec<Waiting>,
    /// Nodes stopped by a fatal error, with the error and their last status.
    pub fatal: BTreeMap<u64, (Fatal, NodeStatus)>,
    /// Snapshots that reached their node.
    pub snapshots_delivered: u64,
    /// Nodes whose own snapshot writes are not reported back for now (a slow writer thread).
    holding_snapshot_results: BTreeSet<u64>,
    held: Vec<(u64, Mail<Output>)>,
    next_nonce: u64,
}

impl Sim {
    /// `voters` nodes that start as one cluster, numbered 1..=voters.
    pub fn new(seed: u64, voters: u64, snapshot_entries: u64) -> Sim {
        let members: Members = (1..=voters).map(|id| (id, format!("sim-{id}"))).collect();
        let mut sim = Sim::empty(seed, snapshot_entries);
        for id in 1..=voters {
            sim.add_node(id, members.clone());
        }
        sim
    }

    pub fn empty(seed: u64, snapshot_entries: u64) -> Sim {
        Sim {
            rng: Rng::new(seed),
            nodes: BTreeMap::new(),
            cfg: NodeConfig {
                election_tick: 10,
                heartbeat_tick: 2,
                snapshot_entries,
                ..NodeConfig::default()
            },
            net: NetConfig::default(),
            cut: BTreeSet::new(),
            in_flight: Vec::new(),
            step: 0,
            applied: BTreeMap::new(),
            leaders: HashMap::new(),
            answers: Vec::new(),
            waiting: Vec::new(),
            fatal: BTreeMap::new(),
            snapshots_delivered: 0,
            holding_snapshot_results: BTreeSet::new(),
            held: Vec::new(),
            next_nonce: 1,
        }
    }

    /// Adds node `id`; with `initial` empty it waits to be joined.
    pub fn add_node(&mut self, id: u64, initial: Members) {
        self.nodes.insert(
            id,
            SimNode {
                id,
                store: MemLogStore::default(),
                snaps: MemSnapshots::default(),
                running: None,
            },
        );
        self.boot(id, initial);
    }

    fn boot(&mut self, id: u64, initial: Members) {
        // Each node gets its own fixed timeout, so elections rarely tie and a seed replays.
        let base = (10 + 4 * (id % 8) + self.rng.below(4)) as usize;
        let cfg = NodeConfig {
            id,
            initial_members: initial,
            election_range: Some((base, base + 1)),
            ..self.cfg.clone()
        };
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let n = self.nodes.get_mut(&id).unwrap();
        let (tx, rx) = mpsc::channel();
        let handle = RaftHandle {
            tx,
            status: Arc::new(RwLock::new(NodeStatus {
                id,
                ..Default::default()
            })),
        };
        let outbox = Outbox::default();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let parts = Parts {
            store: RaftStorage::open(Arc::new(n.store.clone())).unwrap(),
            snaps: Arc::new(n.snaps.clone()),
            sm: ListMachine {
                applied: applied.clone(),
            },
            transport: SimTransport {
                outbox: outbox.clone(),
            },
            nonce,
            snapshot_writes: SnapshotWrites::Inline,
        };
        let node = Node::new(cfg, parts, &handle).unwrap();
        n.running = Some(Running {
            node,
            mailbox: rx,
            handle,
            outbox,
            applied,
        });
    }

    /// Kills node `id` (what it persisted stays) and starts it again at once.
    pub fn restart(&mut self, id: u64) {
        self.crash(id);
        self.boot(id, Members::new());
    }

    /// Kills node `id`: its memory is gone, its log and snapshots stay.
    pub fn crash(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.running = None;
        }
    }

    pub fn handle(&self, id: u64) -> RaftHandle<Output> {
        self.running(id).handle.clone()
    }

    fn running(&self, id: u64) -> &Running {
        self.nodes[&id].running.as_ref().unwrap()
    }

    pub fn status(&self, id: u64) -> NodeStatus {
        self.running(id).handle.status()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The ids of the nodes that are up.
    pub fn up(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn leader(&self) -> Option<u64> {
        self.up().into_iter().find(|id| self.status(*id).is_leader)
    }

    /// What node `id` has applied, in order.
    pub fn applied(&self, id: u64) -> Vec<Output> {
        self.running(id).applied.lock().unwrap().clone()
    }

    /// Cuts both directions between `a` and every node of `others`.
    pub fn isolate(&mut self, a: u64) {
        for b in self.ids() {
            if b != a {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    pub fn partition(&mut self, side: &[u64]) {
        for a in self.ids() {
            for b in self.ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Keeps node `id`'s finished snapshot writes from reaching it, as a slow writer thread
    /// would, until [`Self::release_snapshot_results`].
    pub fn hold_snapshot_results(&mut self, id: u64) {
        self.holding_snapshot_results.insert(id);
    }

    pub fn release_snapshot_results(&mut self, id: u64) {
        self.holding_snapshot_results.remove(&id);
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(n, _)| *n == id);
        self.held = others;
        if let Some(r) = self.nodes.get(&id).and_then(|n| n.running.as_ref()) {
            for (_, mail) in mine {
                let _ = r.handle.tx.send(mail);
            }
        }
    }

    /// Proposes `data` on node `id`; the answer is checked when it comes.
    pub fn propose(&mut self, id: u64, data: &[u8]) {
        let h = self.handle(id);
        let data = data.to_vec();
        let d = data.clone();
        let rx = h.mail(|reply| Mail::Propose { data: d, reply });
        self.waiting.push(Waiting { node: id, data, rx });
    }

    /// Proposes a membership change on node `id` and returns the receiver of its answer.
    pub fn change(
        &mut self,
        id: u64,
        kind: ConfChangeType,
        node: u64,
    ) -> oneshot::Receiver<Result<ConfState, RaftError>> {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = node;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Implicit);
        cc.set_changes(vec![single].into());
        let members: Members = [(node, format!("sim-{node}"))].into();
        cc.context = serde_json::to_vec(&members).unwrap().into();
        self.handle(id).mail(|reply| Mail::ConfChange { cc, reply })
    }

    /// Asks node `id` for a ReadIndex barrier.
    pub fn read_index(&mut self, id: u64) -> oneshot::Receiver<Result<(), RaftError>> {
        self.handle(id).mail(|reply| Mail::ReadIndex { reply })
    }

    /// One step: deliver due messages, let every node handle its mail and run its Ready, tick,
    /// then check the invariants.
    pub fn run_step(&mut self) {
        self.step += 1;
        self.deliver();
        for id in self.up() {
            let n = self.nodes.get_mut(&id).unwrap();
            let r = n.running.as_mut().unwrap();
            let hold = self.holding_snapshot_results.contains(&id);
            while let Ok(mail) = r.mailbox.try_recv() {
                if hold && matches!(mail, Mail::SnapshotWritten { .. }) {
                    self.held.push((id, mail));
                    continue;
                }
                if !r.node.handle(mail) {
                    break;
                }
            }
            r.node.tick();
            let result = r.node.on_ready();
            let sent: Vec<Message> = std::mem::take(&mut *r.outbox.0.lock().unwrap());
            if let Err(f) = result {
                r.node.stop(Some(f.clone()));
                self.fatal.insert(id, (f, r.handle.status()));
                n.running = None;
                continue;
            }
            for m in sent {
                self.send(m);
            }
        }
        self.collect_answers();
        self.check();
    }

    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.run_step();
        }
    }

    /// Runs until `done` holds, at most `limit` steps; false if it never did.
    pub fn run_until(&mut self, limit: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..limit {
            if done(self) {
                return true;
            }
            self.run_step();
        }
        done(self)
    }

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.rng.chance(self.net.drop_percent) {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.feedback(
                    m.from,
                    Feedback::SnapshotSent {
                        to: m.to,
                        ok: false,
                    },
                );
            }
            return;
        }
        let at = self.step + self.rng.below(self.net.max_delay + 1);
        self.in_flight.push((at, m));
    }

    fn feedback(&self, id: u64, f: Feedback) {
        if let Some(r) = self.nodes.get(&id).and_then(|n| n.running.as_ref()) {
            r.handle.feedback(f);
        }
    }

    fn deliver(&mut self) {
        let now = self.step;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.in_flight = later;
        for (_, m) in due {
            let (from, to) = (m.from, m.to);
            let up = self.nodes.get(&to).is_some_and(|n| n.running.is_some());
            if !up || self.cut.contains(&(from, to)) {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.feedback(from, Feedback::SnapshotSent { to, ok: false });
                }
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // The transport streams the snapshot's bytes before the message itself.
                let meta = m.get_snapshot().get_metadata();
                let Some(bytes) = self.nodes[&from].snaps.bytes(meta.term, meta.index) else {
                    self.feedback(from, Feedback::SnapshotSent { to, ok: false });
                    continue;
                };
                self.nodes[&to].snaps.put(meta.term, meta.index, bytes);
                self.snapshots_delivered += 1;
                let _ = self.handle(to).step(m);
                self.feedback(from, Feedback::SnapshotSent { to, ok: true });
            } else {
                let _ = self.handle(to).step(m);
            }
        }
    }

    fn collect_answers(&mut self) {
        let mut still = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            let answer = match w.rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {
                    still.push(w);
                    continue;
                }
                Err(oneshot::error::TryRecvError::Closed) => Answer::Lost,
                Ok(Err(e)) => Answer::Refused(e.to_string()),
                Ok(Ok((index, data))) => {
                    assert_eq!(
                        data, w.data,
                        "the proposer on node {} got entry {index}'s outcome, not its own",
                        w.node
                    );
                    Answer::Applied(index)
                }
            };
            self.answers.push((w.data, answer));
        }
        self.waiting = still;
    }

    /// True once every proposal was answered.
    pub fn all_answered(&self) -> bool {
        self.waiting.is_empty()
    }

    fn check(&mut self) {
        for id in self.up() {
            let s = self.status(id);
            if s.is_leader {
                let prev = *self.leaders.entry(s.term).or_insert(id);
                assert_eq!(prev, id, "two leaders in term {}: {prev} and {id}", s.term);
            }
            for (index, data) in self.applied(id) {
                let first = self.applied.entry(index).or_insert_with(|| data.clone());
                assert_eq!(
                    *first, data,
                    "node {id} applied other data at index {index} than another node"
                );
            }
        }
    }

    /// The data of every proposal that was answered `Applied`.
    pub fn acknowledged(&self) -> Vec<Vec<u8>> {
        self.answers
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Applied(_)))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Runs until every up node follows one leader and has applied as far as it committed, and
    /// the leader has committed at least what any node knows to be committed (a new leader
    /// learns of entries committed in an earlier term only once it commits one of its own).
    pub fn settle(&mut self, limit: u64) -> bool {
        self.run_until(limit, |s| {
            let Some(l) = s.leader() else { return false };
            let commit = s.status(l).commit_index;
            s.up().iter().all(|id| {
                let st = s.status(*id);
                st.applied_index >= commit && st.leader_id == l && st.commit_index <= commit
            })
        })
    }
}
