//! Steps in Docker containers through the Engine API (bollard).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ContainerRun, ExitInfo, LineSplitter, LogLine, LogStream, Runtime, RuntimeError};

/// Where the attempt directory is mounted in every container.
pub const STEP_ROOT: &str = "/gantry";

pub struct DockerRuntime {
    docker: Docker,
}

fn container_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DockerRuntime {
    /// Connects to the local engine and checks that it answers.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable(format!("docker: {e}")))?;
        docker.ping().await.map_err(|e| {
            RuntimeError::Unavailable(format!("docker engine does not answer: {e}"))
        })?;
        Ok(DockerRuntime { docker })
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        tracing::info!(image, "image not present locally; pulling");
        let (repo, tag) = match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
            _ => (image.to_string(), "latest".to_string()),
        };
        let opts = CreateImageOptions {
            from_image: Some(repo),
            tag: Some(tag),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = pull.next().await {
            if let Err(e) = item {
                return Err(RuntimeError::ImagePull {
                    image: image.to_string(),
                    message: e.to_string(),
                });
            }
        }
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::ImagePull {
                image: image.to_string(),
                message: e.to_string(),
            })
    }

    async fn remove(&self, name: &str) {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(name, Some(opts)).await {
            if !matches!(
                e,
                DockerError::DockerResponseServerError {
                    status_code: 404,
                    ..
                }
            ) {
                tracing::warn!(container = name, error = %e, "could not remove container");
            }
        }
    }

    async fn create_and_start(&self, name: &str, spec: &ContainerRun) -> Result<(), RuntimeError> {
        let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:{STEP_ROOT}", spec.attempt_dir.display())]),
            nano_cpus: spec.cpu_limit.map(|c| (c * 1e9) as i64),
            memory: spec.memory_limit_bytes.and_then(|m| i64::try_from(m).ok()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: Some(spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| RuntimeError::Start(format!("create container: {e}")))?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| RuntimeError::Start(format!("start container: {e}")))
    }

    async fn wait(&self, name: &str) -> Result<i64, RuntimeError> {
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // A non-zero exit surfaces as an error carrying the code.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(RuntimeError::Other(format!("wait: {e}"))),
            None => Err(RuntimeError::Other(
                "wait: no answer from the engine".into(),
            )),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn step_root(&self, _attempt_dir: &Path) -> PathBuf {
        PathBuf::from(STEP_ROOT)
    }

    async fn run(
        &self,
        spec: &ContainerRun,
        logs: mpsc::Sender<LogLine>,
        cancel: CancellationToken,
    ) -> Result<ExitInfo, RuntimeError> {
        self.ensure_image(&spec.image).await?;
        let name = container_name(&spec.name);
        // A container of this very attempt left by an earlier agent process.
        self.remove(&name).await;
        if let Err(e) = self.create_and_start(&name, spec).await {
            self.remove(&name).await;
            return Err(e);
        }
        let log_opts = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        };
        let mut log_stream = self.docker.logs(&name, Some(log_opts));
        let pump = tokio::spawn(async move {
            let mut out = LineSplitter::default();
            let mut err = LineSplitter::default();
            while let Some(Ok(chunk)) = log_stream.next().await {
                let (stream, split, bytes) = match chunk {
                    bollard::container::LogOutput::StdErr { message } => {
                        (LogStream::Stderr, &mut err, message)
                    }
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => {
                        (LogStream::Stdout, &mut out, message)
                    }
                    bollard::container::LogOutput::StdIn { .. } => continue,
                };
                for line in split.push(&bytes) {
                    let _ = logs.send(LogLine { stream, line }).await;
                }
            }
            for (stream, split) in [(LogStream::Stdout, &mut out), (LogStream::Stderr, &mut err)] {
                if let Some(line) = split.finish() {
                    let _ = logs.send(LogLine { stream, line }).await;
                }
            }
        });
        let result = tokio::select! {
            r = self.wait(&name) => r.map(|exit_code| ExitInfo { exit_code, canceled: false }),
            _ = cancel.cancelled() => {
                let opts = StopContainerOptions { t: Some(2), ..Default::default() };
                if let Err(e) = self.docker.stop_container(&name, Some(opts)).await {
                    tracing::warn!(container = %name, error = %e, "stop failed");
                }
                let code = self.wait(&name).await.unwrap_or(137);
                Ok(ExitInfo { exit_code: code, canceled: true })
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), pump).await;
        self.remove(&name).await;
        result
    }
}
