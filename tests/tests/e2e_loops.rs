//! dsl.ParallelFor end to end on the Docker runtime with artifacts on a real S3 server:
//! pipelines compiled by kfp 2.16.1 in the test run, submitted through the CLI to `gantry dev`.

use std::collections::BTreeSet;

use gantry_testkit::*;
use serde_json::{json, Value};

fn setup(prefix: &str) -> DockerEnv {
    DockerEnv::start(prefix)
}

fn tasks_named<'a>(run: &'a Value, name: &str) -> Vec<&'a Value> {
    run["tasks"]
        .as_array()
        .map(|ts| ts.iter().filter(|t| t["name"] == name).collect())
        .unwrap_or_default()
}

/// The most tasks whose [started_at, finished_at) intervals overlap. The timestamps are RFC
/// 3339 with milliseconds in UTC, so they order as strings.
fn max_overlap(tasks: &[&Value]) -> usize {
    let mut events: Vec<(String, i32)> = Vec::new();
    for t in tasks {
        let (Some(s), Some(f)) = (t["started_at"].as_str(), t["finished_at"].as_str()) else {
            panic!("task without times: {t:#}");
        };
        events.push((s.to_string(), 1));
        events.push((f.to_string(), -1));
    }
    // At equal times an end comes before a start: the interval is half-open.
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn fifty_iterations_five_at_a_time_with_distinct_artifacts_collected_and_an_exit_handler() {
    let env = setup("fanout");
    let (code, run) = env.submit_wait("fanout", &["n=50"]);
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());

    let squares = tasks_named(&run, "square");
    assert_eq!(squares.len(), 50, "{run:#}");
    let iterations: BTreeSet<i64> = squares
        .iter()
        .map(|t| t["iteration"].as_i64().expect("iteration set"))
        .collect();
    assert_eq!(iterations, (0..50).collect());
    let uris: BTreeSet<&str> = squares
        .iter()
        .map(|t| t["outputs"]["artifacts"]["out"][0]["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris.len(), 50, "every iteration writes its own artifact");
    for t in &squares {
        let x = t["iteration"].as_i64().unwrap();
        assert_eq!(t["outputs"]["parameters"]["Output"], json!(x * x), "{t:#}");
        assert_eq!(
            t["outputs"]["artifacts"]["out"][0]["metadata"]["x"],
            json!(x)
        );
        if env.s3.root.is_some() {
            let uri = t["outputs"]["artifacts"]["out"][0]["uri"].as_str().unwrap();
            let body = env.s3.read_object(uri).unwrap();
            assert_eq!(String::from_utf8_lossy(&body), (x * x).to_string());
        }
    }
    let overlap = max_overlap(&squares);
    assert!(overlap <= 5, "parallelism 5 exceeded: {overlap} at once");
    assert!(
        overlap >= 2,
        "the iterations never ran side by side: {overlap}"
    );

    // dsl.Collected: the sum of the squares, and every dataset read back.
    let sum: i64 = (0..50).map(|x: i64| x * x).sum();
    assert_eq!(
        task(&run, "total")["outputs"]["parameters"]["Output"],
        json!(sum)
    );
    let mut read: Vec<i64> = task(&run, "read-all")["outputs"]["parameters"]["Output"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    read.sort_unstable();
    assert_eq!(read, (0..50).map(|x: i64| x * x).collect::<Vec<_>>());

    let report = task(&run, "report")["outputs"]["parameters"]["Output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(report.starts_with("COMPLETE|exit-handler-1|"), "{report}");
    assert!(containers_of_run(run["run_id"].as_str().unwrap()).is_empty());
}

#[test]
fn a_failing_iteration_fails_the_run_and_the_exit_handler_sees_it() {
    let env = setup("fanout-fail");
    let (code, run) = env.submit_wait("fanout", &["n=6", "fail_on=3"]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(run["state"], "FAILED");
    let squares = tasks_named(&run, "square");
    assert_eq!(squares.len(), 6, "the other iterations still run: {run:#}");
    for t in &squares {
        let want = if t["iteration"] == 3 {
            "FAILED"
        } else {
            "SUCCEEDED"
        };
        assert_eq!(t["state"], want, "{t:#}");
    }
    let failed = squares.iter().find(|t| t["iteration"] == 3).unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("exit code"),
        "{failed:#}"
    );
    assert_eq!(task(&run, "total")["state"], "SKIPPED");
    assert_eq!(task(&run, "read-all")["state"], "SKIPPED");
    let report = task(&run, "report");
    assert_eq!(
        report["state"], "SUCCEEDED",
        "the exit task runs anyway: {run:#}"
    );
    let line = report["outputs"]["parameters"]["Output"].as_str().unwrap();
    assert!(line.starts_with("FAILED|exit-handler-1|"), "{line}");
    assert!(line.contains("iteration 3"), "{line}");
}
