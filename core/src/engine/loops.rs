//! `dsl.ParallelFor`: a loop task runs its body DAG once per item.
//!
//! The loop task (kind [`TaskKind::Loop`]) holds the resolved inputs of the loop, the items
//! among them. Each iteration is a DAG task of the body component, a child of the loop with id
//! `<loop>/iteration-<i>` and `iteration` set, whose inputs are the loop's plus the item under
//! the iterator's `itemInput`. Iterations are created in order, at most `parallelismLimit`
//! unfinished at a time. When all are done the loop collects its body's DAG outputs across
//! iterations, in iteration order: a parameter output becomes the list of the iterations'
//! values (`dsl.Collected`), an artifact output the concatenation of their artifacts.

use gantry_model::{ArtifactRef, TaskId};
use serde_json::Value;

use super::advance::{component, finish};
use super::record::task_spec;
use super::resolve::dag_body;
use super::{RunRecord, RunState, TaskKind, TaskOutputs, TaskRecord, TaskState};
use crate::ir::{IteratorItems, TaskSpec};

/// Most iterations one loop may have: a bound on the state a single run can create.
pub const MAX_ITERATIONS: usize = 10_000;

/// One loop item.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    Parameter(Value),
    Artifact(ArtifactRef),
}

/// Why a loop has no items to iterate over: the loop task fails.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum LoopError {
    /// `what` names the items (`the loop's items`, `the loop's input "xs"`).
    #[error("{what} is not a JSON list: {text:?}")]
    NotJsonList { what: String, text: String },
    #[error("{what} is not a list: {value}")]
    NotList { what: String, value: Value },
    #[error("{what} has {count} items; a loop may have at most {MAX_ITERATIONS}")]
    TooManyItems { what: String, count: usize },
    #[error("task {0:?} is not a loop")]
    NotALoop(String),
    #[error("the loop's input {0:?} has no value")]
    NoInput(String),
    #[error("the loop's input artifact {0:?} has no value")]
    NoInputArtifact(String),
    #[error(
        "the loop's input artifact {name:?} lists {count} artifacts; a loop may have at most \
         {MAX_ITERATIONS}"
    )]
    TooManyArtifacts { name: String, count: usize },
    #[error(
        "its {items} iterations would bring the run to at least {total} tasks, over its limit \
         of {limit} tasks per run (--max-tasks-per-run)"
    )]
    TooManyTasks {
        items: usize,
        total: u64,
        limit: u64,
    },
}

/// Refuses to start a loop whose iterations still to create, with the tasks the run has,
/// would go over the run's task limit. Each item is counted with its own value (an inner loop
/// may iterate over it); counting stops once over the limit, so it costs at most about twice
/// the limit.
fn check_task_limit(
    run: &RunRecord,
    spec: &TaskSpec,
    rec: &TaskRecord,
    items: &[Item],
) -> Result<(), LoopError> {
    let Some(limit) = run.limits.max_tasks else {
        return Ok(());
    };
    let item_input = spec.iterator.as_ref().map(|it| it.item_input.as_str());
    let mut total = run.tasks.len() as u64;
    let mut inputs = rec.inputs.parameters.clone();
    for (i, item) in items.iter().enumerate() {
        // A retried run keeps the iterations that succeeded: they are counted already.
        if run
            .tasks
            .contains_key(&iteration_id(rec.task_id.as_str(), i))
        {
            continue;
        }
        if let (Some(name), Item::Parameter(v)) = (item_input, item) {
            inputs.insert(name.to_string(), v.clone());
        }
        let room = limit.saturating_sub(total);
        total = total.saturating_add(crate::ir::bounds::iteration_task_count(
            &run.pipeline,
            &rec.component,
            &inputs,
            room,
        ));
        if total > limit {
            return Err(LoopError::TooManyTasks {
                items: items.len(),
                total,
                limit,
            });
        }
    }
    Ok(())
}

fn as_list(what: &str, v: &Value) -> Result<Vec<Value>, LoopError> {
    let list = match v {
        Value::Array(items) => items.clone(),
        // A list that reached the loop as JSON text (a raw list in the IR, a STRING output).
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => items,
            _ => {
                return Err(LoopError::NotJsonList {
                    what: what.to_string(),
                    text: s.clone(),
                })
            }
        },
        other => {
            return Err(LoopError::NotList {
                what: what.to_string(),
                value: other.clone(),
            })
        }
    };
    if list.len() > MAX_ITERATIONS {
        return Err(LoopError::TooManyItems {
            what: what.to_string(),
            count: list.len(),
        });
    }
    Ok(list)
}

/// The items of the loop task `rec`, whose inputs are resolved.
pub(crate) fn items_of(spec: &TaskSpec, rec: &TaskRecord) -> Result<Vec<Item>, LoopError> {
    let Some(it) = &spec.iterator else {
        return Err(LoopError::NotALoop(spec.name.clone()));
    };
    match &it.items {
        IteratorItems::Raw(v) => Ok(as_list("the loop's items", v)?
            .into_iter()
            .map(Item::Parameter)
            .collect()),
        IteratorItems::InputParameter(name) => {
            let v = rec
                .inputs
                .parameters
                .get(name)
                .ok_or_else(|| LoopError::NoInput(name.clone()))?;
            Ok(as_list(&format!("the loop's input {name:?}"), v)?
                .into_iter()
                .map(Item::Parameter)
                .collect())
        }
        IteratorItems::InputArtifact(name) => {
            let list = rec
                .inputs
                .artifacts
                .get(name)
                .ok_or_else(|| LoopError::NoInputArtifact(name.clone()))?;
            if list.len() > MAX_ITERATIONS {
                return Err(LoopError::TooManyArtifacts {
                    name: name.clone(),
                    count: list.len(),
                });
            }
            Ok(list.iter().cloned().map(Item::Artifact).collect())
        }
    }
}

pub(crate) fn iteration_id(loop_id: &str, i: usize) -> TaskId {
    RunRecord::child_id(loop_id, &format!("iteration-{i}"))
}

fn iteration_record(
    loop_rec: &TaskRecord,
    item_input: &str,
    i: usize,
    item: Item,
    now: i64,
) -> TaskRecord {
    let mut inputs = loop_rec.inputs.clone();
    match item {
        Item::Parameter(v) => {
            inputs.parameters.insert(item_input.to_string(), v);
        }
        Item::Artifact(a) => {
            inputs.artifacts.insert(item_input.to_string(), vec![a]);
        }
    }
    TaskRecord {
        parent: Some(loop_rec.task_id.clone()),
        iteration: Some(i as u32),
        state: TaskState::Running,
        inputs,
        started_at: Some(now),
        ..TaskRecord::new(
            iteration_id(loop_rec.task_id.as_str(), i),
            loop_rec.name.clone(),
            loop_rec.component.clone(),
            TaskKind::Dag,
            now,
        )
    }
}

/// What one pass over a running loop did.
pub(crate) struct LoopStep {
    pub created: Vec<TaskRecord>,
    pub completed: bool,
}

/// Creates the iterations the parallelism limit allows, or completes the loop once every
/// iteration is done.
pub(crate) fn step_loop(run: &mut RunRecord, loop_id: &str, now: i64) -> LoopStep {
    let mut out = LoopStep {
        created: Vec::new(),
        completed: false,
    };
    let Some(rec) = run.tasks.get(loop_id) else {
        return out;
    };
    let Some(spec) = task_spec(run, rec) else {
        return out;
    };
    let Some(it) = &spec.iterator else {
        return out;
    };
    let (limit, item_input) = (it.parallelism as usize, it.item_input.clone());
    // The task limit is checked once, when the loop starts.
    let starting = !run.tasks.contains_key(&iteration_id(loop_id, 0));
    let items = match items_of(spec, rec).and_then(|items| {
        if starting {
            check_task_limit(run, spec, rec, &items)?;
        }
        Ok(items)
    }) {
        Ok(items) => items,
        Err(e) => {
            if let Some(rec) = run.tasks.get_mut(loop_id) {
                finish(rec, TaskState::Failed, Some(e.to_string()), now);
            }
            out.completed = true;
            return out;
        }
    };
    // Iterations are created in order, but a retried run may miss some in the middle.
    let mut missing = Vec::new();
    let mut unfinished = 0;
    for i in 0..items.len() {
        match run.tasks.get(&iteration_id(loop_id, i)) {
            Some(t) if !t.state.is_terminal() => unfinished += 1,
            Some(_) => {}
            None => missing.push(i),
        }
    }
    let canceling = run.state == RunState::Canceling;
    if !canceling {
        let room = if limit == 0 {
            usize::MAX
        } else {
            limit.saturating_sub(unfinished)
        };
        for &i in missing.iter().take(room) {
            out.created
                .push(iteration_record(rec, &item_input, i, items[i].clone(), now));
        }
    }
    if !out.created.is_empty() || unfinished > 0 || (!missing.is_empty() && !canceling) {
        return out;
    }
    out.completed = true;
    complete(run, loop_id, items.len(), now);
    out
}

fn complete(run: &mut RunRecord, loop_id: &str, total: usize, now: i64) {
    let body = run
        .tasks
        .get(loop_id)
        .and_then(|r| component(&run.pipeline, &r.component))
        .and_then(dag_body);
    let mut outputs = TaskOutputs::default();
    if let Some(dag) = body {
        for name in dag.output_parameters.keys() {
            outputs
                .parameters
                .insert(name.clone(), Value::Array(Vec::new()));
        }
        for name in dag.output_artifacts.keys() {
            outputs.artifacts.insert(name.clone(), Vec::new());
        }
    }
    let mut failure: Option<String> = None;
    let mut canceled = false;
    for i in 0..total {
        let Some(t) = run.tasks.get(&iteration_id(loop_id, i)) else {
            // Never created: the run was canceled first.
            canceled = true;
            continue;
        };
        match t.state {
            TaskState::Failed if failure.is_none() => {
                failure = Some(format!(
                    "iteration {i} failed: {}",
                    t.error.clone().unwrap_or_default()
                ));
            }
            TaskState::Canceled => canceled = true,
            _ => {}
        }
        if !t.state.is_success() {
            continue;
        }
        for (name, v) in &t.outputs.parameters {
            if let Some(Value::Array(list)) = outputs.parameters.get_mut(name) {
                list.push(v.clone());
            }
        }
        for (name, arts) in &t.outputs.artifacts {
            if let Some(list) = outputs.artifacts.get_mut(name) {
                list.extend(arts.iter().cloned());
            }
        }
    }
    let Some(rec) = run.tasks.get_mut(loop_id) else {
        return;
    };
    if let Some(e) = failure {
        finish(rec, TaskState::Failed, Some(e), now);
    } else if canceled {
        finish(rec, TaskState::Canceled, Some("run canceled".into()), now);
    } else {
        rec.outputs = outputs;
        finish(rec, TaskState::Succeeded, None, now);
    }
}
