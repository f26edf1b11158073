use std::time::Duration;

use clap::Parser;
use gantry_coordinator::config::{Args, FileConfig};
use gantry_coordinator::panics::{exit_on_panic, EXIT_FATAL};
use gantry_coordinator::server::start;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    exit_on_panic();
    // Crash tests set failpoints through FAILPOINTS; builds without the feature ignore it.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let cfg = args.resolve(file)?;
    let mut handle = start(cfg).await?;
    tokio::select! {
        f = handle.fatal() => {
            // The node can no longer keep what it promised; a supervisor restarts it from
            // what is on disk.
            tracing::error!(error = %f, "raft node stopped; exiting");
            std::process::exit(EXIT_FATAL);
        }
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
    // Give the last log lines a moment to reach stderr.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}
