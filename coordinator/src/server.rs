//! Wiring: open storage, start the Raft node, the event reactor, the scheduling loop and the
//! gRPC server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_core::ir::bounds::SubmitLimits;
use gantry_core::scheduler::CpuPolicy;
use gantry_core::state::{Applied, Command};
use gantry_proto::v1::acl_service_server::AclServiceServer;
use gantry_proto::v1::agent_service_server::AgentServiceServer;
use gantry_proto::v1::cluster_service_server::ClusterServiceServer;
use gantry_proto::v1::raft_service_server::RaftServiceServer;
use gantry_proto::v1::run_service_server::RunServiceServer;
use gantry_proto::v1::webhook_service_server::WebhookServiceServer;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::api::status::ApiError;
use crate::dispatch::{Dispatcher, WaitingReasons};
use crate::log_limits::LogLimits;
use crate::logs::StepLogs;
use crate::machine::{ClusterMachine, SharedState};
use crate::raft::transport::{peer_channel, GrpcTransport, PeerStamp};
use crate::raft::StoreIds;
use crate::raft::{
    self, Fatal, Members, NodeConfig, RaftError, RaftHandle, RaftStorage, SnapshotDir,
};
use gantry_core::state::retention::RetentionPolicy;
use gantry_model::limits::{
    MAX_AGENT_MESSAGE_BYTES, MAX_CLIENT_REQUEST_BYTES, MAX_CLIENT_RESPONSE_BYTES,
    MAX_PEER_MESSAGE_BYTES,
};

/// Three missed heartbeats (agents send one every 5 s).
pub const DEFAULT_AGENT_LEASE: Duration = Duration::from_secs(15);
/// The default `--max-snapshot-bytes`: 8 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    /// The address peers, agents and clients use for this node; defaults to the bound address.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Where runs write artifacts: `file:///dir` or `s3://bucket/prefix`.
    pub artifact_root: String,
    /// `file:///dir` roots runs may import from (`--import-root`); none by default.
    pub import_roots: Vec<String>,
    /// S3 buckets runs may import from besides the artifact root (`--allow-bucket`).
    pub allow_buckets: Vec<String>,
    pub tick_interval: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub snapshot_entries: u64,
    /// The largest snapshot accepted from the leader.
    pub max_snapshot_bytes: u64,
    /// Start a new cluster with this node as its only voter (first start only).
    pub bootstrap: bool,
    /// The initial voters of a new cluster, this node included (first start only).
    pub peers: Members,
    /// How CPU-only steps choose among agents.
    pub cpu_policy: CpuPolicy,
    /// An agent with unfinished attempts that is silent this long is declared lost.
    pub agent_lease: Duration,
    /// TLS material; `None` serves plain TCP, which only a loopback address or `insecure`
    /// allows.
    pub tls: Option<gantry_tls::TlsFiles>,
    /// Serve without TLS on a non-loopback address.
    pub insecure: bool,
    /// The cluster's name when it does not come from the certificate (no TLS).
    pub cluster: Option<String>,
    /// Refuse connections without a client certificate.
    pub require_client_certs: bool,
    /// How long a write waits to be committed before the caller gets an error.
    pub propose_timeout: Duration,
    /// What one submission may ask of the cluster.
    pub submit_limits: SubmitLimits,
    /// What a step's log may cost this node.
    pub log_limits: LogLimits,
    /// Which finished runs and lost agents the leader removes.
    pub retention: RetentionPolicy,
    /// Whether the leader deletes a removed run's artifacts.
    pub delete_removed_run_artifacts: bool,
    /// How long a KFP `Idempotency-Key` names its run (milliseconds).
    pub idempotency_window_ms: i64,
}

impl CoordinatorConfig {
    /// A single-voter node with the default timings (used by `gantry dev` and tests).
    pub fn single(
        node_id: u64,
        listen: SocketAddr,
        data_dir: PathBuf,
        artifact_root: String,
    ) -> Self {
        let d = NodeConfig::default();
        CoordinatorConfig {
            node_id,
            listen,
            advertise: None,
            data_dir,
            artifact_root,
            import_roots: Vec::new(),
            allow_buckets: Vec::new(),
            tick_interval: d.tick_interval,
            election_tick: d.election_tick,
            heartbeat_tick: d.heartbeat_tick,
            snapshot_entries: d.snapshot_entries,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            bootstrap: true,
            peers: Members::new(),
            cpu_policy: CpuPolicy::Spread,
            agent_lease: DEFAULT_AGENT_LEASE,
            tls: None,
            insecure: false,
            cluster: None,
            require_client_certs: false,
            propose_timeout: DEFAULT_PROPOSE_TIMEOUT,
            submit_limits: SubmitLimits::default(),
            log_limits: LogLimits::default(),
            retention: RetentionPolicy::default(),
            delete_removed_run_artifacts: false,
            idempotency_window_ms: DEFAULT_IDEMPOTENCY_WINDOW_MS,
        }
    }

    /// The voters a fresh store starts with; empty means "wait to be joined".
    fn initial_members(&self, advertise: &str) -> anyhow::Result<Members> {
        if self.bootstrap && !self.peers.is_empty() {
            anyhow::bail!(
                "--bootstrap and --peer are exclusive: bootstrap starts a one-node cluster"
            );
        }
        if self.bootstrap {
            return Ok([(self.node_id, advertise.to_string())].into());
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            anyhow::bail!(
                "the peer list must include this node (id {}); it has {:?}",
                self.node_id,
                self.peers.keys().collect::<Vec<_>>()
            );
        }
        Ok(self.peers.clone())
    }
}

/// Everything the services and loops share.
pub struct Coordinator {
    pub node_id: u64,
    pub raft: RaftHandle<Applied>,
    pub state: SharedState,
    pub dispatcher: Arc<Dispatcher>,
    pub logs: Arc<StepLogs>,
    pub waiting: WaitingReasons,
    pub cpu_policy: CpuPolicy,
    pub agent_lease: Duration,
    pub artifact_root: String,
    /// Which URIs runs may read ([`UriPolicy`](gantry_core::ir::UriPolicy)): every new run
    /// carries a copy.
    pub uri_policy: gantry_core::ir::UriPolicy,
    /// The address clients and peers use for this node.
    pub advertise: String,
    pub snapshots: SnapshotDir,
    /// For checking that a cache entry's artifacts still exist (S3 settings from the
    /// environment, as the agent reads them).
    pub artifacts: gantry_artifacts::ArtifactStores,
    /// This node's TLS material (server side and peer connections); `None` without TLS.
    pub tls: Option<Arc<gantry_tls::TlsContext>>,
    /// The cluster this node belongs to: peers of another are refused.
    pub cluster: Option<String>,
    /// This node's data directory's store id and those of its peers.
    pub store_ids: Arc<StoreIds>,
    /// The largest snapshot accepted from the leader.
    pub max_snapshot_bytes: u64,
    /// How long a write waits to be committed before the caller gets an error.
    pub propose_timeout: Duration,
    /// What one submission may ask of the cluster.
    pub submit_limits: SubmitLimits,
    /// What a step's log may cost this node.
    pub log_limits: LogLimits,
    /// Which finished runs and lost agents the leader removes.
    pub retention: RetentionPolicy,
    /// Whether the leader deletes a removed run's artifacts.
    pub delete_removed_run_artifacts: bool,
    /// How long a KFP `Idempotency-Key` names its run (milliseconds).
    pub idempotency_window_ms: i64,
    /// Held while a snapshot is being received: one transfer at a time.
    pub receiving_snapshot: tokio::sync::Mutex<()>,
    /// The pipelines this node accepted lately, parsed, by their text.
    pub parsed: crate::api::parsed::ParsedPipelines,
    pub transport: crate::auth::Transport,
    channels: Mutex<HashMap<String, Channel>>,
}

/// Where a write goes.
pub enum Route {
    Local,
    Leader(Channel),
}

/// How long a KFP `Idempotency-Key` names the run it created, unless configured: a day, as
/// an event source retrying a delivery does so within minutes or hours.
pub const DEFAULT_IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Set on a request one coordinator forwards to another, so it is forwarded at most once.
pub const FORWARDED: &str = "gantry-forwarded";
/// Set on a refusal from a non-leader: the leader's address, for agents to go to directly.
/// Defined with the contracts, where agents and clients find it without this crate.
pub use gantry_proto::LEADER_HINT;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("cannot encode the command: {0}")]
    Encode(String),
    #[error("no leader elected within {0:?}")]
    NoLeader(Duration),
    /// The entry may still commit: the caller cannot know whether it took effect.
    #[error(
        "not committed within {0:?} (is a majority of the coordinators up and reachable?); \
         it may still take effect"
    )]
    Timeout(Duration),
}

/// How long a write waits to be committed by default (`--propose-timeout-ms`).
pub const DEFAULT_PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl Coordinator {
    /// A cached channel to another coordinator.
    pub fn channel(&self, address: &str) -> Result<Channel, ApiError> {
        let mut m = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(address) {
            return Ok(c.clone());
        }
        let c = peer_channel(address, self.tls.clone()).map_err(|error| ApiError::PeerAddress {
            address: address.to_string(),
            error,
        })?;
        m.insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// The leader's address when it is another node.
    pub fn leader_address(&self) -> Option<String> {
        let s = self.raft.status();
        if s.leader_id == 0 || s.leader_id == self.node_id || s.leader_silent {
            return None;
        }
        s.members.get(&s.leader_id).cloned()
    }

    /// Where a write must go: here when this node leads, else the leader (waiting out an
    /// election for up to `wait`). A request that was already forwarded is never forwarded again.
    pub async fn route_write(&self, forwarded: bool, wait: Duration) -> Result<Route, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let s = self.raft.status();
            if let Some(reason) = s.disk_full {
                return Err(ApiError::Propose(ProposeError::Raft(RaftError::DiskFull(
                    reason,
                ))));
            }
            if s.is_leader {
                return Ok(Route::Local);
            }
            if let Some(addr) = self.leader_address() {
                if forwarded {
                    return Err(self.not_leader());
                }
                return Ok(Route::Leader(self.channel(&addr)?));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::NoLeader {
                    wait,
                    node: self.node_id,
                    term: s.term,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// "Not the leader", with the leader's address attached when known.
    pub fn not_leader(&self) -> ApiError {
        ApiError::NotLeader {
            node: self.node_id,
            leader_id: self.raft.status().leader_id,
            hint: self.leader_address(),
        }
    }

    /// Waits until this node's state includes every write committed before the call: the
    /// ReadIndex barrier for reads that must be current.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        self.raft
            .read_index(Duration::from_secs(3))
            .await
            .map_err(ApiError::ReadBarrier)
    }

    /// Commits `cmd` and returns what applying it did. Waits out a leader election.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ProposeError> {
        let data = serde_json::to_vec(&cmd).map_err(|e| ProposeError::Encode(e.to_string()))?;
        let limit = self.propose_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.raft.propose(data.clone()));
            let Ok(answer) = attempt.await else {
                return Err(ProposeError::Timeout(limit));
            };
            match answer {
                Ok(applied) => return Ok(applied),
                Err(RaftError::NotLeader { leader_id })
                    if leader_id == 0 || leader_id == self.node_id =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ProposeError::NoLeader(limit));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

pub struct ServerHandle {
    pub addr: SocketAddr,
    pub coordinator: Arc<Coordinator>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    raft_thread: Option<std::thread::JoinHandle<Result<(), Fatal>>>,
    /// Resolves with the fatal error if the Raft node stops by itself.
    fatal: Option<oneshot::Receiver<Fatal>>,
}

impl ServerHandle {
    /// Stops serving and the Raft node; returns when both are down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Agent sessions and log followers are endless streams: end them, then give in-flight
        // requests a moment before cutting the rest.
        self.coordinator.dispatcher.close_all();
        if tokio::time::timeout(Duration::from_secs(3), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        self.coordinator.raft.shutdown();
        if let Some(t) = self.raft_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Resolves if the Raft node stops by itself with a fatal error (storage that cannot be
    /// written, a committed entry that cannot be applied). The process should then exit so a
    /// supervisor restarts it from what is on disk, as TiKV does; meanwhile the node answers
    /// as stopped, never as leader. Pending forever otherwise.
    pub async fn fatal(&mut self) -> Fatal {
        match self.fatal.take() {
            Some(rx) => match rx.await {
                Ok(f) => f,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Resolves when the gRPC server ends.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let r = (&mut self.server).await;
        self.coordinator.raft.shutdown();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Loads the node's TLS material, or checks that going without is allowed.
fn load_tls(cfg: &CoordinatorConfig) -> anyhow::Result<Option<Arc<gantry_tls::TlsContext>>> {
    let Some(files) = cfg.tls.clone() else {
        if !cfg.listen.ip().is_loopback() && !cfg.insecure {
            anyhow::bail!(
                "refusing to listen on {} without TLS: anyone who can reach it could act as a \
                 peer or an agent. Give --tls-ca, --tls-cert and --tls-key (see `gantry tls`), \
                 or pass --insecure to serve in plain text anyway",
                cfg.listen
            );
        }
        return Ok(None);
    };
    let client_certs = if cfg.require_client_certs {
        gantry_tls::ClientCerts::Required
    } else {
        gantry_tls::ClientCerts::Optional
    };
    let ctx = gantry_tls::TlsContext::load(
        files,
        client_certs,
        gantry_tls::Expect::Coordinator,
        cfg.cluster.clone(),
    )?;
    match ctx.identity().map(|i| i.role) {
        Some(gantry_tls::Role::Coordinator(id)) if id == cfg.node_id => {}
        other => anyhow::bail!(
            "the TLS certificate is for {} but this is coordinator {}: issue one with \
             `gantry tls cert create --coordinator {}`",
            other.map_or("no coordinator".to_string(), |r| r.to_string()),
            cfg.node_id,
            cfg.node_id
        ),
    }
    Ok(Some(ctx))
}

pub async fn start(cfg: CoordinatorConfig) -> anyhow::Result<ServerHandle> {
    let uri_policy = gantry_core::ir::UriPolicy::new(
        cfg.artifact_root.clone(),
        cfg.import_roots.clone(),
        cfg.allow_buckets.clone(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let tls = load_tls(&cfg)?;
    let cluster = match &tls {
        Some(t) => t.cluster().map(str::to_string),
        None => cfg.cluster.clone(),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
    let initial_members = cfg.initial_members(&advertise)?;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let store_ids = Arc::new(
        StoreIds::open(&cfg.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.data_dir.display()))?,
    );
    let db = sled::Config::new()
        .path(cfg.data_dir.join("sled"))
        .open()
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.data_dir.display()))?;
    let log = crate::raft::log_upgrade::open_raft_log(&cfg.data_dir, &db)?;
    let store = RaftStorage::open(Arc::new(log))?;
    if !store.is_fresh() && !initial_members.is_empty() && store.members() != initial_members {
        tracing::info!("this node already belongs to a cluster; --bootstrap/--peer are ignored");
    }
    let snapshots = SnapshotDir::open(cfg.data_dir.join("snapshots"))?;
    let logs = Arc::new(StepLogs::open(&db, cfg.log_limits.store_caps())?);
    let state = SharedState::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let machine = ClusterMachine {
        state: state.clone(),
        events: events_tx,
        decoder: Default::default(),
    };
    let node_cfg = NodeConfig {
        id: cfg.node_id,
        tick_interval: cfg.tick_interval,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        snapshot_entries: cfg.snapshot_entries.max(1),
        initial_members,
        election_range: None,
    };
    let rt = tokio::runtime::Handle::current();
    let transport_snaps = snapshots.clone();
    let transport_addr = advertise.clone();
    let peer_tls = tls.clone();
    let stamp = PeerStamp {
        previous_snapshot_format: crate::machine::plain_snapshot,
        cluster: cluster.clone().unwrap_or_default(),
        store_ids: store_ids.clone(),
    };
    let (raft, raft_thread) = raft::start(
        node_cfg,
        store,
        Arc::new(snapshots.clone()),
        machine,
        |sink| {
            GrpcTransport::new(
                rt,
                cfg.node_id,
                transport_addr,
                transport_snaps,
                sink,
                peer_tls,
                stamp,
            )
        },
    )?;
    let (raft_thread, fatal) = watch_raft_thread(raft_thread);
    if raft.status().voters.is_empty() {
        tracing::info!(
            node = cfg.node_id,
            %advertise,
            "not a member of any cluster yet: waiting for `gantry cluster join {advertise}`"
        );
    }
    let dispatcher = Dispatcher::new(state.clone(), logs.clone());
    let coordinator = Arc::new(Coordinator {
        node_id: cfg.node_id,
        raft,
        state,
        dispatcher: dispatcher.clone(),
        logs,
        waiting: Arc::new(Mutex::new(Default::default())),
        cpu_policy: cfg.cpu_policy,
        agent_lease: cfg.agent_lease,
        artifact_root: cfg.artifact_root.clone(),
        uri_policy,
        advertise: advertise.clone(),
        snapshots,
        artifacts: gantry_artifacts::ArtifactStores::from_env(),
        tls: tls.clone(),
        cluster,
        store_ids,
        max_snapshot_bytes: cfg.max_snapshot_bytes,
        propose_timeout: cfg.propose_timeout,
        submit_limits: cfg.submit_limits,
        log_limits: cfg.log_limits,
        retention: cfg.retention,
        delete_removed_run_artifacts: cfg.delete_removed_run_artifacts,
        idempotency_window_ms: cfg.idempotency_window_ms,
        receiving_snapshot: tokio::sync::Mutex::new(()),
        parsed: Default::default(),
        transport: if tls.is_some() {
            crate::auth::Transport::Tls
        } else {
            crate::auth::Transport::Insecure
        },
        channels: Mutex::new(HashMap::new()),
    });
    if let Some(t) = &tls {
        t.watch(Duration::from_secs(1));
    }
    tokio::spawn(dispatcher.run_events(events_rx));
    tokio::spawn(crate::scheduling::scheduling_loop(coordinator.clone()));
    tokio::spawn(crate::recurring::recurring_loop(coordinator.clone()));
    tokio::spawn(crate::webhooks::delivery_loop(coordinator.clone()));
    tokio::spawn(leadership_watch(coordinator.clone()));
    tokio::spawn(crate::member_stores::record_member_stores(
        coordinator.clone(),
    ));

    let incoming = gantry_tls::server::incoming(listener, tls.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let api = crate::api::Api(coordinator.clone());
    let auth = crate::auth::AuthLayer {
        coordinator: coordinator.clone(),
        transport: coordinator.transport,
    };
    // One port for everything: gRPC, and the KFP REST API (HTTP/1.1 or HTTP/2) beside it.
    let mut grpc = tonic::service::RoutesBuilder::default();
    // Explicit limits (see gantry_model::limits): each is the largest message its peers are
    // allowed to produce, so a legal message is never cut off mid-stream.
    grpc.add_service(
        AclServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_CLIENT_REQUEST_BYTES)
            .max_encoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
    )
    .add_service(
        RunServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_CLIENT_REQUEST_BYTES)
            .max_encoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
    )
    .add_service(
        AgentServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_AGENT_MESSAGE_BYTES),
    )
    .add_service(
        ClusterServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_CLIENT_REQUEST_BYTES)
            .max_encoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
    )
    .add_service(
        WebhookServiceServer::new(api.clone())
            .max_decoding_message_size(MAX_CLIENT_REQUEST_BYTES)
            .max_encoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
    )
    .add_service(
        RaftServiceServer::new(api)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
    );
    let rest = {
        let c = coordinator.clone();
        axum::routing::any(move |req: axum::extract::Request| crate::kfp::serve(c.clone(), req))
    };
    let router = grpc
        .routes()
        .into_axum_router()
        .route("/apis/{*rest}", rest);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(2)))
            .layer(auth)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    tracing::info!(%addr, %advertise, node = cfg.node_id, artifact_root = %cfg.artifact_root,
        import_roots = ?cfg.import_roots, allow_buckets = ?cfg.allow_buckets,
        tls = tls.is_some(), cluster = ?coordinator.cluster, "coordinator serving");
    Ok(ServerHandle {
        addr,
        coordinator,
        shutdown: Some(tx),
        server,
        raft_thread: Some(raft_thread),
        fatal: Some(fatal),
    })
}

/// Joins the Raft thread on a watcher thread, and reports a fatal end through the receiver; the
/// returned handle ends when the Raft thread does.
fn watch_raft_thread(
    raft_thread: std::thread::JoinHandle<Result<(), Fatal>>,
) -> (
    std::thread::JoinHandle<Result<(), Fatal>>,
    oneshot::Receiver<Fatal>,
) {
    let (tx, rx) = oneshot::channel();
    let watcher = std::thread::spawn(move || {
        let result = raft_thread
            .join()
            .unwrap_or_else(|_| Err(Fatal("the raft thread panicked".into())));
        if let Err(f) = &result {
            let _ = tx.send(f.clone());
        }
        result
    });
    (watcher, rx)
}

/// Agents hold their session with the leader only: when this node stops leading, end its
/// sessions so the agents go and find the new leader.
async fn leadership_watch(c: Arc<Coordinator>) {
    let mut was_leader = false;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fail::fail_point!("leadership-watch");
        let s = c.raft.status();
        if was_leader && !s.is_leader {
            tracing::info!(
                node = c.node_id,
                term = s.term,
                leader = s.leader_id,
                "lost leadership; closing agent sessions"
            );
            c.dispatcher.close_all();
        }
        if !was_leader && s.is_leader {
            tracing::info!(node = c.node_id, term = s.term, "became leader");
            c.dispatcher.schedule.notify_one();
        }
        was_leader = s.is_leader;
    }
}
