//! End to end on the Docker runtime with artifacts on a real S3 server: pipelines compiled by
//! kfp 2.16.1 in the test run, submitted through the CLI to `gantry dev`.

use gantry_testkit::*;
use serde_json::json;

fn setup(prefix: &str) -> DockerEnv {
    DockerEnv::start(prefix)
}

#[test]
fn linear_pipeline_moves_parameters_and_artifacts_through_s3() {
    let env = setup("linear");
    let (code, run) = env.submit_wait("linear", &["rows=25", "factor=3"]);
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    assert_eq!(run["state"], "SUCCEEDED");
    assert_eq!(run["parameters"], json!({"rows": 25, "factor": 3.0}));
    let make = task(&run, "make-data");
    // an integer output stays a JSON integer
    assert!(make["outputs"]["parameters"]["Output"].is_i64(), "{make:#}");
    assert_eq!(make["outputs"]["parameters"]["Output"], json!(25));
    let data = &make["outputs"]["artifacts"]["data"][0];
    assert_eq!(data["type"], "system.Dataset");
    assert_eq!(data["metadata"]["rows"], json!(25));
    let uri = data["uri"].as_str().unwrap();
    assert!(uri.starts_with("s3://gantry-artifacts/linear/"), "{uri}");
    let scaled_uri = task(&run, "scale")["outputs"]["artifacts"]["scaled"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    if env.s3.root.is_some() {
        let raw = env.s3.read_object(uri).unwrap();
        assert_eq!(String::from_utf8_lossy(&raw).lines().count(), 25);
        let scaled = String::from_utf8(env.s3.read_object(&scaled_uri).unwrap()).unwrap();
        assert_eq!(scaled.lines().nth(2), Some("6.0"));
    }
    assert_eq!(
        task(&run, "scale")["outputs"]["parameters"]["Output"],
        json!(900.0)
    );
    assert_eq!(
        task(&run, "report")["outputs"]["parameters"]["Output"],
        json!("25 rows, total 900.0")
    );
    for t in run["tasks"].as_array().unwrap() {
        assert_eq!(t["attempts"], 1);
        assert_eq!(t["agent"], "dev-agent");
    }
    assert!(containers_of_run(run["run_id"].as_str().unwrap()).is_empty());
}

#[test]
fn container_component_with_output_paths() {
    let env = setup("container-io");
    let file = compile_pipeline("container_io", env.out.path()).unwrap();
    let cli = env.cluster.cli();
    let (code, run) = cli.submit_wait(&file, &["message=gantry"]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let produce = task(&run, "produce");
    assert_eq!(
        produce["outputs"]["parameters"]["greeting"],
        json!("hello gantry")
    );
    let consume = task(&run, "consume");
    assert_eq!(consume["outputs"]["parameters"]["lines"], json!(3));
    let logs = cli.run(&[
        "run",
        "logs",
        run["run_id"].as_str().unwrap(),
        "--task",
        "consume",
    ]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("got: hello gantry"), "{}", logs.stdout);
}

#[test]
fn if_elif_else_runs_exactly_one_branch() {
    let env = setup("conditions");
    let file = compile_pipeline("conditions", env.out.path()).unwrap();
    let cli = env.cluster.cli();
    for (n, expected) in [(50, "big"), (5, "medium"), (1, "small")] {
        let (code, run) = cli.submit_wait(&file, &[&format!("n={n}")]).unwrap();
        assert_eq!(code, 0, "{run:#}");
        let says: Vec<_> = run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            // The announce step says what the chosen branch said: same component, same
            // input, so it is served from that branch's cache entry.
            .filter(|t| {
                t["name"].as_str().unwrap_or("").starts_with("say")
                    && (t["state"] == "SUCCEEDED" || t["state"] == "CACHED")
            })
            .map(|t| t["outputs"]["parameters"]["Output"].clone())
            .collect();
        // one branch plus the announce step
        assert_eq!(
            says,
            vec![json!(expected), json!(expected)],
            "n={n}: {run:#}"
        );
        let skipped = run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "SKIPPED")
            .count();
        assert_eq!(skipped, 2, "two branch DAGs skipped for n={n}");
    }
}

#[test]
fn a_failing_step_fails_the_run_and_skips_its_dependents() {
    let env = setup("failing");
    let (code, run) = env.submit_wait("failing", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["state"], "FAILED");
    assert!(run["error"].as_str().unwrap().contains("boom"), "{run:#}");
    assert_eq!(task(&run, "boom")["state"], "FAILED");
    assert!(
        task(&run, "boom")["error"]
            .as_str()
            .unwrap()
            .contains("exit code"),
        "{run:#}"
    );
    assert_eq!(task(&run, "ok")["state"], "SKIPPED");
    assert_eq!(task(&run, "ok-2")["state"], "SUCCEEDED");
}

#[test]
fn refused_input_exits_2_and_creates_nothing() {
    let env = setup("refused");
    let cli = env.cluster.cli();
    let bad = env.out.path().join("bad.yaml");
    std::fs::write(&bad, "pipelineInfo: [unclosed").unwrap();
    let r = cli.run(&["run", "submit", bad.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("invalid pipeline"), "{}", r.stderr);

    let file = compile_pipeline("linear", env.out.path()).unwrap();
    let r = cli.run(&["run", "submit", file.to_str().unwrap(), "-p", "rows=many"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("rows"), "{}", r.stderr);
    let r = cli.run(&["run", "submit", file.to_str().unwrap(), "-p", "nope=1"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
    let r = cli.run(&["run", "get", "no-such-run"]);
    assert_eq!(r.code, 2);

    // A Kubernetes-only feature (kfp-kubernetes add_ephemeral_volume): refused, the executor
    // and the feature named.
    let ephemeral = compile_pipeline("ephemeral_volume", env.out.path()).unwrap();
    let r = cli.run(&["run", "submit", ephemeral.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("exec-print-env") && r.stderr.contains("genericEphemeralVolume"),
        "{}",
        r.stderr
    );

    let list = cli.run(&["run", "list", "-o", "json"]).json().unwrap();
    assert_eq!(list, json!([]));
}

#[test]
fn empty_dirs_and_shared_memory_are_the_steps_own_scratch_space() {
    let env = setup("empty-dir");
    let (code, run) = env.submit_wait("empty_dir", &[]);
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let mounts = task(&run, "scratch")["outputs"]["parameters"]["mounts"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let line = |path: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .unwrap_or_else(|| panic!("{path} is not mounted: {mounts}"))
    };
    assert!(
        line("/fast").starts_with("tmpfs /fast tmpfs") && line("/fast").contains("size=16384k"),
        "{mounts}"
    );
    assert!(line("/dev/shm").contains("size=262144k"), "{mounts}");
    assert!(!line("/scratch").contains("tmpfs"), "on disk: {mounts}");
    let id = run["run_id"].as_str().unwrap();
    assert!(containers_of_run(id).is_empty());
}

#[test]
fn volumes_the_run_makes_are_shared_by_its_steps_and_removed_when_deleted_or_done() {
    let env = setup("run-volume");
    let claims = env.cluster.data_dir.path().join("agent/.claims");
    let (code, run) = env.submit_wait("run_volume", &[]);
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let id = run["run_id"].as_str().unwrap().to_string();
    let name = task(&run, "createpvc")["outputs"]["parameters"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(name, format!("{id}-scratch"));
    // Both iterations read what the producer wrote on the claim.
    let mut read: Vec<String> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "consume")
        .map(|t| {
            t["outputs"]["parameters"]["text"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect();
    read.sort();
    assert_eq!(read, ["hello-claim 1", "hello-claim 2"], "{run:#}");
    assert_eq!(task(&run, "deletepvc")["state"], "SUCCEEDED");
    // The agent kept the claim here (what is left once its runs' volumes are gone).
    assert!(
        claims.is_dir(),
        "{} is not the agent's claims",
        claims.display()
    );
    eventually(std::time::Duration::from_secs(10), || {
        match claims.join(&id).join(&name).exists() {
            true => Err("the deleted claim's directory is still there"),
            false => Ok(()),
        }
    });

    // The workspace: written by one step, read by the next through the path it returned.
    let file = env.out.path().join("run_volume_workspace.yaml");
    let (code, ws) = env.cluster.cli().submit_wait(&file, &[]).unwrap();
    assert_eq!(code, 0, "{ws:#}\n{}", env.cluster.log());
    assert_eq!(
        task(&ws, "write")["outputs"]["parameters"]["path"],
        json!("/kfp-workspace/f.txt")
    );
    assert_eq!(
        task(&ws, "read")["outputs"]["parameters"]["text"]
            .as_str()
            .map(str::trim),
        Some("in-workspace")
    );
    let ws_id = ws["run_id"].as_str().unwrap().to_string();
    eventually(std::time::Duration::from_secs(10), || {
        match claims.join(&ws_id).exists() {
            true => Err("the finished run's workspace is still there"),
            false => Ok(()),
        }
    });
}

#[test]
fn cancel_stops_the_running_container() {
    let env = setup("cancel");
    let file = compile_pipeline("sleeper", env.out.path()).unwrap();
    let cli = env.cluster.cli();
    let run_id = cli.submit(&file, &["seconds=120"]).unwrap();
    eventually(std::time::Duration::from_secs(60), || {
        if containers_of_run(&run_id).is_empty() {
            Err("no container started")
        } else {
            Ok(())
        }
    });
    let r = cli.run(&["run", "cancel", &run_id, "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let run = cli.wait_finished(&run_id, std::time::Duration::from_secs(60));
    assert_eq!(run["state"], "CANCELED", "{run:#}");
    assert_eq!(task(&run, "nap")["state"], "CANCELED");
    assert!(containers_of_run(&run_id).is_empty());
}

#[test]
fn resource_limits_reach_the_container_and_a_missing_image_is_a_clear_error() {
    let env = setup("limits");
    let file = compile_pipeline("limits", env.out.path()).unwrap();
    let cli = env.cluster.cli();
    let (code, run) = cli.submit_wait(&file, &[]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let out = &task(&run, "limits")["outputs"]["parameters"];
    assert_eq!(out["memory"], json!(256 * 1024 * 1024), "{run:#}");
    assert_eq!(out["cpu"], json!("50000/100000"), "{run:#}");

    let missing = env.out.path().join("missing_image.yaml");
    assert!(
        missing.exists(),
        "limits.py also compiles missing_image.yaml"
    );
    let (code, run) = cli.submit_wait(&missing, &[]).unwrap();
    assert_eq!(code, 1, "{run:#}");
    let err = task(&run, "missing-image")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.contains("gantry/never-built:0.0.1") && err.contains("not present locally"),
        "{err}"
    );
}

#[test]
fn logs_follow_streams_until_the_run_ends() {
    let env = setup("follow");
    let file = compile_pipeline("sleeper", env.out.path()).unwrap();
    let cli = env.cluster.cli();
    let run_id = cli.submit(&file, &["seconds=1"]).unwrap();
    // Started right away, `-f` returns only once the run is over, with every step's lines.
    let logs = cli.run(&["run", "logs", &run_id, "-f"]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    let run = cli.get_run(&run_id).unwrap();
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
    for needle in [
        "[nap#1] start a",
        "[nap#1] end a",
        "[nap-2#1] end a",
        "[nap-3#1] end a",
    ] {
        assert!(
            logs.stdout.contains(needle),
            "{needle:?} missing in:\n{}",
            logs.stdout
        );
    }
    let only = cli.run(&["run", "logs", &run_id, "--task", "nap-2"]);
    assert!(
        only.stdout.lines().all(|l| l.starts_with("[nap-2#1]")),
        "{}",
        only.stdout
    );
}
