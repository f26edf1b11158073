//! Drives every pipeline of the KFP conformance corpus that Gantry accepts through the engine,
//! with every container step succeeding and producing outputs of its declared types (a
//! simulated agent). The run must end, and the outcome of each is compared with the committed
//! table `core/tests/engine-conformance.md`: a change in how the engine instantiates loops,
//! conditions, nested DAGs, exit handlers or outputs shows up there.
//!
//! The corpus is the directory `GANTRY_KFP_CORPUS` names; without the variable the test says
//! so and passes. `GANTRY_BLESS=1 cargo test -p gantry-core --test engine_corpus` rewrites the
//! table.

// Reads the KFP corpus and golden files from disk: a test may, the core may not.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use gantry_core::engine::{
    advance, advance_from, check_supported, record_assignment, record_outcome, step_spec,
    RunRecord, TaskState,
};
use gantry_core::ir::{
    parse_pipeline, resolve_run_parameters, Implementation, IteratorItems, ParameterSource,
    PipelineSpec,
};
use gantry_model::{ParamType, TaskId};
use gantry_testkit::corpus::{cell, corpus_dir, relative, yaml_files};
use gantry_testkit::{golden, sim};
use serde_json::{json, Value};

const GOLDEN: &str = "tests/engine-conformance.md";
/// Steps a run may take before it counts as stuck.
const MAX_STEPS: usize = 5_000;

/// A value of `t` such as a step (or a user) might give. The string "1" also reads as a CPU
/// or memory amount and a count, which some pipelines take from task outputs.
fn sample(t: ParamType) -> Value {
    match t {
        ParamType::String => json!("1"),
        ParamType::NumberInteger => json!(2),
        ParamType::NumberDouble => json!(0.5),
        ParamType::Boolean => json!(true),
        ParamType::List => json!([1, 2]),
        ParamType::Struct | ParamType::TaskFinalStatus => json!({"a": 1, "b": "y"}),
    }
}

/// The element type of list values that loops iterate over, by where the list comes from:
/// (producer task name, output key), or ("", pipeline input name). Taken from the loop body's
/// declaration of its item, so the simulated lists hold what the pipeline expects.
fn loop_item_types(spec: &PipelineSpec) -> BTreeMap<(String, String), ParamType> {
    let mut out = BTreeMap::new();
    for comp in std::iter::once(&spec.root).chain(spec.components.values()) {
        let Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for t in dag.tasks.values() {
            let Some(it) = &t.iterator else { continue };
            let IteratorItems::InputParameter(name) = &it.items else {
                continue;
            };
            let Some(body) = spec.component(&t.component) else {
                continue;
            };
            let Some(declared) = body.input_parameters.get(&it.item_input).map(|d| d.ptype) else {
                continue;
            };
            // Items whose fields the body picks with a selector are dicts, whatever the
            // declaration says.
            let picked = match &body.implementation {
                Implementation::Dag(d) => d.tasks.values().any(|bt| {
                    bt.parameters.values().any(|b| {
                        b.selector.is_some()
                            && b.source == ParameterSource::ComponentInput(it.item_input.clone())
                    })
                }),
                Implementation::Executor(_) => false,
            };
            let item_type = if picked { ParamType::Struct } else { declared };
            let source = match t.parameters.get(name).map(|b| &b.source) {
                Some(ParameterSource::TaskOutput(sel)) => {
                    (sel.producer_task.clone(), sel.output_key.clone())
                }
                Some(ParameterSource::ComponentInput(n)) => (String::new(), n.clone()),
                _ => continue,
            };
            out.insert(source, item_type);
        }
    }
    out
}

fn sample_list(
    items: &BTreeMap<(String, String), ParamType>,
    (fields, list_fields): (&[String], &[String]),
    from: (String, String),
) -> Value {
    // A nested DAG's input carrying a task's output is named after it by the SDK.
    let channel = (
        String::new(),
        format!("pipelinechannel--{}-{}", from.0, from.1),
    );
    let elem = items
        .get(&from)
        .or_else(|| items.get(&channel))
        .copied()
        .unwrap_or(ParamType::String);
    let one = match elem {
        // Dict items carry the fields the pipeline's selectors read; a field a loop iterates
        // over (the SDK names its channel `…-subvar-<field>`) holds a list.
        ParamType::Struct => Value::Object(
            fields
                .iter()
                .map(|f| {
                    let v = if list_fields.contains(f) {
                        json!([1, 2])
                    } else {
                        json!(1)
                    };
                    (f.clone(), v)
                })
                .collect(),
        ),
        t => sample(t),
    };
    json!([one.clone(), one])
}

/// Fields of dict items that a loop iterates over.
fn looped_fields(spec: &PipelineSpec) -> Vec<String> {
    let mut out = Vec::new();
    for comp in std::iter::once(&spec.root).chain(spec.components.values()) {
        let Implementation::Dag(dag) = &comp.implementation else {
            continue;
        };
        for t in dag.tasks.values() {
            if let Some(IteratorItems::InputParameter(name)) = t.iterator.as_ref().map(|i| &i.items)
            {
                if let Some((_, field)) = name.rsplit_once("-subvar-") {
                    out.push(field.to_string());
                }
            }
        }
    }
    out
}

/// The fields `parameterExpressionSelector`s read (`parseJson(string_value)["a"]`).
fn selector_fields(yaml: &str) -> Vec<String> {
    let mut out: Vec<String> = yaml
        .split("parseJson(string_value)[\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(String::from)
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        out.push("a".into());
    }
    out
}

struct Outcome {
    state: String,
    tasks: usize,
    detail: String,
}

fn simulate(yaml: &str) -> Result<Outcome, String> {
    let spec = parse_pipeline(yaml).map_err(|e| format!("refused: {e}"))?;
    check_supported(&spec).map_err(|e| format!("refused: {e}"))?;
    // Required pipeline inputs get a sample of their type.
    let items = loop_item_types(&spec);
    let fields = selector_fields(yaml);
    let list_fields = looped_fields(&spec);
    let given: BTreeMap<String, Value> = spec
        .root
        .input_parameters
        .iter()
        .filter(|(_, d)| d.default.is_none() && !d.optional)
        .map(|(n, d)| {
            let v = match d.ptype {
                ParamType::List => {
                    sample_list(&items, (&fields, &list_fields), (String::new(), n.clone()))
                }
                t => sample(t),
            };
            (n.clone(), v)
        })
        .collect();
    let params = resolve_run_parameters(&spec, &given).map_err(|e| format!("parameters: {e}"))?;
    let mut run = RunRecord::new("run".into(), spec, "s3://bucket/root".into(), params, 0);
    advance(&mut run, 0);
    let mut now = 1;
    for _ in 0..MAX_STEPS {
        if run.state.is_terminal() {
            break;
        }
        let ready: Vec<TaskId> = run.ready_tasks().map(|t| t.task_id.clone()).collect();
        if ready.is_empty() {
            return Err(format!(
                "stuck: run {} with no ready task",
                run.state.as_str()
            ));
        }
        for id in ready {
            let attempt = run.tasks[&id].attempts.len() as u32 + 1;
            record_assignment(&mut run, &id, attempt, &"agent".into(), &[], now)
                .map_err(|e| e.to_string())?;
            let step = step_spec(&run, &id, attempt).map_err(|e| e.to_string())?;
            let task_name = run.tasks[&id].name.clone();
            let outcome = sim::success(&step, |n, t| match t {
                ParamType::List => sample_list(
                    &items,
                    (&fields, &list_fields),
                    (task_name.clone(), n.to_string()),
                ),
                t => sample(t),
            });
            record_outcome(&mut run, &id, attempt, outcome, now);
            // As the state machine does after each result; in debug builds it also checks
            // itself against the full walk.
            advance_from(&mut run, &id, now);
            now += 1;
        }
    }
    if !run.state.is_terminal() {
        return Err(format!("did not end within {MAX_STEPS} steps"));
    }
    // With every step succeeding, a failed task is the engine's doing: name the first.
    let detail = run
        .tasks
        .values()
        .find(|t| t.state == TaskState::Failed && t.attempts.is_empty())
        .map(|t| format!("{}: {}", t.task_id, t.error.clone().unwrap_or_default()))
        .unwrap_or_default();
    Ok(Outcome {
        state: run.state.as_str().to_string(),
        tasks: run.tasks.len() - 1,
        detail,
    })
}

#[test]
fn every_accepted_corpus_pipeline_runs_to_its_end_in_the_engine() {
    let Some(dir) = corpus_dir("the engine conformance table") else {
        return;
    };
    let files = yaml_files(&dir.join("valid"));
    assert!(!files.is_empty(), "no pipelines under {}", dir.display());
    let mut out = String::from(
        "# Engine conformance\n\n\
         Every pipeline under `shared/kfp-conformance/valid` driven through the engine with each \
         container step succeeding and producing outputs of its declared types (a simulated \
         agent). `ended` is the run's final state; a FAILED run names the task the engine \
         failed. Generated by `core/tests/engine_corpus.rs`; after a deliberate change, rerun it \
         with `GANTRY_BLESS=1`.\n\n\
         | file | result | tasks | detail |\n| --- | --- | --- | --- |\n",
    );
    let mut stuck = Vec::new();
    for path in &files {
        let rel = relative(&dir, path);
        let text = fs::read_to_string(path).unwrap_or_default();
        let (result, tasks, detail) = match simulate(&text) {
            Ok(o) => (format!("ended {}", o.state), o.tasks.to_string(), o.detail),
            Err(e) if e.starts_with("refused") => ("refused".into(), String::new(), e),
            Err(e) => {
                stuck.push(format!("{rel}: {e}"));
                ("ERROR".into(), String::new(), e)
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(&rel),
            result,
            tasks,
            cell(&detail)
        ));
    }
    assert!(
        stuck.is_empty(),
        "runs that did not end:\n{}",
        stuck.join("\n")
    );
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    golden::check(
        &golden,
        &out,
        "cargo test -p gantry-core --test engine_corpus",
    );
}
