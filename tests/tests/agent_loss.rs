//! Host loss: `kill -9` of the agent running a step. The coordinator hears nothing from it for
//! its lease, declares it lost by a committed command, and the step runs again on the other
//! agent; the run succeeds, and the lost attempt is recorded as such.

use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::*;

#[test]
fn a_step_on_a_killed_agent_is_retried_on_another_and_the_run_succeeds() {
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let mut opts = ClusterOpts::new(1, &root);
    opts.env
        .push(("GANTRY_AGENT_LEASE_MS".to_string(), "6000".to_string()));
    let mut c = Cluster::start(opts).expect("coordinator");
    c.wait_leader(&[1], Duration::from_secs(20))
        .expect("leader");
    c.start_agent("left", &[]).unwrap();
    c.start_agent("right", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(2).unwrap();

    let out = tempfile::tempdir().unwrap();
    let file = compile_pipeline("sleeper", out.path()).unwrap();
    let run_id = cli.submit(&file, &["seconds=8"]).unwrap();
    let run = cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "RUNNING"
    });
    let victim = task(&run, "nap")["agent"].as_str().unwrap().to_string();
    let survivor = if victim == "left" { "right" } else { "left" };
    c.kill_agent(&victim);

    let run = cli.wait_finished(&run_id, Duration::from_secs(120));
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", c.logs_tail());
    let nap = task(&run, "nap");
    assert_eq!(nap["attempts"], 2, "{nap:#}");
    assert_eq!(nap["agent"], survivor, "{nap:#}");
    for name in ["nap-2", "nap-3"] {
        assert_eq!(task(&run, name)["agent"], survivor);
        assert_eq!(task(&run, name)["attempts"], 1);
    }
    let list = cli.run(&["agent", "list", "-o", "json"]).json().unwrap();
    let dead = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == victim.as_str())
        .cloned()
        .unwrap();
    assert_eq!(dead["state"], "LOST", "{dead:#}");
    assert_eq!(dead["running_attempts"], 0, "{dead:#}");
}
