//! The README's example (the Kubeflow guide's training pipeline, plain kfp code) runs on the
//! Docker runtime with artifacts on S3: preprocess → train → evaluate → deploy if accurate.

use gantry_testkit::*;
use serde_json::json;

#[test]
fn training_example_trains_evaluates_and_deploys_only_when_accurate() {
    ensure_images().unwrap();
    let s3 = S3::start().unwrap();
    let cluster = DevCluster::start(
        Runtime::Docker,
        Some(&s3.artifact_root("example")),
        &s3.env(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = compile_source(
        std::path::Path::new("examples/training_pipeline.py"),
        out.path(),
    )
    .unwrap();
    let cli = cluster.cli();

    let (code, run) = cli
        .submit_wait(&file, &["n_estimators=20", "min_accuracy=0.8"])
        .unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", cluster.log());
    let pre = task(&run, "preprocess");
    assert_eq!(
        pre["outputs"]["artifacts"]["train"][0]["metadata"]["rows"],
        json!(105)
    );
    let model = &task(&run, "train")["outputs"]["artifacts"]["model"][0];
    assert_eq!(model["type"], "system.Model");
    assert_eq!(model["metadata"]["framework"], "scikit-learn");
    let eval = task(&run, "evaluate");
    let metrics = &eval["outputs"]["artifacts"]["metrics"][0];
    assert_eq!(metrics["type"], "system.Metrics");
    let accuracy = metrics["metadata"]["accuracy"]
        .as_f64()
        .expect("accuracy logged");
    assert!(accuracy >= 0.8, "{accuracy}");
    assert_eq!(
        eval["outputs"]["parameters"]["Output"].as_f64(),
        Some(accuracy)
    );
    assert_eq!(task(&run, "deploy")["state"], "SUCCEEDED");
    let logs = cli.run(&[
        "run",
        "logs",
        run["run_id"].as_str().unwrap(),
        "--task",
        "deploy",
    ]);
    assert!(logs.stdout.contains("deploying"), "{}", logs.stdout);

    // An unreachable bar skips the deploy step and the run still succeeds.
    let (code, run) = cli
        .submit_wait(&file, &["n_estimators=5", "min_accuracy=1.5"])
        .unwrap();
    assert_eq!(code, 0, "{run:#}");
    let deploy_branch = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"].as_str().unwrap_or("").starts_with("condition"))
        .expect("the condition DAG task");
    assert_eq!(deploy_branch["state"], "SKIPPED");
}
