use std::collections::{BTreeMap, BTreeSet};

use gantry_model::{ResourceRequest, Taint, Toleration};
use proptest::prelude::*;

use super::*;
use crate::state::Placement;

const GIB: u64 = 1 << 30;

fn gpu(uuid: &str, model: &str) -> GpuSlot {
    GpuSlot {
        uuid: uuid.into(),
        model: model.into(),
        healthy: true,
        in_use: false,
    }
}

fn agent(id: &str, cpu: f64, mem: u64, gpus: Vec<GpuSlot>) -> AgentView {
    AgentView {
        agent_id: id.into(),
        total_cpu: cpu,
        free_cpu: cpu,
        total_memory: mem,
        free_memory: mem,
        gpus,
        labels: BTreeMap::new(),
        taints: vec![],
        accepting: true,
    }
}

fn gpus(prefix: &str, model: &str, n: usize) -> Vec<GpuSlot> {
    (0..n)
        .map(|i| gpu(&format!("GPU-{prefix}-{i}"), model))
        .collect()
}

fn step(id: &str, cpu: f64, mem: u64, gpus: u32, model: Option<&str>) -> ReadyStep {
    ReadyStep {
        run_id: "r".into(),
        task_id: id.into(),
        attempt: 1,
        request: ResourceRequest {
            cpu_request: Some(cpu),
            memory_request_bytes: Some(mem),
            accelerator_count: gpus,
            accelerator_type: model.map(str::to_string),
            ..Default::default()
        },
    }
}

fn placed<'a>(plan: &'a Plan, task: &str) -> Option<&'a Placement> {
    plan.placements.iter().find(|p| p.task_id == task)
}

fn waiting<'a>(plan: &'a Plan, task: &str) -> Option<&'a str> {
    plan.waiting
        .iter()
        .find(|(s, _)| s.task_id == task)
        .map(|(_, w)| w.as_str())
}

fn unschedulable<'a>(plan: &'a Plan, task: &str) -> Option<&'a str> {
    plan.unschedulable
        .iter()
        .find(|(s, _)| s.task_id == task)
        .map(|(_, w)| w.as_str())
}

#[test]
fn steps_land_on_agents_with_their_gpu_model_and_get_distinct_uuids() {
    let agents = vec![
        agent(
            "a100",
            32.0,
            256 * GIB,
            gpus("a", "NVIDIA A100-SXM4-40GB", 4),
        ),
        agent(
            "h100",
            32.0,
            256 * GIB,
            gpus("h", "NVIDIA H100 80GB HBM3", 8),
        ),
        agent("t4", 8.0, 32 * GIB, gpus("t", "Tesla T4", 1)),
    ];
    let steps = vec![
        step("one-t4", 1.0, GIB, 1, Some("NVIDIA_TESLA_T4")),
        step("two-h100", 4.0, GIB, 2, Some("NVIDIA_H100_80GB")),
        step("four-a100", 4.0, GIB, 4, Some("NVIDIA_A100")),
        step("four-h100", 4.0, GIB, 4, Some("H100")),
    ];
    let plan = schedule(&steps, &agents, CpuPolicy::Spread);
    assert!(
        plan.waiting.is_empty() && plan.unschedulable.is_empty(),
        "{plan:#?}"
    );
    let p = placed(&plan, "one-t4").unwrap();
    assert_eq!(
        (p.agent_id.as_str(), p.gpus.clone()),
        ("t4", vec!["GPU-t-0".to_string()])
    );
    assert_eq!(placed(&plan, "four-a100").unwrap().agent_id, "a100");
    let two = placed(&plan, "two-h100").unwrap();
    let four = placed(&plan, "four-h100").unwrap();
    assert_eq!(
        (two.agent_id.as_str(), four.agent_id.as_str()),
        ("h100", "h100")
    );
    let all: BTreeSet<&String> = two.gpus.iter().chain(&four.gpus).collect();
    assert_eq!(all.len(), 6, "distinct UUIDs: {two:?} {four:?}");
    assert!(all.iter().all(|u| u.starts_with("GPU-h-")));
}

#[test]
fn unhealthy_and_busy_gpus_are_not_given_out() {
    let mut g = gpus("a", "NVIDIA A100", 3);
    g[0].healthy = false;
    g[1].in_use = true;
    let plan = schedule(
        &[step("x", 1.0, 0, 1, None), step("y", 1.0, 0, 1, None)],
        &[agent("a", 8.0, GIB, g)],
        CpuPolicy::Spread,
    );
    assert_eq!(
        placed(&plan, "x").unwrap().gpus,
        vec!["GPU-a-2".to_string()]
    );
    let why = waiting(&plan, "y").unwrap();
    assert!(why.contains("0 of the 1 GPU(s) free, 1 unhealthy"), "{why}");
}

#[test]
fn gpu_steps_bin_pack_and_cpu_steps_keep_off_gpu_hosts() {
    let mut busy = gpus("b", "NVIDIA L4", 4);
    for g in &mut busy[..3] {
        g.in_use = true;
    }
    let agents = vec![
        agent("empty", 16.0, 64 * GIB, gpus("e", "NVIDIA L4", 4)),
        agent("busy", 16.0, 64 * GIB, busy),
        agent("cpu-only", 4.0, 16 * GIB, vec![]),
    ];
    let plan = schedule(
        &[
            step("gpu", 1.0, 0, 1, Some("L4")),
            step("cpu", 1.0, 0, 0, None),
        ],
        &agents,
        CpuPolicy::Spread,
    );
    // The agent left with fewer free GPUs wins: a whole host stays free for a 4-GPU step.
    assert_eq!(placed(&plan, "gpu").unwrap().agent_id, "busy");
    // Less free CPU than either GPU host, but no GPUs to keep free.
    assert_eq!(placed(&plan, "cpu").unwrap().agent_id, "cpu-only");
}

#[test]
fn cpu_steps_spread_or_pack_by_policy_with_stable_ties() {
    let agents = vec![agent("b", 4.0, 0, vec![]), agent("a", 4.0, 0, vec![])];
    let steps = [step("t0", 1.0, 0, 0, None), step("t1", 1.0, 0, 0, None)];
    let plan = schedule(&steps, &agents, CpuPolicy::Spread);
    assert_eq!(
        placed(&plan, "t0").unwrap().agent_id,
        "a",
        "ties: smaller id"
    );
    assert_eq!(placed(&plan, "t1").unwrap().agent_id, "b", "spread");
    let plan = schedule(&steps, &agents, CpuPolicy::BinPack);
    assert_eq!(placed(&plan, "t0").unwrap().agent_id, "a");
    assert_eq!(placed(&plan, "t1").unwrap().agent_id, "a", "packed");
}

#[test]
fn node_selectors_and_taints_decide_who_may_run_a_step() {
    let mut zone_a = agent("zone-a", 8.0, GIB, vec![]);
    zone_a.labels.insert("zone".into(), "a".into());
    let mut tainted = agent("tainted", 64.0, GIB, vec![]);
    tainted.taints = vec![Taint::parse("dedicated=ml:NoSchedule").unwrap()];
    let mut soft = agent("soft", 64.0, GIB, vec![]);
    soft.taints = vec![Taint::parse("spot:PreferNoSchedule").unwrap()];
    let agents = vec![zone_a, tainted, soft];

    let mut pinned = step("pinned", 1.0, 0, 0, None);
    pinned
        .request
        .node_selector
        .insert("zone".into(), "a".into());
    let plain = step("plain", 1.0, 0, 0, None);
    let mut tolerant = step("tolerant", 1.0, 0, 0, None);
    tolerant.request.tolerations = vec![Toleration {
        key: "dedicated".into(),
        value: "ml".into(),
        ..Default::default()
    }];
    let plan = schedule(&[pinned, plain, tolerant], &agents, CpuPolicy::Spread);
    assert_eq!(placed(&plan, "pinned").unwrap().agent_id, "zone-a");
    // `soft` has the most free CPU but an untolerated PreferNoSchedule taint; `tainted` is
    // closed to it.
    assert_eq!(placed(&plan, "plain").unwrap().agent_id, "zone-a");
    assert_eq!(placed(&plan, "tolerant").unwrap().agent_id, "tainted");

    let mut nowhere = step("nowhere", 1.0, 0, 0, None);
    nowhere
        .request
        .node_selector
        .insert("zone".into(), "b".into());
    let plan = schedule(&[nowhere], &agents, CpuPolicy::Spread);
    let why = unschedulable(&plan, "nowhere").unwrap();
    assert!(why.contains("zone-a: lacks label zone=b"), "{why}");
    assert!(why.contains("tainted: lacks label zone=b"), "{why}");
}

#[test]
fn a_step_no_agent_could_ever_run_is_unschedulable_with_each_agents_reason() {
    let mut tainted = agent("tainted", 64.0, 512 * GIB, gpus("h", "NVIDIA H100", 8));
    tainted.taints = vec![Taint::parse("gpu=h100:NoExecute").unwrap()];
    let agents = vec![
        agent("small", 2.0, 4 * GIB, vec![]),
        agent("a100s", 64.0, 512 * GIB, gpus("a", "NVIDIA A100", 8)),
        tainted,
    ];
    let plan = schedule(
        &[step("h100", 4.0, GIB, 2, Some("H100"))],
        &agents,
        CpuPolicy::Spread,
    );
    let why = unschedulable(&plan, "h100").unwrap();
    assert!(
        why.starts_with("no connected agent could ever run it"),
        "{why}"
    );
    assert!(
        why.contains("a100s: has 0 of the 2 H100 GPU(s) needed"),
        "{why}"
    );
    assert!(why.contains("small: has 2 CPU, needs 4"), "{why}");
    assert!(
        why.contains("tainted: taint gpu=h100:NoExecute not tolerated"),
        "{why}"
    );

    let plan = schedule(&[step("x", 1.0, 0, 0, None)], &[], CpuPolicy::Spread);
    assert_eq!(waiting(&plan, "x"), Some("no agent is connected"));
}

#[test]
fn a_drained_agent_takes_nothing_new_and_steps_wait_for_it() {
    let mut drained = agent("drained", 8.0, GIB, vec![]);
    drained.accepting = false;
    let plan = schedule(&[step("x", 1.0, 0, 0, None)], &[drained], CpuPolicy::Spread);
    assert_eq!(
        waiting(&plan, "x"),
        Some("waiting for capacity: drained: drained")
    );
    assert!(plan.unschedulable.is_empty(), "it may be undrained");
}

#[test]
fn a_waiting_large_gpu_step_is_not_starved_by_small_ones_behind_it() {
    let mut g = gpus("a", "NVIDIA A100", 4);
    g[0].in_use = true;
    g[1].in_use = true;
    let agents = vec![
        agent("gpu-host", 32.0, 64 * GIB, g),
        agent("cpu-host", 8.0, 16 * GIB, vec![]),
    ];
    let mut steps = vec![step("big", 4.0, GIB, 4, None)];
    for i in 0..5 {
        steps.push(step(&format!("small-{i}"), 1.0, GIB, 1, None));
    }
    steps.push(step("cpu", 1.0, GIB, 0, None));
    let plan = schedule(&steps, &agents, CpuPolicy::Spread);
    let why = waiting(&plan, "big").unwrap();
    assert!(why.contains("gpu-host: 2 of the 4 GPU(s) free"), "{why}");
    // The two free GPUs are held for `big`: no 1-GPU step takes them.
    for i in 0..5 {
        assert!(placed(&plan, &format!("small-{i}")).is_none(), "{plan:#?}");
    }
    // Work that needs nothing `big` holds still runs elsewhere.
    assert_eq!(placed(&plan, "cpu").unwrap().agent_id, "cpu-host");

    // Without the big step in front, the small ones take the free GPUs.
    let plan = schedule(&steps[1..], &agents, CpuPolicy::Spread);
    assert_eq!(
        plan.placements
            .iter()
            .filter(|p| p.agent_id == "gpu-host")
            .count(),
        2
    );
}

// ------------------------------------------------------------------ property: no oversubscription

const MODELS: [&str; 3] = ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "Tesla T4"];
const TYPES: [&str; 4] = [
    "NVIDIA_A100",
    "NVIDIA_H100_80GB",
    "NVIDIA_TESLA_T4",
    "nvidia.com/gpu",
];

fn arb_agent(i: usize) -> impl Strategy<Value = AgentView> {
    (
        1u32..=16,
        1u64..=64,
        0usize..=8,
        0usize..3,
        proptest::collection::vec((any::<bool>(), any::<bool>()), 8),
        any::<bool>(),
        0u32..=8,
    )
        .prop_map(move |(cpu, mem, n, model, flags, accepting, used_cpu)| {
            let mut a = agent(
                &format!("agent-{i:02}"),
                cpu as f64,
                mem * GIB,
                gpus(&i.to_string(), MODELS[model], n),
            );
            for (g, (healthy, in_use)) in a.gpus.iter_mut().zip(flags) {
                g.healthy = healthy || in_use;
                g.in_use = in_use;
            }
            a.free_cpu = (cpu as f64 - used_cpu as f64).max(0.0);
            a.free_memory = a.total_memory / 2;
            a.accepting = accepting;
            a
        })
}

fn arb_step(i: usize) -> impl Strategy<Value = ReadyStep> {
    (
        0u32..=8,
        0u64..=32,
        0u32..=4,
        proptest::option::of(0usize..4),
    )
        .prop_map(move |(cpu, mem, gpus, t)| {
            step(
                &format!("s{i:03}"),
                cpu as f64 / 2.0,
                mem * GIB / 2,
                gpus,
                t.map(|t| TYPES[t]),
            )
        })
}

fn arb_fleet() -> impl Strategy<Value = (Vec<AgentView>, Vec<ReadyStep>)> {
    (0usize..6, 1usize..40).prop_flat_map(|(na, ns)| {
        (
            (0..na).map(arb_agent).collect::<Vec<_>>(),
            (0..ns).map(arb_step).collect::<Vec<_>>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn placement_never_oversubscribes_and_accounts_for_every_step((agents, steps) in arb_fleet()) {
        let plan = schedule(&steps, &agents, CpuPolicy::Spread);
        prop_assert_eq!(
            plan.placements.len() + plan.waiting.len() + plan.unschedulable.len(),
            steps.len()
        );
        let by_task: BTreeMap<&str, &ReadyStep> =
            steps.iter().map(|s| (s.task_id.as_str(), s)).collect();
        for a in &agents {
            let mine: Vec<&Placement> =
                plan.placements.iter().filter(|p| p.agent_id == a.agent_id).collect();
            prop_assert!(a.accepting || mine.is_empty(), "placed on a drained agent");
            let cpu: f64 = mine.iter().map(|p| by_task[p.task_id.as_str()].request.cpu_reserved()).sum();
            let mem: u64 = mine.iter().map(|p| by_task[p.task_id.as_str()].request.memory_reserved()).sum();
            prop_assert!(cpu <= a.free_cpu + 1e-6, "{} CPU placed on {} free", cpu, a.free_cpu);
            prop_assert!(mem <= a.free_memory);
            let mut given = BTreeSet::new();
            for p in &mine {
                let r = &by_task[p.task_id.as_str()].request;
                prop_assert_eq!(p.gpus.len(), r.accelerator_count as usize);
                for uuid in &p.gpus {
                    prop_assert!(given.insert(uuid.clone()), "GPU {} given twice", uuid);
                    let g = a.gpus.iter().find(|g| &g.uuid == uuid);
                    prop_assert!(g.is_some(), "GPU {} is not on {}", uuid, a.agent_id);
                    let g = g.unwrap();
                    prop_assert!(g.healthy && !g.in_use, "GPU {} was not free", uuid);
                    prop_assert!(gpu_model_matches(r.accelerator_type.as_deref(), &g.model));
                }
            }
        }
        // Unschedulable means no agent could have run it even empty.
        for (s, _) in &plan.unschedulable {
            let r = &s.request;
            let could = agents.iter().any(|a| {
                r.cpu_reserved() <= a.total_cpu
                    && r.memory_reserved() <= a.total_memory
                    && a.gpus.iter().filter(|g| gpu_model_matches(r.accelerator_type.as_deref(), &g.model)).count()
                        >= r.accelerator_count as usize
            });
            prop_assert!(!could, "{} called unschedulable but fits an empty agent", s.task_id);
        }
    }
}

#[test]
fn agents_sharing_an_id_are_held_and_chosen_as_the_full_scan_does() {
    // Exact ties in nearness only arise between agents with the same id; the last of them holds
    // the waiting step's GPUs, as `max_by` chose.
    let twin = |prefix: &str| {
        let mut g = gpus(prefix, "NVIDIA A100", 4);
        g[0].in_use = true;
        g[1].in_use = true;
        agent("twin", 8.0, 8 * GIB, g)
    };
    let agents = vec![twin("x"), twin("y")];
    let steps = [
        step("big", 1.0, GIB, 4, None),
        step("small", 1.0, GIB, 1, None),
    ];
    let plan = schedule(&steps, &agents, CpuPolicy::Spread);
    assert_eq!(
        plan,
        super::placement::schedule_naive(&steps, &agents, CpuPolicy::Spread)
    );
    assert_eq!(
        placed(&plan, "small").unwrap().gpus,
        vec!["GPU-x-2".to_string()]
    );
}

// ------------------------------------------------------------- property: the index changes nothing

const ANY_MODEL: [&str; 4] = [
    "NVIDIA A100-SXM4-40GB",
    "NVIDIA H100 80GB HBM3",
    "Tesla T4",
    "NVIDIA L40S",
];
const ANY_TYPE: [&str; 6] = [
    "NVIDIA_A100",
    "NVIDIA_H100_80GB",
    "NVIDIA_TESLA_T4",
    "nvidia.com/gpu",
    "NVIDIA_L4",
    "",
];
const ANY_TAINT: [&str; 4] = [
    "dedicated=ml:NoSchedule",
    "spot:PreferNoSchedule",
    "gpu=h100:NoExecute",
    "cheap:PreferNoSchedule",
];
/// Nudges that put free CPU just off a whole number, where millicore rounding and the
/// tolerance of the fit test disagree.
const CPU_NUDGE: [f64; 5] = [0.0, 0.0, -0.0004, 0.0006, -1e-10];

pub(super) fn arb_taints() -> impl Strategy<Value = Vec<Taint>> {
    proptest::sample::subsequence(ANY_TAINT.to_vec(), 0..=2).prop_map(|ts| {
        ts.iter()
            .map(|t| Taint::parse(t).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    })
}

pub(super) fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (0usize..3, any::<bool>()).prop_map(|(zone, rack)| {
        let mut l = BTreeMap::new();
        if zone > 0 {
            l.insert("zone".to_string(), ["a", "b"][zone - 1].to_string());
        }
        if rack {
            l.insert("rack".to_string(), "1".to_string());
        }
        l
    })
}

/// Agents that share classes and keys often: few sizes, few models (mixed on one host too),
/// repeated ids, drained ones, free capacity above the total.
fn arb_any_agent() -> impl Strategy<Value = AgentView> {
    (
        (
            prop_oneof![0u32..6, 0u32..400],
            1u32..=32,
            -8i32..=40,
            0usize..5,
        ),
        (1u64..=16, 0u64..=20, 0u32..1000),
        proptest::collection::vec((0usize..4, any::<bool>(), any::<bool>()), 0..=5),
        (arb_labels(), arb_taints(), proptest::bool::weighted(0.85)),
    )
        .prop_map(
            |((id, quarters, used, nudge), (mem, used_mem, tag), g, rest)| {
                let (labels, taints, accepting) = rest;
                let cpu = quarters as f64 / 4.0;
                let mut a = agent(&format!("a{id:03}"), cpu, mem * GIB / 2, vec![]);
                // `used` past the total leaves no CPU; below zero, more free than the total (as
                // with memory). Agents sharing an id still differ by their GPUs' UUIDs.
                a.free_cpu = (cpu - used as f64 / 4.0).max(0.0) + CPU_NUDGE[nudge];
                a.free_memory = (mem + 2).saturating_sub(used_mem) * GIB / 2;
                a.gpus = g
                    .iter()
                    .enumerate()
                    .map(|(k, (model, healthy, in_use))| GpuSlot {
                        uuid: format!("GPU-{id}-{tag}-{k}"),
                        model: ANY_MODEL[*model].to_string(),
                        healthy: *healthy || *in_use,
                        in_use: *in_use,
                    })
                    .collect();
                a.labels = labels;
                a.taints = taints;
                a.accepting = accepting;
                a
            },
        )
}

pub(super) fn arb_request() -> impl Strategy<Value = ResourceRequest> {
    (
        (0u32..=12, 0usize..5, 0u64..=10),
        (0u32..=3, proptest::option::of(0usize..6)),
        (0usize..4, 0usize..4),
    )
        .prop_map(|((cpu, nudge, mem), (gpus, t), (sel, tol))| {
            let mut r = step(
                "x",
                cpu as f64 / 2.0 - CPU_NUDGE[nudge],
                mem * GIB / 2,
                gpus,
                None,
            )
            .request;
            r.accelerator_type = t.map(|t| ANY_TYPE[t].to_string());
            let selector = [
                None,
                Some(("zone", "a")),
                Some(("zone", "b")),
                Some(("rack", "1")),
            ];
            if let Some((k, v)) = selector[sel] {
                r.node_selector.insert(k.into(), v.into());
            }
            r.tolerations = match tol {
                1 => vec![Toleration {
                    key: "dedicated".into(),
                    value: "ml".into(),
                    ..Default::default()
                }],
                2 => vec![Toleration {
                    key: "spot".into(),
                    exists: true,
                    ..Default::default()
                }],
                3 => vec![Toleration {
                    exists: true,
                    ..Default::default()
                }],
                _ => vec![],
            };
            r
        })
}

/// A fleet and a queue drawn from a few request shapes, so that steps repeat and the per-shape
/// memo and reservations come into play.
fn arb_pass(
    max_agents: usize,
    max_steps: usize,
) -> impl Strategy<Value = (Vec<AgentView>, Vec<ReadyStep>, CpuPolicy)> {
    (
        proptest::collection::vec(arb_any_agent(), 0..=max_agents),
        proptest::collection::vec(arb_request(), 1..=8),
        proptest::collection::vec(any::<prop::sample::Index>(), 1..=max_steps),
        any::<bool>(),
    )
        .prop_map(|(agents, shapes, picks, pack)| {
            let steps = picks
                .iter()
                .enumerate()
                .map(|(i, p)| ReadyStep {
                    run_id: "r".into(),
                    task_id: format!("s{i:03}").into(),
                    attempt: 1,
                    request: p.get(&shapes).clone(),
                })
                .collect();
            let policy = if pack {
                CpuPolicy::BinPack
            } else {
                CpuPolicy::Spread
            };
            (agents, steps, policy)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_index_places_exactly_as_the_full_scan((agents, steps, policy) in arb_pass(24, 60)) {
        let naive = super::placement::schedule_naive(&steps, &agents, policy);
        prop_assert_eq!(schedule(&steps, &agents, policy), naive);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_index_agrees_on_larger_fleets((agents, steps, policy) in arb_pass(300, 600)) {
        let naive = super::placement::schedule_naive(&steps, &agents, policy);
        prop_assert_eq!(schedule(&steps, &agents, policy), naive);
    }
}
