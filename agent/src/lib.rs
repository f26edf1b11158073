//! The Gantry agent: reports its host, runs the steps the coordinator assigns, moves their
//! artifacts. It decides nothing about placement or run state.

pub mod access;
pub mod config_maps;
pub mod flags;
pub use gantry_artifacts as artifacts;
pub mod inventory;
pub mod launcher;
pub mod placeholders;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod volumes;
