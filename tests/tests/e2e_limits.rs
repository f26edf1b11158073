//! Time limits end to end on the Docker runtime: `--task-timeout` fails an attempt that runs
//! too long and `--timeout` fails a whole run, and in both cases the container is stopped.

use std::time::Duration;

use gantry_testkit::*;

/// Containers are stopped by the agent once the time-out is committed; give it a moment.
fn wait_no_containers(run_id: &str) {
    eventually(Duration::from_secs(30), || {
        match containers_of_run(run_id) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("containers of {run_id} still there: {left:?}")),
        }
    });
}

#[test]
fn task_and_run_timeouts_fail_and_stop_the_containers() {
    let env = DockerEnv::start("limits");
    let (cluster, out) = (&env.cluster, &env.out);
    let file = compile_pipeline("sleeper", out.path()).unwrap();
    let cli = cluster.cli();

    // The first nap may take 2 s; it sleeps 600.
    let (code, run) = cli
        .submit_wait_with(&file, &["seconds=600"], &["--task-timeout", "nap=2s"])
        .unwrap();
    assert_eq!(code, 1, "{run:#}\n{}", cluster.log());
    let nap = task(&run, "nap");
    assert_eq!(nap["state"], "FAILED", "{run:#}");
    assert_eq!(nap["error"], "timed out after 2s");
    assert_eq!(task(&run, "nap-2")["state"], "SKIPPED");
    wait_no_containers(run["run_id"].as_str().unwrap());

    // The whole run may take 3 s.
    let (code, run) = cli
        .submit_wait_with(&file, &["seconds=600"], &["--timeout", "3s"])
        .unwrap();
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["state"], "FAILED");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or("")
            .contains("timeout of 3s"),
        "{run:#}"
    );
    assert_eq!(task(&run, "nap")["state"], "CANCELED", "{run:#}");
    wait_no_containers(run["run_id"].as_str().unwrap());

    // Limits that cannot apply are refused and create nothing.
    let f = file.to_string_lossy().into_owned();
    for flags in [
        vec!["--task-timeout", "nosuch=1s"],
        vec!["--task-timeout", "nap"],
        vec!["--timeout", "0s"],
    ] {
        let mut args = vec!["run", "submit", f.as_str()];
        args.extend(flags.iter().copied());
        let r = cli.run(&args);
        assert_eq!(r.code, 2, "{flags:?}: {}", r.stderr);
    }
    let listed = cli.run(&["run", "list", "-o", "json"]).json().unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
}
