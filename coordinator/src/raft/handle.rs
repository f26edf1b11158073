//! The cheap, cloneable handle that the rest of the coordinator holds, and the mail it posts to
//! the node. Every call answers through a oneshot channel once the node has decided.

use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::{ConfChangeV2, ConfState, Message, SnapshotMetadata};
use tokio::sync::oneshot;

use super::node::{Feedback, NodeStatus};
use super::RaftError;

pub(super) type Reply<O> = oneshot::Sender<Result<O, RaftError>>;

pub(super) enum Mail<O> {
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
    /// A snapshot was written and decoded again; `Ok` holds its size in bytes.
    SnapshotWritten {
        meta: SnapshotMetadata,
        result: std::io::Result<u64>,
    },
    Shutdown,
}

pub struct RaftHandle<O> {
    pub(super) tx: mpsc::Sender<Mail<O>>,
    pub(super) status: Arc<RwLock<NodeStatus>>,
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
    pub(super) fn mail<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Mail<O>,
    ) -> oneshot::Receiver<Result<T, RaftError>> {
        let (reply, rx) = oneshot::channel();
        // A closed mailbox drops `reply`, which the receiver sees as Stopped.
        let _ = self.tx.send(make(reply));
        rx
    }

    /// Proposes `data` and waits until it is committed and applied on this node. The answer is
    /// the outcome of applying this very entry: proposals are matched to their entries by
    /// (term, index), which no other entry ever shares.
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

    /// What `f` reads off the status, without copying all of it (on every peer batch).
    pub fn with_status<R>(&self, f: impl FnOnce(&NodeStatus) -> R) -> R {
        f(&self.status.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Mail::Shutdown);
    }
}
