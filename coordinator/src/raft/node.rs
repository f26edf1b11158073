//! The one owner of `raft::RawNode`: a dedicated thread running the Ready loop.
//!
//! Order per Ready (raft-rs's documented order, as in TiKV): send messages; persist entries,
//! hard state and conf state in one flushed batch; send persisted messages; apply committed
//! entries and answer their proposers; advance. Proposals are drained from the mailbox before
//! each Ready, so many proposals share one fsync (group commit).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};
use tokio::sync::oneshot;

use super::log_store::SledLogStore;
use super::RaftError;

/// What the node applies committed entries to.
pub trait StateMachine: Send + 'static {
    type Output: Send + 'static;
    /// Applies one committed normal entry. Must be deterministic.
    fn apply(&mut self, index: u64, data: &[u8]) -> Self::Output;
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub tick_interval: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 3,
        }
    }
}

/// What the node reports about itself, for status and leader checks.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub id: u64,
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
    pub voters: Vec<u64>,
}

type Reply<O> = oneshot::Sender<Result<O, RaftError>>;

enum Mail<O> {
    Propose {
        data: Vec<u8>,
        reply: Reply<O>,
    },
    /// A message from a peer (used once peers exist).
    Step(Box<Message>),
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
    /// Proposes `data` and waits until it is committed and applied on this node.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Mail::Propose { data, reply })
            .map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)?
    }

    pub fn step(&self, msg: Message) -> Result<(), RaftError> {
        self.tx
            .send(Mail::Step(Box::new(msg)))
            .map_err(|_| RaftError::Stopped)
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

struct Node<S: StateMachine> {
    raw: RawNode<SledLogStore>,
    store: SledLogStore,
    sm: S,
    pending: HashMap<u64, Reply<S::Output>>,
    next_proposal: u64,
    status: Arc<RwLock<NodeStatus>>,
}

/// Starts a node over `store`. A fresh store is bootstrapped as a single voter `cfg.id`.
pub fn start<S: StateMachine>(
    cfg: NodeConfig,
    store: SledLogStore,
    sm: S,
) -> Result<(RaftHandle<S::Output>, std::thread::JoinHandle<()>), RaftError> {
    if store.is_fresh() {
        let cs = ConfState {
            voters: vec![cfg.id],
            ..Default::default()
        };
        store
            .persist(&[], None, Some(&cs))
            .map_err(|e| RaftError::Storage(e.to_string()))?;
    }
    let raft_cfg = Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        // The state machine lives in memory: replay every committed entry on start.
        applied: 0,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg
        .validate()
        .map_err(|e| RaftError::Storage(e.to_string()))?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let mut raw = RawNode::new(&raft_cfg, store.clone(), &logger)
        .map_err(|e| RaftError::Storage(e.to_string()))?;
    let sole_voter = store.conf_state().voters == vec![cfg.id];
    if sole_voter {
        // No one else can win an election: start one now instead of after a timeout.
        raw.campaign()
            .map_err(|e| RaftError::Storage(e.to_string()))?;
    }
    let status = Arc::new(RwLock::new(NodeStatus {
        id: cfg.id,
        ..Default::default()
    }));
    let (tx, rx) = mpsc::channel();
    let handle = RaftHandle {
        tx,
        status: status.clone(),
    };
    let mut node = Node {
        raw,
        store,
        sm,
        pending: HashMap::new(),
        next_proposal: 1,
        status,
    };
    let tick = cfg.tick_interval;
    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || node.run(rx, tick))
        .map_err(|e| RaftError::Storage(e.to_string()))?;
    Ok((handle, thread))
}

impl<S: StateMachine> Node<S> {
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
                // Storage failure: the node can no longer guarantee durability. Stop serving.
                tracing::error!(error = %e, "raft storage failed; stopping the node");
                self.fail_pending(RaftError::Storage(e.to_string()));
                return;
            }
        }
    }

    fn handle(&mut self, mail: Mail<S::Output>) -> bool {
        match mail {
            Mail::Propose { data, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let hint = self.raw.raft.leader_id;
                    let _ = reply.send(Err(RaftError::NotLeader { leader_id: hint }));
                    return true;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                match self.raw.propose(id.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Mail::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "raft step refused a message");
                }
            }
            Mail::Shutdown => {
                self.fail_pending(RaftError::Stopped);
                return false;
            }
        }
        true
    }

    fn fail_pending(&mut self, err: RaftError) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        // Peers arrive with the replicated coordinator; a single voter sends nothing.
        for m in msgs {
            tracing::trace!(to = m.to, "dropping raft message: no transport");
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.get_entry_type() == EntryType::EntryConfChange
                || e.get_entry_type() == EntryType::EntryConfChangeV2
            {
                // Membership changes come with the replicated coordinator.
                continue;
            }
            let pending_id = (e.context.len() == 8).then(|| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e.context);
                u64::from_be_bytes(b)
            });
            if e.data.is_empty() {
                // The empty entry a new leader appends.
                continue;
            }
            let out = self.sm.apply(e.index, &e.data);
            if let Some(reply) = pending_id.and_then(|id| self.pending.remove(&id)) {
                let _ = reply.send(Ok(out));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), super::log_store::LogStoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        let msgs = rd.take_messages();
        self.send(msgs);
        let hs = rd.hs().cloned();
        if !rd.entries().is_empty() || hs.is_some() {
            self.store.persist(rd.entries(), hs.as_ref(), None)?;
        }
        let persisted = rd.take_persisted_messages();
        self.send(persisted);
        let committed = rd.take_committed_entries();
        self.apply_entries(committed);
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply_entries(committed);
        self.raw.advance_apply();
        self.publish_status();
        Ok(())
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let is_leader = raft.state == StateRole::Leader;
        if !is_leader && !self.pending.is_empty() {
            // Lost leadership: these may or may not commit; callers retry with request ids.
            let leader_id = raft.leader_id;
            self.fail_pending(RaftError::NotLeader { leader_id });
        }
        let raft = &self.raw.raft;
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        s.leader_id = raft.leader_id;
        s.term = raft.term;
        s.commit_index = raft.raft_log.committed;
        s.applied_index = raft.raft_log.applied;
        s.is_leader = is_leader;
        s.voters = self.store.conf_state().voters;
    }
}
