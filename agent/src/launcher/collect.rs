//! The outputs of a step that exited 0: output parameters from the executor output or their
//! files, output artifacts uploaded from where the step left them.

use std::collections::BTreeMap;

use gantry_model::limits::MAX_STEP_OUTPUTS_BYTES;
use gantry_model::{ArtifactRef, ParamType, StepOutcome, StepSpec};
use serde_json::Value;

use super::layout::{read_output_file, Layout};
use super::{is_metrics, LaunchError, Launcher};

impl Launcher {
    /// Reads the outputs of a step that exited 0 and uploads its artifacts.
    pub(super) async fn collect(
        &self,
        spec: &StepSpec,
        layout: &Layout,
    ) -> Result<StepOutcome, LaunchError> {
        let exec_out = match read_output_file(layout, &layout.host("outputs/executor_output.json"))?
        {
            Some(bytes) => {
                serde_json::from_slice::<Value>(&bytes).map_err(LaunchError::ExecutorOutput)?
            }
            None => Value::Null,
        };
        let mut parameters = output_parameters(spec, layout, &exec_out)?;
        store_uris_for_paths(spec, layout, &mut parameters);
        let artifacts = self.upload_artifacts(spec, layout, &exec_out).await?;
        let outcome = StepOutcome::Succeeded {
            parameters,
            artifacts,
        };
        // The outputs go to the coordinator in one message and into the Raft log in one entry:
        // over the bound, the step fails here, saying so, instead of breaking the session.
        let size = serde_json::to_vec(&outcome).map_or(usize::MAX, |v| v.len());
        if size > MAX_STEP_OUTPUTS_BYTES {
            return Ok(StepOutcome::Failed {
                error: format!(
                    "the step's outputs are {size} bytes, over the limit of \
                     {MAX_STEP_OUTPUTS_BYTES} bytes (4 MiB): output parameters travel through \
                     the coordinators' replicated log; pass large data as an artifact"
                ),
                exit_code: None,
            });
        }
        Ok(outcome)
    }

    /// Uploads each output artifact from where the step left it (or records the URI it
    /// stored it at itself), with the metadata the executor output reports.
    async fn upload_artifacts(
        &self,
        spec: &StepSpec,
        layout: &Layout,
        exec_out: &Value,
    ) -> Result<BTreeMap<String, Vec<ArtifactRef>>, LaunchError> {
        let mut artifacts = BTreeMap::new();
        for (name, out) in &spec.outputs.artifacts {
            let rel = format!("outputs/artifacts/{name}");
            let default_step_path = layout.step(&rel);
            let reported = &exec_out["artifacts"][name]["artifacts"][0];
            let metadata = reported["metadata"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let (local, uri) = match reported["uri"].as_str() {
                None | Some("") => (Some(layout.host(&rel)), out.uri.clone()),
                Some(u) if u == default_step_path => (Some(layout.host(&rel)), out.uri.clone()),
                // The step stored it itself and says where: accepted under the run's
                // pipeline root only (a step must not point downstream steps at, say,
                // file:///etc on an agent host).
                Some(u) if u.contains("://") => {
                    if !under_root(u, &spec.pipeline_root) {
                        return Err(LaunchError::ArtifactOutsideRoot {
                            name: name.clone(),
                            uri: u.to_string(),
                            root: spec.pipeline_root.clone(),
                        });
                    }
                    (None, u.to_string())
                }
                Some(u) => match layout.map.host_path(u) {
                    Some(h) => (Some(h), out.uri.clone()),
                    None => {
                        return Err(LaunchError::ArtifactOutsideDir {
                            name: name.clone(),
                            path: u.to_string(),
                            step_root: layout.map.step_root().to_path_buf(),
                        })
                    }
                },
            };
            if let Some(local) = local {
                let file = layout
                    .confined(&local)
                    .map_err(|error| LaunchError::ArtifactFile {
                        name: name.clone(),
                        error,
                    })?;
                match file {
                    Some(real) => {
                        if let Err(why) = self.access.check_upload(&uri, &spec.pipeline_root) {
                            return Err(LaunchError::UploadRefused {
                                name: name.clone(),
                                why,
                            });
                        }
                        if let Err(error) = self.stores.upload(&real, &uri).await {
                            return Err(LaunchError::Upload {
                                name: name.clone(),
                                error,
                            });
                        }
                    }
                    None if is_metrics(&out.schema_title) => {}
                    None => {
                        return Err(LaunchError::ArtifactNotWritten {
                            name: name.clone(),
                            expected: layout.display(&local),
                        })
                    }
                }
            }
            artifacts.insert(
                name.clone(),
                vec![ArtifactRef {
                    name: name.clone(),
                    uri,
                    schema_title: out.schema_title.clone(),
                    schema_version: out.schema_version.clone(),
                    metadata,
                }],
            );
        }
        Ok(artifacts)
    }
}

/// Each output parameter, from the executor output's `parameterValues`, else from its file.
fn output_parameters(
    spec: &StepSpec,
    layout: &Layout,
    exec_out: &Value,
) -> Result<BTreeMap<String, Value>, LaunchError> {
    let mut parameters = BTreeMap::new();
    for (name, ptype) in &spec.outputs.parameters {
        let rel = format!("outputs/params/{name}");
        let bad_value = |error| LaunchError::ParameterValue {
            name: name.clone(),
            error,
        };
        let value = match exec_out["parameterValues"].get(name) {
            Some(v) => ptype.coerce(v).map_err(bad_value)?,
            None => {
                let bytes = read_output_file(layout, &layout.host(&rel))
                    .map_err(|error| LaunchError::ParameterFile {
                        name: name.clone(),
                        error,
                    })?
                    .ok_or_else(|| LaunchError::ParameterNotWritten {
                        name: name.clone(),
                        expected: layout.step(&rel),
                    })?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| LaunchError::ParameterNotUtf8(name.clone()))?;
                match ptype {
                    ParamType::String => Value::String(text),
                    other => other.parse_text(&text).map_err(bad_value)?,
                }
            }
        };
        parameters.insert(name.clone(), value);
    }
    Ok(parameters)
}

/// Kubeflow gives a step the store URI as an artifact's `.uri`; Gantry gives it the local path
/// (the step cannot reach the store, and the SDK derives `.path` from `.uri`, as under
/// `kfp.local`). A step that returns an artifact's `.uri` — to hand it to an importer, say —
/// returned that path: it leaves the step as the store URI it stands for.
fn store_uris_for_paths(
    spec: &StepSpec,
    layout: &Layout,
    parameters: &mut BTreeMap<String, Value>,
) {
    let mut by_path = BTreeMap::new();
    for (name, list) in &spec.inputs.artifacts {
        for (i, a) in list.iter().enumerate() {
            if crate::artifacts::is_supported_uri(&a.uri) {
                by_path.insert(
                    layout.step(&super::prepare::input_rel(name, i, &a.uri)),
                    &a.uri,
                );
            }
        }
    }
    for (name, out) in &spec.outputs.artifacts {
        by_path.insert(layout.step(&format!("outputs/artifacts/{name}")), &out.uri);
    }
    for v in parameters.values_mut() {
        if let Some(uri) = v.as_str().and_then(|s| by_path.get(s)) {
            *v = Value::String(uri.to_string());
        }
    }
}

/// `uri` lies under `root` (`root` itself or below `root/`), with no `..` segment.
pub(super) fn under_root(uri: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    !root.is_empty()
        && (uri == root || uri.starts_with(&format!("{root}/")))
        && !uri.split('/').any(|seg| seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::PathMap;
    use serde_json::json;

    #[test]
    fn a_returned_artifact_path_leaves_the_step_as_its_store_uri() {
        let mut spec = super::super::tests::spec();
        let layout = Layout {
            host: "/w/run-1/t/attempt-1".into(),
            map: PathMap::new("/w/run-1/t/attempt-1", "/gantry"),
        };
        let input_uri = "s3://b/run-0/p/attempt-1/data".to_string();
        spec.inputs.artifacts.insert(
            "data".into(),
            vec![ArtifactRef {
                name: "data".into(),
                uri: input_uri.clone(),
                schema_title: "system.Dataset".into(),
                schema_version: "0.0.1".into(),
                metadata: Default::default(),
            }],
        );
        let staged = layout.step(&super::super::prepare::input_rel("data", 0, &input_uri));
        assert_eq!(staged, "/gantry/inputs/data/0/data");
        spec.outputs.artifacts.insert(
            "model".into(),
            gantry_model::OutputArtifactSpec {
                uri: "s3://b/run-1/t/model".into(),
                schema_title: "system.Model".into(),
                schema_version: "0.0.1".into(),
            },
        );
        let mut params = BTreeMap::from([
            ("in".to_string(), Value::String(staged.clone())),
            ("out".to_string(), json!("/gantry/outputs/artifacts/model")),
            ("near".to_string(), Value::String(format!("{staged}/x"))),
            ("n".to_string(), json!(3)),
        ]);
        store_uris_for_paths(&spec, &layout, &mut params);
        assert_eq!(params["in"], json!(input_uri));
        assert_eq!(params["out"], json!("s3://b/run-1/t/model"));
        assert_eq!(
            params["near"],
            json!(format!("{staged}/x")),
            "only whole paths"
        );
        assert_eq!(params["n"], json!(3));
    }
}
