//! Membership on real processes: a bootstrapped node grows to three with `gantry cluster join`
//! (learner first, snapshot catch-up, then voter) and shrinks with `gantry cluster leave`.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::{compile_source_with, S3};
use serde_json::Value;

fn members(v: &Value) -> Vec<(u64, String)> {
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["role"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nodes_join_as_learners_then_voters_and_leave_again() {
    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::new(3, &s3.artifact_root("membership"));
    opts.bootstrap_one = true;
    opts.snapshot_entries = 10;
    let mut c = Cluster::start(opts).unwrap();
    c.wait_leader(&[1], Duration::from_secs(10)).unwrap();
    // Nodes 2 and 3 wait, members of nothing.
    for id in [2, 3] {
        let s = c.status(id).unwrap();
        assert!(s.members.is_empty(), "{s:?}");
    }
    let dir = c.dir.path().to_path_buf();
    let out = dir.join("p");
    std::fs::create_dir_all(&out).unwrap();
    let one = compile_source_with(Path::new("tests/pipelines/chain.py"), &out, &["1"]).unwrap();
    let first = c.cli_for(&[1]);
    // Enough entries that node 1 snapshots and compacts: joiners catch up by snapshot.
    for _ in 0..25 {
        first.submit(&one, &["marker=/dev/null"]).unwrap();
    }

    let nobody = first.run(&["cluster", "join", "127.0.0.1:9", "-o", "json"]);
    assert_ne!(nobody.code, 0);
    assert!(nobody.stderr.contains("cannot reach"), "{}", nobody.stderr);

    for id in [2u64, 3] {
        let r = first.run(&["cluster", "join", &c.address(id), "-o", "json"]);
        assert_eq!(r.code, 0, "join {id}: {}", r.stderr);
        let m = members(&r.json().unwrap());
        assert!(
            m.contains(&(id, "FOLLOWER".to_string())),
            "{id} is not a voter: {m:?}"
        );
    }
    // Joining again changes nothing.
    let again = first.run(&["cluster", "join", &c.address(2), "-o", "json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(members(&again.json().unwrap()).len(), 3);

    c.wait_converged(Duration::from_secs(30)).unwrap();
    for id in [2u64, 3] {
        let s = c.status(id).unwrap();
        assert_eq!(s.runs, 25, "node {id}: {s:?}");
        assert_eq!(s.members.len(), 3, "node {id}: {s:?}");
        assert!(
            c.log(id).contains("installed a snapshot"),
            "node {id} did not catch up by snapshot"
        );
    }

    // Nodes 2 and 3 are voters: without node 1 they still elect a leader and commit.
    c.kill9(1);
    c.wait_leader(&[2, 3], Duration::from_secs(10)).unwrap();
    c.cli_for(&[2, 3])
        .submit(&one, &["marker=/dev/null"])
        .unwrap();
    c.start_node(1).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();

    // The leader leaves: it hands leadership over first.
    let left = c
        .cli()
        .run(&["cluster", "leave", &leader.to_string(), "-o", "json"]);
    assert_eq!(left.code, 0, "{}", left.stderr);
    let m = members(&left.json().unwrap());
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m.iter().all(|(id, _)| *id != leader), "{m:?}");
    let rest: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != leader).collect();
    let (new, _) = c.wait_leader(&rest, Duration::from_secs(10)).unwrap();
    assert_ne!(new, leader);
    c.cli_for(&rest)
        .submit(&one, &["marker=/dev/null"])
        .unwrap();

    let unknown = c.cli_for(&rest).run(&["cluster", "leave", "42"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("not a member"),
        "{}",
        unknown.stderr
    );
}

/// A node whose data directory was lost forgot its votes and the entries it acknowledged. If
/// it came back under its old id, it and one other node could form a quorum that lacks every
/// entry the lost copy held, and it could vote a second time in a term. Its peers refuse it by
/// its new store id until it is removed and joined again.
#[test]
fn a_wiped_node_is_refused_until_removed_and_joined_again() {
    let s3 = S3::start().unwrap();
    let mut c = Cluster::start(ClusterOpts::new(3, &s3.artifact_root("wiped"))).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();
    let dir = c.dir.path().to_path_buf();
    let out = dir.join("p");
    std::fs::create_dir_all(&out).unwrap();
    let one = compile_source_with(Path::new("tests/pipelines/chain.py"), &out, &["1"]).unwrap();
    let cli = c.cli();
    for _ in 0..3 {
        cli.submit(&one, &["marker=/dev/null"]).unwrap();
    }
    c.wait_converged(Duration::from_secs(20)).unwrap();
    let old_store = c.store_id(3).unwrap();

    // Node 3 loses its disk while node 2 is down: only node 1 holds the runs.
    c.kill9(2);
    c.kill9(3);
    let data3 = c.data_dir(3);
    std::fs::remove_dir_all(&data3).unwrap();
    std::fs::create_dir_all(&data3).unwrap();
    // Node 1 steps down (check quorum) while both peers are away.
    std::thread::sleep(Duration::from_secs(3));
    c.start_node(3).unwrap();
    assert_ne!(c.store_id(3).unwrap(), old_store);

    // Node 1 and the empty node 3 are two of three, but node 3's votes do not count.
    let leader = c.wait_leader(&[1, 3], Duration::from_secs(10));
    assert!(
        leader.is_err(),
        "node 1 and the wiped node 3 elected a leader: {leader:?}"
    );
    let refused = "came back with another data directory";
    assert!(
        c.log_count(1, &["raft traffic refused", refused]) > 0,
        "node 1 did not log the refusal:\n{}",
        c.log(1)
    );

    // With node 2 back the cluster serves again; node 3 is still refused.
    c.start_node(2).unwrap();
    let (leader, _) = c.wait_leader(&[1, 2], Duration::from_secs(10)).unwrap();
    let both = c.cli_for(&[1, 2]);
    both.submit(&one, &["marker=/dev/null"]).unwrap();
    // Node 3 answers the leader's heartbeats; the leader refuses every answer.
    let before = c.log_count(leader, &["raft traffic refused", refused]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.log_count(leader, &["raft traffic refused", refused]) > before,
        "the leader, node {leader}, accepts the wiped node 3"
    );

    // Removed, wiped once more and joined again, it catches up as a new member.
    let left = both.run(&["cluster", "leave", "3", "-o", "json"]);
    assert_eq!(left.code, 0, "{}", left.stderr);
    c.kill9(3);
    std::fs::remove_dir_all(&data3).unwrap();
    std::fs::create_dir_all(&data3).unwrap();
    c.start_node_waiting(3).unwrap();
    let joined = both.run(&["cluster", "join", &c.address(3), "-o", "json"]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    assert_eq!(members(&joined.json().unwrap()).len(), 3);
    c.wait_converged(Duration::from_secs(30)).unwrap();
    let s = c.status(3).unwrap();
    assert_eq!(s.runs, 4, "{s:?}");
    // And it votes again: without node 1, nodes 2 and 3 elect a leader.
    c.kill9(1);
    c.wait_leader(&[2, 3], Duration::from_secs(10)).unwrap();
}
