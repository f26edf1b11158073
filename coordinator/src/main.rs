use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use gantry_coordinator::server::{start, CoordinatorConfig};

/// Gantry coordinator: keeps run state (Raft + sled) and serves the gRPC API.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Raft node id of this coordinator.
    #[arg(long, env = "GANTRY_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// Address the gRPC API listens on.
    #[arg(long, env = "GANTRY_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the Raft log and local state.
    #[arg(long, env = "GANTRY_DATA_DIR", default_value = ".gantry/coordinator")]
    data_dir: PathBuf,
    /// Artifact root for runs: file:///abs/dir or s3://bucket/prefix.
    /// Default: file://<data-dir>/artifacts.
    #[arg(long, env = "GANTRY_ARTIFACT_ROOT")]
    artifact_root: Option<String>,
    /// Raft tick interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
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
    let data_dir = std::path::absolute(&args.data_dir)?;
    let artifact_root = match args.artifact_root {
        Some(r) => r,
        None => format!("file://{}", data_dir.join("artifacts").display()),
    };
    let handle = start(CoordinatorConfig {
        node_id: args.node_id,
        listen: args.listen,
        data_dir,
        artifact_root,
        tick_interval: Duration::from_millis(args.tick_ms.max(1)),
    })
    .await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            handle.stop().await;
        }
        r = shutdown_signal() => {
            r?;
            tracing::info!("terminated; stopping");
            handle.stop().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}
