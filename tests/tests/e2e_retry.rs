//! Retries. On the Docker runtime, a task's retry policy gives a step that fails on its first
//! attempt a second one that succeeds, and a policy that runs out fails the run. On the process
//! runtime (the steps' outcomes depend on files on the agent's host) the same, and `gantry run
//! retry` runs a failed run again from where it failed, keeping what succeeded.

use gantry_testkit::*;

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn retry_policy_and_run_retry_rerun_only_what_failed() {
    let out = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let cluster = DevCluster::start(Runtime::Process, Some(&root), &[]).expect("gantry dev");
    let cli = cluster.cli();
    let file = compile_pipeline("flaky", out.path()).unwrap();
    let host = tempfile::tempdir().unwrap();
    let (marker, gate, flag, after) = (
        host.path().join("marker"),
        host.path().join("gate"),
        host.path().join("flag"),
        host.path().join("after"),
    );
    let params = [
        format!("marker={}", marker.display()),
        format!("gate={}", gate.display()),
        format!("flag={}", flag.display()),
        format!("after={}", after.display()),
    ];
    let params: Vec<&str> = params.iter().map(String::as_str).collect();

    let (code, run) = cli.submit_wait(&file, &params).unwrap();
    assert_eq!(code, 1, "{run:#}\n{}", cluster.log());
    // The retry policy: the first attempt failed, the second succeeded.
    let second = task(&run, "second-try");
    assert_eq!(second["state"], "SUCCEEDED", "{run:#}");
    assert_eq!(second["attempts"], 2, "{second:#}");
    // No gate: that task failed (no retry policy), and the last one never ran.
    assert_eq!(task(&run, "gated")["state"], "FAILED");
    assert_eq!(task(&run, "last")["state"], "SKIPPED");
    assert_eq!(lines(&marker), 1);
    assert_eq!(lines(&after), 0);

    // Open the gate and retry the run.
    let run_id = run["run_id"].as_str().unwrap().to_string();
    std::fs::write(&gate, "open").unwrap();
    let (code, retried) = {
        let r = cli.run(&["run", "retry", &run_id, "--wait", "-o", "json"]);
        (r.code, r.json().unwrap())
    };
    assert_eq!(code, 0, "{retried:#}\n{}", cluster.log());
    assert_eq!(retried["run_id"], run_id.as_str(), "the same run goes on");
    assert_eq!(retried["state"], "SUCCEEDED");
    assert_eq!(task(&retried, "gated")["state"], "SUCCEEDED");
    assert_eq!(task(&retried, "last")["state"], "SUCCEEDED");
    // What had succeeded was kept, not run again.
    assert_eq!(lines(&marker), 1, "the first step ran again");
    assert_eq!(task(&retried, "second-try")["attempts"], 2);
    assert_eq!(lines(&after), 1);

    // Retrying a run that has not failed, or an unknown one, is refused.
    let again = cli.run(&["run", "retry", &run_id]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("SUCCEEDED"), "{}", again.stderr);
    let unknown = cli.run(&["run", "retry", "no-such-run"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
}

#[test]
fn retry_policy_under_docker_gives_a_failed_step_another_attempt() {
    let env = DockerEnv::start("retry");
    let file = compile_pipeline("retry_attempt", env.out.path()).unwrap();
    let cli = env.cluster.cli();

    let (code, run) = cli.submit_wait(&file, &["fail_until=2"]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let t = task(&run, "flaky");
    assert_eq!(t["state"], "SUCCEEDED", "{run:#}");
    assert_eq!(t["attempts"], 2, "{t:#}");
    let run_id = run["run_id"].as_str().unwrap();
    let logs = cli.run(&["run", "logs", run_id, "--task", "flaky"]);
    assert!(logs.stdout.contains("attempt 1"), "{}", logs.stdout);
    assert!(logs.stdout.contains("attempt 2"), "{}", logs.stdout);
    assert!(containers_of_run(run_id).is_empty());

    // Two retries: attempts 1 to 3 fail, the fourth is never made.
    let (code, run) = cli.submit_wait(&file, &["fail_until=9"]).unwrap();
    assert_eq!(code, 1, "{run:#}");
    let t = task(&run, "flaky");
    assert_eq!(t["state"], "FAILED", "{run:#}");
    assert_eq!(t["attempts"], 3, "{t:#}");
    assert!(
        t["error"].as_str().unwrap_or("").contains("exit code 4"),
        "{t:#}"
    );
}
