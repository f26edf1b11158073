//! Rendering API answers as tables (default), JSON or YAML.

use std::time::{Duration, UNIX_EPOCH};

use gantry_proto::v1 as pb;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

fn time(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    Value::String(humantime::format_rfc3339_millis(t).to_string())
}

fn opt_str(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

pub fn task_json(t: &pb::Task) -> Value {
    let mut v = json!({
        "task_id": t.task_id,
        "name": t.name,
        "parent": opt_str(&t.parent),
        "iteration": if t.iteration < 0 { Value::Null } else { json!(t.iteration) },
        "state": t.state().word(),
        "attempts": t.attempts,
        "agent": opt_str(&t.agent),
        "started_at": time(t.started_at_ms),
        "finished_at": time(t.finished_at_ms),
        "error": opt_str(&t.error),
        "outputs": parse_json(&t.outputs_json),
    });
    if !t.waiting_reason.is_empty() {
        v["waiting_reason"] = json!(t.waiting_reason);
    }
    if !t.cached_from.is_empty() {
        v["cached_from"] = json!(t.cached_from);
    }
    if !t.approval.is_empty() {
        v["approval"] = json!(t.approval);
    }
    v
}

pub fn run_json(r: &pb::Run, with_tasks: bool) -> Value {
    let mut v = json!({
        "run_id": r.run_id,
        "pipeline_name": r.pipeline_name,
        "state": r.state().word(),
        "error": opt_str(&r.error),
        "parameters": parse_json(&r.parameters_json),
        "created_at": time(r.created_at_ms),
        "finished_at": time(r.finished_at_ms),
    });
    if with_tasks {
        v["tasks"] = Value::Array(r.tasks.iter().map(task_json).collect());
    }
    v
}

pub fn agent_json(a: &pb::AgentInfo) -> Value {
    json!({
        "agent_id": a.agent_id,
        "hostname": a.hostname,
        "state": a.state().word(),
        "runtime": a.runtime,
        "cpu_cores": a.cpu_cores,
        "memory_bytes": a.memory_bytes,
        "gpus": serde_json::from_str::<Value>(&a.gpus_json).unwrap_or(Value::Array(vec![])),
        "running_attempts": a.running_attempts,
        "labels": a.labels,
        "taints": a.taints,
        "draining": a.draining,
        "allocated": {
            "cpu": a.cpu_allocated,
            "memory_bytes": a.memory_allocated,
            "gpus": a.gpus_allocated,
        },
        "registered_at": time(a.registered_at_ms),
    })
}

pub fn cluster_json(s: &pb::ClusterStatus) -> Value {
    json!({
        "node_id": s.node_id,
        "role": s.role,
        "leader_id": s.leader_id,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "first_index": s.first_index,
        "snapshot_index": s.snapshot_index,
        "members": s.members.iter().map(|m| json!({"id": m.id, "address": m.address, "role": m.role, "matched": m.matched, "store": m.store})).collect::<Vec<_>>(),
        "runs": s.runs,
        "active_runs": s.active_runs,
        "agents": s.agents,
        "disk_full": (!s.disk_full.is_empty()).then_some(&s.disk_full),
    })
}

/// Prints `value` as JSON or YAML; returns false for table format (the caller prints a table).
pub fn print_structured(format: Format, value: &Value) -> bool {
    match format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
            true
        }
        Format::Yaml => {
            print!("{}", serde_saphyr::to_string(value).unwrap_or_default());
            true
        }
        Format::Table => false,
    }
}

/// A plain aligned table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn short_time(ms: i64) -> String {
    match time(ms) {
        Value::String(s) => s
            .replace('T', " ")
            .trim_end_matches('Z')
            .chars()
            .take(19)
            .collect(),
        _ => "-".into(),
    }
}

fn duration(start: i64, end: i64) -> String {
    if start <= 0 {
        return "-".into();
    }
    let end = if end > 0 {
        end
    } else {
        gantry_coordinator::now_ms()
    };
    let ms = (end - start).max(0);
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}s", ms / 1000)
    }
}

pub fn print_run(r: &pb::Run) {
    println!("run:       {}", r.run_id);
    println!("pipeline:  {}", r.pipeline_name);
    println!("state:     {}", r.state().word());
    if !r.error.is_empty() {
        println!("error:     {}", r.error);
    }
    println!("created:   {}", short_time(r.created_at_ms));
    println!("duration:  {}", duration(r.created_at_ms, r.finished_at_ms));
    println!("params:    {}", r.parameters_json);
    println!();
    table(
        &["TASK", "STATE", "ATTEMPTS", "AGENT", "DURATION", "DETAIL"],
        r.tasks
            .iter()
            .map(|t| {
                let detail = if !t.waiting_reason.is_empty() {
                    t.waiting_reason.clone()
                } else if !t.error.is_empty() {
                    t.error.clone()
                } else {
                    let o = parse_json(&t.outputs_json);
                    let p = o.get("parameters").cloned().unwrap_or(Value::Null);
                    match p.as_object() {
                        Some(m) if !m.is_empty() => p.to_string(),
                        _ => String::new(),
                    }
                };
                let detail: String = detail.replace('\n', " | ").chars().take(100).collect();
                vec![
                    t.task_id.clone(),
                    t.state().word().to_string(),
                    t.attempts.to_string(),
                    if t.agent.is_empty() {
                        "-".into()
                    } else {
                        t.agent.clone()
                    },
                    duration(t.started_at_ms, t.finished_at_ms),
                    detail,
                ]
            })
            .collect(),
    );
}
