//! The linear pipeline on the process runtime: lightweight Python components run unmodified
//! with the agent's own Python (kfp installed on its PATH), artifacts under a file:// root.

use gantry_testkit::*;
use serde_json::json;

#[test]
fn linear_pipeline_on_the_process_runtime() {
    let out = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let cluster = DevCluster::start(Runtime::Process, Some(&root), &[]).expect("gantry dev");
    let file = compile_pipeline("linear", out.path()).unwrap();
    let (code, run) = cluster.cli().submit_wait(&file, &["rows=4"]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", cluster.log());
    assert_eq!(
        task(&run, "report")["outputs"]["parameters"]["Output"],
        json!("4 rows, total 12.0")
    );
    let uri = task(&run, "make-data")["outputs"]["artifacts"]["data"][0]["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let path = uri.strip_prefix("file://").expect("file uri");
    assert!(path.starts_with(artifacts.path().to_str().unwrap()));
    assert_eq!(std::fs::read_to_string(path).unwrap(), "0\n1\n2\n3\n");
    let agents = cluster
        .cli()
        .run(&["agent", "list", "-o", "json"])
        .json()
        .unwrap();
    assert_eq!(agents[0]["runtime"], "process");
}
