//! Test support for the whole workspace, in one place: every crate's tests take it as a
//! dev-dependency, and `gantry-bench` as a dependency for its clusters.
//!
//! The base has no async runtime, no gRPC and no Gantry crate, so the pure core's tests stay
//! light:
//! - [`Proc`]: a child process killed and reaped on drop, also when a test fails;
//! - [`free_port`], [`wait_for_port`], [`wait_for_line`]: ports and readiness of children;
//! - [`eventually`], [`poll`], [`always`]: polling instead of inline deadline-and-sleep loops;
//! - [`golden`]: golden files rewritten under `GANTRY_BLESS=1`;
//! - [`corpus`]: the KFP conformance corpus named by `GANTRY_KFP_CORPUS`, and its files.
//!
//! Features add the heavier parts: `model` (a simulated agent's results, [`sim`]), `s3` (an S3
//! server), `system` (the built binaries, `gantry dev`, the CLI, kfp compiles, Docker images),
//! `async` (async polling) and `cluster` (multi-process coordinator clusters).

use std::path::{Path, PathBuf};

pub mod corpus;
pub mod golden;
mod net;
mod poll;
mod process;

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "cluster")]
pub mod kfp_http;
#[cfg(feature = "s3")]
mod s3;
#[cfg(feature = "model")]
pub mod sim;
#[cfg(feature = "system")]
mod system;

pub use net::{free_port, free_ports, strip_ansi, wait_for_line, wait_for_port};
#[cfg(feature = "async")]
pub use poll::poll_async;
pub use poll::{always, eventually, poll, poll_every, repeat_for, settled, POLL};
pub use process::{program, run_within, Exited, Proc};
#[cfg(feature = "s3")]
pub use s3::S3;
#[cfg(feature = "system")]
pub use system::*;

/// The workspace root (this crate sits one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
