//! `gantry bench raft` and `gantry bench failover`: three real `gantry-coordinator` processes on
//! 127.0.0.1 with the coordinator's default timings (and, for failover, a `gantry-agent` with the
//! process runtime). Every child is killed and reaped when the bench ends, however it ends.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry_proto::v1 as pb;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::run_service_client::RunServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::bench::{container_pipeline, noop_pipeline, pct};
use crate::exit::CliError;

/// Short, so that a dead or frozen node does not stall a polling loop.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
const GET_RUN_TIMEOUT: Duration = Duration::from_secs(2);
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const IDS: [u64; 3] = [1, 2, 3];
/// Long enough that the run does not finish during the bench (0.1 s sleep per step).
const CHAIN_STEPS: usize = 2000;

#[derive(clap::Subcommand, Debug)]
pub enum BenchKind {
    /// Commit throughput and latency of the replicated state machine on 3 local coordinators.
    Raft(RaftBenchArgs),
    /// kill -9 of the leader, repeatedly: time to a new leader and to the next step dispatched.
    Failover(FailoverArgs),
    /// Placement alone, in process: placements per second on simulated fleets.
    Scheduler(crate::bench_scheduler::SchedulerBenchArgs),
    /// End to end through Raft on 3 local coordinators with simulated in-process agents:
    /// committed placements per second and the ready-to-assigned delay per fleet size.
    Fleet(crate::bench_fleet::FleetArgs),
}

#[derive(clap::Args, Debug)]
pub struct RaftBenchArgs {
    /// Seconds per concurrency level.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent submitters, one level after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub concurrency: Vec<usize>,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
}

pub async fn run(kind: BenchKind) -> Result<(), CliError> {
    let kind = match kind {
        BenchKind::Scheduler(args) => return crate::bench_scheduler::run(args),
        // Starts a fresh cluster per fleet size itself.
        BenchKind::Fleet(args) => return crate::bench_fleet::run(args).await,
        other => other,
    };
    let mut cluster = Cluster::start(bin_dir()?, true)?;
    // Ctrl-C ends the bench through the guard rather than leaving the children running.
    let result = tokio::select! {
        r = bench(&mut cluster, kind) => r,
        _ = tokio::signal::ctrl_c() => Err(CliError::Unavailable("interrupted".into())),
    };
    result.map_err(|e| cluster.failed(e))
}

async fn bench(cluster: &mut Cluster, kind: BenchKind) -> Result<(), CliError> {
    match kind {
        BenchKind::Raft(a) => raft(cluster, a).await,
        BenchKind::Failover(a) => failover(cluster, a).await,
        // These start their own (or none): `run` hands them over before starting one.
        BenchKind::Scheduler(a) => crate::bench_scheduler::run(a),
        BenchKind::Fleet(a) => crate::bench_fleet::run(a).await,
    }
}

fn unavailable(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Unavailable(format!("{what}: {e}"))
}

pub(crate) fn bin_dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("GANTRY_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(unavailable("cannot locate this executable"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| CliError::Unavailable(format!("{} has no parent", exe.display())))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Ports the OS reports free; all are held until each is known, so they differ.
fn free_ports(n: usize) -> Result<Vec<u16>, CliError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable("cannot bind 127.0.0.1:0"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable("cannot read a bound port"))
}

pub(crate) fn channel(addr: &str) -> Result<Channel, CliError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| CliError::Unavailable(format!("bad address {addr}: {e}")))?
        .connect_timeout(STATUS_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// SIGKILL (what `Child::kill` sends on Unix), then reap so no zombie is left.
fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) struct Node {
    pub(crate) addr: String,
    child: Option<Child>,
    pub(crate) channel: Channel,
}

impl Node {
    /// The process id of the running child, if any.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The child processes and their directory; dropping it kills and reaps every child, then
/// removes the directory.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    peers: Vec<String>,
    pub(crate) nodes: Vec<Node>,
    agent: Option<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            reap(a);
        }
        for n in &mut self.nodes {
            if let Some(c) = n.child.take() {
                reap(c);
            }
        }
    }
}

impl Cluster {
    /// `with_agent`: whether a `gantry-agent` binary must be there too (failover starts one).
    pub(crate) fn start(bin_dir: PathBuf, with_agent: bool) -> Result<Self, CliError> {
        let needed: &[&str] = if with_agent {
            &["gantry-coordinator", "gantry-agent"]
        } else {
            &["gantry-coordinator"]
        };
        for b in needed {
            let p = bin_dir.join(b);
            if !p.is_file() {
                return Err(CliError::Unavailable(format!(
                    "{} not found: build it (cargo build --release -p {b}) or set GANTRY_BIN_DIR",
                    p.display()
                )));
            }
            println!("using {}", p.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("gantry-bench-")
            .tempdir()
            .map_err(unavailable("cannot create a temporary directory"))?;
        let addrs: Vec<String> = free_ports(IDS.len())?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let peers = IDS
            .iter()
            .zip(&addrs)
            .map(|(i, a)| format!("{i}={a}"))
            .collect();
        // Built empty and filled one child at a time, so the guard covers a failed start too.
        let mut c = Cluster {
            dir,
            bin_dir,
            peers,
            nodes: Vec::new(),
            agent: None,
        };
        for (id, addr) in IDS.iter().zip(addrs) {
            c.nodes.push(Node {
                channel: channel(&addr)?,
                addr,
                child: None,
            });
            c.spawn_node(*id)?;
        }
        println!(
            "cluster: {} (data and logs in {})",
            c.peers.join(" "),
            c.dir.path().display()
        );
        Ok(c)
    }

    pub(crate) fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File, CliError> {
        let path = self.log_path(name);
        // Appended to, so a restarted node's log follows its earlier life.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(unavailable(&format!("cannot open {}", path.display())))
    }

    /// Same arguments and data directory on every start: a restart resumes the node.
    fn spawn_node(&mut self, id: u64) -> Result<(), CliError> {
        let addr = self.node(id).addr.clone();
        let mut cmd = Command::new(self.bin_dir.join("gantry-coordinator"));
        cmd.arg("--node-id").arg(id.to_string());
        cmd.arg("--listen").arg(&addr);
        cmd.arg("--data-dir")
            .arg(self.dir.path().join(format!("n{id}")));
        for p in &self.peers {
            cmd.arg("--peer").arg(p);
        }
        // A config file or advertise address from the caller's environment would change timings.
        for v in ["GANTRY_CONFIG", "GANTRY_ADVERTISE", "GANTRY_ARTIFACT_ROOT"] {
            cmd.env_remove(v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("n{id}"))?)
            .spawn()
            .map_err(unavailable("cannot start gantry-coordinator"))?;
        let node = &mut self.nodes[id as usize - 1];
        node.child = Some(child);
        // A fresh connection, not one that knew the killed process.
        node.channel = channel(&addr)?;
        Ok(())
    }

    fn kill_node(&mut self, id: u64) {
        if let Some(c) = self.nodes[id as usize - 1].child.take() {
            reap(c);
        }
    }

    fn start_agent(&mut self) -> Result<(), CliError> {
        let endpoints: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("http://{}", n.addr))
            .collect();
        let child = Command::new(self.bin_dir.join("gantry-agent"))
            .arg("--coordinator")
            .arg(endpoints.join(","))
            .args([
                "--agent-id",
                "bench-agent",
                "--runtime",
                "process",
                "--work-dir",
            ])
            .arg(self.dir.path().join("agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("agent")?)
            .spawn()
            .map_err(unavailable("cannot start gantry-agent"))?;
        self.agent = Some(child);
        Ok(())
    }

    /// The temporary directory goes with the guard, so the logs are copied out to stay readable.
    pub(crate) fn failed(&self, e: CliError) -> CliError {
        let kept = std::env::temp_dir().join(format!("gantry-bench-logs-{}", now_ms()));
        let mut paths = Vec::new();
        if std::fs::create_dir_all(&kept).is_ok() {
            for name in ["n1", "n2", "n3", "agent"] {
                let to = kept.join(format!("{name}.log"));
                if std::fs::copy(self.log_path(name), &to).is_ok() {
                    paths.push(to.display().to_string());
                }
            }
        }
        CliError::Unavailable(format!("{e}; node logs: {}", paths.join(" ")))
    }

    async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let mut c = ClusterServiceClient::new(self.node(id).channel.clone());
        match tokio::time::timeout(STATUS_TIMEOUT, c.status(pb::ClusterStatusRequest {})).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    async fn statuses(&self, ids: &[u64]) -> Vec<Option<pb::ClusterStatus>> {
        futures::future::join_all(ids.iter().map(|id| self.status(*id))).await
    }

    /// A node that itself says LEADER in a term after `after_term`.
    async fn leader(&self, ids: &[u64], after_term: u64) -> Option<pb::ClusterStatus> {
        self.statuses(ids)
            .await
            .into_iter()
            .flatten()
            .filter(|s| s.role == "LEADER" && s.term > after_term)
            .max_by_key(|s| s.term)
    }

    pub(crate) async fn wait_leader(
        &self,
        ids: &[u64],
        after_term: u64,
        every: Duration,
        within: Duration,
    ) -> Result<pb::ClusterStatus, CliError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.leader(ids, after_term).await {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(CliError::Unavailable(format!(
                    "no leader after term {after_term} among nodes {ids:?} within {within:?}"
                )));
            }
            tokio::time::sleep(every).await;
        }
    }

    pub(crate) fn runs(&self, id: u64) -> RunServiceClient<Channel> {
        RunServiceClient::new(self.node(id).channel.clone())
    }
}

// ---------------------------------------------------------------- raft

async fn raft(c: &mut Cluster, a: RaftBenchArgs) -> Result<(), CliError> {
    let leader = c
        .wait_leader(&IDS, 0, Duration::from_millis(50), Duration::from_secs(15))
        .await?;
    println!("leader: node {} (term {})", leader.node_id, leader.term);
    println!("leader commit_index before: {}", leader.commit_index);
    println!(
        "\n{:>11} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "concurrency", "commits", "commits/s", "p50 ms", "p99 ms", "max ms", "log delta"
    );
    let runs = c.runs(leader.node_id);
    let seq = Arc::new(AtomicU64::new(0));
    let mut index = leader.commit_index;
    for &n in &a.concurrency {
        let (mut lat, wall) = level(&runs, n.max(1), Duration::from_secs(a.seconds), &seq).await?;
        let now = commit_index(c, leader.node_id).await?;
        let ms = |v: f64| v / 1000.0;
        println!(
            "{:>11} {:>8} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>10}",
            n,
            lat.len(),
            lat.len() as f64 / wall.as_secs_f64(),
            ms(pct(&mut lat, 0.5)),
            ms(pct(&mut lat, 0.99)),
            ms(pct(&mut lat, 1.0)),
            now.saturating_sub(index),
        );
        index = now;
    }
    println!("\nleader commit_index after: {index}");
    println!(
        "each commit: a SubmitRun whose CreateRun entry is fsynced on a majority and applied before \
         it answers; batching is group commit in the Raft thread (the proposals drained for one \
         Ready share one fsync)"
    );
    Ok(())
}

async fn commit_index(c: &Cluster, id: u64) -> Result<u64, CliError> {
    c.status(id)
        .await
        .map(|s| s.commit_index)
        .ok_or_else(|| CliError::Unavailable(format!("node {id} did not answer Status")))
}

/// `n` submitters for `run_for`; every latency in microseconds, and the wall time of the level.
async fn level(
    runs: &RunServiceClient<Channel>,
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
        let lat = joined.map_err(|e| CliError::Unavailable(format!("a submitter died: {e}")))??;
        all.extend(lat);
    }
    Ok((all, t0.elapsed()))
}

async fn submitter(
    mut runs: RunServiceClient<Channel>,
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
            .map_err(|_| {
                CliError::Unavailable(format!("SubmitRun: no answer in {SUBMIT_TIMEOUT:?}"))
            })??;
        lat.push(t.elapsed().as_micros() as i64);
    }
    Ok(lat)
}

// ---------------------------------------------------------------- failover

async fn failover(c: &mut Cluster, a: FailoverArgs) -> Result<(), CliError> {
    c.start_agent()?;
    let leader = c
        .wait_leader(&IDS, 0, Duration::from_millis(50), Duration::from_secs(15))
        .await?;
    let yaml = container_pipeline(
        "bench-failover",
        CHAIN_STEPS,
        true,
        &["sh", "-c", "sleep 0.1"],
    );
    let mut run_id = submit(c, leader.node_id, &yaml).await?;
    println!("run {run_id}: a chain of {CHAIN_STEPS} steps of `sh -c \"sleep 0.1\"`\n");
    let (mut elected, mut dispatched) = (Vec::new(), Vec::new());
    for k in 1..=a.kills {
        let (e, d) = kill_round(c, &mut run_id, &yaml)
            .await
            .map_err(|e| CliError::Unavailable(format!("kill {k}: {e}")))?;
        println!(
            "kill {k}/{}: new leader after {e} ms, next step dispatched after {d} ms",
            a.kills
        );
        elected.push(e);
        dispatched.push(d);
    }
    println!(
        "\n{:<22} {:>4} {:>10} {:>8} {:>8} {:>8}",
        "after kill -9 of leader", "n", "median ms", "p90 ms", "p99 ms", "max ms"
    );
    for (label, v) in [
        ("new leader elected", &mut elected),
        ("next step dispatched", &mut dispatched),
    ] {
        println!(
            "{:<22} {:>4} {:>10.0} {:>8.0} {:>8.0} {:>8.0}",
            label,
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    println!(
        "\nt0: wall clock just before kill -9; elected: first poll (every 10 ms) where a survivor \
         says LEADER in a higher term; dispatched: the committed assigned-at timestamp (ms, chosen \
         by the new leader on this machine's clock) of the first task assigned at or after t0"
    );
    println!("goal: p99 under 2000 ms with default timeouts (tick 100 ms, election 6 ticks, heartbeat 1 tick)");
    Ok(())
}

async fn submit(c: &Cluster, leader: u64, yaml: &str) -> Result<String, CliError> {
    let req = pb::SubmitRunRequest {
        pipeline_yaml: yaml.to_string(),
        parameters: Default::default(),
        request_id: format!("bench-failover-{}", now_ms()),
        ..Default::default()
    };
    let r = tokio::time::timeout(SUBMIT_TIMEOUT, c.runs(leader).submit_run(req))
        .await
        .map_err(|_| CliError::Unavailable("SubmitRun: no answer".into()))??;
    Ok(r.into_inner().run_id)
}

/// One kill: milliseconds from the kill to a new leader and to the next dispatched step.
async fn kill_round(
    c: &mut Cluster,
    run_id: &mut String,
    yaml: &str,
) -> Result<(i64, i64), CliError> {
    let old = wait_steady(c, run_id, yaml, Duration::from_secs(30)).await?;
    let t0 = now_ms();
    c.kill_node(old.node_id);
    let survivors: Vec<u64> = IDS.into_iter().filter(|i| *i != old.node_id).collect();
    let new = c
        .wait_leader(
            &survivors,
            old.term,
            Duration::from_millis(10),
            Duration::from_secs(15),
        )
        .await?;
    let t_leader = now_ms();
    let t_dispatch = wait_dispatch(c, new.node_id, run_id, t0, Duration::from_secs(15)).await?;
    c.spawn_node(old.node_id)?;
    wait_caught_up(c, old.node_id, Duration::from_secs(30)).await?;
    Ok((t_leader - t0, t_dispatch - t0))
}

async fn get_run(c: &Cluster, id: u64, run_id: &str) -> Option<pb::Run> {
    let req = pb::GetRunRequest {
        run_id: run_id.to_string(),
    };
    match tokio::time::timeout(GET_RUN_TIMEOUT, c.runs(id).get_run(req)).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// All nodes answer, exactly one leader, and a step succeeded within the last second; returns
/// the leader's status. A run that finished is replaced by a new one.
async fn wait_steady(
    c: &Cluster,
    run_id: &mut String,
    yaml: &str,
    within: Duration,
) -> Result<pb::ClusterStatus, CliError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(leader) = sole_leader(c.statuses(&IDS).await) {
            if let Some(run) = get_run(c, leader.node_id, run_id).await {
                match run.state() {
                    pb::RunState::Succeeded => *run_id = submit(c, leader.node_id, yaml).await?,
                    pb::RunState::Failed | pb::RunState::Canceled => {
                        return Err(CliError::Unavailable(format!(
                            "run {run_id} is {}: {}",
                            run.state().word(),
                            run.error
                        )))
                    }
                    _ if recent_success(&run, now_ms() - 1000) => return Ok(leader),
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(CliError::Unavailable(format!(
        "the cluster was not steady (3 nodes answering, one leader, a step succeeding) within {within:?}"
    )))
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
    c: &Cluster,
    leader: u64,
    run_id: &str,
    t0: i64,
    within: Duration,
) -> Result<i64, CliError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(run) = get_run(c, leader, run_id).await {
            let first = run
                .tasks
                .iter()
                .map(|t| t.started_at_ms)
                .filter(|t| *t >= t0)
                .min();
            if let Some(t) = first {
                return Ok(t);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(CliError::Unavailable(format!(
        "no step of run {run_id} was dispatched by node {leader} within {within:?} of the kill"
    )))
}

/// Until the restarted node has applied what the leader had committed when it came back.
async fn wait_caught_up(c: &Cluster, id: u64, within: Duration) -> Result<(), CliError> {
    let deadline = Instant::now() + within;
    let mut target = None;
    while Instant::now() < deadline {
        if target.is_none() {
            target = c.leader(&IDS, 0).await.map(|l| l.commit_index);
        }
        if let (Some(t), Some(s)) = (target, c.status(id).await) {
            if s.applied_index >= t {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(CliError::Unavailable(format!(
        "restarted node {id} did not catch up with the leader within {within:?}"
    )))
}
