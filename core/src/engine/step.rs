//! The step spec an agent receives for an attempt, derived from committed state only.

use std::collections::BTreeMap;

use gantry_model::{
    artifact_uri, ContainerSpec, EnvVar, OutputArtifactSpec, ResourceRequest, StepOutputs,
    StepSpec, TaskId,
};

use super::advance::component;
use super::platform::PlatformError;
use super::{RunRecord, TaskRecord};
use crate::ir::{
    parse_accelerator_count, parse_cpu_quantity, parse_memory_quantity, ContainerExecutor,
    ExecutorSpec, Implementation, QuantityError,
};

/// Why a resource a task decides at run time (`set_cpu_limit(some_task.output)`) has no
/// usable value; `field` names it (`cpu limit`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourceError {
    #[error("{field} from input {input:?}: {value} is not a quantity")]
    NotAQuantity {
        field: &'static str,
        input: String,
        value: serde_json::Value,
    },
    #[error("{field} from input {input:?}: the input has no value")]
    NoValue { field: &'static str, input: String },
    #[error("{field}: {error}")]
    Quantity {
        field: &'static str,
        error: QuantityError,
    },
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// Why no step spec can be made for an attempt: the state is not what the caller thought (a
/// task that is gone or not a container), or the task's settings do not resolve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    #[error("no task {0:?}")]
    NoTask(TaskId),
    #[error("no component {0:?}")]
    NoComponent(String),
    #[error("task {0:?} is a DAG")]
    NotAContainerTask(TaskId),
    #[error("executor {0:?} is not a container")]
    NotAContainerExecutor(String),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Resources(#[from] ResourceError),
}

/// The container executor a task runs, if it runs one.
fn container_of<'a>(run: &'a RunRecord, rec: &TaskRecord) -> Option<&'a ContainerExecutor> {
    let comp = component(&run.pipeline, &rec.component)?;
    let Implementation::Executor(label) = &comp.implementation else {
        return None;
    };
    match run.pipeline.executors.get(label) {
        Some(ExecutorSpec::Container(c)) => Some(c),
        _ => None,
    }
}

/// The resources a container task asks for: the executor's fixed ones, with the fields the
/// pipeline decides at run time (`set_cpu_limit(some_task.output)`) read from the task's
/// resolved inputs.
pub fn task_resources(run: &RunRecord, rec: &TaskRecord) -> Result<ResourceRequest, ResourceError> {
    let Some(exec) = container_of(run, rec) else {
        return Ok(ResourceRequest::default());
    };
    let mut r = exec.resources.clone();
    if let Some(Implementation::Executor(label)) =
        component(&run.pipeline, &rec.component).map(|c| &c.implementation)
    {
        let (selector, tolerations) = super::platform::task_placement(run, rec, label)?;
        r.node_selector = selector;
        r.tolerations = tolerations;
    }
    let d = &exec.dynamic_resources;
    if d.is_empty() {
        return Ok(r);
    }
    let input = |field: &'static str, name: &str| -> Result<String, ResourceError> {
        match rec.inputs.parameters.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(ResourceError::NotAQuantity {
                field,
                input: name.to_string(),
                value: other.clone(),
            }),
            None => Err(ResourceError::NoValue {
                field,
                input: name.to_string(),
            }),
        }
    };
    let quantity = |field: &'static str| move |error| ResourceError::Quantity { field, error };
    if let Some(n) = &d.cpu_limit {
        r.cpu_limit =
            Some(parse_cpu_quantity(&input("cpu limit", n)?).map_err(quantity("cpu limit"))?);
    }
    if let Some(n) = &d.cpu_request {
        r.cpu_request =
            Some(parse_cpu_quantity(&input("cpu request", n)?).map_err(quantity("cpu request"))?);
    }
    if let Some(n) = &d.memory_limit {
        r.memory_limit_bytes = Some(
            parse_memory_quantity(&input("memory limit", n)?).map_err(quantity("memory limit"))?,
        );
    }
    if let Some(n) = &d.memory_request {
        r.memory_request_bytes = Some(
            parse_memory_quantity(&input("memory request", n)?)
                .map_err(quantity("memory request"))?,
        );
    }
    if let Some(n) = &d.accelerator_type {
        r.accelerator_type = Some(input("accelerator type", n)?);
    }
    if let Some(n) = &d.accelerator_count {
        r.accelerator_count = parse_accelerator_count(&input("accelerator count", n)?)
            .map_err(quantity("accelerator count"))?;
    }
    Ok(r)
}

/// The spec of attempt `attempt` of container task `task_id`. Deterministic: any node derives
/// the same spec from the same state, so it need not be stored.
pub fn step_spec(run: &RunRecord, task_id: &TaskId, attempt: u32) -> Result<StepSpec, StepError> {
    let rec = run
        .tasks
        .get(task_id)
        .ok_or_else(|| StepError::NoTask(task_id.clone()))?;
    let comp = component(&run.pipeline, &rec.component)
        .ok_or_else(|| StepError::NoComponent(rec.component.clone()))?;
    let Implementation::Executor(label) = &comp.implementation else {
        return Err(StepError::NotAContainerTask(task_id.clone()));
    };
    let Some(ExecutorSpec::Container(exec)) = run.pipeline.executors.get(label) else {
        return Err(StepError::NotAContainerExecutor(label.clone()));
    };
    let needs = super::platform::task_needs(run, rec, label)?;
    let outputs = StepOutputs {
        parameters: comp
            .output_parameters
            .iter()
            .map(|(k, d)| (k.clone(), d.ptype))
            .collect(),
        artifacts: comp
            .output_artifacts
            .iter()
            .map(|(k, d)| {
                let spec = OutputArtifactSpec {
                    uri: artifact_uri(&run.pipeline_root, &run.run_id, task_id, attempt, k),
                    schema_title: d.schema_title.clone(),
                    schema_version: d.schema_version.clone(),
                };
                (k.clone(), spec)
            })
            .collect::<BTreeMap<_, _>>(),
    };
    Ok(StepSpec {
        run_id: run.run_id.clone(),
        task_id: task_id.clone(),
        task_name: rec.name.clone(),
        attempt,
        pipeline_name: run.pipeline.name.clone(),
        pipeline_root: run.pipeline_root.clone(),
        container: ContainerSpec {
            image: exec.image.clone(),
            command: exec.command.clone(),
            args: exec.args.clone(),
            env: exec
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: value.clone(),
                })
                .chain(needs.field_env.iter().filter_map(|(name, field)| {
                    let value = super::platform::pod_field_value(run, rec, label, attempt, field)?;
                    Some(EnvVar {
                        name: name.clone(),
                        value,
                    })
                }))
                .collect(),
            namespace_env: needs
                .field_env
                .iter()
                .filter(|(_, f)| *f == super::platform::PodField::Namespace)
                .map(|(name, _)| name.clone())
                .collect(),
            resources: task_resources(run, rec)?,
            secret_env: needs.secret_env,
            volumes: needs.volumes,
            secret_volumes: needs.secret_volumes,
            config_map_env: needs.config_map_env,
            config_map_volumes: needs.config_map_volumes,
            empty_dirs: needs.empty_dirs,
            shared_memory: needs.shared_memory,
        },
        inputs: rec.inputs.clone(),
        outputs,
        gpus: rec
            .attempts
            .iter()
            .find(|a| a.number == attempt)
            .map(|a| a.gpus.clone())
            .unwrap_or_default(),
    })
}
