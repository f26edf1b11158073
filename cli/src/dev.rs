//! `gantry dev`: a whole cluster in one process — a single-voter coordinator (sled under
//! the data dir), a local agent and a local artifact root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_agent::launcher::Launcher;
use gantry_agent::session::{self, AgentCore, SessionConfig};
use gantry_coordinator::server::{self, CoordinatorConfig, ServerHandle};
use gantry_tls::TlsFiles;
use tokio_util::sync::CancellationToken;

use crate::exit::CliError;

/// The agent's own runtime choice, so `gantry dev --runtime` and `gantry-agent --runtime`
/// take the same values.
pub use gantry_agent::runtime::RuntimeChoice;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Address of the coordinator's gRPC API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the Raft log, agent work dirs and (by default) artifacts live.
    #[arg(long, default_value = ".gantry")]
    pub data_dir: PathBuf,
    /// docker, process, or auto (= docker). Without a Docker engine `gantry dev` does not
    /// start: steps run as host processes, without isolation, only with `--runtime process`.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// Artifact root: file:///abs/dir or s3://bucket/prefix (endpoint and credentials from
    /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    /// Default: file://<data-dir>/artifacts.
    #[arg(long)]
    pub artifact_root: Option<String>,
    /// Id of the embedded agent.
    #[arg(long, default_value = "dev-agent")]
    pub agent_id: String,
    /// A variable KEY=VALUE every step gets (repeatable), e.g. a proxy or PIP_INDEX_URL.
    #[arg(long = "step-env", value_name = "KEY=VALUE")]
    pub step_env: Vec<String>,
    #[command(flatten)]
    pub host: HostArgs,
}

/// What the embedded agent offers steps besides its capacity.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct HostArgs {
    /// Secret store for kfp-kubernetes `use_secret_as_env`: DIR/<secret>/<key> files (as
    /// gantry-agent --secrets-dir).
    #[arg(long, env = "GANTRY_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// A host directory steps mount by name with kfp-kubernetes `mount_pvc` (repeatable;
    /// `:ro` read-only; Docker runtime only; as gantry-agent --volume).
    #[arg(long = "volume", value_name = "NAME=HOST_PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Import roots, allowed buckets, the step network and container isolation (as
    /// gantry-agent; --import-root and --allow-bucket go to the coordinator too).
    #[command(flatten)]
    pub steps: gantry_agent::flags::StepFlags,
}

/// `KEY=VALUE` flags as pairs; `what` names the flag in errors.
pub fn parse_env_flags(what: &str, flags: &[String]) -> Result<Vec<(String, String)>, CliError> {
    flags
        .iter()
        .map(|f| {
            gantry_model::flags::key_value(what, f)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .map_err(CliError::from)
        })
        .collect()
}

pub struct Embedded {
    pub server: ServerHandle,
    pub core: Arc<AgentCore>,
    pub shutdown: CancellationToken,
    pub runtime_name: String,
    pub artifact_root: String,
    /// The client config the CLI reads (`<data-dir>/client.toml`).
    pub client_config: PathBuf,
    /// The admin token (also in `<data-dir>/admin.token`).
    pub token: String,
    /// `https://host:port` of the coordinator.
    pub endpoint: String,
}

/// The cluster name of every `gantry dev` CA.
const DEV_CLUSTER: &str = "dev";

/// The dev cluster's TLS material under `<data-dir>/tls`: a CA, the coordinator's and the
/// agent's certificates, each made on first start and kept after.
fn dev_tls(data_dir: &Path, agent_id: &str) -> Result<(TlsFiles, TlsFiles), CliError> {
    use gantry_tls::issue::{create_ca, create_cert, CaFiles, CertRequest};
    let refused = |e: gantry_tls::issue::IssueError| CliError::Refused(format!("TLS: {e}"));
    let dir = data_dir.join("tls");
    let ca = CaFiles::in_dir(&dir);
    if !ca.cert.exists() {
        create_ca(&dir, DEV_CLUSTER, 3650, true).map_err(refused)?;
    }
    let issue = |role: gantry_tls::Role, stem: String| -> Result<TlsFiles, CliError> {
        let files = TlsFiles {
            ca: ca.cert.clone(),
            cert: Some(dir.join(format!("{stem}.pem"))),
            key: Some(dir.join(format!("{stem}.key"))),
        };
        if !files.cert.as_ref().is_some_and(|p| p.exists()) {
            let req = CertRequest {
                role,
                cluster: None,
                // The names a browser or kfp.Client on this machine dials, besides the
                // cluster identity Gantry's own clients check.
                dns: vec!["localhost".into()],
                ips: vec![
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::Ipv6Addr::LOCALHOST.into(),
                ],
                days: 3650,
            };
            create_cert(&ca, &req, &dir, true).map_err(refused)?;
        }
        Ok(files)
    };
    let coordinator = issue(gantry_tls::Role::Coordinator(1), "coordinator-1".into())?;
    let agent = issue(
        gantry_tls::Role::Agent(agent_id.to_string()),
        format!("agent-{agent_id}"),
    )?;
    Ok((coordinator, agent))
}

/// Writes a private file (mode 0600).
fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| CliError::Refused(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// The admin token: made by bootstrapping the ACL on first start and kept in
/// `<data-dir>/admin.token`; read back from there on later starts.
async fn dev_token(server: &ServerHandle, data_dir: &Path) -> Result<String, CliError> {
    use gantry_proto::v1::acl_service_server::AclService;
    let path = data_dir.join("admin.token");
    let api = gantry_coordinator::api::Api(server.coordinator.clone());
    match api
        .bootstrap(tonic::Request::new(
            gantry_proto::v1::AclBootstrapRequest {},
        ))
        .await
    {
        Ok(r) => {
            let secret = r.into_inner().secret;
            write_private(&path, &format!("{secret}\n"))?;
            Ok(secret)
        }
        Err(s) if s.code() == tonic::Code::FailedPrecondition => std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                CliError::Refused(format!(
                    "this data dir's ACL was bootstrapped before, but its admin token \
                         {} cannot be read ({e}); use a token you kept, or start over with \
                         another --data-dir",
                    path.display()
                ))
            }),
        Err(s) => Err(CliError::Unavailable(format!(
            "cannot bootstrap the ACL: {}",
            s.message()
        ))),
    }
}

impl Embedded {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.core.cancel_all();
        self.server.stop().await;
    }
}

pub async fn start_embedded(
    listen: SocketAddr,
    data_dir: PathBuf,
    runtime: RuntimeChoice,
    artifact_root: Option<String>,
    agent_id: String,
    step_env: Vec<(String, String)>,
    host: HostArgs,
) -> Result<Embedded, CliError> {
    let data_dir = std::path::absolute(&data_dir)
        .map_err(|e| CliError::Refused(format!("data dir {}: {e}", data_dir.display())))?;
    let artifact_root = match artifact_root {
        Some(r) => r,
        None => format!("file://{}", data_dir.join("artifacts").display()),
    };
    let refused = |e: &dyn std::fmt::Display| CliError::Refused(e.to_string());
    let isolation = host.steps.isolation().map_err(|e| refused(&e))?;
    let access = host.steps.access().map_err(|e| refused(&e))?;
    let runtime = gantry_agent::runtime::select(runtime, isolation)
        .await
        .map_err(|e| refused(&e))?;
    let runtime_name = runtime.name().to_string();
    let network = host.steps.network(&runtime_name).map_err(|e| refused(&e))?;
    let mut labels = std::collections::BTreeMap::new();
    let (secret_store, volumes) = gantry_agent::volumes::host_resources(
        host.secrets_dir.as_deref(),
        &host.volumes,
        runtime.as_ref(),
        &mut labels,
    )
    .map_err(|e| CliError::Refused(e.to_string()))?;
    let config_maps =
        gantry_agent::config_maps::open_store(host.steps.config_maps_dir.as_deref(), &mut labels)
            .map_err(|e| CliError::Refused(e.to_string()))?;
    gantry_tls::identity::check_label("agent id", &agent_id).map_err(|e| {
        CliError::Refused(format!(
            "--agent-id: {e} (it is part of the agent's certificate)"
        ))
    })?;
    let (coordinator_tls, agent_files) = dev_tls(&data_dir, &agent_id)?;
    let agent_tls = Some(
        gantry_tls::TlsContext::load(
            agent_files,
            gantry_tls::ClientCerts::Optional,
            gantry_tls::Expect::Agent,
            None,
        )
        .map_err(|e| CliError::Refused(format!("TLS: {e}")))?,
    );
    let mut coordinator_cfg = CoordinatorConfig::single(
        1,
        listen,
        data_dir.join("coordinator"),
        artifact_root.clone(),
    );
    coordinator_cfg.import_roots = host.steps.import_roots.clone();
    coordinator_cfg.allow_buckets = host.steps.allow_buckets.clone();
    let ca_path = coordinator_tls.ca.clone();
    coordinator_cfg.tls = Some(coordinator_tls);
    let server = server::start(coordinator_cfg)
        .await
        .map_err(|e| CliError::Unavailable(format!("cannot start the coordinator: {e:#}")))?;
    let token = dev_token(&server, &data_dir).await?;
    let endpoint = format!("https://{}", server.addr);
    let client_config = data_dir.join("client.toml");
    let config = crate::target::ClientConfig {
        endpoint: Some(endpoint.clone()),
        ca: Some(ca_path),
        cert: None,
        key: None,
        token_file: Some(data_dir.join("admin.token")),
    };
    let text =
        toml::to_string(&config).map_err(|e| CliError::Refused(format!("client config: {e}")))?;
    write_private(&client_config, &text)?;
    let launcher = Arc::new(
        Launcher::new(runtime, data_dir.join("agent"))
            .step_env(step_env)
            .secrets(secret_store)
            .volumes(volumes)
            .network(network)
            .uri_access(access)
            .namespace(host.steps.namespace.clone())
            .config_maps(config_maps),
    );
    let inventory = gantry_agent::inventory::probe_host(&runtime_name, &data_dir.join("agent"));
    let core = AgentCore::new(launcher);
    let shutdown = CancellationToken::new();
    let cfg = SessionConfig {
        agent_id: agent_id.into(),
        coordinators: vec![format!("http://{}", server.addr)],
        labels,
        taints: Vec::new(),
        inventory,
        reprobe: Some(gantry_agent::session::Reprobe({
            let (runtime_name, work_dir) = (runtime_name.clone(), data_dir.join("agent"));
            Arc::new(move || gantry_agent::inventory::probe_host(&runtime_name, &work_dir))
        })),
        tls: agent_tls,
    };
    tokio::spawn(session::run(cfg, core.clone(), shutdown.clone()));
    Ok(Embedded {
        server,
        core,
        shutdown,
        runtime_name,
        artifact_root,
        client_config,
        token,
        endpoint,
    })
}

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .init();
    let step_env = parse_env_flags("--step-env", &args.step_env)?;
    let e = start_embedded(
        args.listen,
        args.data_dir,
        args.runtime,
        args.artifact_root,
        args.agent_id.clone(),
        step_env,
        args.host,
    )
    .await?;
    eprintln!(
        "gantry dev: coordinator on {} | agent {} ({} runtime) | artifacts at {}\n\
         TLS and an admin token are set up: the CLI reads {} when run from this directory\n\
         (elsewhere: export GANTRY_CLIENT_CONFIG={}).\n\
         submit with: gantry run submit pipeline.yaml --wait        (Ctrl-C stops)",
        e.endpoint,
        args.agent_id,
        e.runtime_name,
        e.artifact_root,
        e.client_config.display(),
        e.client_config.display()
    );
    let mut e = e;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        f = e.server.fatal() => {
            return Err(CliError::Unavailable(format!("the coordinator stopped: {f}")));
        }
    }
    eprintln!("gantry dev: stopping");
    e.stop().await;
    Ok(())
}
