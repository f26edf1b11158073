//! The leader's placement loop: ready steps and free agents → one `AssignAttempts` command
//! per pass. Followers keep the loop idle.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::scheduler::{agent_capacity, ready_steps, schedule, waiting_reasons};
use gantry_core::state::Command;

use crate::server::Coordinator;

pub async fn scheduling_loop(c: Arc<Coordinator>) {
    let notify = c.dispatcher.schedule.clone();
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if !c.raft.status().is_leader {
            continue;
        }
        let now = crate::now_ms();
        let connected = c.dispatcher.connected();
        let (steps, agents) = {
            let st = c.state.read();
            (ready_steps(&st, now), agent_capacity(&st, &connected))
        };
        if steps.is_empty() {
            c.waiting.lock().unwrap_or_else(|e| e.into_inner()).clear();
            continue;
        }
        let plan = schedule(&steps, &agents);
        *c.waiting.lock().unwrap_or_else(|e| e.into_inner()) = waiting_reasons(&plan);
        if plan.placements.is_empty() {
            continue;
        }
        let n = plan.placements.len();
        let cmd = Command::AssignAttempts {
            placements: plan.placements,
            at: now,
        };
        match c.propose(cmd).await {
            Ok(_) => {
                tracing::debug!(placements = n, "placements committed");
                // More may fit now that this pass is committed.
                notify.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "placement proposal failed"),
        }
    }
}
