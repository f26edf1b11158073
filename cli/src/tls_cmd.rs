//! `gantry tls`: the cluster CA and the certificates it signs, as PEM files.

use std::net::IpAddr;
use std::path::PathBuf;

use gantry_tls::issue::{create_ca, create_cert, CaFiles, CertRequest};
use gantry_tls::Role;

use crate::exit::CliError;

#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// The cluster CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates for coordinators, agents and clients.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca.key (mode 0600; keep it off the nodes).
    Create {
        /// Where to write the CA.
        #[arg(long, default_value = "gantry-ca")]
        dir: PathBuf,
        /// The cluster's name (lowercase letters, digits, '-'); every certificate carries it.
        #[arg(long, default_value = "gantry")]
        cluster: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A coordinator certificate for node ID (serves, and dials its peers).
    #[arg(long, value_name = "ID")]
    coordinator: Option<u64>,
    /// An agent certificate: the agent's id is the one named here.
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
    /// A client certificate (for clusters started with --require-client-certs).
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// Issue a certificate: OUT/<role>-<id>.pem and .key (mode 0600).
    Create {
        #[command(flatten)]
        who: Who,
        /// The CA's directory.
        #[arg(long, default_value = "gantry-ca")]
        ca_dir: PathBuf,
        /// Where to write the certificate and key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The cluster [default: the one the CA was made for].
        #[arg(long)]
        cluster: Option<String>,
        /// An extra DNS name (repeatable), for tools that verify by host name.
        #[arg(long)]
        dns: Vec<String>,
        /// An extra IP address (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: TlsCommand) -> Result<(), CliError> {
    let refused = |e: gantry_tls::issue::IssueError| CliError::Refused(e.to_string());
    match cmd {
        TlsCommand::Ca {
            command:
                CaCommand::Create {
                    dir,
                    cluster,
                    days,
                    force,
                },
        } => {
            let files = create_ca(&dir, &cluster, days, force).map_err(refused)?;
            println!(
                "CA of cluster {cluster}: {} (certificate) and {} (key, keep it secret)",
                files.cert.display(),
                files.key.display()
            );
        }
        TlsCommand::Cert {
            command:
                CertCommand::Create {
                    who,
                    ca_dir,
                    out,
                    cluster,
                    dns,
                    ip,
                    days,
                    force,
                },
        } => {
            let role = match (who.coordinator, who.agent, who.client) {
                (Some(0), _, _) => {
                    return Err(CliError::Refused("coordinator ids start at 1".into()))
                }
                (Some(id), _, _) => Role::Coordinator(id),
                (_, Some(id), _) => Role::Agent(id),
                (_, _, Some(name)) => Role::Client(name),
                _ => {
                    return Err(CliError::Refused(
                        "say whom it is for: --coordinator ID, --agent ID or --client NAME".into(),
                    ))
                }
            };
            let req = CertRequest {
                role,
                cluster,
                dns,
                ips: ip,
                days,
            };
            let files =
                create_cert(&CaFiles::in_dir(&ca_dir), &req, &out, force).map_err(refused)?;
            println!(
                "{}: {} and {}",
                req.role,
                files.cert.display(),
                files.key.display()
            );
        }
    }
    Ok(())
}
