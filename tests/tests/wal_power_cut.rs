//! The write-ahead Raft log on a lossyfs mount: a power cut that keeps a random part of the
//! pages of a write that never finished (as a disk that wrote some of its cache) must leave a
//! log that opens, holds every write that returned, and takes new writes. The coordinator
//! cluster test (`power_loss.rs`) cuts after `kill -9`, which rarely lands between an append
//! and its fdatasync; here the unfinished append is made on purpose, page by page.
//!
//! Skipped, with a message, where FUSE cannot be mounted (not root, no /dev/fuse).

use std::io::Write as _;

use gantry_coordinator::raft::storage::WriteBatch;
use gantry_coordinator::raft::{LogStore, WalLogStore};
use lossyfs::{CutMode, LossyFs};
use raft::eraftpb::{Entry, HardState};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![(index % 251) as u8; 700].into(),
        ..Default::default()
    }
}

#[test]
fn a_torn_append_after_a_power_cut_leaves_every_returned_write() {
    if let Err(why) = lossyfs::available() {
        eprintln!("skipped: {why}");
        return;
    }
    lossyfs::sweep_stale_mounts();
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = (tmp.path().join("backing"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut fs = LossyFs::mount(&backing, &mnt).unwrap();
    let dir = mnt.join("raft-wal");
    let mut last = 0u64;
    let mut torn_seen = 0usize;
    for round in 0..24u64 {
        {
            // Small segments, so cuts also land beside new segments and deleted ones.
            let log = WalLogStore::open_with(&dir, 16 << 10).expect("the log opens after a cut");
            let p = log.load().unwrap();
            assert_eq!(p.last_entry, Some(last).filter(|&l| l > 0), "round {round}");
            assert_eq!(
                p.hard_state.term, round,
                "round {round}: the last returned hard state"
            );
            if last > 0 {
                let all = log.entries(p.compacted.0 + 1, last + 1, None).unwrap();
                let want: Vec<Entry> = (p.compacted.0 + 1..=last).map(|i| entry(i, 1)).collect();
                assert_eq!(all, want, "round {round}");
            }
            for _ in 0..3 {
                log.write(WriteBatch {
                    entries: (last + 1..=last + 4).map(|i| entry(i, 1)).collect(),
                    hard_state: Some(HardState {
                        term: round + 1,
                        commit: last,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .unwrap();
                last += 4;
            }
            if round % 4 == 3 {
                log.write(WriteBatch {
                    remove: vec![(1, last - 6)],
                    compacted: Some((last - 6, 1)),
                    ..Default::default()
                })
                .unwrap();
            }
        }
        // An append that never reached its fdatasync: a copy of the newest segment's tail
        // (whole frames among them) and noise, several pages of it.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let newest = names.last().unwrap().clone();
        let bytes = std::fs::read(&newest).unwrap();
        let tail = &bytes[bytes.len().saturating_sub(6000)..];
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        f.write_all(tail).unwrap();
        f.write_all(&vec![(round * 37 % 256) as u8; 9000]).unwrap();
        drop(f);
        let report = fs
            .power_cut(CutMode::Torn {
                seed: 0x5eed ^ round,
                keep: 0.5,
            })
            .unwrap();
        torn_seen += report.pages_kept;
    }
    assert!(
        torn_seen > 0,
        "no cut kept any page of an unfinished append"
    );
    fs.unmount().unwrap();
}
