//! Every refusal the API gives, by what happened, and the one table from those to gRPC status
//! codes ([`From<ApiError> for Status`](ApiError)). Handlers return `Result<_, Status>` as
//! tonic requires and raise [`ApiError`]s with `?`; nothing else in the API builds a `Status`
//! from scratch (a refusal relayed from the leader passes through as it came).
//!
//! | code | when |
//! | --- | --- |
//! | `InvalidArgument` | a malformed request or document: pipeline, parameters, settings, messages |
//! | `NotFound` | an unknown run, agent or member |
//! | `AlreadyExists` | a run id or a member id already taken |
//! | `FailedPrecondition` | the cluster's state forbids it now: retrying a run still going, removing the last voter, a second ACL bootstrap |
//! | `PermissionDenied` | a peer or an agent acting beyond its certificate (the authorization layer, `crate::auth`, refuses callers before any handler runs) |
//! | `ResourceExhausted` | too many tokens |
//! | `Unavailable` | no leader, not the leader (with the leader's address in `gantry-leader`), a change not committed: retry |
//! | `Internal` | storage or encoding failures of this node |
//!
//! Three older codes stay as they were: `DeadlineExceeded` for a learner that did not catch
//! up, `Aborted` for a snapshot transfer cut off, `DataLoss` for a log follower that fell
//! behind.

use std::time::Duration;

use gantry_core::engine::{HostRefusal, Unsupported};
use gantry_core::ir::bounds::BoundError;
use gantry_core::ir::IrError;
use gantry_core::state::acl::AclError;
use gantry_core::state::Rejection;
use gantry_model::{AgentId, RunId, TaintError};
use tonic::{Code, Status};

use crate::raft::RaftError;
use crate::server::{ProposeError, LEADER_HINT};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // ---- the replicated state said no
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Propose(#[from] ProposeError),

    // ---- runs
    #[error("invalid pipeline: {0}")]
    InvalidPipeline(IrError),
    #[error("unsupported pipeline: {0}")]
    UnsupportedPipeline(Unsupported),
    /// Reserved variables, importer URIs outside the URI policy.
    #[error("refused: {0}")]
    HostRefusal(HostRefusal),
    #[error("invalid parameters: {0}")]
    InvalidParameters(IrError),
    /// Over one of the coordinator's submission limits; the error names the flag.
    #[error("refused: {0}")]
    OverLimit(BoundError),
    #[error("invalid input artifacts: {0}")]
    InvalidArtifacts(IrError),
    #[error("the run timeout must not be negative")]
    NegativeTimeout,
    #[error("the cache max age must not be negative")]
    NegativeCacheAge,
    /// A per-task setting (`setting`: `timeout`, `cache max age`) names no task of the
    /// pipeline; `known` lists those it has.
    #[error("{setting} for task {task:?}: the pipeline has no such task (tasks: {known})")]
    UnknownTask {
        setting: &'static str,
        task: String,
        known: String,
    },
    #[error("{setting} for task {task:?} must be positive")]
    NotPositive { setting: &'static str, task: String },
    #[error("run {0} not found")]
    RunNotFound(RunId),
    #[error("run {run} has no task named {task:?} (yet): give an IR task name or a task id")]
    UnknownRunTask { run: RunId, task: String },
    #[error("several tasks are named {task:?} (a loop): give one of their ids: {ids}")]
    AmbiguousTask { task: String, ids: String },
    #[error("a rejection needs a reason (--reason)")]
    RejectWithoutReason,
    /// Applying a command answered with an outcome of another command (a bug).
    #[error("unexpected outcome {0}")]
    UnexpectedOutcome(String),
    #[error("{0} log lines dropped (slow reader)")]
    LogsDropped(u64),

    // ---- agents
    #[error("attempt is missing")]
    MissingAttempt,
    #[error("session closed before registering")]
    NoRegistration,
    #[error("the first message of a session must be Register")]
    FirstNotRegister,
    #[error("agent_id is empty")]
    EmptyAgentId,
    #[error("inventory_json: {0}")]
    Inventory(serde_json::Error),
    #[error(transparent)]
    Taint(#[from] TaintError),
    #[error("agent {0} is not registered")]
    AgentNotFound(AgentId),

    // ---- routing to the leader
    /// `hint`: the leader's address when known, sent as `gantry-leader` metadata.
    #[error(
        "node {node} is not the leader (leader: {})",
        if *leader_id == 0 { "unknown".to_string() } else { leader_id.to_string() }
    )]
    NotLeader {
        node: u64,
        leader_id: u64,
        hint: Option<String>,
    },
    #[error("no leader elected within {wait:?} (node {node}, term {term})")]
    NoLeader {
        wait: Duration,
        node: u64,
        term: u64,
    },
    #[error("cannot confirm a current read: {0}")]
    ReadBarrier(RaftError),
    #[error("bad peer address {address}: {error}")]
    PeerAddress {
        address: String,
        error: tonic::transport::Error,
    },

    // ---- membership
    #[error("the new member's address is empty")]
    EmptyAddress,
    #[error("cannot reach a coordinator at {address}: {message}")]
    Unreachable { address: String, message: String },
    #[error(
        "node id {id} is already a member at {}",
        address.as_deref().unwrap_or("an unknown address")
    )]
    MemberElsewhere { id: u64, address: Option<String> },
    #[error(
        "the coordinator at {address} (node {id}) already belongs to a cluster with members \
         {members:?}; start it with an empty data directory and without --bootstrap or --peer"
    )]
    InOtherCluster {
        address: String,
        id: u64,
        members: Vec<u64>,
    },
    #[error("{0}")]
    EncodeMembers(serde_json::Error),
    #[error(
        "node {id} is a learner but has not caught up within {within:?}; run `gantry cluster \
         join {address}` again to retry the promotion"
    )]
    NotCaughtUp {
        id: u64,
        address: String,
        within: Duration,
    },
    #[error("node {0} is not a member")]
    NotAMember(u64),
    #[error("cannot remove the last voter: the cluster would have no one to decide")]
    LastVoter,
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    #[error("leadership transfer to node {0} did not complete; retry")]
    TransferIncomplete(u64),
    #[error("node {0} is not a voter: only a voter can lead")]
    NotAVoter(u64),
    #[error("leadership came back here; retry")]
    LeadershipCameBack,
    #[error("the cluster is still leaving a joint configuration; retry")]
    JointConfiguration,
    #[error("membership change not committed: {0}")]
    MembershipChange(RaftError),

    // ---- raft peers
    #[error("a peer claims this node's own id {0}: two coordinators share an id")]
    SharedNodeId(u64),
    #[error("undecodable raft message: {0}")]
    UndecodableMessage(protobuf::ProtobufError),
    #[error("raft message for node {to} reached node {node}")]
    Misaddressed { to: u64, node: u64 },
    #[error("{0}")]
    Step(RaftError),
    #[error("empty snapshot stream")]
    EmptySnapshotStream,
    #[error("undecodable snapshot message: {0}")]
    UndecodableSnapshot(protobuf::ProtobufError),
    #[error("the first chunk must carry a MsgSnapshot for this node")]
    NotASnapshot,
    #[error("snapshot transfer: {0}")]
    SnapshotTransfer(std::io::Error),
    #[error("{0}")]
    SnapshotTask(tokio::task::JoinError),
    #[error("snapshot publish: {0}")]
    SnapshotPublish(std::io::Error),
    /// A received snapshot that is too large, stale, a second concurrent one, or does not
    /// verify or decode: nothing of it was kept.
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
    /// Raft traffic that is not what its certificate, cluster or membership allows.
    #[error("{0}")]
    PeerRefused(String),

    // ---- identities
    /// An agent acting as another, or a session without an agent certificate.
    #[error("{0}")]
    AgentRefused(String),

    // ---- tokens
    #[error("role {0:?} is not one of admin, submitter, viewer")]
    BadRole(String),
    #[error("name must be 1 to {max} characters")]
    BadTokenName { max: usize },
    #[error("ttl_ms {ttl} is not between 1 and {max} (ten years)")]
    BadTtl { ttl: i64, max: i64 },
    #[error("the run's ttl_ms {ttl} is not between 0 (the coordinator's --retain-runs-for) and {max} (ten years)")]
    BadRunTtl { ttl: i64, max: i64 },
}

impl ApiError {
    /// The gRPC code of each situation: the table the module docs sum up.
    pub fn code(&self) -> Code {
        use ApiError as E;
        match self {
            E::Rejected(r) => match r {
                Rejection::RunNotFound(_) | Rejection::AgentNotFound(_) => Code::NotFound,
                Rejection::RunExists(_) => Code::AlreadyExists,
                Rejection::NotRetryable(_) | Rejection::MemberStoreConflict { .. } => {
                    Code::FailedPrecondition
                }
                Rejection::Approval(a) => match a {
                    gantry_core::engine::approval::ApprovalError::NoTask { .. } => Code::NotFound,
                    gantry_core::engine::approval::ApprovalError::ReasonTooLong(_) => {
                        Code::InvalidArgument
                    }
                    _ => Code::FailedPrecondition,
                },
                Rejection::Catalog(c) => {
                    use gantry_core::state::catalog::CatalogError as C;
                    match c {
                        C::ExperimentExists(_)
                        | C::PipelineExists(_)
                        | C::VersionExists { .. }
                        | C::IdTaken { .. } => Code::AlreadyExists,
                        C::ExperimentNotFound(_)
                        | C::PipelineNotFound(_)
                        | C::VersionNotFound { .. }
                        | C::RecurringRunNotFound(_) => Code::NotFound,
                        C::ExperimentHasRuns { .. }
                        | C::ExperimentHasSchedules { .. }
                        | C::PipelineHasVersions { .. }
                        | C::NotFired(_) => Code::FailedPrecondition,
                        C::Invalid(_) => Code::InvalidArgument,
                        C::Full { .. } => Code::ResourceExhausted,
                    }
                }
                Rejection::Webhook(w) => {
                    use gantry_core::state::notify::WebhookError as W;
                    match w {
                        W::Exists(_) => Code::AlreadyExists,
                        W::NotFound(_) => Code::NotFound,
                        W::TooMany => Code::ResourceExhausted,
                        W::Invalid(_) => Code::InvalidArgument,
                        W::MarkAhead { .. } => Code::FailedPrecondition,
                    }
                }
                Rejection::Acl(a) => match a {
                    AclError::AlreadyBootstrapped => Code::FailedPrecondition,
                    AclError::NameTaken(_) => Code::AlreadyExists,
                    AclError::NotFound(_) => Code::NotFound,
                    AclError::TooMany => Code::ResourceExhausted,
                    AclError::BadName(_) | AclError::Malformed(_) => Code::InvalidArgument,
                },
            },
            E::Propose(p) => match p {
                ProposeError::Raft(RaftError::Storage(_)) | ProposeError::Encode(_) => {
                    Code::Internal
                }
                ProposeError::Raft(RaftError::DiskFull(_)) => Code::ResourceExhausted,
                ProposeError::Raft(_) | ProposeError::NoLeader(_) => Code::Unavailable,
                ProposeError::Timeout(_) => Code::DeadlineExceeded,
            },
            E::InvalidPipeline(_)
            | E::UnsupportedPipeline(_)
            | E::HostRefusal(_)
            | E::InvalidParameters(_)
            | E::OverLimit(_)
            | E::InvalidArtifacts(_)
            | E::NegativeTimeout
            | E::NegativeCacheAge
            | E::UnknownTask { .. }
            | E::NotPositive { .. }
            | E::MissingAttempt
            | E::NoRegistration
            | E::FirstNotRegister
            | E::EmptyAgentId
            | E::Inventory(_)
            | E::Taint(_)
            | E::EmptyAddress
            | E::UndecodableMessage(_)
            | E::EmptySnapshotStream
            | E::UndecodableSnapshot(_)
            | E::NotASnapshot
            | E::BadRole(_)
            | E::BadTokenName { .. }
            | E::BadTtl { .. }
            | E::BadRunTtl { .. } => Code::InvalidArgument,
            E::PeerRefused(_) | E::AgentRefused(_) => Code::PermissionDenied,
            E::RunNotFound(_)
            | E::AgentNotFound(_)
            | E::NotAMember(_)
            | E::UnknownRunTask { .. } => Code::NotFound,
            E::AmbiguousTask { .. } | E::RejectWithoutReason => Code::InvalidArgument,
            E::MemberElsewhere { .. } => Code::AlreadyExists,
            E::InOtherCluster { .. }
            | E::LastVoter
            | E::NoOtherVoter
            | E::NotAVoter(_)
            | E::SharedNodeId(_)
            | E::Misaddressed { .. } => Code::FailedPrecondition,
            E::NotLeader { .. }
            | E::NoLeader { .. }
            | E::ReadBarrier(_)
            | E::Unreachable { .. }
            | E::TransferIncomplete(_)
            | E::LeadershipCameBack
            | E::JointConfiguration
            | E::MembershipChange(_)
            | E::Step(_) => Code::Unavailable,
            E::UnexpectedOutcome(_)
            | E::PeerAddress { .. }
            | E::EncodeMembers(_)
            | E::SnapshotTask(_)
            | E::SnapshotPublish(_) => Code::Internal,
            E::NotCaughtUp { .. } => Code::DeadlineExceeded,
            E::SnapshotTransfer(_) => Code::Aborted,
            E::SnapshotRefused(_) => Code::FailedPrecondition,
            E::LogsDropped(_) => Code::DataLoss,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let mut status = Status::new(e.code(), e.to_string());
        // Agents go straight to the leader this names instead of trying every coordinator.
        if let ApiError::NotLeader {
            hint: Some(addr), ..
        } = &e
        {
            if let Ok(v) = addr.parse() {
                status.metadata_mut().insert(LEADER_HINT, v);
            }
        }
        status
    }
}

/// So that `?` on [`Coordinator::propose`](crate::server::Coordinator::propose) works in a
/// handler: through [`ApiError`]'s table, like every other refusal.
impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Self {
        ApiError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_codes_and_messages() {
        let s = Status::from(ApiError::Rejected(Rejection::RunNotFound("r1".into())));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "run r1 not found")
        );
        let s = Status::from(ApiError::Rejected(Rejection::RunExists("r1".into())));
        assert_eq!(s.code(), Code::AlreadyExists);
        let s = Status::from(ApiError::Propose(ProposeError::Encode("x".into())));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Internal, "cannot encode the command: x")
        );
        let s = Status::from(ApiError::NoLeader {
            wait: Duration::from_secs(5),
            node: 2,
            term: 7,
        });
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::Unavailable,
                "no leader elected within 5s (node 2, term 7)"
            )
        );
    }

    #[test]
    fn a_not_leader_refusal_names_the_leader_in_metadata() {
        let s = Status::from(ApiError::NotLeader {
            node: 2,
            leader_id: 1,
            hint: Some("10.0.0.1:7070".into()),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "node 2 is not the leader (leader: 1)");
        assert_eq!(
            s.metadata().get(LEADER_HINT).and_then(|v| v.to_str().ok()),
            Some("10.0.0.1:7070")
        );
        let s = Status::from(ApiError::NotLeader {
            node: 2,
            leader_id: 0,
            hint: None,
        });
        assert_eq!(s.message(), "node 2 is not the leader (leader: unknown)");
        assert!(s.metadata().get(LEADER_HINT).is_none());
    }
}
