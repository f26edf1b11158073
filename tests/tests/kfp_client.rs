//! The real `kfp.Client` (kfp 2.16.1) against a 3-node TLS cluster, through a follower (so
//! every write is sent on to the leader): upload, versions, experiments, runs by id and from
//! a function, paging, terminate, retry, archive, delete, and bad input refused with the field
//! named and nothing created. The calls and checks are in `tests/kfp/client_flow.py`.

use std::process::Command;
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::repo_root;

#[test]
fn kfp_client_drives_a_three_node_cluster_through_a_follower() {
    let mut c = Cluster::start(ClusterOpts::loopback(3)).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    c.cli().wait_for_agents(1).unwrap();
    let follower = c.all_ids().into_iter().find(|id| *id != leader).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(repo_root().join("tests/kfp/client_flow.py"))
        .env(
            "GANTRY_KFP_HOST",
            format!("https://{}", c.address(follower)),
        )
        .env("GANTRY_KFP_TOKEN", c.token().unwrap())
        .env("GANTRY_KFP_CA", c.tls_dir().unwrap().join("ca.pem"))
        .env("GANTRY_KFP_WORKDIR", work.path())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "client_flow.py failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        c.logs_tail()
    );
    c.stop_agent("a1");
}
