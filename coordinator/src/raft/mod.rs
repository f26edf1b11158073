//! Raft: the only module that touches `raft::RawNode`.

pub mod log_store;
pub mod node;

pub use log_store::SledLogStore;
pub use node::{start, NodeConfig, NodeStatus, RaftHandle, StateMachine};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    #[error("this node is not the leader (leader: {leader_id})")]
    NotLeader { leader_id: u64 },
    #[error("proposal dropped: {0}")]
    Dropped(String),
    #[error("raft node stopped")]
    Stopped,
    #[error("raft storage: {0}")]
    Storage(String),
}
