//! Generated gRPC types and services of package `gantry.v1`, the metadata keys that go with
//! them, and the words clients print for their state enums.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("gantry.v1");
}

/// Metadata key of a coordinator's "not the leader" refusal: the leader's address
/// (`host:port`), so that agents and clients go straight to it.
pub const LEADER_HINT: &str = "gantry-leader";

/// The leader's address a refusal names in [`LEADER_HINT`], if any.
pub fn leader_hint(status: &tonic::Status) -> Option<&str> {
    status.metadata().get(LEADER_HINT)?.to_str().ok()
}

/// The word a client prints for a state: its proto name without the enum's prefix, so the
/// words come from the contract itself (`RUN_STATE_SUCCEEDED` is `SUCCEEDED`).
macro_rules! state_words {
    ($($enum:ident => $prefix:literal),* $(,)?) => {
        $(
            impl v1::$enum {
                /// The state as clients print it (`SUCCEEDED`, `LOST`...).
                pub fn word(self) -> &'static str {
                    let name = self.as_str_name();
                    name.strip_prefix($prefix).unwrap_or(name)
                }
            }
        )*
    };
}

state_words! {
    RunState => "RUN_STATE_",
    TaskState => "TASK_STATE_",
    AgentState => "AGENT_STATE_",
}

impl v1::RunState {
    /// The run has ended: it changes no more unless it is retried.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{AgentState, RunState, TaskState};
    use super::*;

    #[test]
    fn a_refusal_names_the_leader_in_its_metadata() {
        let mut s = tonic::Status::unavailable("node 2 is not the leader (leader: 1)");
        assert_eq!(leader_hint(&s), None);
        s.metadata_mut()
            .insert(LEADER_HINT, "10.0.0.1:7070".parse().unwrap());
        assert_eq!(leader_hint(&s), Some("10.0.0.1:7070"));
    }

    #[test]
    fn states_print_as_their_names_without_prefix() {
        assert_eq!(RunState::Succeeded.word(), "SUCCEEDED");
        assert_eq!(RunState::Canceling.word(), "CANCELING");
        assert_eq!(TaskState::Cached.word(), "CACHED");
        assert_eq!(AgentState::Disconnected.word(), "DISCONNECTED");
        assert_eq!(RunState::Unspecified.word(), "UNSPECIFIED");
    }
}
