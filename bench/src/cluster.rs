//! `gantry-bench raft` and `gantry-bench failover`: three real `gantry-coordinator` processes
//! on 127.0.0.1 with the coordinator's default timings (and, for failover, a `gantry-agent`
//! with the process runtime), started by `gantry_testkit::cluster`, the fault tests' cluster.
//! Every child is killed and reaped when the bench ends, however it ends.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry_cli::exit::CliError;
use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::cluster::{Authed, Cluster, ClusterOpts};
use gantry_testkit::poll_async;

use crate::pipeline::{container_pipeline, noop_pipeline};
use crate::table::{pct, table};

const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const GET_RUN_TIMEOUT: Duration = Duration::from_secs(2);
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
const NODES: usize = 3;
/// Long enough that the run does not finish during the bench (0.1 s sleep per step).
const CHAIN_STEPS: usize = 2000;

/// Whether the cluster under test serves TLS (certificates, mutual TLS between peers, bearer
/// tokens): `both` runs the same bench twice, on and then off, and prints both tables.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    On,
    Off,
    Both,
}

impl TlsMode {
    pub fn runs(self) -> &'static [bool] {
        match self {
            TlsMode::On => &[true],
            TlsMode::Off => &[false],
            TlsMode::Both => &[true, false],
        }
    }
}

pub fn tls_word(on: bool) -> &'static str {
    if on {
        "TLS on"
    } else {
        "TLS off"
    }
}

#[derive(clap::Args, Debug)]
pub struct RaftArgs {
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent submitters, one level after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub concurrency: Vec<usize>,
    /// TLS on the cluster: on (as deployed), off (plain TCP on loopback), or both, one table each.
    #[arg(long, value_enum, default_value_t = TlsMode::Both)]
    pub tls: TlsMode,
    /// Also run a 3-member etcd on this machine (Debian's etcd-server) with the same writes
    /// and concurrency levels, and print its table beside Gantry's.
    #[arg(long)]
    pub etcd: bool,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
}

pub(crate) fn unavailable(e: impl Display) -> CliError {
    CliError::Unavailable(e.to_string())
}

/// Where `gantry-coordinator` and `gantry-agent` are: `GANTRY_BIN_DIR`, else beside this
/// executable (cargo builds them into the same directory).
fn bin_dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("GANTRY_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()
        .map_err(|e| unavailable(format!("cannot locate this executable: {e}")))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| unavailable(format!("{} has no parent", exe.display())))
}

/// [`bin_dir`], having checked that each of `needed` is there.
pub(crate) fn bin_dir_checked(needed: &[&str]) -> Result<PathBuf, CliError> {
    let bin_dir = bin_dir()?;
    for b in needed {
        let p = bin_dir.join(b);
        if !p.is_file() {
            return Err(unavailable(format!(
                "{} not found: build it (cargo build --release -p {b}) or set GANTRY_BIN_DIR",
                p.display()
            )));
        }
        println!("using {}", p.display());
    }
    Ok(bin_dir)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A channel to node `id` with the harness's credentials (its client certificate and the admin
/// token when TLS is on).
pub(crate) fn channel(c: &Cluster, id: u64) -> Result<Authed, CliError> {
    c.channel(id)
        .ok_or_else(|| unavailable(format!("no channel to node {id} at {}", c.address(id))))
}

/// A connection of its own to `addr` presenting `tls` (an agent's certificate) or plain TCP.
pub(crate) fn agent_channel(
    addr: &str,
    tls: Option<std::sync::Arc<gantry_tls::TlsContext>>,
) -> Result<tonic::transport::Channel, CliError> {
    // A thousand agents dialling at once queue in the leader's accept backlog and handshake
    // one after another: the short timeout of the polling loops would fail them.
    gantry_tls::client::channel(addr, tls, |e| {
        e.connect_timeout(AGENT_CONNECT_TIMEOUT).tcp_nodelay(true)
    })
    .map_err(|e| unavailable(format!("bad address {addr}: {e}")))
}

/// Starts 3 loopback coordinators from the binaries beside this one (and checks that
/// `gantry-agent` is there too when `with_agent`), with TLS, certificates and tokens when `tls`.
pub(crate) fn start_cluster(with_agent: bool, tls: bool) -> Result<Cluster, CliError> {
    let needed: &[&str] = if with_agent {
        &["gantry-coordinator", "gantry-agent"]
    } else {
        &["gantry-coordinator"]
    };
    let bin_dir = bin_dir_checked(needed)?;
    let mut opts = ClusterOpts::loopback(NODES);
    // As deployed (the tests' clusters snapshot more often, to exercise it).
    opts.snapshot_entries = gantry_model::limits::DEFAULT_SNAPSHOT_ENTRIES;
    opts.bin_dir = Some(bin_dir);
    opts.tls = tls;
    // Waits for each node to serve: blocking, so off the async workers.
    let c = tokio::task::block_in_place(|| Cluster::start(opts))
        .map_err(|e| unavailable(format!("{e:#}")))?;
    let peers: Vec<String> = c
        .all_ids()
        .iter()
        .map(|id| format!("{id}={}", c.address(*id)))
        .collect();
    println!(
        "cluster ({}): {} (data and logs in {})",
        tls_word(tls),
        peers.join(" "),
        c.dir.path().display()
    );
    Ok(c)
}

/// The cluster's directory goes with it, so on an error its logs are copied out to stay
/// readable.
pub(crate) fn failed(c: &Cluster, e: CliError) -> CliError {
    let kept = c.keep_logs(&std::env::temp_dir());
    let paths: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
    unavailable(format!("{e}; logs: {}", paths.join(" ")))
}

/// Runs `bench` on a fresh cluster; Ctrl-C ends it through the cluster's guard rather than
/// leaving the children running.
async fn on_cluster<T>(
    with_agent: bool,
    tls: bool,
    bench: impl AsyncFnOnce(&mut Cluster) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let mut cluster = start_cluster(with_agent, tls)?;
    let result = tokio::select! {
        r = bench(&mut cluster) => r,
        _ = tokio::signal::ctrl_c() => Err(unavailable("interrupted")),
    };
    result.map_err(|e| failed(&cluster, e))
}

/// One lazily connected channel per node, renewed when the node restarts.
struct Channels(Vec<Authed>);

impl Channels {
    fn new(c: &Cluster) -> Result<Self, CliError> {
        let all = c
            .all_ids()
            .iter()
            .map(|id| channel(c, *id))
            .collect::<Result<_, _>>()?;
        Ok(Channels(all))
    }

    fn runs(&self, id: u64) -> RunServiceClient<Authed> {
        RunServiceClient::new(self.0[(id - 1) as usize].clone())
    }

    /// A fresh connection, not one that knew the killed process.
    fn renew(&mut self, c: &Cluster, id: u64) -> Result<(), CliError> {
        self.0[(id - 1) as usize] = channel(c, id)?;
        Ok(())
    }
}

async fn wait_leader(
    c: &Cluster,
    among: &[u64],
    after_term: u64,
) -> Result<pb::ClusterStatus, CliError> {
    c.wait_leader_async(among, after_term, Duration::from_secs(15))
        .await
        .map_err(|e| unavailable(format!("{e:#}")))
}

// ---------------------------------------------------------------- raft

pub async fn raft(a: RaftArgs) -> Result<(), CliError> {
    let mut tables = Vec::new();
    for &tls in a.tls.runs() {
        let t = on_cluster(false, tls, async |c: &mut Cluster| raft_on(c, &a).await).await?;
        println!("\n{}:\n{t}", tls_word(tls));
        tables.push((tls, t));
    }
    let etcd = if a.etcd {
        let t = etcd_on(&a).await?;
        println!("\netcd (plain TCP, no auth):\n{t}");
        Some(t)
    } else {
        None
    };
    if tables.len() > 1 || etcd.is_some() {
        for (tls, t) in &tables {
            println!("\nGantry, {}:\n{t}", tls_word(*tls));
        }
        if let Some(t) = &etcd {
            println!(
                "\netcd 3-member (plain TCP, no auth; each write a Put of the same bytes):\n{t}"
            );
        }
    }
    println!(
        "\neach commit: a SubmitRun whose CreateRun entry is fsynced on a majority and applied before \
         it answers; batching is group commit in the Raft thread (the proposals drained for one \
         Ready share one fsync). TLS on: every connection (client and peers) is mutual TLS and \
         each call carries a bearer token checked against the replicated ACL"
    );
    Ok(())
}

async fn raft_on(c: &mut Cluster, a: &RaftArgs) -> Result<comfy_table::Table, CliError> {
    let leader = wait_leader(c, &c.all_ids(), 0).await?;
    println!("leader: node {} (term {})", leader.node_id, leader.term);
    println!("leader commit_index before: {}", leader.commit_index);
    let runs = Channels::new(c)?.runs(leader.node_id);
    let seq = Arc::new(AtomicU64::new(0));
    let mut index = leader.commit_index;
    let mut t = commit_table();
    for &n in &a.concurrency {
        let (mut lat, wall) = level(&runs, n.max(1), Duration::from_secs(a.seconds), &seq).await?;
        let now = commit_index(c, leader.node_id).await?;
        t.add_row(commit_row(n, &mut lat, wall, now.saturating_sub(index)));
        index = now;
    }
    println!("leader commit_index after: {index}");
    Ok(t)
}

async fn etcd_on(a: &RaftArgs) -> Result<comfy_table::Table, CliError> {
    let etcd = crate::etcd::Etcd::start().await?;
    let ch = etcd.leader_channel().await?;
    let value = noop_pipeline("bench-raft", 1, false).into_bytes();
    let seq = Arc::new(AtomicU64::new(0));
    let mut index = crate::etcd::raft_index(&ch).await?;
    let mut t = commit_table();
    for &n in &a.concurrency {
        let (mut lat, wall) =
            crate::etcd::level(&ch, n.max(1), Duration::from_secs(a.seconds), &value, &seq).await?;
        let now = crate::etcd::raft_index(&ch).await?;
        t.add_row(commit_row(n, &mut lat, wall, now.saturating_sub(index)));
        index = now;
    }
    Ok(t)
}

/// The table both stores' levels are printed in, so they read side by side.
fn commit_table() -> comfy_table::Table {
    table(&[
        "concurrency",
        "commits",
        "commits/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "log delta",
    ])
}

/// One level: `n` clients, every latency in microseconds, its wall time, the log's growth.
fn commit_row(n: usize, lat: &mut [i64], wall: Duration, log_delta: u64) -> Vec<String> {
    let ms = |v: f64| format!("{:.2}", v / 1000.0);
    vec![
        n.to_string(),
        lat.len().to_string(),
        format!("{:.1}", lat.len() as f64 / wall.as_secs_f64()),
        ms(pct(lat, 0.5)),
        ms(pct(lat, 0.99)),
        ms(pct(lat, 1.0)),
        log_delta.to_string(),
    ]
}

async fn commit_index(c: &Cluster, id: u64) -> Result<u64, CliError> {
    c.status_async(id)
        .await
        .map(|s| s.commit_index)
        .ok_or_else(|| unavailable(format!("node {id} did not answer Status")))
}

/// `n` submitters for `run_for`; every latency in microseconds, and the wall time of the level.
async fn level(
    runs: &RunServiceClient<Authed>,
    n: usize,
    run_for: Duration,
    seq: &Arc<AtomicU64>,
) -> Result<(Vec<i64>, Duration), CliError> {
    let t0 = Instant::now();
    let deadline = t0 + run_for;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(submitter(runs.clone(), deadline, seq.clone()));
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        let lat = joined.map_err(|e| unavailable(format!("a submitter died: {e}")))??;
        all.extend(lat);
    }
    Ok((all, t0.elapsed()))
}

async fn submitter(
    mut runs: RunServiceClient<Authed>,
    deadline: Instant,
    seq: Arc<AtomicU64>,
) -> Result<Vec<i64>, CliError> {
    let yaml = noop_pipeline("bench-raft", 1, false);
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        let req = pb::SubmitRunRequest {
            pipeline_yaml: yaml.clone(),
            parameters: Default::default(),
            // Unique, so that each call commits a new run rather than finding an earlier one.
            request_id: format!("bench-raft-{}", seq.fetch_add(1, Ordering::Relaxed)),
            ..Default::default()
        };
        let t = Instant::now();
        tokio::time::timeout(SUBMIT_TIMEOUT, runs.submit_run(req))
            .await
            .map_err(|_| unavailable(format!("SubmitRun: no answer in {SUBMIT_TIMEOUT:?}")))??;
        lat.push(t.elapsed().as_micros() as i64);
    }
    Ok(lat)
}

// ---------------------------------------------------------------- failover

pub async fn failover(a: FailoverArgs) -> Result<(), CliError> {
    on_cluster(true, true, async |c: &mut Cluster| failover_on(c, a).await).await
}

async fn failover_on(c: &mut Cluster, a: FailoverArgs) -> Result<(), CliError> {
    c.start_agent("bench-agent", &[])
        .map_err(|e| unavailable(format!("{e:#}")))?;
    let mut links = Channels::new(c)?;
    let leader = wait_leader(c, &c.all_ids(), 0).await?;
    let yaml = container_pipeline(
        "bench-failover",
        CHAIN_STEPS,
        true,
        &["sh", "-c", "sleep 0.1"],
    );
    let mut run_id = submit(&links, leader.node_id, &yaml).await?;
    println!("run {run_id}: a chain of {CHAIN_STEPS} steps of `sh -c \"sleep 0.1\"`\n");
    let (mut elected, mut dispatched) = (Vec::new(), Vec::new());
    for k in 1..=a.kills {
        let (e, d) = kill_round(c, &mut links, &mut run_id, &yaml)
            .await
            .map_err(|e| unavailable(format!("kill {k}: {e}")))?;
        println!(
            "kill {k}/{}: new leader after {e} ms, next step dispatched after {d} ms",
            a.kills
        );
        elected.push(e);
        dispatched.push(d);
    }
    let mut t = table(&[
        "after kill -9 of leader",
        "n",
        "median ms",
        "p90 ms",
        "p99 ms",
        "max ms",
    ]);
    for (label, v) in [
        ("new leader elected", &mut elected),
        ("next step dispatched", &mut dispatched),
    ] {
        t.add_row(vec![
            label.to_string(),
            v.len().to_string(),
            format!("{:.0}", pct(v, 0.5)),
            format!("{:.0}", pct(v, 0.9)),
            format!("{:.0}", pct(v, 0.99)),
            format!("{:.0}", pct(v, 1.0)),
        ]);
    }
    println!("\n{t}");
    println!(
        "\nt0: wall clock just before kill -9; elected: first poll (every 10 ms) where a survivor \
         says LEADER in a higher term; dispatched: the committed assigned-at timestamp (ms, chosen \
         by the new leader on this machine's clock) of the first task assigned at or after t0"
    );
    println!("goal: p99 under 2000 ms with default timeouts (tick 100 ms, election 6 ticks, heartbeat 1 tick)");
    Ok(())
}

async fn submit(links: &Channels, leader: u64, yaml: &str) -> Result<String, CliError> {
    let req = pb::SubmitRunRequest {
        pipeline_yaml: yaml.to_string(),
        parameters: Default::default(),
        request_id: format!("bench-failover-{}", now_ms()),
        ..Default::default()
    };
    let r = tokio::time::timeout(SUBMIT_TIMEOUT, links.runs(leader).submit_run(req))
        .await
        .map_err(|_| unavailable("SubmitRun: no answer"))??;
    Ok(r.into_inner().run_id)
}

/// One kill: milliseconds from the kill to a new leader and to the next dispatched step.
async fn kill_round(
    c: &mut Cluster,
    links: &mut Channels,
    run_id: &mut String,
    yaml: &str,
) -> Result<(i64, i64), CliError> {
    let old = wait_steady(c, links, run_id, yaml, Duration::from_secs(30)).await?;
    let t0 = now_ms();
    c.kill9(old.node_id);
    let survivors: Vec<u64> = c
        .all_ids()
        .into_iter()
        .filter(|i| *i != old.node_id)
        .collect();
    let new = wait_leader(c, &survivors, old.term).await?;
    let t_leader = now_ms();
    let t_dispatch = wait_dispatch(links, new.node_id, run_id, t0, Duration::from_secs(15)).await?;
    tokio::task::block_in_place(|| c.start_node(old.node_id))
        .map_err(|e| unavailable(format!("{e:#}")))?;
    links.renew(c, old.node_id)?;
    wait_caught_up(c, old.node_id, Duration::from_secs(30)).await?;
    Ok((t_leader - t0, t_dispatch - t0))
}

async fn get_run(links: &Channels, id: u64, run_id: &str) -> Option<pb::Run> {
    let req = pb::GetRunRequest {
        run_id: run_id.to_string(),
    };
    match tokio::time::timeout(GET_RUN_TIMEOUT, links.runs(id).get_run(req)).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// All nodes answer, exactly one leader, and a step succeeded within the last second; returns
/// the leader's status. A run that finished is replaced by a new one.
async fn wait_steady(
    c: &Cluster,
    links: &Channels,
    run_id: &mut String,
    yaml: &str,
    within: Duration,
) -> Result<pb::ClusterStatus, CliError> {
    // A cell, not the `&mut` itself: an async closure cannot hand out a borrow of its
    // captures across calls.
    let current = std::cell::RefCell::new(run_id.clone());
    // Ok(Err(_)): an error that ends the wait; Err(()): not steady yet.
    let steady = poll_async(within, Duration::from_millis(50), async || {
        let Some(leader) = sole_leader(c.statuses_async(&c.all_ids()).await) else {
            return Err(());
        };
        let id = current.borrow().clone();
        let Some(run) = get_run(links, leader.node_id, &id).await else {
            return Err(());
        };
        match run.state() {
            pb::RunState::Succeeded => match submit(links, leader.node_id, yaml).await {
                Ok(next) => {
                    *current.borrow_mut() = next;
                    Err(())
                }
                Err(e) => Ok(Err(e)),
            },
            pb::RunState::Failed | pb::RunState::Canceled => Ok(Err(unavailable(format!(
                "run {id} is {}: {}",
                run.state().word(),
                run.error
            )))),
            _ if recent_success(&run, now_ms() - 1000) => Ok(Ok(leader)),
            _ => Err(()),
        }
    })
    .await;
    *run_id = current.into_inner();
    steady.map_err(|()| {
        unavailable(format!(
            "the cluster was not steady (3 nodes answering, one leader, a step succeeding) \
             within {within:?}"
        ))
    })?
}

fn sole_leader(all: Vec<Option<pb::ClusterStatus>>) -> Option<pb::ClusterStatus> {
    let answered: Vec<pb::ClusterStatus> = all.into_iter().collect::<Option<_>>()?;
    let mut leaders = answered.into_iter().filter(|s| s.role == "LEADER");
    match (leaders.next(), leaders.next()) {
        (Some(l), None) => Some(l),
        _ => None,
    }
}

fn recent_success(run: &pb::Run, since_ms: i64) -> bool {
    run.tasks
        .iter()
        .any(|t| t.state() == pb::TaskState::Succeeded && t.finished_at_ms >= since_ms)
}

/// The committed assignment time of the first task assigned at or after `t0` (a task's
/// `started_at_ms` is its first attempt's assigned-at time).
async fn wait_dispatch(
    links: &Channels,
    leader: u64,
    run_id: &str,
    t0: i64,
    within: Duration,
) -> Result<i64, CliError> {
    poll_async(within, Duration::from_millis(20), async || {
        let run = get_run(links, leader, run_id).await.ok_or(())?;
        run.tasks
            .iter()
            .map(|t| t.started_at_ms)
            .filter(|t| *t >= t0)
            .min()
            .ok_or(())
    })
    .await
    .map_err(|()| {
        unavailable(format!(
            "no step of run {run_id} was dispatched by node {leader} within {within:?} of the kill"
        ))
    })
}

/// Until the restarted node has applied what the leader had committed when it came back.
async fn wait_caught_up(c: &Cluster, id: u64, within: Duration) -> Result<(), CliError> {
    let mut target = None;
    poll_async(within, Duration::from_millis(50), async || {
        if target.is_none() {
            target = c
                .leader_async(&c.all_ids(), 0)
                .await
                .map(|l| l.commit_index);
        }
        match (target, c.status_async(id).await) {
            (Some(t), Some(s)) if s.applied_index >= t => Ok(()),
            _ => Err(()),
        }
    })
    .await
    .map_err(|()| {
        unavailable(format!(
            "restarted node {id} did not catch up with the leader within {within:?}"
        ))
    })
}
