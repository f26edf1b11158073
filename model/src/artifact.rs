//! Artifacts and the key layout that keeps their URIs unique.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{RunId, TaskId};

/// One artifact as recorded in run state and handed to a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// The artifact's name as the producer called it (the output key).
    pub name: String,
    pub uri: String,
    /// `schemaTitle` of the artifact type, e.g. `system.Dataset`.
    pub schema_title: String,
    #[serde(default)]
    pub schema_version: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Why a name cannot name an artifact (or an output, or a path segment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactNameError {
    #[error("artifact name is empty")]
    Empty,
    #[error("artifact name {0:?} contains \"..\" (path traversal)")]
    Traversal(String),
    #[error(
        "artifact name {name:?} contains {found:?}; only letters, digits, '_', '-' and '.' are allowed"
    )]
    Character { name: String, found: char },
}

/// Refuses artifact and output names that could escape their directory once joined into a
/// path or an object key.
pub fn validate_artifact_name(name: &str) -> Result<(), ArtifactNameError> {
    if name.is_empty() {
        return Err(ArtifactNameError::Empty);
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err(ArtifactNameError::Traversal(name.to_string()));
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(ArtifactNameError::Character {
            name: name.to_string(),
            found,
        });
    }
    Ok(())
}

/// The URI of one output artifact: unique per run, task, loop iteration and attempt, so that
/// parallel iterations and retries never overwrite each other's outputs.
///
/// `task_id` is the task's path in the run (`condition-1/train`, `for-loop-2/3/square`), made of
/// IR task names and iteration numbers, so every segment is already a safe name.
/// Where every artifact of a run lies: `<root>/<run id>`.
pub fn artifact_prefix(root: &str, run_id: &RunId) -> String {
    format!("{}/{}", root.trim_end_matches('/'), run_id)
}

pub fn artifact_uri(
    root: &str,
    run_id: &RunId,
    task_id: &TaskId,
    attempt: u32,
    output: &str,
) -> String {
    format!(
        "{}/{}/{}/attempt-{}/{}",
        root.trim_end_matches('/'),
        run_id,
        task_id,
        attempt,
        output
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn uris_differ_by_run_task_iteration_and_attempt() {
        let mut seen = BTreeSet::new();
        for run in ["r1", "r2"] {
            for task in [
                "train",
                "for-loop-2/0/square",
                "for-loop-2/1/square",
                "c/train",
            ] {
                for attempt in [1, 2] {
                    for out in ["model", "metrics"] {
                        assert!(seen.insert(artifact_uri(
                            "s3://b/p/",
                            &run.into(),
                            &task.into(),
                            attempt,
                            out
                        )));
                    }
                }
            }
        }
        assert_eq!(
            artifact_uri("file:///tmp/a/", &"r".into(), &"t".into(), 1, "o"),
            "file:///tmp/a/r/t/attempt-1/o"
        );
    }

    #[test]
    fn refuses_traversal_in_names() {
        assert_eq!(
            validate_artifact_name("../etc").unwrap_err().to_string(),
            r#"artifact name "../etc" contains ".." (path traversal)"#
        );
        assert_eq!(
            validate_artifact_name("a/b").unwrap_err().to_string(),
            r#"artifact name "a/b" contains '/'; only letters, digits, '_', '-' and '.' are allowed"#
        );
        assert!(validate_artifact_name("..").is_err());
        assert!(validate_artifact_name("").is_err());
        assert!(validate_artifact_name("model_v1.pkl").is_ok());
    }
}
