//! The JSON of commands and of the state is a storage format: Raft log entries and snapshots
//! written by an older binary must load into a newer one, and a newer one must write the same
//! bytes. These goldens were produced by the code before ids became newtypes.

use std::collections::BTreeMap;

use gantry_model::{ArtifactRef, GpuDevice, HostInventory, StepOutcome};
use serde_json::json;

use super::*;

/// `ClusterState` as a snapshot holds it (pretty-printed here for review; the same calls
/// write the compact form).
const STATE_GOLDEN: &str = include_str!("testdata/cluster_state_golden.json");

/// [`commands`] as log entries.
const COMMAND_GOLDENS: [&str; 13] = [
    r#"{"type":"register_agent","agent_id":"agent-1","inventory":{"hostname":"host-1","cpu_cores":8.0,"memory_bytes":17179869184,"gpus":[{"index":0,"uuid":"GPU-1","name":"NVIDIA H100","memory_total_bytes":85899345920,"memory_free_bytes":85899345920,"healthy":true,"utilization_percent":null,"mig_enabled":null}],"driver_version":null,"cuda_version":null,"disk_free_bytes":null,"os":null,"runtime":""},"labels":{},"taints":[],"at":1}"#,
    r#"{"type":"declare_agent_lost","agent_id":"agent-1","at":2}"#,
    r#"{"type":"update_inventory","agent_id":"agent-1","inventory":{"hostname":"","cpu_cores":0.0,"memory_bytes":0,"gpus":[],"driver_version":null,"cuda_version":null,"disk_free_bytes":null,"os":null,"runtime":""}}"#,
    r#"{"type":"set_agent_draining","agent_id":"agent-1","draining":true}"#,
    r#"{"type":"assign_attempts","placements":[{"run_id":"run-1","task_id":"loop/0/train","attempt":2,"agent_id":"agent-1","gpus":["GPU-1"]}],"at":3}"#,
    r#"{"type":"attempt_started","attempt":{"run_id":"run-1","task_id":"loop/0/train","attempt":2},"at":4}"#,
    r#"{"type":"attempt_finished","attempt":{"run_id":"run-1","task_id":"loop/0/train","attempt":2},"outcome":{"status":"lost","error":"agent agent-1 was lost"},"at":5}"#,
    r#"{"type":"cancel_run","run_id":"run-1","at":6}"#,
    r#"{"type":"use_cached_result","run_id":"run-1","task_id":"produce","at":7}"#,
    r#"{"type":"retry_run","run_id":"run-1","at":8}"#,
    r#"{"type":"time_out_run","run_id":"run-1","at":9}"#,
    r#"{"type":"time_out_attempt","attempt":{"run_id":"run-1","task_id":"consume","attempt":1},"at":10}"#,
    r#"{"type":"fail_unschedulable","tasks":[{"run_id":"run-1","task_id":"consume","reason":"no agent has 2 GPUs"}],"at":11}"#,
];

#[test]
fn commands_encode_as_they_did_and_old_entries_decode() {
    let cmds = commands();
    assert_eq!(cmds.len(), COMMAND_GOLDENS.len());
    for (cmd, golden) in cmds.iter().zip(COMMAND_GOLDENS) {
        assert_eq!(serde_json::to_string(cmd).unwrap(), golden);
        let old: Command = serde_json::from_str(golden).unwrap();
        assert_eq!(&old, cmd);
    }
}

#[test]
fn the_state_encodes_as_it_did_and_old_snapshots_load() {
    let golden: serde_json::Value = serde_json::from_str(STATE_GOLDEN).unwrap();
    // The pipeline comes from the golden itself, so the test does not depend on the parser.
    let pipeline = serde_json::from_value(golden["runs"]["run-1"]["pipeline"].clone()).unwrap();
    let mut st = ClusterState::default();
    for (i, c) in state_log(pipeline).into_iter().enumerate() {
        st.apply(i as u64 + 1, c);
    }
    finish_state(&mut st);
    assert_eq!(
        serde_json::to_string_pretty(&st).unwrap(),
        STATE_GOLDEN.trim_end()
    );
    let old: ClusterState = serde_json::from_str(STATE_GOLDEN).unwrap();
    assert_eq!(old, st);
    // What was loaded is keyed and typed as the code now expects.
    let run = &old.runs["run-1"];
    assert_eq!(run.tasks["produce"].attempts[0].agent, "agent-1");
    assert_eq!(
        old.agents["agent-1"].gpus_in_use["GPU-1"].task_id,
        "consume"
    );
    assert_eq!(old.request_ids["req-1"], "run-1");
}

fn inventory() -> HostInventory {
    HostInventory {
        hostname: "host-1".into(),
        cpu_cores: 8.0,
        memory_bytes: 1 << 34,
        gpus: vec![GpuDevice {
            index: 0,
            uuid: "GPU-1".into(),
            name: "NVIDIA H100".into(),
            memory_total_bytes: 80 << 30,
            memory_free_bytes: 80 << 30,
            healthy: true,
            utilization_percent: None,
            mig_enabled: None,
        }],
        ..Default::default()
    }
}

fn attempt(run: &str, task: &str, n: u32) -> AttemptKey {
    AttemptKey {
        run_id: run.into(),
        task_id: task.into(),
        attempt: n,
    }
}

/// A run whose first step succeeded (making a cache entry) and whose second is running.
fn state_log(pipeline: crate::ir::PipelineSpec) -> Vec<Command> {
    let params = crate::ir::resolve_run_parameters(&pipeline, &BTreeMap::new()).unwrap();
    vec![
        Command::RegisterAgent {
            agent_id: "agent-1".into(),
            inventory: inventory(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            taints: vec![],
            at: 1,
        },
        Command::CreateRun(NewRun {
            run_id: "run-1".into(),
            request_id: Some("req-1".into()),
            pipeline: std::sync::Arc::new(pipeline),
            pipeline_root: "file:///tmp/gantry".into(),
            parameters: params,
            artifacts: BTreeMap::new(),
            at: 2,
            caching: Default::default(),
            limits: Default::default(),
            priority: 0,
            uri_policy: None,
            info: None,
            request_window_ms: None,
        }),
        Command::AssignAttempts {
            placements: vec![Placement {
                run_id: "run-1".into(),
                task_id: "produce".into(),
                attempt: 1,
                agent_id: "agent-1".into(),
                gpus: vec![],
            }],
            at: 3,
        },
        Command::AttemptStarted {
            attempt: attempt("run-1", "produce", 1),
            at: 4,
        },
        Command::AttemptFinished {
            attempt: attempt("run-1", "produce", 1),
            outcome: StepOutcome::Succeeded {
                parameters: BTreeMap::from([("greeting".to_string(), json!("hello world"))]),
                artifacts: BTreeMap::from([(
                    "data".to_string(),
                    vec![ArtifactRef {
                        name: "data".into(),
                        uri: "file:///tmp/gantry/run-1/produce/attempt-1/data".into(),
                        schema_title: "system.Dataset".into(),
                        schema_version: "0.0.1".into(),
                        metadata: Default::default(),
                    }],
                )]),
            },
            at: 5,
        },
        Command::AssignAttempts {
            placements: vec![Placement {
                run_id: "run-1".into(),
                task_id: "consume".into(),
                attempt: 1,
                agent_id: "agent-1".into(),
                gpus: vec![],
            }],
            at: 6,
        },
    ]
}

/// What no command of the log above sets: a GPU in use (the test pipeline asks for none).
fn finish_state(st: &mut ClusterState) {
    if let Some(a) = st.agents.get_mut("agent-1") {
        a.gpus_in_use
            .insert("GPU-1".into(), attempt("run-1", "consume", 1));
    }
}

/// One of each command that carries an id.
fn commands() -> Vec<Command> {
    vec![
        Command::RegisterAgent {
            agent_id: "agent-1".into(),
            inventory: inventory(),
            labels: BTreeMap::new(),
            taints: vec![],
            at: 1,
        },
        Command::DeclareAgentLost {
            agent_id: "agent-1".into(),
            at: 2,
        },
        Command::UpdateInventory {
            agent_id: "agent-1".into(),
            inventory: HostInventory::default(),
        },
        Command::SetAgentDraining {
            agent_id: "agent-1".into(),
            draining: true,
        },
        Command::AssignAttempts {
            placements: vec![Placement {
                run_id: "run-1".into(),
                task_id: "loop/0/train".into(),
                attempt: 2,
                agent_id: "agent-1".into(),
                gpus: vec!["GPU-1".into()],
            }],
            at: 3,
        },
        Command::AttemptStarted {
            attempt: attempt("run-1", "loop/0/train", 2),
            at: 4,
        },
        Command::AttemptFinished {
            attempt: attempt("run-1", "loop/0/train", 2),
            outcome: StepOutcome::Lost {
                error: "agent agent-1 was lost".into(),
            },
            at: 5,
        },
        Command::CancelRun {
            run_id: "run-1".into(),
            at: 6,
        },
        Command::UseCachedResult {
            run_id: "run-1".into(),
            task_id: "produce".into(),
            at: 7,
        },
        Command::RetryRun {
            run_id: "run-1".into(),
            at: 8,
        },
        Command::TimeOutRun {
            run_id: "run-1".into(),
            at: 9,
        },
        Command::TimeOutAttempt {
            attempt: attempt("run-1", "consume", 1),
            at: 10,
        },
        Command::FailUnschedulable {
            tasks: vec![Unschedulable {
                run_id: "run-1".into(),
                task_id: "consume".into(),
                reason: "no agent has 2 GPUs".into(),
            }],
            at: 11,
        },
    ]
}
