//! The state machine over plain commands.

use std::collections::{BTreeMap, BTreeSet};

use gantry_model::{HostInventory, ResourceRequest, StepOutcome};
use serde_json::json;

use super::*;
use crate::engine::TaskState;
use crate::ir::{parse_pipeline, ExecutorSpec};

const LINEAR: &str = include_str!("../engine/testdata/linear.yaml");

/// Run `run_id` of `spec` with `parameters`, created at `at`, every other field its default;
/// tests change what they look at with struct update syntax.
pub(super) fn new_run(
    run_id: &str,
    spec: crate::ir::PipelineSpec,
    parameters: BTreeMap<String, serde_json::Value>,
    at: i64,
) -> NewRun {
    NewRun {
        run_id: run_id.into(),
        request_id: None,
        pipeline: std::sync::Arc::new(spec),
        pipeline_root: "file:///tmp/gantry".into(),
        parameters,
        artifacts: BTreeMap::new(),
        at,
        caching: Default::default(),
        limits: Default::default(),
        priority: 0,
        uri_policy: None,
        info: None,
        request_window_ms: None,
    }
}

/// `yaml` with its parameters' defaults.
fn new_run_of(run_id: &str, yaml: &str, at: i64) -> NewRun {
    let spec = parse_pipeline(yaml).unwrap();
    let params = crate::ir::resolve_run_parameters(&spec, &BTreeMap::new()).unwrap();
    new_run(run_id, spec, params, at)
}

fn create(run_id: &str, request_id: Option<&str>, at: i64) -> Command {
    Command::CreateRun(NewRun {
        request_id: request_id.map(String::from),
        ..new_run_of(run_id, LINEAR, at)
    })
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
        taints: vec![],
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
            gpus: vec![],
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
        assert_eq!(Command::decode(&bytes).unwrap(), c);
        if matches!(c, Command::CreateRun(_)) {
            // What Command::decode's shortcut counts on.
            assert!(bytes.starts_with(br#"{"type":"create_run","#));
        }
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
            Command::CreateRun(NewRun {
                pipeline_root: "file:///x".into(),
                ..new_run(
                    id,
                    spec.clone(),
                    [
                        ("rows".to_string(), json!(1)),
                        ("factor".to_string(), json!(1.0)),
                    ]
                    .into(),
                    i as i64,
                )
            }),
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
                    gpus: vec![],
                },
                Placement {
                    run_id: "r2".into(),
                    task_id: "make-data".into(),
                    attempt: 1,
                    agent_id: "small".into(),
                    gpus: vec![],
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

fn create_with(run_id: &str, rows: i64, caching: crate::engine::CachePolicy, at: i64) -> Command {
    let spec = parse_pipeline(LINEAR).unwrap();
    let given = BTreeMap::from([("rows".to_string(), json!(rows))]);
    let params = crate::ir::resolve_run_parameters(&spec, &given).unwrap();
    Command::CreateRun(NewRun {
        pipeline_root: "s3://bucket/root".into(),
        caching,
        ..new_run(run_id, spec, params, at)
    })
}

fn make_data_succeeded(run: &str, at: i64) -> Command {
    let art = gantry_model::ArtifactRef {
        name: "data".into(),
        uri: format!("s3://bucket/root/{run}/make-data/attempt-1/data"),
        schema_title: "system.Dataset".into(),
        schema_version: "0.0.1".into(),
        metadata: Default::default(),
    };
    Command::AttemptFinished {
        attempt: AttemptKey {
            run_id: run.into(),
            task_id: "make-data".into(),
            attempt: 1,
        },
        outcome: StepOutcome::Succeeded {
            parameters: BTreeMap::from([("Output".to_string(), json!(7))]),
            artifacts: BTreeMap::from([("data".to_string(), vec![art])]),
        },
        at,
    }
}

fn key_of(s: &ClusterState, run: &str, task: &str) -> Option<String> {
    s.runs[run].tasks[task].cache_key.clone()
}

#[test]
fn a_success_is_cached_and_serves_the_same_task_with_the_same_inputs() {
    use crate::engine::CachePolicy;
    use crate::scheduler::{cache_candidates, ready_steps};
    let mut s = ClusterState::default();
    let mut i = 0;
    let mut apply = |s: &mut ClusterState, c: Command| {
        i += 1;
        s.apply(i, c)
    };
    apply(&mut s, register("a", 4.0));
    apply(&mut s, create_with("r1", 7, CachePolicy::default(), 10));
    let key = key_of(&s, "r1", "make-data").expect("a cacheable task has a key");
    assert!(cache_candidates(&s, 11).is_empty(), "nothing cached yet");
    apply(&mut s, assign("r1", "make-data", 1, "a"));
    apply(&mut s, make_data_succeeded("r1", 20));
    assert_eq!(s.cache[&key].run_id, "r1");
    assert_eq!(s.cache[&key].created_at, 20);

    // Same inputs: the same key; the task waits for the cache check instead of being placed.
    apply(&mut s, create_with("r2", 7, CachePolicy::default(), 30));
    assert_eq!(key_of(&s, "r2", "make-data"), Some(key.clone()));
    assert!(!ready_steps(&s, 31)
        .iter()
        .any(|r| r.run_id == "r2" && r.task_id == "make-data"));
    let cands = cache_candidates(&s, 31);
    assert_eq!(cands.len(), 1);
    assert_eq!(
        cands[0].artifact_uris,
        vec!["s3://bucket/root/r1/make-data/attempt-1/data"]
    );
    let out = apply(
        &mut s,
        Command::UseCachedResult {
            run_id: "r2".into(),
            task_id: "make-data".into(),
            at: 32,
        },
    );
    assert_eq!(out.result, Ok(Outcome::CacheUsed(true)));
    let t = &s.runs["r2"].tasks["make-data"];
    assert_eq!(t.state, TaskState::Cached);
    assert!(t.attempts.is_empty(), "nothing ran");
    assert_eq!(t.cached_from.as_deref(), Some("r1/make-data"));
    assert_eq!(t.outputs.parameters["Output"], json!(7));
    // Its consumer sees the reused outputs.
    let scale = &s.runs["r2"].tasks["scale"];
    assert_eq!(scale.state, TaskState::Ready);
    assert_eq!(
        scale.inputs.artifacts["data"][0].uri,
        "s3://bucket/root/r1/make-data/attempt-1/data"
    );

    // Other inputs: another key.
    apply(&mut s, create_with("r3", 8, CachePolicy::default(), 40));
    assert_ne!(key_of(&s, "r3", "make-data"), Some(key.clone()));
    // Cache off for the run, or an entry older than the run accepts: placed as usual.
    let off = CachePolicy {
        enabled: false,
        ..Default::default()
    };
    apply(&mut s, create_with("r4", 7, off, 50));
    let young = CachePolicy {
        max_age_ms: Some(100),
        ..Default::default()
    };
    apply(&mut s, create_with("r5", 7, young.clone(), 60));
    let per_task = CachePolicy {
        task_max_age_ms: BTreeMap::from([("make-data".to_string(), 5)]),
        ..Default::default()
    };
    apply(&mut s, create_with("r6", 7, per_task, 70));
    let placeable: Vec<RunId> = ready_steps(&s, 200)
        .into_iter()
        .filter(|r| r.task_id == "make-data")
        .map(|r| r.run_id)
        .collect();
    assert_eq!(placeable, vec!["r3", "r4", "r5", "r6"]);
    assert!(s
        .usable_cache_entry(&"r5".into(), &"make-data".into(), 110)
        .is_some());
    assert!(s
        .usable_cache_entry(&"r5".into(), &"make-data".into(), 121)
        .is_none());
    // A stale hit proposed anyway changes nothing at apply.
    let stale = apply(
        &mut s,
        Command::UseCachedResult {
            run_id: "r5".into(),
            task_id: "make-data".into(),
            at: 500,
        },
    );
    assert_eq!(stale.result, Ok(Outcome::CacheUsed(false)));
    assert_eq!(s.runs["r5"].tasks["make-data"].state, TaskState::Ready);

    // Artifacts gone: the entry is forgotten and the task is placed like any other.
    apply(&mut s, create_with("r7", 7, CachePolicy::default(), 80));
    let waiting: Vec<RunId> = cache_candidates(&s, 81)
        .into_iter()
        .map(|c| c.run_id)
        .collect();
    // r5's entry is young enough again at this earlier clock reading; r7 accepts any age.
    assert_eq!(waiting, vec!["r5", "r7"]);
    let forgot = apply(
        &mut s,
        Command::ForgetCache {
            keys: vec![key.clone()],
        },
    );
    assert_eq!(forgot.result, Ok(Outcome::CacheForgotten(1)));
    assert!(cache_candidates(&s, 82).is_empty());
    assert!(ready_steps(&s, 82)
        .iter()
        .any(|r| r.run_id == "r7" && r.task_id == "make-data"));
}

#[test]
fn the_cache_key_follows_the_container_and_ignores_disabled_tasks() {
    let mut s = ClusterState::default();
    s.apply(1, create_with("r1", 7, Default::default(), 1));
    let k1 = key_of(&s, "r1", "make-data").unwrap();
    // Another image: another key.
    let mut spec = parse_pipeline(LINEAR).unwrap();
    for e in spec.executors.values_mut() {
        if let ExecutorSpec::Container(c) = e {
            c.image = "python:3.12".into();
        }
    }
    let given = BTreeMap::from([("rows".to_string(), json!(7))]);
    let params = crate::ir::resolve_run_parameters(&spec, &given).unwrap();
    s.apply(
        2,
        Command::CreateRun(NewRun {
            pipeline_root: "s3://bucket/root".into(),
            ..new_run("r2", spec.clone(), params.clone(), 2)
        }),
    );
    assert_ne!(key_of(&s, "r2", "make-data").unwrap(), k1);
    // enableCache false in the IR: no key, never served from the cache.
    let crate::ir::Implementation::Dag(dag) = &mut spec.root.implementation else {
        panic!("root is a DAG")
    };
    for t in dag.tasks.values_mut() {
        t.cache_enabled = false;
    }
    s.apply(
        3,
        Command::CreateRun(NewRun {
            pipeline_root: "s3://bucket/root".into(),
            ..new_run("r3", spec, params, 3)
        }),
    );
    assert_eq!(key_of(&s, "r3", "make-data"), None);
}

fn create_limited(run_id: &str, limits: crate::engine::RunLimits, at: i64) -> Command {
    Command::CreateRun(NewRun {
        caching: crate::engine::CachePolicy {
            enabled: false,
            ..Default::default()
        },
        limits,
        ..new_run_of(run_id, LINEAR, at)
    })
}

#[test]
fn a_run_past_its_timeout_fails_and_its_running_attempts_are_stopped() {
    use crate::engine::RunLimits;
    use crate::scheduler::timeouts_due;
    let mut s = ClusterState::default();
    s.apply(1, register("a", 4.0));
    let limits = RunLimits {
        timeout_ms: Some(1_000),
        ..Default::default()
    };
    s.apply(2, create_limited("r1", limits, 100));
    s.apply(3, assign("r1", "make-data", 1, "a"));
    assert!(timeouts_due(&s, 1_099).is_empty());
    let due = timeouts_due(&s, 1_100);
    assert_eq!(
        due,
        vec![Command::TimeOutRun {
            run_id: "r1".into(),
            at: 1_100
        }]
    );
    // Proposed too early (another node's clock), it changes nothing.
    let early = s.apply(
        4,
        Command::TimeOutRun {
            run_id: "r1".into(),
            at: 1_000,
        },
    );
    assert_eq!(early.result, Ok(Outcome::TimedOut(false)));
    let applied = s.apply(5, due[0].clone());
    assert_eq!(applied.result, Ok(Outcome::TimedOut(true)));
    assert!(applied.events.iter().any(|e| matches!(
        e,
        Event::AttemptCanceled { agent_id, attempt } if agent_id == "a" && attempt.task_id == "make-data"
    )));
    assert_eq!(s.runs["r1"].state, RunState::Canceling);
    assert!(timeouts_due(&s, 5_000).is_empty(), "not timed out twice");
    // The agent reports the stopped attempt: the run ends FAILED with the timeout as error.
    s.apply(
        6,
        Command::AttemptFinished {
            attempt: AttemptKey {
                run_id: "r1".into(),
                task_id: "make-data".into(),
                attempt: 1,
            },
            outcome: StepOutcome::Canceled,
            at: 1_200,
        },
    );
    let run = &s.runs["r1"];
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").contains("timeout of 1s"),
        "{:?}",
        run.error
    );
    assert!(s.agents["a"].running.is_empty());
}

#[test]
fn an_attempt_past_its_task_timeout_fails_and_its_container_is_stopped() {
    use crate::engine::RunLimits;
    use crate::scheduler::timeouts_due;
    let mut s = ClusterState::default();
    s.apply(1, register("a", 4.0));
    let limits = RunLimits {
        task_timeout_ms: BTreeMap::from([("make-data".to_string(), 2_000)]),
        ..Default::default()
    };
    s.apply(2, create_limited("r1", limits, 0));
    s.apply(3, assign("r1", "make-data", 1, "a")); // assigned at 5
    assert!(timeouts_due(&s, 2_004).is_empty());
    let due = timeouts_due(&s, 2_005);
    let key = AttemptKey {
        run_id: "r1".into(),
        task_id: "make-data".into(),
        attempt: 1,
    };
    assert_eq!(
        due,
        vec![Command::TimeOutAttempt {
            attempt: key.clone(),
            at: 2_005
        }]
    );
    let applied = s.apply(4, due[0].clone());
    assert_eq!(applied.result, Ok(Outcome::TimedOut(true)));
    assert!(applied
        .events
        .iter()
        .any(|e| matches!(e, Event::AttemptCanceled { attempt, .. } if *attempt == key)));
    let t = &s.runs["r1"].tasks["make-data"];
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!(t.error.as_deref(), Some("timed out after 2s"));
    assert!(s.agents["a"].running.is_empty(), "capacity released");
    // The late report of the stopped container changes nothing; nor does a repeat.
    let late = s.apply(
        5,
        Command::AttemptFinished {
            attempt: key.clone(),
            outcome: StepOutcome::Canceled,
            at: 2_100,
        },
    );
    assert!(matches!(
        late.result,
        Ok(Outcome::ResultRecorded(OutcomeEffect::Ignored(_)))
    ));
    let again = s.apply(
        6,
        Command::TimeOutAttempt {
            attempt: key,
            at: 3_000,
        },
    );
    assert_eq!(again.result, Ok(Outcome::TimedOut(false)));
    assert_eq!(s.runs["r1"].state, RunState::Failed);
}

#[test]
fn durations_read_well_in_messages() {
    use crate::engine::human_ms;
    assert_eq!(human_ms(2_000), "2s");
    assert_eq!(human_ms(90_000), "1m30s");
    assert_eq!(human_ms(86_400_000 + 5), "1d5ms");
    assert_eq!(human_ms(0), "0ms");
}

fn gpu_spec(count: u32, model: &str) -> crate::ir::PipelineSpec {
    let mut spec = parse_pipeline(LINEAR).unwrap();
    for e in spec.executors.values_mut() {
        if let ExecutorSpec::Container(c) = e {
            c.resources = ResourceRequest {
                accelerator_count: count,
                accelerator_type: Some(model.into()),
                ..Default::default()
            };
        }
    }
    spec
}

fn create_spec(run_id: &str, spec: crate::ir::PipelineSpec, at: i64, priority: i32) -> Command {
    let parameters = [
        ("rows".to_string(), json!(1)),
        ("factor".to_string(), json!(1.0)),
    ]
    .into();
    Command::CreateRun(NewRun {
        pipeline_root: "file:///x".into(),
        priority,
        ..new_run(run_id, spec, parameters, at)
    })
}

fn register_gpus(id: &str, model: &str, n: usize) -> Command {
    Command::RegisterAgent {
        agent_id: id.into(),
        inventory: HostInventory {
            hostname: id.into(),
            cpu_cores: 16.0,
            memory_bytes: 64 << 30,
            gpus: (0..n)
                .map(|i| gantry_model::GpuDevice {
                    index: i as u32,
                    uuid: format!("GPU-{id}-{i}"),
                    name: model.into(),
                    memory_total_bytes: 80 << 30,
                    memory_free_bytes: 80 << 30,
                    healthy: true,
                    utilization_percent: None,
                    mig_enabled: None,
                })
                .collect(),
            ..Default::default()
        },
        labels: BTreeMap::new(),
        taints: vec![],
        at: 0,
    }
}

fn place(run: &str, task: &str, agent: &str, gpus: &[&str]) -> Command {
    Command::AssignAttempts {
        placements: vec![Placement {
            run_id: run.into(),
            task_id: task.into(),
            attempt: 1,
            agent_id: agent.into(),
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
        }],
        at: 5,
    }
}

#[test]
fn gpus_are_assigned_by_uuid_once_and_freed_when_the_attempt_ends() {
    let mut s = ClusterState::default();
    s.apply(1, register_gpus("h", "NVIDIA H100 80GB HBM3", 2));
    s.apply(2, create_spec("r1", gpu_spec(1, "H100"), 1, 0));
    s.apply(3, create_spec("r2", gpu_spec(1, "H100"), 2, 0));
    // Wrong count, unknown UUID, wrong model: refused at apply.
    for (i, gpus) in [&[][..], &["GPU-h-0", "GPU-h-1"], &["GPU-x-0"]]
        .iter()
        .enumerate()
    {
        let applied = s.apply(4 + i as u64, place("r1", "make-data", "h", gpus));
        assert_eq!(applied.result, Ok(Outcome::Assigned(vec![])), "{gpus:?}");
    }
    let applied = s.apply(10, place("r1", "make-data", "h", &["GPU-h-1"]));
    assert!(matches!(applied.result, Ok(Outcome::Assigned(ref d)) if d.len() == 1));
    assert_eq!(s.agents["h"].gpus_in_use.len(), 1);
    let step = crate::engine::step_spec(&s.runs["r1"], &"make-data".into(), 1).unwrap();
    assert_eq!(
        step.gpus,
        vec!["GPU-h-1".to_string()],
        "the agent is told which GPU"
    );
    // A stale plan giving the same GPU to another attempt changes nothing.
    let applied = s.apply(11, place("r2", "make-data", "h", &["GPU-h-1"]));
    assert_eq!(applied.result, Ok(Outcome::Assigned(vec![])));
    s.apply(12, finished("r1", "make-data", 1));
    assert!(s.agents["h"].gpus_in_use.is_empty());
    let applied = s.apply(13, place("r2", "make-data", "h", &["GPU-h-1"]));
    assert!(matches!(applied.result, Ok(Outcome::Assigned(ref d)) if d.len() == 1));
}

/// The leader's placer rebuilds only the agents whose counter moved: every change to what
/// placement sees of an agent must move it, on every replica alike.
#[test]
fn every_change_placement_sees_moves_the_agents_counter() {
    let mut s = ClusterState::default();
    let mut last = None;
    let mut moved = |s: &ClusterState, what: &str| {
        let now = s.agents["h"].changes;
        assert_ne!(Some(now), last, "{what}");
        last = Some(now);
    };
    s.apply(1, register_gpus("h", "NVIDIA H100 80GB HBM3", 2));
    moved(&s, "registered");
    s.apply(2, create_spec("r1", gpu_spec(1, "H100"), 1, 0));
    s.apply(3, place("r1", "make-data", "h", &["GPU-h-1"]));
    moved(&s, "assigned");
    let before = s.agents["h"].changes;
    s.apply(4, place("r1", "make-data", "h", &["GPU-h-1"]));
    assert_eq!(
        s.agents["h"].changes, before,
        "a stale placement changes nothing"
    );
    s.apply(5, finished("r1", "make-data", 1));
    moved(&s, "released");
    s.apply(
        6,
        Command::SetAgentDraining {
            agent_id: "h".into(),
            draining: true,
        },
    );
    moved(&s, "drained");
    s.apply(
        7,
        Command::UpdateInventory {
            agent_id: "h".into(),
            inventory: HostInventory::default(),
        },
    );
    moved(&s, "inventory");
    s.apply(
        8,
        Command::DeclareAgentLost {
            agent_id: "h".into(),
            at: 8,
        },
    );
    moved(&s, "lost");
    s.apply(9, register_gpus("h", "NVIDIA H100 80GB HBM3", 2));
    moved(&s, "registered again");
}

#[test]
fn an_unschedulable_task_fails_its_run_at_once_and_only_while_ready() {
    let mut s = ClusterState::default();
    s.apply(1, create_spec("r1", gpu_spec(1, "H100"), 1, 0));
    let fail = |reason: &str| Command::FailUnschedulable {
        tasks: vec![Unschedulable {
            run_id: "r1".into(),
            task_id: "make-data".into(),
            reason: reason.into(),
        }],
        at: 7,
    };
    let applied = s.apply(
        2,
        fail("no connected agent could ever run it: a: has 0 of the 1 H100 GPU(s) needed"),
    );
    assert_eq!(applied.result, Ok(Outcome::Unschedulable(1)));
    let run = &s.runs["r1"];
    let t = &run.tasks["make-data"];
    assert_eq!(t.state, TaskState::Failed);
    assert!(t
        .error
        .as_deref()
        .unwrap()
        .starts_with("unschedulable: no connected agent"));
    assert!(t.attempts.is_empty());
    assert_eq!(
        run.state,
        crate::engine::RunState::Failed,
        "nothing else can run"
    );
    assert_eq!(
        s.apply(3, fail("again")).result,
        Ok(Outcome::Unschedulable(0))
    );
}

#[test]
fn ready_steps_come_by_run_priority_then_age() {
    use crate::scheduler::ready_steps;
    let mut s = ClusterState::default();
    s.apply(1, create_spec("old", gpu_spec(0, ""), 1, 0));
    s.apply(2, create_spec("urgent", gpu_spec(0, ""), 2, 5));
    s.apply(3, create_spec("newer", gpu_spec(0, ""), 3, 0));
    let order: Vec<RunId> = ready_steps(&s, 10).into_iter().map(|r| r.run_id).collect();
    assert_eq!(order, ["urgent", "old", "newer"]);
}

#[test]
fn a_lost_agents_attempts_are_placed_again_apart_from_the_retry_policy() {
    use crate::engine::{OutcomeEffect, MAX_LOST_ATTEMPTS};
    use crate::scheduler::{agent_views, ready_steps};
    let mut s = ClusterState::default();
    let mut i = 0;
    let mut apply = |s: &mut ClusterState, c: Command| {
        i += 1;
        s.apply(i, c)
    };
    apply(&mut s, register("a", 4.0));
    apply(&mut s, register("b", 4.0));
    // LINEAR has no retry policy: a failure would end the task.
    apply(&mut s, create("r1", None, 1));
    apply(&mut s, assign("r1", "make-data", 1, "a"));
    let lost = |agent: &str| Command::DeclareAgentLost {
        agent_id: agent.into(),
        at: 20,
    };
    let applied = apply(&mut s, lost("a"));
    assert_eq!(applied.result, Ok(Outcome::AgentLost(1)));
    let t = &s.runs["r1"].tasks["make-data"];
    assert_eq!(t.state, TaskState::Ready, "placed again, not failed");
    assert!(matches!(
        t.attempts[0].outcome,
        Some(StepOutcome::Lost { .. })
    ));
    assert!(s.agents["a"].running.is_empty());
    assert_eq!(s.agents["a"].cpu_allocated, 0.0);
    assert_eq!(s.agents["a"].lost_at, Some(20));
    // Still attached or not, a lost agent gets nothing until it registers again.
    let both: BTreeSet<AgentId> = ["a".into(), "b".into()].into();
    let views = agent_views(&s, &both);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].agent_id, "b");
    let next = ready_steps(&s, 20);
    assert_eq!(
        (next[0].task_id.as_str(), next[0].attempt),
        ("make-data", 2)
    );
    // The lost agent's late report of attempt 1 changes nothing.
    let before = s.clone();
    let late = apply(&mut s, finished("r1", "make-data", 1));
    assert!(matches!(
        late.result,
        Ok(Outcome::ResultRecorded(OutcomeEffect::Ignored(_)))
    ));
    s.applied_index = before.applied_index;
    assert_eq!(s, before);
    apply(&mut s, register("a", 4.0));
    assert_eq!(
        s.agents["a"].lost_at, None,
        "registering again brings it back"
    );

    // Losing every agent that runs it, again and again: the step fails in the end.
    for attempt in 2..=MAX_LOST_ATTEMPTS + 1 {
        apply(&mut s, assign("r1", "make-data", attempt, "b"));
        apply(&mut s, lost("b"));
        apply(&mut s, register("b", 4.0));
    }
    let t = &s.runs["r1"].tasks["make-data"];
    assert_eq!(t.state, TaskState::Failed, "{t:#?}");
    assert!(
        t.error
            .as_deref()
            .unwrap()
            .ends_with("(4 attempts lost with their agents)"),
        "{:?}",
        t.error
    );
    assert_eq!(
        apply(&mut s, lost("nobody")).result,
        Err(Rejection::AgentNotFound("nobody".into()))
    );
}

#[test]
fn tokens_are_created_once_by_bootstrap_and_revoked_by_commands_replayed_alike() {
    use super::acl::{AclError, Role, TokenRecord};
    let token = |name: &str, digit: char| TokenRecord {
        accessor: format!("acc-{name}"),
        name: name.into(),
        role: Role::Submitter,
        secret_sha256: digit.to_string().repeat(64),
        created_at: 5,
        expires_at: None,
        created_by: Some("root".into()),
    };
    let log = [
        Command::AclBootstrap {
            token: token("root", 'a'),
        },
        Command::AclBootstrap {
            token: token("second", 'b'),
        },
        Command::CreateToken {
            token: token("ci", 'c'),
        },
        Command::RevokeToken {
            accessor: "acc-ci".into(),
        },
    ];
    let mut s = ClusterState::default();
    let results: Vec<_> = log
        .iter()
        .enumerate()
        .map(|(i, c)| s.apply(i as u64 + 1, c.clone()).result)
        .collect();
    assert_eq!(results[0], Ok(Outcome::TokenCreated));
    assert_eq!(
        results[1],
        Err(Rejection::Acl(AclError::AlreadyBootstrapped))
    );
    assert_eq!(results[2], Ok(Outcome::TokenCreated));
    assert!(matches!(results[3], Ok(Outcome::TokenRevoked(ref t)) if t.name == "ci"));
    assert!(s.acl.token(&"a".repeat(64)).is_some());
    assert!(s.acl.token(&"c".repeat(64)).is_none());
    // The commands survive the log's JSON, and a replay gives the same tokens.
    let mut replay = ClusterState::default();
    for (i, c) in log.iter().enumerate() {
        let back: Command = serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
        replay.apply(i as u64 + 1, back);
    }
    assert_eq!(replay.acl, s.acl);
}

#[test]
fn a_member_store_is_recorded_once_and_a_different_one_is_refused_until_forgotten() {
    let mut s = ClusterState::default();
    let record = |node, store| Command::RecordMemberStore { node, store };
    let out = s.apply(1, record(3, 0xaa)).result;
    assert_eq!(out, Ok(Outcome::MemberStoreRecorded(true)));
    assert_eq!(
        s.apply(2, record(3, 0xaa)).result,
        Ok(Outcome::MemberStoreRecorded(false))
    );
    // A wiped copy of node 3 speaks from another store: the record stays.
    assert_eq!(
        s.apply(3, record(3, 0xbb)).result,
        Err(Rejection::MemberStoreConflict {
            node: 3,
            known: 0xaa,
            got: 0xbb
        })
    );
    assert_eq!(s.member_stores.get(&3), Some(&0xaa));

    // Removed, it may join again with its new store.
    let forget = |node| Command::ForgetMemberStore { node };
    assert_eq!(
        s.apply(4, forget(3)).result,
        Ok(Outcome::MemberStoreForgotten(true))
    );
    assert_eq!(
        s.apply(5, forget(3)).result,
        Ok(Outcome::MemberStoreForgotten(false))
    );
    assert_eq!(
        s.apply(6, record(3, 0xbb)).result,
        Ok(Outcome::MemberStoreRecorded(true))
    );

    // The records are part of the state a snapshot carries.
    let bytes = serde_json::to_vec(&s).unwrap();
    let back: ClusterState = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back.member_stores, s.member_stores);
}

/// r1 makes a cache entry, then is canceled at 21; r2 is canceled at 31; r3 stays pending.
fn retention_state() -> ClusterState {
    use crate::engine::CachePolicy;
    let mut s = ClusterState::default();
    let cancel = |run: &str, at| Command::CancelRun {
        run_id: run.into(),
        at,
    };
    let cmds = vec![
        register("a", 4.0),
        create_with("r1", 7, CachePolicy::default(), 10),
        assign("r1", "make-data", 1, "a"),
        make_data_succeeded("r1", 20),
        cancel("r1", 21),
        create("r2", Some("req-2"), 30),
        cancel("r2", 31),
        create("r3", Some("req-3"), 40),
    ];
    for (i, c) in cmds.into_iter().enumerate() {
        s.apply(i as u64 + 1, c);
    }
    assert_eq!(
        s.runs["r1"].finished_at,
        Some(21),
        "{:?}",
        s.runs["r1"].state
    );
    assert_eq!(s.runs["r2"].finished_at, Some(31));
    assert!(!s.runs["r3"].state.is_terminal());
    assert_eq!(s.cache.len(), 1);
    s
}

#[test]
fn retention_picks_finished_runs_past_their_ttl_or_over_the_count_oldest_first() {
    use retention::{runs_to_remove, RetentionPolicy};
    let s = retention_state();
    let ids = |v: Vec<RunId>| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    let keep = RetentionPolicy::default();
    assert!(runs_to_remove(&s, &keep, i64::MAX, 100).is_empty());

    let days = RetentionPolicy {
        retain_runs_for_ms: Some(100),
        ..Default::default()
    };
    assert!(runs_to_remove(&s, &days, 120, 100).is_empty());
    assert_eq!(ids(runs_to_remove(&s, &days, 121, 100)), ["r1"]);
    assert_eq!(ids(runs_to_remove(&s, &days, 10_000, 100)), ["r1", "r2"]);
    assert_eq!(ids(runs_to_remove(&s, &days, 10_000, 1)), ["r1"], "batch");

    let count = RetentionPolicy {
        max_finished_runs: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(runs_to_remove(&s, &count, 0, 100)), ["r1"]);
    let none = RetentionPolicy {
        max_finished_runs: Some(0),
        ..Default::default()
    };
    assert_eq!(ids(runs_to_remove(&s, &none, 0, 100)), ["r1", "r2"]);

    // A run's own ttl wins over the policy's, both ways.
    let mut s = s;
    Arc::make_mut(s.runs.get_mut("r2").unwrap()).limits.ttl_ms = Some(5);
    Arc::make_mut(s.runs.get_mut("r1").unwrap()).limits.ttl_ms = Some(1_000_000);
    assert_eq!(ids(runs_to_remove(&s, &keep, 36, 100)), ["r2"]);
    assert_eq!(ids(runs_to_remove(&s, &days, 10_000, 100)), ["r2"]);
}

#[test]
fn removing_runs_takes_their_request_ids_and_cache_entries_and_leaves_active_runs() {
    let mut s = retention_state();
    let remove = |ids: &[&str]| Command::RemoveRuns {
        run_ids: ids.iter().map(|i| RunId::from(*i)).collect(),
    };
    let r1_data = "s3://bucket/root/r1/make-data/attempt-1/data";
    assert!(s.artifact_uris_in_use().contains(r1_data));
    let out = s.apply(20, remove(&["r1", "r2", "r3", "nope"]));
    assert!(!s.artifact_uris_in_use().contains(r1_data));
    assert_eq!(
        out.result,
        Ok(Outcome::RunsRemoved(vec!["r1".into(), "r2".into()]))
    );
    assert_eq!(
        out.events,
        vec![Event::RunsRemoved {
            run_ids: vec!["r1".into(), "r2".into()],
        }]
    );
    assert_eq!(
        s.runs.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["r3"]
    );
    assert_eq!(s.run_order.len(), 1);
    assert_eq!(
        s.request_ids.keys().map(String::as_str).collect::<Vec<_>>(),
        ["req-3"]
    );
    assert!(s.cache.is_empty(), "r1's entry went with it");
    // Again: nothing left to remove, no event.
    let again = s.apply(21, remove(&["r1", "r2"]));
    assert_eq!(again.result, Ok(Outcome::RunsRemoved(vec![])));
    assert!(again.events.is_empty());
    // A removed request id may be used again.
    let out = s.apply(22, create("r4", Some("req-2"), 50)).result;
    assert_eq!(
        out,
        Ok(Outcome::RunCreated {
            run_id: "r4".into(),
            existing: false
        })
    );
}

#[test]
fn a_run_retried_after_the_plan_was_made_is_not_removed() {
    let mut s = retention_state();
    let due = retention::runs_to_remove(
        &s,
        &retention::RetentionPolicy {
            max_finished_runs: Some(0),
            ..Default::default()
        },
        100,
        10,
    );
    assert_eq!(due.len(), 2);
    let retried = s.apply(
        20,
        Command::RetryRun {
            run_id: "r2".into(),
            at: 60,
        },
    );
    assert_eq!(retried.result, Ok(Outcome::Retried));
    let out = s.apply(21, Command::RemoveRuns { run_ids: due }).result;
    assert_eq!(out, Ok(Outcome::RunsRemoved(vec!["r1".into()])));
    assert!(s.runs.contains_key("r2"));
}

#[test]
fn only_idle_agents_lost_long_enough_are_forgotten() {
    use retention::{agents_to_forget, RetentionPolicy};
    let mut s = ClusterState::default();
    s.apply(1, register("idle", 4.0));
    s.apply(2, register("busy", 4.0));
    s.apply(3, register("alive", 4.0));
    s.apply(4, create("r1", None, 5));
    s.apply(5, assign("r1", "make-data", 1, "busy"));
    for (i, agent) in ["idle", "busy"].into_iter().enumerate() {
        s.apply(
            6 + i as u64,
            Command::DeclareAgentLost {
                agent_id: agent.into(),
                at: 100,
            },
        );
    }
    let policy = RetentionPolicy {
        forget_lost_agents_after_ms: Some(50),
        ..Default::default()
    };
    assert!(agents_to_forget(&s, &policy, 149, 10).is_empty());
    let due = agents_to_forget(&s, &policy, 150, 10);
    // The busy agent's attempt ended LOST with it, so it is idle too.
    assert!(s.agents["busy"].running.is_empty());
    assert_eq!(
        due.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        ["busy", "idle"]
    );
    assert!(agents_to_forget(&s, &RetentionPolicy::default(), i64::MAX, 10).is_empty());

    // Apply checks again: the alive agent is not forgotten even if named.
    let out = s.apply(
        10,
        Command::ForgetLostAgents {
            agent_ids: vec!["idle".into(), "alive".into()],
        },
    );
    assert_eq!(out.result, Ok(Outcome::AgentsForgotten(1)));
    assert!(!s.agents.contains_key("idle"));
    assert!(s.agents.contains_key("alive"));
}

#[test]
fn a_finished_run_an_agent_still_holds_an_attempt_of_is_kept() {
    use crate::engine::RunState;
    let mut s = retention_state();
    s.apply(20, assign("r3", "make-data", 1, "a"));
    assert!(s.agents["a"].running.iter().any(|k| k.run_id == "r3"));
    // However the run came to be over while its attempt runs, its result must find it.
    let run = Arc::make_mut(s.runs.get_mut("r3").unwrap());
    run.state = RunState::Failed;
    run.finished_at = Some(41);
    let all = retention::RetentionPolicy {
        max_finished_runs: Some(0),
        ..Default::default()
    };
    let due = retention::runs_to_remove(&s, &all, 1_000, 10);
    assert!(!due.iter().any(|r| r == "r3"), "{due:?}");
    let out = s
        .apply(
            21,
            Command::RemoveRuns {
                run_ids: vec!["r3".into()],
            },
        )
        .result;
    assert_eq!(out, Ok(Outcome::RunsRemoved(vec![])));
}

/// The leader's pass walks only the runs its index names for time-outs and cache hits: it must
/// find exactly what a walk of every run finds, also in a state decoded from a snapshot (whose
/// index is built by the next apply) and after runs are removed.
#[test]
fn time_outs_and_cache_hits_are_found_through_the_index_as_by_a_walk_of_every_run() {
    use crate::engine::{CachePolicy, RunLimits};
    use crate::scheduler::{cache_candidates, timeouts_due};
    let mut s = ClusterState::default();
    let mut i = 0;
    let mut apply = |s: &mut ClusterState, c: Command| {
        i += 1;
        s.apply(i, c)
    };
    apply(&mut s, register("a", 8.0));
    let run_timeout = RunLimits {
        timeout_ms: Some(1_000),
        ..Default::default()
    };
    let task_timeout = RunLimits {
        task_timeout_ms: BTreeMap::from([("make-data".to_string(), 500)]),
        ..Default::default()
    };
    apply(&mut s, create_limited("t-run", run_timeout, 100));
    apply(&mut s, create_limited("t-none", RunLimits::default(), 100));
    apply(&mut s, create_limited("t-task", task_timeout, 100));
    apply(&mut s, assign("t-task", "make-data", 1, "a"));
    // A success that the next runs with the same inputs may reuse, and one that may not.
    apply(
        &mut s,
        create_with("c-first", 7, CachePolicy::default(), 10),
    );
    apply(&mut s, assign("c-first", "make-data", 1, "a"));
    apply(&mut s, make_data_succeeded("c-first", 20));
    apply(&mut s, create_with("c-hit", 7, CachePolicy::default(), 30));
    let off = CachePolicy {
        enabled: false,
        ..Default::default()
    };
    apply(&mut s, create_with("c-off", 7, off, 31));

    let every_run = |s: &ClusterState| {
        let mut full = s.clone();
        full.watch = Default::default();
        (timeouts_due(&full, 5_000), cache_candidates(&full, 40))
    };
    let (due, hits) = every_run(&s);
    let ids = |due: &[Command]| -> Vec<String> {
        due.iter()
            .map(|c| match c {
                Command::TimeOutRun { run_id, .. } => format!("run {run_id}"),
                Command::TimeOutAttempt { attempt, .. } => format!("attempt {}", attempt.run_id),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(ids(&due), ["run t-run", "attempt t-task"]);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].run_id, "c-hit");
    assert_eq!(timeouts_due(&s, 5_000), due);
    assert_eq!(cache_candidates(&s, 40), hits);
    let watched: Vec<&str> = s.watch.timed().unwrap().map(|r| r.as_str()).collect();
    assert_eq!(
        watched,
        ["t-run", "t-task"],
        "runs without timers are not walked"
    );

    // Decoded from a snapshot: not built, the walks cover every run; the next apply builds it.
    let mut decoded: ClusterState =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert!(decoded.watch.timed().is_none());
    assert_eq!(timeouts_due(&decoded, 5_000), due);
    assert_eq!(cache_candidates(&decoded, 40), hits);
    apply(&mut decoded, register("b", 1.0));
    assert!(decoded.watch.timed().is_some());
    assert_eq!(timeouts_due(&decoded, 5_000), due);
    assert_eq!(cache_candidates(&decoded, 40), hits);

    // A removed run leaves the index with it.
    apply(
        &mut s,
        Command::TimeOutRun {
            run_id: "t-run".into(),
            at: 5_000,
        },
    );
    assert!(s.runs["t-run"].state.is_terminal());
    apply(
        &mut s,
        Command::RemoveRuns {
            run_ids: vec!["t-run".into()],
        },
    );
    assert!(!s.runs.contains_key("t-run"));
    let watched: Vec<&str> = s.watch.timed().unwrap().map(|r| r.as_str()).collect();
    assert_eq!(watched, ["t-task"]);
    assert_eq!(
        every_run(&s),
        (timeouts_due(&s, 5_000), cache_candidates(&s, 40))
    );
}

/// `cmd` (a CreateRun) with what the KFP API adds: its run info and request-id window.
fn with_kfp(mut cmd: Command, run_info: Option<catalog::RunInfo>, window: Option<i64>) -> Command {
    if let Command::CreateRun(NewRun {
        info,
        request_window_ms,
        ..
    }) = &mut cmd
    {
        *info = run_info.map(Box::new);
        *request_window_ms = window;
    }
    cmd
}

/// A firing of recurring run `sched` for `tick`, as the leader proposes it.
fn fire(run_id: &str, sched: &str, tick: i64, request_id: Option<&str>) -> Command {
    let info = catalog::RunInfo {
        display_name: "nightly".into(),
        experiment_id: Some("e1".into()),
        recurring_run_id: Some(sched.into()),
        scheduled_at: Some(tick),
        ..Default::default()
    };
    with_kfp(create(run_id, request_id, tick * 1000), Some(info), None)
}

#[test]
fn a_recurring_run_fires_each_tick_once_and_never_past_its_concurrency() {
    let mut st = ClusterState::default();
    let ok = |a: Applied| assert!(a.result.is_ok(), "{:?}", a.result);
    ok(st.apply(
        1,
        Command::CreateExperiment {
            experiment: catalog::Experiment {
                id: "e1".into(),
                display_name: "Default".into(),
                description: String::new(),
                created_at: 0,
                archived: false,
            },
        },
    ));
    let sched = crate::schedule::RecurringRun {
        id: "s1".into(),
        display_name: "nightly".into(),
        description: String::new(),
        experiment_id: "e1".into(),
        pipeline_yaml: LINEAR.into(),
        pipeline_version: None,
        parameters: Default::default(),
        service_account: String::new(),
        trigger: crate::schedule::Trigger::Periodic { interval_secs: 2 },
        start_time: None,
        end_time: None,
        max_concurrency: 1,
        no_catchup: false,
        enabled: true,
        created_at: 100_000,
        updated_at: 100_000,
        last_fired: None,
    };
    ok(st.apply(
        2,
        Command::CreateRecurringRun {
            recurring: Box::new(sched),
        },
    ));
    assert_eq!(
        st.recurring["s1"].due(102, st.active_runs_of("s1")),
        Some(102)
    );
    ok(st.apply(3, fire("r1", "s1", 102, Some("s1/102"))));
    assert_eq!(st.recurring["s1"].last_fired, Some(102));
    // The same tick again from a new leader: the request id gives the first run back.
    let again = st.apply(4, fire("r1-again", "s1", 102, Some("s1/102")));
    assert_eq!(
        again.result,
        Ok(Outcome::RunCreated {
            run_id: "r1".into(),
            existing: true
        })
    );
    // The tick once more without the request id (say, its run was removed by retention):
    // refused, nothing created.
    let dup = st.apply(5, fire("r1-dup", "s1", 102, None));
    assert!(matches!(
        dup.result,
        Err(Rejection::Catalog(catalog::CatalogError::NotFired(_)))
    ));
    // The next tick while r1 still runs: max_concurrency 1 holds it back, at apply too.
    assert_eq!(st.recurring["s1"].due(110, st.active_runs_of("s1")), None);
    let full = st.apply(6, fire("r2", "s1", 104, Some("s1/104")));
    assert!(full.result.is_err(), "{:?}", full.result);
    assert!(!st.runs.contains_key(&RunId::from("r2")));
    assert_eq!(st.recurring["s1"].last_fired, Some(102));
    // Once r1 ends, the next tick (104, caught up) fires.
    ok(st.apply(
        7,
        Command::CancelRun {
            run_id: "r1".into(),
            at: 105_000,
        },
    ));
    assert!(st.runs[&RunId::from("r1")].state.is_terminal());
    assert_eq!(
        st.recurring["s1"].due(110, st.active_runs_of("s1")),
        Some(104)
    );
    // Disabled, it fires nothing, and apply refuses a firing in flight.
    ok(st.apply(
        8,
        Command::SetRecurringRunEnabled {
            id: "s1".into(),
            enabled: false,
            at: 106_000,
        },
    ));
    assert_eq!(st.recurring["s1"].due(110, 0), None);
    assert!(st
        .apply(9, fire("r3", "s1", 104, Some("s1/104")))
        .result
        .is_err());
    // The experiment cannot go while the recurring run belongs to it.
    assert!(st
        .apply(
            10,
            Command::DeleteExperiment {
                experiment_id: "e1".into()
            }
        )
        .result
        .is_err());
}

#[test]
fn a_request_id_with_a_window_names_its_run_only_within_it() {
    let with_window = |run: &str, at: i64| with_kfp(create(run, Some("key"), at), None, Some(1000));
    let mut st = ClusterState::default();
    let first = st.apply(1, with_window("r1", 10_000)).result;
    assert_eq!(
        first,
        Ok(Outcome::RunCreated {
            run_id: "r1".into(),
            existing: false
        })
    );
    // Within the window: the first run.
    let again = st.apply(2, with_window("r2", 10_900)).result;
    assert_eq!(
        again,
        Ok(Outcome::RunCreated {
            run_id: "r1".into(),
            existing: true
        })
    );
    // After it: a new run, which the key now names.
    let later = st.apply(3, with_window("r3", 11_500)).result;
    assert_eq!(
        later,
        Ok(Outcome::RunCreated {
            run_id: "r3".into(),
            existing: false
        })
    );
    assert_eq!(st.request_ids["key"], RunId::from("r3"));
    assert_eq!(st.runs.len(), 2);
    // Without a window (Gantry's own request ids) the id names its run for as long as it is kept.
    let plain = st.apply(4, create("r4", Some("key"), 99_000)).result;
    assert_eq!(
        plain,
        Ok(Outcome::RunCreated {
            run_id: "r3".into(),
            existing: true
        })
    );
}

const GATED: &str = include_str!("testdata/approval.yaml");

fn create_gated(run_id: &str, at: i64) -> Command {
    crate::engine::check_supported(&parse_pipeline(GATED).unwrap()).unwrap();
    Command::CreateRun(new_run_of(run_id, GATED, at))
}

fn decision(approved: bool, by: &str, reason: &str, at: i64) -> crate::engine::approval::Decision {
    crate::engine::approval::Decision {
        approved,
        by: by.into(),
        reason: reason.into(),
        at,
    }
}

#[test]
fn an_approval_gate_holds_its_step_until_a_person_decides() {
    let mut st = ClusterState::default();
    assert!(st.apply(1, create_gated("r1", 1_000)).result.is_ok());
    let task: TaskId = "deploy".into();
    assert!(st.runs[&RunId::from("r1")].tasks.contains_key(&task));
    // READY, but not placed: it waits.
    assert!(crate::scheduler::ready_steps(&st, 2_000).is_empty());
    let run = &st.runs[&RunId::from("r1")];
    assert!(crate::engine::approval::awaiting(run, &run.tasks[&task]));
    // Approved: placeable, and who approved is kept.
    let a = st.apply(
        2,
        Command::DecideApproval {
            run_id: "r1".into(),
            task_id: task.clone(),
            decision: decision(true, "token alice (admin)", "", 3_000),
        },
    );
    assert_eq!(a.result, Ok(Outcome::ApprovalDecided));
    let steps = crate::scheduler::ready_steps(&st, 4_000);
    assert_eq!(steps.len(), 1);
    assert_eq!(
        st.runs[&RunId::from("r1")].tasks[&task]
            .approval
            .as_ref()
            .map(|d| d.by.as_str()),
        Some("token alice (admin)")
    );
    // A second decision is refused and changes nothing.
    let before = st.clone();
    let again = st.apply(
        3,
        Command::DecideApproval {
            run_id: "r1".into(),
            task_id: task.clone(),
            decision: decision(false, "token bob (admin)", "late", 5_000),
        },
    );
    assert!(
        matches!(again.result, Err(Rejection::Approval(_))),
        "{:?}",
        again.result
    );
    assert_eq!(st.runs, before.runs);

    // Rejected: the step fails with the reason, and so does the run.
    assert!(st.apply(4, create_gated("r2", 10_000)).result.is_ok());
    st.apply(
        5,
        Command::DecideApproval {
            run_id: "r2".into(),
            task_id: task.clone(),
            decision: decision(false, "token bob (admin)", "accuracy too low", 11_000),
        },
    )
    .result
    .unwrap();
    let r2 = &st.runs[&RunId::from("r2")];
    assert_eq!(r2.state, RunState::Failed);
    assert!(
        r2.error
            .as_deref()
            .unwrap_or("")
            .contains("rejected by token bob (admin): accuracy too low"),
        "{:?}",
        r2.error
    );

    // No decision within the gate's 1h: the leader's pass rejects it in gantry's name.
    assert!(st.apply(6, create_gated("r3", 20_000)).result.is_ok());
    let due = crate::scheduler::timeouts_due(&st, 20_000 + 3_600_000 - 1);
    assert!(!due
        .iter()
        .any(|c| matches!(c, Command::DecideApproval { run_id, .. } if run_id.as_str() == "r3")));
    let due = crate::scheduler::timeouts_due(&st, 20_000 + 3_600_000);
    let timeout = due
        .into_iter()
        .find(|c| matches!(c, Command::DecideApproval { run_id, .. } if run_id.as_str() == "r3"))
        .expect("the overdue gate is rejected");
    st.apply(7, timeout).result.unwrap();
    let r3 = &st.runs[&RunId::from("r3")];
    assert_eq!(r3.state, RunState::Failed);
    assert!(r3
        .error
        .as_deref()
        .unwrap_or("")
        .contains("no decision within its approval timeout of 1h"));

    // A task without a gate, or an unknown one, is refused by name.
    let none = st.apply(
        8,
        Command::DecideApproval {
            run_id: "r1".into(),
            task_id: "nope".into(),
            decision: decision(true, "x", "", 1),
        },
    );
    assert!(matches!(none.result, Err(Rejection::Approval(_))));
}

#[test]
fn bad_gate_annotations_are_refused_at_submit() {
    let bad = GATED.replace(
        "gantry.dev/approval: required",
        "gantry.dev/approval: maybe",
    );
    let spec = parse_pipeline(&bad).unwrap();
    let err = crate::engine::check_supported(&spec)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gantry.dev/approval") && err.contains("required"),
        "{err}"
    );
    let bad = GATED.replace("approval-timeout: 1h", "approval-timeout: soon");
    let spec = parse_pipeline(&bad).unwrap();
    let err = crate::engine::check_supported(&spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("approval-timeout"), "{err}");
}

fn add_hook(id: &str, events: notify::Events) -> Command {
    Command::AddWebhook {
        hook: notify::Webhook {
            id: id.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events,
            created_at: 0,
            created_by: None,
            delivered: 0,
        },
    }
}

/// `run task: previous -> state` for each notice, in order.
fn notices(st: &ClusterState) -> Vec<String> {
    st.notifications
        .outbox
        .iter()
        .map(|n| {
            format!(
                "{} {}: {} -> {}",
                n.run_id,
                n.task.as_ref().map(|t| t.name.as_str()).unwrap_or("(run)"),
                n.previous.as_deref().unwrap_or("-"),
                n.state
            )
        })
        .collect()
}

#[test]
fn state_changes_are_committed_as_notices_in_order_while_a_hook_exists() {
    // Without hooks nothing is kept, and the state encodes as before.
    let mut plain = ClusterState::default();
    for (i, c) in log().into_iter().enumerate() {
        plain.apply(i as u64 + 1, c);
    }
    assert!(plain.notifications.is_empty());
    assert!(!serde_json::to_string(&plain)
        .unwrap()
        .contains("notifications"));

    let mut st = ClusterState::default();
    st.apply(1, add_hook("all", notify::Events::All))
        .result
        .unwrap();
    for (i, c) in log().into_iter().enumerate() {
        st.apply(i as u64 + 2, c);
    }
    assert_eq!(
        notices(&st),
        vec![
            "r1 make-data: - -> READY",
            "r1 (run): - -> PENDING",
            "r1 make-data: READY -> RUNNING",
            "r1 (run): PENDING -> RUNNING",
            "r1 make-data: RUNNING -> FAILED",
            "r1 report: - -> SKIPPED",
            "r1 scale: - -> SKIPPED",
            "r1 (run): RUNNING -> FAILED",
            "r2 make-data: - -> READY",
            "r2 (run): - -> PENDING",
            "r2 make-data: READY -> CANCELED",
            "r2 report: - -> CANCELED",
            "r2 scale: - -> CANCELED",
            "r2 (run): PENDING -> CANCELED",
        ]
    );
    let seqs: Vec<u64> = st.notifications.outbox.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, (1..=14).collect::<Vec<_>>());
    assert_eq!(
        st.notifications.outbox[4].error.as_deref(),
        Some("exit code 1")
    );

    // Replicas replaying the same log hold the same notices; a snapshot carries them.
    let mut again = ClusterState::default();
    again.apply(1, add_hook("all", notify::Events::All));
    for (i, c) in log().into_iter().enumerate() {
        again.apply(i as u64 + 2, c);
    }
    assert_eq!(again.notifications, st.notifications);
    let decoded: ClusterState = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
    assert_eq!(decoded.notifications, st.notifications);

    // The leader's marks drop what was sent; a mark past the last notice is refused.
    let a = st.apply(
        20,
        Command::WebhookDelivered {
            id: "all".into(),
            upto: 4,
        },
    );
    assert_eq!(a.result, Ok(Outcome::WebhooksChanged));
    assert_eq!(st.notifications.outbox.front().map(|n| n.seq), Some(5));
    let before = st.notifications.clone();
    let ahead = st.apply(
        21,
        Command::WebhookDelivered {
            id: "all".into(),
            upto: 15,
        },
    );
    assert!(matches!(ahead.result, Err(Rejection::Webhook(_))));
    assert_eq!(st.notifications, before);
}

#[test]
fn an_approval_gate_is_notified_as_waiting_then_as_decided() {
    let mut st = ClusterState::default();
    st.apply(1, add_hook("runs", notify::Events::Runs))
        .result
        .unwrap();
    st.apply(2, add_hook("all", notify::Events::All))
        .result
        .unwrap();
    st.apply(3, create_gated("r1", 1_000)).result.unwrap();
    st.apply(
        4,
        Command::DecideApproval {
            run_id: "r1".into(),
            task_id: "deploy".into(),
            decision: decision(false, "token bob (admin)", "not yet", 2_000),
        },
    )
    .result
    .unwrap();
    let got = notices(&st);
    assert!(
        got.contains(&"r1 deploy: - -> WAITING_APPROVAL".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"r1 deploy: WAITING_APPROVAL -> FAILED".to_string()),
        "{got:?}"
    );
    assert_eq!(
        got.last().map(String::as_str),
        Some("r1 (run): PENDING -> FAILED")
    );
    let failed = st.notifications.outbox.back().unwrap();
    assert!(failed.error.as_deref().unwrap_or("").contains("not yet"));
    // The runs-only hook is given just the run's changes.
    let (runs_only, _) = st.notifications.pending("runs", 100).unwrap();
    assert_eq!(
        runs_only
            .iter()
            .map(|n| n.state.as_str())
            .collect::<Vec<_>>(),
        vec!["PENDING", "FAILED"]
    );
}

#[test]
fn a_task_that_mounts_a_claim_of_its_run_is_assigned_only_where_the_claim_lives() {
    let mut s = ClusterState::default();
    s.apply(1, register("a", 4.0));
    s.apply(2, register("b", 4.0));
    s.apply(
        3,
        Command::CreateRun(new_run_of(
            "r1",
            include_str!("../engine/testdata/run_volume.yaml"),
            3,
        )),
    );
    assert!(matches!(
        s.apply(4, assign("r1", "produce", 1, "b")).result,
        Ok(Outcome::Assigned(ref done)) if done.len() == 1
    ));
    let produced = Command::AttemptFinished {
        attempt: AttemptKey {
            run_id: "r1".into(),
            task_id: "produce".into(),
            attempt: 1,
        },
        outcome: StepOutcome::Succeeded {
            parameters: BTreeMap::new(),
            artifacts: BTreeMap::new(),
        },
        at: 6,
    };
    s.apply(5, produced);
    let consumers: Vec<String> = s.runs["r1"]
        .ready_tasks()
        .map(|t| t.task_id.to_string())
        .collect();
    assert_eq!(consumers.len(), 2, "{consumers:?}");
    // A stale plan puts one on the other agent: only the one on the claim's agent goes.
    let placements = vec![
        Placement {
            run_id: "r1".into(),
            task_id: consumers[0].as_str().into(),
            attempt: 1,
            agent_id: "a".into(),
            gpus: vec![],
        },
        Placement {
            run_id: "r1".into(),
            task_id: consumers[1].as_str().into(),
            attempt: 1,
            agent_id: "b".into(),
            gpus: vec![],
        },
    ];
    match s
        .apply(6, Command::AssignAttempts { placements, at: 7 })
        .result
    {
        Ok(Outcome::Assigned(done)) => {
            assert_eq!(done.len(), 1, "{done:?}");
            assert_eq!(done[0].agent_id.as_str(), "b");
        }
        other => panic!("{other:?}"),
    }
    assert!(s.agents["a"].running.is_empty());
}
