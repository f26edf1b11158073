//! The ids of runs, tasks and agents, and the one identity of an attempt.
//!
//! Each id is a string newtype so that a run id cannot be passed where a task id is meant.
//! They are `#[serde(transparent)]`: the JSON of the Raft log, of snapshots and of the gRPC
//! payloads is the same as when they were bare strings, so old logs and snapshots still load.
//! `Borrow<str>` lets a map keyed by an id be looked up with a `&str`.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Defines a string newtype id with the conversions and comparisons every id shares.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// As the bare string: messages quote ids with `{:?}` (`task "train" failed`).
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id! {
    /// A run, chosen by the coordinator when it is submitted (a UUID).
    RunId
}

string_id! {
    /// A task's path in its run, unique within it: IR task names and loop iteration numbers
    /// joined by `/` (`condition-1/train`, `for-loop-2/3/square`). The root DAG's is empty.
    TaskId
}

string_id! {
    /// An agent, as it registers (its host name unless `--agent-id` says otherwise).
    AgentId
}

/// One attempt of one task of one run: the identity that every report, log line, container
/// label and cancel names. The field names are those of the JSON in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptKey {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
}

impl AttemptKey {
    pub fn new(run_id: impl Into<RunId>, task_id: impl Into<TaskId>, attempt: u32) -> Self {
        AttemptKey {
            run_id: run_id.into(),
            task_id: task_id.into(),
            attempt,
        }
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.run_id, self.task_id, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn ids_encode_as_bare_strings() {
        let run = RunId::from("r-1");
        assert_eq!(serde_json::to_string(&run).unwrap(), "\"r-1\"");
        let back: RunId = serde_json::from_str("\"r-1\"").unwrap();
        assert_eq!(back, run);
        // As map keys too (the state's maps are keyed by ids).
        let m = BTreeMap::from([(TaskId::from("a/b"), 1)]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a/b":1}"#);
    }

    #[test]
    fn maps_keyed_by_ids_are_looked_up_with_str() {
        let m = BTreeMap::from([(AgentId::from("a"), 1), (AgentId::from("b"), 2)]);
        assert_eq!(m.get("b"), Some(&2));
        assert_eq!(m["a"], 1);
        let a = AgentId::from("a");
        assert_eq!(a, "a");
        assert_eq!("a", a);
        assert_eq!(a, *"a");
    }

    #[test]
    fn an_attempt_key_keeps_its_field_names_and_display() {
        let k = AttemptKey::new("r", "loop/0/t", 2);
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            r#"{"run_id":"r","task_id":"loop/0/t","attempt":2}"#
        );
        assert_eq!(k.to_string(), "r/loop/0/t/2");
        // Messages quote ids with `{:?}`, as they quoted the strings.
        assert_eq!(format!("{:?}", k.task_id), r#""loop/0/t""#);
    }
}
