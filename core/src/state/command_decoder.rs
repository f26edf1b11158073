//! Committed entries back into commands. Most of the log by bytes is `CreateRun` entries, and
//! most of such an entry is its pipeline, which is usually one of a few that runs repeat:
//! decoding it again for every run was a tenth of the coordinators' CPU in `gantry-bench raft`.
//! The decoder keeps the last few pipelines it decoded by their exact JSON text, so a repeat
//! costs a comparison of bytes, and the state then shares the very same copy.
//!
//! What comes out depends only on the entry's bytes: a kept pipeline is what decoding the
//! same text again gives, so replicas with different histories of what they kept still apply
//! equal commands.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::command::{Command, NewRun};
use crate::ir::PipelineSpec;

/// How many decoded pipelines are kept.
const KEEP: usize = 8;

/// How a `CreateRun` entry starts as serde_json writes one: its fields after the tag.
const CREATE_RUN: &[u8] = br#"{"type":"create_run","#;

#[derive(Default)]
pub struct CommandDecoder {
    newest_first: VecDeque<(Box<str>, Arc<PipelineSpec>)>,
}

impl CommandDecoder {
    /// The command `data` holds. serde decodes an internally tagged enum by copying the whole
    /// entry into a tree of its own and decoding that again; a `CreateRun` that starts as
    /// serde_json writes one is decoded straight into its fields instead, its pipeline left as
    /// text until it is looked up among the kept ones. Same bytes, same command either way.
    pub fn decode(&mut self, data: &[u8]) -> serde_json::Result<Command> {
        if !data.starts_with(CREATE_RUN) {
            return serde_json::from_slice(data);
        }
        let new: NewRun<&RawValue> = serde_json::from_slice(data)?;
        let pipeline = self.pipeline(new.pipeline.get())?;
        Ok(Command::CreateRun(new.with_pipeline(pipeline)))
    }

    fn pipeline(&mut self, text: &str) -> serde_json::Result<Arc<PipelineSpec>> {
        if let Some(at) = self.newest_first.iter().position(|(t, _)| **t == *text) {
            if let Some(kept) = self.newest_first.remove(at) {
                let spec = kept.1.clone();
                self.newest_first.push_front(kept);
                return Ok(spec);
            }
        }
        let spec = Arc::new(serde_json::from_str::<PipelineSpec>(text)?);
        self.newest_first
            .push_front((Box::from(text), spec.clone()));
        self.newest_first.truncate(KEEP);
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(run: &str, pipeline_name: &str) -> Vec<u8> {
        let mut spec = crate::ir::parse_pipeline(include_str!("../engine/testdata/linear.yaml"))
            .expect("the test pipeline parses");
        spec.name = pipeline_name.to_string();
        let cmd = Command::CreateRun(super::super::tests::new_run(
            run,
            spec,
            Default::default(),
            1,
        ));
        serde_json::to_vec(&cmd).expect("a command encodes")
    }

    #[test]
    fn a_create_run_decodes_to_what_serdes_own_decoding_gives() {
        let data = entry("r1", "p");
        assert!(data.starts_with(CREATE_RUN), "the fast path is taken");
        let generic: Command = serde_json::from_slice(&data).expect("serde decodes it");
        let mut d = CommandDecoder::default();
        assert_eq!(d.decode(&data).expect("decodes"), generic);
        assert_eq!(d.decode(&data).expect("decodes again"), generic, "kept");
    }

    #[test]
    fn repeats_of_a_pipeline_share_one_copy_and_other_pipelines_do_not() {
        let mut d = CommandDecoder::default();
        let pipeline = |c: Command| match c {
            Command::CreateRun(n) => n.pipeline,
            other => panic!("not a CreateRun: {other:?}"),
        };
        let a = pipeline(d.decode(&entry("r1", "p")).expect("decodes"));
        let b = pipeline(d.decode(&entry("r2", "p")).expect("decodes"));
        let c = pipeline(d.decode(&entry("r3", "q")).expect("decodes"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.name, "q");
        // Pushed out by newer ones, a pipeline is decoded again, to an equal value.
        for i in 0..KEEP {
            d.decode(&entry(&format!("x{i}"), &format!("other-{i}")))
                .expect("decodes");
        }
        let again = pipeline(d.decode(&entry("r4", "p")).expect("decodes"));
        assert!(!Arc::ptr_eq(&a, &again));
        assert_eq!(*a, *again);
    }

    #[test]
    fn other_commands_and_broken_entries() {
        let mut d = CommandDecoder::default();
        let cmd = Command::SetAgentDraining {
            agent_id: "a".into(),
            draining: true,
        };
        let data = serde_json::to_vec(&cmd).expect("encodes");
        assert_eq!(d.decode(&data).expect("decodes"), cmd);
        // A pipeline that is not one is an error, and is not kept.
        let bad = String::from_utf8(entry("r1", "p"))
            .expect("utf-8")
            .replacen(r#""name":"p""#, r#""name":7"#, 1);
        assert!(d.decode(bad.as_bytes()).is_err());
        assert!(d.decode(bad.as_bytes()).is_err());
        assert!(d.decode(br#"{"type":"create_run","run_id":"#).is_err());
    }
}
