//! Agents act only as themselves: an agent is the one its certificate names (the process
//! refuses another `--agent-id`, the coordinator another `Register.agent_id`), it can report
//! nothing about another agent's attempt (start, log lines, a forged result), and what it
//! reports about its own attempt must stay under that attempt's artifact prefix.

use std::time::Duration;

use gantry_model::{StepOutcome, StepSpec};
use gantry_proto::v1 as pb;
use gantry_proto::v1::agent_message::Body as Out;
use gantry_proto::v1::coordinator_message::Body as In;
use gantry_testkit::cluster::{AgentSession, Cluster, ClusterOpts};
use gantry_testkit::{compile_pipeline, eventually, run_within, sim, task};
use serde_json::Value;
use tonic::Code;

const GIB: u64 = 1024 * 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn register(agent_id: &str, taints: &[&str]) -> pb::Register {
    pb::Register {
        agent_id: agent_id.to_string(),
        inventory_json: serde_json::to_string(&sim::inventory(agent_id, 8.0, 64 * GIB)).unwrap(),
        labels: Default::default(),
        active: Vec::new(),
        taints: taints.iter().map(|t| t.to_string()).collect(),
    }
}

/// A session of agent `agent_id` (its own certificate) with node `node`, registering as
/// `claimed`.
async fn session(
    c: &Cluster,
    node: u64,
    cert_of: &str,
    claimed: pb::Register,
) -> Result<AgentSession, tonic::Status> {
    let tls = c.agent_tls(cert_of).unwrap();
    let ch = c.channel_as(node, tls, None).unwrap();
    AgentSession::open(ch, claimed).await
}

fn registered(b: &In) -> Option<String> {
    match b {
        In::Registered(r) => Some(r.agent_id.clone()),
        _ => None,
    }
}

fn start(nodes: usize) -> (Cluster, u64) {
    let c = Cluster::start(ClusterOpts::loopback(nodes)).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    (c, leader)
}

#[test]
fn an_agent_is_the_one_its_certificate_names() {
    let (c, leader) = start(1);
    let work = c.dir.path().join("work-a2");

    // The agent process holding a1's certificate will not run as a2.
    let out = run_within(
        c.agent_command("a1")
            .unwrap()
            .args(["--agent-id", "a2", "--runtime", "process", "--work-dir"])
            .arg(&work),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("the agent started as a2 with a1's certificate: {e}"));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("--agent-id a2 differs from the certificate's agent id a1"),
        "the agent does not say why: {}",
        out.stderr
    );

    // Nor will the coordinator take a session with a1's certificate registering as a2.
    let rt = runtime();
    let refused = rt.block_on(session(&c, leader, "a1", register("a2", &[])));
    let status = refused.err().expect("a1's certificate registered as a2");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("certificate is for agent a1") && status.message().contains("a2"),
        "{status:?}"
    );
    eventually(Duration::from_secs(5), || {
        let n = c.log_count(
            leader,
            &[
                "refused: an agent registered under another agent's id",
                "cert=a1",
                "claimed=a2",
            ],
        );
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} refusals logged:\n{}", c.log(leader)))
        }
    });
    let agents = c
        .cli()
        .run(&["agent", "list", "-o", "json"])
        .json()
        .unwrap();
    assert_eq!(agents, Value::Array(vec![]), "an agent was registered");

    // The same certificate registering as itself is welcome: the refusal was the claim's.
    rt.block_on(async {
        let mut s = session(&c, leader, "a1", register("a1", &[]))
            .await
            .expect("a1 registers as a1");
        let id = s
            .wait_for(Duration::from_secs(10), registered)
            .await
            .unwrap();
        assert_eq!(id, "a1");
    });
}

#[test]
fn an_agent_cannot_start_log_or_finish_another_agents_attempt() {
    let (mut c, leader) = start(1);
    c.start_agent("a1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let file = compile_pipeline("sleeper", c.dir.path()).unwrap();
    let run_id = cli.submit(&file, &["seconds=8"]).unwrap();
    let run = cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "RUNNING"
    });
    let nap = task(&run, "nap").clone();
    assert_eq!(nap["agent"], "a1", "{nap:#}");
    let attempt = pb::AttemptRef {
        run_id: run_id.clone(),
        task_id: nap["task_id"].as_str().unwrap().to_string(),
        attempt: 1,
    };

    // Agent a2, with its own certificate, reports on a1's attempt. NoSchedule: a2 is here to
    // forge, not to be given steps.
    let rt = runtime();
    rt.block_on(async {
        let mut a2 = session(
            &c,
            leader,
            "a2",
            register("a2", &["forged=true:NoSchedule"]),
        )
        .await
        .expect("a2 registers as itself");
        a2.wait_for(Duration::from_secs(10), registered)
            .await
            .unwrap();
        let forged = StepOutcome::Succeeded {
            parameters: [("done".to_string(), Value::from("forged"))].into(),
            artifacts: Default::default(),
        };
        a2.send(Out::Started(pb::AttemptStarted {
            attempt: Some(attempt.clone()),
        }))
        .unwrap();
        a2.send(Out::Logs(pb::LogBatch {
            attempt: Some(attempt.clone()),
            lines: vec![pb::LogLine {
                stream: "stdout".into(),
                line: "forged by a2".into(),
            }],
        }))
        .unwrap();
        a2.send(Out::Finished(pb::AttemptFinished {
            attempt: Some(attempt.clone()),
            outcome_json: serde_json::to_string(&forged).unwrap(),
        }))
        .unwrap();
        // The coordinator acknowledges the result, so that a2 stops resending it, having
        // recorded nothing; the session goes on.
        let acked = a2
            .wait_for(Duration::from_secs(10), |b| match b {
                In::ResultRecorded(r) if *r == attempt => Some(()),
                _ => None,
            })
            .await;
        assert!(acked.is_ok(), "{acked:?}\n{}", c.log(leader));
    });

    let now = cli.get_run(&run_id).unwrap();
    let t = task(&now, "nap");
    assert_eq!(
        t["state"], "RUNNING",
        "a2's forged result was recorded: {t:#}"
    );
    assert_eq!(t["agent"], "a1", "{t:#}");
    assert_eq!(t["attempts"], 1, "{t:#}");
    // a1's lines reach the coordinator in batches: wait for them.
    let logs = eventually(Duration::from_secs(20), || {
        let logs = cli.run(&["run", "logs", &run_id]);
        if logs.code == 0 && logs.stdout.contains("start a") {
            Ok(logs)
        } else {
            Err(format!("a1's own lines: {} {}", logs.stdout, logs.stderr))
        }
    });
    assert!(
        !logs.stdout.contains("forged by a2"),
        "a2's line was stored: {}",
        logs.stdout
    );
    let refused = c.log_count(
        leader,
        &[
            "refused: the attempt is not assigned to this agent",
            "agent=a2",
        ],
    );
    assert_eq!(
        refused,
        3,
        "start, log lines and result should each be refused and logged:\n{}",
        c.log(leader)
    );

    // a1's own result is the one recorded.
    let run = cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "SUCCEEDED"
    });
    assert_eq!(
        task(&run, "nap")["outputs"]["parameters"]["done"],
        "a",
        "{run:#}"
    );
    let cancel = cli.run(&["run", "cancel", &run_id]);
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    c.stop_agent("a1");
}

#[test]
fn an_output_reported_outside_the_attempts_prefix_fails_the_task() {
    let (c, leader) = start(1);
    let cli = c.cli();
    let file = compile_pipeline("linear", c.dir.path()).unwrap();
    let rt = runtime();
    // The only agent is this simulated one: it is given make-data and reports its Dataset
    // under another run's prefix.
    let (run_id, bad_uri) = rt.block_on(async {
        let mut s1 = session(&c, leader, "s1", register("s1", &[]))
            .await
            .expect("s1 registers");
        s1.wait_for(Duration::from_secs(10), registered)
            .await
            .unwrap();
        let run_id = cli.submit(&file, &["rows=3"]).unwrap();
        let spec: StepSpec = s1
            .wait_for(Duration::from_secs(30), |b| match b {
                In::Assign(a) => Some(serde_json::from_str(&a.step_json).unwrap()),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(spec.run_id, run_id);
        let mut outcome = sim::success(&spec, |_, t| sim::zero(t));
        let StepOutcome::Succeeded { artifacts, .. } = &mut outcome else {
            unreachable!()
        };
        let data = artifacts
            .get_mut("data")
            .and_then(|v| v.first_mut())
            .unwrap_or_else(|| panic!("make-data declares no `data` artifact: {spec:?}"));
        data.uri = data.uri.replace(&run_id, "some-other-run");
        assert_ne!(data.uri, spec.outputs.artifacts["data"].uri);
        let bad_uri = data.uri.clone();
        let attempt = pb::AttemptRef {
            run_id: spec.run_id.to_string(),
            task_id: spec.task_id.to_string(),
            attempt: spec.attempt,
        };
        s1.send(Out::Started(pb::AttemptStarted {
            attempt: Some(attempt.clone()),
        }))
        .unwrap();
        s1.send(Out::Finished(pb::AttemptFinished {
            attempt: Some(attempt.clone()),
            outcome_json: serde_json::to_string(&outcome).unwrap(),
        }))
        .unwrap();
        s1.wait_for(Duration::from_secs(10), |b| match b {
            In::ResultRecorded(r) if *r == attempt => Some(()),
            _ => None,
        })
        .await
        .unwrap();
        (run_id, bad_uri)
    });
    let run = cli.wait_until(&run_id, Duration::from_secs(30), |r| {
        matches!(
            task(r, "make-data")["state"].as_str(),
            Some("SUCCEEDED" | "FAILED")
        )
    });
    let t = task(&run, "make-data");
    assert_eq!(t["state"], "FAILED", "the report was recorded: {t:#}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&bad_uri) && error.contains("outside the attempt's artifact prefix"),
        "the error does not name the URI {bad_uri}: {t:#}"
    );
    let run = cli.wait_finished(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "FAILED", "{run:#}");
}
