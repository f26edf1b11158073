//! One copy in memory of each pipeline, however many runs use it. Most runs repeat a few
//! pipelines, and a compiled KFP pipeline (its components' sources included) is most of a run:
//! without sharing, every submission grew every replica by a whole pipeline, and zeroing that
//! fresh memory was the largest single cost of a commit in `gantry-bench raft`.
//!
//! Sharing is by equality, never by a name or a digest alone, so it cannot change what a run
//! holds; it is not part of the state's value (two states that differ only in what is shared
//! are equal) and is not encoded.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use crate::ir::PipelineSpec;

/// How many different pipelines of one name are kept for sharing (versions of a pipeline under
/// the same name); an older one is still used by its runs, only not shared with new ones.
const PER_NAME: usize = 8;

/// Sweep names whose pipelines no run holds any more after this many new pipelines.
const SWEEP_EVERY: usize = 1024;

#[derive(Debug, Clone, Default)]
pub(crate) struct SharedPipelines {
    by_name: BTreeMap<String, Vec<Weak<PipelineSpec>>>,
    since_sweep: usize,
}

impl PartialEq for SharedPipelines {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl SharedPipelines {
    /// The copy already held of a pipeline equal to `spec`, or `spec` itself, now shared.
    pub(crate) fn share(&mut self, spec: Arc<PipelineSpec>) -> Arc<PipelineSpec> {
        let same_name = self.by_name.entry(spec.name.clone()).or_default();
        same_name.retain(|w| w.strong_count() > 0);
        if let Some(held) = same_name
            .iter()
            .filter_map(Weak::upgrade)
            .find(|held| Arc::ptr_eq(held, &spec) || **held == *spec)
        {
            return held;
        }
        if same_name.len() >= PER_NAME {
            same_name.remove(0);
        }
        same_name.push(Arc::downgrade(&spec));
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.by_name.retain(|_, v| {
                v.retain(|w| w.strong_count() > 0);
                !v.is_empty()
            });
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, root: &str) -> PipelineSpec {
        let mut s = crate::ir::parse_pipeline(include_str!("../engine/testdata/linear.yaml"))
            .expect("the test pipeline parses");
        s.name = name.to_string();
        s.default_pipeline_root = Some(root.to_string());
        s
    }

    #[test]
    fn equal_pipelines_share_one_copy_and_different_ones_do_not() {
        let mut shared = SharedPipelines::default();
        let a = shared.share(Arc::new(spec("p", "s3://a")));
        let again = shared.share(Arc::new(spec("p", "s3://a")));
        assert!(
            Arc::ptr_eq(&a, &again),
            "an equal pipeline is the held copy"
        );
        let other = shared.share(Arc::new(spec("p", "s3://b")));
        assert!(
            !Arc::ptr_eq(&a, &other),
            "same name, other content: its own copy"
        );
        assert_eq!(other.default_pipeline_root.as_deref(), Some("s3://b"));
    }

    #[test]
    fn a_pipeline_no_run_holds_is_not_kept() {
        let mut shared = SharedPipelines::default();
        let a = shared.share(Arc::new(spec("p", "s3://a")));
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(weak.upgrade().is_none(), "sharing holds no pipeline alive");
        let b = shared.share(Arc::new(spec("p", "s3://a")));
        assert_eq!(Arc::strong_count(&b), 1);
    }
}
