//! How one [`WriteBatch`] is laid out in the write-ahead log: a frame (payload length and
//! CRC-32 of the payload, both little-endian u32) around a payload of tagged operations. The
//! CRC tells a record that was fully written from a torn one; the operations are parsed
//! without decoding entries, so a log is replayed by reading it, not by decoding it.

use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use super::log_codec::{decode, encode};
use super::storage::{LogStoreError, Members, WriteBatch};

/// The first bytes of every segment file; the digit is the format's version.
pub const SEGMENT_MAGIC: &[u8; 8] = b"GNTWAL01";
/// Payload length and CRC.
pub const FRAME_HEADER: usize = 8;
/// No record is larger (a Raft batch is bounded far below it); a larger length read back is a
/// torn or damaged frame, not an allocation to attempt.
pub const MAX_RECORD: usize = 1 << 30;

const CHECKPOINT: u8 = 1;
const REMOVE: u8 = 2;
const ENTRY: u8 = 3;
const HARD_STATE: u8 = 4;
const CONF_STATE: u8 = 5;
const SNAPSHOT_META: u8 = 6;
const MEMBERS: u8 = 7;
const COMPACTED: u8 = 8;

/// One operation of a record, borrowed from its payload.
#[derive(Debug)]
pub enum Op {
    /// The record holds every small field: a segment starts with one, so older segments can
    /// be deleted without losing them.
    Checkpoint,
    Remove(u64, u64),
    /// An entry's protobuf bytes at `offset..offset + len` of the payload.
    Entry {
        index: u64,
        offset: usize,
        len: usize,
    },
    HardState(HardState),
    ConfState(ConfState),
    SnapshotMeta(SnapshotMetadata),
    Members(Members),
    Compacted(u64, u64),
}

/// The framed record of `batch`; `checkpoint` marks it as the first record of a segment.
pub fn encode_record(batch: &WriteBatch, checkpoint: bool) -> Result<Vec<u8>, LogStoreError> {
    let mut p = Vec::with_capacity(
        FRAME_HEADER
            + 64
            + batch
                .entries
                .iter()
                .map(|e| e.data.len() + e.context.len() + 32)
                .sum::<usize>(),
    );
    p.extend_from_slice(&[0; FRAME_HEADER]);
    if checkpoint {
        p.push(CHECKPOINT);
    }
    for &(from, to) in &batch.remove {
        p.push(REMOVE);
        p.extend_from_slice(&from.to_le_bytes());
        p.extend_from_slice(&to.to_le_bytes());
    }
    for e in &batch.entries {
        p.push(ENTRY);
        p.extend_from_slice(&e.index.to_le_bytes());
        put_bytes(&mut p, &encode(e)?)?;
    }
    if let Some(hs) = &batch.hard_state {
        p.push(HARD_STATE);
        put_bytes(&mut p, &encode(hs)?)?;
    }
    if let Some(cs) = &batch.conf_state {
        p.push(CONF_STATE);
        put_bytes(&mut p, &encode(cs)?)?;
    }
    if let Some(m) = &batch.snapshot_meta {
        p.push(SNAPSHOT_META);
        put_bytes(&mut p, &encode(m)?)?;
    }
    if let Some(m) = &batch.members {
        p.push(MEMBERS);
        let json = serde_json::to_vec(m).map_err(|e| LogStoreError::Encode(e.to_string()))?;
        put_bytes(&mut p, &json)?;
    }
    if let Some((index, term)) = batch.compacted {
        p.push(COMPACTED);
        p.extend_from_slice(&index.to_le_bytes());
        p.extend_from_slice(&term.to_le_bytes());
    }
    let len = p.len() - FRAME_HEADER;
    if len > MAX_RECORD {
        return Err(LogStoreError::Encode(format!(
            "a raft log record of {len} bytes is over the {MAX_RECORD}-byte limit"
        )));
    }
    let len = (len as u32).to_le_bytes();
    let crc = frame_crc(len, &p[FRAME_HEADER..]);
    p[..4].copy_from_slice(&len);
    p[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(p)
}

/// Covers the length too, so a damaged length is not taken for a shorter record.
fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) -> Result<(), LogStoreError> {
    let len = u32::try_from(b.len())
        .map_err(|_| LogStoreError::Encode(format!("a field of {} bytes", b.len())))?;
    p.extend_from_slice(&len.to_le_bytes());
    p.extend_from_slice(b);
    Ok(())
}

/// What the frame at the start of `buf` holds.
pub enum Frame<'a> {
    /// A whole record whose CRC matches: its payload, and the frame's full length.
    Whole { payload: &'a [u8], len: usize },
    /// Too short for its length, or the CRC does not match: a write that did not finish.
    Torn,
}

pub fn read_frame(buf: &[u8]) -> Frame<'_> {
    let Some(header) = buf.get(..FRAME_HEADER) else {
        return Frame::Torn;
    };
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // Every record holds at least one operation; zeros (a file extended but never written)
    // would otherwise read as an endless run of empty records.
    if len == 0 || len > MAX_RECORD {
        return Frame::Torn;
    }
    let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Frame::Torn;
    };
    if frame_crc(len_bytes, payload) != crc {
        return Frame::Torn;
    }
    Frame::Whole {
        payload,
        len: FRAME_HEADER + len,
    }
}

/// The operations of a payload whose CRC matched. An error here is not a torn write (the CRC
/// said the bytes are the ones written) but a record this version cannot read.
pub fn parse_ops(payload: &[u8]) -> Result<Vec<Op>, String> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let mut ops = Vec::new();
    while r.pos < payload.len() {
        let tag = r.u8()?;
        ops.push(match tag {
            CHECKPOINT => Op::Checkpoint,
            REMOVE => Op::Remove(r.u64()?, r.u64()?),
            ENTRY => {
                let index = r.u64()?;
                let len = r.u32()? as usize;
                let offset = r.pos;
                r.skip(len)?;
                Op::Entry { index, offset, len }
            }
            HARD_STATE => Op::HardState(r.message("hard state")?),
            CONF_STATE => Op::ConfState(r.message("conf state")?),
            SNAPSHOT_META => Op::SnapshotMeta(r.message("snapshot metadata")?),
            MEMBERS => {
                let b = r.bytes()?;
                Op::Members(serde_json::from_slice(b).map_err(|e| format!("members: {e}"))?)
            }
            COMPACTED => Op::Compacted(r.u64()?, r.u64()?),
            other => return Err(format!("unknown operation {other} at byte {}", r.pos - 1)),
        });
    }
    Ok(ops)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!(
                "{n} bytes wanted at byte {} of a {}-byte record",
                self.pos,
                self.buf.len()
            ));
        };
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }
    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn message<M: protobuf::Message>(&mut self, what: &str) -> Result<M, String> {
        let b = self.bytes()?;
        decode(what, b).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn batch() -> WriteBatch {
        WriteBatch {
            remove: vec![(4, 9)],
            entries: (4..6)
                .map(|i| Entry {
                    index: i,
                    term: 2,
                    data: vec![i as u8; 100].into(),
                    ..Default::default()
                })
                .collect(),
            hard_state: Some(HardState {
                term: 2,
                vote: 1,
                commit: 3,
                ..Default::default()
            }),
            conf_state: None,
            snapshot_meta: None,
            members: Some([(1, "a:1".to_string())].into()),
            compacted: Some((3, 1)),
        }
    }

    #[test]
    fn a_record_reads_back_as_the_batch_it_was_made_of() {
        let rec = encode_record(&batch(), true).unwrap();
        let Frame::Whole { payload, len } = read_frame(&rec) else {
            panic!("a whole record reads as torn");
        };
        assert_eq!(len, rec.len());
        let ops = parse_ops(payload).unwrap();
        assert!(matches!(ops[0], Op::Checkpoint));
        assert!(matches!(ops[1], Op::Remove(4, 9)));
        let Op::Entry { index, offset, len } = ops[2] else {
            panic!("{:?}", ops[2]);
        };
        assert_eq!(index, 4);
        let e: Entry = decode("entry", &payload[offset..offset + len]).unwrap();
        assert_eq!(e, batch().entries[0]);
        assert!(matches!(&ops[4], Op::HardState(hs) if hs.commit == 3 && hs.vote == 1));
        assert!(matches!(&ops[5], Op::Members(m) if m.len() == 1));
        assert!(matches!(ops[6], Op::Compacted(3, 1)));
        assert_eq!(ops.len(), 7);
    }

    #[test]
    fn a_cut_or_changed_record_is_torn() {
        let rec = encode_record(&batch(), false).unwrap();
        for cut in [0, 3, FRAME_HEADER, rec.len() / 2, rec.len() - 1] {
            assert!(
                matches!(read_frame(&rec[..cut]), Frame::Torn),
                "cut at {cut}"
            );
        }
        let mut flipped = rec.clone();
        flipped[rec.len() / 2] ^= 0x10;
        assert!(matches!(read_frame(&flipped), Frame::Torn));
        // Zeros, as a file extended but never written reads.
        assert!(matches!(read_frame(&[0u8; 64]), Frame::Torn));
    }

    #[test]
    fn an_unknown_operation_is_an_error_not_a_tear() {
        assert!(parse_ops(&[99])
            .unwrap_err()
            .contains("unknown operation 99"));
        assert!(parse_ops(&[REMOVE, 1, 2]).unwrap_err().contains("wanted"));
    }
}
