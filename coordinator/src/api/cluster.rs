//! ClusterService: the node's view of the cluster.

use gantry_proto::v1 as pb;
use gantry_proto::v1::cluster_service_server::ClusterService;
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl ClusterService for Api {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let s = self.0.raft.status();
        let (runs, active_runs, agents) = {
            let st = self.0.state.read();
            (st.runs.len(), st.active_runs(), st.agents.len())
        };
        let members = s
            .voters
            .iter()
            .map(|id| pb::Member {
                id: *id,
                address: if *id == s.id {
                    self.0.advertise.clone()
                } else {
                    String::new()
                },
                role: if *id == s.leader_id {
                    "LEADER"
                } else {
                    "FOLLOWER"
                }
                .to_string(),
            })
            .collect();
        Ok(Response::new(pb::ClusterStatus {
            node_id: s.id,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            members,
            runs: runs as u32,
            active_runs: active_runs as u32,
            agents: agents as u32,
        }))
    }
}
