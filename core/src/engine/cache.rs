//! Execution caching: a container task whose executor and resolved inputs match an earlier
//! successful execution reuses that execution's outputs instead of running.
//!
//! The key is a SHA-256 over the container (image, command, args, env), the component's output
//! declarations and the task's resolved inputs (parameter values, input artifact URIs and
//! types), as KFP keys its cache. Resources and the run's identity are left out: they do not
//! change what the step computes. Whether a task may use the cache is the IR's
//! `cachingOptions.enableCache` and the run's [`CachePolicy`] (off switch, maximum age).
//!
//! The entries live in the replicated state; whether an entry's artifacts still exist is
//! checked by the leader before it proposes the hit (I/O stays out of this crate).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::advance::finish;
use super::{RunRecord, TaskKind, TaskOutputs, TaskRecord, TaskState};
use crate::ir::{ComponentSpec, ExecutorSpec, Implementation};

/// How a run uses the cache, chosen at submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePolicy {
    /// False: no task of the run reads the cache (its successes are still recorded).
    pub enabled: bool,
    /// Entries older than this (ms) are not used; `None`: any age.
    pub max_age_ms: Option<i64>,
    /// Per task name, overriding `max_age_ms`.
    pub task_max_age_ms: BTreeMap<String, i64>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            enabled: true,
            max_age_ms: None,
            task_max_age_ms: BTreeMap::new(),
        }
    }
}

impl CachePolicy {
    pub fn max_age_for(&self, task_name: &str) -> Option<i64> {
        self.task_max_age_ms
            .get(task_name)
            .copied()
            .or(self.max_age_ms)
    }
}

/// A successful execution others may reuse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub run_id: gantry_model::RunId,
    pub task_id: gantry_model::TaskId,
    pub outputs: TaskOutputs,
    /// When the execution's result was recorded.
    pub created_at: i64,
}

impl CacheEntry {
    /// Whether `task` of `run` may use this entry at `now`.
    pub fn usable_by(&self, run: &RunRecord, task: &TaskRecord, now: i64) -> bool {
        run.caching.enabled
            && run
                .caching
                .max_age_for(&task.name)
                .is_none_or(|max| now - self.created_at <= max)
    }

    /// The URIs of the artifacts a hit would hand on; they must all still exist.
    pub fn artifact_uris(&self) -> impl Iterator<Item = &str> {
        self.outputs
            .artifacts
            .values()
            .flatten()
            .map(|a| a.uri.as_str())
    }
}

/// The cache key of a container task whose inputs are resolved; `None` for anything else.
pub(crate) fn cache_key(run: &RunRecord, comp: &ComponentSpec, rec: &TaskRecord) -> Option<String> {
    if rec.kind != TaskKind::Container {
        return None;
    }
    let Implementation::Executor(label) = &comp.implementation else {
        return None;
    };
    let Some(ExecutorSpec::Container(c)) = run.pipeline.executors.get(label) else {
        return None;
    };
    let artifacts: BTreeMap<&String, Vec<(&str, &str)>> = rec
        .inputs
        .artifacts
        .iter()
        .map(|(name, list)| {
            (
                name,
                list.iter()
                    .map(|a| (a.uri.as_str(), a.schema_title.as_str()))
                    .collect(),
            )
        })
        .collect();
    let material = json!({
        "version": 1,
        "container": {
            "image": c.image,
            "command": c.command,
            "args": c.args,
            "env": c.env,
        },
        "outputs": {
            "parameters": comp.output_parameters,
            "artifacts": comp.output_artifacts,
        },
        "inputs": {
            "parameters": rec.inputs.parameters,
            "artifacts": artifacts,
        },
    });
    let bytes = serde_json::to_vec(&material).ok()?;
    let digest = Sha256::digest(&bytes);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Marks the ready task `task_id` CACHED with `entry`'s outputs. False (nothing changed) if the
/// task is not a ready container task.
pub fn record_cached(
    run: &mut RunRecord,
    task_id: &gantry_model::TaskId,
    entry: &CacheEntry,
    now: i64,
) -> bool {
    let Some(rec) = run.tasks.get_mut(task_id) else {
        return false;
    };
    if rec.kind != TaskKind::Container || rec.state != TaskState::Ready {
        return false;
    }
    rec.outputs = entry.outputs.clone();
    rec.started_at = Some(now);
    rec.cached_from = Some(format!("{}/{}", entry.run_id, entry.task_id));
    finish(rec, TaskState::Cached, None, now);
    true
}
