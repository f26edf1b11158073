//! Agent restart mid-step under Docker: the step's container outlives the agent process, and
//! the agent started again (same id, same work directory) reattaches to it by its labels
//! instead of starting the step anew. Once after a SIGTERM (a service restart), once after a
//! `kill -9` (a crash). Docker's own event log proves each step's container was created once.

use std::process::Command;
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::*;

/// Removes every container of this test's agent, however the test ends.
struct AgentContainers(String);

impl Drop for AgentContainers {
    fn drop(&mut self) {
        for id in docker_lines(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=gantry.agent={}", self.0),
        ]) {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The id of the running container of `run_id`'s task `task_id`, once it runs.
fn running_container(run_id: &str, task_id: &str) -> String {
    eventually(Duration::from_secs(60), || {
        let ids = docker_lines(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=gantry.run={run_id}"),
            "--filter",
            &format!("label=gantry.task={task_id}"),
            "--filter",
            "status=running",
        ]);
        match ids.as_slice() {
            [id] => Ok(id.clone()),
            _ => Err(format!("no running container for {task_id}: {ids:?}")),
        }
    })
}

fn is_running(container: &str) -> bool {
    docker_lines(&["inspect", "-f", "{{.State.Running}}", container]) == ["true"]
}

#[test]
fn a_restarted_agent_reattaches_to_its_running_steps_and_runs_none_twice() {
    ensure_images().expect("test images");
    let agent = format!("restart-{}", std::process::id());
    let _containers = AgentContainers(agent.clone());
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let mut opts = ClusterOpts::new(1, &root);
    // Restarts take well under this; the lease must not decide the outcome.
    opts.env
        .push(("GANTRY_AGENT_LEASE_MS".to_string(), "60000".to_string()));
    let mut c = Cluster::start(opts).expect("coordinator");
    c.wait_leader(&[1], Duration::from_secs(20))
        .expect("leader");
    c.start_agent_on("docker", &agent, &[], &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let since = docker_lines(&["system", "info", "-f", "{{.SystemTime}}"])
        .pop()
        .expect("the engine's clock");

    let out = tempfile::tempdir().unwrap();
    let file = compile_pipeline("sleeper", out.path()).unwrap();
    let run_id = cli.submit(&file, &["seconds=6"]).unwrap();

    // A service restart: SIGTERM leaves the step running.
    let first = running_container(&run_id, "nap");
    c.stop_agent(&agent);
    assert!(is_running(&first), "SIGTERM stopped the step's container");
    c.start_agent_on("docker", &agent, &[], &[]).unwrap();

    // A crash.
    let second = running_container(&run_id, "nap-2");
    c.kill_agent(&agent);
    assert!(is_running(&second), "the container died with its agent");
    c.start_agent_on("docker", &agent, &[], &[]).unwrap();

    let run = cli.wait_finished(&run_id, Duration::from_secs(120));
    let log = c.agent_log(&agent);
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{log}");
    for name in ["nap", "nap-2", "nap-3"] {
        let t = task(&run, name);
        assert_eq!(t["attempts"], 1, "{t:#}");
        assert_eq!(t["outputs"]["parameters"]["done"], "a", "{t:#}");
    }

    // Each nap's container was created once: a re-sent assignment run again would have
    // created a second container under the same name.
    let until = docker_lines(&["system", "info", "-f", "{{.SystemTime}}"])
        .pop()
        .expect("the engine's clock");
    let created = docker_lines(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        &format!("label=gantry.run={run_id}"),
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    let mut created_sorted = created.clone();
    created_sorted.sort();
    assert_eq!(
        created_sorted,
        [
            format!("gantry-{run_id}-nap-1"),
            format!("gantry-{run_id}-nap-2-1"),
            format!("gantry-{run_id}-nap-3-1"),
        ],
        "containers created: {created:?}\n{log}"
    );
    assert_eq!(
        log.matches("reattaching to a running step").count(),
        2,
        "{log}"
    );
    assert!(
        containers_of_run(&run_id).is_empty(),
        "containers left behind"
    );
}
