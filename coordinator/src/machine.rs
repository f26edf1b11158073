//! Committed entries → `ClusterState::apply`, and the events that follow.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use gantry_core::state::{
    decode_snapshot, encode_snapshot, Applied, ClusterState, CommandDecoder, Event, SnapshotFormat,
};
use tokio::sync::mpsc;

use crate::raft::{Fatal, SnapshotWriter, StateMachine};

/// The live state, shared between the Raft thread (the only writer) and readers.
#[derive(Clone, Default)]
pub struct SharedState(Arc<RwLock<ClusterState>>);

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        // Apply never panics midway on valid entries; a poisoned lock still holds the last
        // consistent state.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct ClusterMachine {
    pub state: SharedState,
    pub events: mpsc::UnboundedSender<Event>,
    /// Keeps the pipelines of recent entries, so a repeated one is not decoded again.
    pub decoder: CommandDecoder,
}

impl StateMachine for ClusterMachine {
    type Output = Applied;

    fn apply(&mut self, index: u64, data: &[u8]) -> Result<Applied, Fatal> {
        // A replica that cannot decode a committed command (a newer binary's, during a rolling
        // upgrade) must stop: skipping it would silently diverge from those that apply it.
        let command = self.decoder.decode(data).map_err(|e| {
            Fatal(format!(
                "undecodable command at index {index} (written by a newer version?): {e}"
            ))
        })?;
        let applied = {
            let mut st = self.state.0.write().unwrap_or_else(|e| e.into_inner());
            st.apply(index, command)
        };
        for ev in &applied.events {
            let _ = self.events.send(ev.clone());
        }
        Ok(applied)
    }

    fn snapshot(&self) -> SnapshotWriter {
        // A clone under the read lock is the consistent cut; encoding happens off the Raft thread.
        let copy = self.state.read().clone();
        Box::new(move |w| encode_snapshot(&copy, SnapshotFormat::Tabled, w))
    }

    fn check(r: &mut dyn std::io::Read) -> std::io::Result<()> {
        let _ = decode_snapshot(r)?;
        Ok(())
    }

    fn restore(&mut self, r: &mut dyn std::io::Read) -> std::io::Result<()> {
        let restored = decode_snapshot(r)?;
        *self.state.0.write().unwrap_or_else(|e| e.into_inner()) = restored;
        // Ready tasks and free capacity may all be new.
        let _ = self.events.send(Event::CapacityChanged);
        Ok(())
    }
}

/// Verifies a snapshot file's checksum and decodes its state, keeping nothing: a snapshot that
/// cannot be loaded is refused before it can replace anything.
pub fn check_snapshot_file(path: &std::path::Path) -> std::io::Result<()> {
    let what = path.display().to_string();
    let (_, mut r) = crate::raft::SnapshotDir::open_file(path)?;
    ClusterMachine::check(&mut r).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("snapshot {what}: the state does not decode: {e}"),
        )
    })
}

/// A snapshot's state rewritten in format 1, for a peer of the previous version, which reads
/// nothing else (`raft::transport` asks first).
pub fn plain_snapshot(
    r: &mut dyn std::io::Read,
    w: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let state = decode_snapshot(r)?;
    encode_snapshot(&state, SnapshotFormat::Plain, w)
}
