//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use gantry_agent::artifacts::S3Settings;
use gantry_agent::launcher::Launcher;
use gantry_agent::runtime::{LogLine, LogStream};
use gantry_model::{
    artifact_uri, ContainerSpec, OutputArtifactSpec, ParamType, ResourceRequest, StepInputs,
    StepOutcome, StepOutputs, StepSpec,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn file_root(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// A unique run id per test, so parallel tests and leftovers never collide.
pub fn run_id(tag: &str) -> String {
    format!("test-{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// A step with no inputs or outputs; tests fill in the rest.
pub fn step(run_id: &str, task_id: &str, root: &str, image: &str, command: &[&str]) -> StepSpec {
    StepSpec {
        run_id: run_id.into(),
        task_id: task_id.into(),
        task_name: task_id.rsplit('/').next().unwrap_or(task_id).into(),
        attempt: 1,
        pipeline_name: "agent-test".into(),
        pipeline_root: root.into(),
        container: ContainerSpec {
            image: image.into(),
            command: strings(command),
            args: vec![],
            env: vec![],
            resources: ResourceRequest::default(),
            secret_env: vec![],
            volumes: vec![],
            namespace_env: vec![],
            secret_volumes: vec![],
            config_map_env: vec![],
            config_map_volumes: vec![],
            empty_dirs: vec![],
            shared_memory: None,
        },
        inputs: StepInputs::default(),
        outputs: StepOutputs::default(),
        gpus: vec![],
    }
}

pub fn add_output_param(spec: &mut StepSpec, name: &str, t: ParamType) {
    spec.outputs.parameters.insert(name.into(), t);
}

pub fn add_output_artifact(spec: &mut StepSpec, name: &str, schema_title: &str) {
    let uri = artifact_uri(
        &spec.pipeline_root,
        &spec.run_id,
        &spec.task_id,
        spec.attempt,
        name,
    );
    spec.outputs.artifacts.insert(
        name.into(),
        OutputArtifactSpec {
            uri,
            schema_title: schema_title.into(),
            schema_version: "0.0.1".into(),
        },
    );
}

/// Collects every log line of a step.
pub fn log_collector() -> (mpsc::Sender<LogLine>, tokio::task::JoinHandle<Vec<LogLine>>) {
    let (tx, mut rx) = mpsc::channel(256);
    let h = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(l) = rx.recv().await {
            v.push(l);
        }
        v
    });
    (tx, h)
}

/// Runs `spec` on `launcher` to its end: the outcome and every log line.
pub async fn run_step(launcher: &Launcher, spec: &StepSpec) -> (StepOutcome, Vec<LogLine>) {
    let (tx, logs) = log_collector();
    let outcome = launcher.run_step(spec, tx, CancellationToken::new()).await;
    (outcome, logs.await.expect("the log collector ends"))
}

pub fn lines(logs: &[LogLine], stream: LogStream) -> Vec<&str> {
    logs.iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

pub use gantry_testkit::S3;

/// A reachable S3 server ([`S3::start`]), or `None` when there is none (no
/// `GANTRY_TEST_S3_ENDPOINT` and no s3s-fs installed).
pub fn s3_server() -> Option<S3> {
    S3::start().ok()
}

/// object_store settings that reach `s3`.
pub fn s3_settings(s3: &S3) -> S3Settings {
    S3Settings {
        endpoint: Some(s3.endpoint.clone()),
        region: Some(s3.region.clone()),
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
    }
}

/// Output parameters and artifacts of a succeeded outcome, or a panic with the outcome.
#[track_caller]
pub fn succeeded(
    outcome: &gantry_model::StepOutcome,
) -> (
    &BTreeMap<String, serde_json::Value>,
    &BTreeMap<String, Vec<gantry_model::ArtifactRef>>,
) {
    succeeded_or_logs(outcome, &[])
}

/// [`succeeded`], with the step's log lines in the panic message.
#[track_caller]
pub fn succeeded_or_logs<'a>(
    outcome: &'a gantry_model::StepOutcome,
    logs: &[LogLine],
) -> (
    &'a BTreeMap<String, serde_json::Value>,
    &'a BTreeMap<String, Vec<gantry_model::ArtifactRef>>,
) {
    match outcome {
        gantry_model::StepOutcome::Succeeded {
            parameters,
            artifacts,
        } => (parameters, artifacts),
        other => panic!("expected success, got {other:?}; logs: {logs:#?}"),
    }
}

/// Whether `python3` on PATH can import kfp (for the KFP executor tests).
pub fn python_has_kfp() -> bool {
    Command::new("python3")
        .args(["-c", "import kfp.dsl.executor_main"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A KFP lightweight component's command, as `kfp` 2.x compiles it (minus the `pip install`
/// of kfp, which needs a package index).
pub fn lightweight_command(source: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-ec".into(),
        "program_path=$(mktemp -d)\n\nprintf \"%s\" \"$0\" > \"$program_path/ephemeral_component.py\"\n_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main                         --component_module_path                         \"$program_path/ephemeral_component.py\"                         \"$@\"\n".into(),
        source.into(),
    ]
}

/// A step running [`TRAIN_SOURCE`]'s `train` as kfp compiles it, in `image`, given `n`, `rate`
/// and `tag` and the dataset at `data_uri` (metadata `origin: test`); it declares the outputs
/// `acc`, `note`, `rows`, `model` and `metrics`.
pub fn train_step(
    run_id: &str,
    root: &str,
    image: &str,
    data_uri: String,
    (n, rate, tag): (serde_json::Value, serde_json::Value, serde_json::Value),
) -> StepSpec {
    let mut s = step(run_id, "train", root, image, &[]);
    s.container.command = lightweight_command(TRAIN_SOURCE);
    s.container.args = strings(&[
        "--executor_input",
        "{{$}}",
        "--function_to_execute",
        "train",
    ]);
    s.inputs.parameters.insert("n".into(), n);
    s.inputs.parameters.insert("rate".into(), rate);
    s.inputs.parameters.insert("tag".into(), tag);
    let mut metadata = serde_json::Map::new();
    metadata.insert("origin".into(), "test".into());
    s.inputs.artifacts.insert(
        "data".into(),
        vec![gantry_model::ArtifactRef {
            name: "data".into(),
            uri: data_uri,
            schema_title: "system.Dataset".into(),
            schema_version: "0.0.1".into(),
            metadata,
        }],
    );
    add_output_param(&mut s, "acc", ParamType::NumberDouble);
    add_output_param(&mut s, "note", ParamType::String);
    add_output_param(&mut s, "rows", ParamType::NumberInteger);
    add_output_artifact(&mut s, "model", "system.Model");
    add_output_artifact(&mut s, "metrics", "system.Metrics");
    s
}

/// A lightweight component exercising inputs, artifacts, metadata, metrics and a NamedTuple
/// return, for the launcher tests on both runtimes.
pub const TRAIN_SOURCE: &str = r#"
import kfp
from kfp import dsl
from kfp.dsl import *
from typing import *

def train(n: int, rate: float, tag: str, data: Input[Dataset], model: Output[Model], metrics: Output[Metrics]) -> NamedTuple('Outputs', [('acc', float), ('note', str), ('rows', int)]):
    import collections, os
    with open(data.path) as f:
        rows = f.read().splitlines()
    assert data.metadata.get('origin') == 'test', data.metadata
    with open(model.path, 'w') as f:
        f.write(f"model of {len(rows)} rows, n={n}, rate={rate}, tag={tag}")
    model.metadata['framework'] = 'none'
    metrics.log_metric('accuracy', 0.75)
    Outputs = collections.namedtuple('Outputs', ['acc', 'note', 'rows'])
    return Outputs(0.5, f'ok {tag}', len(rows))
"#;
