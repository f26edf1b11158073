//! `/apis/v2beta1/pipelines` and their versions.

use gantry_core::state::catalog::{self, Pipeline, PipelineVersion};
use gantry_core::state::Command;
use serde_json::json;

use super::json::{pipeline, version, PipelineRow, VersionRow, PIPELINE_KEYS, VERSION_KEYS};
use super::list::ListQuery;
use super::upload::{pipeline_text, read_multipart};
use super::{list_reply, new_id, Ctx, HttpError, Reply};
use crate::api::status::ApiError;

pub fn list(ctx: &Ctx) -> Reply {
    let q = ListQuery::from_params(&ctx.query, PIPELINE_KEYS)?;
    let st = ctx.c.state.read();
    let page = q.page(st.catalog.pipelines.values().map(PipelineRow))?;
    Ok(list_reply("pipelines", page, |r| pipeline(r.0)))
}

pub fn get(ctx: &Ctx) -> Reply {
    let id = ctx.param("pipeline_id");
    let st = ctx.c.state.read();
    st.catalog
        .pipelines
        .get(id)
        .map(pipeline)
        .ok_or_else(|| HttpError::not_found(format!("pipeline {id} not found")))
}

/// The uploaded pipeline's text, checked to be a pipeline Gantry reads and within the size
/// limit.
async fn uploaded(ctx: &Ctx) -> Result<(String, String), HttpError> {
    let upload = read_multipart(&ctx.headers, ctx.body.clone()).await?;
    let limit = ctx.c.submit_limits.max_pipeline_bytes;
    let text = pipeline_text(&upload, limit)?;
    gantry_core::ir::parse_pipeline(&text).map_err(ApiError::InvalidPipeline)?;
    Ok((upload.filename, text))
}

/// An upload's name, display name and description (KFP's rule: the name is `name`, else
/// `display_name`, else the file's name; the display name defaults to the name), checked.
fn names(ctx: &Ctx, filename: &str) -> Result<(String, String, String), HttpError> {
    let name = ctx
        .query("name")
        .or(ctx.query("display_name"))
        .unwrap_or(filename)
        .to_string();
    let display_name = ctx.query("display_name").unwrap_or(&name).to_string();
    let description = ctx.query("description").unwrap_or("").to_string();
    catalog::check_name("name", &name)
        .and_then(|()| catalog::check_name("display_name", &display_name))
        .and_then(|()| catalog::check_description(&description))
        .map_err(|e| HttpError::bad(e.to_string()))?;
    Ok((name, display_name, description))
}

pub async fn upload(ctx: &Ctx) -> Reply {
    let (filename, text) = uploaded(ctx).await?;
    let (name, display_name, description) = names(ctx, &filename)?;
    let now = crate::now_ms();
    let p = Pipeline {
        id: new_id(),
        name: name.clone(),
        display_name: display_name.clone(),
        description: description.clone(),
        created_at: now,
    };
    let v = PipelineVersion {
        id: new_id(),
        pipeline_id: p.id.clone(),
        name,
        display_name,
        description,
        created_at: now,
        pipeline_yaml: text,
    };
    ctx.propose(Command::CreatePipeline {
        pipeline: p.clone(),
        version: Some(Box::new(v)),
    })
    .await?;
    Ok(pipeline(&p))
}

pub async fn upload_version(ctx: &Ctx) -> Reply {
    let pipeline_id = ctx.query("pipelineid").ok_or_else(|| {
        HttpError::bad("pipelineid is missing: the query names the pipeline the version is of")
    })?;
    let (filename, text) = uploaded(ctx).await?;
    let (name, display_name, description) = names(ctx, &filename)?;
    let v = PipelineVersion {
        id: new_id(),
        pipeline_id: pipeline_id.to_string(),
        name,
        display_name,
        description,
        created_at: crate::now_ms(),
        pipeline_yaml: text,
    };
    ctx.propose(Command::CreatePipelineVersion {
        version: Box::new(v.clone()),
    })
    .await?;
    Ok(version(&v, false))
}

pub async fn delete(ctx: &Ctx) -> Reply {
    let cascade = match ctx.query("cascade") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(HttpError::bad(format!(
                "cascade must be true or false, not {other:?}"
            )))
        }
    };
    ctx.propose(Command::DeletePipeline {
        pipeline_id: ctx.param("pipeline_id").to_string(),
        cascade,
    })
    .await?;
    Ok(json!({}))
}

pub fn list_versions(ctx: &Ctx) -> Reply {
    let id = ctx.param("pipeline_id");
    let q = ListQuery::from_params(&ctx.query, VERSION_KEYS)?;
    let st = ctx.c.state.read();
    if !st.catalog.pipelines.contains_key(id) {
        return Err(HttpError::not_found(format!("pipeline {id} not found")));
    }
    let page = q.page(st.catalog.versions_of(id).map(VersionRow))?;
    Ok(list_reply("pipeline_versions", page, |r| {
        version(r.0, false)
    }))
}

pub fn get_version(ctx: &Ctx) -> Reply {
    let st = ctx.c.state.read();
    let v = st
        .catalog
        .version(ctx.param("pipeline_id"), ctx.param("pipeline_version_id"))
        .map_err(|e| HttpError::not_found(e.to_string()))?;
    Ok(version(v, true))
}

pub async fn delete_version(ctx: &Ctx) -> Reply {
    ctx.propose(Command::DeletePipelineVersion {
        pipeline_id: ctx.param("pipeline_id").to_string(),
        pipeline_version_id: ctx.param("pipeline_version_id").to_string(),
    })
    .await?;
    Ok(json!({}))
}
