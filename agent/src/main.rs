use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use gantry_agent::launcher::Launcher;
use gantry_agent::runtime::RuntimeChoice;
use gantry_agent::session::{self, AgentCore, SessionConfig};
use gantry_model::flags::key_value;
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
    /// Container runtime: docker, process, or auto (= docker). Without a Docker engine the
    /// agent does not start: steps run as host processes, without isolation, only with
    /// `--runtime process`.
    #[arg(long, env = "GANTRY_RUNTIME", value_enum, default_value_t = RuntimeChoice::Auto)]
    runtime: RuntimeChoice,
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
    /// On SIGTERM/SIGINT, stop the running steps. By default (Docker runtime) they are left
    /// running and an agent started again with the same --agent-id and --work-dir reattaches
    /// to them; the process runtime always stops them.
    #[arg(long, env = "GANTRY_STOP_STEPS_ON_EXIT")]
    stop_steps_on_exit: bool,
    /// A variable KEY=VALUE every step gets (repeatable): a proxy, PIP_INDEX_URL of a mirror.
    #[arg(long = "step-env", value_name = "KEY=VALUE")]
    step_env: Vec<String>,
    /// Secret store for kfp-kubernetes `use_secret_as_env`: DIR/<secret>/<key> files, laid
    /// out like Kubernetes secret volumes; each secret is advertised as the label
    /// secret.gantry.dev/<secret>=true.
    #[arg(long, env = "GANTRY_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// A host directory steps mount by name with kfp-kubernetes `mount_pvc(pvc_name=NAME)`
    /// (repeatable; `:ro` read-only; Docker runtime only); advertised as the label
    /// volume.gantry.dev/<NAME>=true.
    #[arg(long = "volume", value_name = "NAME=HOST_PATH[:ro]")]
    volumes: Vec<String>,
    /// The cluster CA (PEM). With --tls-cert and --tls-key the agent connects with TLS and
    /// is the agent its certificate names (`gantry tls cert create --agent ID`). The files
    /// are reloaded when they change.
    #[arg(long, env = "GANTRY_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// This agent's certificate.
    #[arg(long, env = "GANTRY_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// This agent's private key.
    #[arg(long, env = "GANTRY_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Connect to a coordinator on a non-loopback address without TLS. Anyone on the path can
    /// then read and change the steps this agent runs.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    steps: gantry_agent::flags::StepFlags,
}

/// Loads the agent's TLS material, or checks that going without is allowed.
fn load_tls(args: &Args) -> anyhow::Result<Option<Arc<gantry_tls::TlsContext>>> {
    match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(gantry_tls::TlsContext::load(
            gantry_tls::TlsFiles {
                ca: ca.clone(),
                cert: Some(cert.clone()),
                key: Some(key.clone()),
            },
            gantry_tls::ClientCerts::Optional,
            gantry_tls::Expect::Agent,
            None,
        )?)),
        (None, None, None) => {
            let remote = args.coordinator.iter().find(|c| !is_loopback(c));
            if let Some(c) = remote {
                if !args.insecure {
                    anyhow::bail!(
                        "refusing to talk to the coordinator at {c} without TLS: anyone on the \
                         path could read and change the steps this agent runs. Give --tls-ca, \
                         --tls-cert and --tls-key (see `gantry tls`), or pass --insecure"
                    );
                }
            }
            Ok(None)
        }
        _ => anyhow::bail!("--tls-ca, --tls-cert and --tls-key go together: give all three"),
    }
}

/// Whether an endpoint (`host:port` or a URL) names this machine.
fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .trim()
        .split_once("://")
        .map_or(endpoint.trim(), |(_, r)| r);
    let host = rest
        .rsplit_once(':')
        .map_or(rest, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    let tls = load_tls(&args)?;
    if let Some(t) = &tls {
        t.watch(std::time::Duration::from_secs(1));
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = key_value("--label", l)?;
        labels.insert(k.to_string(), v.to_string());
    }
    let taints = args
        .taints
        .iter()
        .map(|t| gantry_model::Taint::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let isolation = args.steps.isolation()?;
    let access = args.steps.access()?;
    let runtime = gantry_agent::runtime::select(args.runtime, isolation).await?;
    let runtime_name = runtime.name();
    let network = args.steps.network(runtime_name)?;
    let (secret_store, volumes) = gantry_agent::volumes::host_resources(
        args.secrets_dir.as_deref(),
        &args.volumes,
        runtime.as_ref(),
        &mut labels,
    )?;
    let config_maps =
        gantry_agent::config_maps::open_store(args.steps.config_maps_dir.as_deref(), &mut labels)?;
    let work_dir = std::path::absolute(&args.work_dir)?;
    let inventory = gantry_agent::inventory::probe_host(runtime_name, &work_dir);
    // With TLS the agent is the one its certificate names: the coordinator takes the id from
    // there, so a different --agent-id would only mislabel its containers.
    let cert_id = tls
        .as_ref()
        .and_then(|t| match t.identity().map(|i| i.role) {
            Some(gantry_tls::Role::Agent(id)) => Some(id),
            _ => None,
        });
    let agent_id = match (cert_id, args.agent_id.clone()) {
        (Some(cert), Some(given)) if cert != given => anyhow::bail!(
            "--agent-id {given} differs from the certificate's agent id {cert}; drop the flag \
             or issue a certificate for {given}"
        ),
        (Some(cert), _) => cert,
        (None, Some(given)) => given,
        (None, None) => inventory.hostname.clone(),
    };
    tracing::info!(agent = %agent_id, runtime = %runtime_name, cpus = inventory.cpu_cores,
        memory = inventory.memory_bytes, gpus = inventory.gpus.len(), "agent starting");
    let step_env = args
        .step_env
        .iter()
        .map(|f| key_value("--step-env", f).map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    // Two agents may share an engine: both labels tell this agent's containers apart.
    let own_labels = BTreeMap::from([
        ("gantry.agent".to_string(), agent_id.clone()),
        (
            "gantry.work-dir".to_string(),
            work_dir.to_string_lossy().into_owned(),
        ),
    ]);
    let leave_steps = runtime.survives_agent_restart() && !args.stop_steps_on_exit;
    let core = AgentCore::new(Arc::new(
        Launcher::new(runtime, work_dir.clone())
            .step_env(step_env)
            .labels(own_labels)
            .secrets(secret_store)
            .volumes(volumes)
            .network(network)
            .uri_access(access)
            .namespace(args.steps.namespace.clone())
            .config_maps(config_maps),
    ));
    let reattached = core.reattach_orphans().await;
    if reattached > 0 {
        tracing::info!(
            steps = reattached,
            "reattached to the steps of an earlier agent process"
        );
    }
    let shutdown = CancellationToken::new();
    let cfg = SessionConfig {
        agent_id: agent_id.into(),
        coordinators: args
            .coordinator
            .iter()
            .map(|c| session::endpoint_url(c))
            .collect::<Result<_, _>>()?,
        labels,
        taints,
        inventory,
        reprobe: Some(session::Reprobe({
            let work_dir = work_dir.clone();
            Arc::new(move || gantry_agent::inventory::probe_host(runtime_name, &work_dir))
        })),
        tls,
    };
    let sessions = tokio::spawn(session::run(cfg, core.clone(), shutdown.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if leave_steps {
        let running = core.running_count();
        tracing::info!(
            steps = running,
            "stopping; running steps go on in their containers and an agent started again \
             with the same --agent-id and --work-dir reattaches to them"
        );
        shutdown.cancel();
        let _ = sessions.await;
        // Not through the runtime's shutdown: dropping the step tasks would remove their
        // containers.
        std::process::exit(0);
    }
    tracing::info!("stopping: canceling running steps");
    core.cancel_all();
    shutdown.cancel();
    let _ = sessions.await;
    Ok(())
}
