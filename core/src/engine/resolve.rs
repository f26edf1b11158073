//! Input resolution: where each input of a task gets its value inside its parent DAG.

use std::collections::BTreeMap;

use gantry_model::{ArtifactRef, ParamError, ParamType, StepInputs};
use serde_json::{json, Value};

use super::{RunRecord, TaskRecord, TaskState};
use crate::ir::selector::SelectorError;
use crate::ir::{
    selector, ArtifactSource, ComponentSpec, DagOutputParameter, DagSpec, Implementation,
    IteratorItems, OutputSelector, ParameterSource, TaskSpec,
};

/// The DAG of a DAG component.
pub(crate) fn dag_body(comp: &ComponentSpec) -> Option<&DagSpec> {
    match &comp.implementation {
        Implementation::Dag(d) => Some(d),
        Implementation::Executor(_) => None,
    }
}

/// What resolving a task's inputs found.
pub(crate) enum Resolution {
    Resolved(StepInputs),
    /// An input comes from a task that was skipped: the task cannot run and is skipped too
    /// (the text is the skip reason shown on the task, not an error).
    Unavailable(String),
    /// The inputs are inconsistent at run time (a producer lacks a declared output, a type
    /// does not convert): the task fails.
    Error(ResolveError),
}

/// Why a task's inputs, or a finished DAG's outputs, cannot be resolved at run time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error("producer task {0:?} has not run")]
    ProducerNotRun(String),
    #[error("task {task:?} finished without output parameter {output:?}")]
    NoOutputParameter { task: String, output: String },
    #[error("task {task:?} finished without output artifact {output:?}")]
    NoOutputArtifact { task: String, output: String },
    #[error("parent DAG {0:?} is not instantiated")]
    NoParent(String),
    /// A `PipelineTaskFinalStatus` input names a task that has not run.
    #[error("input {input:?}: task {task:?} has not run")]
    StatusOfTaskNotRun { input: String, task: String },
    #[error("input {input:?}: {error}")]
    Selector { input: String, error: SelectorError },
    #[error("input {input:?}: {error}")]
    Type { input: String, error: ParamError },
    #[error("required input {0:?} has no value")]
    NoInput(String),
    #[error("required input artifact {0:?} has no value")]
    NoInputArtifact(String),
    #[error("output {output:?}: {error}")]
    DagOutput {
        output: String,
        error: Box<ResolveError>,
    },
    #[error("output artifact {output:?}: {error}")]
    DagOutputArtifact {
        output: String,
        error: Box<ResolveError>,
    },
}

fn sibling<'a>(run: &'a RunRecord, parent_id: &str, name: &str) -> Option<&'a TaskRecord> {
    run.tasks.get(&RunRecord::child_id(parent_id, name))
}

/// The value a finished task exposes to `dsl.PipelineTaskFinalStatus`, spelled as Kubeflow's
/// backend spells it: states are ML Metadata execution states (`COMPLETE` for a success, as
/// KFP's own status-state test asserts) and the job resource name starts with the pipeline's
/// name.
fn final_status(run: &RunRecord, task: &TaskRecord) -> Value {
    let state = match task.state {
        TaskState::Succeeded => "COMPLETE",
        TaskState::Cached => "CACHED",
        TaskState::Failed => "FAILED",
        TaskState::Canceled => "CANCELED",
        TaskState::Skipped => "SKIPPED",
        TaskState::Ready | TaskState::Running => "RUNNING",
    };
    json!({
        "state": state,
        "error": {
            "code": if task.state == TaskState::Failed { 1 } else { 0 },
            "message": task.error.clone().unwrap_or_default(),
        },
        "pipelineJobResourceName": format!("{}-{}", run.pipeline.name, run.run_id),
        "pipelineTaskName": task.name,
    })
}

/// The status of the run itself while it runs, for a final-status input nothing is bound to.
fn run_status(run: &RunRecord) -> Value {
    json!({
        "state": "RUNNING",
        "error": {"code": 0, "message": ""},
        "pipelineJobResourceName": format!("{}-{}", run.pipeline.name, run.run_id),
        "pipelineTaskName": run.pipeline.name,
    })
}

fn task_output_parameter(
    run: &RunRecord,
    parent_id: &str,
    sel: &OutputSelector,
) -> Result<Option<Value>, Resolution> {
    let Some(producer) = sibling(run, parent_id, &sel.producer_task) else {
        return Err(Resolution::Error(ResolveError::ProducerNotRun(
            sel.producer_task.clone(),
        )));
    };
    if !producer.state.is_success() {
        return Ok(None);
    }
    match producer.outputs.parameters.get(&sel.output_key) {
        Some(v) => Ok(Some(v.clone())),
        None => Err(Resolution::Error(ResolveError::NoOutputParameter {
            task: sel.producer_task.clone(),
            output: sel.output_key.clone(),
        })),
    }
}

fn task_output_artifacts(
    run: &RunRecord,
    parent_id: &str,
    sel: &OutputSelector,
) -> Result<Option<Vec<ArtifactRef>>, Resolution> {
    let Some(producer) = sibling(run, parent_id, &sel.producer_task) else {
        return Err(Resolution::Error(ResolveError::ProducerNotRun(
            sel.producer_task.clone(),
        )));
    };
    if !producer.state.is_success() {
        return Ok(None);
    }
    match producer.outputs.artifacts.get(&sel.output_key) {
        Some(v) => Ok(Some(v.clone())),
        None => Err(Resolution::Error(ResolveError::NoOutputArtifact {
            task: sel.producer_task.clone(),
            output: sel.output_key.clone(),
        })),
    }
}

/// Resolves the inputs of `task` (a child of the DAG task `parent_id`) against the run.
pub(crate) fn resolve_inputs(
    run: &RunRecord,
    parent_id: &str,
    task: &TaskSpec,
    component: &ComponentSpec,
) -> Resolution {
    let Some(parent) = run.tasks.get(parent_id) else {
        return Resolution::Error(ResolveError::NoParent(parent_id.to_string()));
    };
    // A loop's item input is bound per iteration, not here.
    let item_input = task.iterator.as_ref().map(|it| it.item_input.as_str());
    let item_is_artifact = task
        .iterator
        .as_ref()
        .is_some_and(|it| matches!(it.items, IteratorItems::InputArtifact(_)));
    let mut parameters = BTreeMap::new();
    for (name, binding) in &task.parameters {
        let value = match &binding.source {
            ParameterSource::Constant(v) => Some(v.clone()),
            ParameterSource::ComponentInput(n) => parent.inputs.parameters.get(n).cloned(),
            ParameterSource::TaskOutput(sel) => match task_output_parameter(run, parent_id, sel) {
                Ok(Some(v)) => Some(v),
                Ok(None) => {
                    if component
                        .input_parameters
                        .get(name)
                        .is_some_and(|d| d.optional || d.default.is_some())
                    {
                        None
                    } else {
                        return Resolution::Unavailable(format!(
                            "input {name:?} comes from task {:?}, which did not succeed",
                            sel.producer_task
                        ));
                    }
                }
                Err(r) => return r,
            },
            ParameterSource::TaskFinalStatus(producer) => match sibling(run, parent_id, producer) {
                Some(t) => Some(final_status(run, t)),
                None => {
                    return Resolution::Error(ResolveError::StatusOfTaskNotRun {
                        input: name.clone(),
                        task: producer.clone(),
                    })
                }
            },
        };
        let value = match (value, &binding.selector) {
            (Some(v), Some(sel)) => match selector::select(sel, &v, run.limits.cel_budget()) {
                Ok(v) => Some(v),
                Err(error) => {
                    return Resolution::Error(ResolveError::Selector {
                        input: name.clone(),
                        error,
                    })
                }
            },
            (v, _) => v,
        };
        if let Some(v) = value {
            let v = match component.input_parameters.get(name) {
                Some(def) => match def.ptype.coerce(&v) {
                    Ok(v) => v,
                    // The SDK types a loop item (and a field of one) as STRING when the list
                    // declares no element type, whatever the items hold: a DAG passes such a
                    // value on as it is, a step gets its JSON text, as from the KFP backend.
                    Err(_) if def.ptype == ParamType::String => match &component.implementation {
                        Implementation::Dag(_) => v,
                        Implementation::Executor(_) => Value::String(v.to_string()),
                    },
                    Err(error) => {
                        return Resolution::Error(ResolveError::Type {
                            input: name.clone(),
                            error,
                        })
                    }
                },
                None => v,
            };
            parameters.insert(name.clone(), v);
        }
    }
    for (name, def) in &component.input_parameters {
        if parameters.contains_key(name) || (item_input == Some(name) && !item_is_artifact) {
            continue;
        }
        if let Some(d) = &def.default {
            parameters.insert(name.clone(), d.clone());
        } else if def.ptype == ParamType::TaskFinalStatus
            && matches!(component.implementation, Implementation::Executor(_))
        {
            // A component with a `PipelineTaskFinalStatus` input run outside an exit handler
            // (compiled on its own, KFP issue 12033): kfp's executor cannot start without a
            // status, so the step gets the run's own, still running.
            parameters.insert(name.clone(), run_status(run));
        } else if !def.optional {
            return Resolution::Error(ResolveError::NoInput(name.clone()));
        }
    }

    let mut artifacts = BTreeMap::new();
    for (name, source) in &task.artifacts {
        let value = match source {
            ArtifactSource::ComponentInput(n) => parent.inputs.artifacts.get(n).cloned(),
            ArtifactSource::TaskOutput(sel) => match task_output_artifacts(run, parent_id, sel) {
                Ok(v) => v,
                Err(r) => return r,
            },
        };
        match value {
            Some(v) => {
                artifacts.insert(name.clone(), v);
            }
            None => {
                if !component
                    .input_artifacts
                    .get(name)
                    .is_some_and(|d| d.optional)
                {
                    return Resolution::Unavailable(format!(
                        "input artifact {name:?} is not available (its producer did not succeed)"
                    ));
                }
            }
        }
    }
    for (name, def) in &component.input_artifacts {
        let is_item = item_is_artifact && item_input == Some(name);
        if !(artifacts.contains_key(name) || def.optional || is_item) {
            return Resolution::Error(ResolveError::NoInputArtifact(name.clone()));
        }
    }
    Resolution::Resolved(StepInputs {
        parameters,
        artifacts,
    })
}

/// The outputs a finished DAG exposes to its parent, from its children's outputs.
pub(crate) fn dag_outputs(
    run: &RunRecord,
    dag_task_id: &str,
    dag: &DagSpec,
) -> Result<super::TaskOutputs, ResolveError> {
    let mut out = super::TaskOutputs::default();
    for (name, spec) in &dag.output_parameters {
        let selectors: Vec<&OutputSelector> = match spec {
            DagOutputParameter::Single(s) => vec![s],
            DagOutputParameter::OneOf(list) => list.iter().collect(),
        };
        for sel in selectors {
            match task_output_parameter(run, dag_task_id, sel) {
                Ok(Some(v)) => {
                    out.parameters.insert(name.clone(), v);
                    break;
                }
                Ok(None) => continue,
                Err(Resolution::Error(e)) => {
                    return Err(ResolveError::DagOutput {
                        output: name.clone(),
                        error: Box::new(e),
                    })
                }
                Err(_) => continue,
            }
        }
    }
    for (name, selectors) in &dag.output_artifacts {
        for sel in selectors {
            match task_output_artifacts(run, dag_task_id, sel) {
                Ok(Some(v)) => {
                    out.artifacts.insert(name.clone(), v);
                    break;
                }
                Ok(None) => continue,
                Err(Resolution::Error(e)) => {
                    return Err(ResolveError::DagOutputArtifact {
                        output: name.clone(),
                        error: Box::new(e),
                    })
                }
                Err(_) => continue,
            }
        }
    }
    Ok(out)
}
