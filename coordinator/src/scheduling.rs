//! The leader's placement loop: ready steps and free agents → one `AssignAttempts` command
//! per pass. Followers keep the loop idle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::scheduler::{
    cache_candidates, ready_steps, timeouts_due, waiting_reasons, CacheCandidate, Placer, NO_AGENT,
};
use gantry_core::state::{retention, Command, Outcome, Unschedulable};
use gantry_model::{artifact_prefix, AgentId, RunId};

use crate::dispatch::Waiting;
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
        let generation = c.dispatcher.connected_generation();
        placer.sync(&st, generation, || c.dispatcher.connected());
        // With no agent to place on, the walk of every ready step (under the lock apply
        // waits on) would only find that each one waits for the same reason.
        if placer.has_agents() {
            Some(ready_steps(&st, now))
        } else {
            None
        }
    };
    let Some(steps) = steps else {
        set_waiting(
            c,
            Waiting {
                all: Some(NO_AGENT.to_string()),
                ..Default::default()
            },
        );
        return walking + walk.elapsed();
    };
    if steps.is_empty() {
        set_waiting(c, Waiting::default());
        return walking + walk.elapsed();
    }
    let plan = placer.schedule(&steps);
    walking += walk.elapsed();
    set_waiting(
        c,
        Waiting {
            all: None,
            each: waiting_reasons(&plan),
        },
    );
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

fn set_waiting(c: &Coordinator, w: Waiting) {
    *c.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(w);
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
        let owned: BTreeMap<RunId, RunArtifacts> = {
            let st = c.state.read();
            runs.iter()
                .filter_map(|id| Some((id.clone(), run_artifacts(st.runs.get(id)?))))
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
                    let doomed = removed.iter().filter_map(|id| owned.get(id)).cloned();
                    tokio::spawn(delete_artifacts(c.clone(), doomed.collect()));
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

/// What a removed run leaves in the artifact store: its own prefix, and the artifacts it took
/// from other runs through the cache (kept when those runs went, because it used them).
#[derive(Debug, Clone)]
struct RunArtifacts {
    prefix: String,
    borrowed: Vec<String>,
}

fn run_artifacts(run: &gantry_core::engine::RunRecord) -> RunArtifacts {
    let outputs = run.tasks.values().flat_map(|t| {
        let from_cache = t.cached_from.is_some();
        t.outputs
            .artifacts
            .values()
            .flatten()
            .map(move |a| (from_cache, a.uri.as_str()))
    });
    RunArtifacts {
        prefix: artifact_prefix(&run.pipeline_root, &run.run_id),
        borrowed: borrowed_uris(&run.pipeline_root, &run.run_id, outputs),
    }
}

/// Of a run's task outputs (whether the task was served from the cache, URI): those it took
/// from another run's prefix under the same artifact root through the cache. Anything else
/// outside its own prefix (what an importer brought in, say) is the user's, never deleted.
fn borrowed_uris<'a>(
    root: &str,
    run_id: &RunId,
    outputs: impl Iterator<Item = (bool, &'a str)>,
) -> Vec<String> {
    let own = format!("{}/", artifact_prefix(root, run_id));
    let under_root = format!("{}/", root.trim_end_matches('/'));
    outputs
        .filter(|(from_cache, uri)| {
            *from_cache && uri.starts_with(&under_root) && !uri.starts_with(&own)
        })
        .map(|(_, uri)| uri.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Deletes what lies under removed runs' artifact prefixes, except what a remaining run or
/// cache entry refers to (a later run's cached result may point into a removed run's prefix).
/// What the removed runs took from other runs through the cache goes too, once no remaining
/// run or cache entry refers to it and the run that wrote it is gone as well (it was kept
/// for them alone). A failure is logged and not retried: the objects stay, as with the
/// option off.
async fn delete_artifacts(c: Arc<Coordinator>, removed: Vec<RunArtifacts>) {
    let (keep, remaining): (BTreeSet<String>, BTreeSet<String>) = {
        let st = c.state.read();
        let keep = st
            .artifact_uris_in_use()
            .into_iter()
            .map(str::to_string)
            .collect();
        let has_borrowed = removed.iter().any(|r| !r.borrowed.is_empty());
        let remaining = if has_borrowed {
            st.runs
                .values()
                .map(|r| artifact_prefix(&r.pipeline_root, &r.run_id))
                .collect()
        } else {
            BTreeSet::new()
        };
        (keep, remaining)
    };
    let keep = keep.iter().map(String::as_str).collect();
    for r in &removed {
        match c.artifacts.delete_under(&r.prefix, &keep).await {
            Ok((deleted, kept)) => {
                tracing::info!(prefix = %r.prefix, deleted, kept, "retention: a removed run's artifacts deleted")
            }
            Err(e) => {
                tracing::warn!(prefix = %r.prefix, error = %e, "retention: could not delete a removed run's artifacts")
            }
        }
    }
    let left_behind = removed
        .iter()
        .flat_map(|r| &r.borrowed)
        .filter(|uri| !keep.contains(uri.as_str()) && !under_any(uri, &remaining));
    for uri in left_behind.collect::<BTreeSet<_>>() {
        match c.artifacts.delete_under(uri, &keep).await {
            Ok((deleted, _)) => {
                tracing::info!(%uri, deleted, "retention: an artifact kept for a removed run's cache hit deleted")
            }
            Err(e) => {
                tracing::warn!(%uri, error = %e, "retention: could not delete an artifact kept for a removed run")
            }
        }
    }
}

/// Whether `uri` lies under one of `prefixes` (whole path segments).
fn under_any(uri: &str, prefixes: &BTreeSet<String>) -> bool {
    let mut at = uri;
    while let Some((up, _)) = at.rsplit_once('/') {
        if prefixes.contains(up) {
            return true;
        }
        at = up;
    }
    false
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

#[cfg(test)]
mod tests {
    use super::{borrowed_uris, under_any};

    #[test]
    fn only_cache_hits_into_another_runs_prefix_are_borrowed() {
        let root = "s3://b/root/";
        let outputs = [
            // A cache hit on run-1's result: borrowed.
            (true, "s3://b/root/run-1/t/attempt-1/data"),
            (true, "s3://b/root/run-1/t/attempt-1/data"),
            // Its own output, and an import from elsewhere (cached or not): never.
            (false, "s3://b/root/run-2/u/attempt-1/model"),
            (true, "s3://b/root/run-2/u/attempt-1/model"),
            (false, "s3://public/datasets/mnist"),
            (true, "s3://public/datasets/mnist"),
            // Under the root but not from the cache (an importer pointing there): never.
            (false, "s3://b/root/run-1/t/attempt-1/other"),
        ];
        assert_eq!(
            borrowed_uris(root, &"run-2".into(), outputs.into_iter()),
            ["s3://b/root/run-1/t/attempt-1/data"]
        );
    }

    #[test]
    fn a_uri_is_under_a_prefix_by_whole_segments() {
        let prefixes = ["s3://b/root/run-1".to_string()].into_iter().collect();
        assert!(under_any("s3://b/root/run-1/t/attempt-1/data", &prefixes));
        assert!(!under_any("s3://b/root/run-10/t/attempt-1/data", &prefixes));
        assert!(
            !under_any("s3://b/root/run-1", &prefixes),
            "the prefix itself"
        );
        assert!(!under_any("s3://b/other/run-1/x", &prefixes));
    }
}
