//! KFP recurring runs on a 3-node cluster whose leaders die right after committing a firing:
//! every coordinator has the failpoint `recurring-fired` panic on its third firing (the
//! process exits 70 and the test starts it again), so the cluster goes through several leader
//! deaths at fire time. A run every 2 s, `max_concurrency` 1, whose step sleeps 5 s: the ticks
//! fired are consecutive (none skipped, none doubled), no two runs overlap, and once disabled
//! nothing more fires.

use std::time::{Duration, Instant};

use gantry_testkit::cluster::{Cluster, ClusterOpts};
use gantry_testkit::compile_pipeline;
use gantry_testkit::kfp_http::{http_call, multipart_upload};
use serde_json::{json, Value};
use tonic::Status;

/// A KFP call as the harness (admin) on the first node that answers it.
fn kfp(
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Value, Status> {
    let _in_runtime = rt.enter();
    let mut last = Status::unavailable("no node is running");
    for id in c.all_ids() {
        if !c.is_running(id) {
            continue;
        }
        let Some(ch) = c.channel(id) else { continue };
        match rt.block_on(http_call(ch, method, path, content_type, body.clone())) {
            Ok((_, v)) => return Ok(v),
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    || s.code() == tonic::Code::DeadlineExceeded =>
            {
                last = s
            }
            Err(s) => return Err(s),
        }
    }
    Err(last)
}

/// Seconds since the epoch of an RFC 3339 time of the API.
fn secs(v: &Value) -> i64 {
    let t = humantime::parse_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not a time: {v}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn a_recurring_run_fires_each_tick_once_across_leader_deaths_and_stops_when_disabled() {
    let mut opts = ClusterOpts::loopback(3);
    opts.env = vec![("FAILPOINTS".into(), "recurring-fired=2*off->panic".into())];
    let mut c = Cluster::start(opts).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    c.cli().wait_for_agents(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = compile_pipeline("nap", c.dir.path()).unwrap();
    let (ct, body) = multipart_upload(&std::fs::read_to_string(&file).unwrap());
    let p = kfp(
        &c,
        &rt,
        "POST",
        "/apis/v2beta1/pipelines/upload?name=nap",
        &ct,
        body,
    )
    .unwrap();
    let create = json!({
        "display_name": "every-2s",
        "pipeline_version_reference": {"pipeline_id": p["pipeline_id"]},
        "runtime_config": {"parameters": {"seconds": 5}},
        "max_concurrency": 1,
        "trigger": {"periodic_schedule": {"interval_second": 2}},
        "mode": "ENABLE",
    });
    let r = kfp(
        &c,
        &rt,
        "POST",
        "/apis/v2beta1/recurringruns",
        "application/json",
        create.to_string().into_bytes(),
    )
    .unwrap();
    let sched = r["recurring_run_id"].as_str().unwrap().to_string();
    assert_eq!(r["status"], "ENABLED", "{r}");
    let filter = format!(
        "{{\"predicates\":[{{\"operation\":\"EQUALS\",\"key\":\"recurring_run_id\",\"stringValue\":\"{sched}\"}}]}}"
    );
    let runs_path = format!(
        "/apis/v2beta1/runs?page_size=200&sort_by=created_at&filter={}",
        url::form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
    );
    let runs = |c: &Cluster| -> Vec<Value> {
        kfp(c, &rt, "GET", &runs_path, "application/json", Vec::new())
            .map(|v| v["runs"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };

    // Fire, with the leader dying at every third firing of a node, until 7 runs are made.
    let mut deaths = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for id in c.all_ids() {
            if let Some(status) = c.exit_status(id) {
                deaths.push((id, status.code()));
                c.start_node(id).unwrap();
            }
        }
        let n = runs(&c).len();
        if n >= 7 && deaths.len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} runs and {deaths:?} deaths after 180 s\n{}",
            c.logs_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        deaths.iter().all(|(_, code)| *code == Some(70)),
        "a node ended otherwise than by the failpoint's panic: {deaths:?}\n{}",
        c.logs_tail()
    );

    // Disable: a firing committed after it is refused by apply, so the count read after it is
    // final.
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = format!("/apis/v2beta1/recurringruns/{sched}:disable");
    while let Err(e) = kfp(&c, &rt, "POST", &path, "application/json", Vec::new()) {
        assert!(Instant::now() < deadline, "disable: {e:?}");
        for id in c.all_ids() {
            if c.exit_status(id).is_some() {
                c.start_node(id).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let at_disable = runs(&c).len();
    let got = kfp(
        &c,
        &rt,
        "GET",
        &format!("/apis/v2beta1/recurringruns/{sched}"),
        "application/json",
        Vec::new(),
    )
    .unwrap();
    assert_eq!(got["status"], "DISABLED", "{got}");
    // Every run ends; then three periods more, and nothing new.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in c.all_ids() {
            if c.exit_status(id).is_some() {
                c.start_node(id).unwrap();
            }
        }
        let all = runs(&c);
        if !all.is_empty()
            && all.iter().all(|r| {
                ["SUCCEEDED", "FAILED", "CANCELED"].contains(&r["state"].as_str().unwrap_or(""))
            })
        {
            break;
        }
        assert!(Instant::now() < deadline, "runs did not end: {all:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(6));
    let all = runs(&c);
    assert_eq!(
        all.len(),
        at_disable,
        "runs were fired after the recurring run was disabled:\n{all:#?}"
    );

    // Consecutive ticks, each once; runs one after another.
    let mut ticks: Vec<i64> = all.iter().map(|r| secs(&r["scheduled_at"])).collect();
    ticks.sort();
    let steps: Vec<i64> = ticks.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        steps.iter().all(|s| *s == 2),
        "ticks skipped or doubled: {ticks:?} (steps {steps:?})\n{all:#?}"
    );
    let mut spans: Vec<(i64, i64)> = all
        .iter()
        .map(|r| (secs(&r["created_at"]), secs(&r["finished_at"])))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two runs overlapped (max_concurrency 1): {spans:?}"
        );
    }
    for r in &all {
        assert_eq!(r["state"], "SUCCEEDED", "{r:#}");
        assert_eq!(r["recurring_run_id"], sched.as_str());
    }
    c.stop_agent("a1");
}
