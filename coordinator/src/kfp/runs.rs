//! `/apis/v2beta1/runs`.

use std::collections::BTreeMap;

use gantry_core::state::catalog::{self, RunInfo, VersionRef};
use gantry_core::state::{Command, Outcome};
use gantry_model::RunId;
use gantry_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use super::experiments::default_experiment;
use super::json::{run, RunRow, RUN_KEYS};
use super::list::ListQuery;
use super::{list_reply, Ctx, HttpError, Reply};
use crate::api::status::ApiError;

/// The longest `Idempotency-Key` kept.
const MAX_IDEMPOTENCY_KEY: usize = 256;

#[derive(Deserialize)]
struct NewRun {
    #[serde(default)]
    experiment_id: Option<String>,
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
}

#[derive(Deserialize)]
pub(super) struct NewVersionRef {
    #[serde(default)]
    pub(super) pipeline_id: String,
    #[serde(default)]
    pub(super) pipeline_version_id: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RuntimeConfig {
    #[serde(default)]
    pub(super) parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pipeline_root: Option<String>,
}

pub(super) fn waiting(ctx: &Ctx) -> std::sync::Arc<crate::dispatch::Waiting> {
    ctx.c
        .waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

pub fn list(ctx: &Ctx) -> Reply {
    let q = ListQuery::from_params(&ctx.query, RUN_KEYS)?;
    let experiment = ctx.query("experiment_id");
    let w = waiting(ctx);
    let st = ctx.c.state.read();
    let rows = st.runs.values().map(|r| RunRow(r)).filter(|r| {
        experiment
            .is_none_or(|e| r.0.info.as_ref().and_then(|i| i.experiment_id.as_deref()) == Some(e))
    });
    let page = q.page(rows)?;
    Ok(list_reply("runs", page, |r| run(r.0, &w, false)))
}

pub fn get(ctx: &Ctx) -> Reply {
    let id = RunId::from(ctx.param("run_id"));
    let w = waiting(ctx);
    let st = ctx.c.state.read();
    st.runs
        .get(&id)
        .map(|r| with_spec(run(r, &w, true), r, &st.catalog))
        .ok_or_else(|| HttpError::not_found(format!("run {id} not found")))
}

/// A run made from a stored version shows that version's pipeline as its `pipeline_spec`
/// (on GET; lists leave it out), while the version exists. A run given inline keeps only
/// the parsed pipeline, so it has none.
fn with_spec(
    mut v: Value,
    r: &gantry_core::engine::RunRecord,
    catalog: &gantry_core::state::catalog::Catalog,
) -> Value {
    let source = r.info.as_ref().and_then(|i| i.pipeline_version.as_ref());
    if let Some(s) = source {
        if let Ok(version) = catalog.version(&s.pipeline_id, &s.pipeline_version_id) {
            let spec = super::json::version(version, true)["pipeline_spec"].take();
            if !spec.is_null() {
                v["pipeline_spec"] = spec;
            }
        }
    }
    v
}

/// The pipeline a run request carries inline, as the YAML the submit path reads (JSON is
/// YAML): the IR, or the IR and its platform spec when the client wrapped them.
fn inline_pipeline(spec: &Value) -> Result<String, HttpError> {
    let Value::Object(map) = spec else {
        return Err(HttpError::bad(format!(
            "pipeline_spec must be an object (the compiled pipeline), not {}",
            short(spec)
        )));
    };
    match map.get("pipeline_spec") {
        Some(inner) => {
            let mut text = inner.to_string();
            if let Some(platform) = map.get("platform_spec").filter(|p| !p.is_null()) {
                text.push_str("\n---\n");
                text.push_str(&platform.to_string());
            }
            Ok(text)
        }
        None => Ok(spec.to_string()),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..s.floor_char_boundary(40)])
    } else {
        s
    }
}

/// The pipeline a request names: inline, or a stored version (a pipeline id alone: its
/// newest), as YAML text and the version it came from.
pub(super) fn pipeline_source(
    ctx: &Ctx,
    spec: Option<&Value>,
    reference: Option<&NewVersionRef>,
) -> Result<(String, Option<VersionRef>), HttpError> {
    Ok(match (spec, reference) {
        (Some(_), Some(_)) => {
            return Err(HttpError::bad(
                "give pipeline_spec or pipeline_version_reference, not both",
            ))
        }
        (None, None) => {
            return Err(HttpError::bad(
                "a pipeline is needed: pipeline_spec (inline) or pipeline_version_reference",
            ))
        }
        (Some(spec), None) => (inline_pipeline(spec)?, None),
        (None, Some(r)) => {
            let st = ctx.c.state.read();
            let cat = &st.catalog;
            if !cat.pipelines.contains_key(&r.pipeline_id) {
                return Err(HttpError::not_found(format!(
                    "pipeline_version_reference.pipeline_id: pipeline {:?} not found",
                    r.pipeline_id
                )));
            }
            let v = match r.pipeline_version_id.as_deref().filter(|v| !v.is_empty()) {
                Some(vid) => cat.version(&r.pipeline_id, vid).map_err(|e| {
                    HttpError::not_found(format!("pipeline_version_reference: {e}"))
                })?,
                None => cat.latest_version(&r.pipeline_id).ok_or_else(|| {
                    HttpError::not_found(format!(
                        "pipeline_version_reference: pipeline {} has no versions",
                        r.pipeline_id
                    ))
                })?,
            };
            let source = VersionRef {
                pipeline_id: v.pipeline_id.clone(),
                pipeline_version_id: v.id.clone(),
            };
            (v.pipeline_yaml.clone(), Some(source))
        }
    })
}

/// The experiment a request names (it must exist), or `Default`.
pub(super) async fn experiment_or_default(
    ctx: &Ctx,
    experiment_id: Option<String>,
) -> Result<String, HttpError> {
    match experiment_id.filter(|e| !e.is_empty()) {
        Some(e) => {
            if !ctx.c.state.read().catalog.experiments.contains_key(&e) {
                return Err(HttpError::not_found(format!(
                    "experiment_id: experiment {e} not found"
                )));
            }
            Ok(e)
        }
        None => default_experiment(ctx).await,
    }
}

pub async fn create(ctx: &Ctx) -> Reply {
    let body: NewRun = ctx.json()?;
    if body.display_name.trim().is_empty() {
        return Err(HttpError::bad(
            "display_name is missing: a run needs a name",
        ));
    }
    catalog::check_name("display_name", &body.display_name)
        .and_then(|()| catalog::check_description(body.description.as_deref().unwrap_or("")))
        .map_err(|e| HttpError::bad(e.to_string()))?;
    let (yaml, source) = pipeline_source(
        ctx,
        body.pipeline_spec.as_ref(),
        body.pipeline_version_reference.as_ref(),
    )?;
    let config = body.runtime_config.unwrap_or_default();
    if let Some(root) = config.pipeline_root.as_deref().filter(|r| !r.is_empty()) {
        let ours = ctx.c.artifact_root.trim_end_matches('/');
        if root.trim_end_matches('/') != ours {
            return Err(HttpError::bad(format!(
                "runtime_config.pipeline_root {root:?} is not this cluster's artifact root \
                 {ours:?}: leave it out, or run the coordinators with --artifact-root {root}"
            )));
        }
    }
    let experiment_id = experiment_or_default(ctx, body.experiment_id).await?;
    let given: BTreeMap<String, Value> =
        config.parameters.unwrap_or_default().into_iter().collect();
    let request_id = match ctx.headers.get("idempotency-key") {
        None => String::new(),
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    HttpError::bad(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes of visible text"
                    ))
                })?;
            format!("kfp-idempotency-key:{key}")
        }
    };
    let opts = pb::SubmitRunRequest {
        request_id,
        ..Default::default()
    };
    let info = RunInfo {
        display_name: body.display_name,
        description: body.description.unwrap_or_default(),
        experiment_id: Some(experiment_id),
        pipeline_version: source,
        service_account: body.service_account.unwrap_or_default(),
        archived: false,
        recurring_run_id: None,
        scheduled_at: None,
    };
    let window = Some(ctx.c.idempotency_window_ms);
    let (run_id, _) = ctx
        .api()
        .submit(&yaml, given, &opts, Some(info), window)
        .await?;
    let w = waiting(ctx);
    let st = ctx.c.state.read();
    st.runs
        .get(&run_id)
        .map(|r| with_spec(run(r, &w, true), r, &st.catalog))
        .ok_or_else(|| HttpError::not_found(format!("run {run_id} not found")))
}

pub async fn delete(ctx: &Ctx) -> Reply {
    let id = RunId::from(ctx.param("run_id"));
    let state = ctx.c.state.read().runs.get(&id).map(|r| r.state);
    let Some(state) = state else {
        return Err(HttpError::not_found(format!("run {id} not found")));
    };
    let applied = ctx
        .c
        .propose(Command::RemoveRuns {
            run_ids: vec![id.clone()],
        })
        .await
        .map_err(ApiError::from)?;
    match applied.result.map_err(ApiError::from)? {
        Outcome::RunsRemoved(removed) if removed.contains(&id) => Ok(json!({})),
        _ => Err(HttpError::new(
            tonic::Code::FailedPrecondition,
            format!("run {id} is {state}: terminate it and let it end before deleting it"),
        )),
    }
}

pub async fn terminate(ctx: &Ctx) -> Reply {
    let id = RunId::from(ctx.param("run_id"));
    let state = ctx.c.state.read().runs.get(&id).map(|r| r.state);
    match state {
        None => return Err(HttpError::not_found(format!("run {id} not found"))),
        Some(s) if s.is_terminal() => {
            return Err(HttpError::new(
                tonic::Code::FailedPrecondition,
                format!("run {id} is {s}: only a pending or running run can be terminated"),
            ))
        }
        Some(_) => {}
    }
    ctx.propose(Command::CancelRun {
        run_id: id,
        at: crate::now_ms(),
    })
    .await?;
    Ok(json!({}))
}

pub async fn retry(ctx: &Ctx) -> Reply {
    ctx.propose(Command::RetryRun {
        run_id: RunId::from(ctx.param("run_id")),
        at: crate::now_ms(),
    })
    .await?;
    Ok(json!({}))
}

pub async fn archive(ctx: &Ctx, archived: bool) -> Reply {
    ctx.propose(Command::SetRunArchived {
        run_id: RunId::from(ctx.param("run_id")),
        archived,
    })
    .await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_pipeline_is_unwrapped_with_its_platform_spec() {
        let ir = json!({"pipelineInfo": {"name": "p"}});
        assert_eq!(inline_pipeline(&ir).unwrap(), ir.to_string());
        let wrapped = json!({"pipeline_spec": ir, "platform_spec": {"platforms": {}}});
        let text = inline_pipeline(&wrapped).unwrap();
        assert_eq!(text, format!("{}\n---\n{}", ir, json!({"platforms": {}})));
        assert!(inline_pipeline(&json!("yaml text")).is_err());
    }
}
