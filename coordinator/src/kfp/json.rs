//! Gantry's records as KFP v2beta1 JSON: snake_case proto names, enums as strings, int64 as
//! strings, RFC 3339 times in whole seconds, unset fields left out. Gantry's own extras are
//! `gantry_*` fields, which `kfp.Client` ignores.

use std::time::{Duration, UNIX_EPOCH};

use gantry_core::engine::{RunRecord, TaskRecord, TaskState, ROOT_TASK_ID};
use gantry_core::state::catalog::{Experiment, Pipeline, PipelineVersion};
use serde_json::{json, Map, Value};

use super::list::{Field, Row};
use crate::dispatch::Waiting;

/// Milliseconds since the epoch as RFC 3339 in whole seconds (`2024-05-01T10:00:00Z`).
pub fn time(ms: i64) -> Value {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    Value::String(humantime::format_rfc3339_seconds(t).to_string())
}

fn secs(ms: i64) -> Field {
    Field::Int(ms.div_euclid(1000))
}

fn storage_state(archived: bool) -> &'static str {
    if archived {
        "ARCHIVED"
    } else {
        "AVAILABLE"
    }
}

/// Leaves out `null`s, as KFP's marshaller does.
fn object(pairs: Vec<(&str, Value)>) -> Value {
    let map: Map<String, Value> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Value::Object(map)
}

fn text(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

pub fn experiment(e: &Experiment) -> Value {
    object(vec![
        ("experiment_id", json!(e.id)),
        ("display_name", json!(e.display_name)),
        ("description", text(&e.description)),
        ("created_at", time(e.created_at)),
        ("namespace", json!("")),
        ("storage_state", json!(storage_state(e.archived))),
    ])
}

pub fn pipeline(p: &Pipeline) -> Value {
    object(vec![
        ("pipeline_id", json!(p.id)),
        ("name", json!(p.name)),
        ("display_name", json!(p.display_name)),
        ("description", text(&p.description)),
        ("created_at", time(p.created_at)),
        ("namespace", json!("")),
    ])
}

/// `with_spec`: include the pipeline itself (GET); lists leave it out, as KFP should have.
pub fn version(v: &PipelineVersion, with_spec: bool) -> Value {
    let spec = if with_spec {
        spec_json(&v.pipeline_yaml)
    } else {
        Value::Null
    };
    object(vec![
        ("pipeline_id", json!(v.pipeline_id)),
        ("pipeline_version_id", json!(v.id)),
        ("name", json!(v.name)),
        ("display_name", json!(v.display_name)),
        ("description", text(&v.description)),
        ("created_at", time(v.created_at)),
        ("pipeline_spec", spec),
    ])
}

/// The pipeline as KFP returns it: the IR, or `{pipeline_spec, platform_spec}` when the file
/// carries a platform spec.
fn spec_json(yaml: &str) -> Value {
    match gantry_core::ir::pipeline_documents(yaml) {
        Ok(mut docs) if docs.len() >= 2 => {
            let platform = docs.swap_remove(1);
            json!({"pipeline_spec": docs.swap_remove(0), "platform_spec": platform})
        }
        Ok(mut docs) if docs.len() == 1 => docs.swap_remove(0),
        _ => Value::Null,
    }
}

/// A task's state in KFP's words: a cache hit is SKIPPED, a ready task PENDING.
fn task_state(s: TaskState) -> &'static str {
    match s {
        TaskState::Ready => "PENDING",
        TaskState::Running => "RUNNING",
        TaskState::Succeeded => "SUCCEEDED",
        TaskState::Failed => "FAILED",
        TaskState::Skipped | TaskState::Cached => "SKIPPED",
        TaskState::Canceled => "CANCELED",
    }
}

fn error(message: Option<&str>, code: i32) -> Value {
    match message {
        Some(m) => json!({"code": code, "message": m}),
        None => Value::Null,
    }
}

/// The changes of state the records show, oldest first: created, started, finished.
fn history(
    created: i64,
    started: Option<i64>,
    finished: Option<i64>,
    now: &str,
    pending: &str,
    err: Value,
) -> Value {
    let mut out = vec![json!({"update_time": time(created), "state": "PENDING"})];
    if let Some(s) = started {
        out.push(json!({"update_time": time(s), "state": "RUNNING"}));
    }
    let last = out
        .last()
        .and_then(|v| v.get("state"))
        .and_then(Value::as_str)
        .unwrap_or(pending)
        .to_string();
    if now != last {
        let at = finished.or(started).unwrap_or(created);
        let mut entry = json!({"update_time": time(at), "state": now});
        if !err.is_null() {
            entry["error"] = err;
        }
        out.push(entry);
    }
    Value::Array(out)
}

fn task(run: &RunRecord, t: &TaskRecord, waiting: &Waiting) -> Value {
    let state = task_state(t.state);
    let gated = gantry_core::engine::approval::awaiting(run, t);
    let children: Vec<Value> = run
        .tasks
        .values()
        .filter(|c| c.parent.as_ref() == Some(&t.task_id))
        .map(|c| json!({"task_id": c.task_id.to_string()}))
        .collect();
    let err = error(t.error.as_deref(), 2);
    let outputs = json!({
        "parameters": t.outputs.parameters,
        "artifacts": t.outputs.artifacts.iter().map(|(name, list)| {
            let list = list.iter().map(|a| json!({"uri": a.uri, "type": a.schema_title, "metadata": a.metadata}));
            (name.clone(), Value::Array(list.collect()))
        }).collect::<Map<String, Value>>(),
    });
    let display = if t.task_id.as_str() == ROOT_TASK_ID {
        run.pipeline.name.clone()
    } else {
        t.name.clone()
    };
    object(vec![
        ("run_id", json!(run.run_id.to_string())),
        ("task_id", json!(t.task_id.to_string())),
        ("display_name", json!(display)),
        ("create_time", time(t.created_at)),
        ("start_time", t.started_at.map_or(Value::Null, time)),
        ("end_time", t.finished_at.map_or(Value::Null, time)),
        ("state", json!(state)),
        ("error", err.clone()),
        (
            "parent_task_id",
            t.parent
                .as_ref()
                .map_or(Value::Null, |p| json!(p.to_string())),
        ),
        (
            "child_tasks",
            if children.is_empty() {
                Value::Null
            } else {
                Value::Array(children)
            },
        ),
        (
            "state_history",
            history(
                t.created_at,
                t.started_at,
                t.finished_at,
                state,
                "PENDING",
                err,
            ),
        ),
        (
            "gantry_state",
            json!(if gated {
                "WAITING_APPROVAL"
            } else {
                t.state.as_str()
            }),
        ),
        (
            "gantry_approval",
            t.approval.as_ref().map_or(Value::Null, |d| {
                json!({"approved": d.approved, "by": d.by, "reason": d.reason, "at": time(d.at)})
            }),
        ),
        ("gantry_attempts", json!(t.attempts.len())),
        (
            "gantry_agent",
            t.attempts
                .last()
                .map_or(Value::Null, |a| json!(a.agent.to_string())),
        ),
        (
            "gantry_iteration",
            t.iteration.map_or(Value::Null, |i| json!(i)),
        ),
        (
            "gantry_cached_from",
            t.cached_from.as_ref().map_or(Value::Null, |c| json!(c)),
        ),
        (
            "gantry_waiting_reason",
            if gated {
                json!("waiting for approval")
            } else {
                waiting
                    .reason(&run.run_id, &t.task_id, t.state == TaskState::Ready)
                    .map_or(Value::Null, |r| json!(r))
            },
        ),
        ("gantry_outputs", outputs),
    ])
}

/// The run's display name: the KFP name it was given, else its pipeline's name.
fn display_name(run: &RunRecord) -> &str {
    run.info
        .as_ref()
        .map(|i| i.display_name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(&run.pipeline.name)
}

/// A run; `detailed`: with its tasks (GET), left out of lists.
pub fn run(run: &RunRecord, waiting: &Waiting, detailed: bool) -> Value {
    let info = run.info.as_deref();
    let code = if run.timed_out.is_some() { 4 } else { 2 };
    let err = error(run.error.as_deref(), code);
    let state = run.state.as_str();
    let started = run
        .tasks
        .values()
        .filter(|t| t.task_id.as_str() != ROOT_TASK_ID)
        .filter_map(|t| t.started_at)
        .min();
    let details = if detailed {
        let mut tasks: Vec<&TaskRecord> = run.tasks.values().collect();
        tasks.sort_by(|a, b| (a.created_at, &a.task_id).cmp(&(b.created_at, &b.task_id)));
        json!({"task_details": tasks.into_iter().map(|t| task(run, t, waiting)).collect::<Vec<_>>()})
    } else {
        Value::Null
    };
    let source = info.and_then(|i| i.pipeline_version.as_ref());
    object(vec![
        ("run_id", json!(run.run_id.to_string())),
        (
            "experiment_id",
            info.and_then(|i| i.experiment_id.as_ref())
                .map_or(Value::Null, |e| json!(e)),
        ),
        ("display_name", json!(display_name(run))),
        ("description", info.map_or(Value::Null, |i| text(&i.description))),
        (
            "storage_state",
            json!(storage_state(info.is_some_and(|i| i.archived))),
        ),
        (
            "pipeline_version_reference",
            source.map_or(Value::Null, |s| {
                json!({"pipeline_id": s.pipeline_id, "pipeline_version_id": s.pipeline_version_id})
            }),
        ),
        (
            "runtime_config",
            json!({"parameters": run.parameters, "pipeline_root": run.pipeline_root}),
        ),
        (
            "service_account",
            info.map_or(Value::Null, |i| text(&i.service_account)),
        ),
        ("created_at", time(run.created_at)),
        (
            "scheduled_at",
            time(
                info.and_then(|i| i.scheduled_at)
                    .map_or(run.created_at, |t| t * 1000),
            ),
        ),
        (
            "recurring_run_id",
            info.and_then(|i| i.recurring_run_id.as_ref())
                .map_or(Value::Null, |r| json!(r)),
        ),
        ("finished_at", run.finished_at.map_or(Value::Null, time)),
        ("state", json!(state)),
        ("error", err.clone()),
        ("run_details", details),
        (
            "state_history",
            history(run.created_at, started, run.finished_at, state, "PENDING", err),
        ),
        ("gantry_pipeline_name", json!(run.pipeline.name)),
    ])
}

/// The fields a run list can be filtered and sorted on.
pub const RUN_KEYS: &[&str] = &[
    "run_id",
    "id",
    "display_name",
    "name",
    "created_at",
    "finished_at",
    "scheduled_at",
    "description",
    "storage_state",
    "state",
    "namespace",
    "experiment_id",
    "recurring_run_id",
    "pipeline_id",
    "pipeline_version_id",
];
pub const EXPERIMENT_KEYS: &[&str] = &[
    "experiment_id",
    "id",
    "display_name",
    "name",
    "created_at",
    "description",
    "namespace",
    "storage_state",
];
pub const PIPELINE_KEYS: &[&str] = &[
    "pipeline_id",
    "id",
    "display_name",
    "name",
    "created_at",
    "description",
    "namespace",
];
pub const VERSION_KEYS: &[&str] = &[
    "pipeline_version_id",
    "id",
    "display_name",
    "name",
    "created_at",
    "description",
];

pub const RECURRING_KEYS: &[&str] = &[
    "recurring_run_id",
    "id",
    "display_name",
    "name",
    "created_at",
    "updated_at",
    "description",
    "experiment_id",
    "status",
];

pub struct RunRow<'a>(pub &'a RunRecord);

impl Row for RunRow<'_> {
    fn id(&self) -> &str {
        self.0.run_id.as_str()
    }
    fn field(&self, key: &str) -> Option<Field> {
        let r = self.0;
        let info = r.info.as_deref();
        let s = |v: &str| Some(Field::Str(v.to_string()));
        match key {
            "run_id" | "id" => s(r.run_id.as_str()),
            "display_name" | "name" => s(display_name(r)),
            "created_at" => Some(secs(r.created_at)),
            "scheduled_at" => Some(
                info.and_then(|i| i.scheduled_at)
                    .map_or(secs(r.created_at), Field::Int),
            ),
            "recurring_run_id" => info.and_then(|i| i.recurring_run_id.as_deref()).and_then(s),
            "finished_at" => r.finished_at.map(secs),
            "description" => s(info.map_or("", |i| i.description.as_str())),
            "storage_state" => s(storage_state(info.is_some_and(|i| i.archived))),
            "state" => s(r.state.as_str()),
            "namespace" => s(""),
            "experiment_id" => info.and_then(|i| i.experiment_id.as_deref()).and_then(s),
            "pipeline_id" => info
                .and_then(|i| i.pipeline_version.as_ref())
                .and_then(|v| s(&v.pipeline_id)),
            "pipeline_version_id" => info
                .and_then(|i| i.pipeline_version.as_ref())
                .and_then(|v| s(&v.pipeline_version_id)),
            _ => None,
        }
    }
}

pub struct ExperimentRow<'a>(pub &'a Experiment);

impl Row for ExperimentRow<'_> {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn field(&self, key: &str) -> Option<Field> {
        let e = self.0;
        let s = |v: &str| Some(Field::Str(v.to_string()));
        match key {
            "experiment_id" | "id" => s(&e.id),
            "display_name" | "name" => s(&e.display_name),
            "created_at" => Some(secs(e.created_at)),
            "description" => s(&e.description),
            "namespace" => s(""),
            "storage_state" => s(storage_state(e.archived)),
            _ => None,
        }
    }
}

pub struct PipelineRow<'a>(pub &'a Pipeline);

impl Row for PipelineRow<'_> {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn field(&self, key: &str) -> Option<Field> {
        let p = self.0;
        let s = |v: &str| Some(Field::Str(v.to_string()));
        match key {
            "pipeline_id" | "id" => s(&p.id),
            "display_name" => s(&p.display_name),
            "name" => s(&p.name),
            "created_at" => Some(secs(p.created_at)),
            "description" => s(&p.description),
            "namespace" => s(""),
            _ => None,
        }
    }
}

pub struct VersionRow<'a>(pub &'a PipelineVersion);

impl Row for VersionRow<'_> {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn field(&self, key: &str) -> Option<Field> {
        let v = self.0;
        let s = |x: &str| Some(Field::Str(x.to_string()));
        match key {
            "pipeline_version_id" | "id" => s(&v.id),
            "display_name" => s(&v.display_name),
            "name" => s(&v.name),
            "created_at" => Some(secs(v.created_at)),
            "description" => s(&v.description),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_whole_seconds_and_unset_fields_are_left_out() {
        assert_eq!(time(1_714_557_600_999), json!("2024-05-01T10:00:00Z"));
        let e = Experiment {
            id: "e1".into(),
            display_name: "Default".into(),
            description: String::new(),
            created_at: 0,
            archived: true,
        };
        let v = experiment(&e);
        assert_eq!(v["storage_state"], "ARCHIVED");
        assert!(v.get("description").is_none());
    }

    #[test]
    fn a_run_history_ends_in_its_state() {
        let h = history(
            0,
            Some(1000),
            Some(2000),
            "FAILED",
            "PENDING",
            json!({"code": 2, "message": "x"}),
        );
        let states: Vec<&str> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["PENDING", "RUNNING", "FAILED"]);
        assert_eq!(h[2]["error"]["message"], "x");
        let h = history(0, None, None, "PENDING", "PENDING", Value::Null);
        assert_eq!(h.as_array().unwrap().len(), 1);
    }
}
