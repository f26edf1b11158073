//! The one owner of `raft::RawNode`: a dedicated thread running the Ready loop.
//!
//! Order per Ready (raft-rs's documented order, as in TiKV): send messages; install a received
//! snapshot; persist entries and hard state in one flushed batch; send persisted messages;
//! apply committed entries and answer their proposers; advance. Proposals are drained from the
//! mailbox before each Ready, so many proposals share one fsync (group commit).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot, SnapshotMetadata,
};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::log_store::{Members, SledLogStore};
use super::snapshot_files::SnapshotDir;
use super::RaftError;

/// Writes a consistent copy of the state, away from the Raft thread.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// What the node applies committed entries to.
pub trait StateMachine: Send + 'static {
    type Output: Send + 'static;
    /// Applies one committed normal entry. Must be deterministic.
    fn apply(&mut self, index: u64, data: &[u8]) -> Self::Output;
    /// A copy of the current state, to be written to a snapshot file on another thread.
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            tick_interval: Duration::from_millis(100),
            election_tick: 6,
            heartbeat_tick: 1,
            snapshot_entries: 10_000,
            initial_members: Members::new(),
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
    /// True while a membership change is in its joint phase.
    pub in_joint: bool,
    pub members: Members,
    /// On the leader: the highest index known replicated on each member.
    pub matched: BTreeMap<u64, u64>,
    /// On a follower: nothing heard from `leader_id` for several heartbeats (it may be dead or
    /// cut off), so clients should not be sent there while the election timer runs out.
    pub leader_silent: bool,
}

type Reply<O> = oneshot::Sender<Result<O, RaftError>>;

enum Mail<O> {
    Propose {
        data: Vec<u8>,
        reply: Reply<O>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: Reply<ConfState>,
    },
    ReadIndex {
        reply: Reply<()>,
    },
    TransferLeader(u64),
    Step(Box<Message>),
    Feedback(Feedback),
    SnapshotWritten {
        meta: SnapshotMetadata,
        result: Result<(), String>,
    },
    Shutdown,
}

/// A cheap, cloneable handle to the node thread.
pub struct RaftHandle<O> {
    tx: mpsc::Sender<Mail<O>>,
    status: Arc<RwLock<NodeStatus>>,
}

impl<O> Clone for RaftHandle<O> {
    fn clone(&self) -> Self {
        RaftHandle {
            tx: self.tx.clone(),
            status: self.status.clone(),
        }
    }
}

impl<O: Send + 'static> RaftHandle<O> {
    fn mail<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Mail<O>,
    ) -> oneshot::Receiver<Result<T, RaftError>> {
        let (reply, rx) = oneshot::channel();
        // A closed mailbox drops `reply`, which the receiver sees as Stopped.
        let _ = self.tx.send(make(reply));
        rx
    }

    /// Proposes `data` and waits until it is committed and applied on this node.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, RaftError> {
        self.mail(|reply| Mail::Propose { data, reply })
            .await
            .map_err(|_| RaftError::Stopped)?
    }

    /// Proposes a membership change and waits until it is applied here.
    pub async fn change_membership(&self, cc: ConfChangeV2) -> Result<ConfState, RaftError> {
        self.mail(|reply| Mail::ConfChange { cc, reply })
            .await
            .map_err(|_| RaftError::Stopped)?
    }

    /// Waits until this node has applied everything committed when the call was made, as
    /// confirmed by the leader with a quorum (raft's ReadIndex): a read of local state after
    /// this is linearizable.
    pub async fn read_index(&self, timeout: Duration) -> Result<(), RaftError> {
        let rx = self.mail(|reply| Mail::ReadIndex { reply });
        match tokio::time::timeout(timeout, rx).await {
            Ok(r) => r.map_err(|_| RaftError::Stopped)?,
            Err(_) => Err(RaftError::NotLeader {
                leader_id: self.status().leader_id,
            }),
        }
    }

    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Mail::TransferLeader(to));
    }

    pub fn step(&self, msg: Message) -> Result<(), RaftError> {
        self.tx
            .send(Mail::Step(Box::new(msg)))
            .map_err(|_| RaftError::Stopped)
    }

    pub fn feedback(&self, f: Feedback) {
        let _ = self.tx.send(Mail::Feedback(f));
    }

    pub fn status(&self) -> NodeStatus {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Mail::Shutdown);
    }
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

/// A failure after which the node cannot go on without risking what it promised.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

fn fatal(e: impl std::fmt::Display) -> Fatal {
    Fatal(e.to_string())
}

struct Node<S: StateMachine, T: Transport> {
    cfg: NodeConfig,
    raw: RawNode<SledLogStore>,
    store: SledLogStore,
    snaps: SnapshotDir,
    sm: S,
    transport: T,
    mailbox: mpsc::Sender<Mail<S::Output>>,
    pending: HashMap<u64, Reply<S::Output>>,
    pending_conf: HashMap<u64, Reply<ConfState>>,
    reads: HashMap<u64, Reply<()>>,
    /// ReadIndex answers waiting for apply to reach their index.
    reads_waiting: Vec<(u64, Reply<()>)>,
    next_id: u64,
    status: Arc<RwLock<NodeStatus>>,
    snapshotting: bool,
    last_snapshot: u64,
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

fn id_of(context: &[u8]) -> Option<u64> {
    let b: [u8; 8] = context.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Starts a node over `store`. A fresh store takes `cfg.initial_members` as its voters; a
/// store that already has a configuration ignores it.
pub fn start<S: StateMachine, T: Transport>(
    cfg: NodeConfig,
    store: SledLogStore,
    snaps: SnapshotDir,
    mut sm: S,
    make_transport: impl FnOnce(FeedbackSink) -> T,
) -> Result<(RaftHandle<S::Output>, std::thread::JoinHandle<()>), RaftError> {
    let storage_err = |e: &dyn std::fmt::Display| RaftError::Storage(e.to_string());
    if store.is_fresh() && !cfg.initial_members.is_empty() {
        let cs = ConfState {
            voters: cfg.initial_members.keys().copied().collect(),
            ..Default::default()
        };
        store
            .set_members(&cfg.initial_members)
            .map_err(|e| storage_err(&e))?;
        store
            .persist(&[], None, Some(&cs))
            .map_err(|e| storage_err(&e))?;
    }
    // The state machine lives in memory: load the last snapshot, then replay the log after it.
    let snap_meta = store.snapshot_meta();
    if snap_meta.index > 0 {
        let (_, mut reader) = snaps
            .open_snapshot(snap_meta.term, snap_meta.index)
            .map_err(|e| {
                RaftError::Storage(format!(
                    "snapshot at index {} (term {}) is recorded but cannot be read: {e}",
                    snap_meta.index, snap_meta.term
                ))
            })?;
        sm.restore(&mut reader).map_err(|e| storage_err(&e))?;
        tracing::info!(index = snap_meta.index, "state loaded from snapshot");
    }
    let raft_cfg = Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        applied: snap_meta.index,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg.validate().map_err(|e| storage_err(&e))?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let mut raw = RawNode::new(&raft_cfg, store.clone(), &logger).map_err(|e| storage_err(&e))?;
    let sole_voter = store.conf_state().voters == vec![cfg.id];
    if sole_voter {
        // No one else can win an election: start one now instead of after a timeout.
        raw.campaign().map_err(|e| storage_err(&e))?;
    }
    let status = Arc::new(RwLock::new(NodeStatus {
        id: cfg.id,
        ..Default::default()
    }));
    let (tx, rx) = mpsc::channel();
    let handle = RaftHandle {
        tx: tx.clone(),
        status: status.clone(),
    };
    let sink: FeedbackSink = {
        let h = handle.clone();
        Arc::new(move |f| h.feedback(f))
    };
    let mut transport = make_transport(sink);
    transport.set_members(&store.members());
    let mut node = Node {
        cfg: cfg.clone(),
        raw,
        store,
        snaps,
        sm,
        transport,
        mailbox: tx,
        pending: HashMap::new(),
        pending_conf: HashMap::new(),
        reads: HashMap::new(),
        reads_waiting: Vec::new(),
        next_id: 1,
        status,
        snapshotting: false,
        last_snapshot: snap_meta.index,
    };
    node.publish_status();
    let tick = cfg.tick_interval;
    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || node.run(rx, tick))
        .map_err(|e| storage_err(&e))?;
    Ok((handle, thread))
}

impl<S: StateMachine, T: Transport> Node<S, T> {
    fn run(&mut self, rx: mpsc::Receiver<Mail<S::Output>>, tick: Duration) {
        let mut last_tick = Instant::now();
        loop {
            let wait = tick.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(wait) {
                Ok(mail) => {
                    if !self.handle(mail) {
                        return;
                    }
                    // Drain what queued meanwhile so it shares this Ready's fsync.
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(mail) => {
                                if !self.handle(mail) {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if last_tick.elapsed() >= tick {
                self.raw.tick();
                last_tick = Instant::now();
            }
            if let Err(e) = self.on_ready() {
                // The node can no longer guarantee what it acknowledged. Stop the process so a
                // supervisor restarts it from what is on disk, as TiKV does.
                tracing::error!(error = %e, "raft storage failed; exiting");
                self.fail_all(RaftError::Storage(e.to_string()));
                std::process::exit(70);
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            leader_id: self.raw.raft.leader_id,
        }
    }

    fn handle(&mut self, mail: Mail<S::Output>) -> bool {
        match mail {
            Mail::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return true;
                }
                let id = self.next_id();
                match self.raw.propose(id.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
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
                let id = self.next_id();
                match self.raw.propose_conf_change(id.to_be_bytes().to_vec(), cc) {
                    Ok(()) => {
                        self.pending_conf.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Mail::ReadIndex { reply } => {
                let id = self.next_id();
                self.raw.read_index(id.to_be_bytes().to_vec());
                self.reads.insert(id, reply);
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
                    Ok(()) => {
                        if let Err(e) = self.compact(&meta) {
                            tracing::error!(error = %e, "log compaction failed");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, index = meta.index, "snapshot failed"),
                }
            }
            Mail::Shutdown => {
                self.fail_all(RaftError::Stopped);
                return false;
            }
        }
        true
    }

    fn fail_all(&mut self, err: RaftError) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.pending_conf.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.reads_waiting.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        for e in entries {
            let pending_id = id_of(&e.context);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        // The empty entry a new leader appends.
                        continue;
                    }
                    let out = self.sm.apply(e.index, &e.data);
                    if let Some(reply) = pending_id.and_then(|id| self.pending.remove(&id)) {
                        let _ = reply.send(Ok(out));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(fatal)?;
                    self.apply_membership(e.index, v1_to_v2(cc), pending_id)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(fatal)?;
                    self.apply_membership(e.index, cc, pending_id)?;
                }
            }
        }
        Ok(())
    }

    fn apply_membership(
        &mut self,
        index: u64,
        cc: ConfChangeV2,
        pending_id: Option<u64>,
    ) -> Result<(), Fatal> {
        let reply = pending_id.and_then(|id| self.pending_conf.remove(&id));
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
            .open_snapshot(meta.term, meta.index)
            .map_err(|e| fatal(format!("received snapshot {} unreadable: {e}", meta.index)))?;
        self.sm.restore(&mut reader).map_err(fatal)?;
        self.store.apply_snapshot(meta, &members).map_err(fatal)?;
        self.transport.set_members(&members);
        self.snaps.retain_from(meta.index);
        self.last_snapshot = meta.index;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Starts writing a snapshot in the background once enough entries were applied.
    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        let applied = self.raw.raft.raft_log.applied;
        if self.snapshotting {
            return Ok(());
        }
        let wanted = self.store.take_snapshot_wanted() && applied > self.last_snapshot;
        if !wanted && applied < self.last_snapshot + self.cfg.snapshot_entries {
            return Ok(());
        }
        let term = raft::Storage::term(&self.store, applied).map_err(fatal)?;
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.store.conf_state());
        let began = std::time::Instant::now();
        let writer = self.sm.snapshot();
        tracing::debug!(
            index = applied,
            took_ms = began.elapsed().as_millis() as u64,
            "snapshot cut"
        );
        let members = self.store.members();
        let snaps = self.snaps.clone();
        let mailbox = self.mailbox.clone();
        self.snapshotting = true;
        std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let result = snaps
                    .write(meta.term, meta.index, &members, writer)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = mailbox.send(Mail::SnapshotWritten { meta, result });
            })
            .map_err(fatal)?;
        Ok(())
    }

    /// After a snapshot is durable: record it and drop the log behind it. The leader keeps the
    /// entries its followers still miss (up to one snapshot interval) so a briefly slow
    /// follower catches up from the log instead of by a whole snapshot.
    fn compact(&mut self, meta: &SnapshotMetadata) -> Result<(), Fatal> {
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
        let began = std::time::Instant::now();
        self.store.compact_to(meta, compact_index).map_err(fatal)?;
        self.snaps.retain_from(meta.index);
        self.last_snapshot = meta.index;
        tracing::info!(
            index = meta.index,
            compacted_to = compact_index,
            compaction_ms = began.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(())
    }

    fn on_read_states(&mut self, states: Vec<raft::ReadState>) {
        let applied = self.raw.raft.raft_log.applied;
        for rs in states {
            let Some(reply) = id_of(&rs.request_ctx).and_then(|id| self.reads.remove(&id)) else {
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

    fn on_ready(&mut self) -> Result<(), Fatal> {
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
        let hs = rd.hs().cloned();
        if !rd.entries().is_empty() || hs.is_some() {
            self.store
                .persist(rd.entries(), hs.as_ref(), None)
                .map_err(fatal)?;
        }
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        self.on_read_states(rd.take_read_states());
        self.apply_entries(rd.take_committed_entries())?;
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit).map_err(fatal)?;
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
        let idle = self.pending.is_empty() && self.pending_conf.is_empty();
        if !is_leader && !idle {
            // Lost leadership: these may or may not commit; callers retry with request ids.
            let err = self.not_leader();
            for (_, reply) in self.pending.drain() {
                let _ = reply.send(Err(err.clone()));
            }
            for (_, reply) in self.pending_conf.drain() {
                let _ = reply.send(Err(err.clone()));
            }
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
        s.voters = cs.voters;
        s.learners = cs.learners;
        s.members = self.store.members();
        s.matched = matched;
        s.leader_silent =
            !is_leader && raft.election_elapsed > SILENT_HEARTBEATS * self.cfg.heartbeat_tick;
    }
}
