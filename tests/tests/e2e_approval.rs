//! Approval gates on a 3-node cluster: a step annotated `gantry.dev/approval: required`
//! (kfp-kubernetes `add_pod_annotation`, plain kfp code) waits as WAITING_APPROVAL, unplaced,
//! until `gantry run approve`; `gantry run reject --reason` fails it and the run with the
//! reason; a gate with `gantry.dev/approval-timeout` fails on its own when nobody decides.
//! Who decided is recorded.

use std::path::Path;
use std::time::Duration;

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::{compile_source_with, task};
use serde_json::Value;

fn compile(dir: &Path, timeout: Option<&str>) -> String {
    let out = dir.join(timeout.map_or("plain".to_string(), |t| format!("t{t}")));
    std::fs::create_dir_all(&out).unwrap();
    let args: Vec<&str> = timeout.into_iter().collect();
    compile_source_with(Path::new("tests/pipelines/approval.py"), &out, &args)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_gated_step_waits_for_approval_and_a_rejection_or_timeout_fails_the_run() {
    let mut c = Cluster::start(ClusterOpts::loopback(3)).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let plain = compile(c.dir.path(), None);
    let timed = compile(c.dir.path(), Some("3s"));
    // `deploy` exists once `train` is done.
    let waiting = |r: &Value| {
        r["tasks"].as_array().is_some_and(|ts| {
            ts.iter()
                .any(|t| t["name"] == "deploy" && t["state"] == "WAITING_APPROVAL")
        })
    };

    // Approved: it goes on, and the approver is recorded.
    let a = cli.submit(Path::new(&plain), &[]).unwrap();
    let run = cli.wait_until(&a, Duration::from_secs(120), waiting);
    assert_eq!(task(&run, "train")["state"], "SUCCEEDED", "{run:#}");
    assert!(
        task(&run, "deploy")["waiting_reason"]
            .as_str()
            .unwrap_or("")
            .contains("gantry run approve"),
        "{run:#}"
    );
    // Held, not placed, however long it waits.
    std::thread::sleep(Duration::from_secs(2));
    let run = cli.get_run(&a).unwrap();
    assert!(waiting(&run), "{run:#}");
    assert_eq!(task(&run, "deploy")["attempts"], 0, "{run:#}");
    let ok = cli.run(&["run", "approve", &a, "deploy"]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    let run = cli.wait_until(&a, Duration::from_secs(120), |r| {
        r["state"] == "SUCCEEDED" || r["state"] == "FAILED"
    });
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}");
    assert_eq!(
        task(&run, "deploy")["outputs"]["parameters"]["Output"],
        "deployed model-1"
    );
    let approval = task(&run, "deploy")["approval"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        approval.starts_with("approved by token bootstrap-admin"),
        "{approval}"
    );
    // A second decision is refused.
    let late = cli.run(&["run", "reject", &a, "deploy", "--reason", "too late"]);
    assert_eq!(late.code, 2, "{}", late.stderr);
    assert!(
        late.stderr.contains("not waiting for approval"),
        "{}",
        late.stderr
    );
    // A task without a gate is refused by name.
    let no_gate = cli.run(&["run", "approve", &a, "train"]);
    assert_eq!(no_gate.code, 2, "{}", no_gate.stderr);
    assert!(
        no_gate.stderr.contains("no approval gate"),
        "{}",
        no_gate.stderr
    );

    // Rejected: a reason is needed; the run fails with it.
    let b = cli.submit(Path::new(&plain), &[]).unwrap();
    cli.wait_until(&b, Duration::from_secs(120), waiting);
    let bare = cli.run(&["run", "reject", &b, "deploy", "--reason", " "]);
    assert_eq!(bare.code, 2, "{}", bare.stderr);
    let no = cli.run(&[
        "run",
        "reject",
        &b,
        "deploy",
        "--reason",
        "accuracy too low",
    ]);
    assert_eq!(no.code, 0, "{}\n{}", no.stdout, no.stderr);
    let run = cli.wait_until(&b, Duration::from_secs(60), |r| r["state"] == "FAILED");
    let error = run["error"].as_str().unwrap_or("");
    assert!(
        error.contains("rejected by token bootstrap-admin") && error.contains("accuracy too low"),
        "{run:#}"
    );
    assert_eq!(task(&run, "deploy")["attempts"], 0, "it never ran: {run:#}");

    // Nobody decides within the gate's 3 s: it fails by itself.
    let t = cli.submit(Path::new(&timed), &[]).unwrap();
    let run = cli.wait_until(&t, Duration::from_secs(120), |r| {
        r["state"] == "FAILED" || r["state"] == "SUCCEEDED"
    });
    assert_eq!(run["state"], "FAILED", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or("")
            .contains("no decision within its approval timeout of 3s"),
        "{run:#}"
    );
    c.stop_agent("a1");
}
