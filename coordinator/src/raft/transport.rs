//! Raft messages between coordinators over tonic: one task and one queue per peer, so a slow or
//! dead peer never holds up the others or the Raft thread.
//!
//! Messages are batched per RPC. A snapshot message goes out as a stream of file chunks, so its
//! size in memory is one chunk whatever the size of the state.

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
}

struct Peer {
    address: String,
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

/// What this node stamps on its raft traffic.
pub struct PeerStamp {
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
            match tokio::time::timeout(Duration::from_secs(2), client.send(req)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = id, error = %e, "raft send failed");
                    (shared.feedback)(Feedback::Unreachable(id));
                }
                Err(_) => {
                    tracing::debug!(peer = id, "raft send timed out");
                    (shared.feedback)(Feedback::Unreachable(id));
                }
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

async fn send_snapshot(
    client: &mut RaftServiceClient<Channel>,
    shared: &Shared,
    msg: Message,
) -> anyhow::Result<u64> {
    let meta = msg.get_snapshot().get_metadata();
    tracing::info!(
        to = msg.to,
        index = meta.index,
        term = meta.term,
        "sending a snapshot"
    );
    let path = shared.snaps.path(meta.term, meta.index);
    let mut file = tokio::fs::File::open(&path)
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
    let result = client
        .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let read = reader.await;
    result?;
    read??;
    Ok(total_size)
}
