//! `gantry-bench scheduler`: placement alone, in process, on simulated fleets — placements per
//! second and memory with 1 000 and 10 000 agents and 100 000 pending steps.
//!
//! The fleet: a quarter of the agents carry 8 GPUs (A100, H100 or L4 in turn), the rest none;
//! 32 to 128 CPUs and 256 GiB to 1 TiB each; every tenth agent has a label `zone=b` and every
//! twentieth a `NoSchedule` taint. The steps: mostly CPU-only (1 to 8 CPUs, 1 to 32 GiB), one
//! in eight asking for 1, 2, 4 or 8 GPUs of a model, one in twenty pinned to `zone=b`. The
//! numbers come from a fixed-seed generator, so runs compare.
//!
//! `--persistent` measures instead what the leader pays per pass with few steps: a fresh
//! index over views of every agent (as before the persistent placer) against the leader's
//! [`Placer`] brought up to date after `--changed` agents' allocations moved.

use std::time::Instant;

use std::collections::BTreeSet;

use gantry_core::scheduler::{
    agent_views, schedule, AgentView, CpuPolicy, GpuSlot, Placer, ReadyStep,
};
use gantry_core::state::{AgentRecord, ClusterState};
use gantry_model::{GpuDevice, HostInventory, ResourceRequest, Taint};

use gantry_cli::exit::CliError;

use crate::table::table;

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// Fleet sizes, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub agents: Vec<usize>,
    /// Pending steps in the pass.
    #[arg(long, default_value_t = 100_000)]
    pub steps: usize,
    /// Passes per fleet size (the table gives the median).
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// Measure a pass on the leader's persistent placer against a fresh one.
    #[arg(long)]
    pub persistent: bool,
    /// With --persistent: agents whose allocations change between passes.
    #[arg(long, default_value_t = 8)]
    pub changed: usize,
}

/// A tiny fixed-seed generator (xorshift64*): the same fleet and queue every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MODELS: [&str; 3] = [
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA L4",
];
const TYPES: [&str; 3] = ["NVIDIA_A100", "NVIDIA_H100_80GB", "NVIDIA_L4"];
const GIB: u64 = 1 << 30;

fn fleet(n: usize, rng: &mut Rng) -> Vec<AgentView> {
    (0..n)
        .map(|i| {
            let cpu = [32.0, 64.0, 96.0, 128.0][rng.below(4) as usize];
            let mem = [256, 512, 768, 1024][rng.below(4) as usize] * GIB;
            let gpus = if i % 4 == 0 {
                let model = MODELS[(i / 4) % MODELS.len()];
                (0..8)
                    .map(|g| GpuSlot {
                        uuid: format!("GPU-{i:05}-{g}"),
                        model: model.to_string(),
                        healthy: true,
                        in_use: false,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut labels = std::collections::BTreeMap::new();
            labels.insert(
                "zone".to_string(),
                if i % 10 == 0 { "b" } else { "a" }.to_string(),
            );
            let taints = if i % 20 == 7 {
                vec![Taint::parse("dedicated=infra:NoSchedule").unwrap_or_else(|_| unreachable!())]
            } else {
                Vec::new()
            };
            AgentView {
                agent_id: format!("agent-{i:05}").into(),
                total_cpu: cpu,
                free_cpu: cpu,
                total_memory: mem,
                free_memory: mem,
                gpus,
                labels,
                taints,
                accepting: true,
            }
        })
        .collect()
}

fn queue(n: usize, rng: &mut Rng) -> Vec<ReadyStep> {
    (0..n)
        .map(|i| {
            let mut r = ResourceRequest {
                cpu_request: Some((1 + rng.below(8)) as f64),
                memory_request_bytes: Some((1 + rng.below(32)) * GIB),
                ..Default::default()
            };
            if rng.below(8) == 0 {
                r.accelerator_count = [1, 2, 4, 8][rng.below(4) as usize];
                r.accelerator_type = Some(TYPES[rng.below(3) as usize].to_string());
            }
            if rng.below(20) == 0 {
                r.node_selector.insert("zone".into(), "b".into());
            }
            ReadyStep {
                run_id: format!("run-{}", i / 1000).into(),
                task_id: format!("task-{i}").into(),
                attempt: 1,
                request: r,
            }
        })
        .collect()
}

/// The fleet of `agents` and a queue of `steps`, from a seed of the fleet size, so every run
/// of a size measures the same work; the generator goes on for what the caller draws next.
fn workload(agents: usize, steps: usize) -> (Rng, Vec<AgentView>, Vec<ReadyStep>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ agents as u64);
    let fleet = fleet(agents, &mut rng);
    let queue = queue(steps, &mut rng);
    (rng, fleet, queue)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(args: SchedulerArgs) -> Result<(), CliError> {
    if args.steps == 0 || args.passes == 0 || args.agents.contains(&0) {
        return Err(CliError::Refused(
            "--agents, --steps and --passes must be positive".into(),
        ));
    }
    if args.persistent {
        return run_persistent(&args);
    }
    let mut t = table(&[
        "agents",
        "steps",
        "placed",
        "waiting",
        "unsched",
        "pass ms (med)",
        "placements/s",
        "RSS MiB",
    ]);
    for &n in &args.agents {
        let (_, agents, steps) = workload(n, args.steps);
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..args.passes {
            let t = Instant::now();
            let plan = schedule(&steps, &agents, CpuPolicy::Spread);
            times.push(t.elapsed().as_secs_f64());
            last = Some(plan);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let plan = last.unwrap_or_default();
        let placed = plan.placements.len();
        t.add_row(vec![
            n.to_string(),
            args.steps.to_string(),
            placed.to_string(),
            plan.waiting.len().to_string(),
            plan.unschedulable.len().to_string(),
            format!("{:.1}", median * 1000.0),
            format!("{:.0}", placed as f64 / median),
            format!("{:.1}", rss_mib()),
        ]);
    }
    println!("{t}");
    println!(
        "one pass = every pending step considered once against the fleet (filters, score, GPU \
         choice, reservation); placements/s = steps placed in the pass / its median duration"
    );
    Ok(())
}

/// The replicated state the leader would hold for `agents`, nothing allocated.
fn state_of(agents: &[AgentView]) -> ClusterState {
    let mut state = ClusterState::default();
    for a in agents {
        let gpus = a
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuDevice {
                index: i as u32,
                uuid: g.uuid.clone(),
                name: g.model.clone(),
                memory_total_bytes: 80 * GIB,
                memory_free_bytes: 80 * GIB,
                healthy: g.healthy,
                utilization_percent: None,
                mig_enabled: None,
            })
            .collect();
        let rec = AgentRecord {
            agent_id: a.agent_id.clone(),
            inventory: HostInventory {
                hostname: a.agent_id.to_string(),
                cpu_cores: a.total_cpu,
                memory_bytes: a.total_memory,
                gpus,
                ..Default::default()
            },
            labels: a.labels.clone(),
            registered_at: 0,
            running: Default::default(),
            cpu_allocated: 0.0,
            memory_allocated: 0,
            gpus_in_use: Default::default(),
            taints: a.taints.clone(),
            draining: false,
            lost_at: None,
            changes: 0,
        };
        state.agents.insert(a.agent_id.clone(), rec);
    }
    state
}

/// Moves the allocations of `count` agents spread over the fleet, as results and commits do
/// between two passes.
fn churn(state: &mut ClusterState, count: usize, pass: usize, rng: &mut Rng) {
    let n = state.agents.len();
    let stride = (n / count.max(1)).max(1);
    for (k, a) in state.agents.values_mut().enumerate() {
        if (k + pass).is_multiple_of(stride) {
            a.cpu_allocated = (rng.below(16) as f64).min(a.inventory.cpu_cores);
            a.memory_allocated = rng.below(64) * GIB;
            a.changes += 1;
        }
    }
}

fn median_ms(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(0.0) * 1000.0
}

fn run_persistent(args: &SchedulerArgs) -> Result<(), CliError> {
    let mut t = table(&[
        "agents",
        "steps",
        "changed",
        "fresh pass ms",
        "persistent pass ms",
        "of it sync",
        "speedup",
        "same",
    ]);
    for &n in &args.agents {
        let (mut rng, agents, steps) = workload(n, args.steps);
        let mut state = state_of(&agents);
        let connected: BTreeSet<_> = state.agents.keys().cloned().collect();
        let mut placer = Placer::new(CpuPolicy::Spread);
        placer.sync(&state, 0, || connected.clone());
        let (mut fresh, mut kept, mut synced, mut same) =
            (Vec::new(), Vec::new(), Vec::new(), true);
        for pass in 0..args.passes {
            churn(&mut state, args.changed, pass, &mut rng);
            let t = Instant::now();
            let a = schedule(&steps, &agent_views(&state, &connected), CpuPolicy::Spread);
            fresh.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            placer.sync(&state, 0, || connected.clone());
            synced.push(t.elapsed().as_secs_f64());
            let b = placer.schedule(&steps);
            kept.push(t.elapsed().as_secs_f64());
            same &= a == b;
        }
        let (f, k) = (median_ms(fresh), median_ms(kept));
        t.add_row(vec![
            n.to_string(),
            args.steps.to_string(),
            args.changed.to_string(),
            format!("{f:.3}"),
            format!("{k:.3}"),
            format!("{:.3}", median_ms(synced)),
            format!("{:.0}x", f / k.max(1e-9)),
            if same { "yes" } else { "NO" }.to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "fresh = agent views of every agent + a new index (the leader before); persistent = \
         the leader's placer synced after `changed` agents moved, then the pass; same = the \
         two plans were equal in every pass"
    );
    Ok(())
}
