//! `/apis/v2beta1/experiments`.

use gantry_core::state::catalog::{self, CatalogError, Experiment};
use gantry_core::state::{Command, Rejection};
use serde::Deserialize;
use serde_json::json;

use super::json::{experiment, ExperimentRow, EXPERIMENT_KEYS};
use super::list::ListQuery;
use super::{list_reply, new_id, Ctx, HttpError, Reply};
use crate::api::status::ApiError;

/// The experiment runs go to when they name none (KFP's).
pub const DEFAULT_EXPERIMENT: &str = "Default";

#[derive(Deserialize)]
struct NewExperiment {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: Option<String>,
}

pub fn list(ctx: &Ctx) -> Reply {
    let q = ListQuery::from_params(&ctx.query, EXPERIMENT_KEYS)?;
    let st = ctx.c.state.read();
    let page = q.page(st.catalog.experiments.values().map(ExperimentRow))?;
    Ok(list_reply("experiments", page, |r| experiment(r.0)))
}

pub async fn create(ctx: &Ctx) -> Reply {
    let body: NewExperiment = ctx.json()?;
    let e = Experiment {
        id: new_id(),
        display_name: body.display_name,
        description: body.description.unwrap_or_default(),
        created_at: crate::now_ms(),
        archived: false,
    };
    check(&e)?;
    ctx.propose(Command::CreateExperiment {
        experiment: e.clone(),
    })
    .await?;
    Ok(experiment(&e))
}

fn check(e: &Experiment) -> Result<(), HttpError> {
    catalog::check_name("display_name", &e.display_name)
        .and_then(|()| catalog::check_description(&e.description))
        .map_err(|err| HttpError::bad(err.to_string()))
}

pub fn get(ctx: &Ctx) -> Reply {
    let id = ctx.param("experiment_id");
    let st = ctx.c.state.read();
    st.catalog
        .experiments
        .get(id)
        .map(experiment)
        .ok_or_else(|| HttpError::not_found(format!("experiment {id} not found")))
}

pub async fn delete(ctx: &Ctx) -> Reply {
    ctx.propose(Command::DeleteExperiment {
        experiment_id: ctx.param("experiment_id").to_string(),
    })
    .await?;
    Ok(json!({}))
}

pub async fn archive(ctx: &Ctx, archived: bool) -> Reply {
    ctx.propose(Command::SetExperimentArchived {
        experiment_id: ctx.param("experiment_id").to_string(),
        archived,
    })
    .await?;
    Ok(json!({}))
}

/// The id of the experiment named `Default`, created on first use (on the leader).
pub async fn default_experiment(ctx: &Ctx) -> Result<String, HttpError> {
    experiment_by_name(&ctx.c, DEFAULT_EXPERIMENT, "Runs that name no experiment").await
}

/// The id of experiment `name_or_id` (an id, or a display name), created under that name
/// when there is none (on the leader, as `kfp.Client.create_experiment` would).
pub async fn experiment_by_name(
    c: &std::sync::Arc<crate::server::Coordinator>,
    name_or_id: &str,
    description: &str,
) -> Result<String, HttpError> {
    let find = || {
        let st = c.state.read();
        st.catalog
            .experiments
            .get(name_or_id)
            .or_else(|| st.catalog.experiment_named(name_or_id))
            .map(|e| e.id.clone())
    };
    if let Some(id) = find() {
        return Ok(id);
    }
    let e = Experiment {
        id: new_id(),
        display_name: name_or_id.to_string(),
        description: description.to_string(),
        created_at: crate::now_ms(),
        archived: false,
    };
    check(&e)?;
    let applied = c
        .propose(Command::CreateExperiment {
            experiment: e.clone(),
        })
        .await
        .map_err(ApiError::from)?;
    match applied.result {
        Ok(_) => Ok(e.id),
        // Another request made it first.
        Err(Rejection::Catalog(CatalogError::ExperimentExists(_))) => {
            find().ok_or_else(|| HttpError::not_found("the experiment vanished; retry"))
        }
        Err(r) => Err(ApiError::from(r).into()),
    }
}
