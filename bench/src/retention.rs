//! `gantry-bench retention`: a soak of submitted and expired runs on 3 local coordinators
//! started with `--max-finished-runs`. Each run is submitted, then canceled (no agent runs it),
//! so it finishes at once and retention removes it once more than the limit have finished.
//! The table shows, at each checkpoint, the runs the state holds, the leader's resident memory,
//! the newest snapshot's size and the applied index: with retention they stay flat while the
//! runs submitted grow.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_cli::exit::CliError;
use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::cluster::{Authed, Cluster, ClusterOpts};

use crate::cluster::{bin_dir_checked, channel, failed, unavailable};
use crate::pipeline::noop_pipeline;
use crate::table::table;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct RetentionArgs {
    /// Runs to submit and expire in all.
    #[arg(long, default_value_t = 10_000)]
    pub runs: u64,
    /// The coordinators' --max-finished-runs.
    #[arg(long, default_value_t = 100)]
    pub keep: u64,
    /// A row every this many runs.
    #[arg(long, default_value_t = 2_000)]
    pub every: u64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The coordinators' --snapshot-entries, so that snapshots are taken during the soak.
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_entries: u64,
}

pub async fn retention(a: RetentionArgs) -> Result<(), CliError> {
    let mut opts = ClusterOpts::loopback(3);
    opts.bin_dir = Some(bin_dir_checked(&["gantry-coordinator"])?);
    opts.tls = false;
    opts.snapshot_entries = a.snapshot_entries;
    opts.env
        .push(("GANTRY_MAX_FINISHED_RUNS".into(), a.keep.to_string()));
    let c = tokio::task::block_in_place(|| Cluster::start(opts))
        .map_err(|e| unavailable(format!("{e:#}")))?;
    println!(
        "cluster: 3 coordinators, --max-finished-runs {} --snapshot-entries {} (data in {})",
        a.keep,
        a.snapshot_entries,
        c.dir.path().display()
    );
    let result = soak(&c, &a).await;
    result.map_err(|e| failed(&c, e))
}

async fn soak(c: &Cluster, a: &RetentionArgs) -> Result<(), CliError> {
    let leader = c
        .wait_leader_async(&c.all_ids(), 0, Duration::from_secs(15))
        .await
        .map_err(|e| unavailable(format!("{e:#}")))?
        .node_id;
    let runs = RunServiceClient::new(channel(c, leader)?);
    let mut t = table(&[
        "runs submitted",
        "runs in state",
        "leader RSS MiB",
        "newest snapshot KiB",
        "applied index",
        "runs/s",
    ]);
    let seq = Arc::new(AtomicU64::new(0));
    t.add_row(row(c, leader, 0, None).await?);
    let mut done = 0;
    while done < a.runs {
        let n = a.every.min(a.runs - done);
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let per = n.div_ceil(a.concurrency as u64);
        let mut left = n;
        for _ in 0..a.concurrency {
            let share = per.min(left);
            left -= share;
            if share > 0 {
                set.spawn(submit_and_cancel(runs.clone(), share, seq.clone()));
            }
        }
        while let Some(joined) = set.join_next().await {
            joined.map_err(|e| unavailable(format!("a submitter died: {e}")))??;
        }
        let rate = n as f64 / t0.elapsed().as_secs_f64();
        done += n;
        // Retention runs once a second on the leader: let it catch up before measuring.
        settle(c, leader, a.keep).await?;
        t.add_row(row(c, leader, done, Some(rate)).await?);
    }
    println!("\n{t}");
    println!(
        "each run: SubmitRun then CancelRun of a one-step pipeline no agent runs (it ends \
         CANCELED at once); the leader removes the finished runs over --max-finished-runs \
         by a committed RemoveRuns, at most 256 per command, once a second"
    );
    Ok(())
}

async fn submit_and_cancel(
    mut runs: RunServiceClient<Authed>,
    n: u64,
    seq: Arc<AtomicU64>,
) -> Result<(), CliError> {
    let yaml = noop_pipeline("bench-retention", 1, false);
    for _ in 0..n {
        let req = pb::SubmitRunRequest {
            pipeline_yaml: yaml.clone(),
            request_id: format!("bench-retention-{}", seq.fetch_add(1, Ordering::Relaxed)),
            ..Default::default()
        };
        let run_id = tokio::time::timeout(CALL_TIMEOUT, runs.submit_run(req))
            .await
            .map_err(|_| unavailable("SubmitRun: no answer"))??
            .into_inner()
            .run_id;
        tokio::time::timeout(
            CALL_TIMEOUT,
            runs.cancel_run(pb::CancelRunRequest { run_id }),
        )
        .await
        .map_err(|_| unavailable("CancelRun: no answer"))??;
    }
    Ok(())
}

/// Waits (up to a minute) until the leader holds no more than `keep` finished runs.
async fn settle(c: &Cluster, leader: u64, keep: u64) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c
            .status_async(leader)
            .await
            .ok_or_else(|| unavailable(format!("node {leader} did not answer Status")))?;
        let finished = u64::from(s.runs.saturating_sub(s.active_runs));
        if finished <= keep || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn row(
    c: &Cluster,
    leader: u64,
    submitted: u64,
    rate: Option<f64>,
) -> Result<Vec<String>, CliError> {
    let s = c
        .status_async(leader)
        .await
        .ok_or_else(|| unavailable(format!("node {leader} did not answer Status")))?;
    let rss = c.pid(leader).and_then(rss_kib);
    let snap = newest_file_bytes(&c.data_dir(leader).join("snapshots"));
    Ok(vec![
        submitted.to_string(),
        s.runs.to_string(),
        rss.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        snap.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1024.0)),
        s.applied_index.to_string(),
        rate.map_or("-".into(), |r| format!("{r:.0}")),
    ])
}

/// VmRSS of process `pid`, in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The size of the most recently modified file in `dir`.
fn newest_file_bytes(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .max_by_key(|m| m.modified().ok())
        .map(|m| m.len())
}
