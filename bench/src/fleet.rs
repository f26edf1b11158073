//! `gantry-bench fleet`: end to end through Raft on 3 local `gantry-coordinator` processes with
//! many simulated agents. Each agent is a tokio task in this process with its own `Session`
//! stream to the leader over a connection of its own, as a real agent has (with TLS it presents
//! its own certificate, which is what names it; without TLS several agents may share one HTTP/2
//! connection, `--agents-per-connection`); it reports 8 CPUs
//! and 64 GiB, and answers every assignment with Started and Finished (succeeded) at once, so
//! the figures are the coordinators' and not a container runtime's.
//!
//! The workload keeps the scheduler busy: runs of one `ParallelFor` of no-op steps asking for
//! 1 CPU each, a fixed number of runs in flight, a new run submitted as soon as one ends.
//! Every iteration of a run becomes ready when its `CreateRun` is applied, so the ready time of
//! a step is its run's `created_at_ms` (the leader's clock when it proposed the run, a little
//! before the commit: the delay measured is an upper bound). The coordinator sends an
//! assignment only once the command that made it is applied, so the moment an agent receives
//! it is an upper bound of its commit. Both clocks are this machine's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gantry_cli::exit::CliError;
use gantry_model::StepSpec;
use gantry_proto::v1 as pb;
use gantry_proto::v1::agent_message::Body as Out;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::coordinator_message::Body as In;
use gantry_testkit::cluster::{Authed, Cluster};
use gantry_testkit::sim;
use gantry_tls::TlsContext;
use tokio::sync::{mpsc, Notify};
use tonic::transport::Channel;

use crate::cluster::{
    agent_channel, channel, failed, start_cluster, tls_word, unavailable, TlsMode,
};
use crate::table::{pct, table};

const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
const GET_RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// The real agent's heartbeat period: the leader declares lost an agent with running steps that
/// stays silent past its lease (15 s by default).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// No step assigned nor result recorded for this long: the bench is stuck, not slow.
const STALL: Duration = Duration::from_secs(60);
/// How long the idle leader is watched before the measured part.
const IDLE: Duration = Duration::from_secs(5);
const CPUS_PER_AGENT: f64 = 8.0;
/// Agents that connect at once before the next ones start.
const REGISTER_WAVE: usize = 100;
const GIB: u64 = 1024 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// Fleet sizes, one table row each (each on a fresh 3-node cluster).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub agents: Vec<usize>,
    /// Steps placed per fleet size (rounded up to whole runs).
    #[arg(long, default_value_t = 20_000)]
    pub steps: usize,
    /// Iterations of each run's ParallelFor: the steps that become ready together.
    #[arg(long, default_value_t = 100)]
    pub width: usize,
    /// Runs in flight at once; a new one is submitted when one ends.
    #[arg(long, default_value_t = 40)]
    pub in_flight: usize,
    /// Agent sessions sharing one HTTP/2 connection to the leader, with TLS off (with TLS on
    /// each agent has its own, since its certificate names it).
    #[arg(long, default_value_t = 1)]
    pub agents_per_connection: usize,
    /// TLS on the cluster and the agents: on, off, or both (one table each, same workload).
    #[arg(long, value_enum, default_value_t = TlsMode::Both)]
    pub tls: TlsMode,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// IR of a `dsl.ParallelFor` over `0..width` whose body is one no-op container task asking for
/// 1 CPU and declaring no outputs. Without a CPU request every step would fit on the first
/// agent (spread ranks by free CPU), and the fleet size would not matter.
pub fn fleet_pipeline(name: &str, width: usize) -> String {
    crate::pipeline::loop_pipeline_with_cpu(name, width, Some("1"))
}

/// What the simulated agents saw, per run id.
#[derive(Default)]
struct Track {
    /// When each assignment arrived (µs since the epoch).
    assigned_us: Vec<i64>,
    /// Results the leader confirmed as recorded.
    recorded: usize,
}

#[derive(Default)]
struct Tracker {
    runs: Mutex<HashMap<String, Track>>,
    /// Wakes the submitter when a result is recorded.
    changed: Notify,
    registered: AtomicUsize,
    /// The first error an agent hit; the bench stops on it.
    failure: Mutex<Option<String>>,
}

impl Tracker {
    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Track>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.changed.notify_one();
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn msg(body: Out) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

fn attempt_ref(s: &StepSpec) -> pb::AttemptRef {
    pb::AttemptRef {
        run_id: s.run_id.to_string(),
        task_id: s.task_id.to_string(),
        attempt: s.attempt,
    }
}

/// The leader's address from a follower's refusal, as the real agent reads it.
fn leader_hint(s: &tonic::Status) -> Option<String> {
    let addr = gantry_proto::leader_hint(s)?;
    Some(addr.trim_start_matches("http://").to_string())
}

fn agent_id(index: usize) -> String {
    format!("sim-{index:05}")
}

/// How a simulated agent reaches the cluster: its first connection, its certificate (None:
/// plain TCP) for a connection to the leader a follower names, and the members' addresses.
struct Link {
    channel: Channel,
    tls: Option<Arc<TlsContext>>,
    members: Arc<Vec<String>>,
}

/// Opens the session (following one redirect to the leader a follower names) and serves it
/// until the bench ends; any failure is reported to the tracker.
async fn sim_agent(link: Link, index: usize, tracker: Arc<Tracker>) {
    let agent_id = agent_id(index);
    if let Err(e) = sim_session(link, index, &agent_id, &tracker).await {
        tracker.fail(format!("agent {agent_id}: {e}"));
    }
}

async fn sim_session(
    link: Link,
    index: usize,
    agent_id: &str,
    tracker: &Tracker,
) -> Result<(), String> {
    let inventory_json = serde_json::to_string(&sim::inventory(agent_id, CPUS_PER_AGENT, 64 * GIB))
        .map_err(|e| e.to_string())?;
    let mut channel = link.channel;
    let mut redirected = false;
    let (tx, mut inbound) = loop {
        // Roomy: a burst of assignments answers with two messages each.
        let (tx, rx) = mpsc::channel(1024);
        let register = msg(Out::Register(pb::Register {
            agent_id: agent_id.to_string(),
            inventory_json: inventory_json.clone(),
            labels: Default::default(),
            active: Vec::new(),
            taints: Vec::new(),
        }));
        tx.send(register).await.map_err(|e| e.to_string())?;
        let mut client = AgentServiceClient::new(channel.clone());
        match client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => break (tx, r.into_inner()),
            Err(s) => match leader_hint(&s).filter(|a| link.members.contains(a)) {
                Some(addr) if !redirected => {
                    redirected = true;
                    channel = agent_channel(&addr, link.tls.clone()).map_err(|e| e.to_string())?;
                }
                _ => return Err(format!("Session refused: {s}")),
            },
        }
    };
    // Spread over the period so that 10 000 agents do not beat in step.
    let offset = HEARTBEAT.mul_f64((index % 1000) as f64 / 1000.0);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, HEARTBEAT);
    loop {
        let m = tokio::select! {
            m = inbound.message() => m,
            _ = beat.tick() => {
                let _ = tx.send(msg(Out::Heartbeat(pb::Heartbeat {}))).await;
                continue;
            }
        };
        let body = match m {
            Ok(Some(m)) => m.body,
            Ok(None) => return Err("the leader ended the session".into()),
            Err(s) => return Err(format!("session broke: {s}")),
        };
        match body {
            Some(In::Registered(_)) => {
                tracker.registered.fetch_add(1, Ordering::Relaxed);
                tracker.changed.notify_one();
            }
            Some(In::Assign(a)) => {
                let at = now_us();
                let spec: StepSpec = serde_json::from_str(&a.step_json)
                    .map_err(|e| format!("unreadable assignment: {e}"))?;
                tracker
                    .runs()
                    .entry(spec.run_id.to_string())
                    .or_default()
                    .assigned_us
                    .push(at);
                // Every declared output present, so a step with outputs is not failed for
                // missing ones (the bench's own pipeline declares none).
                let outcome = sim::success(&spec, |_, t| sim::zero(t));
                let outcome_json = serde_json::to_string(&outcome).map_err(|e| e.to_string())?;
                let r = attempt_ref(&spec);
                let started = msg(Out::Started(pb::AttemptStarted {
                    attempt: Some(r.clone()),
                }));
                let finished = msg(Out::Finished(pb::AttemptFinished {
                    attempt: Some(r),
                    outcome_json,
                }));
                for m in [started, finished] {
                    tx.send(m)
                        .await
                        .map_err(|_| "the session's outbound stream closed".to_string())?;
                }
            }
            Some(In::ResultRecorded(r)) => {
                tracker.runs().entry(r.run_id).or_default().recorded += 1;
                tracker.changed.notify_one();
            }
            // The simulated agents mount nothing.
            Some(In::ReleaseClaims(_)) => {}
            Some(In::Cancel(r)) => {
                return Err(format!(
                    "unexpected cancel of {}/{}/{}",
                    r.run_id, r.task_id, r.attempt
                ))
            }
            None => {}
        }
    }
}

/// CPU seconds (user + system) a process has used so far (Linux `/proc/PID/stat`).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

struct Row {
    agents: usize,
    steps: usize,
    wall: Duration,
    delays_ms: Vec<i64>,
    leader_cpu: f64,
    followers_cpu: f64,
    bench_cpu: f64,
    /// The leader's CPU seconds per second with the fleet connected and nothing to place
    /// (sessions, heartbeats, timers): what the fleet costs apart from placing.
    leader_idle: f64,
    /// Time the CPU figures cover: first submit to the last result recorded.
    cpu_span: Duration,
}

pub async fn run(args: FleetArgs) -> Result<(), CliError> {
    if args.width == 0 || args.in_flight == 0 || args.agents_per_connection == 0 {
        return Err(CliError::Refused(
            "--width, --in-flight and --agents-per-connection must be at least 1".into(),
        ));
    }
    if args.agents_per_connection > 1 && args.tls != TlsMode::Off {
        return Err(CliError::Refused(
            "--agents-per-connection above 1 needs --tls off: with TLS each agent's certificate \
             names it, so each agent has a connection of its own"
                .into(),
        ));
    }
    let mut tables = Vec::new();
    for &tls in args.tls.runs() {
        tables.push((tls, fleet_table(&args, tls).await?));
    }
    for (tls, t) in &tables {
        println!(
            "\n{} ({}):\n{t}",
            tls_word(*tls),
            connections_word(*tls, &args)
        );
    }
    explain(&args);
    Ok(())
}

/// One table row per fleet size, each on a fresh cluster with TLS on or off.
async fn fleet_table(args: &FleetArgs, tls: bool) -> Result<comfy_table::Table, CliError> {
    let mut t = table(&[
        "agents",
        "steps",
        "seconds",
        "placements/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "leader s",
        "follow s",
        "bench s",
        "µs/place",
        "idle %",
        "net µs/place",
    ]);
    for &n in &args.agents {
        let cluster = start_cluster(false, tls)?;
        // Ctrl-C ends the bench through the guard rather than leaving the children running.
        let result = tokio::select! {
            r = fleet_row(&cluster, args, n.max(1)) => r,
            _ = tokio::signal::ctrl_c() => Err(unavailable("interrupted")),
        };
        let row = result.map_err(|e| failed(&cluster, e))?;
        println!(
            "{} agents: {} steps placed in {:.2} s",
            row.agents,
            row.steps,
            row.wall.as_secs_f64()
        );
        t.add_row(cells(&row));
        // Killed and reaped before the next size starts its own, so they do not compete.
        drop(cluster);
    }
    println!(
        "\n{} ({}):\n{t}",
        tls_word(tls),
        connections_word(tls, args)
    );
    Ok(t)
}

fn connections_word(tls: bool, args: &FleetArgs) -> String {
    if tls {
        "one mutual-TLS connection per agent, each with its own certificate".into()
    } else {
        format!(
            "plain TCP, {} agent(s) per connection",
            args.agents_per_connection
        )
    }
}

fn explain(args: &FleetArgs) {
    println!(
        "\nworkload: runs of one ParallelFor of {} no-op steps (1 CPU each), {} runs in flight, \
         agents with {CPUS_PER_AGENT} CPUs answering Started and Finished at once",
        args.width, args.in_flight
    );
    println!(
        "placements/s: steps whose assignment reached its agent, over the time from the first \
         submit to the last assignment; delay: run created_at (every iteration is ready when the \
         run is applied) to the assignment reaching the agent (it is sent only once committed)"
    );
    println!(
        "cpu: seconds of CPU used during the measured part by the leader, the two followers \
         together and this process (the simulated agents); µs/placement = leader CPU / steps; \
         idle %: the leader's CPU with the fleet connected and nothing to place ({}s before the \
         measured part: sessions, heartbeats); net µs/placement = (leader CPU - idle rate x \
         seconds) / steps, the cost of placing alone",
        IDLE.as_secs()
    );
    println!("goal: over 2000 placements/s, cost per placement growing at most logarithmically with the fleet");
}

fn cells(r: &Row) -> Vec<String> {
    let mut d = r.delays_ms.clone();
    let steps = r.steps.max(1) as f64;
    vec![
        r.agents.to_string(),
        r.steps.to_string(),
        format!("{:.2}", r.wall.as_secs_f64()),
        format!("{:.0}", r.steps as f64 / r.wall.as_secs_f64()),
        format!("{:.0}", pct(&mut d, 0.5)),
        format!("{:.0}", pct(&mut d, 0.99)),
        format!("{:.0}", pct(&mut d, 1.0)),
        format!("{:.2}", r.leader_cpu),
        format!("{:.2}", r.followers_cpu),
        format!("{:.2}", r.bench_cpu),
        format!("{:.0}", r.leader_cpu * 1e6 / steps),
        format!("{:.1}", r.leader_idle * 100.0),
        format!(
            "{:.0}",
            (r.leader_cpu - r.leader_idle * r.cpu_span.as_secs_f64()).max(0.0) * 1e6 / steps
        ),
    ]
}

/// One fleet size on a fresh cluster: connect the agents, warm up, measure.
async fn fleet_row(c: &Cluster, args: &FleetArgs, agents: usize) -> Result<Row, CliError> {
    let leader = c
        .wait_leader_async(&c.all_ids(), 0, Duration::from_secs(15))
        .await
        .map_err(|e| unavailable(format!("{e:#}")))?;
    let leader_addr = c.address(leader.node_id);
    let members: Arc<Vec<String>> = Arc::new(c.all_ids().iter().map(|id| c.address(*id)).collect());
    // Certificates are issued (and so keys made) before the clock starts.
    let mut links = Vec::with_capacity(agents);
    let mut shared: Option<Channel> = None;
    for i in 0..agents {
        let tls = c
            .agent_tls(&agent_id(i))
            .map_err(|e| unavailable(format!("agent certificate: {e:#}")))?;
        // Separate endpoints, so separate TCP connections; clones of one Channel share one.
        if tls.is_some() || i % args.agents_per_connection == 0 || shared.is_none() {
            shared = Some(agent_channel(&leader_addr, tls.clone())?);
        }
        let Some(ch) = shared.clone() else {
            return Err(unavailable("no channel"));
        };
        links.push(Link {
            channel: ch,
            tls,
            members: members.clone(),
        });
    }
    let connections = if c.tls_dir().is_some() {
        agents
    } else {
        agents.div_ceil(args.agents_per_connection)
    };
    let tracker = Arc::new(Tracker::default());
    // Dropped (and so aborted) when the row ends, however it ends.
    let mut fleet = tokio::task::JoinSet::new();
    let t_reg = Instant::now();
    let within = Duration::from_secs(30) + Duration::from_millis(10 * agents as u64);
    // In waves: a thousand handshakes at once on a small machine starve the leader's Raft
    // traffic and cost it its leadership, which is not what this bench measures.
    let mut spawned = 0;
    for (i, link) in links.into_iter().enumerate() {
        fleet.spawn(sim_agent(link, i, tracker.clone()));
        spawned += 1;
        if spawned % REGISTER_WAVE == 0 || spawned == agents {
            while tracker.registered.load(Ordering::Relaxed) < spawned {
                if let Some(f) = tracker.failure() {
                    return Err(unavailable(f));
                }
                if t_reg.elapsed() > within {
                    return Err(unavailable(format!(
                        "{} of {agents} agents registered within {within:?}",
                        tracker.registered.load(Ordering::Relaxed)
                    )));
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), tracker.changed.notified())
                        .await;
            }
        }
    }
    println!(
        "{agents} agents registered with node {} in {:.1} s over {connections} connection(s)",
        leader.node_id,
        t_reg.elapsed().as_secs_f64()
    );
    let mut runs = pb::run_service_client::RunServiceClient::new(channel(c, leader.node_id)?);
    // Warm-up: connections, allocations and code paths, not counted.
    let warm = submit(&mut runs, &fleet_pipeline("fleet-warm-up", 20), "warm-up").await?;
    wait_runs(&tracker, &[(warm, 20)]).await?;

    let total_runs = args.steps.div_ceil(args.width).max(1);
    let yaml = fleet_pipeline(&format!("fleet-{agents}"), args.width);
    let pids: Vec<(u64, String)> = c
        .all_ids()
        .into_iter()
        .filter_map(|id| c.pid(id).map(|p| (id, p.to_string())))
        .collect();
    let cpu_now = || -> (f64, f64, f64) {
        let mut leader_cpu = 0.0;
        let mut followers = 0.0;
        for (id, pid) in &pids {
            let s = cpu_seconds(pid).unwrap_or(0.0);
            if *id == leader.node_id {
                leader_cpu += s;
            } else {
                followers += s;
            }
        }
        (leader_cpu, followers, cpu_seconds("self").unwrap_or(0.0))
    };
    let idle0 = cpu_now().0;
    tokio::time::sleep(IDLE).await;
    let leader_idle = (cpu_now().0 - idle0) / IDLE.as_secs_f64();
    let cpu0 = cpu_now();
    let t0 = now_us();
    let started = Instant::now();
    let mut submitted = 0usize;
    let mut in_flight: Vec<(String, usize)> = Vec::new();
    let mut measured: Vec<String> = Vec::new();
    let mut last_progress = (Instant::now(), 0usize);
    loop {
        while in_flight.len() < args.in_flight && submitted < total_runs {
            let id = submit(&mut runs, &yaml, &format!("{agents}-{submitted}")).await?;
            submitted += 1;
            measured.push(id.clone());
            in_flight.push((id, args.width));
        }
        if in_flight.is_empty() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), tracker.changed.notified()).await;
        if let Some(f) = tracker.failure() {
            return Err(unavailable(f));
        }
        let recorded_total: usize = {
            let t = tracker.runs();
            in_flight.retain(|(id, w)| t.get(id).is_none_or(|tr| tr.recorded < *w));
            measured
                .iter()
                .filter_map(|id| t.get(id))
                .map(|tr| tr.recorded)
                .sum()
        };
        if recorded_total > last_progress.1 {
            last_progress = (Instant::now(), recorded_total);
        } else if last_progress.0.elapsed() > STALL {
            return Err(unavailable(format!(
                "no result recorded for {STALL:?} ({recorded_total} so far)"
            )));
        }
    }
    let cpu1 = cpu_now();
    let elapsed = started.elapsed();
    // Read the tracker before the GetRun calls, so their cost is not in the figures.
    let mut delays_ms = Vec::new();
    let mut last_assign = t0;
    let mut steps = 0usize;
    let assigned: HashMap<String, Vec<i64>> = {
        let t = tracker.runs();
        measured
            .iter()
            .map(|id| {
                let v = t
                    .get(id)
                    .map(|tr| tr.assigned_us.clone())
                    .unwrap_or_default();
                (id.clone(), v)
            })
            .collect()
    };
    for id in &measured {
        let run = get_run(&mut runs, id).await?;
        if run.state() != pb::RunState::Succeeded {
            return Err(unavailable(format!(
                "run {id} ended {}: {}",
                run.state().word(),
                run.error
            )));
        }
        for at in assigned.get(id).into_iter().flatten() {
            delays_ms.push((at / 1000 - run.created_at_ms).max(0));
            last_assign = last_assign.max(*at);
            steps += 1;
        }
    }
    let wall = Duration::from_micros((last_assign - t0).max(1) as u64);
    fleet.abort_all();
    Ok(Row {
        agents,
        steps,
        wall,
        delays_ms,
        leader_cpu: cpu1.0 - cpu0.0,
        followers_cpu: cpu1.1 - cpu0.1,
        bench_cpu: cpu1.2 - cpu0.2,
        leader_idle,
        cpu_span: elapsed,
    })
}

async fn submit(
    runs: &mut pb::run_service_client::RunServiceClient<Authed>,
    yaml: &str,
    tag: &str,
) -> Result<String, CliError> {
    let req = pb::SubmitRunRequest {
        pipeline_yaml: yaml.to_string(),
        // Unique per process start, so a run is never found as an earlier submission.
        request_id: format!("bench-fleet-{}-{tag}", std::process::id()),
        // Identical iterations of earlier runs would be served from the cache, not placed.
        disable_cache: true,
        ..Default::default()
    };
    let r = tokio::time::timeout(SUBMIT_TIMEOUT, runs.submit_run(req))
        .await
        .map_err(|_| unavailable(format!("SubmitRun: no answer in {SUBMIT_TIMEOUT:?}")))??;
    Ok(r.into_inner().run_id)
}

async fn get_run(
    runs: &mut pb::run_service_client::RunServiceClient<Authed>,
    run_id: &str,
) -> Result<pb::Run, CliError> {
    let req = pb::GetRunRequest {
        run_id: run_id.to_string(),
    };
    let r = tokio::time::timeout(GET_RUN_TIMEOUT, runs.get_run(req))
        .await
        .map_err(|_| unavailable(format!("GetRun {run_id}: no answer in {GET_RUN_TIMEOUT:?}")))??;
    Ok(r.into_inner())
}

/// Until every run has as many results recorded as it has steps.
async fn wait_runs(tracker: &Tracker, runs: &[(String, usize)]) -> Result<(), CliError> {
    let deadline = Instant::now() + STALL;
    loop {
        if let Some(f) = tracker.failure() {
            return Err(unavailable(f));
        }
        let done = {
            let t = tracker.runs();
            runs.iter()
                .all(|(id, w)| t.get(id).is_some_and(|tr| tr.recorded >= *w))
        };
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(unavailable(format!(
                "warm-up runs not done within {STALL:?}"
            )));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), tracker.changed.notified()).await;
    }
}
