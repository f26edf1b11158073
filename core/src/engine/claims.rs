//! Volumes a run makes for itself: kfp-kubernetes `CreatePVC` / `DeletePVC` and the pipeline's
//! workspace (`platforms.kubernetes.pipelineConfig.workspace`).
//!
//! Kubernetes provisions a claim from a storage class and any node may mount it (within its
//! access modes). Gantry's agents keep such a volume as a directory of their own, so a run's
//! claim lives on one agent, its home: the first task placed that mounts it decides which, and
//! every later task that mounts it is placed there too (through the [`AGENT_ID_LABEL`] label
//! every agent carries for placement). `CreatePVC` and `DeletePVC` run nothing: the engine
//! names the claim (its `name` output) and forgets it; the agent that holds a claim removes its
//! directory when it is deleted or, for the claims a pipeline never deletes (the workspace
//! among them), when the run ends.

use std::collections::BTreeMap;

use gantry_model::{validate_resource_name, AgentId, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::advance::finish;
use super::{RunRecord, TaskRecord, TaskState};
use crate::ir::{ComponentSpec, ExecutorSpec, Implementation, PipelineSpec};

/// The claim of a pipeline's workspace, and where every container step sees it (KFP's
/// `dsl.WORKSPACE_PATH_PLACEHOLDER`, `{{$.workspace_path}}`).
pub const WORKSPACE_CLAIM: &str = "kfp-workspace";
pub use gantry_model::WORKSPACE_PATH;

/// The label placement gives every agent, valued with its id, so that a selector can ask for
/// one agent; not among the labels an agent reports.
pub const AGENT_ID_LABEL: &str = "agent.gantry.dev/id";

/// One volume a run made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunClaim {
    /// The task that made it (`CreatePVC`), or none for the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<TaskId>,
    /// The agent that holds it, once a task that mounts it was placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<AgentId>,
    /// The `DeletePVC` task that deleted it; no task mounts it after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<TaskId>,
}

/// What kfp-kubernetes' stand-in executors ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stub {
    Create,
    Delete,
}

/// The images kfp-kubernetes gives `CreatePVC` and `DeletePVC`: Kubeflow's backend does their
/// work itself instead of running them.
const STUB_IMAGES: &[(&str, Stub)] = &[
    ("argostub/createpvc", Stub::Create),
    ("argostub/deletepvc", Stub::Delete),
];

/// Whether an image is one of kfp-kubernetes' stand-ins, and which.
pub fn stub_image(image: &str) -> Option<Stub> {
    let name = image.split(':').next().unwrap_or("");
    STUB_IMAGES
        .iter()
        .find(|(i, _)| *i == name)
        .map(|(_, s)| *s)
}

/// Which stand-in a component runs, if any.
pub(super) fn stub_of(pipeline: &PipelineSpec, comp: &ComponentSpec) -> Option<Stub> {
    let Implementation::Executor(label) = &comp.implementation else {
        return None;
    };
    match pipeline.executors.get(label) {
        Some(ExecutorSpec::Container(c)) => stub_image(&c.image),
        _ => None,
    }
}

/// Whether the pipeline asks for a workspace.
pub fn has_workspace(pipeline: &PipelineSpec) -> bool {
    pipeline
        .platform_spec
        .as_ref()
        .and_then(|p| p.pointer("/platforms/kubernetes/pipelineConfig/workspace"))
        .is_some_and(|w| !w.is_null())
}

/// The claims a new run starts with: its workspace, if it has one.
pub(super) fn initial_claims(pipeline: &PipelineSpec) -> BTreeMap<String, RunClaim> {
    let mut claims = BTreeMap::new();
    if has_workspace(pipeline) {
        claims.insert(
            WORKSPACE_CLAIM.to_string(),
            RunClaim {
                created_by: None,
                home: None,
                deleted_by: None,
            },
        );
    }
    claims
}

fn text<'a>(rec: &'a TaskRecord, name: &str) -> Option<&'a str> {
    match rec.inputs.parameters.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    }
}

/// Does a stand-in's work on its freshly decided record: `CreatePVC` names a new claim (its
/// `name` output), `DeletePVC` checks that the claim is one of the run's, still there.
pub(crate) fn run_stub(run: &RunRecord, stub: Stub, rec: &mut TaskRecord, now: i64) {
    rec.started_at = Some(now);
    match stub {
        Stub::Create => {
            let name = match (text(rec, "pvc_name"), text(rec, "pvc_name_suffix")) {
                (Some(_), Some(_)) => {
                    let why = "CreatePVC: give pvc_name or pvc_name_suffix, not both";
                    return finish(rec, TaskState::Failed, Some(why.into()), now);
                }
                (Some(name), None) => name.to_string(),
                // As Kubeflow names it after the workflow: here the run.
                (None, Some(suffix)) if suffix.starts_with('-') => {
                    format!("{}{suffix}", run.run_id)
                }
                (None, Some(suffix)) => format!("{}-{suffix}", run.run_id),
                (None, None) => {
                    let why = "CreatePVC: neither pvc_name nor pvc_name_suffix is given";
                    return finish(rec, TaskState::Failed, Some(why.into()), now);
                }
            };
            if let Err(e) = validate_resource_name(&name) {
                let why = format!("CreatePVC: the claim name {name:?} {e}");
                return finish(rec, TaskState::Failed, Some(why), now);
            }
            if run.claims.contains_key(&name) {
                return finish(rec, TaskState::Failed, Some(taken(&name)), now);
            }
            rec.outputs
                .parameters
                .insert("name".into(), Value::String(name));
            finish(rec, TaskState::Succeeded, None, now);
        }
        Stub::Delete => {
            let Some(name) = text(rec, "pvc_name") else {
                let why = "DeletePVC: pvc_name is not given";
                return finish(rec, TaskState::Failed, Some(why.into()), now);
            };
            match run.claims.get(name) {
                Some(c) if c.deleted_by.is_none() => finish(rec, TaskState::Succeeded, None, now),
                Some(_) => {
                    let why = format!("DeletePVC: claim {name:?} was already deleted");
                    finish(rec, TaskState::Failed, Some(why), now)
                }
                None => {
                    let why = format!(
                        "DeletePVC: {name:?} is not a claim this run made (a claim on agents' \
                         own volumes, --volume, is never deleted by a pipeline)"
                    );
                    finish(rec, TaskState::Failed, Some(why), now)
                }
            }
        }
    }
}

fn taken(name: &str) -> String {
    format!("CreatePVC: the run already made a claim named {name:?}")
}

/// Records what a stand-in just decided did, before its record joins the run. Returns the
/// claim deleted, if any, with its home. Two `CreatePVC` decided together with one name: the
/// second fails here.
pub(super) fn record(
    run: &mut RunRecord,
    stub: Stub,
    rec: &mut TaskRecord,
    now: i64,
) -> Option<(String, Option<AgentId>)> {
    if rec.state != TaskState::Succeeded {
        return None;
    }
    match stub {
        Stub::Create => {
            let name = rec.outputs.parameters.get("name")?.as_str()?.to_string();
            if run.claims.contains_key(&name) {
                rec.outputs.parameters.clear();
                finish(rec, TaskState::Failed, Some(taken(&name)), now);
                return None;
            }
            run.claims.insert(
                name,
                RunClaim {
                    created_by: Some(rec.task_id.clone()),
                    home: None,
                    deleted_by: None,
                },
            );
            None
        }
        Stub::Delete => {
            let name = text(rec, "pvc_name")?.to_string();
            let claim = run.claims.get_mut(&name)?;
            claim.deleted_by = Some(rec.task_id.clone());
            Some((name, claim.home.clone()))
        }
    }
}

/// Gives the run's claims that task `task_id` mounts and that have no home yet the agent it
/// was just placed on.
pub(super) fn settle(run: &mut RunRecord, task_id: &TaskId, agent: &AgentId) {
    if run.claims.is_empty() {
        return;
    }
    let Some(rec) = run.tasks.get(task_id) else {
        return;
    };
    let Some(Implementation::Executor(label)) =
        super::advance::component(&run.pipeline, &rec.component).map(|c| &c.implementation)
    else {
        return;
    };
    // Placement resolved the same needs an instant ago; they cannot fail now.
    let Ok(needs) = super::platform::task_needs(run, rec, label) else {
        return;
    };
    for v in needs.volumes.iter().filter(|v| v.run_claim) {
        if let Some(c) = run.claims.get_mut(&v.volume) {
            c.home.get_or_insert_with(|| agent.clone());
        }
    }
}

/// The claims of a finished run that its agents still hold, by agent: what they remove.
pub fn left_over(run: &RunRecord) -> BTreeMap<AgentId, Vec<String>> {
    let mut out: BTreeMap<AgentId, Vec<String>> = BTreeMap::new();
    for (name, c) in &run.claims {
        if let (Some(home), None) = (&c.home, &c.deleted_by) {
            out.entry(home.clone()).or_default().push(name.clone());
        }
    }
    out
}
