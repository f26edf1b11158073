//! Approval gates, which KFP lacks: a step whose pod annotations (kfp-kubernetes
//! `add_pod_annotation`) say `gantry.dev/approval: required` becomes READY as any step, but
//! is not placed until a person approves it (`gantry run approve RUN TASK`). A rejection, or
//! no decision within `gantry.dev/approval-timeout` (`90s`, `30m`, `2h`, `1d`) of the step
//! becoming ready, fails it with the reason, and the run fails as for any failed step.
//! Decisions are commands: committed, replayed alike, and they name who decided.

use serde::{Deserialize, Serialize};

use super::{RunRecord, TaskKind, TaskRecord, TaskState};
use crate::ir::{Implementation, PipelineSpec};
use gantry_model::TaskId;

pub const ANNOTATION: &str = "gantry.dev/approval";
pub const TIMEOUT_ANNOTATION: &str = "gantry.dev/approval-timeout";
/// The value of [`ANNOTATION`] that asks for a gate.
pub const REQUIRED: &str = "required";
/// Longest reason kept with a decision, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

/// What an executor's annotations ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub timeout_ms: Option<i64>,
}

/// A decision on a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub approved: bool,
    /// Who decided, as the API authenticated them (or `gantry` for a timeout).
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApprovalError {
    #[error("run {run} has no task {task:?}")]
    NoTask { run: String, task: String },
    #[error("task {task:?} has no approval gate (annotation {ANNOTATION}: {REQUIRED})")]
    NoGate { task: String },
    #[error("task {task:?} is {state}, not waiting for approval")]
    NotWaiting { task: String, state: &'static str },
    #[error("the reason is {0} bytes; the most is {MAX_REASON_BYTES}")]
    ReasonTooLong(usize),
}

fn annotations<'a>(
    spec: &'a PipelineSpec,
    label: &str,
) -> Option<&'a serde_json::Map<String, serde_json::Value>> {
    spec.platform_spec
        .as_ref()?
        .pointer("/platforms/kubernetes/deploymentSpec/executors")?
        .get(label)?
        .pointer("/podMetadata/annotations")?
        .as_object()
}

/// `90s`, `30m`, `2h`, `1d` (a whole number and one unit) in milliseconds.
fn parse_timeout(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(unit_at);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

/// The gate of executor `label`, if its annotations ask for one; an error names a bad value.
pub fn executor_gate(spec: &PipelineSpec, label: &str) -> Result<Option<Gate>, String> {
    let Some(ann) = annotations(spec, label) else {
        return Ok(None);
    };
    let timeout = match ann.get(TIMEOUT_ANNOTATION) {
        None => None,
        Some(v) => Some(v.as_str().and_then(parse_timeout).ok_or_else(|| {
            format!(
                "executor {label:?}: annotation {TIMEOUT_ANNOTATION} is {v}, not a duration \
                 like 90s, 30m, 2h or 1d"
            )
        })?),
    };
    match ann.get(ANNOTATION) {
        None if timeout.is_some() => Err(format!(
            "executor {label:?}: annotation {TIMEOUT_ANNOTATION} without {ANNOTATION}: {REQUIRED}"
        )),
        None => Ok(None),
        Some(v) if v.as_str() == Some(REQUIRED) => Ok(Some(Gate {
            timeout_ms: timeout,
        })),
        Some(v) => Err(format!(
            "executor {label:?}: annotation {ANNOTATION} is {v}; the one value it takes is \
             {REQUIRED:?}"
        )),
    }
}

/// Bad gate annotations, one line each (refused at submit).
pub fn refusals(spec: &PipelineSpec) -> Vec<String> {
    spec.executors
        .keys()
        .filter_map(|label| executor_gate(spec, label).err())
        .collect()
}

/// Whether any executor's gate has a timeout (the run then has a timer to watch).
pub fn has_timeouts(spec: &PipelineSpec) -> bool {
    spec.platform_spec.is_some()
        && spec.executors.keys().any(|l| {
            matches!(
                executor_gate(spec, l),
                Ok(Some(Gate {
                    timeout_ms: Some(_)
                }))
            )
        })
}

/// The gate of a task's executor.
pub fn gate_of(run: &RunRecord, t: &TaskRecord) -> Option<Gate> {
    run.pipeline.platform_spec.as_ref()?;
    if t.kind != TaskKind::Container {
        return None;
    }
    let comp = super::advance::component(&run.pipeline, &t.component)?;
    let Implementation::Executor(label) = &comp.implementation else {
        return None;
    };
    executor_gate(&run.pipeline, label).ok().flatten()
}

/// Whether the task is READY but waits for a decision: not to be placed or served from the
/// cache.
pub fn awaiting(run: &RunRecord, t: &TaskRecord) -> bool {
    t.state == TaskState::Ready && t.approval.is_none() && gate_of(run, t).is_some()
}

/// The gates past their timeout at `now`, with the timeout.
pub fn overdue(run: &RunRecord, now: i64) -> Vec<(TaskId, i64)> {
    run.ready_tasks()
        .filter(|t| t.approval.is_none())
        .filter_map(|t| {
            let limit = gate_of(run, t)?.timeout_ms?;
            (t.created_at.saturating_add(limit) <= now).then(|| (t.task_id.clone(), limit))
        })
        .collect()
}

/// Records a decision on a waiting gate. An approval leaves the task READY for placement; a
/// rejection fails it (call [`super::advance`] afterwards).
pub fn decide(
    run: &mut RunRecord,
    task_id: &TaskId,
    decision: Decision,
) -> Result<(), ApprovalError> {
    if decision.reason.len() > MAX_REASON_BYTES {
        return Err(ApprovalError::ReasonTooLong(decision.reason.len()));
    }
    let Some(t) = run.tasks.get(task_id) else {
        return Err(ApprovalError::NoTask {
            run: run.run_id.to_string(),
            task: task_id.to_string(),
        });
    };
    if gate_of(run, t).is_none() {
        return Err(ApprovalError::NoGate {
            task: t.name.clone(),
        });
    }
    if !awaiting(run, t) {
        return Err(ApprovalError::NotWaiting {
            task: t.name.clone(),
            state: t.state.as_str(),
        });
    }
    let Some(t) = run.tasks.get_mut(task_id) else {
        return Ok(());
    };
    if !decision.approved {
        let why = if decision.reason.is_empty() {
            format!("rejected by {}", decision.by)
        } else {
            format!("rejected by {}: {}", decision.by, decision.reason)
        };
        t.state = TaskState::Failed;
        t.error = Some(why.clone());
        t.finished_at = Some(decision.at);
        if run.error.is_none() {
            run.error = Some(format!("task {:?} failed: {why}", t.name));
        }
    }
    if let Some(t) = run.tasks.get_mut(task_id) {
        t.approval = Some(decision);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_a_number_and_a_unit() {
        assert_eq!(parse_timeout("90s"), Some(90_000));
        assert_eq!(parse_timeout("2h"), Some(7_200_000));
        assert_eq!(parse_timeout("1d"), Some(86_400_000));
        assert_eq!(parse_timeout("0s"), None);
        assert_eq!(parse_timeout("1 week"), None);
        assert_eq!(parse_timeout("h"), None);
        assert_eq!(parse_timeout("99999999999999999d"), None);
    }
}
