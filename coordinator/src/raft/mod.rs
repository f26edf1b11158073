//! Raft: the only module that touches `raft::RawNode`.

pub mod log_store;
pub mod node;
pub mod snapshot_files;
pub mod transport;

pub use log_store::{Members, SledLogStore};
pub use node::{start, Feedback, NodeConfig, NodeStatus, RaftHandle, StateMachine};
pub use snapshot_files::SnapshotDir;

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
