//! Conversions between proto messages and domain types, in one place: ids travel as strings
//! on the wire and as newtypes inside; states as proto enums on the wire.

use std::collections::BTreeMap;

use gantry_core::engine::{RunRecord, RunState, TaskState, ROOT_TASK_ID};
use gantry_core::state::AgentRecord;
use gantry_model::{AttemptKey, TaskId};
use gantry_proto::v1 as pb;
use serde_json::{json, Value};

use crate::dispatch::Waiting;

/// A run's state on the wire.
pub fn run_state(s: RunState) -> pb::RunState {
    match s {
        RunState::Pending => pb::RunState::Pending,
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Canceling => pb::RunState::Canceling,
        RunState::Canceled => pb::RunState::Canceled,
    }
}

/// A task's state on the wire.
pub fn task_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Ready => pb::TaskState::Ready,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Skipped => pb::TaskState::Skipped,
        TaskState::Cached => pb::TaskState::Cached,
        TaskState::Canceled => pb::TaskState::Canceled,
    }
}

/// How the API shows an agent: lost (until it registers again) before connected.
pub fn agent_state(a: &AgentRecord, connected: bool) -> pb::AgentState {
    if a.lost_at.is_some() {
        pb::AgentState::Lost
    } else if connected {
        pb::AgentState::Connected
    } else {
        pb::AgentState::Disconnected
    }
}

/// The attempt an agent's message names.
pub fn attempt_key(r: pb::AttemptRef) -> AttemptKey {
    AttemptKey {
        run_id: r.run_id.into(),
        task_id: r.task_id.into(),
        attempt: r.attempt,
    }
}

/// An attempt as messages to agents name it.
pub fn attempt_ref(k: &AttemptKey) -> pb::AttemptRef {
    pb::AttemptRef {
        run_id: k.run_id.to_string(),
        task_id: k.task_id.to_string(),
        attempt: k.attempt,
    }
}

pub fn task_outputs_json(outputs: &gantry_core::engine::TaskOutputs) -> String {
    let artifacts: BTreeMap<&String, Vec<Value>> = outputs
        .artifacts
        .iter()
        .map(|(name, list)| {
            let v = list
                .iter()
                .map(|a| {
                    json!({
                        "uri": a.uri,
                        "type": a.schema_title,
                        "metadata": a.metadata,
                    })
                })
                .collect();
            (name, v)
        })
        .collect();
    json!({ "parameters": outputs.parameters, "artifacts": artifacts }).to_string()
}

/// A decision on a gate, as clients print it.
pub fn approval_text(d: &gantry_core::engine::approval::Decision) -> String {
    let verb = if d.approved { "approved" } else { "rejected" };
    if d.reason.is_empty() {
        format!("{verb} by {}", d.by)
    } else {
        format!("{verb} by {}: {}", d.by, d.reason)
    }
}

pub fn run_to_proto(run: &RunRecord, waiting: &Waiting) -> pb::Run {
    let mut tasks: Vec<&gantry_core::engine::TaskRecord> = run
        .tasks
        .values()
        .filter(|t| t.task_id != ROOT_TASK_ID)
        .collect();
    tasks.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.task_id.cmp(&b.task_id))
    });
    pb::Run {
        run_id: run.run_id.to_string(),
        pipeline_name: run.pipeline.name.clone(),
        state: run_state(run.state).into(),
        error: run.error.clone().unwrap_or_default(),
        parameters_json: serde_json::to_string(&run.parameters).unwrap_or_else(|_| "{}".into()),
        created_at_ms: run.created_at,
        finished_at_ms: run.finished_at.unwrap_or(0),
        tasks: tasks
            .into_iter()
            .map(|t| pb::Task {
                task_id: t.task_id.to_string(),
                name: t.name.clone(),
                parent: t.parent.as_ref().map(TaskId::to_string).unwrap_or_default(),
                iteration: t.iteration.map_or(-1, i64::from),
                state: if gantry_core::engine::approval::awaiting(run, t) {
                    pb::TaskState::WaitingApproval.into()
                } else {
                    task_state(t.state).into()
                },
                attempts: t.attempts.len() as u32,
                agent: t
                    .attempts
                    .last()
                    .map(|a| a.agent.to_string())
                    .unwrap_or_default(),
                started_at_ms: t.started_at.unwrap_or(0),
                finished_at_ms: t.finished_at.unwrap_or(0),
                error: t.error.clone().unwrap_or_default(),
                outputs_json: task_outputs_json(&t.outputs),
                waiting_reason: if gantry_core::engine::approval::awaiting(run, t) {
                    format!(
                        "waiting for approval: gantry run approve {} {} (or reject --reason ...)",
                        run.run_id, t.name
                    )
                } else {
                    waiting
                        .reason(&run.run_id, &t.task_id, t.state == TaskState::Ready)
                        .map(String::from)
                        .unwrap_or_default()
                },
                approval: t.approval.as_ref().map(approval_text).unwrap_or_default(),
                cached_from: t.cached_from.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn agent_to_proto(a: &AgentRecord, connected: bool) -> pb::AgentInfo {
    pb::AgentInfo {
        agent_id: a.agent_id.to_string(),
        hostname: a.inventory.hostname.clone(),
        state: agent_state(a, connected).into(),
        cpu_cores: a.inventory.cpu_cores,
        memory_bytes: a.inventory.memory_bytes,
        gpus: a.inventory.gpus.len() as u32,
        running_attempts: a.running.len() as u32,
        labels: a.labels.clone().into_iter().collect(),
        runtime: a.inventory.runtime.clone(),
        registered_at_ms: a.registered_at,
        draining: a.draining,
        cpu_allocated: a.cpu_allocated,
        memory_allocated: a.memory_allocated,
        gpus_allocated: a.gpus_in_use.len() as u32,
        taints: a.taints.iter().map(|t| t.to_string()).collect(),
        gpus_json: gpus_json(a),
    }
}

/// The agent's GPUs as NVML reported them, each with the attempt it is assigned to.
fn gpus_json(a: &AgentRecord) -> String {
    let gpus: Vec<serde_json::Value> = a
        .inventory
        .gpus
        .iter()
        .map(|g| {
            let mut v = serde_json::to_value(g).unwrap_or_default();
            if let (Some(k), Some(obj)) = (a.gpus_in_use.get(&g.uuid), v.as_object_mut()) {
                obj.insert("assigned_to".into(), k.to_string().into());
            }
            v
        })
        .collect();
    serde_json::Value::Array(gpus).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients print the proto enum's name without its prefix: the words must stay those the
    /// API sent as text before the enums (`gantry ... -o json` shows `"state": "SUCCEEDED"`).
    #[test]
    fn states_keep_their_words_on_the_wire() {
        use RunState as R;
        for s in [
            R::Pending,
            R::Running,
            R::Succeeded,
            R::Failed,
            R::Canceling,
            R::Canceled,
        ] {
            assert_eq!(run_state(s).word(), s.as_str());
            assert_eq!(run_state(s).is_terminal(), s.is_terminal());
        }
        use TaskState as T;
        for s in [
            T::Ready,
            T::Running,
            T::Succeeded,
            T::Failed,
            T::Skipped,
            T::Cached,
            T::Canceled,
        ] {
            assert_eq!(task_state(s).word(), s.as_str());
        }
    }
}
