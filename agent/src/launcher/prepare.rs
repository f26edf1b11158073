//! An attempt made ready to run: its directory, its inputs staged, the executor input and
//! placeholders resolved, and the environment, mounts and labels of its container.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_model::{is_reserved_env, StepSpec};
use serde_json::{Map, Value};

use super::executor_input::executor_input_json;
use super::layout::Layout;
use super::{container_run_name, is_metrics, LaunchError, Launcher};
use crate::artifacts::{is_supported_uri, ArtifactError};
use crate::placeholders::{self, StepArtifact};
use crate::runtime::{ContainerRun, Mount, Tmpfs};
use crate::secrets;

/// Namespace of `{{$.pipeline_task_uuid}}` values (a v5 UUID of `run_id/task_id`).
const TASK_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a1f_3c2e_9b7d_4e58_a0c4_d2f1_8e63_b915);

/// What [`Launcher::prepare`] made of a spec: the process to run and the names the outputs
/// will be found under.
pub(super) struct Prepared {
    pub(super) run: ContainerRun,
    pub(super) layout: Layout,
}

impl Launcher {
    /// Makes the attempt directory, stages the inputs, writes the executor input and
    /// substitutes the placeholders.
    pub(super) async fn prepare(
        &self,
        spec: &StepSpec,
        dir: &Path,
    ) -> Result<Prepared, LaunchError> {
        make_attempt_dir(dir).await?;
        let layout = Layout {
            host: dir.to_path_buf(),
            map: self.runtime.path_map(dir),
        };
        // A missing image fails the step before any input is downloaded.
        self.runtime.ensure_image(&spec.container.image).await?;

        let ident = identity(spec);
        let parameters = resolve_parameter_values(&spec.inputs.parameters, &ident);
        let mut ctx = placeholders::Context {
            input_parameters: parameters,
            output_file: layout.step("outputs/executor_output.json"),
            ..ident
        };
        self.stage_inputs(spec, &layout, &mut ctx).await?;
        declare_outputs(spec, &layout, &mut ctx);
        ctx.executor_input = executor_input_json(&ctx).to_string();
        // For whoever inspects a failed attempt; the step gets it through `{{$}}`.
        if let Err(e) = tokio::fs::write(dir.join("executor_input.json"), &ctx.executor_input).await
        {
            tracing::debug!(error = %e, "could not keep executor_input.json");
        }
        let placeholder = |field| move |error| LaunchError::Placeholder { field, error };
        let command = placeholders::substitute_all(&spec.container.command, &ctx)
            .map_err(placeholder("command"))?;
        let args = placeholders::substitute_all(&spec.container.args, &ctx)
            .map_err(placeholder("args"))?;

        let mut mounts = self.container_mounts(spec)?;
        let (scratch, tmpfs) = self.scratch_mounts(spec, dir).await?;
        mounts.extend(scratch);
        let run = ContainerRun {
            name: container_run_name(spec),
            image: spec.container.image.clone(),
            command,
            args,
            env: self.container_env(spec)?,
            mounts,
            tmpfs,
            work_dir: dir.to_path_buf(),
            labels: self.container_labels(spec),
            cpu_limit: spec.container.resources.cpu_limit,
            memory_limit_bytes: spec.container.resources.memory_limit_bytes,
            network: self.network.clone(),
            gpus: spec.gpus.clone(),
        };
        Ok(Prepared { run, layout })
    }

    /// Downloads the input artifacts into the attempt directory and records, for each, the
    /// path the step reads it at.
    async fn stage_inputs(
        &self,
        spec: &StepSpec,
        layout: &Layout,
        ctx: &mut placeholders::Context,
    ) -> Result<(), LaunchError> {
        for (name, list) in &spec.inputs.artifacts {
            let mut items = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let step_art = |path: String| StepArtifact {
                    name: a.name.clone(),
                    schema_title: a.schema_title.clone(),
                    schema_version: a.schema_version.clone(),
                    uri: path.clone(),
                    path,
                    metadata: a.metadata.clone(),
                };
                if !is_supported_uri(&a.uri) {
                    tracing::warn!(input = %name, uri = %a.uri,
                        "input artifact URI has no supported scheme; not downloaded");
                    items.push(step_art(a.uri.clone()));
                    continue;
                }
                let access = self.access.clone();
                let (uri, root) = (a.uri.clone(), spec.pipeline_root.clone());
                let checked =
                    tokio::task::spawn_blocking(move || access.check_download(&uri, &root))
                        .await
                        .unwrap_or_else(|e| Err(format!("checking the URI failed: {e}")));
                if let Err(why) = checked {
                    return Err(LaunchError::InputRefused {
                        name: name.clone(),
                        why,
                    });
                }
                let rel = input_rel(name, i, &a.uri);
                match self.stores.download(&a.uri, &layout.host(&rel)).await {
                    Ok(_) => {}
                    Err(ArtifactError::NotFound(_)) if is_metrics(&a.schema_title) => {
                        // Metrics live in their metadata; the file is optional.
                    }
                    Err(error) => {
                        return Err(LaunchError::InputArtifact {
                            name: name.clone(),
                            error,
                        })
                    }
                }
                items.push(step_art(layout.step(&rel)));
            }
            ctx.input_artifacts.insert(name.clone(), items);
        }
        Ok(())
    }

    /// The container's variables: the operator's, then the component's own, then its
    /// secrets, then Gantry's; a later one wins. The component's and the secrets' reserved
    /// names (`NVIDIA_*`, `CUDA_VISIBLE_DEVICES`, `GANTRY_*`, [`gantry_model::env`]), which
    /// the coordinator refuses at submit, are dropped here too, and Gantry's come last
    /// whatever happens.
    pub(super) fn container_env(
        &self,
        spec: &StepSpec,
    ) -> Result<Vec<(String, String)>, LaunchError> {
        let mut env: Vec<(String, String)> = self.step_env.clone();
        let (secret_env, _) =
            secrets::resolve(self.secrets.as_deref(), &spec.container.secret_env)?;
        let step_own = spec
            .container
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .chain(
                spec.container
                    .namespace_env
                    .iter()
                    .map(|name| (name.clone(), self.namespace.clone())),
            )
            .chain(crate::config_maps::env(
                self.config_maps.as_deref(),
                &spec.container.config_map_env,
            )?)
            .chain(secret_env);
        for (k, v) in step_own {
            if is_reserved_env(&k) {
                tracing::warn!(attempt = %spec.attempt_key(), variable = %k,
                    "the step sets a reserved variable; dropped");
            } else {
                env.push((k, v));
            }
        }
        // Which attempt this is lets a step tell a retry from a first run (Argo's
        // `{{retries}}`).
        env.extend([
            ("GANTRY_RUN_ID".into(), spec.run_id.to_string()),
            ("GANTRY_TASK_ID".into(), spec.task_id.to_string()),
            ("GANTRY_ATTEMPT".into(), spec.attempt.to_string()),
            // Only the assigned GPUs; `void` keeps a CUDA base image's `all` from exposing the
            // host's GPUs to a step that was given none.
            (
                "NVIDIA_VISIBLE_DEVICES".into(),
                if spec.gpus.is_empty() {
                    "void".into()
                } else {
                    spec.gpus.join(",")
                },
            ),
            ("CUDA_VISIBLE_DEVICES".into(), spec.gpus.join(",")),
        ]);
        Ok(env)
    }

    /// The operator's mounts, then the named volumes the step asks for.
    pub(super) fn container_mounts(&self, spec: &StepSpec) -> Result<Vec<Mount>, LaunchError> {
        let mut mounts = self.mounts.clone();
        if !spec.container.volumes.is_empty() {
            if !self.runtime.mounts_host_dirs() {
                return Err(LaunchError::VolumesNeedDocker {
                    volumes: spec.container.volumes.clone(),
                });
            }
            let (run_claims, own): (Vec<_>, Vec<_>) = spec
                .container
                .volumes
                .iter()
                .cloned()
                .partition(|v| v.run_claim);
            mounts.extend(self.volumes.mounts_for(&own)?);
            let claims_dir = crate::volumes::run_claims_dir(&self.work_root, spec.run_id.as_str());
            for v in &run_claims {
                mounts.push(self.volumes.run_claim_mount(&claims_dir, v)?);
            }
        }
        let secret_dirs = if spec.container.secret_volumes.is_empty() {
            Vec::new()
        } else {
            secrets::volumes(self.secrets.as_deref(), &spec.container.secret_volumes)?.dirs
        };
        let secret_names = spec.container.secret_volumes.iter().map(|v| &v.secret);
        mounts.extend(self.store_mounts("secret", secret_names, secret_dirs)?);
        let config_dirs = crate::config_maps::mounts(
            self.config_maps.as_deref(),
            &spec.container.config_map_volumes,
        )?;
        let config_names = spec
            .container
            .config_map_volumes
            .iter()
            .map(|v| &v.config_map);
        mounts.extend(self.store_mounts("config map", config_names, config_dirs)?);
        Ok(mounts)
    }

    /// The attempt's emptyDirs and `/dev/shm`: on disk, fresh directories beside its files
    /// (removed with them); in memory, tmpfs mounts. Docker only, never over the step's files.
    pub(super) async fn scratch_mounts(
        &self,
        spec: &StepSpec,
        dir: &Path,
    ) -> Result<(Vec<Mount>, Vec<Tmpfs>), LaunchError> {
        let c = &spec.container;
        if c.empty_dirs.is_empty() && c.shared_memory.is_none() {
            return Ok((Vec::new(), Vec::new()));
        }
        if !self.runtime.mounts_host_dirs() {
            let mut names: Vec<String> = c.empty_dirs.iter().map(|d| d.name.clone()).collect();
            if c.shared_memory.is_some() {
                names.push("/dev/shm".into());
            }
            return Err(LaunchError::StoreVolumesNeedDocker {
                what: "emptyDir",
                names,
            });
        }
        let mut mounts = Vec::new();
        let mut tmpfs: Vec<Tmpfs> = c
            .shared_memory
            .iter()
            .map(|shm| Tmpfs {
                container_path: "/dev/shm".into(),
                size_bytes: shm.size_bytes,
            })
            .collect();
        for d in &c.empty_dirs {
            if Path::new(&d.mount_path).starts_with(crate::runtime::STEP_ROOT) {
                return Err(LaunchError::MountHidesStepRoot {
                    what: "emptyDir",
                    name: d.name.clone(),
                    mount_path: d.mount_path.clone(),
                });
            }
            if d.memory {
                tmpfs.push(Tmpfs {
                    container_path: d.mount_path.clone(),
                    size_bytes: d.size_limit_bytes,
                });
                continue;
            }
            let host_path = dir.join(EMPTY_DIRS).join(&d.name);
            if let Err(error) = tokio::fs::create_dir_all(&host_path).await {
                return Err(LaunchError::CreateDir {
                    path: host_path,
                    error,
                });
            }
            set_mode(&host_path, 0o777).await?;
            mounts.push(Mount {
                host_path,
                container_path: d.mount_path.clone(),
                read_only: false,
            });
        }
        Ok((mounts, tmpfs))
    }

    /// Read-only mounts of a store's directories (`(host dir, mount path)`) for the secrets or
    /// config maps (`what`, `names`) a step mounts: Docker only, never over the step's own
    /// files.
    fn store_mounts<'a>(
        &self,
        what: &'static str,
        names: impl Iterator<Item = &'a String>,
        dirs: Vec<(std::path::PathBuf, String)>,
    ) -> Result<Vec<Mount>, LaunchError> {
        let names: Vec<String> = names.cloned().collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        if !self.runtime.mounts_host_dirs() {
            return Err(LaunchError::StoreVolumesNeedDocker { what, names });
        }
        dirs.into_iter()
            .map(|(host_path, container_path)| {
                if Path::new(&container_path).starts_with(crate::runtime::STEP_ROOT) {
                    let name = host_path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Err(LaunchError::MountHidesStepRoot {
                        what,
                        name,
                        mount_path: container_path,
                    });
                }
                Ok(Mount {
                    host_path,
                    container_path,
                    read_only: true,
                })
            })
            .collect()
    }

    /// The operator's labels, then the `gantry.*` ones a restarted agent finds the container
    /// by ([`Launcher::orphans`]); those win.
    fn container_labels(&self, spec: &StepSpec) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.extend(
            [
                ("gantry.managed", "true".to_string()),
                ("gantry.run", spec.run_id.to_string()),
                ("gantry.task", spec.task_id.to_string()),
                ("gantry.attempt", spec.attempt.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        labels
    }
}

/// Under the attempt directory: its on-disk emptyDirs, by name.
pub(super) const EMPTY_DIRS: &str = "empty-dirs";

/// Clears what an earlier run of the same attempt left and makes the directories the step
/// reads and writes.
async fn make_attempt_dir(dir: &Path) -> Result<(), LaunchError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(LaunchError::ClearDir {
                path: dir.to_path_buf(),
                error,
            })
        }
    }
    for sub in ["inputs", "outputs/params", "outputs/artifacts"] {
        let path = dir.join(sub);
        if let Err(error) = tokio::fs::create_dir_all(&path).await {
            return Err(LaunchError::CreateDir { path, error });
        }
    }
    // The container may run as a non-root user: it must read inputs and write outputs.
    set_mode(dir, 0o755).await?;
    for sub in ["outputs", "outputs/params", "outputs/artifacts"] {
        set_mode(&dir.join(sub), 0o777).await?;
    }
    Ok(())
}

/// Where the step writes each output parameter and artifact, as the placeholders name them.
fn declare_outputs(spec: &StepSpec, layout: &Layout, ctx: &mut placeholders::Context) {
    for name in spec.outputs.parameters.keys() {
        ctx.output_parameter_files
            .insert(name.clone(), layout.step(&format!("outputs/params/{name}")));
    }
    for (name, a) in &spec.outputs.artifacts {
        let path = layout.step(&format!("outputs/artifacts/{name}"));
        ctx.output_artifacts.insert(
            name.clone(),
            StepArtifact {
                name: name.clone(),
                schema_title: a.schema_title.clone(),
                schema_version: a.schema_version.clone(),
                uri: path.clone(),
                path,
                metadata: Map::new(),
            },
        );
    }
}

async fn set_mode(path: &Path, mode: u32) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(|error| LaunchError::SetMode {
            path: path.to_path_buf(),
            error,
        })
}

/// Identity of the run and task, for the pipeline-level placeholders.
pub(super) fn identity(spec: &StepSpec) -> placeholders::Context {
    let task_uuid = uuid::Uuid::new_v5(
        &TASK_UUID_NAMESPACE,
        format!("{}/{}", spec.run_id, spec.task_id).as_bytes(),
    );
    placeholders::Context {
        job_name: spec.pipeline_name.clone(),
        job_resource_name: format!("{}-{}", spec.pipeline_name, spec.run_id),
        job_uuid: spec.run_id.to_string(),
        task_name: spec.task_name.clone(),
        task_uuid: task_uuid.to_string(),
        pipeline_root: spec.pipeline_root.clone(),
        ..Default::default()
    }
}

/// Resolves placeholders inside string parameter values: pipeline-level ones given as
/// constants (`{{$.pipeline_job_uuid}}`) and references to other inputs of the same task
/// (f-strings: `"{{$.inputs.parameters['pipelinechannel--x']}}-suffix"`), as Kubeflow's
/// driver does. A value that does not resolve is passed on unchanged.
pub fn resolve_parameter_values(
    params: &BTreeMap<String, Value>,
    ident: &placeholders::Context,
) -> BTreeMap<String, Value> {
    let ctx = placeholders::Context {
        input_parameters: params.clone(),
        ..ident.clone()
    };
    params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s.contains("{{$") => {
                    match placeholders::substitute_str(s, &ctx) {
                        Ok(r) => Value::String(r),
                        Err(e) => {
                            tracing::warn!(parameter = %k, error = %e,
                                "parameter value keeps its unresolved placeholder");
                            v.clone()
                        }
                    }
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Where input artifact `i` of input `name`, stored at `uri`, is staged in the attempt
/// directory.
pub(super) fn input_rel(name: &str, i: usize, uri: &str) -> String {
    format!("inputs/{name}/{i}/{}", last_segment(uri))
}

/// The last segment of a URI, usable as a file name (`data` when there is none).
pub(super) fn last_segment(uri: &str) -> String {
    let seg = uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if seg.is_empty() || seg == "." || seg == ".." || seg.contains(':') {
        "data".into()
    } else {
        seg.to_string()
    }
}
