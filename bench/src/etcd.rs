//! The peer in `gantry-bench raft --etcd`: a 3-member etcd (Debian's `etcd-server`, or the
//! binary `GANTRY_ETCD_BIN` names) on 127.0.0.1 with its data on the same disk as the
//! coordinators', driven over its gRPC API with puts of the same bytes a Gantry submission
//! carries, at the same concurrency levels. Every member is killed and reaped when the bench
//! ends, however it ends.
//!
//! The client is tonic itself with the two messages of etcd's `KV.Put` and
//! `Maintenance.Status` written out here (field numbers from etcd's `rpc.proto`), so the bench
//! needs no second gRPC stack.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_cli::exit::CliError;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::unavailable;

const MEMBERS: usize = 3;
const PUT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    leader: u64,
    #[prost(uint64, tag = "5")]
    raft_index: u64,
}

/// A running 3-member etcd.
pub struct Etcd {
    children: Vec<Child>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcd_bin() -> Result<PathBuf, CliError> {
    if let Some(p) = std::env::var_os("GANTRY_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            unavailable(
                "etcd not found: install Debian's etcd-server (apt-get install etcd-server) \
                 or set GANTRY_ETCD_BIN",
            )
        })
}

fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| unavailable(format!("cannot pick a port: {e}")))
}

impl Etcd {
    /// Starts the members with their data under the system's temporary directory (the disk
    /// the coordinators' data lies on) and waits until a put commits.
    pub async fn start() -> Result<Etcd, CliError> {
        let bin = etcd_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("gantry-bench-etcd-")
            .tempdir()
            .map_err(|e| unavailable(format!("cannot make a directory: {e}")))?;
        let ports = (0..MEMBERS * 2)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[MEMBERS + i]);
        let initial = (0..MEMBERS)
            .map(|i| format!("m{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            children: Vec::new(),
            clients: (0..MEMBERS)
                .map(|i| format!("http://127.0.0.1:{}", ports[i]))
                .collect(),
            _dir: dir,
        };
        for i in 0..MEMBERS {
            let data = etcd._dir.path().join(format!("m{i}"));
            let log = std::fs::File::create(etcd._dir.path().join(format!("m{i}.log")))
                .map_err(|e| unavailable(format!("cannot create a log file: {e}")))?;
            let child = Command::new(&bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &etcd.clients[i]])
                .args(["--advertise-client-urls", &etcd.clients[i]])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "gantry-bench"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| unavailable(format!("cannot start {}: {e}", bin.display())))?;
            etcd.children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = match etcd.leader_channel().await {
                Ok(ch) => put(&ch, b"bench-warmup".to_vec(), b"x".to_vec())
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if ok {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                return Err(unavailable("etcd did not elect a leader within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A channel to the member that leads (etcd forwards proposals a follower gets; Gantry's
    /// bench writes to its leader, so this one does too).
    pub async fn leader_channel(&self) -> Result<Channel, CliError> {
        let mut channels = Vec::new();
        for url in &self.clients {
            let ch = Endpoint::from_shared(url.clone())
                .map_err(|e| unavailable(format!("{url}: {e}")))?
                .connect()
                .await
                .map_err(|e| unavailable(format!("{url}: {e}")))?;
            channels.push(ch);
        }
        for ch in channels {
            let status: StatusResponse =
                call(&ch, "/etcdserverpb.Maintenance/Status", StatusRequest {}).await?;
            let me = status.header.map_or(0, |h| h.member_id);
            if status.leader != 0 && status.leader == me {
                return Ok(ch);
            }
        }
        Err(unavailable("no etcd member leads yet"))
    }
}

async fn call<Req, Resp>(ch: &Channel, path: &'static str, req: Req) -> Result<Resp, CliError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| unavailable(format!("etcd: {e}")))?;
    grpc.unary(
        tonic::Request::new(req),
        PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|s| unavailable(format!("etcd {path}: {s}")))
}

async fn put(ch: &Channel, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse, CliError> {
    call(ch, "/etcdserverpb.KV/Put", PutRequest { key, value }).await
}

/// `n` writers putting `value` under fresh keys for `run_for`; every latency in
/// microseconds, and the wall time of the level.
pub async fn level(
    ch: &Channel,
    n: usize,
    run_for: Duration,
    value: &[u8],
    seq: &Arc<AtomicU64>,
) -> Result<(Vec<i64>, Duration), CliError> {
    let t0 = Instant::now();
    let deadline = t0 + run_for;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (ch, value, seq) = (ch.clone(), value.to_vec(), seq.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let key = format!("bench-raft-{}", seq.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                tokio::time::timeout(PUT_TIMEOUT, put(&ch, key.into_bytes(), value.clone()))
                    .await
                    .map_err(|_| {
                        unavailable(format!("etcd Put: no answer in {PUT_TIMEOUT:?}"))
                    })??;
                lat.push(t.elapsed().as_micros() as i64);
            }
            Ok::<_, CliError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        let lat = joined.map_err(|e| unavailable(format!("a writer died: {e}")))??;
        all.extend(lat);
    }
    Ok((all, t0.elapsed()))
}

/// The leader's raft index (for the table's "log delta").
pub async fn raft_index(ch: &Channel) -> Result<u64, CliError> {
    let s: StatusResponse = call(ch, "/etcdserverpb.Maintenance/Status", StatusRequest {}).await?;
    Ok(s.raft_index)
}
