//! Engine transitions over pipelines compiled by kfp 2.16.1 (sources in tests/pipelines/).

use std::collections::BTreeMap;

use gantry_model::{AgentId, ArtifactRef, StepOutcome, TaskId};
use serde_json::{json, Value};

use super::*;
use crate::ir::{parse_pipeline, resolve_run_parameters, RetryPolicy};

const LINEAR: &str = include_str!("testdata/linear.yaml");
const CONDITIONS: &str = include_str!("testdata/conditions.yaml");
const FAILING: &str = include_str!("testdata/failing.yaml");
const SKIP_CHAIN: &str = include_str!("testdata/skip_chain.yaml");
const LOOPS: &str = include_str!("testdata/loops.yaml");
const LOOP_CONDITIONS: &str = include_str!("testdata/loop_conditions.yaml");
const ARTIFACT_LOOPS: &str = include_str!("testdata/artifact_loops.yaml");
const MACHINE_FIELDS: &str = include_str!("testdata/machine_fields.yaml");

fn new_run(yaml: &str, params: &[(&str, Value)]) -> RunRecord {
    let spec = parse_pipeline(yaml).expect("fixture parses");
    let given: BTreeMap<String, Value> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let params = resolve_run_parameters(&spec, &given).expect("parameters resolve");
    let mut run = RunRecord::new("run-1".into(), spec, "s3://bucket/root".into(), params, 0);
    advance(&mut run, 0);
    run
}

fn ready(run: &RunRecord) -> Vec<String> {
    run.ready_tasks().map(|t| t.task_id.to_string()).collect()
}

fn state(run: &RunRecord, id: &str) -> TaskState {
    run.tasks
        .get(id)
        .unwrap_or_else(|| panic!("no task {id}"))
        .state
}

fn succeed(run: &mut RunRecord, id: &str, params: Value, artifacts: &[&str], now: i64) {
    let id = &TaskId::from(id);
    let attempt = run.tasks[id].attempts.len() as u32 + 1;
    record_assignment(run, id, attempt, &"agent-a".into(), &[], now).expect("assignable");
    let spec = step_spec(run, id, attempt).expect("step spec");
    let artifacts = artifacts
        .iter()
        .map(|name| {
            let out = &spec.outputs.artifacts[*name];
            let a = ArtifactRef {
                name: name.to_string(),
                uri: out.uri.clone(),
                schema_title: out.schema_title.clone(),
                schema_version: out.schema_version.clone(),
                metadata: Default::default(),
            };
            (name.to_string(), vec![a])
        })
        .collect();
    let params = params
        .as_object()
        .map(|m| m.clone().into_iter().collect())
        .unwrap_or_default();
    let effect = record_outcome(
        run,
        id,
        attempt,
        StepOutcome::Succeeded {
            parameters: params,
            artifacts,
        },
        now + 1,
    );
    assert_eq!(effect, OutcomeEffect::Recorded);
    advance_from(run, id, now + 1);
}

fn fail(run: &mut RunRecord, id: &str, error: &str, now: i64) -> OutcomeEffect {
    let id = &TaskId::from(id);
    let attempt = run.tasks[id].attempts.len() as u32 + 1;
    record_assignment(run, id, attempt, &"agent-a".into(), &[], now).expect("assignable");
    let effect = record_outcome(
        run,
        id,
        attempt,
        StepOutcome::Failed {
            error: error.into(),
            exit_code: Some(1),
        },
        now + 1,
    );
    advance_from(run, id, now + 1);
    effect
}

#[test]
fn linear_pipeline_passes_parameters_and_artifacts_in_order() {
    let mut run = new_run(LINEAR, &[("rows", json!("7"))]);
    assert_eq!(run.state, RunState::Pending);
    assert_eq!(ready(&run), vec!["make-data"]);
    assert_eq!(run.tasks["make-data"].inputs.parameters["rows"], json!(7));

    succeed(&mut run, "make-data", json!({"Output": 7}), &["data"], 10);
    assert_eq!(run.state, RunState::Running);
    assert_eq!(ready(&run), vec!["scale"]);
    let scale = &run.tasks["scale"];
    assert_eq!(scale.inputs.parameters["factor"], json!(2.0));
    let data = &scale.inputs.artifacts["data"][0];
    assert_eq!(data.uri, "s3://bucket/root/run-1/make-data/attempt-1/data");
    assert_eq!(data.schema_title, "system.Dataset");

    succeed(&mut run, "scale", json!({"Output": 42.0}), &["scaled"], 20);
    assert_eq!(ready(&run), vec!["report"]);
    let report = &run.tasks["report"];
    assert_eq!(report.inputs.parameters["count"], json!(7));
    assert_eq!(report.inputs.parameters["total"], json!(42.0));

    succeed(&mut run, "report", json!({"Output": "7 rows"}), &[], 30);
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.finished_at, Some(31));
    assert!(run.error.is_none());
}

#[test]
fn step_spec_carries_the_executor_and_unique_output_uris() {
    let run = new_run(LINEAR, &[]);
    let a = step_spec(&run, &"make-data".into(), 1).unwrap();
    let b = step_spec(&run, &"make-data".into(), 2).unwrap();
    assert_eq!(a.container.image, "python:3.11-slim");
    assert!(a.container.args.iter().any(|x| x == "{{$}}"));
    assert_ne!(
        a.outputs.artifacts["data"].uri,
        b.outputs.artifacts["data"].uri
    );
    assert_eq!(a.inputs.parameters["rows"], json!(10));
}

#[test]
fn elif_branch_runs_and_oneof_output_reaches_the_consumer() {
    let mut run = new_run(CONDITIONS, &[("n", json!(5))]);
    assert_eq!(ready(&run), vec!["pick"]);
    succeed(&mut run, "pick", json!({"Output": 5}), &[], 10);
    assert_eq!(state(&run, "condition-branches-1"), TaskState::Running);
    assert_eq!(
        state(&run, "condition-branches-1/condition-2"),
        TaskState::Skipped
    );
    assert_eq!(
        state(&run, "condition-branches-1/condition-3"),
        TaskState::Running
    );
    assert_eq!(
        state(&run, "condition-branches-1/condition-4"),
        TaskState::Skipped
    );
    let inner = ready(&run);
    assert_eq!(inner.len(), 1, "{inner:?}");
    assert!(inner[0].starts_with("condition-branches-1/condition-3/"));
    assert_eq!(
        run.tasks[inner[0].as_str()].inputs.parameters["text"],
        json!("medium")
    );
    assert_eq!(
        run.tasks[inner[0].as_str()]
            .parent
            .as_ref()
            .map(TaskId::as_str),
        Some("condition-branches-1/condition-3")
    );

    succeed(
        &mut run,
        &inner.clone()[0],
        json!({"Output": "medium"}),
        &[],
        20,
    );
    assert_eq!(state(&run, "condition-branches-1"), TaskState::Succeeded);
    assert_eq!(ready(&run), vec!["say-4"]);
    assert_eq!(
        run.tasks["say-4"].inputs.parameters["text"],
        json!("medium")
    );
    succeed(&mut run, "say-4", json!({"Output": "medium"}), &[], 30);
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(
        run.tasks[ROOT_TASK_ID].outputs.parameters["Output"],
        json!("medium")
    );
}

#[test]
fn if_and_else_branches_follow_the_value() {
    for (n, branch) in [(50, "condition-2"), (1, "condition-4")] {
        let mut run = new_run(CONDITIONS, &[("n", json!(n))]);
        succeed(&mut run, "pick", json!({"Output": n}), &[], 10);
        let r = ready(&run);
        assert_eq!(r.len(), 1);
        assert!(
            r[0].starts_with(&format!("condition-branches-1/{branch}/")),
            "{n}: {r:?}"
        );
    }
}

#[test]
fn a_failure_skips_dependents_lets_independent_work_finish_and_fails_the_run() {
    let mut run = new_run(FAILING, &[]);
    let mut r = ready(&run);
    r.sort();
    assert_eq!(r, vec!["boom", "ok-2"]);
    record_assignment(&mut run, &"ok-2".into(), 1, &"agent-a".into(), &[], 1).unwrap();
    fail(&mut run, "boom", "boom: x", 2);
    assert_eq!(state(&run, "boom"), TaskState::Failed);
    assert_eq!(state(&run, "ok"), TaskState::Skipped);
    assert!(run.tasks["ok"]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("boom"));
    // the independent task is still running: the run is not over
    assert_eq!(run.state, RunState::Running);
    let effect = record_outcome(
        &mut run,
        &"ok-2".into(),
        1,
        StepOutcome::Succeeded {
            parameters: [("Output".to_string(), json!("independent"))].into(),
            artifacts: BTreeMap::new(),
        },
        5,
    );
    assert_eq!(effect, OutcomeEffect::Recorded);
    advance(&mut run, 5);
    assert_eq!(run.state, RunState::Failed);
    let err = run.error.clone().unwrap_or_default();
    assert!(err.contains("boom") && err.contains("boom: x"), "{err}");
}

#[test]
fn a_failure_skips_a_chain_of_dependents_within_one_result() {
    // The second skip is decided only once the first is recorded: advancing after the
    // result must look at the DAG again, not stop after one round of decisions.
    let mut run = new_run(SKIP_CHAIN, &[]);
    assert_eq!(ready(&run), vec!["boom"]);
    fail(&mut run, "boom", "boom: x", 1);
    assert_eq!(state(&run, "ok"), TaskState::Skipped);
    assert_eq!(state(&run, "ok-2"), TaskState::Skipped);
    assert_eq!(run.state, RunState::Failed);
}

#[test]
fn late_and_duplicate_reports_change_nothing() {
    let mut run = new_run(LINEAR, &[]);
    record_assignment(&mut run, &"make-data".into(), 1, &"a".into(), &[], 1).unwrap();
    let ok = StepOutcome::Succeeded {
        parameters: [("Output".to_string(), json!(10))].into(),
        artifacts: [(
            "data".to_string(),
            vec![ArtifactRef {
                name: "data".into(),
                uri: "s3://x".into(),
                schema_title: "system.Dataset".into(),
                schema_version: String::new(),
                metadata: Default::default(),
            }],
        )]
        .into(),
    };
    assert!(matches!(
        record_outcome(&mut run, &"make-data".into(), 2, ok.clone(), 2),
        OutcomeEffect::Ignored(_)
    ));
    assert_eq!(
        record_outcome(&mut run, &"make-data".into(), 1, ok.clone(), 3),
        OutcomeEffect::Recorded
    );
    let before = run.clone();
    let late_failure = StepOutcome::Failed {
        error: "late".into(),
        exit_code: Some(1),
    };
    assert!(matches!(
        record_outcome(&mut run, &"make-data".into(), 1, late_failure, 4),
        OutcomeEffect::Ignored(_)
    ));
    assert!(matches!(
        record_outcome(&mut run, &"make-data".into(), 1, ok, 5),
        OutcomeEffect::Ignored(_)
    ));
    assert_eq!(run, before);
    // a second assignment of a finished task is refused too
    assert!(record_assignment(&mut run, &"make-data".into(), 2, &"a".into(), &[], 6).is_err());
}

#[test]
fn retry_policy_reschedules_with_backoff_then_gives_up() {
    let mut spec = parse_pipeline(FAILING).unwrap();
    if let crate::ir::Implementation::Dag(d) = &mut spec.root.implementation {
        d.tasks.get_mut("boom").unwrap().retry = Some(RetryPolicy {
            max_retry_count: 1,
            backoff_duration_ms: 1000,
            backoff_factor: 2.0,
            backoff_max_duration_ms: 3_600_000,
        });
    }
    let mut run = RunRecord::new("r".into(), spec, "file:///tmp/a".into(), BTreeMap::new(), 0);
    advance(&mut run, 0);
    let effect = fail(&mut run, "boom", "first", 10);
    assert_eq!(
        effect,
        OutcomeEffect::Retrying {
            next_attempt: 2,
            not_before: 1011
        }
    );
    assert_eq!(state(&run, "boom"), TaskState::Ready);
    assert_eq!(run.tasks["boom"].not_before, Some(1011));
    assert!(run.error.is_none());
    let effect = fail(&mut run, "boom", "second", 2000);
    assert_eq!(effect, OutcomeEffect::Recorded);
    assert_eq!(state(&run, "boom"), TaskState::Failed);
    assert_eq!(run.tasks["boom"].attempts.len(), 2);
}

#[test]
fn cancel_stops_running_attempts_and_ends_the_run_canceled() {
    let mut run = new_run(FAILING, &[]);
    record_assignment(&mut run, &"boom".into(), 1, &"agent-a".into(), &[], 1).unwrap();
    let to_stop = cancel_run(&mut run, 2);
    assert_eq!(
        to_stop,
        vec![(TaskId::from("boom"), 1, AgentId::from("agent-a"))]
    );
    assert_eq!(run.state, RunState::Canceling);
    assert_eq!(state(&run, "ok-2"), TaskState::Canceled);
    advance(&mut run, 2);
    assert_eq!(run.state, RunState::Canceling);
    record_outcome(&mut run, &"boom".into(), 1, StepOutcome::Canceled, 3);
    advance(&mut run, 3);
    assert_eq!(run.state, RunState::Canceled);
    assert_eq!(state(&run, "ok"), TaskState::Canceled);
}

#[test]
fn loop_selectors_are_checked_at_submit() {
    let mut spec = parse_pipeline(LOOPS).unwrap();
    assert!(check_supported(&spec).is_ok());
    // A selector the backend could not evaluate is refused with the task named.
    let crate::ir::Implementation::Dag(dag) = &mut spec
        .components
        .get_mut("comp-for-loop-3")
        .unwrap()
        .implementation
    else {
        panic!("loop body is a DAG")
    };
    let t = dag.tasks.get_mut("describe").unwrap();
    t.parameters.get_mut("label").unwrap().selector = Some("exec(string_value)".into());
    let err = check_supported(&spec).unwrap_err().to_string();
    assert!(err.contains("describe") && err.contains("exec"), "{err}");
}

fn ids_with(run: &RunRecord, suffix: &str) -> Vec<String> {
    run.tasks
        .keys()
        .filter(|k| k.as_str().ends_with(suffix))
        .map(TaskId::to_string)
        .collect()
}

#[test]
fn a_loop_runs_one_iteration_per_item_within_its_parallelism_and_collects_in_order() {
    let mut run = new_run(LOOPS, &[]);
    let squares = |run: &RunRecord| ids_with(run, "/square");
    // parallelismLimit 2: two of the four iterations exist.
    assert_eq!(
        squares(&run),
        vec![
            "for-loop-1/iteration-0/square",
            "for-loop-1/iteration-1/square"
        ]
    );
    let it0 = &run.tasks["for-loop-1/iteration-0"];
    assert_eq!((it0.kind, it0.iteration), (TaskKind::Dag, Some(0)));
    let sq1 = &run.tasks["for-loop-1/iteration-1/square"];
    assert_eq!(sq1.iteration, Some(1));
    assert_eq!(sq1.inputs.parameters["x"], json!(2));
    assert_eq!(run.tasks["for-loop-1"].kind, TaskKind::Loop);

    // Finishing out of order: the second iteration first makes room for the third only.
    succeed(
        &mut run,
        "for-loop-1/iteration-1/square",
        json!({"Output": 4}),
        &["out"],
        10,
    );
    assert_eq!(squares(&run).len(), 3);
    assert_eq!(
        state(&run, "for-loop-1/iteration-2/square"),
        TaskState::Ready
    );
    succeed(
        &mut run,
        "for-loop-1/iteration-2/square",
        json!({"Output": 9}),
        &["out"],
        11,
    );
    succeed(
        &mut run,
        "for-loop-1/iteration-0/square",
        json!({"Output": 1}),
        &["out"],
        12,
    );
    assert_eq!(state(&run, "for-loop-1"), TaskState::Running);
    assert!(!run.tasks.contains_key("total"));
    succeed(
        &mut run,
        "for-loop-1/iteration-3/square",
        json!({"Output": 16}),
        &["out"],
        13,
    );

    // dsl.Collected: the values in iteration order, the artifacts all distinct.
    assert_eq!(state(&run, "for-loop-1"), TaskState::Succeeded);
    assert_eq!(
        run.tasks["total"].inputs.parameters["nums"],
        json!([1, 4, 9, 16])
    );
    let ds = &run.tasks["read-all"].inputs.artifacts["ds"];
    let uris: Vec<&str> = ds.iter().map(|a| a.uri.as_str()).collect();
    assert_eq!(
        uris,
        (0..4)
            .map(|i| format!(
                "s3://bucket/root/run-1/for-loop-1/iteration-{i}/square/attempt-1/out"
            ))
            .collect::<Vec<_>>()
    );
}

#[test]
fn loop_items_that_are_dicts_reach_the_body_field_by_field() {
    let run = new_run(LOOPS, &[]);
    let a = &run.tasks["for-loop-3/iteration-0/describe"];
    assert_eq!(a.inputs.parameters["label"], json!("a"));
    // The SDK types a dict field as STRING: the number arrives as its text.
    assert_eq!(a.inputs.parameters["size"], json!("1"));
    let b = &run.tasks["for-loop-3/iteration-1/describe"];
    assert_eq!(b.inputs.parameters["label"], json!("b"));
}

#[test]
fn nested_loops_over_an_upstream_output_make_one_task_per_pair() {
    let mut run = new_run(LOOPS, &[]);
    assert!(ids_with(&run, "/cell").is_empty());
    succeed(&mut run, "rows", json!({"Output": ["r1", "r2"]}), &[], 5);
    let cells = ids_with(&run, "/cell");
    assert_eq!(cells.len(), 4, "{cells:?}");
    let c = &run.tasks["for-loop-4/iteration-1/for-loop-6/iteration-0/cell"];
    assert_eq!(c.inputs.parameters["row"], json!("r2"));
    assert_eq!(c.inputs.parameters["col"], json!(1));
    assert_eq!(c.iteration, Some(0));
    assert_eq!(run.tasks["for-loop-4/iteration-1"].iteration, Some(1));
}

#[test]
fn a_failed_iteration_fails_the_loop_after_the_others_and_skips_its_consumers() {
    let mut run = new_run(LOOPS, &[("xs", json!([5, 6]))]);
    fail(&mut run, "for-loop-1/iteration-0/square", "boom", 5);
    assert_eq!(state(&run, "for-loop-1"), TaskState::Running);
    succeed(
        &mut run,
        "for-loop-1/iteration-1/square",
        json!({"Output": 36}),
        &["out"],
        6,
    );
    assert_eq!(state(&run, "for-loop-1"), TaskState::Failed);
    let err = run.tasks["for-loop-1"].error.clone().unwrap_or_default();
    assert!(err.contains("iteration 0") && err.contains("boom"), "{err}");
    assert_eq!(state(&run, "total"), TaskState::Skipped);
    // Finish the rest: the run fails with the first error.
    succeed(&mut run, "rows", json!({"Output": []}), &[], 7);
    for id in ids_with(&run, "/describe") {
        succeed(&mut run, &id, json!({"Output": "x"}), &[], 8);
    }
    assert_eq!(run.state, RunState::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").contains("boom"),
        "{:?}",
        run.error
    );
}

#[test]
fn a_retried_run_keeps_what_succeeded_and_reruns_the_rest() {
    let mut run = new_run(LOOPS, &[("xs", json!([5, 6]))]);
    assert!(
        retry_run(&mut run, 1).is_err(),
        "a running run is not retried"
    );
    fail(&mut run, "for-loop-1/iteration-0/square", "boom", 5);
    succeed(
        &mut run,
        "for-loop-1/iteration-1/square",
        json!({"Output": 36}),
        &["out"],
        6,
    );
    succeed(&mut run, "rows", json!({"Output": ["r"]}), &[], 7);
    for id in ids_with(&run, "/describe")
        .into_iter()
        .chain(ids_with(&run, "/cell"))
    {
        succeed(&mut run, &id, json!({"Output": "x"}), &[], 8);
    }
    assert_eq!(run.state, RunState::Failed);
    let kept_uri = run.tasks["for-loop-1/iteration-1/square"].outputs.artifacts["out"][0]
        .uri
        .clone();

    retry_run(&mut run, 20).unwrap();
    advance(&mut run, 20);
    assert_eq!(run.state, RunState::Running);
    assert!(run.error.is_none());
    // The failed iteration runs again, from a fresh task; the one that succeeded is kept.
    let again = &run.tasks["for-loop-1/iteration-0/square"];
    assert_eq!(again.state, TaskState::Ready);
    assert!(again.attempts.is_empty());
    assert_eq!(
        state(&run, "for-loop-1/iteration-1/square"),
        TaskState::Succeeded
    );
    assert_eq!(state(&run, "rows"), TaskState::Succeeded);
    assert!(
        !run.tasks.contains_key("total"),
        "skipped consumers are decided again"
    );
    assert_eq!(ready(&run), vec!["for-loop-1/iteration-0/square"]);

    succeed(
        &mut run,
        "for-loop-1/iteration-0/square",
        json!({"Output": 25}),
        &["out"],
        30,
    );
    assert_eq!(
        run.tasks["total"].inputs.parameters["nums"],
        json!([25, 36])
    );
    let ds = &run.tasks["read-all"].inputs.artifacts["ds"];
    assert_eq!(
        ds[1].uri, kept_uri,
        "the kept iteration's artifact is reused"
    );
    succeed(&mut run, "total", json!({"Output": 61}), &[], 40);
    succeed(&mut run, "read-all", json!({"Output": "25,36"}), &[], 41);
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(
        retry_run(&mut run, 50).unwrap_err().to_string(),
        "run run-1 is SUCCEEDED: only a FAILED or CANCELED run can be retried"
    );
}

/// Runs every ready step with `Output` = its `text` input (what `say` and `flag` return).
fn run_echoing(run: &mut RunRecord) {
    let mut now = 10;
    while !run.state.is_terminal() {
        let ready = ready(run);
        assert!(!ready.is_empty(), "stuck: {:#?}", run.tasks.keys());
        for id in ready {
            let t = &run.tasks[id.as_str()];
            let out = t
                .inputs
                .parameters
                .get("text")
                .or_else(|| t.inputs.parameters.get("on"))
                .cloned()
                .unwrap_or(Value::Null);
            succeed(run, &id, json!({ "Output": out }), &[], now);
            now += 2;
        }
    }
}

#[test]
fn conditions_on_loop_items_and_nested_outputs_pick_one_branch_per_iteration() {
    let mut run = new_run(LOOP_CONDITIONS, &[]);
    run_echoing(&mut run);
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.error);
    let said = |prefix: &str| -> Vec<Value> {
        run.tasks
            .values()
            .filter(|t| t.task_id.as_str().starts_with(prefix) && t.state == TaskState::Succeeded)
            .filter(|t| t.name.starts_with("say"))
            .map(|t| t.outputs.parameters["Output"].clone())
            .collect()
    };
    // int(item) > 10, then !(… > 10) && int(item) > 3, then the negation of both.
    assert_eq!(said("for-loop-2/iteration-0/"), vec![json!("small")]);
    assert_eq!(said("for-loop-2/iteration-1/"), vec![json!("medium")]);
    assert_eq!(said("for-loop-2/iteration-2/"), vec![json!("big")]);
    // A condition on a nested pipeline's output, and one nested in it on a boolean output.
    let on: Vec<&TaskRecord> = run
        .tasks
        .values()
        .filter(|t| t.outputs.parameters.get("Output") == Some(&json!("flag on")))
        .collect();
    assert_eq!(on.len(), 1);
    // limit (2.5) < 2.0 is false: that branch is skipped.
    assert!(run
        .tasks
        .values()
        .all(|t| t.outputs.parameters.get("Output") != Some(&json!("never"))));
}

#[test]
fn an_empty_list_completes_the_loop_at_once_with_empty_collections() {
    let run = new_run(LOOPS, &[("xs", json!([]))]);
    assert_eq!(state(&run, "for-loop-1"), TaskState::Succeeded);
    assert_eq!(run.tasks["total"].inputs.parameters["nums"], json!([]));
    assert_eq!(state(&run, "total"), TaskState::Ready);
}

#[test]
fn canceling_stops_new_iterations_and_cancels_the_loop() {
    let mut run = new_run(LOOPS, &[]);
    let running = cancel_run(&mut run, 3);
    assert!(running.is_empty());
    advance(&mut run, 3);
    assert_eq!(state(&run, "for-loop-1"), TaskState::Canceled);
    assert!(!run.tasks.contains_key("for-loop-1/iteration-2"));
    assert_eq!(run.state, RunState::Canceled);
}

#[test]
#[allow(clippy::disallowed_methods)] // reads a pipeline of the KFP corpus from disk
fn a_loop_over_an_artifact_list_gives_each_iteration_one_artifact() {
    let mut run = new_run(ARTIFACT_LOOPS, &[]);
    // make-artifacts is a nested pipeline whose loop makes one artifact per text (4 by
    // default) and collects them as its output.
    let makers = ids_with(&run, "/make-artifact");
    assert_eq!(makers.len(), 4, "{makers:?}");
    for id in &makers {
        succeed(&mut run, id, json!({}), &["Output"], 5);
    }
    assert_eq!(state(&run, "make-artifacts"), TaskState::Succeeded);
    let collected = &run.tasks["make-artifacts"].outputs.artifacts["Output"];
    assert_eq!(collected.len(), 4);
    let printers = ids_with(&run, "/print-artifact-name");
    assert_eq!(printers.len(), 4, "{printers:?}");
    for (i, want) in collected.iter().enumerate() {
        let t = &run.tasks[format!("for-loop-1/iteration-{i}/print-artifact-name").as_str()];
        assert_eq!(t.inputs.artifacts["artifact"], vec![want.clone()]);
        assert_eq!(t.iteration, Some(i as u32));
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // reads a pipeline of the KFP corpus from disk
fn resources_decided_at_run_time_come_from_task_inputs() {
    let run = new_run(
        MACHINE_FIELDS,
        &[
            ("cpu_limit", json!("500m")),
            ("memory_limit", json!("2Gi")),
            ("accelerator_limit", json!("2")),
            ("accelerator_type", json!("NVIDIA_H100")),
        ],
    );
    let r = ready(&run);
    assert_eq!(r.len(), 1);
    let res = task_resources(&run, &run.tasks[r[0].as_str()]).unwrap();
    assert_eq!(res.cpu_limit, Some(0.5));
    assert_eq!(res.memory_limit_bytes, Some(2 << 30));
    assert_eq!(res.accelerator_count, 2);
    assert_eq!(res.accelerator_type.as_deref(), Some("NVIDIA_H100"));
    assert_eq!(
        step_spec(&run, &r[0].as_str().into(), 1)
            .unwrap()
            .container
            .resources,
        res
    );

    let bad = new_run(MACHINE_FIELDS, &[("cpu_limit", json!("lots"))]);
    let t = bad
        .tasks
        .values()
        .find(|t| t.kind == TaskKind::Container)
        .unwrap();
    assert_eq!(t.state, TaskState::Failed);
    assert!(
        t.error.as_deref().unwrap_or("").contains("cpu limit"),
        "{:?}",
        t.error
    );
}

/// An importer whose URI is the pipeline parameter `uri`, read by nothing.
const PARAM_IMPORTER: &str = r#"
pipelineInfo: {name: imp}
components:
  comp-importer:
    executorLabel: exec-importer
    inputDefinitions:
      parameters:
        uri: {parameterType: STRING}
    outputDefinitions:
      artifacts:
        artifact: {artifactType: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}}
deploymentSpec:
  executors:
    exec-importer:
      importer:
        artifactUri: {runtimeParameter: uri}
        typeSchema: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}
root:
  inputDefinitions:
    parameters:
      uri: {parameterType: STRING}
  dag:
    tasks:
      importer:
        taskInfo: {name: importer}
        componentRef: {name: comp-importer}
        inputs:
          parameters:
            uri: {componentInputParameter: uri}
"#;

#[test]
fn an_importer_uri_from_a_parameter_is_checked_against_the_run_policy_when_it_runs() {
    let run_with = |uri: &str| {
        let spec = parse_pipeline(PARAM_IMPORTER).expect("fixture parses");
        let given = BTreeMap::from([("uri".to_string(), json!(uri))]);
        let params = resolve_run_parameters(&spec, &given).expect("parameters resolve");
        let mut run = RunRecord::new("run-1".into(), spec, "s3://bucket/root".into(), params, 0);
        run.uri_policy = Some(
            crate::ir::UriPolicy::new("s3://bucket/root", vec!["file:///data".into()], vec![])
                .unwrap(),
        );
        advance(&mut run, 0);
        run
    };
    let run = run_with("file:///etc/shadow");
    let imp = &run.tasks["importer"];
    assert_eq!(imp.state, TaskState::Failed);
    assert_eq!(
        imp.error.as_deref(),
        Some(
            "importer \"importer\": file:///etc/shadow is outside the import roots \
             (file:///data; see --import-root)"
        )
    );
    assert!(imp.outputs.artifacts.is_empty(), "nothing imported");
    assert_eq!(run.state, RunState::Failed);

    let run = run_with("file:///data/in.csv");
    assert_eq!(run.tasks["importer"].state, TaskState::Succeeded);
    assert_eq!(
        run.tasks["importer"].outputs.artifacts["artifact"][0].uri,
        "file:///data/in.csv"
    );
}

const GRID: &str = include_str!("testdata/nested_loops.yaml");

fn with_task_limit(mut run: RunRecord, max_tasks: u64) -> RunRecord {
    run.limits.max_tasks = Some(max_tasks);
    run
}

#[test]
fn a_grid_within_the_task_limit_creates_exactly_the_counted_tasks() {
    let spec = parse_pipeline(GRID).unwrap();
    let rows = json!(["a", "b", "c"]);
    let cols = json!(["1", "2", "3", "4"]);
    let params = BTreeMap::from([("rows".to_string(), rows), ("cols".to_string(), cols)]);
    let at_submit = crate::ir::bounds::check_submission(
        &spec,
        &params,
        &crate::ir::bounds::SubmitLimits {
            max_tasks_per_run: 32,
            ..Default::default()
        },
    );
    assert_eq!(at_submit, Ok(()));
    let mut run = RunRecord::new("run-1".into(), spec, "s3://b/r".into(), params, 0);
    run = with_task_limit(run, 32);
    advance(&mut run, 0);
    // Every row and column starts at once (no parallelism limit): the submit-time count is
    // exact.
    assert_eq!(run.tasks.len(), 32);
    assert_eq!(ids_with(&run, "/cell").len(), 12);
    assert_eq!(state(&run, "for-loop-1"), TaskState::Running);
}

#[test]
fn a_loop_that_would_pass_the_task_limit_fails_when_it_starts_naming_the_limit() {
    // The width comes from a step's output, unknown at submit: the engine checks it.
    let mut run = with_task_limit(new_run(LOOPS, &[]), 40);
    let before = run.tasks.len();
    assert_eq!(before, 12, "{:?}", run.tasks.keys().collect::<Vec<_>>());
    succeed(
        &mut run,
        "rows",
        json!({"Output": ["r1", "r2", "r3", "r4", "r5", "r6"]}),
        &[],
        5,
    );
    assert_eq!(state(&run, "for-loop-4"), TaskState::Failed);
    let error = run.tasks["for-loop-4"].error.clone().unwrap_or_default();
    assert!(
        error.ends_with(
            // 13 tasks (the 12 before and the loop), then 6 per iteration (its DAG, the
            // inner loop, two iterations and two cells): over 40 at the fifth, where
            // counting stops.
            "its 6 iterations would bring the run to at least 43 tasks, over its limit of 40 \
             tasks per run (--max-tasks-per-run)"
        ),
        "{error}"
    );
    // No iteration of it was created.
    assert!(ids_with(&run, "for-loop-4/iteration-0").is_empty());
    assert_eq!(
        run.tasks.len(),
        before + 1,
        "the loop itself and nothing under it"
    );

    // Without a limit (runs created before it existed) the same loop runs.
    let mut run = new_run(LOOPS, &[]);
    succeed(
        &mut run,
        "rows",
        json!({"Output": ["r1", "r2", "r3", "r4", "r5", "r6"]}),
        &[],
        5,
    );
    assert_eq!(state(&run, "for-loop-4"), TaskState::Running);
    assert_eq!(ids_with(&run, "/cell").len(), 12);
}

const RUN_VOLUME: &str = include_str!("testdata/run_volume.yaml");
const WORKSPACE: &str = include_str!("testdata/workspace.yaml");

/// Places container task `id` on `agent` and records its success; the progress that followed.
fn succeed_on(run: &mut RunRecord, id: &str, agent: &str, now: i64) -> Progress {
    let id = &TaskId::from(id);
    let attempt = run.tasks[id].attempts.len() as u32 + 1;
    record_assignment(run, id, attempt, &agent.into(), &[], now).expect("assignable");
    let spec = step_spec(run, id, attempt).expect("step spec");
    let parameters = spec
        .outputs
        .parameters
        .keys()
        .map(|k| (k.clone(), json!("x")))
        .collect();
    let outcome = StepOutcome::Succeeded {
        parameters,
        artifacts: BTreeMap::new(),
    };
    assert_eq!(
        record_outcome(run, id, attempt, outcome, now + 1),
        OutcomeEffect::Recorded
    );
    advance_from(run, id, now + 1)
}

fn pinned_to(run: &RunRecord, id: &str) -> Option<String> {
    task_resources(run, &run.tasks[&TaskId::from(id)])
        .expect("resources")
        .node_selector
        .get(claims::AGENT_ID_LABEL)
        .cloned()
}

#[test]
fn a_claim_the_run_makes_lives_where_it_is_first_mounted_and_is_released_when_deleted() {
    let mut run = new_run(RUN_VOLUME, &[]);
    // CreatePVC runs nothing: it names the claim after the run.
    assert_eq!(state(&run, "createpvc"), TaskState::Succeeded);
    let name = "run-1-scratch";
    assert_eq!(
        run.tasks["createpvc"].outputs.parameters["name"],
        json!(name)
    );
    assert_eq!(ready(&run), vec!["produce"]);
    let produce = step_spec(&run, &"produce".into(), 1).expect("spec");
    let mount = &produce.container.volumes[0];
    assert!(mount.run_claim && mount.volume == name && mount.mount_path == "/data");
    let selector = task_resources(&run, &run.tasks["produce"])
        .unwrap()
        .node_selector;
    assert!(selector.is_empty(), "no agent has it yet: {selector:?}");

    succeed_on(&mut run, "produce", "agent-b", 1);
    assert_eq!(
        run.claims[name].home.as_ref().map(|a| a.as_str()),
        Some("agent-b")
    );
    let consumers = ready(&run);
    assert_eq!(consumers.len(), 2, "{consumers:?}");
    for id in &consumers {
        assert_eq!(pinned_to(&run, id).as_deref(), Some("agent-b"), "{id}");
    }
    succeed_on(&mut run, &consumers[0], "agent-b", 3);
    let last = succeed_on(&mut run, &consumers[1], "agent-b", 5);
    // DeletePVC runs nothing either: the agent that holds the claim is told to remove it.
    assert_eq!(state(&run, "deletepvc"), TaskState::Succeeded);
    assert_eq!(
        run.claims[name].deleted_by.as_ref().map(|t| t.as_str()),
        Some("deletepvc")
    );
    assert_eq!(
        last.released,
        vec![("agent-b".into(), vec![name.to_string()])]
    );
    assert_eq!(run.state, RunState::Succeeded);
    assert!(claims::left_over(&run).is_empty());
}

#[test]
fn a_workspace_is_mounted_in_every_step_and_released_when_the_run_ends() {
    let mut run = new_run(WORKSPACE, &[]);
    assert!(run.claims.contains_key(claims::WORKSPACE_CLAIM));
    let write = step_spec(&run, &"write".into(), 1).expect("spec");
    let mount = &write.container.volumes[0];
    assert!(mount.run_claim && mount.mount_path == claims::WORKSPACE_PATH);
    succeed_on(&mut run, "write", "agent-c", 1);
    assert_eq!(pinned_to(&run, "read").as_deref(), Some("agent-c"));
    let end = succeed_on(&mut run, "read", "agent-c", 3);
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(
        end.released,
        vec![("agent-c".into(), vec![claims::WORKSPACE_CLAIM.to_string()])]
    );
}

#[test]
fn create_pvc_needs_one_valid_name_and_delete_pvc_only_deletes_the_runs_own() {
    let spec = parse_pipeline(RUN_VOLUME).expect("fixture parses");
    let run = RunRecord::new("run-1".into(), spec, "s3://b/r".into(), BTreeMap::new(), 0);
    let rec = |params: Value| {
        let mut rec = TaskRecord::new("t".into(), "t".into(), "c".into(), TaskKind::Container, 0);
        rec.inputs.parameters = params
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        rec
    };
    for (stub, params, says) in [
        (
            claims::Stub::Create,
            json!({}),
            "neither pvc_name nor pvc_name_suffix",
        ),
        (
            claims::Stub::Create,
            json!({"pvc_name": "a", "pvc_name_suffix": "-b"}),
            "not both",
        ),
        (
            claims::Stub::Create,
            json!({"pvc_name": "no/slash"}),
            "may hold only",
        ),
        (
            claims::Stub::Delete,
            json!({"pvc_name": "elsewhere"}),
            "not a claim this run made",
        ),
        (claims::Stub::Delete, json!({}), "pvc_name is not given"),
    ] {
        let mut r = rec(params.clone());
        claims::run_stub(&run, stub, &mut r, 1);
        assert_eq!(r.state, TaskState::Failed, "{params}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains(says), "{params}: {error}");
    }
    let mut ok = rec(json!({"pvc_name": "mine"}));
    claims::run_stub(&run, claims::Stub::Create, &mut ok, 1);
    assert_eq!(ok.outputs.parameters["name"], json!("mine"));
}
