//! Pipelines parsed and checked once per text. A pipeline is submitted again and again (a
//! schedule, a CI job, a retraining loop), and parsing its YAML was a seventh of all CPU in
//! `gantry-bench raft`: the leader keeps the last few it accepted, by their exact text.
//! What is kept depends only on the text and on this node's fixed import policy, so a hit
//! gives the same pipeline, and the same refusals, as parsing again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use gantry_core::ir::PipelineSpec;

use super::status::ApiError;

/// How many accepted pipelines are kept.
const KEEP: usize = 16;

#[derive(Default)]
pub struct ParsedPipelines {
    newest_first: Mutex<VecDeque<(Arc<str>, Arc<PipelineSpec>)>>,
}

impl ParsedPipelines {
    /// The pipeline `yaml` holds, parsed and accepted by `check` (once per text while kept).
    pub fn get_or_parse(
        &self,
        yaml: &str,
        parse: impl FnOnce(&str) -> Result<PipelineSpec, ApiError>,
        check: impl FnOnce(&PipelineSpec) -> Result<(), ApiError>,
    ) -> Result<Arc<PipelineSpec>, ApiError> {
        if let Some(hit) = self.kept(yaml) {
            return Ok(hit);
        }
        let spec = parse(yaml)?;
        check(&spec)?;
        let spec = Arc::new(spec);
        let mut kept = self.newest_first.lock().unwrap_or_else(|e| e.into_inner());
        kept.push_front((Arc::from(yaml), spec.clone()));
        kept.truncate(KEEP);
        Ok(spec)
    }

    fn kept(&self, yaml: &str) -> Option<Arc<PipelineSpec>> {
        let mut kept = self.newest_first.lock().unwrap_or_else(|e| e.into_inner());
        let at = kept.iter().position(|(text, _)| **text == *yaml)?;
        let entry = kept.remove(at)?;
        let spec = entry.1.clone();
        kept.push_front(entry);
        Some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = include_str!("../../../core/src/engine/testdata/linear.yaml");

    #[test]
    fn a_text_is_parsed_once_and_a_refused_one_every_time() {
        let kept = ParsedPipelines::default();
        let mut parses = 0;
        let mut parse = |y: &str| {
            parses += 1;
            gantry_core::ir::parse_pipeline(y).map_err(ApiError::InvalidPipeline)
        };
        let a = kept.get_or_parse(YAML, &mut parse, |_| Ok(())).unwrap();
        let b = kept.get_or_parse(YAML, &mut parse, |_| Ok(())).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = YAML.replace("linear", "linear-2");
        let refuse = |_: &PipelineSpec| Err(ApiError::UnexpectedOutcome("refused".into()));
        assert!(kept.get_or_parse(&other, &mut parse, refuse).is_err());
        assert!(kept.get_or_parse(&other, &mut parse, refuse).is_err());
        assert_eq!(parses, 3, "the refused text is not kept");
    }
}
