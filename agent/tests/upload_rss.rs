//! Peak memory of uploading a large file: a 2 GiB sparse file through
//! `ArtifactStore::upload`, to the S3 server of the other tests (`GANTRY_TEST_S3_ENDPOINT` or
//! an `s3s-fs` started here), else to a `file://` root (the same multipart code path).
//!
//! This file holds exactly one test on purpose: cargo runs each integration-test file as its
//! own process, so the process's peak RSS (`VmHWM` in /proc/self/status) is this upload's
//! plus the test harness's, with no other test allocating beside it.
//!
//! `GANTRY_UPLOAD_RSS_BYTES` changes the size (e.g. `1073741824`); the bound is
//! `GANTRY_UPLOAD_RSS_LIMIT_MIB` (default 100).

mod common;

use std::time::Instant;

use common::*;
use gantry_agent::artifacts::{ArtifactStore, S3Settings};

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploading_2_gib_stays_under_100_mib_of_rss() {
    let size = env_u64("GANTRY_UPLOAD_RSS_BYTES", 2 << 30);
    let limit_mib = env_u64("GANTRY_UPLOAD_RSS_LIMIT_MIB", 100);
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("big.bin");
    let f = std::fs::File::create(&src).expect("create");
    f.set_len(size).expect("set_len");
    drop(f);

    let s3 = s3_server();
    let local_root = tempfile::tempdir().expect("tempdir");
    let (root, settings, target) = match &s3 {
        Some(s) => (
            format!("s3://{}/{}", s.bucket, run_id("rss")),
            s3_settings(s),
            format!("S3 at {}", s.endpoint),
        ),
        None => (
            file_root(local_root.path()),
            S3Settings::default(),
            "a file:// root (no S3 server available)".to_string(),
        ),
    };
    let store = ArtifactStore::from_root_with(&root, &settings).expect("store");
    let uri = format!("{root}/run/task/attempt-1/big");

    let before = status_kib("VmHWM:").expect("VmHWM");
    let t0 = Instant::now();
    let n = store.upload(&src, &uri).await.expect("upload");
    let elapsed = t0.elapsed();
    let peak = status_kib("VmHWM:").expect("VmHWM");
    assert_eq!(n, size);
    assert!(store.exists(&uri).await.expect("exists"));
    eprintln!(
        "upload_rss: {} MiB to {target} in {:.1}s ({:.0} MiB/s); peak RSS {} MiB (before the upload {} MiB)",
        size >> 20,
        elapsed.as_secs_f64(),
        (size >> 20) as f64 / elapsed.as_secs_f64().max(1e-9),
        peak / 1024,
        before / 1024,
    );
    assert!(
        peak < limit_mib * 1024,
        "peak RSS {} MiB is over {limit_mib} MiB",
        peak / 1024
    );
}
