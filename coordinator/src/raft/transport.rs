//! Raft messages between coordinators over tonic: one task and one queue per peer, so a slow or
//! dead peer never holds up the others or the Raft thread.
//!
//! Messages are batched, and the batches written into one long-lived `Stream` call per peer
//! without waiting for a reply to each (a peer without it gets one `Send` call per batch). A
//! snapshot message goes out as a stream of file chunks, so its size in memory is one chunk
//! whatever the size of the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_proto::v1::raft_service_client::RaftServiceClient;
use gantry_proto::v1::{RaftBatch, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::node::{Feedback, FeedbackSink, Transport};
use super::snapshot_files::SnapshotDir;
use super::storage::Members;
use super::store_ids::StoreIds;
use gantry_model::limits::{MAX_PEER_MESSAGE_BYTES, MAX_RAFT_BATCH_BYTES};

const QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// A lazily connecting channel tuned for peers on a LAN: keepalive that notices a paused or
/// vanished peer within seconds. With TLS, this node presents its coordinator certificate and
/// accepts only a coordinator of its cluster at the other end.
pub fn peer_channel(
    addr: &str,
    tls: Option<Arc<gantry_tls::TlsContext>>,
) -> Result<Channel, tonic::transport::Error> {
    gantry_tls::client::channel(addr, tls, |e: Endpoint| {
        e.http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
    })
}

struct Shared {
    self_id: u64,
    self_address: String,
    snaps: SnapshotDir,
    feedback: FeedbackSink,
    tls: Option<Arc<gantry_tls::TlsContext>>,
    /// Stamped on every message; the receiver refuses another cluster's.
    cluster: String,
    /// This node's store id is stamped on every message; records of removed members are
    /// forgotten when the membership changes.
    store_ids: Arc<StoreIds>,
    previous_snapshot_format: RewriteSnapshot,
}

/// Reads a snapshot's state and writes it in another format.
pub type RewriteSnapshot =
    fn(&mut dyn std::io::Read, &mut dyn std::io::Write) -> std::io::Result<()>;

struct Peer {
    address: String,
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

/// What this node stamps on its raft traffic, and how it speaks to a peer of the previous
/// version.
pub struct PeerStamp {
    /// Rewrites a snapshot's state in format 1, for a peer without `InstallSnapshotV2`.
    pub previous_snapshot_format: RewriteSnapshot,
    pub cluster: String,
    pub store_ids: Arc<StoreIds>,
}

pub struct GrpcTransport {
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
    peers: HashMap<u64, Peer>,
}

impl GrpcTransport {
    pub fn new(
        rt: tokio::runtime::Handle,
        self_id: u64,
        self_address: String,
        snaps: SnapshotDir,
        feedback: FeedbackSink,
        tls: Option<Arc<gantry_tls::TlsContext>>,
        stamp: PeerStamp,
    ) -> Self {
        GrpcTransport {
            rt,
            shared: Arc::new(Shared {
                self_id,
                self_address,
                snaps,
                feedback,
                tls,
                cluster: stamp.cluster,
                store_ids: stamp.store_ids,
                previous_snapshot_format: stamp.previous_snapshot_format,
            }),
            peers: HashMap::new(),
        }
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        for p in self.peers.values() {
            p.task.abort();
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(peer) = self.peers.get(&to) else {
                tracing::debug!(to, "no address for raft peer; message dropped");
                (self.shared.feedback)(Feedback::Unreachable(to));
                continue;
            };
            if peer.tx.try_send(m).is_err() {
                // Raft retransmits; a full queue means the peer is far behind or gone.
                (self.shared.feedback)(Feedback::Unreachable(to));
            }
        }
    }

    fn set_members(&mut self, members: &Members) {
        self.shared
            .store_ids
            .retain_members(|id| members.contains_key(&id));
        self.peers.retain(|id, p| {
            let keep = members.get(id) == Some(&p.address);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for (id, address) in members {
            if *id == self.shared.self_id || self.peers.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = self
                .rt
                .spawn(peer_loop(*id, address.clone(), rx, self.shared.clone()));
            self.peers.insert(
                *id,
                Peer {
                    address: address.clone(),
                    tx,
                    task,
                },
            );
        }
    }
}

async fn peer_loop(id: u64, address: String, mut rx: mpsc::Receiver<Message>, shared: Arc<Shared>) {
    let channel = match peer_channel(&address, shared.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(peer = id, %address, error = %e, "bad peer address");
            return;
        }
    };
    let mut client = RaftServiceClient::new(channel)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES);
    // A message that would push a batch over its byte bound starts the next one.
    let mut carry: Option<Message> = None;
    let mut link = Link::Closed;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        let mut bytes = first.compute_size() as usize;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    let size = m.compute_size() as usize;
                    if bytes + size > MAX_RAFT_BATCH_BYTES {
                        carry = Some(m);
                        break;
                    }
                    bytes += size;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let (snapshots, normal): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        if !normal.is_empty() {
            let mut messages = Vec::with_capacity(normal.len());
            for m in &normal {
                match m.write_to_bytes() {
                    Ok(b) => messages.push(b),
                    Err(e) => tracing::error!(error = %e, "cannot encode raft message"),
                }
            }
            let req = RaftBatch {
                from: shared.self_id,
                from_address: shared.self_address.clone(),
                messages,
                cluster: shared.cluster.clone(),
                from_store: shared.store_ids.own(),
            };
            if let Err(e) = deliver(&mut link, &client, req).await {
                tracing::debug!(peer = id, error = %e, "raft send failed");
                (shared.feedback)(Feedback::Unreachable(id));
            }
        }
        for m in snapshots {
            let ok = match send_snapshot(&mut client, &shared, m).await {
                Ok(bytes) => {
                    tracing::info!(peer = id, bytes, "snapshot sent");
                    true
                }
                Err(e) => {
                    tracing::warn!(peer = id, error = %e, "snapshot transfer failed");
                    false
                }
            };
            (shared.feedback)(Feedback::SnapshotSent { to: id, ok });
        }
    }
}

/// Batches waiting for a peer's stream. Few: while the connection is busy, the peer's
/// messages gather in its queue and leave as one larger batch, as they did behind each reply
/// when every batch was a call of its own.
const STREAM_QUEUE: usize = 2;

/// How long a batch may wait for room on a peer's stream (or for a `Send`'s reply) before the
/// peer counts as unreachable (a paused peer; a dead connection ends the stream sooner, by
/// keepalive).
const STREAM_WAIT: Duration = Duration::from_secs(2);

/// How batches reach one peer.
enum Link {
    /// None open: the next batch opens one.
    Closed,
    Open {
        tx: mpsc::Sender<RaftBatch>,
        call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
    },
    /// The peer has no `Stream` (an older version): one `Send` call per batch.
    Unary,
}

/// Sends one batch on the peer's stream, opening one when none is open. An error means the
/// batch (and maybe others in flight before it) did not reach the peer; Raft resends.
async fn deliver(
    link: &mut Link,
    client: &RaftServiceClient<Channel>,
    req: RaftBatch,
) -> Result<(), String> {
    let mut ended = None;
    if let Link::Open { call, .. } = link {
        if call.is_finished() {
            if let Link::Open { call, .. } = std::mem::replace(link, Link::Closed) {
                match call.await {
                    Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                        *link = Link::Unary;
                    }
                    Ok(Err(status)) => ended = Some(format!("the raft stream ended: {status}")),
                    Ok(Ok(())) => ended = Some("the peer closed the raft stream".to_string()),
                    Err(e) => ended = Some(format!("the raft stream task failed: {e}")),
                }
            }
        }
    }
    match link {
        Link::Unary => {
            let mut client = client.clone();
            match tokio::time::timeout(STREAM_WAIT, client.send(req)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("timed out after {}s", STREAM_WAIT.as_secs())),
            }
        }
        Link::Closed => {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            let mut client = client.clone();
            let call = tokio::spawn(async move {
                client
                    .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map(|_| ())
            });
            // A fresh queue has room for the first batch.
            let _ = tx.try_send(req);
            *link = Link::Open { tx, call };
            // What the stream before this one lost is reported now that the batch is sent.
            ended.map_or(Ok(()), Err)
        }
        Link::Open { tx, .. } => match tokio::time::timeout(STREAM_WAIT, tx.send(req)).await {
            Ok(Ok(())) => Ok(()),
            // The call is ending; the next batch finds it finished.
            Ok(Err(_)) => Err("the raft stream closed".into()),
            Err(_) => Err(format!(
                "no room on the raft stream for {}s",
                STREAM_WAIT.as_secs()
            )),
        },
    }
}

async fn send_snapshot(
    client: &mut RaftServiceClient<Channel>,
    shared: &Shared,
    msg: Message,
) -> anyhow::Result<u64> {
    let meta = msg.get_snapshot().get_metadata();
    let (term, index) = (meta.term, meta.index);
    tracing::info!(to = msg.to, index, term, "sending a snapshot");
    let path = shared.snaps.path(term, index);
    match stream_snapshot(client, shared, &msg, &path, Rpc::V2).await {
        Err(e)
            if e.downcast_ref::<tonic::Status>()
                .is_some_and(|s| s.code() == tonic::Code::Unimplemented) =>
        {
            tracing::info!(
                to = msg.to,
                index,
                term,
                "the peer reads only snapshots of format 1 (a previous version): sending it one"
            );
            let snaps = shared.snaps.clone();
            let rewrite = shared.previous_snapshot_format;
            let copy =
                tokio::task::spawn_blocking(move || snaps.rewritten_copy(term, index, rewrite))
                    .await??;
            let sent = stream_snapshot(client, shared, &msg, &copy, Rpc::V1).await;
            let _ = tokio::fs::remove_file(&copy).await;
            sent
        }
        sent => sent,
    }
}

/// Which call carries a snapshot: a peer without `InstallSnapshotV2` reads only format 1.
#[derive(Clone, Copy)]
enum Rpc {
    V1,
    V2,
}

/// Streams the snapshot file at `path` to the peer with `msg`.
async fn stream_snapshot(
    client: &mut RaftServiceClient<Channel>,
    shared: &Shared,
    msg: &Message,
    path: &std::path::Path,
    rpc: Rpc,
) -> anyhow::Result<u64> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    let total_size = file.metadata().await?.len();
    let message = msg.write_to_bytes()?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(2);
    let from = shared.self_id;
    let from_address = shared.self_address.clone();
    let cluster = shared.cluster.clone();
    let from_store = shared.store_ids.own();
    // The reader stays at most two chunks ahead of the network.
    let reader = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; SNAPSHOT_CHUNK];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let chunk = SnapshotChunk {
                from,
                from_address: if first {
                    from_address.clone()
                } else {
                    String::new()
                },
                message: if first { message.clone() } else { Vec::new() },
                data: buf,
                total_size: if first { total_size } else { 0 },
                cluster: if first {
                    cluster.clone()
                } else {
                    String::new()
                },
                from_store: if first { from_store } else { 0 },
            };
            first = false;
            if tx.send(chunk).await.is_err() || filled < SNAPSHOT_CHUNK {
                return Ok::<(), std::io::Error>(());
            }
        }
    });
    let chunks = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = match rpc {
        Rpc::V1 => client.install_snapshot(chunks).await,
        Rpc::V2 => client.install_snapshot_v2(chunks).await,
    };
    let read = reader.await;
    result?;
    read??;
    Ok(total_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
    use gantry_proto::v1::{RaftAck, SnapshotChunk};
    use std::sync::Mutex;
    use tokio_stream::StreamExt;
    use tonic::{Request, Response, Status, Streaming};

    /// A peer that records the `from` of each batch and how it came. `with_stream: false` is
    /// a node of an older version; `refuse` is a `from` whose batch ends the stream.
    #[derive(Clone)]
    struct Peer {
        got: Arc<Mutex<Vec<(u64, &'static str)>>>,
        with_stream: bool,
        refuse: u64,
    }

    #[tonic::async_trait]
    impl RaftService for Peer {
        async fn send(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
            self.got
                .lock()
                .unwrap()
                .push((req.into_inner().from, "send"));
            Ok(Response::new(RaftAck {}))
        }
        async fn stream(
            &self,
            req: Request<Streaming<RaftBatch>>,
        ) -> Result<Response<RaftAck>, Status> {
            if !self.with_stream {
                return Err(Status::unimplemented("no Stream here"));
            }
            let mut s = req.into_inner();
            while let Some(b) = s.next().await {
                let from = b?.from;
                if from == self.refuse {
                    return Err(Status::permission_denied("refused"));
                }
                self.got.lock().unwrap().push((from, "stream"));
            }
            Ok(Response::new(RaftAck {}))
        }
        async fn install_snapshot(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftAck>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn install_snapshot_v2(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftAck>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn serve(peer: Peer) -> RaftServiceClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServiceServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        RaftServiceClient::new(peer_channel(&addr.to_string(), None).unwrap())
    }

    fn batch(from: u64) -> RaftBatch {
        RaftBatch {
            from,
            ..Default::default()
        }
    }

    async fn wait_for(got: &Mutex<Vec<(u64, &'static str)>>, n: usize) -> Vec<(u64, &'static str)> {
        for _ in 0..500 {
            if got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        got.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn batches_go_in_order_on_one_stream_and_a_refused_one_opens_the_next() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let client = serve(Peer {
            got: got.clone(),
            with_stream: true,
            refuse: 99,
        })
        .await;
        let mut link = Link::Closed;
        for from in 1..=20 {
            deliver(&mut link, &client, batch(from)).await.unwrap();
        }
        let want: Vec<_> = (1..=20).map(|f| (f, "stream")).collect();
        assert_eq!(wait_for(&got, 20).await, want);

        // The peer refuses a batch: its stream ends, the next batch reports the loss and
        // goes on a new stream.
        deliver(&mut link, &client, batch(99)).await.unwrap();
        for _ in 0..500 {
            if matches!(&link, Link::Open { call, .. } if call.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lost = deliver(&mut link, &client, batch(21)).await.unwrap_err();
        assert!(lost.contains("refused"), "{lost}");
        deliver(&mut link, &client, batch(22)).await.unwrap();
        let got = wait_for(&got, 22).await;
        assert_eq!(&got[20..], &[(21, "stream"), (22, "stream")]);
    }

    #[tokio::test]
    async fn a_peer_without_stream_gets_the_batches_by_send() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let client = serve(Peer {
            got: got.clone(),
            with_stream: false,
            refuse: 0,
        })
        .await;
        let mut link = Link::Closed;
        // The first batch is lost on the refused stream (Raft sends it again).
        deliver(&mut link, &client, batch(1)).await.unwrap();
        for _ in 0..500 {
            if matches!(&link, Link::Open { call, .. } if call.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for from in 2..=5 {
            deliver(&mut link, &client, batch(from)).await.unwrap();
        }
        assert!(matches!(link, Link::Unary));
        let want: Vec<_> = (2..=5).map(|f| (f, "send")).collect();
        assert_eq!(wait_for(&got, 4).await, want);
    }
}
