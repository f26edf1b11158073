//! The parts of the `gantry` command: the client verbs, `gantry dev` and the embedded cluster
//! it starts (which `gantry-bench` reuses), output formats and exit codes.

pub mod acl_cmd;
pub mod client;
pub mod dev;
pub mod exit;
pub mod kfp_cmd;
pub mod output;
pub mod run_cmd;
pub mod target;
pub mod tls_cmd;
pub mod webhook_cmd;
