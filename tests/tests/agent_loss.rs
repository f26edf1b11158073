//! Host loss: `kill -9` of the agent running a step. The coordinator hears nothing from it for
//! its lease, declares it lost by a committed command, and the step runs again on the other
//! agent; the run succeeds, and the lost attempt is recorded as such.

use std::time::Duration;

use gantry_testkit::cluster::Cluster;
use gantry_testkit::*;

#[test]
fn a_step_on_a_killed_agent_is_retried_on_another_and_the_run_succeeds() {
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let mut c = Cluster::single_with_agents(
        &root,
        &[("GANTRY_AGENT_LEASE_MS", "6000")],
        &["left", "right"],
    )
    .expect("coordinator and agents");
    let cli = c.cli();
    let out = tempfile::tempdir().unwrap();
    let file = compile_pipeline("sleeper", out.path()).unwrap();
    let (run_id, victim) = c
        .kill_the_agent_running(&file, &["seconds=8"], "nap")
        .unwrap();
    let survivor = if victim == "left" { "right" } else { "left" };

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
