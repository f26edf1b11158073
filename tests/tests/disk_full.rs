//! A coordinator whose disk fills up: its data directory is a small tmpfs, filled by
//! submissions that each carry a 200 KiB parameter until the Raft log cannot grow. The node
//! must then refuse writes with a clear error (gRPC RESOURCE_EXHAUSTED naming the disk), keep
//! every acknowledged run, and resume by itself once space is freed; after a restart from the
//! same directory everything acknowledged is still there (nothing half-written broke the log).
//!
//! Mounting needs root, as the CI and the other fault tests run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::cluster::{Cluster, ClusterOpts};
use tonic::Code;

const PIPELINE: &str = include_str!("../../core/src/engine/testdata/container_io.yaml");
/// The tmpfs: room for the binaries' start-up files and some submissions.
const DISK: &str = "size=24m";

/// A tmpfs mounted over a directory; unmounted (lazily, so even with files open) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", DISK, "gantry-disk-full"])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system at `dir` with `filler` until no byte more fits.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).expect("creating the filler");
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

fn submit(
    rt: &tokio::runtime::Runtime,
    c: &Cluster,
    n: usize,
) -> Result<pb::SubmitRunResponse, tonic::Status> {
    let message = format!("{n:06}").repeat((200 << 10) / 6);
    rt.block_on(async {
        RunServiceClient::new(c.channel(1).unwrap())
            .submit_run(pb::SubmitRunRequest {
                pipeline_yaml: PIPELINE.to_string(),
                parameters: [("message".to_string(), message)].into(),
                request_id: format!("disk-full-{n}"),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    })
}

/// Waits until the node has applied its log again after a start (the harness's token is in
/// it): a client is refused as unknown before.
fn wait_ready(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.cli().run(&["run", "list", "-o", "json"]);
        if out.code == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node never answered: {}",
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn listed_ids(c: &Cluster) -> Vec<String> {
    let out = c
        .cli()
        .run(&["run", "list", "--limit", "1000", "-o", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs = out.json().unwrap();
    runs.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_full_disk_refuses_writes_clearly_loses_nothing_and_resumes_by_itself() {
    let mut opts = ClusterOpts::loopback(1);
    opts.env = vec![("GANTRY_PROPOSE_TIMEOUT_MS".into(), "3000".into())];
    let mut c = Cluster::start(opts).unwrap();
    c.wait_leader(&[1], Duration::from_secs(30)).unwrap();

    // Move the data directory onto the tmpfs.
    c.kill9(1);
    let data = c.data_dir(1);
    let backing = data.with_extension("before");
    std::fs::rename(&data, &backing).unwrap();
    std::fs::create_dir(&data).unwrap();
    let _disk = Tmpfs::mount(&data);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(backing.join("."))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());
    c.start_node(1).unwrap();
    c.wait_leader(&[1], Duration::from_secs(30)).unwrap();
    wait_ready(&c);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Leave little room, then submit until the log cannot grow.
    let filler = data.join("filler");
    fill(&filler);
    let keep_free = 1 << 20;
    let filled = std::fs::metadata(&filler).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled.saturating_sub(keep_free))
        .unwrap();

    let mut acknowledged: Vec<String> = Vec::new();
    let mut refusal = None;
    for n in 0..200 {
        match submit(&rt, &c, n) {
            Ok(r) => acknowledged.push(r.run_id),
            Err(s) if s.code() == Code::ResourceExhausted => {
                refusal = Some(s);
                break;
            }
            // The submission the disk filled up under waits out its proposal timeout; it may
            // still take effect later.
            Err(s) if s.code() == Code::DeadlineExceeded => {}
            Err(s) => panic!("submission {n}: unexpected {s:?}"),
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    eprintln!(
        "{} runs acknowledged, then: {}",
        acknowledged.len(),
        refusal.message()
    );
    assert!(
        refusal.message().contains("cannot write its raft log")
            && refusal.message().contains("No space left on device")
            && refusal.message().contains("resumes by itself"),
        "{refusal:?}"
    );
    assert!(
        !acknowledged.is_empty(),
        "nothing fitted before the disk filled"
    );
    // The node says so in its status, and still refuses a second later.
    let status = c.status(1).expect("status answers while the disk is full");
    assert_eq!(status.role, "DISK_FULL", "{status:?}");
    std::thread::sleep(Duration::from_secs(1));
    let again = submit(&rt, &c, 1000).unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    assert!(c.is_running(1), "the coordinator exited on a full disk");

    // Free the space: the node writes what it held and takes writes again by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        match submit(&rt, &c, 2000) {
            Ok(r) => break r,
            Err(s) if Instant::now() < deadline => {
                eprintln!("not yet: {}", s.message());
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(s) => panic!("no write went through 30 s after space was freed: {s:?}"),
        }
    };
    acknowledged.push(resumed.run_id);
    let listed = listed_ids(&c);
    for id in &acknowledged {
        assert!(
            listed.contains(id),
            "acknowledged run {id} is gone: {listed:?}"
        );
    }

    // A restart from the same directory finds every acknowledged run.
    c.kill9(1);
    c.start_node(1).unwrap();
    c.wait_leader(&[1], Duration::from_secs(30)).unwrap();
    wait_ready(&c);
    let listed = listed_ids(&c);
    for id in &acknowledged {
        assert!(
            listed.contains(id),
            "acknowledged run {id} is gone after the restart: {listed:?}"
        );
    }
    drop(c);
}
