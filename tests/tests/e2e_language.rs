//! More of the KFP language end to end on the Docker runtime with artifacts on a real S3
//! server: every parameter type and the typed artifacts, a nested pipeline used twice with
//! its outputs (one from dsl.OneOf), and dsl.importer over s3:// and file:// URIs.

use gantry_testkit::*;
use serde_json::{json, Value};

fn setup(prefix: &str) -> DockerEnv {
    DockerEnv::start(prefix)
}

fn by_display<'a>(run: &'a Value, name: &str) -> &'a Value {
    // Tasks keep their IR names (check, check-2); the display name is not in the run JSON,
    // so find the check whose output says where its inputs came from.
    run["tasks"]
        .as_array()
        .and_then(|ts| {
            ts.iter().find(|t| {
                t["name"].as_str().unwrap_or("").starts_with("check")
                    && t["outputs"]["parameters"]["Output"]
                        .as_str()
                        .is_some_and(|o| o.contains(name))
            })
        })
        .unwrap_or_else(|| panic!("no check task with {name}: {run:#}"))
}

#[test]
fn every_parameter_type_and_typed_artifacts_round_trip() {
    let env = setup("types");
    let (code, run) = env.submit_wait(
        "types",
        &["i=5", "f=1.25", "b=true", "l=[4, 5]", "d={\"z\": 9}"],
    );
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    assert_eq!(
        run["parameters"],
        json!({"s": "in", "i": 5, "f": 1.25, "b": true, "l": [4, 5], "d": {"z": 9}})
    );
    // Task outputs keep their JSON types on the way out and in.
    let produced = &task(&run, "produce")["outputs"]["parameters"];
    assert_eq!(
        *produced,
        json!({"s": "text", "i": 42, "f": 2.5, "b": true, "l": [1, 2, 3], "d": {"a": 1}})
    );
    let from_task: Value = serde_json::from_str(
        by_display(&run, "\"text\"")["outputs"]["parameters"]["Output"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        from_task,
        json!({"s": "text", "i": 42, "f": 2.5, "b": true, "l": [1, 2, 3], "d": {"a": 1},
               "opt": null, "dflt": 7})
    );
    let from_inputs: Value = serde_json::from_str(
        by_display(&run, "\"given\"")["outputs"]["parameters"]["Output"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        from_inputs,
        json!({"s": "in", "i": 5, "f": 1.25, "b": true, "l": [4, 5], "d": {"z": 9},
               "opt": "given", "dflt": 7})
    );
    // Typed artifacts with their metadata, retrievable through the API.
    let arts = &task(&run, "report")["outputs"]["artifacts"];
    assert_eq!(arts["metrics"][0]["type"], "system.Metrics");
    assert_eq!(arts["metrics"][0]["metadata"]["accuracy"], json!(0.9));
    assert_eq!(arts["metrics"][0]["metadata"]["rows"], json!(100));
    assert_eq!(arts["cm"][0]["type"], "system.ClassificationMetrics");
    let matrix = &arts["cm"][0]["metadata"]["confusionMatrix"];
    assert_eq!(matrix["rows"][1]["row"], json!([1, 9]), "{matrix:#}");
    assert_eq!(arts["page"][0]["type"], "system.HTML");
    assert_eq!(arts["notes"][0]["type"], "system.Markdown");
    if env.s3.root.is_some() {
        let page = env
            .s3
            .read_object(arts["page"][0]["uri"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&page), "<h1>report</h1>");
        let notes = env
            .s3
            .read_object(arts["notes"][0]["uri"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&notes), "# notes");
    }
}

#[test]
fn a_nested_pipeline_used_twice_hands_on_its_outputs() {
    let env = setup("nested");
    let (code, run) = env.submit_wait("nested", &[]);
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    assert_eq!(
        task(&run, "combine")["outputs"]["parameters"]["Output"],
        json!("big:50,small:2")
    );
    // Each use is its own DAG task with its own artifacts.
    let uris: Vec<&str> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "write")
        .map(|t| t["outputs"]["artifacts"]["out"][0]["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris.len(), 2);
    assert_ne!(uris[0], uris[1]);
}

#[test]
fn the_importer_brings_in_s3_and_file_artifacts_with_metadata() {
    // Importers read only under an import root or from an allowed bucket.
    let local = tempfile::tempdir().unwrap();
    let import_root = format!("file://{}", local.path().display());
    let env = DockerEnv::start_configured("importer", |s3| {
        vec![
            "--import-root".into(),
            import_root.clone(),
            "--allow-bucket".into(),
            s3.bucket.clone(),
        ]
    });
    let file = compile_pipeline("importer", env.out.path()).unwrap();
    let cli = env.cluster.cli();

    // An object put on the S3 server by someone else.
    let root = env
        .s3
        .root
        .clone()
        .expect("this test needs the S3 server's directory (GANTRY_TEST_S3_DIR)");
    let key = "external/raw.csv";
    let path = root.join(&env.s3.bucket).join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "from-s3").unwrap();
    let s3_uri = format!("s3://{}/{key}", env.s3.bucket);
    let (code, run) = cli.submit_wait(&file, &[&format!("uri={s3_uri}")]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let imp = task(&run, "importer");
    assert_eq!(imp["attempts"], 0, "an importer runs nothing");
    assert_eq!(
        imp["outputs"]["artifacts"]["artifact"][0]["uri"],
        s3_uri.as_str()
    );
    assert_eq!(
        imp["outputs"]["artifacts"]["artifact"][0]["metadata"]["source"],
        "the-test"
    );
    assert_eq!(
        task(&run, "read")["outputs"]["parameters"]["Output"],
        json!("from-s3|the-test")
    );

    // A file on the agent's host, under the import root.
    let f = local.path().join("local.txt");
    std::fs::write(&f, "from-file").unwrap();
    let (code, run) = cli
        .submit_wait(&file, &[&format!("uri=file://{}", f.display())])
        .unwrap();
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(
        task(&run, "read")["outputs"]["parameters"]["Output"],
        json!("from-file|the-test")
    );

    // A URI that cannot be read fails the consumer with the reason, not silently.
    let (code, run) = cli
        .submit_wait(
            &file,
            &[&format!("uri=s3://{}/missing/object", env.s3.bucket)],
        )
        .unwrap();
    assert_eq!(code, 1, "{run:#}");
    let err = task(&run, "read")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains("missing/object"), "{err}");
}
