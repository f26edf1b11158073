//! The leader's placement loop: ready steps and free agents → one `AssignAttempts` command
//! per pass. Followers keep the loop idle.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::scheduler::{
    agent_capacity, cache_candidates, ready_steps, schedule, timeouts_due, waiting_reasons,
    CacheCandidate,
};
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
        let due = timeouts_due(&c.state.read(), now);
        for cmd in due {
            if let Err(e) = c.propose(cmd).await {
                tracing::warn!(error = %e, "time-out proposal failed");
            }
        }
        let candidates = cache_candidates(&c.state.read(), now);
        if !candidates.is_empty() {
            serve_from_cache(&c, candidates, now).await;
        }
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

/// Most cache hits checked in one pass, so placement is not held up behind a long list.
const CACHE_CHECKS_PER_PASS: usize = 256;

/// Serves ready tasks from the cache when every artifact of their entry still exists, and
/// forgets entries whose artifacts are gone (those tasks are then placed like any other).
async fn serve_from_cache(c: &Arc<Coordinator>, candidates: Vec<CacheCandidate>, now: i64) {
    let mut gone: Vec<String> = Vec::new();
    for cand in candidates.into_iter().take(CACHE_CHECKS_PER_PASS) {
        if gone.contains(&cand.key) {
            continue;
        }
        let mut all_there = true;
        for uri in &cand.artifact_uris {
            match c.artifacts.store_for(uri) {
                Ok(store) => match store.exists(uri).await {
                    Ok(true) => {}
                    Ok(false) => {
                        all_there = false;
                        break;
                    }
                    Err(e) => {
                        // Unknown is not gone: keep the entry and look again next pass.
                        tracing::warn!(%uri, error = %e, "cannot check a cached artifact");
                        return;
                    }
                },
                Err(e) => {
                    tracing::warn!(%uri, error = %e, "cached artifact URI unusable");
                    all_there = false;
                    break;
                }
            }
        }
        if !all_there {
            tracing::info!(key = %cand.key, run = %cand.run_id, task = %cand.task_id,
                "cache entry's artifacts are gone; the task runs");
            gone.push(cand.key.clone());
            continue;
        }
        let cmd = Command::UseCachedResult {
            run_id: cand.run_id.clone(),
            task_id: cand.task_id.clone(),
            at: now,
        };
        if let Err(e) = c.propose(cmd).await {
            tracing::warn!(error = %e, "cache hit proposal failed");
            return;
        }
    }
    if !gone.is_empty() {
        if let Err(e) = c.propose(Command::ForgetCache { keys: gone }).await {
            tracing::warn!(error = %e, "forgetting cache entries failed");
        }
    }
}
