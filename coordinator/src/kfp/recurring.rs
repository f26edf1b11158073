//! `/apis/v2beta1/recurringruns`: KFP's recurring runs. The leader fires them
//! (`crate::recurring`); here they are made, shown, switched and removed.

use std::collections::BTreeMap;

use gantry_core::schedule::{self, cron::Cron, RecurringRun, Trigger, MAX_CONCURRENCY};
use gantry_core::state::catalog;
use gantry_core::state::Command;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::json::{time, RECURRING_KEYS};
use super::list::{Field, ListQuery, Row};
use super::runs::{experiment_or_default, pipeline_source, NewVersionRef, RuntimeConfig};
use super::{list_reply, new_id, Ctx, HttpError, Reply};
use crate::api::status::ApiError;

#[derive(Deserialize)]
struct NewRecurringRun {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    pipeline_spec: Option<Value>,
    #[serde(default)]
    pipeline_version_reference: Option<NewVersionRef>,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    service_account: Option<String>,
    /// A number or a string (int64 in proto-JSON).
    #[serde(default)]
    max_concurrency: Option<Value>,
    #[serde(default)]
    trigger: Option<NewTrigger>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    no_catchup: Option<bool>,
    #[serde(default)]
    experiment_id: Option<String>,
}

#[derive(Deserialize)]
struct NewTrigger {
    #[serde(default)]
    cron_schedule: Option<NewCron>,
    #[serde(default)]
    periodic_schedule: Option<NewPeriodic>,
}

#[derive(Deserialize)]
struct NewCron {
    #[serde(default)]
    cron: String,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
}

#[derive(Deserialize)]
struct NewPeriodic {
    #[serde(default)]
    interval_second: Option<Value>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
}

/// An int64 that arrives as a JSON number or a string.
fn int64(field: &str, v: &Value) -> Result<i64, HttpError> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| HttpError::bad(format!("{field} must be an integer, not {v}")))
}

/// RFC 3339, or without an offset (read as UTC, as a naive Python datetime sends it).
fn timestamp(field: &str, v: Option<&str>) -> Result<Option<i64>, HttpError> {
    let Some(text) = v.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let t = humantime::parse_rfc3339(text)
        .or_else(|_| humantime::parse_rfc3339_weak(text))
        .map_err(|e| {
            HttpError::bad(format!(
                "{field} {text:?} is not an RFC 3339 time in UTC (2024-05-01T10:00:00Z): {e}"
            ))
        })?;
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Some(secs))
}

/// The trigger and its start and end (seconds).
fn trigger(t: Option<NewTrigger>) -> Result<(Trigger, Option<i64>, Option<i64>), HttpError> {
    let t = t.ok_or_else(|| {
        HttpError::bad("trigger is missing: give cron_schedule or periodic_schedule")
    })?;
    let (trigger, start, end) = match (t.cron_schedule, t.periodic_schedule) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(HttpError::bad(
                "trigger needs exactly one of cron_schedule and periodic_schedule",
            ))
        }
        (Some(c), None) => {
            let line = c.cron.trim();
            // robfig's `@every 1h30m`: a period.
            let trigger = match line.strip_prefix("@every ") {
                Some(d) => {
                    let period = humantime::parse_duration(d.trim()).map_err(|e| {
                        HttpError::bad(format!(
                            "trigger.cron_schedule.cron {line:?}: the duration is not valid: {e}"
                        ))
                    })?;
                    Trigger::Periodic {
                        interval_secs: period.as_secs().max(1) as i64,
                    }
                }
                None => Trigger::Cron {
                    cron: line.to_string(),
                },
            };
            (
                trigger,
                timestamp("trigger.cron_schedule.start_time", c.start_time.as_deref())?,
                timestamp("trigger.cron_schedule.end_time", c.end_time.as_deref())?,
            )
        }
        (None, Some(p)) => {
            let interval = p.interval_second.as_ref().ok_or_else(|| {
                HttpError::bad("trigger.periodic_schedule.interval_second is missing")
            })?;
            (
                Trigger::Periodic {
                    interval_secs: int64("trigger.periodic_schedule.interval_second", interval)?,
                },
                timestamp(
                    "trigger.periodic_schedule.start_time",
                    p.start_time.as_deref(),
                )?,
                timestamp("trigger.periodic_schedule.end_time", p.end_time.as_deref())?,
            )
        }
    };
    schedule::check_trigger(&trigger).map_err(HttpError::bad)?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(HttpError::bad("trigger: end_time comes before start_time"));
        }
    }
    Ok((trigger, start, end))
}

pub async fn create(ctx: &Ctx) -> Reply {
    let body: NewRecurringRun = ctx.json()?;
    catalog::check_name("display_name", &body.display_name)
        .and_then(|()| catalog::check_description(body.description.as_deref().unwrap_or("")))
        .map_err(|e| HttpError::bad(e.to_string()))?;
    let max_concurrency = match &body.max_concurrency {
        None => 1,
        Some(v) => int64("max_concurrency", v)?,
    };
    if !(1..=MAX_CONCURRENCY as i64).contains(&max_concurrency) {
        return Err(HttpError::bad(format!(
            "max_concurrency must be 1 to {MAX_CONCURRENCY}, not {max_concurrency}"
        )));
    }
    let enabled = match body.mode.as_deref() {
        None | Some("") | Some("ENABLE") | Some("MODE_UNSPECIFIED") => true,
        Some("DISABLE") => false,
        Some(other) => {
            return Err(HttpError::bad(format!(
                "mode must be ENABLE or DISABLE, not {other:?}"
            )))
        }
    };
    let (trigger, start_time, end_time) = trigger(body.trigger)?;
    let (yaml, source) = pipeline_source(
        ctx,
        body.pipeline_spec.as_ref(),
        body.pipeline_version_reference.as_ref(),
    )?;
    let parameters = body
        .runtime_config
        .and_then(|c| c.parameters)
        .unwrap_or_default();
    // Every firing must be able to start: the pipeline and its parameters are checked now,
    // against the same limits as a run's.
    let bounds = ctx.c.submit_limits;
    gantry_core::ir::bounds::check_pipeline_size(yaml.len(), &bounds)
        .map_err(ApiError::OverLimit)?;
    let pipeline = gantry_core::ir::parse_pipeline(&yaml).map_err(ApiError::InvalidPipeline)?;
    gantry_core::engine::check_supported(&pipeline).map_err(ApiError::UnsupportedPipeline)?;
    gantry_core::engine::check_host_rules(&pipeline, &ctx.c.uri_policy)
        .map_err(ApiError::HostRefusal)?;
    let given: BTreeMap<String, Value> = parameters.clone().into_iter().collect();
    let resolved = gantry_core::ir::resolve_run_parameters(&pipeline, &given)
        .map_err(ApiError::InvalidParameters)?;
    gantry_core::ir::bounds::check_submission(&pipeline, &resolved, &bounds)
        .map_err(ApiError::OverLimit)?;
    let experiment_id = experiment_or_default(ctx, body.experiment_id).await?;
    let now = crate::now_ms();
    let r = RecurringRun {
        id: new_id(),
        display_name: body.display_name,
        description: body.description.unwrap_or_default(),
        experiment_id,
        pipeline_yaml: yaml,
        pipeline_version: source,
        parameters,
        service_account: body.service_account.unwrap_or_default(),
        trigger,
        start_time,
        end_time,
        max_concurrency: max_concurrency as u32,
        no_catchup: body.no_catchup.unwrap_or(false),
        enabled,
        created_at: now,
        updated_at: now,
        last_fired: None,
    };
    ctx.propose(Command::CreateRecurringRun {
        recurring: Box::new(r.clone()),
    })
    .await?;
    Ok(recurring_json(&r))
}

fn with_times(mut v: Map<String, Value>, start: Option<i64>, end: Option<i64>) -> Value {
    if let Some(s) = start {
        v.insert("start_time".into(), time(s * 1000));
    }
    if let Some(e) = end {
        v.insert("end_time".into(), time(e * 1000));
    }
    Value::Object(v)
}

pub fn recurring_json(r: &RecurringRun) -> Value {
    let trigger = match &r.trigger {
        Trigger::Cron { cron } => {
            let mut m = Map::new();
            m.insert("cron".into(), json!(cron));
            json!({"cron_schedule": with_times(m, r.start_time, r.end_time)})
        }
        Trigger::Periodic { interval_secs } => {
            let mut m = Map::new();
            m.insert("interval_second".into(), json!(interval_secs.to_string()));
            json!({"periodic_schedule": with_times(m, r.start_time, r.end_time)})
        }
    };
    let mut v = json!({
        "recurring_run_id": r.id,
        "display_name": r.display_name,
        "runtime_config": {"parameters": r.parameters},
        "max_concurrency": r.max_concurrency.to_string(),
        "trigger": trigger,
        "mode": if r.enabled { "ENABLE" } else { "DISABLE" },
        "status": if r.enabled { "ENABLED" } else { "DISABLED" },
        "created_at": time(r.created_at),
        "updated_at": time(r.updated_at),
        "no_catchup": r.no_catchup,
        "namespace": "",
        "experiment_id": r.experiment_id,
    });
    if !r.description.is_empty() {
        v["description"] = json!(r.description);
    }
    if !r.service_account.is_empty() {
        v["service_account"] = json!(r.service_account);
    }
    if let Some(s) = &r.pipeline_version {
        v["pipeline_version_reference"] =
            json!({"pipeline_id": s.pipeline_id, "pipeline_version_id": s.pipeline_version_id});
    }
    if let Trigger::Cron { cron } = &r.trigger {
        if let Ok(c) = Cron::parse(cron) {
            v["gantry_cron_understood"] = json!(c.describe());
        }
    }
    if let Some(t) = r.last_fired {
        v["gantry_last_fired"] = time(t * 1000);
    }
    v
}

pub struct RecurringRow<'a>(pub &'a RecurringRun);

impl Row for RecurringRow<'_> {
    fn id(&self) -> &str {
        &self.0.id
    }
    fn field(&self, key: &str) -> Option<Field> {
        let r = self.0;
        let s = |v: &str| Some(Field::Str(v.to_string()));
        match key {
            "recurring_run_id" | "id" => s(&r.id),
            "display_name" | "name" => s(&r.display_name),
            "created_at" => Some(Field::Int(r.created_at.div_euclid(1000))),
            "updated_at" => Some(Field::Int(r.updated_at.div_euclid(1000))),
            "description" => s(&r.description),
            "experiment_id" => s(&r.experiment_id),
            "status" => s(if r.enabled { "ENABLED" } else { "DISABLED" }),
            _ => None,
        }
    }
}

pub fn list(ctx: &Ctx) -> Reply {
    let q = ListQuery::from_params(&ctx.query, RECURRING_KEYS)?;
    let experiment = ctx.query("experiment_id");
    let st = ctx.c.state.read();
    let rows = st
        .recurring
        .values()
        .filter(|r| experiment.is_none_or(|e| r.experiment_id == e))
        .map(RecurringRow);
    let page = q.page(rows)?;
    // The one camelCase key of KFP's responses (the proto field is named so).
    Ok(list_reply("recurringRuns", page, |r| recurring_json(r.0)))
}

pub fn get(ctx: &Ctx) -> Reply {
    let id = ctx.param("recurring_run_id");
    let st = ctx.c.state.read();
    st.recurring
        .get(id)
        .map(recurring_json)
        .ok_or_else(|| HttpError::not_found(format!("recurring run {id} not found")))
}

pub async fn set_enabled(ctx: &Ctx, enabled: bool) -> Reply {
    ctx.propose(Command::SetRecurringRunEnabled {
        id: ctx.param("recurring_run_id").to_string(),
        enabled,
        at: crate::now_ms(),
    })
    .await?;
    Ok(json!({}))
}

pub async fn delete(ctx: &Ctx) -> Reply {
    ctx.propose(Command::DeleteRecurringRun {
        id: ctx.param("recurring_run_id").to_string(),
    })
    .await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Value) -> Result<(Trigger, Option<i64>, Option<i64>), HttpError> {
        trigger(Some(serde_json::from_value(v).unwrap()))
    }

    #[test]
    fn triggers_as_kfp_client_sends_them() {
        let (tr, start, _) = t(json!({"cron_schedule": {"cron": "0 0 9 ? * 2-6", "start_time": "2024-05-01T00:00:00Z"}})).unwrap();
        assert_eq!(
            tr,
            Trigger::Cron {
                cron: "0 0 9 ? * 2-6".into()
            }
        );
        assert_eq!(start, Some(1_714_521_600));
        // A naive datetime's isoformat() has no offset: UTC.
        let (_, start, _) = t(json!({"periodic_schedule": {"interval_second": 2, "start_time": "2024-05-01T00:00:00"}})).unwrap();
        assert_eq!(start, Some(1_714_521_600));
        let (tr, _, _) = t(json!({"periodic_schedule": {"interval_second": "3600"}})).unwrap();
        assert_eq!(
            tr,
            Trigger::Periodic {
                interval_secs: 3600
            }
        );
        let (tr, _, _) = t(json!({"cron_schedule": {"cron": "@every 1h30m"}})).unwrap();
        assert_eq!(
            tr,
            Trigger::Periodic {
                interval_secs: 5400
            }
        );
    }

    #[test]
    fn bad_triggers_name_the_field() {
        let msg = |v: Value| t(v).unwrap_err().message;
        assert!(msg(json!({"cron_schedule": {"cron": "0 0 25 * * *"}}))
            .contains("trigger.cron_schedule.cron"));
        assert!(
            msg(json!({"periodic_schedule": {"interval_second": 0}})).contains("interval_second")
        );
        assert!(
            msg(json!({"periodic_schedule": {"interval_second": "often"}}))
                .contains("interval_second")
        );
        assert!(msg(json!({})).contains("exactly one"));
        assert!(
            msg(json!({"cron_schedule": {"cron": "@daily", "start_time": "tomorrow"}}))
                .contains("start_time")
        );
    }
}
