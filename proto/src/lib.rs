//! Generated gRPC types and services of package `gantry.v1`, and the words clients print for
//! their state enums.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("gantry.v1");
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

    #[test]
    fn states_print_as_their_names_without_prefix() {
        assert_eq!(RunState::Succeeded.word(), "SUCCEEDED");
        assert_eq!(RunState::Canceling.word(), "CANCELING");
        assert_eq!(TaskState::Cached.word(), "CACHED");
        assert_eq!(AgentState::Disconnected.word(), "DISCONNECTED");
        assert_eq!(RunState::Unspecified.word(), "UNSPECIFIED");
    }
}
