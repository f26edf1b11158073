//! RaftService: messages and snapshot streams from peer coordinators.

use gantry_proto::v1 as pb;
use gantry_proto::v1::raft_service_server::RaftService;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::status::ApiError;
use super::Api;
use crate::auth::{principal, Principal, Transport};
use crate::raft::{Feedback, StoreIdError};
use gantry_tls::Role;

/// Fault injection for the crash-during-install test: a pause before each received chunk is
/// written, so a test can kill the node mid-transfer. Unset (the default) means no pause.
fn chunk_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("GANTRY_FAULT_SNAPSHOT_CHUNK_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}

/// Fault injection for the rolling-upgrade test: this node takes snapshots as the previous
/// version did, without `InstallSnapshotV2` and reading only format 1, so a test can show that
/// the leader sends such a peer a snapshot it reads.
fn acts_previous_version() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var_os("GANTRY_FAULT_SNAPSHOT_FORMAT_1_ONLY").is_some())
}

/// What the previous version said of a snapshot of format 2: its state does not decode.
fn refuse_format_2(path: &std::path::Path) -> std::io::Result<()> {
    let (_, mut r) = crate::raft::SnapshotDir::open_file(path)?;
    match gantry_core::state::snapshot_format(&mut r)? {
        gantry_core::state::SnapshotFormat::Plain => Ok(()),
        gantry_core::state::SnapshotFormat::Tabled => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the state does not decode: a snapshot of format 2, and this node acts as the \
             previous version (GANTRY_FAULT_SNAPSHOT_FORMAT_1_ONLY)",
        )),
    }
}

/// Every message of a batch or stream from `from` must be from `from` and to this node: the
/// batch's sender is the one its certificate was checked against. A refusal is logged.
fn check_message(msg: &Message, from: u64, node_id: u64) -> Result<(), ApiError> {
    if msg.to != node_id || msg.from != from {
        let e = ApiError::PeerRefused(format!(
            "raft message from {} to {} arrived in a batch from {from} at node {node_id}",
            msg.from, msg.to
        ));
        tracing::warn!(from, reason = %e, "raft traffic refused");
        return Err(e);
    }
    Ok(())
}

impl Api {
    fn learn_peer(&self, id: u64, address: &str) {
        if id != 0 && !address.is_empty() {
            self.0.raft.feedback(Feedback::PeerAddress {
                id,
                address: address.to_string(),
            });
        }
    }

    /// Checks a peer's claim to be node `from` of `cluster` against its certificate and this
    /// node's configuration. A refusal is logged with its reason and changes nothing.
    fn accept_from(
        &self,
        from: u64,
        from_store: u64,
        cluster: &str,
        principal: &Principal,
    ) -> Result<(), ApiError> {
        let refuse = |e: ApiError| {
            tracing::warn!(from, reason = %e, "raft traffic refused");
            Err(e)
        };
        if from == self.0.node_id {
            return refuse(ApiError::SharedNodeId(from));
        }
        if let Some(ours) = &self.0.cluster {
            if cluster != ours {
                return refuse(ApiError::PeerRefused(format!(
                    "a message for cluster {cluster:?} reached cluster {ours:?}"
                )));
            }
        }
        if self.0.transport == Transport::Tls {
            match principal.cert.as_ref().map(|i| &i.role) {
                Some(Role::Coordinator(id)) if *id == from => {}
                Some(Role::Coordinator(id)) => {
                    return refuse(ApiError::PeerRefused(format!(
                        "coordinator {id} sent raft messages claiming to be node {from}"
                    )))
                }
                _ => {
                    return refuse(ApiError::PeerRefused(format!(
                        "raft traffic from {} (not a coordinator certificate)",
                        principal.name()
                    )))
                }
            }
        }
        let not_member = self.0.raft.with_status(|s| {
            let mut known = s.voters.iter().chain(&s.learners).chain(&s.outgoing);
            let configured = !(s.voters.is_empty() && s.learners.is_empty());
            (configured && !known.any(|id| *id == from)).then(|| {
                format!(
                    "node {from} is not a member (voters {:?}, learners {:?})",
                    s.voters, s.learners
                )
            })
        });
        if let Some(why) = not_member {
            return refuse(ApiError::PeerRefused(why));
        }
        // The committed record first: it also covers a member that never spoke to this node
        // before it lost its data directory. (Traffic without a store id is refused below.)
        let committed = self.0.state.read().member_stores.get(&from).copied();
        if let Some(known) = committed.filter(|known| from_store != 0 && *known != from_store) {
            return refuse(ApiError::PeerRefused(
                StoreIdError::Replaced {
                    node: from,
                    known,
                    got: from_store,
                }
                .to_string(),
            ));
        }
        // Checked last: only a member's data directory is recorded.
        if let Err(e) = self.0.store_ids.check(from, from_store) {
            return refuse(ApiError::PeerRefused(e.to_string()));
        }
        Ok(())
    }

    /// Checks one batch from a peer and hands its messages to the Raft thread.
    fn step_batch(&self, batch: pb::RaftBatch, principal: &Principal) -> Result<(), ApiError> {
        self.accept_from(batch.from, batch.from_store, &batch.cluster, principal)?;
        if !self
            .0
            .raft
            .with_status(|s| s.members.contains_key(&batch.from))
        {
            self.learn_peer(batch.from, &batch.from_address);
        }
        for bytes in batch.messages {
            let msg = Message::parse_from_bytes(&bytes).map_err(ApiError::UndecodableMessage)?;
            check_message(&msg, batch.from, self.0.node_id)?;
            self.0.raft.step(msg).map_err(ApiError::Step)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftService for Api {
    async fn send(&self, req: Request<pb::RaftBatch>) -> Result<Response<pb::RaftAck>, Status> {
        let principal = principal(&req);
        self.step_batch(req.into_inner(), &principal)?;
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn stream(
        &self,
        req: Request<Streaming<pb::RaftBatch>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        let principal = principal(&req);
        let mut stream = req.into_inner();
        // Each batch is checked as a Send is: membership and store ids may change while the
        // stream is open.
        while let Some(batch) = stream.next().await {
            self.step_batch(batch?, &principal)?;
        }
        Ok(Response::new(pb::RaftAck {}))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        self.receive_snapshot(req).await
    }

    async fn install_snapshot_v2(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        if acts_previous_version() {
            return Err(Status::unimplemented(
                "InstallSnapshotV2 (GANTRY_FAULT_SNAPSHOT_FORMAT_1_ONLY)",
            ));
        }
        self.receive_snapshot(req).await
    }
}

impl Api {
    /// Either snapshot call: both read a state of either format.
    async fn receive_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftAck>, Status> {
        let principal = principal(&req);
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or(ApiError::EmptySnapshotStream)??;
        self.accept_from(first.from, first.from_store, &first.cluster, &principal)?;
        let msg =
            Message::parse_from_bytes(&first.message).map_err(ApiError::UndecodableSnapshot)?;
        check_message(&msg, first.from, self.0.node_id)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(ApiError::NotASnapshot.into());
        }
        let meta = msg.get_snapshot().get_metadata().clone();
        let refuse = |why: String| {
            tracing::warn!(from = first.from, index = meta.index, term = meta.term, reason = %why,
                "snapshot refused");
            Err(Status::from(ApiError::SnapshotRefused(why)))
        };
        let max = self.0.max_snapshot_bytes;
        if first.total_size > max {
            return refuse(format!(
                "{} bytes is over this node's limit of {max} (--max-snapshot-bytes)",
                first.total_size
            ));
        }
        let applied = self.0.raft.status().applied_index;
        if meta.index <= applied {
            return refuse(format!(
                "it ends at index {}, and this node has applied up to {applied}",
                meta.index
            ));
        }
        let Ok(_one_at_a_time) = self.0.receiving_snapshot.try_lock() else {
            return refuse("another snapshot transfer to this node is in progress".into());
        };
        self.learn_peer(first.from, &first.from_address);
        let tmp = self.0.snapshots.receive_path(meta.term, meta.index);
        let total = first.total_size;
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut received = first.data.len() as u64;
            if let Some(d) = chunk_delay() {
                tokio::time::sleep(d).await;
            }
            file.write_all(&first.data).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
                if let Some(d) = chunk_delay() {
                    tokio::time::sleep(d).await;
                }
                received += chunk.data.len() as u64;
                if received > total {
                    return Err(std::io::Error::other(format!(
                        "more than the {total} bytes announced"
                    )));
                }
                file.write_all(&chunk.data).await?;
            }
            if received != first.total_size {
                return Err(std::io::Error::other(format!(
                    "snapshot truncated: {received} of {} bytes",
                    first.total_size
                )));
            }
            file.sync_all().await?;
            Ok::<u64, std::io::Error>(received)
        }
        .await;
        let received = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(ApiError::SnapshotTransfer(e).into());
            }
        };
        // Checked and decoded before anything is published or Raft hears of it.
        let checked_tmp = tmp.clone();
        let checked =
            tokio::task::spawn_blocking(move || crate::machine::check_snapshot_file(&checked_tmp))
                .await
                .map_err(ApiError::SnapshotTask)?;
        let checked = checked.and_then(|()| {
            if acts_previous_version() {
                refuse_format_2(&tmp)?;
            }
            Ok(())
        });
        if let Err(e) = checked {
            let _ = tokio::fs::remove_file(&tmp).await;
            return refuse(e.to_string());
        }
        let snaps = self.0.snapshots.clone();
        let published =
            tokio::task::spawn_blocking(move || snaps.publish(&tmp, meta.term, meta.index))
                .await
                .map_err(ApiError::SnapshotTask)?
                .map_err(ApiError::SnapshotPublish)?;
        if !published {
            tracing::info!(
                index = meta.index,
                term = meta.term,
                "received a snapshot this node already has; kept its own copy"
            );
        }
        tracing::info!(
            index = meta.index,
            term = meta.term,
            bytes = received,
            from = first.from,
            "snapshot received"
        );
        self.0.raft.step(msg).map_err(ApiError::Step)?;
        Ok(Response::new(pb::RaftAck {}))
    }
}
