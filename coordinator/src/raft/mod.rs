//! Raft: the only module that touches `raft::RawNode`.
//!
//! - [`node`]: the Ready loop, driven by its own thread in the server and step by step by the
//!   simulation;
//! - [`handle`]: what the rest of the coordinator holds to propose, read and change membership;
//! - [`proposals`]: callers waiting for their entries, matched by (term, index);
//! - [`storage`]: the log as raft-rs sees it, over a [`LogStore`] backend ([`wal_store`] on
//!   disk, in the record format of [`wal_record`]; [`mem_store`] in memory; [`redb_store`] and
//!   [`sled_store`] read logs of older versions once);
//! - [`snapshots`] and [`snapshot_files`]: where snapshots live;
//! - [`store_ids`]: which data directory each peer speaks from, so a wiped node cannot vote twice;
//! - [`transport`]: messages and snapshot streams to peers over tonic.

pub mod handle;
mod log_codec;
pub mod log_upgrade;
pub mod mem_store;
pub mod node;
mod proposals;
mod recent_entries;
mod recent_terms;
pub mod redb_store;
pub mod sled_store;
pub mod snapshot_files;
pub mod snapshots;
pub mod storage;
pub mod store_ids;
pub mod transport;
mod wal_record;
pub mod wal_store;
mod zero_ahead;

#[cfg(test)]
mod sim;

pub use handle::RaftHandle;
pub use mem_store::MemLogStore;
pub use node::{start, Fatal, Feedback, NodeConfig, NodeStatus, StateMachine};
pub use redb_store::RedbLogStore;
pub use sled_store::SledLogStore;
pub use snapshot_files::SnapshotDir;
pub use snapshots::{MemSnapshots, SnapshotStore, SnapshotWriter};
pub use storage::{LogStore, LogStoreError, Members, RaftStorage};
pub use store_ids::{StoreIdError, StoreIds};
pub use wal_store::WalLogStore;

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
    /// The node cannot write its log for want of space (the full reason).
    #[error("{0}")]
    DiskFull(String),
}
