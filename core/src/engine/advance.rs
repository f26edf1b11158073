//! Moving a run forward to the next fixpoint.

use gantry_model::{AgentId, ArtifactRef, TaskId};

use super::resolve::{dag_outputs, resolve_inputs, Resolution};
use super::{RunRecord, RunState, TaskKind, TaskRecord, TaskState, ROOT_TASK_ID};
use crate::ir::{
    condition, ComponentSpec, DagSpec, ExecutorSpec, Implementation, ImporterUri, PipelineSpec,
    TaskSpec, TriggerStrategy,
};

/// What [`advance`] did, for the caller to react to (wake the scheduler, tell watchers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Container tasks that became ready for placement.
    pub ready: Vec<TaskId>,
    /// The run reached a terminal state in this call.
    pub finished: Option<RunState>,
    /// Claims the run is done with (deleted, or left when it ended), by the agent that holds
    /// them: it removes them.
    pub released: Vec<(AgentId, Vec<String>)>,
}

pub(crate) fn component<'a>(pipeline: &'a PipelineSpec, key: &str) -> Option<&'a ComponentSpec> {
    if key == "root" {
        Some(&pipeline.root)
    } else {
        pipeline.component(key)
    }
}

fn dag_of<'a>(pipeline: &'a PipelineSpec, task: &TaskRecord) -> Option<&'a DagSpec> {
    match &component(pipeline, &task.component)?.implementation {
        Implementation::Dag(d) => Some(d),
        Implementation::Executor(_) => None,
    }
}

fn new_record(
    parent_id: &str,
    spec: &TaskSpec,
    kind: TaskKind,
    iteration: Option<u32>,
    now: i64,
) -> TaskRecord {
    TaskRecord {
        parent: (parent_id != ROOT_TASK_ID).then(|| TaskId::from(parent_id)),
        // Inside a loop body every task carries the index of its innermost iteration.
        iteration,
        ..TaskRecord::new(
            RunRecord::child_id(parent_id, &spec.name),
            spec.name.clone(),
            spec.component.clone(),
            kind,
            now,
        )
    }
}

pub(crate) fn finish(rec: &mut TaskRecord, state: TaskState, error: Option<String>, now: i64) {
    rec.state = state;
    rec.error = error;
    rec.finished_at = Some(now);
}

/// The record of a not-yet-instantiated task, or `None` while it must wait for upstream tasks.
fn decide(run: &RunRecord, parent_id: &str, spec: &TaskSpec, now: i64) -> Option<TaskRecord> {
    let iteration = run.tasks.get(parent_id).and_then(|p| p.iteration);
    let Some(comp) = component(&run.pipeline, &spec.component) else {
        // Validation guarantees the component exists; fail the task rather than panic.
        let mut rec = new_record(parent_id, spec, TaskKind::Container, iteration, now);
        finish(
            &mut rec,
            TaskState::Failed,
            Some(format!("unknown component {:?}", spec.component)),
            now,
        );
        return Some(rec);
    };
    let kind = match &comp.implementation {
        Implementation::Dag(_) if spec.iterator.is_some() => TaskKind::Loop,
        Implementation::Dag(_) => TaskKind::Dag,
        Implementation::Executor(label) => match run.pipeline.executors.get(label) {
            Some(ExecutorSpec::Importer(_)) => TaskKind::Importer,
            _ => TaskKind::Container,
        },
    };
    let mut failed_upstream = None;
    for up in spec.upstream() {
        match run.tasks.get(&RunRecord::child_id(parent_id, up)) {
            None => return None,
            Some(t) if !t.state.is_terminal() => return None,
            Some(t) if matches!(t.state, TaskState::Failed | TaskState::Canceled) => {
                failed_upstream.get_or_insert(up);
            }
            Some(_) => {}
        }
    }
    let mut rec = new_record(parent_id, spec, kind, iteration, now);
    if run.state == RunState::Canceling {
        let why = if run.timed_out.is_some() {
            "run timed out"
        } else {
            "run canceled"
        };
        finish(&mut rec, TaskState::Canceled, Some(why.into()), now);
        return Some(rec);
    }
    if let Some(up) = failed_upstream {
        if spec.trigger_strategy == TriggerStrategy::AllUpstreamSucceeded {
            finish(
                &mut rec,
                TaskState::Skipped,
                Some(format!("upstream task {up:?} failed")),
                now,
            );
            return Some(rec);
        }
    }
    match resolve_inputs(run, parent_id, spec, comp) {
        Resolution::Resolved(inputs) => rec.inputs = inputs,
        Resolution::Unavailable(why) => {
            finish(&mut rec, TaskState::Skipped, Some(why), now);
            return Some(rec);
        }
        Resolution::Error(e) => {
            finish(&mut rec, TaskState::Failed, Some(e.to_string()), now);
            return Some(rec);
        }
    }
    if let Some(expr) = &spec.condition {
        match condition::evaluate(expr, &rec.inputs.parameters, run.limits.cel_budget()) {
            Ok(true) => {}
            Ok(false) => {
                finish(
                    &mut rec,
                    TaskState::Skipped,
                    Some(format!("condition is false: {expr}")),
                    now,
                );
                return Some(rec);
            }
            Err(e) => {
                finish(
                    &mut rec,
                    TaskState::Failed,
                    Some(format!("condition {expr:?} could not be evaluated: {e}")),
                    now,
                );
                return Some(rec);
            }
        }
    }
    if let Some(stub) = super::claims::stub_of(&run.pipeline, comp) {
        super::claims::run_stub(run, stub, &mut rec, now);
        return Some(rec);
    }
    match kind {
        TaskKind::Dag | TaskKind::Loop => {
            rec.state = TaskState::Running;
            rec.started_at = Some(now);
        }
        TaskKind::Container => match super::step::task_resources(run, &rec) {
            Ok(_) => {
                rec.state = TaskState::Ready;
                if spec.cache_enabled {
                    rec.cache_key = super::cache::cache_key(run, comp, &rec);
                }
            }
            Err(e) => finish(&mut rec, TaskState::Failed, Some(e.to_string()), now),
        },
        TaskKind::Importer => import(run, comp, &mut rec, now),
    }
    Some(rec)
}

/// An importer produces its artifact without running anything.
fn import(run: &RunRecord, comp: &ComponentSpec, rec: &mut TaskRecord, now: i64) {
    rec.started_at = Some(now);
    let spec = match &comp.implementation {
        Implementation::Executor(label) => match run.pipeline.executors.get(label) {
            Some(ExecutorSpec::Importer(i)) => i,
            _ => return finish(rec, TaskState::Failed, Some("not an importer".into()), now),
        },
        Implementation::Dag(_) => {
            return finish(rec, TaskState::Failed, Some("not an importer".into()), now)
        }
    };
    let uri = match &spec.artifact_uri {
        ImporterUri::Constant(u) => u.clone(),
        ImporterUri::Parameter(p) => match rec.inputs.parameters.get(p) {
            Some(serde_json::Value::String(s)) => s.clone(),
            other => {
                let msg = format!("importer URI parameter {p:?} is not a string: {other:?}");
                return finish(rec, TaskState::Failed, Some(msg), now);
            }
        },
    };
    if let Some(why) = run.uri_policy.as_ref().and_then(|p| p.check(&uri).err()) {
        let msg = format!("importer {:?}: {why}", rec.name);
        return finish(rec, TaskState::Failed, Some(msg), now);
    }
    let Some((out_name, _)) = comp.output_artifacts.iter().next() else {
        let msg = "importer declares no output artifact".to_string();
        return finish(rec, TaskState::Failed, Some(msg), now);
    };
    rec.outputs.artifacts.insert(
        out_name.clone(),
        vec![ArtifactRef {
            name: out_name.clone(),
            uri,
            schema_title: spec.schema_title.clone(),
            schema_version: spec.schema_version.clone(),
            metadata: spec.metadata.clone(),
        }],
    );
    finish(rec, TaskState::Succeeded, None, now);
}

/// Completes a running DAG task whose children are all terminal. Returns false if some child
/// is still going.
fn try_complete_dag(run: &mut RunRecord, dag_task_id: &str, now: i64) -> bool {
    let Some(rec) = run.tasks.get(dag_task_id) else {
        return false;
    };
    let Some(dag) = dag_of(&run.pipeline, rec) else {
        return false;
    };
    let mut first_failure: Option<(TaskId, String)> = None;
    let mut canceled = false;
    for name in dag.tasks.keys() {
        match run.tasks.get(&RunRecord::child_id(dag_task_id, name)) {
            Some(t) if t.state.is_terminal() => match t.state {
                TaskState::Failed if first_failure.is_none() => {
                    let err = t.error.clone().unwrap_or_default();
                    first_failure = Some((t.task_id.clone(), err));
                }
                TaskState::Canceled => canceled = true,
                _ => {}
            },
            _ => return false,
        }
    }
    let (state, error, outputs) = if let Some((child, err)) = first_failure {
        (
            TaskState::Failed,
            Some(format!("task {child:?} failed: {err}")),
            None,
        )
    } else if canceled {
        (TaskState::Canceled, Some("run canceled".to_string()), None)
    } else {
        match dag_outputs(run, dag_task_id, dag) {
            Ok(o) => (TaskState::Succeeded, None, Some(o)),
            Err(e) => (TaskState::Failed, Some(e.to_string()), None),
        }
    };
    if let Some(rec) = run.tasks.get_mut(dag_task_id) {
        if let Some(o) = outputs {
            rec.outputs = o;
        }
        finish(rec, state, error, now);
    }
    true
}

/// The run's error is the first task failure.
fn note_failure(run: &mut RunRecord, task_id: &str) {
    if run.error.is_some() {
        return;
    }
    if let Some(t) = run.tasks.get(task_id) {
        if t.state == TaskState::Failed {
            run.error = Some(format!(
                "task {:?} failed: {}",
                t.task_id,
                t.error.clone().unwrap_or_default()
            ));
        }
    }
}

/// What one look at a running DAG did.
#[derive(Default)]
struct DagStep {
    /// The children it decided: id, kind and state.
    created: Vec<(TaskId, TaskKind, TaskState)>,
    /// Every child was over, and so is the DAG now.
    completed: bool,
}

/// Decides the children of running DAG `dag_id` whose upstream tasks are over, then completes
/// it if every child is.
fn step_dag(run: &mut RunRecord, dag_id: &str, now: i64, progress: &mut Progress) -> DagStep {
    let mut out = DagStep::default();
    let Some(dag) = run.tasks.get(dag_id).and_then(|t| dag_of(&run.pipeline, t)) else {
        return out;
    };
    let mut created = Vec::new();
    for spec in dag.tasks.values() {
        if run
            .tasks
            .contains_key(&RunRecord::child_id(dag_id, &spec.name))
        {
            continue;
        }
        if let Some(rec) = decide(run, dag_id, spec, now) {
            created.push(rec);
        }
    }
    for mut rec in created {
        let stub = component(&run.pipeline, &rec.component)
            .and_then(|c| super::claims::stub_of(&run.pipeline, c));
        if let Some(stub) = stub {
            if let Some((name, Some(home))) = super::claims::record(run, stub, &mut rec, now) {
                progress.released.push((home, vec![name]));
            }
        }
        if rec.state == TaskState::Ready {
            progress.ready.push(rec.task_id.clone());
        }
        let failed = rec.state == TaskState::Failed;
        let id = rec.task_id.clone();
        out.created.push((id.clone(), rec.kind, rec.state));
        run.tasks.insert(rec.task_id.clone(), rec);
        if failed {
            note_failure(run, id.as_str());
        }
    }
    out.completed = try_complete_dag(run, dag_id, now);
    out
}

/// Moves `run` forward as far as the recorded facts allow, looking at every running DAG and
/// loop until none moves.
pub fn advance(run: &mut RunRecord, now: i64) -> Progress {
    let mut progress = Progress::default();
    if run.state.is_terminal() {
        return progress;
    }
    loop {
        let mut changed = false;
        let running_dags: Vec<TaskId> = run
            .tasks
            .values()
            .filter(|t| t.kind == TaskKind::Dag && t.state == TaskState::Running)
            .map(|t| t.task_id.clone())
            .collect();
        for dag_id in running_dags {
            let step = step_dag(run, dag_id.as_str(), now, &mut progress);
            if step.completed || !step.created.is_empty() {
                changed = true;
            }
        }
        let running_loops: Vec<TaskId> = run
            .tasks
            .values()
            .filter(|t| t.kind == TaskKind::Loop && t.state == TaskState::Running)
            .map(|t| t.task_id.clone())
            .collect();
        for loop_id in running_loops {
            let step = super::loops::step_loop(run, loop_id.as_str(), now);
            if step.completed || !step.created.is_empty() {
                changed = true;
            }
            for rec in step.created {
                run.tasks.insert(rec.task_id.clone(), rec);
            }
            if step.completed {
                note_failure(run, loop_id.as_str());
            }
        }
        if !changed {
            break;
        }
    }
    settle_run(run, now, &mut progress);
    progress
}

/// Like [`advance`] after the state of task `task_id` alone changed (an attempt's result was
/// recorded): only the DAGs and loops above it, and those their progress creates, can move,
/// so only they are looked at. A result then costs the depth of the task, not the size of
/// the run — on a wide fan-out the full walk made every result cost the whole run, on every
/// replica.
///
/// Debug builds also run the full [`advance`] on a copy and panic if the two differ, so every
/// test that records a result checks this shortcut.
pub fn advance_from(run: &mut RunRecord, task_id: &TaskId, now: i64) -> Progress {
    #[cfg(debug_assertions)]
    let reference = {
        let mut copy = run.clone();
        let progress = advance(&mut copy, now);
        (copy, progress)
    };
    let progress = advance_targeted(run, task_id.as_str(), now);
    #[cfg(debug_assertions)]
    {
        let (copy, mut expected) = reference;
        assert!(
            *run == copy,
            "advancing after {task_id:?} differs from the full walk"
        );
        let mut got = progress.ready.clone();
        got.sort();
        expected.ready.sort();
        assert_eq!(got, expected.ready, "tasks made ready after {task_id:?}");
        assert_eq!(progress.finished, expected.finished);
    }
    progress
}

fn advance_targeted(run: &mut RunRecord, task_id: &str, now: i64) -> Progress {
    let mut progress = Progress::default();
    if run.state.is_terminal() {
        return progress;
    }
    let parent_of = |run: &RunRecord, id: &str| -> Option<TaskId> {
        if id == ROOT_TASK_ID {
            return None;
        }
        Some(
            run.tasks
                .get(id)
                .and_then(|t| t.parent.clone())
                .unwrap_or_else(|| TaskId::from(ROOT_TASK_ID)),
        )
    };
    // Smallest id first, as the full walk goes.
    let mut work: std::collections::BTreeSet<TaskId> =
        parent_of(run, task_id).into_iter().collect();
    while let Some(id) = work.pop_first() {
        let Some(t) = run.tasks.get(&id) else {
            continue;
        };
        if t.state != TaskState::Running {
            continue;
        }
        match t.kind {
            TaskKind::Dag => {
                let step = step_dag(run, id.as_str(), now, &mut progress);
                for (child, kind, state) in &step.created {
                    if state == &TaskState::Running
                        && matches!(kind, TaskKind::Dag | TaskKind::Loop)
                    {
                        work.insert(child.clone());
                    }
                }
                if step.completed {
                    work.extend(parent_of(run, id.as_str()));
                } else if !step.created.is_empty() {
                    // A child decided over at once (skipped, failed, imported) may let its
                    // siblings be decided.
                    work.insert(id);
                }
            }
            TaskKind::Loop => {
                let step = super::loops::step_loop(run, id.as_str(), now);
                for rec in step.created {
                    work.insert(rec.task_id.clone());
                    run.tasks.insert(rec.task_id.clone(), rec);
                }
                if step.completed {
                    note_failure(run, id.as_str());
                    work.extend(parent_of(run, id.as_str()));
                }
            }
            TaskKind::Container | TaskKind::Importer => {}
        }
    }
    settle_run(run, now, &mut progress);
    progress
}

/// Ends the run when its root task is over.
fn settle_run(run: &mut RunRecord, now: i64, progress: &mut Progress) {
    if let Some(root) = run.tasks.get(ROOT_TASK_ID) {
        let state = match root.state {
            TaskState::Succeeded => Some(RunState::Succeeded),
            TaskState::Failed => Some(RunState::Failed),
            TaskState::Canceled => Some(RunState::Canceled),
            _ => None,
        };
        if let Some(state) = state {
            // A cancel that raced with the last task still ends the run as canceled; a run
            // stopped by its timeout fails.
            let state = if run.timed_out.is_some() {
                run.error = run.timed_out.clone();
                RunState::Failed
            } else if run.state == RunState::Canceling {
                RunState::Canceled
            } else {
                state
            };
            if state == RunState::Failed && run.error.is_none() {
                run.error = root.error.clone();
            }
            run.state = state;
            run.finished_at = Some(now);
            progress.finished = Some(state);
            progress.released.extend(super::claims::left_over(run));
        }
    }
}
