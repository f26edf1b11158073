use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use gantry_agent::launcher::Launcher;
use gantry_agent::session::{self, AgentCore, SessionConfig};
use tokio_util::sync::CancellationToken;

/// Gantry agent: reports this host's capacity and runs the steps the coordinator assigns.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Coordinator endpoint(s), comma-separated or repeated; tried in turn.
    #[arg(
        long,
        env = "GANTRY_COORDINATOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: Vec<String>,
    /// Agent id; defaults to the host name.
    #[arg(long, env = "GANTRY_AGENT_ID")]
    agent_id: Option<String>,
    /// Container runtime: docker, process, or auto (docker if an engine answers).
    #[arg(long, env = "GANTRY_RUNTIME", default_value = "auto")]
    runtime: String,
    /// Directory for per-attempt working directories.
    #[arg(long, env = "GANTRY_WORK_DIR", default_value = ".gantry/agent")]
    work_dir: PathBuf,
    /// A label KEY=VALUE for placement (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A taint KEY[=VALUE]:EFFECT (NoSchedule, PreferNoSchedule, NoExecute): only steps that
    /// tolerate it are placed here, as with Kubernetes node taints (repeatable).
    #[arg(long = "taint", value_name = "KEY[=VALUE]:EFFECT")]
    taints: Vec<String>,
    /// A variable KEY=VALUE every step gets (repeatable): a proxy, PIP_INDEX_URL of a mirror.
    #[arg(long = "step-env", value_name = "KEY=VALUE")]
    step_env: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("label {l:?} is not KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let taints = args
        .taints
        .iter()
        .map(|t| gantry_model::Taint::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let (runtime, runtime_name) = gantry_agent::runtime::select(&args.runtime).await?;
    let work_dir = std::path::absolute(&args.work_dir)?;
    let inventory = gantry_agent::inventory::probe_host(&runtime_name, &work_dir);
    let agent_id = args.agent_id.unwrap_or_else(|| inventory.hostname.clone());
    tracing::info!(agent = %agent_id, runtime = %runtime_name, cpus = inventory.cpu_cores,
        memory = inventory.memory_bytes, gpus = inventory.gpus.len(), "agent starting");
    let step_env = args
        .step_env
        .iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow::anyhow!("--step-env {f:?} is not KEY=VALUE")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let core = AgentCore::new(Arc::new(
        Launcher::new(runtime, work_dir.clone()).step_env(step_env),
    ));
    let shutdown = CancellationToken::new();
    let cfg = SessionConfig {
        agent_id,
        coordinators: args
            .coordinator
            .iter()
            .map(|c| session::endpoint_url(c))
            .collect::<anyhow::Result<_>>()?,
        labels,
        taints,
        inventory,
        reprobe: Some(session::Reprobe({
            let (runtime_name, work_dir) = (runtime_name.clone(), work_dir.clone());
            Arc::new(move || gantry_agent::inventory::probe_host(&runtime_name, &work_dir))
        })),
    };
    let sessions = tokio::spawn(session::run(cfg, core.clone(), shutdown.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: canceling running steps");
    core.cancel_all();
    shutdown.cancel();
    let _ = sessions.await;
    Ok(())
}
