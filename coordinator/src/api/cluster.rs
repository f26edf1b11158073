//! ClusterService: the node's view of the cluster, and membership changes.

use std::time::Duration;

use gantry_proto::v1 as pb;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::cluster_service_server::ClusterService;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use tonic::{Request, Response, Status};

use gantry_core::state::Command;

use super::status::ApiError;
use super::{forwarded, relay, Api, ROUTE_WAIT};
use crate::raft::{Members, NodeStatus};
use crate::server::Route;

/// How long a new learner may take to catch up (a snapshot of a large state included).
const CATCH_UP: Duration = Duration::from_secs(300);

/// One membership change with joint consensus: `Implicit` makes raft-rs enter the joint
/// configuration even for a single change and leave it on its own once committed.
fn joint_change(kind: ConfChangeType, node_id: u64, context: Vec<u8>) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node_id;
    let mut cc = ConfChangeV2::default();
    cc.set_transition(ConfChangeTransition::Implicit);
    cc.set_changes(vec![single].into());
    cc.context = context.into();
    cc
}

fn member_role(s: &NodeStatus, id: u64) -> &'static str {
    if id == s.leader_id {
        "LEADER"
    } else if s.learners.contains(&id) {
        "LEARNER"
    } else {
        "FOLLOWER"
    }
}

impl Api {
    fn status_proto(&self) -> pb::ClusterStatus {
        let s = self.0.raft.status();
        let (runs, active_runs, agents, stores) = {
            let st = self.0.state.read();
            (
                st.runs.len(),
                st.active_runs(),
                st.agents.len(),
                st.member_stores.clone(),
            )
        };
        let mut ids: Vec<u64> = s.voters.iter().chain(s.learners.iter()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        let members = ids
            .into_iter()
            .map(|id| pb::Member {
                id,
                address: s.members.get(&id).cloned().unwrap_or_default(),
                role: member_role(&s, id).to_string(),
                matched: s.matched.get(&id).copied().unwrap_or_default(),
                store: stores
                    .get(&id)
                    .map(|store| format!("{store:016x}"))
                    .unwrap_or_default(),
            })
            .collect();
        pb::ClusterStatus {
            node_id: s.id,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            members,
            runs: runs as u32,
            active_runs: active_runs as u32,
            agents: agents as u32,
            role: s.role.to_string(),
            first_index: s.first_index,
            snapshot_index: s.snapshot_index,
            disk_full: s.disk_full.clone().unwrap_or_default(),
        }
    }

    /// Waits until the joint phase of the last change is over, so the next change may start.
    async fn settle(&self) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.0.raft.status().in_joint {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::JointConfiguration);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Forgets node `id`'s committed store record, if there is one.
    async fn forget_store(&self, id: u64) -> Result<(), ApiError> {
        if !self.0.state.read().member_stores.contains_key(&id) {
            return Ok(());
        }
        self.0
            .propose(Command::ForgetMemberStore { node: id })
            .await?;
        tracing::info!(node = id, "forgot the node's store record");
        Ok(())
    }

    async fn change(&self, cc: ConfChangeV2) -> Result<(), ApiError> {
        self.settle().await?;
        self.0
            .raft
            .change_membership(cc)
            .await
            .map_err(ApiError::MembershipChange)?;
        self.settle().await
    }
}

#[tonic::async_trait]
impl ClusterService for Api {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.status_proto()))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return ClusterServiceClient::new(ch).add_member(relay(req)).await;
        }
        let address = req.into_inner().address.trim().to_string();
        if address.is_empty() {
            return Err(ApiError::EmptyAddress.into());
        }
        // Ask the new node who it is; it must not already belong to a cluster.
        let theirs = ClusterServiceClient::new(self.0.channel(&address)?)
            .status(pb::ClusterStatusRequest {})
            .await
            .map_err(|e| ApiError::Unreachable {
                address: address.clone(),
                message: e.message().to_string(),
            })?
            .into_inner();
        let id = theirs.node_id;
        let ours = self.0.raft.status();
        let is_voter = ours.voters.contains(&id);
        let is_learner = ours.learners.contains(&id);
        if (is_voter || is_learner) && ours.members.get(&id) != Some(&address) {
            return Err(ApiError::MemberElsewhere {
                id,
                address: ours.members.get(&id).cloned(),
            }
            .into());
        }
        if !is_voter && !is_learner && !theirs.members.is_empty() {
            return Err(ApiError::InOtherCluster {
                address,
                id,
                members: theirs.members.iter().map(|m| m.id).collect(),
            }
            .into());
        }
        if is_voter {
            return Ok(Response::new(self.status_proto()));
        }
        if !is_learner {
            // A node that left may come back with a new data directory: its old record goes
            // before it is added, also where the removal did not get to forget it.
            self.forget_store(id).await?;
            let context = serde_json::to_vec(&Members::from([(id, address.clone())]))
                .map_err(ApiError::EncodeMembers)?;
            self.change(joint_change(ConfChangeType::AddLearnerNode, id, context))
                .await?;
            tracing::info!(node = id, %address, "added as a learner");
        }
        // Promote only once the learner holds the log up to now, so the voter set never waits
        // on a node that is still catching up.
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let s = self.0.raft.status();
            if !s.is_leader {
                return Err(self.0.not_leader().into());
            }
            if s.matched.get(&id).is_some_and(|m| *m >= s.commit_index) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::NotCaughtUp {
                    id,
                    address,
                    within: CATCH_UP,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.change(joint_change(ConfChangeType::AddNode, id, Vec::new()))
            .await?;
        tracing::info!(node = id, %address, "promoted to voter");
        Ok(Response::new(self.status_proto()))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return ClusterServiceClient::new(ch)
                .remove_member(relay(req))
                .await;
        }
        let id = req.get_ref().node_id;
        let s = self.0.raft.status();
        if !s.voters.contains(&id) && !s.learners.contains(&id) {
            return Err(ApiError::NotAMember(id).into());
        }
        if s.voters.len() == 1 && s.voters.contains(&id) {
            return Err(ApiError::LastVoter.into());
        }
        if id == self.0.node_id {
            // Hand leadership to the most up-to-date voter first, then let it remove us.
            self.hand_over(0).await?;
            return match self.0.route_write(false, ROUTE_WAIT).await? {
                Route::Leader(ch) => {
                    ClusterServiceClient::new(ch)
                        .remove_member(relay(req))
                        .await
                }
                Route::Local => Err(ApiError::LeadershipCameBack.into()),
            };
        }
        self.change(joint_change(ConfChangeType::RemoveNode, id, Vec::new()))
            .await?;
        tracing::info!(node = id, "removed from the cluster");
        // Best effort: the leader's recorder and the next join forget it too.
        if let Err(e) = self.forget_store(id).await {
            tracing::warn!(node = id, error = %e, "the removed node's store record stays for now");
        }
        Ok(Response::new(self.status_proto()))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return ClusterServiceClient::new(ch)
                .transfer_leader(relay(req))
                .await;
        }
        let to = req.get_ref().node_id;
        if to != self.0.node_id {
            let to = self.hand_over(to).await?;
            tracing::info!(to, "leadership handed over");
        }
        Ok(Response::new(self.status_proto()))
    }
}

impl Api {
    /// On the leader: hands leadership to voter `to` (0: the most up-to-date other voter) and
    /// waits, at most 5 s, until this node follows it. The voter it went to.
    async fn hand_over(&self, to: u64) -> Result<u64, ApiError> {
        let s = self.0.raft.status();
        let me = self.0.node_id;
        let to = if to == 0 {
            let Some((&to, _)) = s
                .matched
                .iter()
                .filter(|(m, _)| **m != me && s.voters.contains(m))
                .max_by_key(|(_, matched)| **matched)
            else {
                return Err(ApiError::NoOtherVoter);
            };
            to
        } else if s.voters.contains(&to) {
            to
        } else {
            return Err(ApiError::NotAVoter(to));
        };
        self.0.raft.transfer_leader(to);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while {
            let s = self.0.raft.status();
            s.is_leader || s.leader_id != to
        } {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::TransferIncomplete(to));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(to)
    }
}
