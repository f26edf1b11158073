//! `gantry`: the command-line client and `gantry dev`. The benchmarks are `gantry-bench`
//! (the `bench/` crate), so they do not ship in this binary.

use std::time::Duration;

use clap::{Parser, Subcommand};
use gantry_cli::{
    acl_cmd, client, dev, exit, kfp_cmd, output, run_cmd, target, tls_cmd, webhook_cmd,
};

use exit::CliError;
use output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "gantry",
    version,
    about = "Run Kubeflow-compiled pipelines on your own fleet"
)]
struct Cli {
    #[command(flatten)]
    target: target::TargetArgs,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One process: a single-voter coordinator, a local agent and a local artifact root.
    Dev(dev::DevArgs),
    /// Submit and follow runs.
    Run {
        #[command(subcommand)]
        command: run_cmd::RunCommand,
    },
    /// Stored pipelines and their versions (the KFP API's).
    Pipeline {
        #[command(subcommand)]
        command: kfp_cmd::PipelineCommand,
    },
    /// Experiments: groups of runs (the KFP API's).
    Experiment {
        #[command(subcommand)]
        command: kfp_cmd::ExperimentCommand,
    },
    /// Recurring runs: a stored pipeline on a cron line or a period.
    Schedule {
        #[command(subcommand)]
        command: kfp_cmd::ScheduleCommand,
    },
    /// Agents known to the cluster.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The coordinator cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// API tokens: the first admin token, and tokens for people and programs.
    Acl {
        #[command(subcommand)]
        command: acl_cmd::AclCommand,
    },
    /// Webhooks: run and task state changes posted to HTTP endpoints (Slack-compatible).
    Webhook {
        #[command(subcommand)]
        command: webhook_cmd::WebhookCommand,
    },
    /// The cluster CA and the certificates of coordinators, agents and clients.
    Tls {
        #[command(subcommand)]
        command: tls_cmd::TlsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// List agents with their capacity, what is allocated, GPUs and running steps.
    List,
    /// Stop placing new steps on agent ID; its running steps finish (for upgrades).
    Drain {
        /// The agent id.
        id: String,
    },
    /// Let agent ID take new steps again.
    Undrain {
        /// The agent id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// This node's view: role, leader, term, commit and applied index, members and their roles.
    Status,
    /// Add the coordinator listening at ADDR (started with an empty data directory, without
    /// --bootstrap or --peer): it joins as a learner, catches up, then becomes a voter.
    Join {
        /// host:port of the new coordinator.
        address: String,
    },
    /// Remove member ID from the cluster (a leader hands over leadership first).
    Leave {
        /// Raft node id of the member to remove.
        id: u64,
    },
    /// Hand leadership to voter ID (default: the most up-to-date other voter) and wait until
    /// it leads; before restarting the leader's host.
    TransferLeader {
        /// Raft node id of the voter to lead.
        #[arg(long)]
        to: Option<u64>,
    },
}

fn main() {
    let cli = Cli::parse();
    // A client command behaves like other Unix tools under `| head`: it ends quietly when
    // stdout closes. `gantry dev` is a server: it keeps Rust's ignored SIGPIPE, or a peer that
    // hangs up while a socket write is under way would kill the whole embedded cluster.
    if !matches!(cli.command, Command::Dev(_)) {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(4);
        }
    };
    let result = rt.block_on(dispatch(cli));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.code());
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Tls { command } => tls_cmd::run(command),
        Command::Acl { command } => acl_cmd::run(&cli.target.resolve()?, cli.output, command).await,
        Command::Webhook { command } => {
            webhook_cmd::run(&cli.target.resolve()?, cli.output, command).await
        }
        Command::Run { command } => run_cmd::run(&cli.target.resolve()?, cli.output, command).await,
        Command::Pipeline { command } => {
            kfp_cmd::pipeline(&cli.target.resolve()?, cli.output, command).await
        }
        Command::Experiment { command } => {
            kfp_cmd::experiment(&cli.target.resolve()?, cli.output, command).await
        }
        Command::Schedule { command } => {
            kfp_cmd::schedule(&cli.target.resolve()?, cli.output, command).await
        }
        Command::Agent {
            command: AgentCommand::List,
        } => {
            let mut c = client::connect(&cli.target.resolve()?).await?;
            let agents = c
                .call(Duration::from_secs(5), |mut cl| async move {
                    cl.agents
                        .list_agents(gantry_proto::v1::ListAgentsRequest {})
                        .await
                })
                .await?
                .into_inner()
                .agents;
            let v = serde_json::Value::Array(agents.iter().map(output::agent_json).collect());
            if !output::print_structured(cli.output, &v) {
                output::table(
                    &[
                        "AGENT", "STATE", "RUNTIME", "CPU", "MEMORY", "GPUS", "RUNNING", "LABELS",
                        "TAINTS",
                    ],
                    agents.iter().map(agent_row).collect(),
                );
            }
            Ok(())
        }
        Command::Agent {
            command: AgentCommand::Drain { id },
        } => drain_agent(&cli.target.resolve()?, cli.output, id, true).await,
        Command::Agent {
            command: AgentCommand::Undrain { id },
        } => drain_agent(&cli.target.resolve()?, cli.output, id, false).await,

        Command::Cluster { command } => cluster(&cli.target.resolve()?, cli.output, command).await,
    }
}

async fn drain_agent(
    endpoint: &client::Target,
    format: output::Format,
    id: String,
    drain: bool,
) -> Result<(), CliError> {
    let mut c = client::connect(endpoint).await?;
    let a = c
        .call(Duration::from_secs(15), |mut cl| {
            let req = gantry_proto::v1::DrainAgentRequest {
                agent_id: id.clone(),
                drain,
            };
            async move { cl.agents.drain_agent(req).await }
        })
        .await?
        .into_inner();
    if !output::print_structured(format, &output::agent_json(&a)) {
        let what = if drain {
            "drained: no new steps; running ones finish"
        } else {
            "undrained: takes new steps"
        };
        println!(
            "agent {} {what} ({} running)",
            a.agent_id, a.running_attempts
        );
    }
    Ok(())
}

fn agent_row(a: &gantry_proto::v1::AgentInfo) -> Vec<String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let state = if a.draining {
        format!("{},DRAINING", a.state().word())
    } else {
        a.state().word().to_string()
    };
    vec![
        a.agent_id.clone(),
        state,
        a.runtime.clone(),
        format!("{:.1}/{}", a.cpu_allocated, a.cpu_cores),
        format!(
            "{:.1}/{:.1}GiB",
            gib(a.memory_allocated),
            gib(a.memory_bytes)
        ),
        format!("{}/{}", a.gpus_allocated, a.gpus),
        a.running_attempts.to_string(),
        a.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        a.taints.join(","),
    ]
}

async fn cluster(
    endpoint: &client::Target,
    format: output::Format,
    cmd: ClusterCommand,
) -> Result<(), CliError> {
    use gantry_proto::v1 as pb;
    let mut c = client::connect(endpoint).await?;
    let s = match cmd {
        // The node asked, not necessarily the leader: that is the point of status.
        ClusterCommand::Status => c
            .call(Duration::from_secs(5), |mut cl| async move {
                cl.cluster.status(pb::ClusterStatusRequest {}).await
            })
            .await?
            .into_inner(),
        ClusterCommand::Join { address } => {
            if address.trim().is_empty() {
                return Err(CliError::Refused("the address to join is empty".into()));
            }
            c.call(Duration::from_secs(330), |mut cl| {
                let address = address.clone();
                async move {
                    cl.cluster
                        .add_member(pb::AddMemberRequest { address })
                        .await
                }
            })
            .await?
            .into_inner()
        }
        ClusterCommand::Leave { id } => c
            .call(Duration::from_secs(30), |mut cl| async move {
                cl.cluster
                    .remove_member(pb::RemoveMemberRequest { node_id: id })
                    .await
            })
            .await?
            .into_inner(),
        ClusterCommand::TransferLeader { to } => c
            .call(Duration::from_secs(30), |mut cl| async move {
                cl.cluster
                    .transfer_leader(pb::TransferLeaderRequest {
                        node_id: to.unwrap_or(0),
                    })
                    .await
            })
            .await?
            .into_inner(),
    };
    if !output::print_structured(format, &output::cluster_json(&s)) {
        println!("node:      {} ({})", s.node_id, s.role);
        println!("leader:    {}", s.leader_id);
        println!("term:      {}", s.term);
        println!("commit:    {}", s.commit_index);
        println!("applied:   {}", s.applied_index);
        println!(
            "snapshot:  {} (log from {})",
            s.snapshot_index, s.first_index
        );
        println!("runs:      {} ({} active)", s.runs, s.active_runs);
        println!("agents:    {}", s.agents);
        if !s.disk_full.is_empty() {
            println!("DISK FULL: {}", s.disk_full);
        }
        println!();
        output::table(
            &["MEMBER", "ROLE", "ADDRESS", "MATCHED", "STORE"],
            s.members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.role.clone(),
                        m.address.clone(),
                        if m.matched > 0 {
                            m.matched.to_string()
                        } else {
                            "-".into()
                        },
                        if m.store.is_empty() {
                            "-".into()
                        } else {
                            m.store.clone()
                        },
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use acl_cmd::{AclCommand, TokenCommand};
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn revoking_a_token_authenticates_with_the_callers_own() {
        let cli =
            Cli::try_parse_from(["gantry", "--token", "mine", "acl", "token", "revoke", "old"])
                .unwrap();
        assert_eq!(cli.target.token.as_deref(), Some("mine"));
        match cli.command {
            Command::Acl {
                command:
                    AclCommand::Token {
                        command: TokenCommand::Revoke { accessor },
                    },
            } => assert_eq!(accessor, "old"),
            other => panic!("{other:?}"),
        }
    }
}
