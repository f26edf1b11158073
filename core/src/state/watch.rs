//! Which runs the leader's pass must look at for time-outs and cache hits, kept beside the
//! runs so that a pass walks those instead of every run (a fleet of thousands of queued runs
//! without timeouts or usable cache would otherwise cost a walk of all of them per commit,
//! under the lock apply waits on).
//!
//! Derived from the runs, never encoded: a state decoded from a snapshot has it unbuilt, the
//! walks then fall back to every run, and the next apply builds it. Membership depends only
//! on what a run is given at creation (its limits and cache policy), so it changes only when a
//! run is created or removed.

use std::collections::BTreeSet;

use gantry_model::RunId;

use crate::engine::RunRecord;

#[derive(Debug, Clone, Default)]
pub struct WatchIndex {
    built: bool,
    /// (created_at, run id) of the runs with a run, task or approval timeout.
    timed: BTreeSet<(i64, RunId)>,
    /// Likewise, of the runs that may read the cache.
    caching: BTreeSet<(i64, RunId)>,
}

/// Derived data: two states with the same runs are equal whatever their indexes hold.
impl PartialEq for WatchIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn has_timers(run: &RunRecord) -> bool {
    run.limits.timeout_ms.is_some()
        || !run.limits.task_timeout_ms.is_empty()
        || crate::engine::approval::has_timeouts(&run.pipeline)
}

impl WatchIndex {
    pub(super) fn is_built(&self) -> bool {
        self.built
    }

    pub(super) fn build<'a>(&mut self, runs: impl Iterator<Item = &'a RunRecord>) {
        *self = WatchIndex {
            built: true,
            ..Default::default()
        };
        for r in runs {
            self.add(r);
        }
    }

    pub(super) fn add(&mut self, run: &RunRecord) {
        let key = (run.created_at, run.run_id.clone());
        if has_timers(run) {
            self.timed.insert(key.clone());
        }
        if run.caching.enabled {
            self.caching.insert(key);
        }
    }

    pub(super) fn remove(&mut self, run: &RunRecord) {
        let key = (run.created_at, run.run_id.clone());
        self.timed.remove(&key);
        self.caching.remove(&key);
    }

    /// The runs with timers, oldest first; `None` while unbuilt.
    pub(crate) fn timed(&self) -> Option<impl Iterator<Item = &RunId>> {
        self.built.then(|| self.timed.iter().map(|(_, id)| id))
    }

    /// The runs that may read the cache, oldest first; `None` while unbuilt.
    pub(crate) fn caching(&self) -> Option<impl Iterator<Item = &RunId>> {
        self.built.then(|| self.caching.iter().map(|(_, id)| id))
    }
}
