//! The leader fires recurring runs: every pass it asks each schedule which tick is due
//! ([`RecurringRun::due`], a function of the replicated record and the clock) and commits a
//! run for it with the request id `<schedule id>/<tick>`. Apply checks the tick against the
//! last one fired and the schedule's concurrency, so a leader that dies around a fire time
//! leaves its successor to fire the same tick at most once, and never one that was fired.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_core::schedule::RecurringRun;
use gantry_core::state::catalog::RunInfo;
use gantry_proto::v1 as pb;

use crate::server::Coordinator;

/// How often the leader looks for due ticks.
const EVERY: Duration = Duration::from_millis(250);
/// How long a tick that could not be fired waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

pub async fn recurring_loop(c: Arc<Coordinator>) {
    let mut failed: HashMap<(String, i64), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(EVERY).await;
        if !c.raft.status().is_leader {
            failed.clear();
            continue;
        }
        let now = crate::now_ms().div_euclid(1000);
        let due: Vec<(RecurringRun, i64)> = {
            let st = c.state.read();
            if st.recurring.is_empty() {
                continue;
            }
            // One walk of the runs for every schedule's count, not one per schedule.
            let mut active: HashMap<&str, usize> = HashMap::new();
            for run in st.runs.values().filter(|r| !r.state.is_terminal()) {
                if let Some(id) = run
                    .info
                    .as_ref()
                    .and_then(|i| i.recurring_run_id.as_deref())
                {
                    *active.entry(id).or_default() += 1;
                }
            }
            st.recurring
                .values()
                .filter_map(|r| {
                    let tick = r.due(now, active.get(r.id.as_str()).copied().unwrap_or(0))?;
                    Some((r.clone(), tick))
                })
                .collect()
        };
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        for (r, tick) in due {
            if failed.contains_key(&(r.id.clone(), tick)) {
                continue;
            }
            match fire(&c, &r, tick).await {
                Ok(run_id) => {
                    tracing::info!(recurring_run = %r.id, tick, %run_id, "recurring run fired");
                    fail::fail_point!("recurring-fired");
                }
                Err(e) => {
                    tracing::warn!(recurring_run = %r.id, tick, error = %e, "recurring run: the tick could not be fired; trying again in 10 s");
                    failed.insert((r.id.clone(), tick), Instant::now());
                }
            }
        }
    }
}

async fn fire(
    c: &Arc<Coordinator>,
    r: &RecurringRun,
    tick: i64,
) -> Result<gantry_model::RunId, tonic::Status> {
    let given: BTreeMap<String, serde_json::Value> = r
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let opts = pb::SubmitRunRequest {
        request_id: format!("{}/{tick}", r.id),
        ..Default::default()
    };
    let info = RunInfo {
        display_name: format!(
            "{} {}",
            r.display_name,
            crate::kfp::json::time(tick * 1000).as_str().unwrap_or("")
        ),
        description: r.description.clone(),
        experiment_id: Some(r.experiment_id.clone()),
        pipeline_version: r.pipeline_version.clone(),
        service_account: r.service_account.clone(),
        archived: false,
        recurring_run_id: Some(r.id.clone()),
        scheduled_at: Some(tick),
    };
    let (run_id, _) = crate::api::Api(c.clone())
        .submit(&r.pipeline_yaml, given, &opts, Some(info), None)
        .await?;
    Ok(run_id)
}
