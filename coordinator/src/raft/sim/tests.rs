//! The Raft node's behaviour, through the simulation: proposal replies, leader changes with
//! proposals in flight, snapshots, membership, ReadIndex, step-down, and a fatal entry. Each test
//! takes milliseconds; the property test runs the same checks over many seeds.

use proptest::prelude::*;
use raft::eraftpb::ConfChangeType;

use super::{Answer, NetConfig, Sim};

/// Election timeouts are 10 to 45 ticks: this many steps always elects someone.
const ELECTION: u64 = 400;

fn elect(sim: &mut Sim) -> u64 {
    assert!(
        sim.run_until(ELECTION, |s| s.leader().is_some()),
        "no leader"
    );
    sim.leader().unwrap()
}

fn answer_of(sim: &Sim, data: &[u8]) -> Option<Answer> {
    sim.answers
        .iter()
        .find(|(d, _)| d == data)
        .map(|(_, a)| a.clone())
}

/// Every acknowledged proposal is in every given node's applied list, once.
fn assert_durable(sim: &Sim, nodes: &[u64]) {
    let acked = sim.acknowledged();
    for id in nodes {
        let applied: Vec<Vec<u8>> = sim.applied(*id).into_iter().map(|(_, d)| d).collect();
        for d in &acked {
            let n = applied.iter().filter(|a| *a == d).count();
            assert_eq!(
                n,
                1,
                "node {id} applied acknowledged {:?} {n} times",
                String::from_utf8_lossy(d)
            );
        }
    }
}

#[test]
fn each_proposer_hears_the_outcome_of_its_own_entry() {
    let mut sim = Sim::new(1, 3, 1000);
    let leader = elect(&mut sim);
    for i in 0..20 {
        sim.propose(leader, format!("p{i}").as_bytes());
    }
    assert!(sim.run_until(200, |s| s.all_answered()));
    let mut indexes: Vec<u64> = (0..20)
        .map(|i| match answer_of(&sim, format!("p{i}").as_bytes()) {
            Some(Answer::Applied(index)) => index,
            other => panic!("p{i}: {other:?}"),
        })
        .collect();
    let sorted = {
        let mut v = indexes.clone();
        v.sort_unstable();
        v
    };
    assert_eq!(indexes, sorted, "entries keep the order of their proposals");
    indexes.dedup();
    assert_eq!(indexes.len(), 20, "every proposal has its own entry");
    assert!(sim.settle(ELECTION));
    assert_durable(&sim, &sim.up());
}

#[test]
fn a_proposal_to_a_follower_is_refused_with_the_leader_named() {
    let mut sim = Sim::new(2, 3, 1000);
    let leader = elect(&mut sim);
    assert!(sim.settle(ELECTION));
    let follower = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    sim.propose(follower, b"to-a-follower");
    sim.run(2);
    assert_eq!(
        answer_of(&sim, b"to-a-follower"),
        Some(Answer::Refused(format!(
            "this node is not the leader (leader: {leader})"
        )))
    );
}

/// The scenario of a proposal counter that restarts with the process: a restarted single
/// voter becomes leader at once and replays its log while a new proposal waits. The new
/// proposal must be answered with its own entry, not the replayed entry of the same number.
#[test]
fn a_restarted_leader_answers_its_first_proposal_with_its_own_entry() {
    let mut sim = Sim::new(3, 1, 1000);
    let leader = elect(&mut sim);
    sim.propose(leader, b"before-1");
    sim.propose(leader, b"before-2");
    assert!(sim.run_until(50, |s| s.all_answered()));
    let old_term = sim.status(leader).term;

    sim.restart(leader);
    // Proposed before the restarted node's first Ready replays the two old entries.
    sim.propose(leader, b"after-restart");
    assert!(sim.run_until(50, |s| s.all_answered()));
    match answer_of(&sim, b"after-restart") {
        Some(Answer::Applied(index)) => assert!(index > 2, "index {index}"),
        other => panic!("{other:?}"),
    }
    assert!(sim.status(leader).term > old_term);
    let data: Vec<Vec<u8>> = sim.applied(leader).into_iter().map(|(_, d)| d).collect();
    assert_eq!(
        data,
        vec![
            b"before-1".to_vec(),
            b"before-2".to_vec(),
            b"after-restart".to_vec()
        ]
    );
}

#[test]
fn proposals_in_flight_when_the_leader_is_cut_off_are_refused_or_kept_never_misanswered() {
    let mut sim = Sim::new(4, 3, 1000);
    let old = elect(&mut sim);
    assert!(sim.settle(ELECTION));
    for i in 0..10 {
        sim.propose(old, format!("inflight-{i}").as_bytes());
    }
    // Cut off before anything of them reaches a follower.
    sim.isolate(old);
    assert!(sim.run_until(ELECTION, |s| s.leader().is_some_and(|l| l != old)));
    let new = sim.leader().unwrap();
    sim.propose(new, b"on-the-new-leader");
    // The old leader learns that it lost its quorum and refuses what it held.
    assert!(sim.run_until(ELECTION, |s| s.all_answered()));
    for i in 0..10 {
        match answer_of(&sim, format!("inflight-{i}").as_bytes()) {
            Some(Answer::Refused(_)) => {}
            other => panic!("inflight-{i} was {other:?} though it never reached a quorum"),
        }
    }
    assert!(matches!(
        answer_of(&sim, b"on-the-new-leader"),
        Some(Answer::Applied(_))
    ));
    sim.heal();
    assert!(sim.settle(ELECTION));
    assert_durable(&sim, &sim.up());
    // The old leader's uncommitted entries were replaced by the new leader's log.
    let data: Vec<Vec<u8>> = sim.applied(old).into_iter().map(|(_, d)| d).collect();
    assert!(!data.iter().any(|d| d.starts_with(b"inflight-")));
}

#[test]
fn a_leader_cut_off_from_its_quorum_steps_down() {
    let mut sim = Sim::new(5, 3, 1000);
    let old = elect(&mut sim);
    let old_term = sim.status(old).term;
    sim.isolate(old);
    assert!(
        sim.run_until(ELECTION, |s| !s.status(old).is_leader),
        "the isolated leader kept leading"
    );
    assert!(sim.run_until(ELECTION, |s| s.leader().is_some()));
    let new = sim.leader().unwrap();
    assert_ne!(new, old);
    assert!(sim.status(new).term > old_term);
    sim.propose(old, b"to-the-deposed");
    sim.run(2);
    assert!(matches!(
        answer_of(&sim, b"to-the-deposed"),
        Some(Answer::Refused(_))
    ));
    // Back in the cluster it follows, and pre-vote kept it from raising the term meanwhile.
    sim.heal();
    assert!(sim.settle(ELECTION));
    assert_eq!(sim.leader(), Some(new));
}

#[test]
fn a_follower_far_behind_catches_up_by_snapshot() {
    let mut sim = Sim::new(6, 3, 5);
    let leader = elect(&mut sim);
    assert!(sim.settle(ELECTION));
    let lagging = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    sim.crash(lagging);
    for i in 0..40 {
        sim.propose(leader, format!("s{i}").as_bytes());
        sim.run(1);
    }
    assert!(sim.run_until(200, |s| s.all_answered()));
    assert!(
        sim.status(leader).first_index > 10,
        "the leader compacted its log: {:?}",
        sim.status(leader)
    );
    assert_eq!(sim.snapshots_delivered, 0);
    sim.restart(lagging);
    assert!(sim.settle(2 * ELECTION));
    assert!(sim.snapshots_delivered >= 1, "no snapshot was sent");
    assert!(sim.status(lagging).snapshot_index > 0);
    assert_eq!(sim.applied(lagging), sim.applied(leader));
    assert_durable(&sim, &sim.up());
}

#[test]
fn a_snapshot_that_does_not_decode_never_replaces_the_log() {
    let mut sim = Sim::new(7, 3, 5);
    let leader = elect(&mut sim);
    sim.propose(leader, b"unsnapshottable");
    for i in 0..20 {
        sim.propose(leader, format!("u{i}").as_bytes());
        sim.run(1);
    }
    assert!(sim.run_until(200, |s| s.all_answered()));
    assert!(sim.settle(ELECTION));
    for id in sim.ids() {
        let s = sim.status(id);
        // Index 1 is the first configuration's snapshot, which every cluster starts from.
        assert_eq!(s.snapshot_index, 1, "node {id} took a bad snapshot: {s:?}");
        assert!(s.first_index <= 2, "node {id} compacted its log: {s:?}");
    }
    // Each node starts again from its log alone and holds every entry.
    for id in sim.ids() {
        sim.restart(id);
    }
    assert!(sim.settle(2 * ELECTION));
    assert_durable(&sim, &sim.up());
}

#[test]
fn a_snapshot_lost_in_transit_is_sent_again() {
    let mut sim = Sim::new(7, 3, 5);
    let leader = elect(&mut sim);
    assert!(sim.settle(ELECTION));
    let lagging = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    sim.crash(lagging);
    for i in 0..30 {
        sim.propose(leader, format!("s{i}").as_bytes());
        sim.run(1);
    }
    assert!(sim.run_until(200, |s| s.all_answered()));
    sim.restart(lagging);
    // Lossy for a while: snapshots and appends get lost and are retried.
    sim.net = NetConfig {
        drop_percent: 40,
        max_delay: 3,
    };
    sim.run(300);
    sim.net = NetConfig::default();
    assert!(sim.settle(4 * ELECTION));
    assert_eq!(sim.applied(lagging), sim.applied(leader));
}

/// A follower's own snapshot finishes writing only after a newer snapshot from the leader was
/// installed: the older one must not become the node's recorded snapshot (its file is gone).
#[test]
fn a_slow_own_snapshot_never_replaces_a_newer_installed_one() {
    let mut sim = Sim::new(12, 3, 5);
    let leader = elect(&mut sim);
    assert!(sim.settle(ELECTION));
    let slow = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    sim.hold_snapshot_results(slow);
    for i in 0..8 {
        sim.propose(leader, format!("a{i}").as_bytes());
    }
    assert!(sim.run_until(200, |s| s.all_answered()));
    assert!(sim.settle(ELECTION));
    sim.isolate(slow);
    for i in 0..40 {
        sim.propose(leader, format!("b{i}").as_bytes());
        sim.run(1);
    }
    assert!(sim.run_until(ELECTION, |s| s.all_answered()));
    sim.heal();
    assert!(sim.run_until(2 * ELECTION, |s| s.snapshots_delivered > 0));
    assert!(sim.settle(2 * ELECTION));
    let installed = sim.status(slow).snapshot_index;
    assert!(installed > 8, "{installed}");
    sim.release_snapshot_results(slow);
    sim.run(1);
    assert_eq!(sim.status(slow).snapshot_index, installed);
    // A crash now: it starts again from what it recorded.
    sim.restart(slow);
    assert!(sim.settle(ELECTION));
    assert_eq!(sim.applied(slow), sim.applied(leader));
}

#[test]
fn a_node_joins_as_learner_becomes_voter_and_a_member_leaves() {
    let mut sim = Sim::new(8, 3, 10);
    let leader = elect(&mut sim);
    for i in 0..25 {
        sim.propose(leader, format!("m{i}").as_bytes());
    }
    assert!(sim.run_until(200, |s| s.all_answered()));
    sim.add_node(4, Default::default());

    let mut rx = sim.change(leader, ConfChangeType::AddLearnerNode, 4);
    assert!(sim.run_until(200, |_| !rx.is_empty()));
    let cs = rx.try_recv().unwrap().unwrap();
    assert!(cs.learners.contains(&4), "{cs:?}");
    assert!(sim.settle(2 * ELECTION), "the learner did not catch up");
    assert_eq!(sim.status(4).role, "LEARNER");
    assert_eq!(sim.applied(4), sim.applied(leader));

    let mut rx = sim.change(leader, ConfChangeType::AddNode, 4);
    assert!(sim.run_until(200, |_| !rx.is_empty()));
    let cs = rx.try_recv().unwrap().unwrap();
    assert!(cs.voters.contains(&4), "{cs:?}");
    assert!(sim.run_until(200, |s| !s.status(leader).in_joint));

    let gone = sim
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .unwrap();
    let mut rx = sim.change(leader, ConfChangeType::RemoveNode, gone);
    assert!(sim.run_until(200, |_| !rx.is_empty()));
    rx.try_recv().unwrap().unwrap();
    assert!(sim.run_until(200, |s| !s.status(leader).in_joint));
    sim.crash(gone);
    let mut voters = sim.status(leader).voters;
    voters.sort_unstable();
    let mut want: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != gone).collect();
    want.sort_unstable();
    assert_eq!(voters, want);
    assert!(!sim.status(leader).members.contains_key(&gone));

    // The new configuration commits without the removed member.
    sim.propose(leader, b"after-leave");
    assert!(sim.run_until(200, |s| s.all_answered()));
    assert!(matches!(
        answer_of(&sim, b"after-leave"),
        Some(Answer::Applied(_))
    ));
    assert!(sim.settle(ELECTION));
    for id in sim.up() {
        let mut v = sim.status(id).voters;
        v.sort_unstable();
        assert_eq!(v, want, "node {id}");
    }
}

#[test]
fn a_second_membership_change_while_one_is_joint_is_refused_not_left_hanging() {
    let mut sim = Sim::new(9, 3, 1000);
    let leader = elect(&mut sim);
    sim.add_node(4, Default::default());
    sim.add_node(5, Default::default());
    let mut first = sim.change(leader, ConfChangeType::AddLearnerNode, 4);
    let mut second = sim.change(leader, ConfChangeType::AddLearnerNode, 5);
    assert!(sim.run_until(200, |_| !first.is_empty() && !second.is_empty()));
    assert!(first.try_recv().unwrap().is_ok());
    let refused = second.try_recv().unwrap();
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn read_index_answers_only_after_everything_committed_before_it_is_applied() {
    let mut sim = Sim::new(10, 3, 1000);
    sim.net.max_delay = 4;
    let leader = elect(&mut sim);
    let follower = sim.ids().into_iter().find(|id| *id != leader).unwrap();
    for round in 0..10 {
        for i in 0..5 {
            sim.propose(leader, format!("r{round}-{i}").as_bytes());
        }
        assert!(sim.run_until(200, |s| s.all_answered()));
        let committed = sim.status(leader).commit_index;
        let mut rx = sim.read_index(follower);
        assert!(sim.run_until(200, |_| !rx.is_empty()));
        rx.try_recv().unwrap().unwrap();
        assert!(
            sim.status(follower).applied_index >= committed,
            "a read on node {follower} was allowed before it applied index {committed}"
        );
    }

    // A node cut off from the quorum cannot confirm a current read.
    sim.isolate(follower);
    let mut rx = sim.read_index(follower);
    sim.run(ELECTION);
    assert!(
        !matches!(rx.try_recv(), Ok(Ok(()))),
        "an isolated node confirmed a read"
    );
}

#[test]
fn an_entry_that_cannot_be_applied_stops_the_node_and_no_replica_goes_past_it() {
    let mut sim = Sim::new(11, 3, 1000);
    let leader = elect(&mut sim);
    sim.propose(leader, b"fine");
    sim.propose(leader, b"poison: a newer version's command");
    sim.propose(leader, b"after");
    assert!(sim.run_until(200, |s| s.all_answered()));
    sim.run(2 * ELECTION);
    let Some(Answer::Applied(fine)) = answer_of(&sim, b"fine") else {
        panic!("{:?}", sim.answers)
    };
    let poison = fine + 1;
    // The leader stopped at the entry, and so did every replica that reached it; whoever did
    // not reach it (a quorum of stopped peers cannot commit it to them) never applied past it.
    let (fatal, status) = &sim.fatal[&leader];
    assert!(fatal.0.contains("cannot be applied"), "{fatal}");
    assert!(status.stopped && !status.is_leader && status.role == "STOPPED");
    for (id, (fatal, status)) in &sim.fatal {
        assert!(
            fatal.0.contains(&format!("entry {poison} ")),
            "node {id}: {fatal}"
        );
        assert!(status.stopped && !status.is_leader);
    }
    for id in sim.up() {
        assert!(
            sim.status(id).applied_index < poison,
            "node {id} went past it"
        );
        assert!(!sim.status(id).is_leader || sim.fatal.len() < 2);
    }
    assert!(matches!(
        answer_of(&sim, b"poison: a newer version's command"),
        Some(Answer::Refused(_))
    ));
    assert!(matches!(
        answer_of(&sim, b"after"),
        Some(Answer::Refused(_))
    ));
}

/// One random scenario: proposals on random nodes, a lossy and reordering network, partitions,
/// crashes and restarts; then the network heals and everything acknowledged must be everywhere.
fn chaos(seed: u64, nodes: u64, snapshot_entries: u64) {
    let mut sim = Sim::new(seed, nodes, snapshot_entries);
    sim.net = NetConfig {
        drop_percent: sim.rng.below(20),
        max_delay: 1 + sim.rng.below(5),
    };
    let mut n = 0;
    for _ in 0..1500 {
        let r = sim.rng.below(1000);
        let up = sim.up();
        if r < 60 && !up.is_empty() {
            let at = up[sim.rng.below(up.len() as u64) as usize];
            sim.propose(at, format!("c{n}").as_bytes());
            n += 1;
        } else if r < 63 {
            let id = 1 + sim.rng.below(nodes);
            sim.isolate(id);
        } else if r < 66 {
            let side: Vec<u64> = (1..=nodes).filter(|_| sim.rng.chance(50)).collect();
            sim.partition(&side);
        } else if r < 75 {
            sim.heal();
        } else if r < 77 {
            let id = 1 + sim.rng.below(nodes);
            if sim.up().contains(&id) {
                sim.restart(id);
            }
        }
        sim.run_step();
    }
    sim.heal();
    sim.net = NetConfig::default();
    assert!(
        sim.run_until(4 * ELECTION, |s| s.all_answered()),
        "a proposal was never answered"
    );
    assert!(sim.settle(4 * ELECTION), "the cluster did not settle");
    assert!(sim.fatal.is_empty());
    assert_durable(&sim, &sim.up());
    // All nodes agree on the whole applied sequence.
    let first = sim.applied(sim.up()[0]);
    for id in sim.up() {
        assert_eq!(sim.applied(id), first, "node {id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_cluster_keeps_every_acknowledged_entry_under_faults(
        seed in any::<u64>(),
        nodes in prop_oneof![Just(3u64), Just(5u64)],
        snapshot_entries in prop_oneof![Just(4u64), Just(20u64), Just(1000u64)],
    ) {
        chaos(seed, nodes, snapshot_entries);
    }
}
