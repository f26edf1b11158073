//! A committed run survives `kill -9` of the coordinator: after a restart on the same data
//! directory the run completes, no recorded step result is lost and no finished step runs
//! again.

use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::*;

#[test]
fn kill_9_of_the_coordinator_mid_run_loses_nothing() {
    ensure_images().unwrap();
    let s3 = S3::start().unwrap();
    let mut opts = ClusterOpts::loopback(1);
    opts.bootstrap_one = true;
    opts.artifact_root = Some(s3.artifact_root("restart"));
    opts.env = s3.env();
    let mut c = Cluster::start(opts).unwrap();
    c.start_agent_on("docker", "agent-1", &[], &s3.env())
        .unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let dir = c.dir.path().to_path_buf();
    let file = compile_pipeline("sleeper", &dir).unwrap();
    let run_id = cli.submit(&file, &["seconds=3"]).unwrap();

    // Kill once the first step's result is recorded and the second step is running.
    let before = cli.wait_until(&run_id, Duration::from_secs(120), |run| {
        task(run, "nap")["state"] == "SUCCEEDED" && task(run, "nap-2")["state"] == "RUNNING"
    });
    c.kill9(1);
    std::thread::sleep(Duration::from_millis(500));
    c.start_node(1).unwrap();

    let after = cli.wait_finished(&run_id, Duration::from_secs(120));
    let log = c.log(1);
    assert_eq!(after["state"], "SUCCEEDED", "{after:#}\n{log}");
    // the result recorded before the crash is still there, unchanged
    assert_eq!(
        task(&after, "nap")["outputs"],
        task(&before, "nap")["outputs"]
    );
    assert_eq!(
        task(&after, "nap")["finished_at"],
        task(&before, "nap")["finished_at"]
    );
    for t in after["tasks"].as_array().unwrap() {
        assert_eq!(t["attempts"], 1, "a step ran twice: {t:#}");
        assert_eq!(t["state"], "SUCCEEDED");
    }
    assert_eq!(
        task(&after, "nap-3")["outputs"]["parameters"]["done"],
        serde_json::json!("a")
    );
}
