//! The one owner of `raft::RawNode`: the Ready loop. In the server a dedicated thread runs it
//! ([`start`]); the simulation (`sim`) calls the same [`Node`] methods step by step.
//!
//! Order per Ready (raft-rs's documented order, as in TiKV): send messages; install a received
//! snapshot; persist entries and hard state in one flushed batch; send persisted messages;
//! apply committed entries and answer their proposers; advance. Proposals are drained from the
//! mailbox before each Ready, so many proposals share one fsync (group commit).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot, SnapshotMetadata,
};
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use super::handle::{Mail, RaftHandle, Reply};
use super::proposals::Waiters;
use super::snapshots::{SnapshotStore, SnapshotWriter};
use super::storage::{Members, RaftStorage};
use super::RaftError;

/// What the node applies committed entries to.
pub trait StateMachine: Send + 'static {
    type Output: Send + 'static;
    /// Applies one committed normal entry. Must be deterministic. An error means the entry
    /// cannot be applied here at all (an undecodable command, say): the node stops rather than
    /// diverge from replicas that could apply it.
    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Self::Output, Fatal>;
    /// Decodes a snapshot's state without keeping it: a snapshot is checked this way before
    /// the log behind it is compacted, and before a received one is used.
    fn check(r: &mut dyn Read) -> std::io::Result<()>
    where
        Self: Sized;
    /// A copy of the current state, to be written to a snapshot on another thread.
    fn snapshot(&self) -> SnapshotWriter;
    /// Replaces the whole state with a snapshot's.
    fn restore(&mut self, r: &mut dyn Read) -> std::io::Result<()>;
}

/// Delivers Raft messages to peers. Never blocks the Raft thread.
pub trait Transport: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
    /// The address book changed (membership change or snapshot).
    fn set_members(&mut self, members: &Members);
}

/// What the transport tells the node back.
#[derive(Debug)]
pub enum Feedback {
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    /// A peer that is not (yet) in our address book told us where it is.
    PeerAddress {
        id: u64,
        address: String,
    },
}

pub type FeedbackSink = Arc<dyn Fn(Feedback) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick_interval: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Take a snapshot (and compact the log) after this many applied entries.
    pub snapshot_entries: u64,
    /// A fresh store starts with these voters; empty means "wait to be added to a cluster".
    pub initial_members: Members,
    /// The election timeout is drawn from `[min, max)` ticks; `None` is raft-rs's default
    /// `[election_tick, 2 × election_tick)`. The simulation fixes it per node so that a seed
    /// replays exactly.
    pub election_range: Option<(usize, usize)>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            tick_interval: Duration::from_millis(100),
            election_tick: 6,
            heartbeat_tick: 1,
            snapshot_entries: gantry_model::limits::DEFAULT_SNAPSHOT_ENTRIES,
            initial_members: Members::new(),
            election_range: None,
        }
    }
}

/// Heartbeat intervals without word from the leader after which a follower stops naming it.
const SILENT_HEARTBEATS: usize = 3;

/// What the node reports about itself, for status and leader checks.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub snapshot_index: u64,
    pub is_leader: bool,
    /// LEADER, FOLLOWER, CANDIDATE, PRE_CANDIDATE, LEARNER
    pub role: &'static str,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while a change is joint: they still vote.
    pub outgoing: Vec<u64>,
    /// True while a membership change is in its joint phase.
    pub in_joint: bool,
    pub members: Members,
    /// On the leader: the highest index known replicated on each member.
    pub matched: BTreeMap<u64, u64>,
    /// On a follower: nothing heard from `leader_id` for several heartbeats (it may be dead or
    /// cut off), so clients should not be sent there while the election timer runs out.
    pub leader_silent: bool,
    /// The node's thread has ended (shut down, or stopped by a fatal error): it leads nothing
    /// and answers nothing.
    pub stopped: bool,
    /// The node could not write its log for want of space, since this long ago (its reason):
    /// it refuses writes, stays silent to its peers, and tries again every
    /// [`DISK_FULL_RETRY`] until the write goes through.
    pub disk_full: Option<String>,
}

/// A snapshot costs time in proportion to the whole state, on every node. Past this size the
/// next one also waits until the entries applied since add up to as many bytes, so writing
/// snapshots costs at most a byte per byte of log however large the state grows (a 200 MB
/// state is written once per 200 MB of log rather than every `snapshot_entries` entries),
/// and the log behind a snapshot stays within the state's size.
pub const BIG_SNAPSHOT: u64 = 16 << 20;

/// Whether a snapshot is due after `entries` entries of `bytes` bytes were applied since the
/// last one, which was `last_bytes` long (0: none written since the node started).
fn snapshot_due(entries: u64, every: u64, last_bytes: u64, bytes: u64) -> bool {
    entries >= every && (last_bytes <= BIG_SNAPSHOT || bytes >= last_bytes)
}

/// How often a node whose disk is full tries to write the Ready it holds again.
pub const DISK_FULL_RETRY: Duration = Duration::from_millis(500);

/// A Ready whose entries and hard state could not be written for want of space: kept, and
/// written again later, since raft-rs hands out each entry in one Ready only.
struct Stalled {
    rd: raft::Ready,
    reason: String,
    since: Instant,
    next_try: Instant,
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let msg = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}"),
            _ => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

/// A failure after which the node cannot go on without risking what it promised: storage that
/// cannot be written, a committed entry that cannot be applied. The node stops.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

pub(super) fn fatal(e: impl std::fmt::Display) -> Fatal {
    Fatal(e.to_string())
}

/// Where snapshot bodies are written: on their own thread (the server), or at once on the
/// caller's (the simulation, so that a seed replays exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SnapshotWrites {
    Background,
    #[cfg_attr(not(test), allow(dead_code))]
    Inline,
}

/// The running node: its handle, and its thread, which ends with the error that stopped it.
pub type Started<O> = (RaftHandle<O>, std::thread::JoinHandle<Result<(), Fatal>>);

/// What a new node is made of besides its configuration.
pub(super) struct Parts<S, T> {
    pub store: RaftStorage,
    pub snaps: Arc<dyn SnapshotStore>,
    pub sm: S,
    pub transport: T,
    /// Distinguishes this incarnation's ReadIndex requests from an earlier process's whose
    /// answers may still be in flight.
    pub nonce: u64,
    pub snapshot_writes: SnapshotWrites,
}

/// The Ready loop's state. It is driven by [`start`]'s thread in the server, and step by step by
/// the deterministic simulation; both run the same methods.
pub(super) struct Node<S: StateMachine, T: Transport> {
    cfg: NodeConfig,
    raw: RawNode<RaftStorage>,
    store: RaftStorage,
    snaps: Arc<dyn SnapshotStore>,
    sm: S,
    transport: T,
    /// The node's own mailbox, for replies from its snapshot writer.
    mailbox: mpsc::Sender<Mail<S::Output>>,
    /// Callers of `propose`, by their entry's (term, index).
    proposals: Waiters<S::Output>,
    /// Callers of `change_membership`, likewise.
    conf_changes: Waiters<ConfState>,
    /// ReadIndex requests sent to the leader, by sequence number (`nonce` + sequence is the
    /// request context).
    reads: HashMap<u64, Reply<()>>,
    /// ReadIndex answers waiting for apply to reach their index.
    reads_waiting: Vec<(u64, Reply<()>)>,
    read_seq: u64,
    nonce: u64,
    status: Arc<RwLock<NodeStatus>>,
    /// A snapshot is being written; no second one starts meanwhile.
    snapshotting: bool,
    snapshot_writes: SnapshotWrites,
    /// Index of the newest snapshot this node holds.
    last_snapshot: u64,
    /// The index of the last snapshot that failed (to write, or to decode): the next try waits
    /// for another `snapshot_entries` entries, instead of cloning the state on every Ready.
    snapshot_failed_at: u64,
    /// The size of the last snapshot this node wrote (0: none since it started), and the
    /// bytes of the entries it applied since (see [`BIG_SNAPSHOT`]).
    last_snapshot_bytes: u64,
    applied_bytes: u64,
    /// Set while the disk is full (see [`NodeStatus::disk_full`]).
    stalled: Option<Stalled>,
}

/// A legacy single change in the V2 shape (we only propose V2; peers of other versions might not).
fn v1_to_v2(cc: ConfChange) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(cc.get_change_type());
    single.node_id = cc.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![single].into());
    v2.context = cc.context;
    v2
}

fn read_context(nonce: u64, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&nonce.to_be_bytes());
    ctx.extend_from_slice(&seq.to_be_bytes());
    ctx
}

/// The sequence number of a ReadIndex context made by this incarnation (`nonce`), if it is one.
fn read_seq_of(nonce: u64, ctx: &[u8]) -> Option<u64> {
    let n: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
    let s: [u8; 8] = ctx.get(8..16)?.try_into().ok()?;
    (u64::from_be_bytes(n) == nonce && ctx.len() == 16).then(|| u64::from_be_bytes(s))
}

/// Starts a node on its own thread. A fresh store takes `cfg.initial_members` as its voters; a
/// store that already has a configuration ignores it. The thread ends on shutdown, or with the
/// fatal error that stopped the node (its status then says `stopped`, and every waiting caller
/// was answered).
pub fn start<S: StateMachine, T: Transport>(
    cfg: NodeConfig,
    store: RaftStorage,
    snaps: Arc<dyn SnapshotStore>,
    sm: S,
    make_transport: impl FnOnce(FeedbackSink) -> T,
) -> Result<Started<S::Output>, RaftError> {
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(RwLock::new(NodeStatus {
        id: cfg.id,
        ..Default::default()
    }));
    let handle = RaftHandle {
        tx: tx.clone(),
        status,
    };
    let sink: FeedbackSink = {
        let h = handle.clone();
        Arc::new(move |f| h.feedback(f))
    };
    let parts = Parts {
        store,
        snaps,
        sm,
        transport: make_transport(sink),
        nonce: uuid::Uuid::new_v4().as_u64_pair().0,
        snapshot_writes: SnapshotWrites::Background,
    };
    let mut node = Node::new(cfg.clone(), parts, &handle)?;
    let tick = cfg.tick_interval;
    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || {
            let result = node.run(rx, tick);
            node.stop(result.clone().err());
            result
        })
        .map_err(|e| RaftError::Storage(e.to_string()))?;
    Ok((handle, thread))
}

impl<S: StateMachine, T: Transport> Node<S, T> {
    /// Opens the node over what `parts.store` holds: the state machine is loaded from the
    /// newest snapshot, and raft-rs replays the log after it.
    pub(super) fn new(
        cfg: NodeConfig,
        parts: Parts<S, T>,
        handle: &RaftHandle<S::Output>,
    ) -> Result<Self, RaftError> {
        let Parts {
            store,
            snaps,
            mut sm,
            mut transport,
            nonce,
            snapshot_writes,
        } = parts;
        let storage_err = |e: &dyn std::fmt::Display| RaftError::Storage(e.to_string());
        if store.is_fresh() && !cfg.initial_members.is_empty() {
            // The first configuration is a snapshot at index 1 (term 1), as raft-rs's own
            // examples start a cluster: a member joined later is sent it and so learns the
            // voters. Kept only as the store's configuration (index 0, which is never sent), a
            // joiner that caught up by log from index 1 never knew them and refused every
            // membership change after ("can't make a zero-voter config joint").
            let mut meta = SnapshotMetadata {
                index: 1,
                term: 1,
                ..Default::default()
            };
            meta.set_conf_state(ConfState {
                voters: cfg.initial_members.keys().copied().collect(),
                ..Default::default()
            });
            snaps
                .write(1, 1, &cfg.initial_members, sm.snapshot())
                .map_err(|e| storage_err(&format!("the first snapshot: {e}")))?;
            store
                .apply_snapshot(&meta, &cfg.initial_members)
                .map_err(|e| storage_err(&e))?;
        }
        let snap_meta = store.snapshot_meta();
        if snap_meta.index > 0 {
            let (_, mut reader) = snaps.open(snap_meta.term, snap_meta.index).map_err(|e| {
                RaftError::Storage(format!(
                    "snapshot at index {} (term {}) is recorded but cannot be read: {e}",
                    snap_meta.index, snap_meta.term
                ))
            })?;
            sm.restore(&mut reader).map_err(|e| storage_err(&e))?;
            tracing::info!(index = snap_meta.index, "state loaded from snapshot");
        }
        let (min_election_tick, max_election_tick) = cfg.election_range.unwrap_or((0, 0));
        let raft_cfg = Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            min_election_tick,
            max_election_tick,
            applied: snap_meta.index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate().map_err(|e| storage_err(&e))?;
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        let mut raw =
            RawNode::new(&raft_cfg, store.clone(), &logger).map_err(|e| storage_err(&e))?;
        if store.conf_state().voters == vec![cfg.id] {
            // No one else can win an election: start one now instead of after a timeout.
            raw.campaign().map_err(|e| storage_err(&e))?;
        }
        transport.set_members(&store.members());
        let mut node = Node {
            cfg,
            raw,
            store,
            snaps,
            sm,
            transport,
            mailbox: handle.tx.clone(),
            proposals: Waiters::default(),
            conf_changes: Waiters::default(),
            reads: HashMap::new(),
            reads_waiting: Vec::new(),
            read_seq: 0,
            nonce,
            status: handle.status.clone(),
            snapshotting: false,
            snapshot_writes,
            last_snapshot: snap_meta.index,
            snapshot_failed_at: 0,
            last_snapshot_bytes: 0,
            applied_bytes: 0,
            stalled: None,
        };
        node.publish_status();
        Ok(node)
    }

    fn run(&mut self, rx: mpsc::Receiver<Mail<S::Output>>, tick: Duration) -> Result<(), Fatal> {
        let mut last_tick = Instant::now();
        loop {
            fail::fail_point!("raft-loop");
            let wait = tick.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(wait) {
                Ok(mail) => {
                    if !self.handle(mail) {
                        return Ok(());
                    }
                    // Drain what queued meanwhile so it shares this Ready's fsync.
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(mail) => {
                                if !self.handle(mail) {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if last_tick.elapsed() >= tick {
                // A node that cannot write keeps no time: it neither campaigns nor, as leader,
                // holds its followers back from electing one that can.
                if self.stalled.is_none() {
                    self.tick();
                }
                last_tick = Instant::now();
            }
            self.on_ready()?;
        }
    }

    /// The end of the node: every waiting caller is answered and the status says `stopped`,
    /// so no one takes this node for a leader any more.
    pub(super) fn stop(&mut self, fatal: Option<Fatal>) {
        let err = match &fatal {
            Some(f) => {
                tracing::error!(node = self.cfg.id, error = %f, "raft node stopped by a fatal error");
                RaftError::Storage(f.to_string())
            }
            None => RaftError::Stopped,
        };
        self.fail_all(err);
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        s.stopped = true;
        s.is_leader = false;
        s.leader_id = 0;
        s.role = "STOPPED";
    }

    pub(super) fn tick(&mut self) {
        self.raw.tick();
    }

    fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            leader_id: self.raw.raft.leader_id,
        }
    }

    /// The (term, index) raft-rs gave the entry it has just appended.
    fn appended(&self) -> (u64, u64) {
        (self.raw.raft.term, self.raw.raft.raft_log.last_index())
    }

    /// Handles one piece of mail; false once the node is told to shut down.
    pub(super) fn handle(&mut self, mail: Mail<S::Output>) -> bool {
        let mail = match &self.stalled {
            Some(st) => match self.while_stalled(mail, st.reason.clone()) {
                Some(mail) => mail,
                None => return true,
            },
            None => mail,
        };
        match mail {
            Mail::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return true;
                }
                match self.raw.propose(Vec::new(), data) {
                    Ok(()) => {
                        let (term, index) = self.appended();
                        self.proposals.insert(term, index, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Mail::ConfChange { cc, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return true;
                }
                match self.raw.propose_conf_change(Vec::new(), cc) {
                    Ok(()) => {
                        let (term, index) = self.appended();
                        self.conf_changes.insert(term, index, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Mail::ReadIndex { reply } => {
                self.read_seq += 1;
                self.raw.read_index(read_context(self.nonce, self.read_seq));
                self.reads.insert(self.read_seq, reply);
            }
            Mail::TransferLeader(to) => self.raw.transfer_leader(to),
            Mail::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "raft step refused a message");
                }
            }
            Mail::Feedback(f) => match f {
                Feedback::Unreachable(id) => self.raw.report_unreachable(id),
                Feedback::SnapshotSent { to, ok } => {
                    let status = if ok {
                        SnapshotStatus::Finish
                    } else {
                        SnapshotStatus::Failure
                    };
                    self.raw.report_snapshot(to, status);
                }
                Feedback::PeerAddress { id, address } => {
                    let mut members = self.store.members();
                    if let std::collections::btree_map::Entry::Vacant(v) = members.entry(id) {
                        // Not persisted: the committed membership entry brings the real record.
                        v.insert(address);
                        self.transport.set_members(&members);
                    }
                }
            },
            Mail::SnapshotWritten { meta, result } => {
                self.snapshotting = false;
                match result {
                    Ok(size) => {
                        self.last_snapshot_bytes = size;
                        if let Err(e) = self.compact(&meta) {
                            tracing::error!(error = %e, "log compaction failed");
                        }
                    }
                    Err(e) => {
                        self.snapshot_failed_at = meta.index;
                        tracing::error!(error = %e, index = meta.index,
                            "snapshot failed; the log is kept and the next try waits for more entries")
                    }
                }
            }
            Mail::Shutdown => return false,
        }
        true
    }

    /// While the disk is full: writes and reads are refused with the reason, peers' messages
    /// dropped (as a cut-off network would: they are sent again), the rest handled as usual.
    fn while_stalled(&mut self, mail: Mail<S::Output>, reason: String) -> Option<Mail<S::Output>> {
        let err = RaftError::DiskFull(reason);
        match mail {
            Mail::Propose { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Mail::ConfChange { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Mail::ReadIndex { reply } => {
                let _ = reply.send(Err(err));
            }
            Mail::Step(_) | Mail::TransferLeader(_) => {}
            other => return Some(other),
        }
        None
    }

    fn fail_all(&mut self, err: RaftError) {
        self.proposals.fail_all(&err);
        self.conf_changes.fail_all(&err);
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.reads_waiting.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        for e in entries {
            self.applied_bytes = self.applied_bytes.saturating_add(e.data.len() as u64);
            // Whatever the entry is, a waiter of another kind at its slot lost its entry (raft-rs
            // turns a refused membership change into an empty normal entry).
            let proposal = self.proposals.take(e.term, e.index);
            let conf_change = self.conf_changes.take(e.term, e.index);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if let Some(r) = conf_change {
                        let _ = r.send(Err(RaftError::Dropped(
                            "the membership change was refused by the leader (another one is \
                             still in progress)"
                                .into(),
                        )));
                    }
                    if e.data.is_empty() {
                        // The empty entry a new leader appends.
                        continue;
                    }
                    let out = match self.sm.apply(e.index, &e.data) {
                        Ok(out) => out,
                        Err(f) => {
                            let f = fatal(format!(
                                "committed entry {} cannot be applied: {f}",
                                e.index
                            ));
                            if let Some(reply) = proposal {
                                let _ = reply.send(Err(RaftError::Storage(f.to_string())));
                            }
                            return Err(f);
                        }
                    };
                    if let Some(reply) = proposal {
                        let _ = reply.send(Ok(out));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(fatal)?;
                    self.apply_membership(e.index, v1_to_v2(cc), conf_change)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(fatal)?;
                    self.apply_membership(e.index, cc, conf_change)?;
                }
            }
        }
        Ok(())
    }

    fn apply_membership(
        &mut self,
        index: u64,
        cc: ConfChangeV2,
        reply: Option<Reply<ConfState>>,
    ) -> Result<(), Fatal> {
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => {
                // Refused the same way on every node (raft validates against the same config).
                tracing::warn!(index, error = %e, "membership change refused");
                if let Some(r) = reply {
                    let _ = r.send(Err(RaftError::Dropped(e.to_string())));
                }
                return Ok(());
            }
        };
        let mut members = self.store.members();
        if !cc.context.is_empty() {
            match serde_json::from_slice::<Members>(&cc.context) {
                Ok(added) => members.extend(added),
                Err(e) => tracing::warn!(index, error = %e, "membership change without addresses"),
            }
        }
        for ch in cc.get_changes() {
            if ch.get_change_type() == ConfChangeType::RemoveNode {
                members.remove(&ch.node_id);
            }
        }
        self.store.set_members(&members).map_err(fatal)?;
        self.store.persist(&[], None, Some(&cs)).map_err(fatal)?;
        self.transport.set_members(&members);
        tracing::info!(index, voters = ?cs.voters, learners = ?cs.learners,
            outgoing = ?cs.voters_outgoing, "membership changed");
        // The caller reads the new configuration (and whether it is joint) from the status
        // as soon as it hears back, so publish before replying.
        self.publish_status();
        if let Some(r) = reply {
            let _ = r.send(Ok(cs));
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), Fatal> {
        let meta = snap.get_metadata();
        let (members, mut reader) = self
            .snaps
            .open(meta.term, meta.index)
            .map_err(|e| fatal(format!("received snapshot {} unreadable: {e}", meta.index)))?;
        self.sm.restore(&mut reader).map_err(fatal)?;
        self.store.apply_snapshot(meta, &members).map_err(fatal)?;
        self.transport.set_members(&members);
        self.snaps.retain_from(meta.index);
        self.last_snapshot = meta.index;
        // Entries up to the snapshot were never applied here one by one.
        let why = "a snapshot from the leader was installed over it";
        self.proposals.drop_through(meta.index, why);
        self.conf_changes.drop_through(meta.index, why);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Starts writing a snapshot once enough entries were applied.
    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        let applied = self.raw.raft.raft_log.applied;
        if self.snapshotting {
            return Ok(());
        }
        let since = self.last_snapshot.max(self.snapshot_failed_at);
        let wanted = self.store.take_snapshot_wanted() && applied > since;
        let due = snapshot_due(
            applied.saturating_sub(since),
            self.cfg.snapshot_entries,
            self.last_snapshot_bytes,
            self.applied_bytes,
        );
        if !wanted && !due {
            return Ok(());
        }
        let term = raft::Storage::term(&self.store, applied).map_err(fatal)?;
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.store.conf_state());
        let writer = self.sm.snapshot();
        let members = self.store.members();
        let snaps = self.snaps.clone();
        let mailbox = self.mailbox.clone();
        self.snapshotting = true;
        self.applied_bytes = 0;
        let check: fn(&mut dyn Read) -> std::io::Result<()> = S::check;
        let job = move || {
            // Decoded once before the log behind it may be compacted: a snapshot that cannot be
            // loaded must never replace a log that can.
            let result = snaps
                .write(meta.term, meta.index, &members, writer)
                .and_then(|size| {
                    let (_, mut r) = snaps.open(meta.term, meta.index)?;
                    check(&mut r).map_err(|e| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("the snapshot just written does not decode: {e}"),
                        )
                    })?;
                    Ok(size)
                });
            let _ = mailbox.send(Mail::SnapshotWritten { meta, result });
        };
        match self.snapshot_writes {
            SnapshotWrites::Inline => job(),
            SnapshotWrites::Background => {
                std::thread::Builder::new()
                    .name("raft-snapshot".into())
                    .spawn(job)
                    .map_err(fatal)?;
            }
        }
        Ok(())
    }

    /// After a snapshot is durable: record it and drop the log behind it. The leader keeps the
    /// entries its followers still miss (up to one snapshot interval) so a briefly slow
    /// follower catches up from the log instead of by a whole snapshot.
    fn compact(&mut self, meta: &SnapshotMetadata) -> Result<(), Fatal> {
        if meta.index <= self.last_snapshot {
            // A snapshot from the leader was installed while this one was being written: it is
            // newer, and recording this one would point the log at a snapshot already deleted.
            tracing::debug!(
                index = meta.index,
                newer = self.last_snapshot,
                "stale snapshot dropped"
            );
            return Ok(());
        }
        let mut compact_index = meta.index;
        if self.raw.raft.state == StateRole::Leader {
            let slowest = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != self.cfg.id)
                .map(|(_, p)| p.matched)
                .min()
                .unwrap_or(meta.index);
            let floor = meta.index.saturating_sub(self.cfg.snapshot_entries);
            compact_index = slowest.clamp(floor, meta.index);
        }
        self.store.compact_to(meta, compact_index).map_err(fatal)?;
        self.snaps.retain_from(meta.index);
        self.last_snapshot = meta.index;
        tracing::info!(
            index = meta.index,
            compacted_to = compact_index,
            "snapshot taken"
        );
        Ok(())
    }

    fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        let applied = self.raw.raft.raft_log.applied;
        for rs in states {
            let Some(reply) =
                read_seq_of(self.nonce, &rs.request_ctx).and_then(|seq| self.reads.remove(&seq))
            else {
                continue;
            };
            if rs.index <= applied {
                let _ = reply.send(Ok(()));
            } else {
                self.reads_waiting.push((rs.index, reply));
            }
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads_waiting
            .drain(..)
            .partition(|(index, _)| *index <= applied);
        self.reads_waiting = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    /// One turn of raft-rs's Ready protocol, in its documented order.
    pub(super) fn on_ready(&mut self) -> Result<(), Fatal> {
        if let Some(st) = self.stalled.take() {
            if Instant::now() < st.next_try {
                self.stalled = Some(st);
                return Ok(());
            }
            return self.persist_ready(st.rd, Some(st.since));
        }
        if !self.raw.has_ready() {
            self.publish_status();
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        self.persist_ready(rd, None)
    }

    /// Writes the Ready's entries and hard state, then finishes its turn. Out of space, the
    /// Ready is kept for the next try and the node stalls: nothing after the write (persisted
    /// messages, apply, advance) may happen before it. `stalled_since`: when the first try of
    /// this Ready failed.
    fn persist_ready(
        &mut self,
        mut rd: raft::Ready,
        stalled_since: Option<Instant>,
    ) -> Result<(), Fatal> {
        let hs = rd.hs().cloned();
        if !rd.entries().is_empty() || hs.is_some() {
            if let Err(e) = self.store.persist_ready(rd.entries(), hs.as_ref()) {
                if !e.is_no_space() {
                    return Err(fatal(e));
                }
                let now = Instant::now();
                let since = stalled_since.unwrap_or(now);
                if stalled_since.is_none() {
                    tracing::error!(node = self.cfg.id, error = %e,
                        "cannot write the raft log: out of disk space; refusing writes and \
                         trying again every {DISK_FULL_RETRY:?} until space is freed");
                }
                self.stalled = Some(Stalled {
                    rd,
                    reason: format!(
                        "coordinator {} cannot write its raft log: {e} (for {}s); it refuses \
                         writes until space is freed on its data directory, then resumes by \
                         itself",
                        self.cfg.id,
                        now.duration_since(since).as_secs()
                    ),
                    since,
                    next_try: now + DISK_FULL_RETRY,
                });
                self.publish_status();
                return Ok(());
            }
        }
        if let Some(since) = stalled_since {
            tracing::warn!(node = self.cfg.id, stalled_for = ?since.elapsed(),
                "the raft log is written again: disk space was freed; resuming");
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        self.on_read_states(rd.take_read_states());
        self.apply_entries(rd.take_committed_entries())?;
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            // Stored with the next write; one lost with a crash is learnt again from the leader.
            self.store.set_commit(commit);
        }
        self.transport.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        self.maybe_snapshot()?;
        self.publish_status();
        Ok(())
    }

    fn publish_status(&mut self) {
        let is_leader = self.raw.raft.state == StateRole::Leader;
        let waiting = !(self.proposals.is_empty() && self.conf_changes.is_empty());
        if !is_leader && waiting {
            // Lost leadership: these may or may not commit; callers retry with request ids.
            let err = self.not_leader();
            self.proposals.fail_all(&err);
            self.conf_changes.fail_all(&err);
        }
        let raft = &self.raw.raft;
        let cs = self.store.conf_state();
        let role = match raft.state {
            StateRole::Leader => "LEADER",
            StateRole::Candidate => "CANDIDATE",
            StateRole::PreCandidate => "PRE_CANDIDATE",
            StateRole::Follower if cs.learners.contains(&self.cfg.id) => "LEARNER",
            StateRole::Follower => "FOLLOWER",
        };
        let matched = if is_leader {
            raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
        } else {
            BTreeMap::new()
        };
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        s.leader_id = raft.leader_id;
        s.term = raft.term;
        s.commit_index = raft.raft_log.committed;
        s.applied_index = raft.raft_log.applied;
        s.first_index = raft::Storage::first_index(&self.store).unwrap_or_default();
        s.snapshot_index = self.last_snapshot;
        s.is_leader = is_leader;
        s.role = role;
        s.in_joint = !cs.voters_outgoing.is_empty();
        s.outgoing = cs.voters_outgoing;
        s.voters = cs.voters;
        s.learners = cs.learners;
        s.members = self.store.members();
        s.matched = matched;
        s.leader_silent =
            !is_leader && raft.election_elapsed > SILENT_HEARTBEATS * self.cfg.heartbeat_tick;
        s.disk_full = self.stalled.as_ref().map(|st| st.reason.clone());
        if s.disk_full.is_some() {
            s.is_leader = false;
            s.role = "DISK_FULL";
            s.matched.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{snapshot_due, BIG_SNAPSHOT};

    #[test]
    fn a_small_state_is_snapshotted_by_entry_count_and_a_large_one_by_log_bytes_too() {
        let mb = 1 << 20;
        // Small: every `every` entries, whatever their size.
        assert!(!snapshot_due(9_999, 10_000, mb, 0));
        assert!(snapshot_due(10_000, 10_000, mb, 0));
        assert!(
            snapshot_due(10_000, 10_000, 0, 0),
            "none written since start"
        );
        // Large: also not before the log since holds as many bytes as the last snapshot.
        let big = BIG_SNAPSHOT + 1;
        assert!(!snapshot_due(10_000, 10_000, big, big - 1));
        assert!(snapshot_due(10_000, 10_000, big, big));
        assert!(
            !snapshot_due(9_999, 10_000, big, 10 * big),
            "and the count still"
        );
    }
}
