//! What every log store shares: how records are written (protobuf for raft's own messages,
//! 16 big-endian bytes for an (index, term) pair) and how many entries one read returns.

use protobuf::Message as _;
use raft::eraftpb::Entry;

use super::storage::LogStoreError;

/// Entries from `entries`, in order, until `max_size` bytes are exceeded; at least one when
/// any exists (raft-rs's rule for `Storage::entries`).
pub fn within_size(
    max_size: Option<u64>,
    entries: impl Iterator<Item = Result<Entry, LogStoreError>>,
) -> Result<Vec<Entry>, LogStoreError> {
    let mut out = Vec::new();
    let mut size = 0u64;
    for e in entries {
        let e = e?;
        size += u64::from(e.compute_size());
        if max_size.is_some_and(|max| !out.is_empty() && size > max) {
            break;
        }
        out.push(e);
    }
    Ok(out)
}

pub fn decode<M: protobuf::Message>(key: &str, bytes: &[u8]) -> Result<M, LogStoreError> {
    M::parse_from_bytes(bytes).map_err(|e| LogStoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

pub fn encode(m: &impl protobuf::Message) -> Result<Vec<u8>, LogStoreError> {
    m.write_to_bytes()
        .map_err(|e| LogStoreError::Encode(e.to_string()))
}

pub fn encode_pair(p: (u64, u64)) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&p.0.to_be_bytes());
    b[8..].copy_from_slice(&p.1.to_be_bytes());
    b
}

pub fn decode_pair(v: &[u8]) -> Option<(u64, u64)> {
    let a: [u8; 8] = v.get(..8)?.try_into().ok()?;
    let b: [u8; 8] = v.get(8..16)?.try_into().ok()?;
    Some((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}
