//! Gantry's deterministic core.
//!
//! - [`ir`]: KFP pipeline IR (YAML) into a validated, typed [`ir::PipelineSpec`].
//! - [`engine`]: the run state machine: which tasks are ready, skipped, done.
//! - [`scheduler`]: placement of ready steps on agents.
//! - [`schedule`]: recurring runs: KFP's cron dialect, periodic ticks, which tick is due.
//! - [`state`]: the replicated state machine, `apply(command)`.
//!
//! Nothing here reads a clock, draws a random number or does I/O: time and ids arrive inside
//! commands, so applying the same log always yields the same state.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod engine;
pub mod ir;
pub mod schedule;
pub mod scheduler;
pub mod state;
