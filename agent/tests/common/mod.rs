//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_agent::artifacts::S3Settings;
use gantry_agent::runtime::{LogLine, LogStream};
use gantry_model::{
    artifact_uri, ContainerSpec, OutputArtifactSpec, ParamType, ResourceRequest, StepInputs,
    StepOutputs, StepSpec,
};
use tokio::sync::mpsc;

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

pub fn lines(logs: &[LogLine], stream: LogStream) -> Vec<&str> {
    logs.iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

/// A reachable S3 server: `GANTRY_TEST_S3_ENDPOINT` (bucket `GANTRY_TEST_S3_BUCKET`, default
/// `gantry-artifacts`, which must exist), else an `s3s-fs` started here over a temporary
/// directory. `None` when neither is available.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub settings: S3Settings,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn s3s_fs_binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn free_port() -> Option<u16> {
    TcpListener::bind("127.0.0.1:0")
        .ok()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
}

fn wait_for_port(port: u16, child: &mut Child) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn s3_server() -> Option<S3Server> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let access = env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "gantry".into());
    let secret = env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "gantrysecret".into());
    if let Some(endpoint) = env("GANTRY_TEST_S3_ENDPOINT") {
        let bucket = env("GANTRY_TEST_S3_BUCKET").unwrap_or_else(|| "gantry-artifacts".into());
        return Some(S3Server {
            settings: S3Settings {
                endpoint: Some(endpoint.clone()),
                region: Some(env("AWS_REGION").unwrap_or_else(|| "us-east-1".into())),
                access_key_id: Some(access),
                secret_access_key: Some(secret),
            },
            endpoint,
            bucket,
            child: None,
            _dir: None,
        });
    }
    let bin = s3s_fs_binary()?;
    let dir = tempfile::tempdir().ok()?;
    let bucket = "gantry-test".to_string();
    std::fs::create_dir_all(dir.path().join(&bucket)).ok()?;
    for _ in 0..5 {
        let port = free_port()?;
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "gantry", "--secret-key", "gantrysecret"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if wait_for_port(port, &mut child) {
            let endpoint = format!("http://127.0.0.1:{port}");
            return Some(S3Server {
                settings: S3Settings {
                    endpoint: Some(endpoint.clone()),
                    region: Some("us-east-1".into()),
                    access_key_id: Some("gantry".into()),
                    secret_access_key: Some("gantrysecret".into()),
                },
                endpoint,
                bucket,
                child: Some(child),
                _dir: Some(dir),
            });
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// Output parameters of a succeeded outcome, or a panic with the outcome.
pub fn succeeded(
    outcome: &gantry_model::StepOutcome,
) -> (
    &BTreeMap<String, serde_json::Value>,
    &BTreeMap<String, Vec<gantry_model::ArtifactRef>>,
) {
    match outcome {
        gantry_model::StepOutcome::Succeeded {
            parameters,
            artifacts,
        } => (parameters, artifacts),
        other => panic!("expected success, got {other:?}"),
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
