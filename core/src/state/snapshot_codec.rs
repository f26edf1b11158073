//! How a state is written into a snapshot and read back.
//!
//! Format 2 writes each distinct pipeline once, ahead of the state, and each run names its
//! pipeline by its position in that table:
//!
//! ```text
//! {"gantry_snapshot":2,"pipelines":[{..},..],"state":{"runs":{"r1":{..,"pipeline":0,..},..},..}}
//! ```
//!
//! Most runs repeat a few pipelines, and a compiled KFP pipeline (its components' sources
//! included) is most of a run: in format 1, the state's own JSON, every run carried its
//! pipeline, so a snapshot was several times larger than what it holds, and writing one on
//! every node took a third of the coordinators' CPU while it lasted in `gantry-bench raft`.
//!
//! Format 1 is still read (snapshots written before format 2) and still written for a peer of
//! the previous version, which reads nothing else: the transport asks the peer first
//! (`InstallSnapshotV2`). Either format decodes to the same state.
//!
//! The table reaches each run's `pipeline` field through [`pipeline_field`], which looks in a
//! table set for the current thread only while a snapshot is encoded or decoded: serde offers
//! no other way to hand context to a field deep inside a derived encoding, and outside a
//! snapshot (commands, tests) the field is the whole pipeline as before.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ClusterState;
use crate::ir::PipelineSpec;

/// Which encoding a snapshot's state has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFormat {
    /// Format 1: the state's JSON, each run with its whole pipeline.
    Plain,
    /// Format 2: a table of the pipelines, then the state naming them by position.
    Tabled,
}

/// How a format-2 snapshot begins; a format-1 one begins with the state's first field.
const TABLED_START: &[u8] = br#"{"gantry_snapshot":"#;

/// The number format 2 writes after [`TABLED_START`].
const TABLED: u32 = 2;

/// serde_json writes token by token and reads a byte at a time: through buffers of its own,
/// each is a copy in memory instead of a call through `dyn Write`/`dyn Read` and the
/// checksumming layers (a profile of `gantry-bench raft` had snapshot decoding at a third of
/// all CPU before).
const CODEC_BUFFER: usize = 1 << 16;

/// Writes `state` in `format`.
pub fn encode_snapshot(
    state: &ClusterState,
    format: SnapshotFormat,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(CODEC_BUFFER, w);
    match format {
        SnapshotFormat::Plain => serde_json::to_writer(&mut w, state)?,
        SnapshotFormat::Tabled => {
            let mut positions = BTreeMap::new();
            let mut table: Vec<&PipelineSpec> = Vec::new();
            for run in state.runs.values() {
                positions
                    .entry(Arc::as_ptr(&run.pipeline) as usize)
                    .or_insert_with(|| {
                        table.push(&run.pipeline);
                        table.len() as u64 - 1
                    });
            }
            w.write_all(TABLED_START)?;
            write!(w, "{TABLED},\"pipelines\":")?;
            serde_json::to_writer(&mut w, &table)?;
            w.write_all(b",\"state\":")?;
            let _table = Scoped::set(Table::Writing(positions));
            serde_json::to_writer(&mut w, state)?;
            w.write_all(b"}")?;
        }
    }
    w.flush()
}

/// Reads a state written by [`encode_snapshot`] in either format.
pub fn decode_snapshot(r: &mut dyn Read) -> std::io::Result<ClusterState> {
    let (format, r) = sniff(r)?;
    let r = BufReader::with_capacity(CODEC_BUFFER, r);
    Ok(match format {
        SnapshotFormat::Plain => serde_json::from_reader(r)?,
        SnapshotFormat::Tabled => serde_json::from_reader::<_, Tabled>(r)?.0,
    })
}

/// The format of the snapshot `r` holds, and `r` with what was read to tell put back.
fn sniff(r: &mut dyn Read) -> std::io::Result<(SnapshotFormat, impl Read + '_)> {
    let mut start = Vec::with_capacity(TABLED_START.len());
    r.take(TABLED_START.len() as u64).read_to_end(&mut start)?;
    let format = if start == TABLED_START {
        SnapshotFormat::Tabled
    } else {
        SnapshotFormat::Plain
    };
    Ok((format, std::io::Cursor::new(start).chain(r)))
}

/// The format a snapshot's state bytes are in, from their first bytes.
pub fn snapshot_format(r: &mut dyn Read) -> std::io::Result<SnapshotFormat> {
    Ok(sniff(r)?.0)
}

/// A format-2 snapshot, its fields read in the order they are written: the table must be in
/// place before the first run names a pipeline in it.
struct Tabled(ClusterState);

impl<'de> Deserialize<'de> for Tabled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TabledVisitor)
    }
}

struct TabledVisitor;

impl<'de> Visitor<'de> for TabledVisitor {
    type Value = Tabled;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a snapshot of format 2: its number, its pipelines, then its state")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tabled, A::Error> {
        let mut format = None;
        let mut table = None;
        let mut state = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "gantry_snapshot" => {
                    let n: u32 = map.next_value()?;
                    if n != TABLED {
                        return Err(de::Error::custom(format!(
                            "snapshot format {n}: this version reads formats 1 and {TABLED} \
                             (written by a newer version?)"
                        )));
                    }
                    format = Some(n);
                }
                "pipelines" if format.is_some() => {
                    let pipelines: Vec<PipelineSpec> = map.next_value()?;
                    let pipelines = pipelines.into_iter().map(Arc::new).collect();
                    table = Some(Scoped::set(Table::Reading(pipelines)));
                }
                "state" if table.is_some() => state = Some(map.next_value::<ClusterState>()?),
                other => {
                    return Err(de::Error::custom(format!(
                        "unexpected field `{other}` in a snapshot of format {TABLED} (its \
                         fields are gantry_snapshot, pipelines and state, in that order)"
                    )))
                }
            }
        }
        drop(table);
        state
            .map(Tabled)
            .ok_or_else(|| de::Error::missing_field("state"))
    }
}

enum Table {
    /// A pipeline's address → its position in the table being written.
    Writing(BTreeMap<usize, u64>),
    /// The table read so far.
    Reading(Vec<Arc<PipelineSpec>>),
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// The current thread's table while this lives; whatever was there before comes back when it
/// is dropped, an unwinding panic included.
struct Scoped(Option<Table>);

impl Scoped {
    fn set(table: Table) -> Self {
        Scoped(TABLE.with(|t| t.borrow_mut().replace(table)))
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        let before = self.0.take();
        TABLE.with(|t| *t.borrow_mut() = before);
    }
}

/// `RunRecord::pipeline`'s encoding: its position in a snapshot's table while one is being
/// written, the whole pipeline otherwise; either is read back.
pub(crate) mod pipeline_field {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Arc<PipelineSpec>, s: S) -> Result<S::Ok, S::Error> {
        let position = TABLE.with(|t| match &*t.borrow() {
            Some(Table::Writing(positions)) => positions.get(&(Arc::as_ptr(p) as usize)).copied(),
            _ => None,
        });
        match position {
            Some(i) => s.serialize_u64(i),
            None => p.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<PipelineSpec>, D::Error> {
        d.deserialize_any(FieldVisitor)
    }

    struct FieldVisitor;

    impl<'de> Visitor<'de> for FieldVisitor {
        type Value = Arc<PipelineSpec>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a pipeline, or its position in the snapshot's table of pipelines")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            PipelineSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(Arc::new)
        }

        fn visit_u64<E: de::Error>(self, i: u64) -> Result<Self::Value, E> {
            TABLE.with(|t| match &*t.borrow() {
                Some(Table::Reading(pipelines)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| pipelines.get(i))
                    .cloned()
                    .ok_or_else(|| {
                        E::custom(format!(
                            "a run names pipeline {i} of the snapshot's table, which holds {}",
                            pipelines.len()
                        ))
                    }),
                _ => Err(E::custom(format!(
                    "a run names pipeline {i} by position outside a snapshot's table"
                ))),
            })
        }

        fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
            Err(E::custom(format!(
                "a run names pipeline {i}: not a position in a table"
            )))
        }
    }
}

#[cfg(test)]
#[path = "snapshot_codec_tests.rs"]
mod tests;
