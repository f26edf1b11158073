//! Submission limits and the proposal timeout on a real three-node cluster: a run over a
//! limit is refused at submit with the limit's flag in the error and creates nothing; a write
//! that cannot be committed (no majority) fails within `--propose-timeout-ms` instead of
//! hanging.

use std::time::{Duration, Instant};

use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::cluster::{Cluster, ClusterOpts};
use tonic::Code;

/// A loop over `rows` around a loop over `cols` (2 + 2·rows + 2·rows·cols tasks).
const GRID: &str = include_str!("../../core/src/engine/testdata/nested_loops.yaml");
/// Trigger conditions (`dsl.If`), each longer than 40 bytes.
const CONDITIONS: &str = include_str!("../../core/src/engine/testdata/conditions.yaml");

#[test]
fn runs_over_the_limits_are_refused_and_writes_without_a_majority_time_out() {
    let mut opts = ClusterOpts::loopback(3);
    opts.env = vec![
        ("GANTRY_MAX_TASKS_PER_RUN".into(), "30".into()),
        ("GANTRY_MAX_JSON_DEPTH".into(), "4".into()),
        ("GANTRY_MAX_CEL_BYTES".into(), "40".into()),
        ("GANTRY_PROPOSE_TIMEOUT_MS".into(), "2000".into()),
        // A leader steps down 5 to 10 s after it last heard from a majority (check-quorum),
        // so the leader left alone below still leads when its proposal times out.
        ("GANTRY_ELECTION_TICKS".into(), "50".into()),
    ];
    let mut c = Cluster::start(opts).unwrap();
    let (leader, _) = c
        .wait_leader(&c.all_ids(), Duration::from_secs(60))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grid.yaml");
    std::fs::write(&file, GRID).unwrap();
    let f = file.to_string_lossy().into_owned();
    let cli = c.cli();
    let submit = |rows: &str, cols: &str| {
        cli.run(&[
            "run",
            "submit",
            &f,
            "-p",
            &format!("rows={rows}"),
            "-p",
            &format!("cols={cols}"),
            "-o",
            "json",
        ])
    };

    // 3 × 4 cells: 32 tasks, over 30.
    let r = submit(r#"["a","b","c"]"#, r#"["1","2","3","4"]"#);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "the run would create at least 32 tasks (loop \"for-loop-1\" × 3 around \
             \"for-loop-2\" × 4), over the limit of 30 tasks per run (--max-tasks-per-run)"
        ),
        "{}",
        r.stderr
    );
    // Five levels of lists, over 4.
    let r = submit(r#"[[[[["deep"]]]]]"#, r#"["1"]"#);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(
            "parameter \"rows\" nests 5 levels deep, over the limit of 4 (--max-json-depth)"
        ),
        "{}",
        r.stderr
    );
    // A condition longer than 40 bytes.
    let cond_file = dir.path().join("conditions.yaml");
    std::fs::write(&cond_file, CONDITIONS).unwrap();
    let r = cli.run(&["run", "submit", &cond_file.to_string_lossy(), "-o", "json"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr
            .contains("bytes of CEL, over the limit of 40 bytes (--max-cel-bytes)")
            && r.stderr.contains("the condition of task"),
        "{}",
        r.stderr
    );
    let listed = cli.run(&["run", "list", "-o", "json"]).json().unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed:#}");

    // 3 × 3 cells: 26 tasks, within the limit.
    let r = submit(r#"["a","b","c"]"#, r#"["1","2","3"]"#);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // No agent anywhere: each ready step says so (the pass skips placement altogether). The
    // reasons are the leader's, from its last pass: asked of the leader.
    let id = r.json().unwrap()["run_id"].as_str().unwrap().to_string();
    let at_leader = c.cli_for(&[leader]);
    gantry_testkit::eventually(Duration::from_secs(20), || {
        let run = at_leader.get_run(&id).map_err(|e| e.to_string())?;
        let tasks = run["tasks"].as_array().cloned().unwrap_or_default();
        let ready: Vec<_> = tasks.iter().filter(|t| t["state"] == "READY").collect();
        let told = |t: &&serde_json::Value| t["waiting_reason"] == "no agent is connected";
        match !ready.is_empty() && ready.iter().all(told) {
            true => Ok(()),
            false => Err(format!("{run:#}")),
        }
    });

    // Without a majority nothing commits: the submission fails when the timeout is up,
    // naming it, and says the write may still take effect.
    for id in c.all_ids() {
        if id != leader {
            c.kill9(id);
        }
    }
    // One gRPC call, as the CLI would retry it on other nodes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let answer = rt.block_on(async {
        RunServiceClient::new(c.channel(leader).unwrap())
            .submit_run(pb::SubmitRunRequest {
                pipeline_yaml: GRID.to_string(),
                parameters: [
                    ("rows".to_string(), r#"["a"]"#.to_string()),
                    ("cols".to_string(), r#"["1"]"#.to_string()),
                ]
                .into(),
                ..Default::default()
            })
            .await
    });
    let status = answer.expect_err("nothing can commit");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("not committed within 2s")
            && status.message().contains("may still take effect"),
        "after {:?}: {status:?}",
        started.elapsed()
    );
}
