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
