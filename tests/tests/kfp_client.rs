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
    let mut opts = ClusterOpts::loopback(3);
    // A short Idempotency-Key window, for the flow to see a key expire.
    opts.env = vec![("GANTRY_IDEMPOTENCY_WINDOW".into(), "4s".into())];
    let mut c = Cluster::start(opts).unwrap();
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

/// The same catalog from the `gantry` CLI: pipelines, versions, experiments, schedules, and a
/// run submitted into an experiment, as kfp.Client's API then shows them.
#[test]
fn the_cli_manages_pipelines_experiments_and_schedules() {
    let mut c = Cluster::start(ClusterOpts::loopback(3)).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let file = gantry_testkit::compile_pipeline("linear", c.dir.path()).unwrap();
    let file = file.to_str().unwrap();
    let ok = |args: &[&str]| {
        let r = cli.run(args);
        assert_eq!(r.code, 0, "gantry {args:?}: {}\n{}", r.stdout, r.stderr);
        r
    };

    ok(&["pipeline", "upload", file, "--name", "linear"]);
    ok(&["pipeline", "upload", file, "--to", "linear", "--name", "v2"]);
    let again = cli.run(&["pipeline", "upload", file, "--name", "linear"]);
    assert_eq!(
        again.code, 2,
        "a taken name is refused input: {}",
        again.stderr
    );
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let pipelines = ok(&["pipeline", "list", "-o", "json"]).json().unwrap();
    assert_eq!(pipelines.as_array().unwrap().len(), 1, "{pipelines}");
    assert_eq!(pipelines[0]["name"], "linear");

    ok(&["experiment", "create", "nightly"]);
    let exps = ok(&["experiment", "list", "-o", "json"]).json().unwrap();
    let nightly = exps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["display_name"] == "nightly")
        .unwrap()["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A run into the experiment by name, and one into an experiment made on the way.
    let r = ok(&[
        "run",
        "submit",
        file,
        "--experiment",
        "nightly",
        "-p",
        "rows=2",
        "--wait",
        "-o",
        "json",
    ]);
    let run = r.json().unwrap();
    let run_id = run["run_id"].as_str().unwrap();
    ok(&[
        "run",
        "submit",
        file,
        "--experiment",
        "adhoc",
        "-p",
        "rows=1",
    ]);
    let exps = ok(&["experiment", "list", "-o", "json"]).json().unwrap();
    assert!(
        exps.as_array()
            .unwrap()
            .iter()
            .any(|e| e["display_name"] == "adhoc"),
        "{exps}"
    );

    let s = ok(&[
        "schedule",
        "create",
        "hourly",
        "--pipeline",
        "linear",
        "--cron",
        "0 0 * * * *",
        "--experiment",
        "nightly",
        "-p",
        "rows=3",
        "--disabled",
        "-o",
        "json",
    ])
    .json()
    .unwrap();
    let id = s["recurring_run_id"].as_str().unwrap().to_string();
    assert_eq!(s["status"], "DISABLED", "{s}");
    assert_eq!(s["experiment_id"], nightly.as_str());
    assert!(
        s["gantry_cron_understood"]
            .as_str()
            .unwrap()
            .starts_with("second 0, minute 0, hour every"),
        "{s}"
    );
    ok(&["schedule", "enable", &id]);
    let listed = ok(&["schedule", "list", "-o", "json"]).json().unwrap();
    assert_eq!(listed[0]["status"], "ENABLED", "{listed}");
    ok(&["schedule", "disable", &id]);
    let bad = cli.run(&[
        "schedule",
        "create",
        "bad",
        "--pipeline",
        "linear",
        "--cron",
        "0 0 25 * * *",
    ]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("hour"), "{}", bad.stderr);
    let unknown = cli.run(&[
        "schedule",
        "create",
        "x",
        "--pipeline",
        "nope",
        "--every",
        "1h",
    ]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    ok(&["schedule", "delete", &id]);
    let listed = ok(&["schedule", "list", "-o", "json"]).json().unwrap();
    assert_eq!(listed, serde_json::json!([]));

    // The run as the KFP API shows it: in the experiment.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let (_, got) = rt
        .block_on(gantry_testkit::kfp_http::http_call(
            c.channel(1).unwrap(),
            "GET",
            &format!("/apis/v2beta1/runs/{run_id}"),
            "application/json",
            Vec::new(),
        ))
        .unwrap();
    assert_eq!(got["experiment_id"], nightly.as_str(), "{got}");
    assert_eq!(got["state"], "SUCCEEDED");
    c.stop_agent("a1");
}

/// KFP's own command-line tool, `kfp`, against a follower of a 3-node plain-HTTP cluster (the
/// tool has no option for a private CA): it lists, creates and reads what kfp.Client does.
#[test]
fn the_kfp_command_line_tool_works_against_a_cluster() {
    let mut opts = ClusterOpts::loopback(3);
    opts.tls = false;
    let c = Cluster::start(opts).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    let follower = c.all_ids().into_iter().find(|id| *id != leader).unwrap();
    let token = c.token().expect("the harness's admin token").to_string();
    let endpoint = format!("http://{}", c.address(follower));
    let kfp = |args: &[&str]| {
        let out = Command::new("kfp")
            .args(["--endpoint", &endpoint, "--existing-token", &token])
            .args(args)
            .output()
            .expect("the kfp command (pip install kfp==2.16.1)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kfp {args:?}: {text}");
        text
    };
    let created = kfp(&["experiment", "create", "from-kfp-cli"]);
    assert!(created.contains("from-kfp-cli"), "{created}");
    let listed = kfp(&["--output", "json", "experiment", "list"]);
    assert!(listed.contains("from-kfp-cli"), "{listed}");
    let runs = kfp(&["run", "list"]);
    assert!(!runs.contains("Error"), "{runs}");
    let work = tempfile::tempdir().unwrap();
    let file = gantry_testkit::compile_pipeline("linear", work.path()).unwrap();
    let up = kfp(&[
        "pipeline",
        "create",
        "-p",
        "linear-from-cli",
        file.to_str().unwrap(),
    ]);
    assert!(up.contains("linear-from-cli"), "{up}");
    let pipelines = kfp(&["pipeline", "list"]);
    assert!(pipelines.contains("linear-from-cli"), "{pipelines}");
}
