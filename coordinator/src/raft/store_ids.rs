//! Which copy of each peer's data this node has heard from.
//!
//! A node's data directory gets a random store id when it is created. Every Raft message and
//! snapshot carries its sender's store id, and a node remembers, on disk, the first store id it
//! heard from each member. A member that comes back with another store id has lost its data
//! directory: it has forgotten its votes and the entries it acknowledged, so counting its vote
//! or acknowledgement could elect a second leader in a term or lose a committed entry. Its
//! traffic is refused until the member is removed (`gantry cluster leave ID`), which forgets the
//! record, and joined again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file that holds this data directory's own store id.
const OWN_FILE: &str = "store-id";
/// The store id first heard from each member (JSON object, node id to store id).
const PEERS_FILE: &str = "peer-store-ids.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreIdError {
    #[error("node {node} came back with another data directory (store {got:016x}, was {known:016x}): it lost its votes and log, so its raft traffic is refused until it is removed (`gantry cluster leave {node}`) and joined again")]
    Replaced { node: u64, known: u64, got: u64 },
    #[error("node {0} sent raft traffic without a store id")]
    Missing(u64),
    #[error("cannot record the store id of node {node}: {error}")]
    Record { node: u64, error: std::io::Error },
}

pub struct StoreIds {
    dir: PathBuf,
    own: u64,
    peers: Mutex<BTreeMap<u64, u64>>,
}

impl StoreIds {
    /// Reads this data directory's store id and the peers' records, creating the store id when
    /// the directory has none (a new node, or one whose data directory was lost).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let own_path = dir.join(OWN_FILE);
        let own = match std::fs::read_to_string(&own_path) {
            Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|e| {
                std::io::Error::other(format!("{}: not a store id: {e}", own_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Zero means "no store id" on the wire.
                let id = loop {
                    let id = uuid::Uuid::new_v4().as_u64_pair().0;
                    if id != 0 {
                        break id;
                    }
                };
                write_durably(dir, OWN_FILE, format!("{id:016x}\n").as_bytes())?;
                tracing::info!(store = %format!("{id:016x}"), "new data directory");
                id
            }
            Err(e) => return Err(e),
        };
        let peers_path = dir.join(PEERS_FILE);
        let peers = match std::fs::read(&peers_path) {
            Ok(bytes) => {
                let text: BTreeMap<String, String> = serde_json::from_slice(&bytes)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", peers_path.display())))?;
                let mut peers = BTreeMap::new();
                for (node, store) in text {
                    let bad = || {
                        std::io::Error::other(format!(
                            "{}: bad entry {node:?}: {store:?}",
                            peers_path.display()
                        ))
                    };
                    let node: u64 = node.parse().map_err(|_| bad())?;
                    let store = u64::from_str_radix(&store, 16).map_err(|_| bad())?;
                    peers.insert(node, store);
                }
                peers
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(StoreIds {
            dir: dir.to_path_buf(),
            own,
            peers: Mutex::new(peers),
        })
    }

    /// This data directory's store id, stamped on everything this node sends to peers.
    pub fn own(&self) -> u64 {
        self.own
    }

    /// Accepts traffic from member `node` with store id `store`: the first store id heard from
    /// a member is recorded (durably, before the traffic counts), any other is refused.
    pub fn check(&self, node: u64, store: u64) -> Result<(), StoreIdError> {
        if store == 0 {
            return Err(StoreIdError::Missing(node));
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(&node) {
            Some(known) if *known == store => Ok(()),
            Some(known) => Err(StoreIdError::Replaced {
                node,
                known: *known,
                got: store,
            }),
            None => {
                let mut next = peers.clone();
                next.insert(node, store);
                self.save(&next)
                    .map_err(|error| StoreIdError::Record { node, error })?;
                *peers = next;
                tracing::info!(node, store = %format!("{store:016x}"), "recorded a member's data directory");
                Ok(())
            }
        }
    }

    /// The store id first heard from member `node`, if any.
    pub fn known(&self, node: u64) -> Option<u64> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&node).copied()
    }

    /// Forgets the records of nodes that are no longer members, so that a removed node may
    /// join again with a new data directory.
    pub fn retain_members(&self, is_member: impl Fn(u64) -> bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let next: BTreeMap<u64, u64> = peers
            .iter()
            .filter(|(node, _)| is_member(**node))
            .map(|(n, s)| (*n, *s))
            .collect();
        if next.len() == peers.len() {
            return;
        }
        match self.save(&next) {
            Ok(()) => {
                for node in peers.keys().filter(|n| !next.contains_key(n)) {
                    tracing::info!(node, "forgot a removed member's data directory");
                }
                *peers = next;
            }
            // Keeping a stale record only refuses the removed node until the next change.
            Err(e) => tracing::error!(error = %e, "cannot forget removed members' store ids"),
        }
    }

    fn save(&self, peers: &BTreeMap<u64, u64>) -> std::io::Result<()> {
        let text: BTreeMap<String, String> = peers
            .iter()
            .map(|(n, s)| (n.to_string(), format!("{s:016x}")))
            .collect();
        let bytes = serde_json::to_vec_pretty(&text).map_err(std::io::Error::other)?;
        write_durably(&self.dir, PEERS_FILE, &bytes)
    }
}

/// Writes `dir/name` so that after a crash it holds either the old or the new content: a
/// temporary file, fsynced, renamed over it, then the directory fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_with_another_store_is_refused_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let ids = StoreIds::open(dir.path()).unwrap();
        assert_ne!(ids.own(), 0);
        ids.check(2, 7).unwrap();
        ids.check(2, 7).unwrap();
        let err = ids.check(2, 8).unwrap_err().to_string();
        assert!(err.contains("another data directory"), "{err}");
        assert!(matches!(ids.check(3, 0), Err(StoreIdError::Missing(3))));

        // Records and the own id survive a restart.
        let own = ids.own();
        drop(ids);
        let ids = StoreIds::open(dir.path()).unwrap();
        assert_eq!(ids.own(), own);
        assert!(ids.check(2, 8).is_err());

        // Removal forgets; the node may come back with a new store.
        ids.retain_members(|n| n != 2);
        ids.check(2, 8).unwrap();
        let ids = StoreIds::open(dir.path()).unwrap();
        assert!(ids.check(2, 7).is_err(), "the new record is durable");
    }

    #[test]
    fn a_wiped_directory_gets_a_new_store_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreIds::open(dir.path()).unwrap().own();
        std::fs::remove_file(dir.path().join(OWN_FILE)).unwrap();
        assert_ne!(StoreIds::open(dir.path()).unwrap().own(), first);
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OWN_FILE), "zz\n").unwrap();
        assert!(StoreIds::open(dir.path()).is_err());
        std::fs::write(dir.path().join(OWN_FILE), "1\n").unwrap();
        std::fs::write(dir.path().join(PEERS_FILE), "{\"x\":\"1\"}").unwrap();
        let err = StoreIds::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("bad entry"), "{err}");
    }
}
