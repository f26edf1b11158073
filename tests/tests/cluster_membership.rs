//! Membership on real processes: a bootstrapped node grows to three with `gantry cluster join`
//! (learner first, snapshot catch-up, then voter) and shrinks with `gantry cluster leave`.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::{compile_source_with, poll_every, S3};
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
/// its new store id until it is removed and joined again, also a peer that never heard from it
/// before: followers talk to the leader only, so the survivor here knows the wiped node's store
/// from the committed record alone.
#[test]
fn a_wiped_node_is_refused_until_removed_and_joined_again() {
    let s3 = S3::start().unwrap();
    let mut c = Cluster::start(ClusterOpts::new(3, &s3.artifact_root("wiped"))).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(10))
        .unwrap();
    let followers: Vec<u64> = c.all_ids().into_iter().filter(|id| *id != leader).collect();
    let (survivor, wiped) = (followers[0], followers[1]);
    let dir = c.dir.path().to_path_buf();
    let out = dir.join("p");
    std::fs::create_dir_all(&out).unwrap();
    let one = compile_source_with(Path::new("tests/pipelines/chain.py"), &out, &["1"]).unwrap();
    let cli = c.cli();
    for _ in 0..3 {
        cli.submit(&one, &["marker=/dev/null"]).unwrap();
    }
    c.wait_converged(Duration::from_secs(20)).unwrap();
    let old_store = c.store_id(wiped).unwrap();
    // Every member's store is committed, and the survivor has applied the records.
    let recorded = poll_every(Duration::from_secs(20), Duration::from_millis(100), || {
        let v = c
            .cli_for(&[survivor])
            .run(&["cluster", "status", "-o", "json"]);
        let v = v.json().map_err(|e| e.to_string())?;
        let stores: Vec<String> = v["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| m["store"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        if stores.len() == 3 && stores.iter().all(|s| s.len() == 16) {
            Ok(stores)
        } else {
            Err(format!("stores as node {survivor} sees them: {stores:?}"))
        }
    })
    .unwrap();
    assert!(
        recorded.contains(&format!("{old_store:016x}")),
        "{recorded:?} lacks node {wiped}'s store {old_store:016x}"
    );

    // The wiped node loses its disk while the leader is down: only the survivor holds the runs.
    c.kill9(leader);
    c.kill9(wiped);
    let data = c.data_dir(wiped);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    c.start_node(wiped).unwrap();
    assert_ne!(c.store_id(wiped).unwrap(), old_store);

    // The survivor and the empty node are two of three, but the empty node's votes do not count.
    let elected = c.wait_leader(&[survivor, wiped], Duration::from_secs(10));
    assert!(
        elected.is_err(),
        "node {survivor} and the wiped node {wiped} elected a leader: {elected:?}\n\
         --- node {survivor}:\n{}\n--- node {wiped}:\n{}",
        c.log(survivor),
        c.log(wiped)
    );
    let refused = "came back with another data directory";
    assert!(
        c.log_count(survivor, &["raft traffic refused", refused]) > 0,
        "node {survivor} did not log the refusal:\n{}",
        c.log(survivor)
    );

    // With the old leader back the cluster serves again; the wiped node is still refused.
    c.start_node(leader).unwrap();
    let pair = [leader, survivor];
    let (now, _) = c.wait_leader(&pair, Duration::from_secs(10)).unwrap();
    let both = c.cli_for(&pair);
    both.submit(&one, &["marker=/dev/null"]).unwrap();
    // The wiped node answers the leader's heartbeats; the leader refuses every answer.
    let before = c.log_count(now, &["raft traffic refused", refused]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.log_count(now, &["raft traffic refused", refused]) > before,
        "the leader, node {now}, accepts the wiped node {wiped}"
    );

    // Removed, wiped once more and joined again, it catches up as a new member.
    let left = both.run(&["cluster", "leave", &wiped.to_string(), "-o", "json"]);
    assert_eq!(left.code, 0, "{}", left.stderr);
    c.kill9(wiped);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    c.start_node_waiting(wiped).unwrap();
    let joined = both.run(&["cluster", "join", &c.address(wiped), "-o", "json"]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    assert_eq!(members(&joined.json().unwrap()).len(), 3);
    c.wait_converged(Duration::from_secs(30)).unwrap();
    let s = c.status(wiped).unwrap();
    assert_eq!(s.runs, 4, "{s:?}");
    // And it votes again: without the survivor, the other two elect a leader.
    c.kill9(survivor);
    c.wait_leader(&[leader, wiped], Duration::from_secs(10))
        .unwrap();
}

#[test]
fn nodes_joined_before_any_compaction_know_the_voters_and_can_elect_a_leader() {
    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::new(3, &s3.artifact_root("membership-early"));
    opts.bootstrap_one = true;
    let mut c = Cluster::start(opts).unwrap();
    c.wait_leader(&[1], Duration::from_secs(10)).unwrap();
    let first = c.cli_for(&[1]);
    // Joined at once: the leader has compacted nothing, so the joiners learn the first
    // configuration from the snapshot at index 1 that every cluster starts from.
    for id in [2u64, 3] {
        let r = first.run(&["cluster", "join", &c.address(id), "-o", "json"]);
        assert_eq!(r.code, 0, "join {id}: {}", r.stderr);
    }
    for id in [2u64, 3] {
        poll_every(Duration::from_secs(20), Duration::from_millis(100), || {
            let s = c.status(id).ok_or(())?;
            let voters = s
                .members
                .iter()
                .filter(|m| m.role == "LEADER" || m.role == "FOLLOWER")
                .count();
            (voters == 3).then_some(()).ok_or(())
        })
        .unwrap_or_else(|()| panic!("node {id} does not see three voters: {}", c.log(id)));
        assert!(
            !c.log(id).contains("membership change refused"),
            "{}",
            c.log(id)
        );
    }
    // Nodes 2 and 3 count each other: without node 1 they elect a leader.
    c.kill9(1);
    let (leader, _) = c
        .wait_leader(&[2, 3], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", c.log(2), c.log(3)));
    assert!([2, 3].contains(&leader));
    // Leadership handed over on request, and refused to a node that is no voter.
    let other = if leader == 2 { 3 } else { 2 };
    let cli = c.cli_for(&[2, 3]);
    let moved = cli.run(&[
        "cluster",
        "transfer-leader",
        "--to",
        &other.to_string(),
        "-o",
        "json",
    ]);
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    assert_eq!(moved.json().unwrap()["leader_id"], other);
    let nobody = cli.run(&["cluster", "transfer-leader", "--to", "9"]);
    assert_ne!(nobody.code, 0);
    assert!(
        nobody.stderr.contains("node 9 is not a voter"),
        "{}",
        nobody.stderr
    );
}
