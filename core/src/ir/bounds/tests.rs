use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use crate::ir::parse_pipeline;

const GRID: &str = include_str!("../../engine/testdata/nested_loops.yaml");
const LOOPS: &str = include_str!("../../engine/testdata/loops.yaml");
const CONDITIONS: &str = include_str!("../../engine/testdata/conditions.yaml");

fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn limits(max_tasks: u64) -> SubmitLimits {
    SubmitLimits {
        max_tasks_per_run: max_tasks,
        ..SubmitLimits::default()
    }
}

fn list(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!(format!("v{i}"))).collect())
}

#[test]
fn nested_loop_widths_multiply() {
    let p = parse_pipeline(GRID).unwrap();
    let given = params(&[("rows", list(3)), ("cols", list(4))]);
    // root, the outer loop, per row its iteration and the inner loop, per cell its
    // iteration and the step: 2 + 2·3 + 2·3·4.
    assert_eq!(check_submission(&p, &given, &limits(32)), Ok(()));
    let e = check_submission(&p, &given, &limits(31)).unwrap_err();
    assert_eq!(
        e,
        BoundError::TooManyTasks {
            count: 32,
            limit: 31,
            widths: vec![("for-loop-1".into(), 3), ("for-loop-2".into(), 4)],
        }
    );
    assert_eq!(
        e.to_string(),
        "the run would create at least 32 tasks (loop \"for-loop-1\" × 3 around \"for-loop-2\" \
         × 4), over the limit of 31 tasks per run (--max-tasks-per-run)"
    );
}

#[test]
fn a_million_cell_grid_is_refused_after_a_bounded_walk() {
    let p = parse_pipeline(GRID).unwrap();
    let given = params(&[("rows", list(1000)), ("cols", list(1000))]);
    let e = check_submission(&p, &given, &SubmitLimits::default()).unwrap_err();
    let BoundError::TooManyTasks { count, limit, .. } = e else {
        panic!("{e}");
    };
    assert_eq!(limit, 100_000);
    assert!(count > 100_000, "{count}");
}

#[test]
fn widths_given_as_json_text_count_and_unknown_widths_count_once() {
    let p = parse_pipeline(GRID).unwrap();
    let given = params(&[("rows", json!("[1, 2]")), ("cols", json!(5))]);
    // cols is not a list: its width is unknown here (the engine fails that loop later).
    assert_eq!(
        check_submission(&p, &given, &limits(2 + 2 * 2 + 2 * 2)),
        Ok(())
    );
    assert!(check_submission(&p, &given, &limits(2 + 2 * 2 + 2 * 2 - 1)).is_err());

    // loops.yaml: xs from a parameter, a raw list, a loop over a step's output (unknown,
    // counted once) around a raw loop of two; see the task list in its root DAG.
    let p = parse_pipeline(LOOPS).unwrap();
    let given = params(&[("xs", list(4))]);
    let expected = 1 + (1 + 4 * 2) + (1 + 2 * 2) + (1 + (1 + (1 + 2 * 2))) + 3;
    assert_eq!(check_submission(&p, &given, &limits(expected)), Ok(()));
    assert!(check_submission(&p, &given, &limits(expected - 1)).is_err());
}

#[test]
fn deep_or_large_parameters_are_refused_with_the_limit_named() {
    let p = parse_pipeline(GRID).unwrap();
    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let given = params(&[("rows", json!([deep])), ("cols", list(1))]);
    let e = check_submission(&p, &given, &SubmitLimits::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "parameter \"rows\" nests 41 levels deep, over the limit of 32 (--max-json-depth)"
    );

    let big = json!(["x".repeat(300 << 10)]);
    let given = params(&[("rows", big), ("cols", list(1))]);
    let e = check_submission(&p, &given, &SubmitLimits::default()).unwrap_err();
    assert!(
        matches!(&e, BoundError::ParameterTooLarge { name, limit: 262_144, .. } if name == "rows"),
        "{e}"
    );
    assert!(e.to_string().contains("(--max-parameter-bytes)"), "{e}");
}

#[test]
fn json_depth_is_measured_without_recursion() {
    assert_eq!(json_depth(&json!(1)), 0);
    assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 3);
    // Deeper than serde_json would parse (128): built by hand.
    let mut v = json!(0);
    for _ in 0..100_000 {
        v = Value::Array(vec![v]);
    }
    assert_eq!(json_depth(&v), 100_000);
    // Dropping it recursively would overflow the stack; unwind it by hand.
    while let Value::Array(mut items) = v {
        v = items.pop().unwrap_or(Value::Null);
    }
}

#[test]
fn the_document_size_and_the_settings_are_checked() {
    let l = SubmitLimits {
        max_pipeline_bytes: 100,
        ..SubmitLimits::default()
    };
    assert_eq!(check_pipeline_size(100, &l), Ok(()));
    assert_eq!(
        check_pipeline_size(101, &l).unwrap_err().to_string(),
        "the pipeline document holds 101 bytes, over the limit of 100 bytes (--max-pipeline-bytes)"
    );
    assert_eq!(SubmitLimits::default().check(), Ok(()));
    for bad in [
        SubmitLimits {
            max_pipeline_bytes: PIPELINE_BYTES_CEILING + 1,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            max_tasks_per_run: 1,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            max_json_depth: 0,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            max_parameter_bytes: 0,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            max_cel_bytes: 0,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            max_cel_bytes: crate::ir::cel::MAX_SOURCE_BYTES + 1,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            cel_evaluation_budget: MIN_CEL_BUDGET - 1,
            ..SubmitLimits::default()
        },
        SubmitLimits {
            cel_evaluation_budget: MAX_CEL_BUDGET + 1,
            ..SubmitLimits::default()
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

#[test]
fn one_iteration_counts_its_dag_task_and_its_body() {
    let p = parse_pipeline(GRID).unwrap();
    // An iteration of the outer loop: its DAG task, the inner loop, and per column an
    // iteration and a step.
    let inputs = params(&[("pipelinechannel--cols", list(5))]);
    assert_eq!(
        iteration_task_count(&p, "comp-for-loop-1", &inputs, 1000),
        1 + 1 + 5 * 2
    );
    assert_eq!(iteration_task_count(&p, "comp-missing", &inputs, 1000), 1);
}

#[test]
fn long_conditions_and_selectors_are_refused_naming_the_task() {
    let p = parse_pipeline(CONDITIONS).unwrap();
    let longest = |p: &crate::ir::PipelineSpec| {
        std::iter::once(&p.root)
            .chain(p.components.values())
            .filter_map(|c| match &c.implementation {
                Implementation::Dag(d) => Some(d),
                _ => None,
            })
            .flat_map(|d| d.tasks.values())
            .flat_map(|t| {
                t.condition
                    .iter()
                    .chain(t.parameters.values().filter_map(|b| b.selector.as_ref()))
                    .map(String::len)
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap()
    };
    let n = longest(&p);
    let at = |max_cel_bytes| SubmitLimits {
        max_cel_bytes,
        ..SubmitLimits::default()
    };
    assert_eq!(check_submission(&p, &BTreeMap::new(), &at(n)), Ok(()));
    let e = check_submission(&p, &BTreeMap::new(), &at(n - 1)).unwrap_err();
    assert!(
        matches!(&e, BoundError::CelTooLong { bytes, limit, .. } if *bytes == n && *limit == n - 1),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("the condition of task") && text.ends_with("(--max-cel-bytes)"),
        "{text}"
    );
    // Selectors count too.
    let p = parse_pipeline(LOOPS).unwrap();
    let n = longest(&p);
    assert!(check_submission(&p, &BTreeMap::new(), &at(n - 1)).is_err());
}
