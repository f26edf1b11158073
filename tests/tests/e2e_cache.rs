//! Execution caching end to end on the Docker runtime with artifacts on a real S3 server: the
//! linear pipeline compiled by kfp 2.16.1 (caching on, the SDK's default), submitted through
//! the CLI to `gantry dev`.

use gantry_testkit::*;
use serde_json::Value;

fn containers(run: &Value) -> Vec<&Value> {
    run["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter(|t| {
                    ["make-data", "scale", "report"].contains(&t["name"].as_str().unwrap_or(""))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn all_ran(run: &Value) -> bool {
    containers(run)
        .iter()
        .all(|t| t["state"] == "SUCCEEDED" && t["attempts"] == 1)
}

#[test]
fn a_second_identical_submission_is_served_from_the_cache_until_told_otherwise() {
    let env = DockerEnv::start("cache");
    let (s3, cluster, out) = (&env.s3, &env.cluster, &env.out);
    let file = compile_pipeline("linear", out.path()).unwrap();
    let cli = cluster.cli();
    let params = ["rows=5", "factor=2"];

    let (code, first) = cli.submit_wait(&file, &params).unwrap();
    assert_eq!(code, 0, "{first:#}\n{}", cluster.log());
    assert_eq!(containers(&first).len(), 3);
    assert!(all_ran(&first), "{first:#}");
    let first_id = first["run_id"].as_str().unwrap();

    // Same pipeline, same inputs: nothing runs, the outputs are the first run's.
    let (code, second) = cli.submit_wait(&file, &params).unwrap();
    assert_eq!(code, 0, "{second:#}");
    for t in containers(&second) {
        assert_eq!(t["state"], "CACHED", "{t:#}");
        assert_eq!(t["attempts"], 0, "a cached task starts no container: {t:#}");
        let name = t["name"].as_str().unwrap();
        assert_eq!(t["cached_from"], format!("{first_id}/{name}"));
        assert_eq!(t["outputs"], task(&first, name)["outputs"], "{name}");
    }
    assert!(containers_of_run(second["run_id"].as_str().unwrap()).is_empty());

    // Other inputs: runs.
    let (code, other) = cli.submit_wait(&file, &["rows=6", "factor=2"]).unwrap();
    assert_eq!(code, 0, "{other:#}");
    assert!(all_ran(&other), "{other:#}");

    // Switched off, or entries older than allowed: runs.
    let (code, off) = cli
        .submit_wait_with(&file, &params, &["--disable-cache"])
        .unwrap();
    assert_eq!(code, 0, "{off:#}");
    assert!(all_ran(&off), "--disable-cache: {off:#}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (code, young) = cli
        .submit_wait_with(&file, &params, &["--cache-max-age", "10ms"])
        .unwrap();
    assert_eq!(code, 0, "{young:#}");
    assert!(all_ran(&young), "--cache-max-age 10ms: {young:#}");

    // An unknown task name or a bad duration is refused and creates nothing.
    let before = cli.run(&["run", "list", "-o", "json"]).json().unwrap();
    let f = file.to_string_lossy().into_owned();
    for flags in [
        vec!["--task-cache-max-age", "nosuch=1h"],
        vec!["--cache-max-age", "soon"],
    ] {
        let mut args = vec!["run", "submit", f.as_str(), "-p", "rows=5"];
        args.extend(flags.iter().copied());
        let r = cli.run(&args);
        assert_eq!(r.code, 2, "{flags:?}: {}", r.stderr);
    }
    let after = cli.run(&["run", "list", "-o", "json"]).json().unwrap();
    assert_eq!(
        before.as_array().map(Vec::len),
        after.as_array().map(Vec::len)
    );

    // The newest entry for make-data is the last run's; remove its artifact: the entry is
    // dropped and the task runs again instead of handing on a missing file.
    let data_uri = task(&young, "make-data")["outputs"]["artifacts"]["data"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    if s3.root.is_none() {
        panic!("this test needs the S3 server's directory (GANTRY_TEST_S3_DIR)");
    }
    s3.delete_object(&data_uri).unwrap();
    let (code, again) = cli.submit_wait(&file, &params).unwrap();
    assert_eq!(code, 0, "{again:#}");
    let make = task(&again, "make-data");
    assert_eq!(make["state"], "SUCCEEDED", "{again:#}");
    assert_eq!(make["attempts"], 1);
    assert!(
        cluster.log().contains("artifacts are gone"),
        "{}",
        cluster.log()
    );
}
