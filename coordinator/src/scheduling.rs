//! The leader's placement loop: ready steps and free agents → one `AssignAttempts` command
//! per pass. Followers keep the loop idle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_core::scheduler::{
    cache_candidates, ready_steps, timeouts_due, waiting_reasons, CacheCandidate, Placer,
};
use gantry_core::state::{retention, Command, Outcome, Unschedulable};
use gantry_model::{artifact_prefix, AgentId, RunId};

use crate::server::Coordinator;

/// How often agents' leases are checked. The check walks every agent, so it is kept out of
/// the passes that follow each commit (thousands a second on a busy fleet); leases are 6 s at
/// least, so a second more to notice a lost agent is of no consequence.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A pass walks the ready steps, due time-outs and cache candidates of every run while it
/// holds the state's read lock, which apply waits on. Each commit wakes the loop, so under a
/// stream of submissions back-to-back passes took most of the leader's CPU and stalled apply
/// (`gantry-bench raft`: 1,255 commits/s, the profile dominated by these walks). The next pass
/// therefore waits at least this many times as long as the last one took: the loop spends at
/// most a fifth of a core, and a step still waits no longer than a few passes.
const PASS_SPACING: u32 = 4;
/// The least wait between passes, whatever the last one took.
const MIN_PASS_GAP: Duration = Duration::from_millis(2);

pub async fn scheduling_loop(c: Arc<Coordinator>) {
    let notify = c.dispatcher.schedule.clone();
    let mut last_lease_check: Option<std::time::Instant> = None;
    // Kept across passes while this node leads; a new term starts from a fresh one.
    let mut placer: Option<Placer> = None;
    let mut last_pass = Duration::ZERO;
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        tokio::time::sleep((last_pass * PASS_SPACING).max(MIN_PASS_GAP)).await;
        if !c.raft.status().is_leader {
            placer = None;
            continue;
        }
        last_pass = pass(&c, &mut last_lease_check, &mut placer).await;
    }
}

/// One pass: due time-outs, cache hits, leases and retention (once a second), placement.
/// Returns the time it spent walking the state (not waiting for its proposals to commit).
async fn pass(
    c: &Arc<Coordinator>,
    last_lease_check: &mut Option<std::time::Instant>,
    placer: &mut Option<Placer>,
) -> Duration {
    let notify = c.dispatcher.schedule.clone();
    let now = crate::now_ms();
    let walk = std::time::Instant::now();
    let due = timeouts_due(&c.state.read(), now);
    let mut walking = walk.elapsed();
    for cmd in due {
        if let Err(e) = c.propose(cmd).await {
            tracing::warn!(error = %e, "time-out proposal failed");
        }
    }
    let walk = std::time::Instant::now();
    let candidates = cache_candidates(&c.state.read(), now);
    walking += walk.elapsed();
    if !candidates.is_empty() {
        serve_from_cache(c, candidates, now).await;
    }
    if last_lease_check.is_none_or(|t| t.elapsed() >= LEASE_CHECK_EVERY) {
        *last_lease_check = Some(std::time::Instant::now());
        declare_lost_agents(c, now).await;
        apply_retention(c, now).await;
    }
    let placer = placer.get_or_insert_with(|| Placer::new(c.cpu_policy));
    let walk = std::time::Instant::now();
    let steps = {
        let st = c.state.read();
        let steps = ready_steps(&st, now);
        if !steps.is_empty() {
            let generation = c.dispatcher.connected_generation();
            placer.sync(&st, generation, || c.dispatcher.connected());
        }
        steps
    };
    if steps.is_empty() {
        c.waiting.lock().unwrap_or_else(|e| e.into_inner()).clear();
        return walking + walk.elapsed();
    }
    let plan = placer.schedule(&steps);
    walking += walk.elapsed();
    *c.waiting.lock().unwrap_or_else(|e| e.into_inner()) = waiting_reasons(&plan);
    if !plan.unschedulable.is_empty() {
        let tasks = plan
            .unschedulable
            .iter()
            .map(|(s, reason)| Unschedulable {
                run_id: s.run_id.clone(),
                task_id: s.task_id.clone(),
                reason: reason.clone(),
            })
            .collect();
        if let Err(e) = c
            .propose(Command::FailUnschedulable { tasks, at: now })
            .await
        {
            tracing::warn!(error = %e, "unschedulable proposal failed");
        }
    }
    if plan.placements.is_empty() {
        return walking;
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
    walking
}

/// Declares lost the agents with unfinished attempts that have been silent for longer than
/// the lease: their attempts are placed again elsewhere.
async fn declare_lost_agents(c: &Arc<Coordinator>, now: i64) {
    let candidates: Vec<AgentId> = {
        let st = c.state.read();
        st.agents
            .values()
            .filter(|a| a.lost_at.is_none() && !a.running.is_empty())
            .map(|a| a.agent_id.clone())
            .collect()
    };
    if candidates.is_empty() {
        return;
    }
    for agent_id in c.dispatcher.silent_for(&candidates, c.agent_lease) {
        tracing::warn!(agent = %agent_id, lease = ?c.agent_lease, "agent silent past its lease: declaring it lost");
        let cmd = Command::DeclareAgentLost {
            agent_id: agent_id.clone(),
            at: now,
        };
        if let Err(e) = c.propose(cmd).await {
            tracing::warn!(agent = %agent_id, error = %e, "could not declare the agent lost");
        }
    }
}

/// Most runs (and agents) one retention command removes, so that one entry stays small and
/// a large backlog goes in steps.
const RETENTION_BATCH: usize = 256;

/// Proposes the removal of the finished runs and lost agents the retention policy (and the
/// runs' own ttls) says are due. Apply checks each again.
async fn apply_retention(c: &Arc<Coordinator>, now: i64) {
    let (runs, agents) = {
        let st = c.state.read();
        (
            retention::runs_to_remove(&st, &c.retention, now, RETENTION_BATCH),
            retention::agents_to_forget(&st, &c.retention, now, RETENTION_BATCH),
        )
    };
    if !runs.is_empty() {
        let n = runs.len();
        // Where each run's artifacts lie, read while the runs are still there.
        let prefixes: BTreeMap<RunId, String> = {
            let st = c.state.read();
            runs.iter()
                .filter_map(|id| {
                    let run = st.runs.get(id)?;
                    Some((id.clone(), artifact_prefix(&run.pipeline_root, id)))
                })
                .collect()
        };
        match c.propose(Command::RemoveRuns { run_ids: runs }).await {
            Ok(applied) => {
                let removed = match applied.result {
                    Ok(Outcome::RunsRemoved(ids)) => ids,
                    _ => Vec::new(),
                };
                tracing::info!(due = n, removed = removed.len(), "retention: runs removed");
                if c.delete_removed_run_artifacts && !removed.is_empty() {
                    let doomed = removed
                        .iter()
                        .filter_map(|id| prefixes.get(id).cloned())
                        .collect();
                    tokio::spawn(delete_artifacts(c.clone(), doomed));
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention: could not remove runs"),
        }
    }
    if !agents.is_empty() {
        match c
            .propose(Command::ForgetLostAgents {
                agent_ids: agents.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!(?agents, "retention: lost agents forgotten"),
            Err(e) => tracing::warn!(error = %e, "retention: could not forget lost agents"),
        }
    }
}

/// Deletes what lies under removed runs' artifact prefixes, except what a remaining run or
/// cache entry refers to (a later run's cached result may point into a removed run's prefix).
/// A failure is logged and not retried: the objects stay, as with the option off.
async fn delete_artifacts(c: Arc<Coordinator>, prefixes: Vec<String>) {
    let keep: std::collections::BTreeSet<String> = {
        let st = c.state.read();
        st.artifact_uris_in_use()
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let keep = keep.iter().map(String::as_str).collect();
    for prefix in prefixes {
        match c.artifacts.delete_under(&prefix, &keep).await {
            Ok((deleted, kept)) => {
                tracing::info!(%prefix, deleted, kept, "retention: a removed run's artifacts deleted")
            }
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "retention: could not delete a removed run's artifacts")
            }
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
