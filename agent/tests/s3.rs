//! Artifact transfer and the launcher against a real S3 server: `GANTRY_TEST_S3_ENDPOINT`
//! (bucket `GANTRY_TEST_S3_BUCKET`), else an `s3s-fs` started here; without either they fail,
//! saying how to get one.

mod common;

use std::sync::Arc;

use common::*;
use gantry_agent::artifacts::{ArtifactError, ArtifactStore, ArtifactStores, PART_SIZE};
use gantry_agent::launcher::Launcher;
use gantry_agent::runtime::ProcessRuntime;
use gantry_model::ParamType;
use serde_json::json;

fn server() -> S3 {
    S3::start().unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test]
async fn files_directories_and_multipart_round_trip() {
    let s3 = server();
    let prefix = run_id("s3");
    let root = format!("s3://{}/{prefix}", s3.bucket);
    let store = ArtifactStore::from_root_with(&root, &s3_settings(&s3)).expect("store");
    let work = tempfile::tempdir().expect("tempdir");

    let small = work.path().join("small");
    std::fs::write(&small, b"tiny").expect("write");
    let uri = format!("{root}/run/task/attempt-1/small");
    assert_eq!(store.upload(&small, &uri).await.expect("upload"), 4);
    let back = work.path().join("back/small");
    assert_eq!(store.download(&uri, &back).await.expect("download"), 4);
    assert_eq!(std::fs::read(&back).expect("read"), b"tiny");

    // Bigger than two parts: the multipart path, parts in flight, checked byte for byte.
    let big = work.path().join("big");
    let data: Vec<u8> = (0..(PART_SIZE * 2 + 777))
        .map(|i| (i % 253) as u8)
        .collect();
    std::fs::write(&big, &data).expect("write");
    let buri = format!("{root}/run/task/attempt-1/big");
    assert_eq!(
        store.upload(&big, &buri).await.expect("upload big"),
        data.len() as u64
    );
    let bback = work.path().join("back/big");
    store.download(&buri, &bback).await.expect("download big");
    assert!(
        std::fs::read(&bback).expect("read") == data,
        "big file differs"
    );

    let dir = work.path().join("dir");
    std::fs::create_dir_all(dir.join("a/b")).expect("mkdir");
    std::fs::write(dir.join("top.txt"), b"top").expect("write");
    std::fs::write(dir.join("a/b/deep.txt"), b"deep").expect("write");
    let duri = format!("{root}/run/task/attempt-1/dir");
    assert_eq!(store.upload(&dir, &duri).await.expect("upload dir"), 7);
    let dback = work.path().join("back/dir");
    assert_eq!(
        store.download(&duri, &dback).await.expect("download dir"),
        7
    );
    assert_eq!(
        std::fs::read(dback.join("a/b/deep.txt")).expect("read"),
        b"deep"
    );
    assert_eq!(std::fs::read(dback.join("top.txt")).expect("read"), b"top");

    let missing = format!("{root}/run/task/attempt-1/nothing");
    let err = store
        .download(&missing, &work.path().join("x"))
        .await
        .expect_err("missing");
    assert!(matches!(err, ArtifactError::NotFound(_)), "{err}");
    assert!(err.to_string().contains(&missing), "{err}");
    assert!(matches!(
        store.resolve(&format!("s3://{}/elsewhere/x", s3.bucket)),
        Err(ArtifactError::OutsideRoot { .. })
    ));

    // Deleting (retention): one object by its own URI, then everything below a run's prefix,
    // which is no object itself.
    let none = std::collections::BTreeSet::new();
    assert_eq!(
        store.delete_under(&uri, &none).await.expect("delete one"),
        (1, 0)
    );
    assert!(!store.exists(&uri).await.expect("exists"));
    let run = format!("{root}/run");
    assert_eq!(
        store.delete_under(&run, &none).await.expect("delete run"),
        (3, 0),
        "big, dir/top.txt and dir/a/b/deep.txt"
    );
}

#[tokio::test]
async fn launcher_moves_artifacts_through_s3() {
    let s3 = server();
    let root = format!("s3://{}/{}", s3.bucket, run_id("launch"));
    let work = tempfile::tempdir().expect("tempdir");
    let launcher = Launcher::with_stores(
        Arc::new(ProcessRuntime::new()),
        Arc::new(ArtifactStores::new(s3_settings(&s3))),
        work.path().join("agent"),
    );
    let run = run_id("run");
    let mut p = step(&run, "produce", &root, "ignored", &["sh", "-c"]);
    p.container.args = strings(&[
        "printf 'x\\ny\\n' > \"$0\"; mkdir -p \"$1\"; echo in-dir > \"$1/f\"",
        "{{$.outputs.artifacts['data'].path}}",
        "{{$.outputs.artifacts['dir'].path}}",
    ]);
    add_output_artifact(&mut p, "data", "system.Dataset");
    add_output_artifact(&mut p, "dir", "system.Artifact");
    let (outcome, _) = run_step(&launcher, &p).await;
    let (_, artifacts) = succeeded(&outcome);
    assert!(artifacts["data"][0].uri.starts_with("s3://"));

    let mut c = step(&run, "consume", &root, "ignored", &["sh", "-c"]);
    c.container.args = strings(&[
        "wc -l < \"$0\" | tr -d ' ' > \"$2\"; cat \"$1/f\"",
        "{{$.inputs.artifacts['data'].path}}",
        "{{$.inputs.artifacts['dir'].path}}",
        "{{$.outputs.parameters['n'].output_file}}",
    ]);
    c.inputs
        .artifacts
        .insert("data".into(), artifacts["data"].clone());
    c.inputs
        .artifacts
        .insert("dir".into(), artifacts["dir"].clone());
    add_output_param(&mut c, "n", ParamType::NumberInteger);
    let (outcome, logs) = run_step(&launcher, &c).await;
    let (parameters, _) = succeeded_or_logs(&outcome, &logs);
    assert_eq!(parameters["n"], json!(2));
    assert!(logs.iter().any(|l| l.line == "in-dir"), "{logs:?}");
}
