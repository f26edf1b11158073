//! A panic ends the coordinator.
//!
//! tokio keeps a runtime going when one of its tasks panics, and a thread's panic reaches only
//! whoever joins it. A node with its leadership watch, a dispatcher loop or its Raft thread dead
//! could go on answering (as leader, even) while part of it no longer works. So any panic ends
//! the process with the same status as a fatal Raft error, and a supervisor (systemd with
//! `Restart=on-failure`, say) restarts it from what is on disk, which a crash already has to be
//! safe for. Nothing in the coordinator catches a panic: the CEL reader is total
//! (`gantry_core::ir::cel`), so no input needs one turned into an error.

/// The process's exit status after a panic or a fatal Raft error (EX_SOFTWARE).
pub const EXIT_FATAL: i32 = 70;

/// Installs the panic hook. Call it once, first thing in `main`.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tracing::error!(panic = %info, status = EXIT_FATAL,
            "a coordinator thread panicked; exiting so that the node restarts from its disk");
        std::process::exit(EXIT_FATAL);
    }));
}
