//! The state machine over plain commands.

use std::collections::BTreeMap;

use gantry_model::{HostInventory, ResourceRequest, StepOutcome};
use serde_json::json;

use super::*;
use crate::engine::TaskState;
use crate::ir::{parse_pipeline, ExecutorSpec};

const LINEAR: &str = include_str!("../engine/testdata/linear.yaml");

fn create(run_id: &str, request_id: Option<&str>, at: i64) -> Command {
    let spec = parse_pipeline(LINEAR).unwrap();
    let params = crate::ir::resolve_run_parameters(&spec, &BTreeMap::new()).unwrap();
    Command::CreateRun {
        run_id: run_id.into(),
        request_id: request_id.map(String::from),
        pipeline: Box::new(spec),
        pipeline_root: "file:///tmp/gantry".into(),
        parameters: params,
        at,
    }
}

fn register(id: &str, cpu: f64) -> Command {
    Command::RegisterAgent {
        agent_id: id.into(),
        inventory: HostInventory {
            hostname: id.into(),
            cpu_cores: cpu,
            memory_bytes: 1 << 30,
            ..Default::default()
        },
        labels: BTreeMap::new(),
        at: 0,
    }
}

fn assign(run: &str, task: &str, attempt: u32, agent: &str) -> Command {
    Command::AssignAttempts {
        placements: vec![Placement {
            run_id: run.into(),
            task_id: task.into(),
            attempt,
            agent_id: agent.into(),
        }],
        at: 5,
    }
}

fn finished(run: &str, task: &str, attempt: u32) -> Command {
    Command::AttemptFinished {
        attempt: AttemptKey {
            run_id: run.into(),
            task_id: task.into(),
            attempt,
        },
        outcome: StepOutcome::Failed {
            error: "exit code 1".into(),
            exit_code: Some(1),
        },
        at: 9,
    }
}

fn log() -> Vec<Command> {
    vec![
        register("a", 4.0),
        create("r1", Some("req-1"), 1),
        assign("r1", "make-data", 1, "a"),
        Command::AttemptStarted {
            attempt: AttemptKey {
                run_id: "r1".into(),
                task_id: "make-data".into(),
                attempt: 1,
            },
            at: 6,
        },
        finished("r1", "make-data", 1),
        create("r2", None, 10),
        Command::CancelRun {
            run_id: "r2".into(),
            at: 11,
        },
    ]
}

#[test]
fn the_same_log_yields_the_same_state() {
    let mut a = ClusterState::default();
    let mut b = ClusterState::default();
    for (i, c) in log().into_iter().enumerate() {
        a.apply(i as u64 + 1, c.clone());
        b.apply(i as u64 + 1, c);
    }
    assert_eq!(a, b);
    // and the commands survive their log encoding unchanged
    for c in log() {
        let bytes = serde_json::to_vec(&c).unwrap();
        let back: Command = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, c);
    }
    assert_eq!(a.runs["r1"].state, crate::engine::RunState::Failed);
    assert_eq!(a.runs["r2"].state, crate::engine::RunState::Canceled);
    assert!(a.agents["a"].running.is_empty());
    assert_eq!(a.agents["a"].cpu_allocated, 0.0);
}

#[test]
fn a_snapshot_copy_is_a_consistent_cut_that_later_commands_do_not_change() {
    let cmds = log();
    let mut live = ClusterState::default();
    for (i, c) in cmds.iter().take(3).enumerate() {
        live.apply(i as u64 + 1, c.clone());
    }
    // What the snapshot thread encodes: a copy taken at index 3.
    let cut = live.clone();
    let encoded_at_cut = serde_json::to_string(&cut).unwrap();
    for (i, c) in cmds.iter().enumerate().skip(3) {
        live.apply(i as u64 + 1, c.clone());
    }
    assert_eq!(serde_json::to_string(&cut).unwrap(), encoded_at_cut);
    assert_eq!(cut.applied_index, 3);
    assert_ne!(cut.runs["r1"].state, live.runs["r1"].state);
    assert!(!cut.runs.contains_key("r2"));
    // Restoring the encoded cut and replaying the rest gives the live state.
    let mut restored: ClusterState = serde_json::from_str(&encoded_at_cut).unwrap();
    for (i, c) in cmds.into_iter().enumerate().skip(3) {
        restored.apply(i as u64 + 1, c);
    }
    assert_eq!(restored, live);
}

#[test]
fn a_retried_submission_with_the_same_request_id_creates_one_run() {
    let mut s = ClusterState::default();
    let first = s.apply(1, create("r1", Some("req"), 1));
    let again = s.apply(2, create("r-other", Some("req"), 2));
    assert_eq!(
        first.result,
        Ok(Outcome::RunCreated {
            run_id: "r1".into(),
            existing: false
        })
    );
    assert_eq!(
        again.result,
        Ok(Outcome::RunCreated {
            run_id: "r1".into(),
            existing: true
        })
    );
    assert_eq!(s.runs.len(), 1);
}

#[test]
fn placements_are_rechecked_at_apply_and_never_oversubscribe() {
    let mut s = ClusterState::default();
    s.apply(1, register("small", 1.0));
    let mut spec = parse_pipeline(LINEAR).unwrap();
    for e in spec.executors.values_mut() {
        if let ExecutorSpec::Container(c) = e {
            c.resources = ResourceRequest {
                cpu_request: Some(1.0),
                ..Default::default()
            };
        }
    }
    for (i, id) in ["r1", "r2"].iter().enumerate() {
        s.apply(
            2 + i as u64,
            Command::CreateRun {
                run_id: id.to_string(),
                request_id: None,
                pipeline: Box::new(spec.clone()),
                pipeline_root: "file:///x".into(),
                parameters: [
                    ("rows".to_string(), json!(1)),
                    ("factor".to_string(), json!(1.0)),
                ]
                .into(),
                at: i as i64,
            },
        );
    }
    // a stale plan places both on an agent that has room for one
    let applied = s.apply(
        4,
        Command::AssignAttempts {
            placements: vec![
                Placement {
                    run_id: "r1".into(),
                    task_id: "make-data".into(),
                    attempt: 1,
                    agent_id: "small".into(),
                },
                Placement {
                    run_id: "r2".into(),
                    task_id: "make-data".into(),
                    attempt: 1,
                    agent_id: "small".into(),
                },
            ],
            at: 5,
        },
    );
    match applied.result {
        Ok(Outcome::Assigned(done)) => assert_eq!(done.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.agents["small"].cpu_allocated, 1.0);
    assert_eq!(s.runs["r2"].tasks["make-data"].state, TaskState::Ready);
    // assignments to unknown agents change nothing
    let before = s.clone();
    let applied = s.apply(5, assign("r2", "make-data", 1, "ghost"));
    assert_eq!(applied.result, Ok(Outcome::Assigned(vec![])));
    s.applied_index = before.applied_index;
    assert_eq!(s, before);
}

#[test]
fn assignment_events_follow_the_commit_and_duplicates_emit_nothing() {
    let mut s = ClusterState::default();
    s.apply(1, register("a", 4.0));
    s.apply(2, create("r1", None, 1));
    let applied = s.apply(3, assign("r1", "make-data", 1, "a"));
    assert!(applied
        .events
        .iter()
        .any(|e| matches!(e, Event::AttemptAssigned { agent_id, .. } if agent_id == "a")));
    let dup = s.apply(4, assign("r1", "make-data", 1, "a"));
    assert!(dup.events.is_empty(), "{:?}", dup.events);
    s.apply(5, finished("r1", "make-data", 1));
    let before = s.clone();
    let again = s.apply(6, finished("r1", "make-data", 1));
    assert!(matches!(
        again.result,
        Ok(Outcome::ResultRecorded(
            crate::engine::OutcomeEffect::Ignored(_)
        ))
    ));
    assert!(again.events.is_empty());
    s.applied_index = before.applied_index;
    assert_eq!(s, before);
}

#[test]
fn unknown_runs_are_rejected() {
    let mut s = ClusterState::default();
    let r = s.apply(
        1,
        Command::CancelRun {
            run_id: "nope".into(),
            at: 0,
        },
    );
    assert_eq!(r.result, Err(Rejection::RunNotFound("nope".into())));
}
