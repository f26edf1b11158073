//! What an agent may report: every output artifact of an attempt lies under that attempt's own
//! prefix (`<root>/<run>/<task>/attempt-<n>/`), where the step spec told the agent to write.
//! A report that names anything else (another run's object, a host file) would let an agent
//! forge or redirect what downstream steps and the cache read, so it is recorded as a failure
//! of the attempt, with the offending URI named, on every replica alike.

use gantry_model::{artifact_uri, RunId, StepOutcome, TaskId};

/// `outcome` as it may be recorded for attempt `attempt` of `task_id` in run `run_id`.
pub fn confine_outcome(
    root: &str,
    run_id: &RunId,
    task_id: &TaskId,
    attempt: u32,
    outcome: StepOutcome,
) -> StepOutcome {
    let StepOutcome::Succeeded { artifacts, .. } = &outcome else {
        return outcome;
    };
    let prefix = artifact_uri(root, run_id, task_id, attempt, "");
    let outside = artifacts
        .values()
        .flatten()
        .find(|a| !a.uri.starts_with(&prefix) || a.uri.contains("/../"));
    match outside {
        None => outcome,
        Some(a) => StepOutcome::Failed {
            error: format!(
                "the agent reported output {:?} at {}, outside the attempt's artifact prefix {prefix}; \
                 the report was refused",
                a.name, a.uri
            ),
            exit_code: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_model::ArtifactRef;
    use std::collections::BTreeMap;

    fn succeeded(uri: &str) -> StepOutcome {
        StepOutcome::Succeeded {
            parameters: BTreeMap::new(),
            artifacts: BTreeMap::from([(
                "model".to_string(),
                vec![ArtifactRef {
                    name: "model".into(),
                    uri: uri.into(),
                    schema_title: "system.Model".into(),
                    schema_version: String::new(),
                    metadata: Default::default(),
                }],
            )]),
        }
    }

    #[test]
    fn only_the_attempts_own_prefix_is_accepted() {
        let (r1, train) = (RunId::from("r1"), TaskId::from("train"));
        let ok = succeeded("s3://b/root/r1/train/attempt-2/model");
        assert_eq!(
            confine_outcome("s3://b/root", &r1, &train, 2, ok.clone()),
            ok
        );
        for bad in [
            "s3://b/root/r2/train/attempt-2/model",
            "s3://b/root/r1/train/attempt-1/model",
            "s3://b/root/r1/train/attempt-2/../../../r2/x",
            "file:///etc/shadow",
            "s3://other/root/r1/train/attempt-2/model",
        ] {
            let out = confine_outcome("s3://b/root", &r1, &train, 2, succeeded(bad));
            assert!(
                matches!(&out, StepOutcome::Failed { error, .. } if error.contains(bad)),
                "{bad}: {out:?}"
            );
        }
        let failed = StepOutcome::Failed {
            error: "x".into(),
            exit_code: Some(1),
        };
        assert_eq!(
            confine_outcome("s3://b/root", &r1, &train, 2, failed.clone()),
            failed
        );
    }
}
