//! The leader commits which data directory (store id) each member speaks from.
//!
//! Each node remembers the first store id it hears from a peer ([`StoreIds`](crate::raft::StoreIds)),
//! but a member that never spoke to this node before its disk was lost would be taken at its
//! new word: in a three-node cluster whose leader was node 2, node 1 may never have heard from
//! node 3. Once the leader's record is committed, every member refuses a wiped copy of any
//! member ([`Command::RecordMemberStore`]), and a removed member's record goes, so that it may
//! join again with a new data directory.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::state::Command;

use crate::server::Coordinator;

/// How often the leader compares what it heard with what is committed. Cheap: a proposal goes
/// out only when a record is missing or stale.
const EVERY: Duration = Duration::from_millis(200);
/// A record that cannot commit now is tried again on the next pass.
const PROPOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn record_member_stores(c: Arc<Coordinator>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let s = c.raft.status();
        if !s.is_leader {
            continue;
        }
        for cmd in missing_records(&c, &s) {
            let what = match &cmd {
                Command::RecordMemberStore { node, store } => {
                    format!("record node {node}'s store {store:016x}")
                }
                Command::ForgetMemberStore { node } => format!("forget node {node}'s store"),
                other => format!("{other:?}"),
            };
            match tokio::time::timeout(PROPOSE_WAIT, c.propose(cmd)).await {
                Ok(Ok(applied)) => match applied.result {
                    Ok(_) => tracing::info!("member stores: {what}: committed"),
                    Err(e) => tracing::warn!(error = %e, "member stores: {what}: refused"),
                },
                Ok(Err(e)) => tracing::debug!(error = %e, "member stores: {what}: not committed"),
                Err(_) => tracing::debug!("member stores: {what}: not committed in time"),
            }
        }
    }
}

/// The records the leader should propose now: each member's store as this node knows it
/// (its own, or the first one heard from the peer) where none is committed, and the removal
/// of records of nodes that are no longer members.
fn missing_records(c: &Coordinator, s: &crate::raft::NodeStatus) -> Vec<Command> {
    let committed = c.state.read().member_stores.clone();
    let is_member =
        |id: &u64| s.voters.contains(id) || s.learners.contains(id) || s.outgoing.contains(id);
    let mut out = Vec::new();
    for node in s.voters.iter().chain(&s.learners) {
        if committed.contains_key(node) {
            continue;
        }
        let store = if *node == c.node_id {
            Some(c.store_ids.own())
        } else {
            c.store_ids.known(*node)
        };
        if let Some(store) = store {
            out.push(Command::RecordMemberStore { node: *node, store });
        }
    }
    // Only while no membership change is under way, so that a joint configuration's outgoing
    // voters keep theirs.
    if s.outgoing.is_empty() && !s.in_joint {
        for node in committed.keys().filter(|id| !is_member(id)) {
            out.push(Command::ForgetMemberStore { node: *node });
        }
    }
    out
}
