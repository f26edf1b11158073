//! The step spec an agent receives for an attempt, derived from committed state only.

use std::collections::BTreeMap;

use gantry_model::{
    artifact_uri, ContainerSpec, EnvVar, OutputArtifactSpec, StepOutputs, StepSpec,
};

use super::advance::component;
use super::RunRecord;
use crate::ir::{ExecutorSpec, Implementation};

/// The spec of attempt `attempt` of container task `task_id`. Deterministic: any node derives
/// the same spec from the same state, so it need not be stored.
pub fn step_spec(run: &RunRecord, task_id: &str, attempt: u32) -> Result<StepSpec, String> {
    let rec = run
        .tasks
        .get(task_id)
        .ok_or_else(|| format!("no task {task_id:?}"))?;
    let comp = component(&run.pipeline, &rec.component)
        .ok_or_else(|| format!("no component {:?}", rec.component))?;
    let Implementation::Executor(label) = &comp.implementation else {
        return Err(format!("task {task_id:?} is a DAG"));
    };
    let Some(ExecutorSpec::Container(exec)) = run.pipeline.executors.get(label) else {
        return Err(format!("executor {label:?} is not a container"));
    };
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
        task_id: task_id.to_string(),
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
                .collect(),
            resources: exec.resources.clone(),
        },
        inputs: rec.inputs.clone(),
        outputs,
    })
}
