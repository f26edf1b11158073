//! The persistent [`Placer`] against a fresh [`schedule`] on fresh views, pass after pass,
//! with the fleet changing between passes the ways the replicated state changes it.

use std::collections::{BTreeMap, BTreeSet};

use gantry_model::{AgentId, GpuDevice, HostInventory, ResourceRequest, Taint};
use proptest::prelude::*;

use super::tests::{arb_labels, arb_request, arb_taints};
use super::*;
use crate::state::{AttemptKey, Command, Placement};

const GIB: u64 = 1 << 30;
/// Agent ids drawn from `a0`..`a{IDS-1}`: some registered, some not yet.
const IDS: usize = 12;
const MODELS: [&str; 4] = [
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
    "Tesla T4",
    "NVIDIA L40S",
];

fn id(k: usize) -> AgentId {
    AgentId::from(format!("a{k}"))
}

/// GPU UUIDs follow the agent and the GPU's position, so allocations survive an inventory
/// update that keeps the GPU.
fn inventory(k: usize, quarters: u32, halves: u64, gpus: &[(usize, bool)]) -> HostInventory {
    HostInventory {
        hostname: id(k).to_string(),
        cpu_cores: f64::from(quarters) / 4.0,
        memory_bytes: halves * GIB / 2,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(g, (model, healthy))| GpuDevice {
                index: g as u32,
                uuid: format!("GPU-{k}-{g}"),
                name: MODELS[*model].to_string(),
                memory_total_bytes: 80 * GIB,
                memory_free_bytes: 80 * GIB,
                healthy: *healthy,
                utilization_percent: None,
                mig_enabled: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn arb_inventory(k: usize) -> impl Strategy<Value = HostInventory> {
    (
        1u32..=32,
        1u64..=16,
        // Few models and sizes, so that classes have several members and views overlap.
        prop_oneof![
            Just(vec![]),
            (0usize..2, 1usize..=4).prop_map(|(m, n)| vec![(m, true); n]),
            proptest::collection::vec((0usize..4, proptest::bool::weighted(0.8)), 0..=4),
        ],
    )
        .prop_map(move |(q, h, g)| inventory(k, q, h, &g))
}

/// One change to the fleet between passes.
#[derive(Debug, Clone)]
enum Change {
    /// Commits the previous pass's placements, as the leader's proposal would.
    Commit,
    /// Work on the agent ended or began elsewhere: its allocations are now these.
    Allocated {
        k: usize,
        quarters: u32,
        halves: u64,
    },
    Gpu {
        k: usize,
        g: usize,
        used: bool,
    },
    Drain {
        k: usize,
        on: bool,
    },
    Inventory {
        k: usize,
        inv: HostInventory,
    },
    Lost {
        k: usize,
    },
    Register {
        k: usize,
        inv: HostInventory,
        labels: BTreeMap<String, String>,
        taints: Vec<Taint>,
    },
    /// Registers again with only its taints changed (a new agent configuration).
    Retaint {
        k: usize,
        taints: Vec<Taint>,
    },
    /// The agent's session opened or closed.
    Connection {
        k: usize,
    },
    /// The connected set's generation moved with no net change (a session replaced).
    Reattach,
}

/// Mostly untainted, so that agents share classes.
fn arb_some_taints() -> impl Strategy<Value = Vec<Taint>> {
    prop_oneof![3 => Just(vec![]), 1 => arb_taints()]
}

fn arb_change() -> impl Strategy<Value = Change> {
    let k = 0..IDS;
    prop_oneof![
        3 => Just(Change::Commit),
        3 => (k.clone(), 0u32..=40, 0u64..=20)
            .prop_map(|(k, quarters, halves)| Change::Allocated { k, quarters, halves }),
        2 => (k.clone(), 0usize..4, any::<bool>()).prop_map(|(k, g, used)| Change::Gpu { k, g, used }),
        2 => (k.clone(), any::<bool>()).prop_map(|(k, on)| Change::Drain { k, on }),
        1 => k.clone().prop_flat_map(|k| arb_inventory(k).prop_map(move |inv| Change::Inventory { k, inv })),
        1 => k.clone().prop_map(|k| Change::Lost { k }),
        1 => k.clone().prop_flat_map(|k| (arb_inventory(k), arb_labels(), arb_some_taints())
            .prop_map(move |(inv, labels, taints)| Change::Register { k, inv, labels, taints })),
        1 => (k.clone(), arb_taints()).prop_map(|(k, taints)| Change::Retaint { k, taints }),
        1 => k.clone().prop_map(|k| Change::Connection { k }),
        1 => Just(Change::Reattach),
    ]
}

/// The fleet as the leader sees it: replicated state plus this node's sessions.
struct World {
    state: ClusterState,
    connected: BTreeSet<AgentId>,
    generation: u64,
    index: u64,
    /// The previous pass's placements with their requests, not yet committed.
    pending: Vec<(Placement, ResourceRequest)>,
}

impl World {
    fn apply(&mut self, cmd: Command) {
        self.index += 1;
        self.state.apply(self.index, cmd);
    }

    /// Changes an agent's allocations directly (the state's own paths need runs), moving its
    /// counter as they do.
    fn allocate(&mut self, k: &str, f: impl FnOnce(&mut crate::state::AgentRecord)) {
        if let Some(a) = self.state.agents.get_mut(k) {
            f(a);
            a.changes += 1;
        }
    }

    fn change(&mut self, c: Change) {
        match c {
            Change::Commit => {
                for (p, r) in std::mem::take(&mut self.pending) {
                    let key = AttemptKey {
                        run_id: p.run_id.clone(),
                        task_id: p.task_id.clone(),
                        attempt: p.attempt,
                    };
                    self.allocate(p.agent_id.as_str(), |a| {
                        a.cpu_allocated += r.cpu_reserved();
                        a.memory_allocated += r.memory_reserved();
                        for g in &p.gpus {
                            a.gpus_in_use.insert(g.clone(), key.clone());
                        }
                    });
                }
            }
            Change::Allocated {
                k,
                quarters,
                halves,
            } => self.allocate(id(k).as_str(), |a| {
                a.cpu_allocated = f64::from(quarters) / 4.0;
                a.memory_allocated = halves * GIB / 2;
            }),
            Change::Gpu { k, g, used } => self.allocate(id(k).as_str(), |a| {
                let uuid = format!("GPU-{k}-{g}");
                if used {
                    let key = AttemptKey {
                        run_id: "other".into(),
                        task_id: uuid.clone().into(),
                        attempt: 1,
                    };
                    a.gpus_in_use.insert(uuid, key);
                } else {
                    a.gpus_in_use.remove(&uuid);
                }
            }),
            Change::Drain { k, on } => self.apply(Command::SetAgentDraining {
                agent_id: id(k),
                draining: on,
            }),
            Change::Inventory { k, inv } => self.apply(Command::UpdateInventory {
                agent_id: id(k),
                inventory: inv,
            }),
            Change::Lost { k } => self.apply(Command::DeclareAgentLost {
                agent_id: id(k),
                at: 1,
            }),
            Change::Register {
                k,
                inv,
                labels,
                taints,
            } => self.apply(Command::RegisterAgent {
                agent_id: id(k),
                inventory: inv,
                labels,
                taints,
                at: 1,
            }),
            Change::Retaint { k, taints } => {
                if let Some(a) = self.state.agents.get(&id(k)) {
                    let (inv, labels) = (a.inventory.clone(), a.labels.clone());
                    self.apply(Command::RegisterAgent {
                        agent_id: id(k),
                        inventory: inv,
                        labels,
                        taints,
                        at: 1,
                    });
                }
            }
            Change::Connection { k } => {
                if !self.connected.remove(&id(k)) {
                    self.connected.insert(id(k));
                }
                self.generation += 1;
            }
            Change::Reattach => self.generation += 1,
        }
    }
}

fn steps_of(
    shapes: &[ResourceRequest],
    picks: &[prop::sample::Index],
    pass: usize,
) -> Vec<ReadyStep> {
    picks
        .iter()
        .enumerate()
        .map(|(i, p)| ReadyStep {
            run_id: format!("r{pass}").into(),
            task_id: format!("s{i:03}").into(),
            attempt: 1,
            request: p.get(shapes).clone(),
        })
        .collect()
}

type Pass = (Vec<Change>, Vec<prop::sample::Index>, bool);

fn arb_passes() -> impl Strategy<Value = Pass> {
    (
        proptest::collection::vec(arb_change(), 0..=4),
        proptest::collection::vec(any::<prop::sample::Index>(), 1..=30),
        proptest::bool::weighted(0.2),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_persistent_placer_plans_exactly_as_a_fresh_schedule(
        start in proptest::collection::vec(
            (0..IDS).prop_flat_map(|k| (Just(k), arb_inventory(k), arb_labels(), arb_some_taints(), proptest::bool::weighted(0.8))),
            0..=IDS,
        ),
        shapes in proptest::collection::vec(arb_request(), 1..=6),
        passes in proptest::collection::vec(arb_passes(), 1..=10),
        pack in any::<bool>(),
    ) {
        let policy = if pack { CpuPolicy::BinPack } else { CpuPolicy::Spread };
        let mut w = World {
            state: ClusterState::default(),
            connected: BTreeSet::new(),
            generation: 0,
            index: 0,
            pending: Vec::new(),
        };
        for (k, inv, labels, taints, connected) in start {
            w.change(Change::Register { k, inv, labels, taints });
            if connected {
                w.connected.insert(id(k));
            }
        }
        let mut placer = Placer::new(policy);
        for (pass, (changes, picks, twice)) in passes.into_iter().enumerate() {
            for c in changes {
                w.change(c);
            }
            let steps = steps_of(&shapes, &picks, pass);
            let fresh = schedule(&steps, &agent_views(&w.state, &w.connected), policy);
            placer.sync(&w.state, w.generation, || w.connected.clone());
            prop_assert_eq!(&placer.schedule(&steps), &fresh, "pass {}", pass);
            // A pass leaves nothing behind: the same pass again plans the same.
            if twice {
                prop_assert_eq!(&placer.schedule(&steps), &fresh, "pass {} again", pass);
            }
            w.pending = fresh
                .placements
                .iter()
                .filter_map(|p| {
                    let s = steps.iter().find(|s| s.task_id == p.task_id)?;
                    Some((p.clone(), s.request.clone()))
                })
                .collect();
        }
    }
}

/// Many passes on one placer with no change between them keep agreeing: the index's views,
/// built lazily in one pass, serve the next.
#[test]
fn an_unchanged_fleet_keeps_its_plan() {
    let mut state = ClusterState::default();
    for k in 0..4 {
        let inv = inventory(k, 16, 16, &[(1, true), (1, true)]);
        state.apply(
            k as u64 + 1,
            Command::RegisterAgent {
                agent_id: id(k),
                inventory: inv,
                labels: BTreeMap::new(),
                taints: vec![],
                at: 0,
            },
        );
    }
    let connected: BTreeSet<AgentId> = (0..4).map(id).collect();
    let mut r = ResourceRequest {
        cpu_request: Some(2.0),
        ..Default::default()
    };
    r.accelerator_count = 1;
    let steps: Vec<ReadyStep> = (0..12)
        .map(|i| ReadyStep {
            run_id: "r".into(),
            task_id: format!("t{i}").into(),
            attempt: 1,
            request: r.clone(),
        })
        .collect();
    let fresh = schedule(&steps, &agent_views(&state, &connected), CpuPolicy::Spread);
    let mut placer = Placer::new(CpuPolicy::Spread);
    for _ in 0..3 {
        placer.sync(&state, 7, || connected.clone());
        assert_eq!(placer.schedule(&steps), fresh);
    }
    assert_eq!(fresh.placements.len(), 8);
}

/// Draining an agent moves it out of its class: the placer must not keep offering it.
#[test]
fn a_drained_agent_leaves_its_class() {
    let mut state = ClusterState::default();
    for (k, quarters) in [(0, 16), (1, 64)] {
        state.apply(
            k as u64 + 1,
            Command::RegisterAgent {
                agent_id: id(k),
                inventory: inventory(k, quarters, 16, &[]),
                labels: BTreeMap::new(),
                taints: vec![],
                at: 0,
            },
        );
    }
    let connected: BTreeSet<AgentId> = (0..2).map(id).collect();
    let steps = vec![ReadyStep {
        run_id: "r".into(),
        task_id: "t".into(),
        attempt: 1,
        request: ResourceRequest {
            cpu_request: Some(1.0),
            ..Default::default()
        },
    }];
    let mut placer = Placer::new(CpuPolicy::Spread);
    placer.sync(&state, 1, || connected.clone());
    assert_eq!(placer.schedule(&steps).placements[0].agent_id, id(1));
    state.apply(
        3,
        Command::SetAgentDraining {
            agent_id: id(1),
            draining: true,
        },
    );
    placer.sync(&state, 1, || connected.clone());
    let fresh = schedule(&steps, &agent_views(&state, &connected), CpuPolicy::Spread);
    assert_eq!(fresh.placements[0].agent_id, id(0));
    assert_eq!(placer.schedule(&steps), fresh);
}
