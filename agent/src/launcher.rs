//! The KFP executor contract for one attempt:
//!
//! ```text
//!  attempt dir ── download inputs ── executor input + placeholders ── run (runtime)
//!       │                                                                │ exit 0
//!       └──────────── outputs: executor_output.json, parameter files, artifacts ── upload ── outcome
//! ```
//!
//! Everything the step sees lives under its attempt directory, which the runtime shows at
//! [`Runtime::step_root`] (`/gantry` in a container). Artifact `uri`s in the executor input
//! are those local paths — kfp's executor uses a scheme-less URI as the path — and the
//! launcher records the real `s3://`/`file://` URIs.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_model::{ArtifactRef, ParamType, StepOutcome, StepSpec};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::artifacts::ArtifactStores;
use crate::placeholders::{self, StepArtifact};
use crate::runtime::{ContainerRun, LogLine, LogStream, Runtime};

const STDERR_TAIL: usize = 20;

pub struct Launcher {
    runtime: Arc<dyn Runtime>,
    work_root: PathBuf,
    stores: ArtifactStores,
}

struct Layout {
    host: PathBuf,
    step: PathBuf,
}

impl Layout {
    fn host(&self, rel: &str) -> PathBuf {
        self.host.join(rel)
    }
    fn step(&self, rel: &str) -> String {
        self.step.join(rel).to_string_lossy().into_owned()
    }
}

fn last_segment(uri: &str) -> String {
    let seg = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if seg.is_empty() || seg == "." || seg == ".." {
        "data".into()
    } else {
        seg.to_string()
    }
}

fn artifact_json(
    name: &str,
    schema_title: &str,
    schema_version: &str,
    uri: &str,
    metadata: &Map<String, Value>,
) -> Value {
    json!({
        "name": name,
        "type": {"schemaTitle": schema_title, "schemaVersion": schema_version},
        "uri": uri,
        "metadata": metadata,
    })
}

impl Launcher {
    pub fn new(runtime: Arc<dyn Runtime>, work_root: PathBuf) -> Self {
        Launcher {
            runtime,
            work_root,
            stores: ArtifactStores::default(),
        }
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// Runs one attempt to its outcome. Never panics on step behaviour: every problem is a
    /// failed outcome with a message.
    pub async fn run_step(
        &self,
        spec: &StepSpec,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> StepOutcome {
        let dir = self
            .work_root
            .join(&spec.run_id)
            .join(&spec.task_id)
            .join(format!("attempt-{}", spec.attempt));
        let outcome = match self.attempt(spec, &dir, logs, cancel).await {
            Ok(o) => o,
            Err(error) => StepOutcome::Failed {
                error,
                exit_code: None,
            },
        };
        if matches!(outcome, StepOutcome::Succeeded { .. }) {
            // Failed attempts keep their directory for inspection.
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        outcome
    }

    async fn attempt(
        &self,
        spec: &StepSpec,
        dir: &Path,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<StepOutcome, String> {
        let _ = tokio::fs::remove_dir_all(dir).await;
        for sub in ["inputs", "outputs/parameters", "outputs/artifacts", "tmp"] {
            tokio::fs::create_dir_all(dir.join(sub))
                .await
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        let layout = Layout {
            host: dir.to_path_buf(),
            step: self.runtime.step_root(dir),
        };

        let mut ctx = placeholders::Context {
            input_parameters: spec.inputs.parameters.clone(),
            job_name: spec.pipeline_name.clone(),
            job_id: spec.run_id.clone(),
            task_name: spec.task_name.clone(),
            task_id: spec.task_id.clone(),
            pipeline_root: spec.pipeline_root.clone(),
            ..Default::default()
        };
        let mut in_artifacts = Map::new();
        for (name, list) in &spec.inputs.artifacts {
            let mut items = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let rel = format!("inputs/{name}/{i}/{}", last_segment(&a.uri));
                self.stores
                    .download(&a.uri, &layout.host(&rel))
                    .await
                    .map_err(|e| format!("input artifact {name:?}: {e}"))?;
                let path = layout.step(&rel);
                items.push(artifact_json(
                    &a.name,
                    &a.schema_title,
                    &a.schema_version,
                    &path,
                    &a.metadata,
                ));
                if i == 0 {
                    ctx.input_artifacts.insert(
                        name.clone(),
                        StepArtifact {
                            path: path.clone(),
                            uri: path,
                            metadata: a.metadata.clone(),
                        },
                    );
                }
            }
            in_artifacts.insert(name.clone(), json!({ "artifacts": items }));
        }
        let mut out_params = Map::new();
        for name in spec.outputs.parameters.keys() {
            let path = layout.step(&format!("outputs/parameters/{name}"));
            out_params.insert(name.clone(), json!({ "outputFile": path }));
            ctx.output_parameter_files.insert(name.clone(), path);
        }
        let mut out_artifacts = Map::new();
        for (name, a) in &spec.outputs.artifacts {
            let rel = format!("outputs/artifacts/{name}/{name}");
            let path = layout.step(&rel);
            out_artifacts.insert(
                name.clone(),
                json!({ "artifacts": [artifact_json(name, &a.schema_title, &a.schema_version, &path, &Map::new())] }),
            );
            ctx.output_artifacts.insert(
                name.clone(),
                StepArtifact {
                    path: path.clone(),
                    uri: path,
                    metadata: Map::new(),
                },
            );
        }
        let executor_input = json!({
            "inputs": {
                "parameterValues": spec.inputs.parameters,
                "artifacts": in_artifacts,
            },
            "outputs": {
                "parameters": out_params,
                "artifacts": out_artifacts,
                "outputFile": layout.step("outputs/executor_output.json"),
            },
        });
        ctx.executor_input = executor_input.to_string();
        let command = placeholders::substitute_all(&spec.container.command, &ctx)?;
        let args = placeholders::substitute_all(&spec.container.args, &ctx)?;

        let mut env: Vec<(String, String)> = spec
            .container
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        env.push(("TMPDIR".into(), layout.step("tmp")));
        let labels: BTreeMap<String, String> = [
            ("gantry.managed", "true".to_string()),
            ("gantry.run", spec.run_id.clone()),
            ("gantry.task", spec.task_id.clone()),
            ("gantry.attempt", spec.attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let run = ContainerRun {
            name: format!("gantry-{}-{}-{}", spec.run_id, spec.task_id, spec.attempt),
            image: spec.container.image.clone(),
            command,
            args,
            env,
            attempt_dir: dir.to_path_buf(),
            labels,
            cpu_limit: spec.container.resources.cpu_limit,
            memory_limit_bytes: spec.container.resources.memory_limit_bytes,
        };

        // Forward logs, keeping the stderr tail for the failure message.
        let (tx, mut rx) = mpsc::channel::<LogLine>(1024);
        let tail = tokio::spawn(async move {
            let mut tail: VecDeque<String> = VecDeque::new();
            while let Some(l) = rx.recv().await {
                if l.stream == LogStream::Stderr {
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(l.line.clone());
                }
                let _ = logs.send(l).await;
            }
            tail
        });
        let exit = self.runtime.run(&run, tx, cancel).await;
        let tail = tail.await.unwrap_or_default();
        let exit = exit.map_err(|e| e.to_string())?;
        if exit.canceled {
            return Ok(StepOutcome::Canceled);
        }
        if exit.exit_code != 0 {
            let tail: Vec<String> = tail.into_iter().collect();
            let error = if tail.is_empty() {
                format!("exit code {}", exit.exit_code)
            } else {
                format!("exit code {}: {}", exit.exit_code, tail.join("\n"))
            };
            return Ok(StepOutcome::Failed {
                error,
                exit_code: Some(exit.exit_code),
            });
        }
        self.collect(spec, &layout).await
    }

    async fn collect(&self, spec: &StepSpec, layout: &Layout) -> Result<StepOutcome, String> {
        let exec_out: Value =
            match tokio::fs::read(layout.host("outputs/executor_output.json")).await {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| format!("executor_output.json is not valid JSON: {e}"))?,
                Err(_) => Value::Null,
            };
        let mut parameters = BTreeMap::new();
        for (name, ptype) in &spec.outputs.parameters {
            let value = match exec_out["parameterValues"].get(name) {
                Some(v) => ptype
                    .coerce(v)
                    .map_err(|e| format!("output parameter {name:?}: {e}"))?,
                None => {
                    let file = layout.host(&format!("outputs/parameters/{name}"));
                    let text = tokio::fs::read_to_string(&file).await.map_err(|_| {
                        format!(
                            "output parameter {name:?} was not written (expected at {})",
                            layout.step(&format!("outputs/parameters/{name}"))
                        )
                    })?;
                    match ptype {
                        ParamType::String => Value::String(text),
                        other => other
                            .parse_text(&text)
                            .map_err(|e| format!("output parameter {name:?}: {e}"))?,
                    }
                }
            };
            parameters.insert(name.clone(), value);
        }
        let mut artifacts = BTreeMap::new();
        for (name, out) in &spec.outputs.artifacts {
            let rel = format!("outputs/artifacts/{name}/{name}");
            let local = layout.host(&rel);
            if tokio::fs::metadata(&local).await.is_err() {
                return Err(format!(
                    "output artifact {name:?} was not written (expected at {})",
                    layout.step(&rel)
                ));
            }
            self.stores
                .upload(&local, &out.uri)
                .await
                .map_err(|e| format!("uploading output artifact {name:?}: {e}"))?;
            let metadata = exec_out["artifacts"][name]["artifacts"][0]["metadata"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            artifacts.insert(
                name.clone(),
                vec![ArtifactRef {
                    name: name.clone(),
                    uri: out.uri.clone(),
                    schema_title: out.schema_title.clone(),
                    schema_version: out.schema_version.clone(),
                    metadata,
                }],
            );
        }
        Ok(StepOutcome::Succeeded {
            parameters,
            artifacts,
        })
    }
}
