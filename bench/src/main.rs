//! `gantry-bench`: Gantry's benchmarks, kept out of the `gantry` client binary.
//!
//! - `gantry-bench` (no subcommand): the pipeline path on an embedded cluster ([`pipeline`]);
//! - `gantry-bench raft` and `gantry-bench failover`: 3 local coordinator processes
//!   ([`cluster`]);
//! - `gantry-bench scheduler`: placement alone, in process ([`scheduler`]);
//! - `gantry-bench fleet`: 3 local coordinators and many simulated agents ([`fleet`]);
//! - `gantry-bench retention`: a soak of runs submitted and expired by retention ([`retention`]).
//!
//! Exit codes are the `gantry` command's (`gantry_cli::exit`).

use clap::{Parser, Subcommand};
use gantry_cli::exit::CliError;

mod cluster;
mod etcd;
mod fleet;
mod pipeline;
mod retention;
mod scheduler;
mod table;

#[derive(Parser, Debug)]
#[command(
    name = "gantry-bench",
    version,
    about = "Measure Gantry: without a subcommand, steps per second and coordinator overhead per \
             step on an embedded cluster"
)]
struct Cli {
    #[command(flatten)]
    pipeline: pipeline::PipelineArgs,
    #[command(subcommand)]
    kind: Option<Kind>,
}

#[derive(Subcommand, Debug)]
enum Kind {
    /// Commit throughput and latency of the replicated state machine on 3 local coordinators.
    Raft(cluster::RaftArgs),
    /// kill -9 of the leader, repeatedly: time to a new leader and to the next step dispatched.
    Failover(cluster::FailoverArgs),
    /// Placement alone, in process: placements per second on simulated fleets.
    Scheduler(scheduler::SchedulerArgs),
    /// End to end through Raft on 3 local coordinators with simulated in-process agents:
    /// committed placements per second and the ready-to-assigned delay per fleet size.
    Fleet(fleet::FleetArgs),
    /// Runs submitted and expired by retention (--max-finished-runs) on 3 local coordinators:
    /// runs held, leader memory and snapshot size as the runs submitted grow.
    Retention(retention::RetentionArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.kind {
        // In process and single-threaded: no runtime needed.
        Some(Kind::Scheduler(args)) => scheduler::run(args),
        kind => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Unavailable(format!("cannot start the async runtime: {e}")))
            .and_then(|rt| {
                rt.block_on(async {
                    match kind {
                        None => pipeline::run(cli.pipeline).await,
                        Some(Kind::Raft(a)) => cluster::raft(a).await,
                        Some(Kind::Failover(a)) => cluster::failover(a).await,
                        Some(Kind::Fleet(a)) => fleet::run(a).await,
                        Some(Kind::Retention(a)) => retention::retention(a).await,
                        Some(Kind::Scheduler(a)) => scheduler::run(a),
                    }
                })
            }),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.code());
    }
}
