//! The Gantry coordinator: keeps every run's state in a Raft-replicated state machine, places
//! ready steps on agents, and serves the gRPC API.
//!
//! The deterministic core (IR, engine, scheduler, state machine) lives in `gantry-core`; this
//! crate adds what does I/O around it:
//! - [`raft`](crate::raft): the Ready loop over `raft::RawNode`, with the log in redb;
//! - [`machine`]: the bridge from committed entries to `ClusterState::apply`;
//! - [`dispatch`]: agent sessions, and acting on committed events (assignments, cancels);
//! - [`scheduling`]: the leader's placement loop;
//! - [`recurring`]: the leader fires recurring runs' due ticks;
//! - [`webhooks`]: the leader posts committed state changes to the cluster's webhooks;
//! - [`logs`]: step log lines (node-local, not replicated);
//! - [`api`]: tonic services;
//! - [`kfp`]: the KFP v2beta1 REST API `kfp.Client` speaks, on the same port;
//! - [`auth`]: who may call what (certificates and tokens), applied to every request;
//! - [`server`]: the wiring.

pub mod api;
pub mod auth;
pub mod config;
pub mod dispatch;
pub mod kfp;
pub mod log_limits;
pub mod logs;
pub mod machine;
pub mod member_stores;
pub mod panics;
pub mod raft;
pub mod recurring;
pub mod scheduling;
pub mod server;
pub mod webhooks;

/// Milliseconds since the Unix epoch: the proposer's clock, stamped into commands.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
