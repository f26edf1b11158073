//! Placement through the whole stack on the Docker runtime: a step no agent could ever run
//! fails at once with the reason; a drained agent finishes its running step, takes nothing new
//! (the next step waits, saying why) and goes on once undrained.

use std::time::Duration;

use gantry_testkit::*;

#[test]
fn a_step_no_agent_could_ever_run_fails_at_once_with_the_reason() {
    let env = DockerEnv::start("placement-gpu");
    let file = compile_pipeline("placement", env.out.path()).unwrap();
    let cli = env.cluster.cli();
    let (code, run) = cli.submit_wait(&file, &[]).unwrap();
    assert_eq!(code, 1, "{run:#}\n{}", env.cluster.log());
    let t = task(&run, "train");
    assert_eq!(t["state"], "FAILED", "{run:#}");
    assert_eq!(t["attempts"], 0, "nothing ran: {t:#}");
    let err = t["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("unschedulable: no connected agent could ever run it: dev-agent: has 0 of the 2 NVIDIA_H100_80GB GPU(s) needed"),
        "{err}"
    );
    assert!(containers_of_run(run["run_id"].as_str().unwrap()).is_empty());
}

fn state_of(cli: &Cli, run_id: &str, name: &str) -> (String, String) {
    let run = cli.get_run(run_id).unwrap();
    let t = run["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name).cloned())
        .unwrap_or_default();
    (
        t["state"].as_str().unwrap_or("").to_string(),
        t["waiting_reason"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn a_drained_agent_finishes_its_step_takes_nothing_new_and_resumes_when_undrained() {
    let env = DockerEnv::start("placement-drain");
    compile_pipeline("placement", env.out.path()).unwrap();
    let naps = env.out.path().join("naps.yaml");
    let cli = env.cluster.cli();
    let run_id = cli.submit(&naps, &["seconds=3"]).unwrap();
    cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "RUNNING"
    });

    let drained = cli.run(&["agent", "drain", "dev-agent", "-o", "json"]);
    assert_eq!(drained.code, 0, "{}", drained.stderr);
    let a = drained.json().unwrap();
    assert_eq!(a["draining"], true, "{a:#}");
    assert_eq!(a["running_attempts"], 1, "{a:#}");

    // The running nap finishes; the next one is not placed while the agent is drained.
    let run = cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "SUCCEEDED"
    });
    assert_eq!(run["state"], "RUNNING");
    let mut reason = String::new();
    always(Duration::from_secs(3), || {
        let (state, why) = state_of(&cli, &run_id, "nap-2");
        if !why.is_empty() {
            reason = why;
        }
        match state.as_str() {
            "READY" => Ok(()),
            _ => Err(format!("placed on a drained agent: {state}")),
        }
    });
    assert_eq!(reason, "waiting for capacity: dev-agent: drained");
    let list = cli.run(&["agent", "list", "-o", "json"]).json().unwrap();
    assert_eq!(list[0]["draining"], true, "{list:#}");
    assert_eq!(list[0]["running_attempts"], 0, "{list:#}");

    let undrained = cli.run(&["agent", "undrain", "dev-agent"]);
    assert_eq!(undrained.code, 0, "{}", undrained.stderr);
    assert!(
        undrained.stdout.contains("undrained"),
        "{}",
        undrained.stdout
    );
    let run = cli.wait_finished(&run_id, Duration::from_secs(60));
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");

    // Draining twice is harmless; an unknown agent is a clear error.
    for _ in 0..2 {
        assert_eq!(cli.run(&["agent", "drain", "dev-agent"]).code, 0);
    }
    assert_eq!(cli.run(&["agent", "undrain", "dev-agent"]).code, 0);
    let unknown = cli.run(&["agent", "drain", "no-such-agent"]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown
            .stderr
            .contains("agent no-such-agent is not registered"),
        "{}",
        unknown.stderr
    );
}
