//! gRPC services. Proto types are converted to domain types here, at the edge.

mod acl;
mod agents;
mod cluster;
pub mod convert;
pub mod parsed;
mod raft_peer;
mod runs;
pub mod status;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::Request;

use crate::server::{Coordinator, FORWARDED};

/// How long a write waits for a leader before the client is told to retry.
pub const ROUTE_WAIT: Duration = Duration::from_secs(5);

pub fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

/// The same request, marked as forwarded once, for the leader. The caller's token goes along:
/// the leader authorizes the original caller, not the node that forwards.
pub fn relay<T>(req: Request<T>) -> Request<T> {
    let token = req.metadata().get("authorization").cloned();
    let mut out = Request::new(req.into_inner());
    out.metadata_mut()
        .insert(FORWARDED, MetadataValue::from_static("1"));
    if let Some(t) = token {
        out.metadata_mut().insert("authorization", t);
    }
    out
}

#[derive(Clone)]
pub struct Api(pub Arc<Coordinator>);
