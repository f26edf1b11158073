//! Environment variables the agent reserves for itself: no step sets them.
//!
//! The agent sets `NVIDIA_VISIBLE_DEVICES` and `CUDA_VISIBLE_DEVICES` to the GPUs it assigned,
//! and `GANTRY_RUN_ID`, `GANTRY_TASK_ID`, `GANTRY_ATTEMPT`. A step that set
//! `NVIDIA_VISIBLE_DEVICES=all` would, on hosts whose NVIDIA toolkit honours that variable,
//! see every GPU of the host, those of other attempts included. So no step may set any
//! `NVIDIA_*` (the toolkit also reads `NVIDIA_DRIVER_CAPABILITIES`, `NVIDIA_REQUIRE_*`, …),
//! `CUDA_VISIBLE_DEVICES` or `GANTRY_*` variable. The coordinator refuses them at submit; the
//! agent drops them and sets its own values last.
//!
//! `LD_PRELOAD` and the like are *not* reserved: they change only the step's own processes,
//! inside its own container, which the step controls anyway.

/// Whether the agent reserves the variable `name`.
pub fn is_reserved_env(name: &str) -> bool {
    name.starts_with("NVIDIA_") || name.starts_with("GANTRY_") || name == "CUDA_VISIBLE_DEVICES"
}

/// What the reserved names are, for messages.
pub const RESERVED_ENV: &str = "NVIDIA_*, CUDA_VISIBLE_DEVICES and GANTRY_* are set by the agent";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        for n in [
            "NVIDIA_VISIBLE_DEVICES",
            "NVIDIA_DRIVER_CAPABILITIES",
            "CUDA_VISIBLE_DEVICES",
            "GANTRY_RUN_ID",
        ] {
            assert!(is_reserved_env(n), "{n}");
        }
        for n in [
            "CUDA_HOME",
            "PATH",
            "LD_PRELOAD",
            "MY_GANTRY_X",
            "nvidia_visible_devices",
        ] {
            assert!(!is_reserved_env(n), "{n}");
        }
    }
}
