//! Wiring: open storage, start the Raft node, the event reactor, the scheduling loop and the
//! gRPC server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_core::state::{Applied, Command};
use gantry_proto::v1::agent_service_server::AgentServiceServer;
use gantry_proto::v1::cluster_service_server::ClusterServiceServer;
use gantry_proto::v1::run_service_server::RunServiceServer;
use tokio::sync::{mpsc, oneshot};

use crate::dispatch::{Dispatcher, WaitingReasons};
use crate::logs::LogStore;
use crate::machine::{ApplyOutput, ClusterMachine, SharedState};
use crate::raft::{self, NodeConfig, RaftError, RaftHandle, SledLogStore};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where runs write artifacts: `file:///dir` or `s3://bucket/prefix`.
    pub artifact_root: String,
    pub tick_interval: Duration,
}

/// Everything the services and loops share.
pub struct Coordinator {
    pub node_id: u64,
    pub raft: RaftHandle<ApplyOutput>,
    pub state: SharedState,
    pub dispatcher: Arc<Dispatcher>,
    pub logs: LogStore,
    pub waiting: WaitingReasons,
    pub artifact_root: String,
    /// The address clients and peers use for this node.
    pub advertise: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("{0}")]
    Apply(String),
    #[error("no leader elected within {0:?}")]
    NoLeader(Duration),
}

impl From<ProposeError> for tonic::Status {
    fn from(e: ProposeError) -> Self {
        match &e {
            ProposeError::Raft(RaftError::Storage(_)) | ProposeError::Apply(_) => {
                tonic::Status::internal(e.to_string())
            }
            _ => tonic::Status::unavailable(e.to_string()),
        }
    }
}

impl Coordinator {
    /// Commits `cmd` and returns what applying it did. Waits out a leader election.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ProposeError> {
        let data = serde_json::to_vec(&cmd).map_err(|e| ProposeError::Apply(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.raft.propose(data.clone()).await {
                Ok(out) => return out.map_err(ProposeError::Apply),
                Err(RaftError::NotLeader { leader_id })
                    if leader_id == 0 || leader_id == self.node_id =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ProposeError::NoLeader(Duration::from_secs(10)));
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
    raft_thread: Option<std::thread::JoinHandle<()>>,
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

pub async fn start(cfg: CoordinatorConfig) -> anyhow::Result<ServerHandle> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let db = sled::Config::new()
        .path(cfg.data_dir.join("sled"))
        .open()
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", cfg.data_dir.display()))?;
    let store = SledLogStore::open(db.clone())?;
    let logs = LogStore::open(&db)?;
    let state = SharedState::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let machine = ClusterMachine {
        state: state.clone(),
        events: events_tx,
    };
    let node_cfg = NodeConfig {
        id: cfg.node_id,
        tick_interval: cfg.tick_interval,
        ..Default::default()
    };
    let (raft, raft_thread) = raft::start(node_cfg, store, machine)?;
    let dispatcher = Dispatcher::new(state.clone());
    let coordinator = Arc::new(Coordinator {
        node_id: cfg.node_id,
        raft,
        state,
        dispatcher: dispatcher.clone(),
        logs,
        waiting: Arc::new(Mutex::new(Default::default())),
        artifact_root: cfg.artifact_root.clone(),
        advertise: addr.to_string(),
    });
    tokio::spawn(dispatcher.run_events(events_rx));
    tokio::spawn(crate::scheduling::scheduling_loop(coordinator.clone()));

    // Small messages on long-lived streams: without nodelay, Nagle and delayed ACKs add ~40 ms
    // to every assignment.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (tx, rx) = oneshot::channel::<()>();
    let api = crate::api::Api(coordinator.clone());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RunServiceServer::new(api.clone()))
            .add_service(AgentServiceServer::new(api.clone()))
            .add_service(ClusterServiceServer::new(api))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    tracing::info!(%addr, node = cfg.node_id, artifact_root = %cfg.artifact_root, "coordinator serving");
    Ok(ServerHandle {
        addr,
        coordinator,
        shutdown: Some(tx),
        server,
        raft_thread: Some(raft_thread),
    })
}
