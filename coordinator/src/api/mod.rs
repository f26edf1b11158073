//! gRPC services. Proto types are converted to domain types here, at the edge.

mod agents;
mod cluster;
pub mod convert;
mod runs;

use std::sync::Arc;

use crate::server::Coordinator;

#[derive(Clone)]
pub struct Api(pub Arc<Coordinator>);
