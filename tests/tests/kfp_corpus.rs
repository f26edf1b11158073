//! The KFP conformance corpus end to end: every pipeline under `valid/` of the corpus that
//! `GANTRY_KFP_CORPUS` names (CI: `../shared/kfp-conformance`) is submitted to `gantry dev` on the Docker runtime, with artifacts on a real S3 server, and runs
//! its own commands in containers; every file under `invalid/` must be refused. The outcome of
//! each file is written into `docs/kfp-conformance.md` and compared with the committed table, so a
//! change in what Gantry runs, refuses or fails shows up in review.
//!
//! Beyond the golden table, the test holds these rules whatever the table says:
//! - every file under `invalid/` is refused at submit;
//! - every pipeline under `valid/failing/` ends FAILED, with only its `fail*` tasks failing for
//!   their exit code and its exit handlers having run and succeeded;
//! - a refusal names a feature that needs Kubernetes;
//! - any other FAILED run failed for a reason of this machine (an image no local build provides,
//!   or a step that needs the internet), never for a reason inside Gantry.
//!
//! Without `GANTRY_KFP_CORPUS` the test says so in one line and passes, starting nothing.
//! `GANTRY_BLESS=1 cargo test -p gantry-tests --test kfp_corpus` rewrites the table.
//! `GANTRY_CORPUS_FILTER=a,b` runs only the files whose path contains one of the comma-separated
//! parts (the table is then printed, not compared).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gantry_testkit::corpus::{cell, corpus_dir, relative, yaml_files};
use gantry_testkit::*;
use serde_json::Value;

const TABLE: &str = "docs/kfp-conformance.md";
/// Runs in flight at once: enough to overlap container start-up on two cores, few enough that
/// a wide loop does not start hundreds of Python interpreters at once.
const WINDOW: usize = 7;
/// A pipeline's time limit: the slowest corpus pipeline ends within a few minutes on a loaded
/// two-core machine, except the ones in [`SLOW`], which sleep ten minutes by design.
const RUN_LIMIT: Duration = Duration::from_secs(600);
const SLOW_RUN_LIMIT: Duration = Duration::from_secs(900);
/// Pipelines that take minutes whatever their arguments: submitted first, so they sleep while
/// the others run.
const SLOW: &[&str] = &["valid/long-running.yaml"];

/// Public base images the corpus names, and the local image that stands in for each: the
/// Python one carries Python 3.11 with kfp 2.14.3 (the SDK version most of the corpus's steps
/// pin, so their `pip install kfp==2.14.3` is already satisfied), the small one a static
/// busybox (images/build.sh). Images of a particular project (`gcr.io/my-image`, `kfp-image`,
/// Google Cloud images) have no stand-in: their steps fail at the image pull, and the table
/// says so.
const PYTHON_STAND_IN: &str = "gantry/python-kfp:3.11-kfp2.14.3";
const PYTHON_ALIASES: &[&str] = &[
    "python:3.11",
    "registry.access.redhat.com/ubi9/python-311:latest",
    "public.ecr.aws/docker/library/python:3.12",
    "python:3.7",
    "python:alpine3.9",
];
const BUSYBOX_ALIASES: &[&str] = &[
    "alpine",
    "alpine:latest",
    "alpine:3.23",
    "ghcr.io/containerd/busybox",
    "library/bash",
];
/// What python:3.11 names outside this test (images/build.sh): kfp 2.16.1, which the other
/// tests' compiled components pin.
const PYTHON_DEFAULT: &str = "gantry/python-kfp:3.11";

fn docker_tag(source: &str, alias: &str) {
    let ok = Command::new("docker")
        .args(["tag", source, alias])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "docker tag {source} {alias} failed (run images/build.sh)"
    );
}

/// Points python:3.11 back at the default image when the test ends, also when it fails.
struct RestorePythonTag;

impl Drop for RestorePythonTag {
    fn drop(&mut self) {
        let ok = Command::new("docker")
            .args(["tag", PYTHON_DEFAULT, "python:3.11"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "kfp_corpus: could not tag {PYTHON_DEFAULT} python:3.11 back; run images/build.sh"
            );
        }
    }
}

fn tag_stand_in_images() -> RestorePythonTag {
    for (source, aliases) in [
        (PYTHON_STAND_IN, PYTHON_ALIASES),
        ("gantry/busybox:latest", BUSYBOX_ALIASES),
    ] {
        for alias in aliases {
            docker_tag(source, alias);
        }
    }
    RestorePythonTag
}

/// Values for the pipeline inputs the corpus declares without defaults, by file.
fn arguments(file: &str) -> Vec<&'static str> {
    match file {
        "valid/arguments_parameters.yaml" => vec!["param2=gantry"],
        "valid/container_io.yaml" => vec!["text=hello"],
        "valid/container_with_artifact_output.yaml" => vec!["num_epochs=2"],
        "valid/container_with_concat_placeholder.yaml" => vec!["text1=hello"],
        "valid/containerized_python_component.yaml" => vec!["message1=a", "message2=b"],
        "valid/critical/add_numbers.yaml" => vec!["a=1", "b=2"],
        // The step checks that the variable is set in its environment.
        "valid/env-var.yaml" => vec!["env_var=GANTRY_RUN_ID"],
        "valid/essential/concat_message.yaml" => vec!["message1=a", "message2=b"],
        "valid/essential/dict_input.yaml" => vec![r#"struct={"a": 1, "b": "two"}"#],
        "valid/essential/lightweight_python_functions_pipeline.yaml" => vec!["message=hello"],
        "valid/essential/lightweight_python_functions_with_outputs.yaml" => vec![
            "first_message=a",
            "first_number=1",
            "second_message=b",
            "second_number=2",
        ],
        "valid/identity.yaml" => vec!["value=x"],
        "valid/local_execution/local_execution_pipeline_with_ignore_upstream_failure.yaml" => {
            vec!["marker_path=/tmp/marker"]
        }
        "valid/local_execution/local_execution_pipeline_with_retry.yaml" => {
            vec!["counter_path=/tmp/counter"]
        }
        "valid/pipeline_with_condition_dynamic_task_output_custom_training_job.yaml"
        | "valid/pipeline_with_dynamic_task_output_custom_training_job.yaml" => {
            vec!["location=us-central1", "project=gantry"]
        }
        "valid/pipeline_with_metadata_fields.yaml" => vec!["string=hello"],
        "valid/pipeline_with_parallelfor_parallelism.yaml" => {
            vec![r#"loop_parameter=["a","b","c"]"#]
        }
        "valid/pipeline_with_parallelfor_pipeline_param.yaml" => {
            vec![r#"loop_parameter=["a","b"]"#, "prefix=p"]
        }
        "valid/pipeline_with_various_io_types.yaml" => vec!["input1=x"],
        "valid/preprocess.yaml" => vec![
            r#"input_dict_parameter={"a": 1}"#,
            r#"input_list_parameter=["x","y"]"#,
            "message=hello",
        ],
        "valid/pvc_mount.yaml" => vec!["pvc_name=data"],
        "valid/sequential_v1.yaml" => vec!["param1=a", "param2=b"],
        "valid/sequential_v2.yaml" => vec!["url=gs://gantry/file.txt"],
        "valid/take_nap_compiled.yaml" | "valid/take_nap_pipeline_root_compiled.yaml" => {
            vec!["naptime_secs=2"]
        }
        "valid/upload_download_compiled.yaml" => {
            vec![
                "bucket_name=gantry",
                "mlpipeline_minio_artifact_secret=none",
            ]
        }
        _ => vec![],
    }
}

/// `-a NAME=file://…` for every input artifact the pipeline's root declares: one small text
/// file stands in for each.
fn input_artifact_flags(doc: &Value, inputs: &tempfile::TempDir) -> Vec<String> {
    let uri = format!("file://{}", inputs.path().join("data.txt").display());
    doc["root"]["inputDefinitions"]["artifacts"]
        .as_object()
        .map(|a| {
            a.keys()
                .flat_map(|name| ["-a".to_string(), format!("{name}={uri}")])
                .collect()
        })
        .unwrap_or_default()
}

/// The pipeline-language features a file uses, read from its YAML (not from Gantry's parser),
/// so the table says what the pipeline asks for.
fn features(doc: &Value) -> String {
    let mut f = BTreeSet::new();
    let components = doc["components"].as_object().cloned().unwrap_or_default();
    let mut dags: Vec<&Value> = vec![&doc["root"]["dag"]];
    for (name, c) in &components {
        if c.get("dag").is_some() {
            dags.push(&c["dag"]);
            let kind = ["comp-condition-", "comp-for-loop-", "comp-exit-handler-"]
                .iter()
                .any(|p| name.starts_with(p));
            if !kind {
                f.insert("nested pipeline");
            }
        }
    }
    for dag in &dags {
        for (_, t) in dag["tasks"].as_object().cloned().unwrap_or_default() {
            if t.get("parameterIterator").is_some() || t.get("artifactIterator").is_some() {
                f.insert("loop");
                if t["iteratorPolicy"]["parallelismLimit"]
                    .as_i64()
                    .unwrap_or(0)
                    > 0
                {
                    f.insert("parallelism");
                }
            }
            if t["triggerPolicy"].get("condition").is_some() {
                f.insert("condition");
            }
            if t["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED" {
                f.insert("exit handler");
            }
            if t.get("retryPolicy").is_some() {
                f.insert("retry");
            }
            let text = t.to_string();
            if text.contains("PipelineTaskFinalStatus") || text.contains("taskFinalStatus") {
                f.insert("final status");
            }
        }
        let outs = dag["outputs"].to_string();
        if outs.contains("valueFromOneof") {
            f.insert("oneof");
        }
    }
    for (_, e) in doc["deploymentSpec"]["executors"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        if e.get("importer").is_some() {
            f.insert("importer");
        }
        if e["container"].get("resources").is_some() {
            f.insert("resources");
        }
    }
    let text = doc.to_string();
    if text.contains("\"artifacts\"") {
        f.insert("artifacts");
    }
    if components.values().any(|c| {
        c["inputDefinitions"]["parameters"]
            .as_object()
            .is_some_and(|p| p.values().any(|d| d["isOptional"] == true))
    }) {
        f.insert("optional inputs");
    }
    if doc.get("platforms").is_some() || doc["platformSpec"].is_object() {
        f.insert("kubernetes platform");
    }
    if f.is_empty() {
        f.insert("container");
    }
    f.into_iter().collect::<Vec<_>>().join(", ")
}

/// Names of the tasks that run whatever their upstream did: exit handlers' exit tasks.
fn exit_tasks(doc: &Value) -> BTreeSet<String> {
    let mut dags = vec![&doc["root"]["dag"]];
    if let Some(cs) = doc["components"].as_object() {
        dags.extend(cs.values().map(|c| &c["dag"]));
    }
    dags.iter()
        .filter_map(|d| d["tasks"].as_object())
        .flat_map(|ts| ts.iter())
        .filter(|(_, t)| t["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED")
        .map(|(name, _)| name.clone())
        .collect()
}

fn load(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_default();
    // The platform section, when present, is a second YAML document.
    // YAML 1.2 scalars, as the IR parser reads them: `n` and `yes` stay strings.
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    };
    let Ok(docs) = serde_saphyr::from_multiple_with_options::<Value>(&text, options) else {
        return Value::Null;
    };
    let mut first = docs.first().cloned().unwrap_or(Value::Null);
    if let (Some(platform), Value::Object(m)) = (docs.get(1), &mut first) {
        m.insert("platformSpec".into(), platform.clone());
    }
    first
}

/// The container tasks that failed, in name order: (name, error).
fn failed_steps(run: &Value) -> Vec<(String, String)> {
    let tasks = run["tasks"].as_array().cloned().unwrap_or_default();
    let parents: BTreeSet<String> = tasks
        .iter()
        .filter_map(|t| t["parent"].as_str().map(str::to_string))
        .collect();
    let mut out: Vec<(String, String)> = tasks
        .iter()
        .filter(|t| t["state"] == "FAILED")
        .filter(|t| !parents.contains(t["task_id"].as_str().unwrap_or_default()))
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Failures a pipeline brings on itself by design, each recognised by what its step printed.
/// The reason is the table's; a file listed here that fails otherwise breaks the test.
const BY_DESIGN: &[(&str, &str, &str)] = &[
    (
        "valid/create_pod_metadata_complex.yaml",
        "Pod annotation is None but is supposed to be None",
        "its validate-no-pod-metadata step wants a variable that no setting of its executor \
         defines to read as \"\": unset, os.getenv gives None, here as in a Kubernetes pod (its \
         steps with fieldPathAsEnv get their labels and annotations)",
    ),
    (
        "valid/local_execution/local_execution_pipeline_with_retry.yaml",
        "flaky attempt",
        "counts its attempts in a file inside its container, as KFP's local runner allows; every \
         attempt here is a fresh container (as every KFP backend attempt is a fresh pod)",
    ),
    (
        "valid/integration/ray_integration_compiled.yaml",
        "codeflare_sdk",
        "needs a Kubernetes cluster running Ray (codeflare-sdk)",
    ),
    (
        "valid/upload_download_compiled.yaml",
        "mlpipeline_minio_artifact_secret",
        "needs the credentials of KFP's MinIO, a Kubernetes secret",
    ),
    (
        "valid/critical/modelcar.yaml",
        "oci://",
        "publishes its model to an OCI registry (oci:// artifact URI): Gantry keeps artifacts on \
         S3 or file:// only, and no registry is reachable here",
    ),
];

/// A failure of this machine rather than of Gantry: the image cannot be had without a
/// registry, a step's own code needs the internet or hardware this machine lacks, or the test
/// S3 server's limits.
fn environment_reason(error: &str, logs: &str) -> Option<String> {
    if error.contains("pulling it failed") {
        return Some("image not available here (no registry)".into());
    }
    if error.contains("executable file not found") {
        return Some("runs a program its image must provide (a placeholder image)".into());
    }
    if let Some(why) = error.strip_prefix("unschedulable: ") {
        return Some(if why.contains("GPU") {
            "needs an NVIDIA GPU; this machine has none".into()
        } else {
            "needs more CPU or memory than this machine has".into()
        });
    }
    if error.contains("Internal Server Error") && s3s_fs_key_too_long(error) {
        return Some(
            "the test S3 server (s3s-fs) cannot keep an object key this long (it names a file \
             after the whole key); S3 takes keys up to 1024 bytes"
                .into(),
        );
    }
    let needles: &[(&str, &str)] = &[
        (
            "has no attribute 'set_path'",
            "needs a kfp SDK newer than any release (Artifact.set_path)",
        ),
        (
            "EmbeddedInput",
            "needs a kfp SDK newer than any release (dsl.EmbeddedInput)",
        ),
        (
            "No matching distribution found",
            "needs a PyPI package the image lacks",
        ),
        (
            "Could not find a version that satisfies",
            "needs a PyPI package the image lacks",
        ),
        (
            "ModuleNotFoundError",
            "needs a Python package the image lacks",
        ),
        ("google.auth", "needs Google Cloud credentials"),
        ("DefaultCredentialsError", "needs Google Cloud credentials"),
        ("gs://", "needs Google Cloud Storage"),
        ("Temporary failure in name resolution", "needs the internet"),
        ("Failed to establish a new connection", "needs the internet"),
        ("Name or service not known", "needs the internet"),
    ];
    needles
        .iter()
        .find(|(n, _)| logs.contains(n) || error.contains(n))
        .map(|(_, why)| why.to_string())
}

/// Whether the S3 object named in an upload error has a key s3s-fs cannot store: it keeps
/// each object's metadata in a file named `.bucket-<bucket>.object-<key>.metadata.json`, both
/// in unpadded base64, and a file name may have 255 bytes.
fn s3s_fs_key_too_long(error: &str) -> bool {
    let Some(rest) = error.split("artifact s3://").nth(1) else {
        return false;
    };
    let uri = rest.split(':').next().unwrap_or("");
    let Some((bucket, key)) = uri.split_once('/') else {
        return false;
    };
    let encoded = |s: &str| -> usize { (s.len() * 4).div_ceil(3) };
    ".bucket-.object-.metadata.json".len() + encoded(bucket) + encoded(key) > 255
}

/// A submitted pipeline not yet ended.
struct InFlight {
    rel: String,
    path: PathBuf,
    run_id: String,
    since: Instant,
    exits: BTreeSet<String>,
}

/// The running containers of `run_id` on the local engine.
fn running_containers(run_id: &str) -> Vec<String> {
    Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=gantry.run={run_id}"),
            "--filter",
            "status=running",
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

struct Outcome {
    file: String,
    features: String,
    result: String,
    detail: String,
}

#[test]
fn every_corpus_pipeline_runs_or_is_refused() {
    let Some(dir) = corpus_dir("the end-to-end corpus table") else {
        return;
    };
    let filter = std::env::var("GANTRY_CORPUS_FILTER").ok();
    // A short artifact prefix: the test S3 server names a file after each whole object key.
    // Steps install packages from the image's wheelhouse only: the outcome depends on no
    // package index, and a step needing a package the image lacks fails at once, saying so.
    // The `-a NAME=file://…` inputs lie under an import root, as the URI policy wants.
    let inputs = tempfile::tempdir().expect("tempdir");
    fs::write(inputs.path().join("data.txt"), "1,2,3\n4,5,6\n").expect("writing an input");
    let import_root = format!("file://{}", inputs.path().display());
    // The secrets the corpus's kfp-kubernetes pipelines read (`use_secret_as_env`, by names
    // fixed or known only at run time), with the values KFP's own test setup gives them, in
    // the agent's secret store.
    let secrets = inputs.path().join("secrets");
    for (name, password) in [
        ("test-secret-1", "psw"),
        ("test-secret-2", "psw1"),
        ("test-secret-3", "psw2"),
    ] {
        fs::create_dir_all(secrets.join(name)).expect("a secret's directory");
        fs::write(secrets.join(name).join("username"), "user1").expect("a secret key");
        fs::write(secrets.join(name).join("password"), password).expect("a secret key");
    }
    let secrets = secrets.display().to_string();
    // The agent volume `valid/pvc_mount.yaml` mounts by the name its parameter gives (`data`).
    let volume = inputs.path().join("volume-data");
    fs::create_dir_all(&volume).expect("a volume directory");
    let volume = format!("data={}", volume.display());
    let env = DockerEnv::start_with(
        "k",
        &[
            "--step-env",
            "PIP_NO_INDEX=1",
            "--import-root",
            &import_root,
            "--secrets-dir",
            &secrets,
            "--volume",
            &volume,
        ],
    );
    let _restore = tag_stand_in_images();
    let cli = env.cluster.cli();

    let mut files = yaml_files(&dir.join("valid"));
    files.extend(yaml_files(&dir.join("invalid")));
    let files: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|p| (relative(&dir, &p), p))
        .filter(|(rel, _)| {
            filter
                .as_deref()
                .is_none_or(|f| f.split(',').any(|part| rel.contains(part)))
        })
        .collect();
    assert!(!files.is_empty(), "no corpus file matches");

    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut pending: Vec<(String, PathBuf)> = files.clone();
    // Popped from the end: the slow ones first, then in name order.
    pending.reverse();
    pending.sort_by_key(|(rel, _)| SLOW.contains(&rel.as_str()));
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    // Pipelines resubmitted once because a step's own process never exited.
    let mut retry: Vec<(String, PathBuf)> = Vec::new();
    let mut retried: BTreeSet<String> = BTreeSet::new();

    while !pending.is_empty() || !retry.is_empty() || !in_flight.is_empty() {
        while in_flight.len() < WINDOW {
            let Some((rel, path)) = retry.pop().or_else(|| pending.pop()) else {
                break;
            };
            let doc = load(&path);
            let features = if doc.is_null() || rel.starts_with("invalid/") {
                String::new()
            } else {
                features(&doc)
            };
            let flags = input_artifact_flags(&doc, &inputs);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            match cli.submit_with(&path, &arguments(&rel), &flags) {
                Ok(run_id) => in_flight.push(InFlight {
                    rel: rel.clone(),
                    path: path.clone(),
                    run_id,
                    since: Instant::now(),
                    exits: exit_tasks(&doc),
                }),
                Err(e) => {
                    let msg = e.to_string();
                    let reason = msg
                        .lines()
                        .find(|l| {
                            l.contains("error")
                                || l.contains("invalid")
                                || l.contains("unsupported")
                        })
                        .unwrap_or(msg.as_str())
                        .to_string();
                    outcomes.insert(
                        rel.clone(),
                        Outcome {
                            file: rel.clone(),
                            features,
                            result: "refused".into(),
                            detail: reason,
                        },
                    );
                    continue;
                }
            }
            outcomes.insert(
                rel.clone(),
                Outcome {
                    file: rel,
                    features,
                    result: String::new(),
                    detail: String::new(),
                },
            );
        }
        std::thread::sleep(Duration::from_millis(250));
        let mut still = Vec::new();
        for f in in_flight.drain(..) {
            let run = match cli.get_run(&f.run_id) {
                Ok(r) => r,
                Err(_) => {
                    still.push(f);
                    continue;
                }
            };
            let (rel, run_id) = (&f.rel, &f.run_id);
            let state = run["state"].as_str().unwrap_or_default().to_string();
            if !matches!(state.as_str(), "SUCCEEDED" | "FAILED" | "CANCELED") {
                let limit = if SLOW.contains(&rel.as_str()) {
                    SLOW_RUN_LIMIT
                } else {
                    RUN_LIMIT
                };
                if f.since.elapsed() <= limit {
                    still.push(f);
                    continue;
                }
                let unfinished = unfinished_tasks(&cli, run_id, &run);
                let running = running_containers(run_id);
                let _ = cli.run(&["run", "cancel", run_id]);
                if !running.is_empty() && retried.insert(rel.clone()) {
                    // The step's own process has not exited: Gantry's RUNNING is true. Some
                    // corpus steps can wait forever by their own code (nbclient with
                    // timeout=None loses a kernel message on a loaded machine), so such a
                    // pipeline gets one more try; a second hang fails the test.
                    eprintln!(
                        "kfp_corpus: {rel}: a step's process was still running after \
                         {limit:?} (container {}); retrying the pipeline once\n{unfinished}",
                        running.join(", ")
                    );
                    retry.push((f.rel, f.path));
                    continue;
                }
                let whose = if running.is_empty() {
                    "no container of the run is running, yet the run has not ended"
                } else {
                    "a step's own process did not exit, on the second try too"
                };
                problems.push(format!(
                    "{rel}: still {state} after {limit:?}: {whose}\n{unfinished}"
                ));
                if let Some(o) = outcomes.get_mut(rel) {
                    o.result = "did not end".into();
                }
                continue;
            }
            let detail = judge(&cli, rel, run_id, &run, &f.exits, &mut problems);
            if let Some(o) = outcomes.get_mut(rel) {
                o.result = state;
                o.detail = detail;
            }
        }
        in_flight = still;
    }

    for o in outcomes.values() {
        check_rules(o, &mut problems);
    }

    let table = render(&outcomes);
    if filter.is_none() {
        let path = repo_root().join(TABLE);
        if let Err(e) = golden::compare(
            &path,
            &table,
            "cargo test -p gantry-tests --test kfp_corpus",
        ) {
            problems.push(e);
        }
    } else {
        eprintln!("{table}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The table's detail for an ended run; records broken rules in `problems`.
fn judge(
    cli: &Cli,
    rel: &str,
    run_id: &str,
    run: &Value,
    exit_tasks: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> String {
    // Some pipelines branch on random values, so what ran is not part of the table.
    if run["state"] == "SUCCEEDED" {
        return String::new();
    }
    let failed = failed_steps(run);
    let mut parts = Vec::new();
    for (name, error) in &failed {
        let logs = cli.run(&["run", "logs", run_id, "--task", name]).stdout;
        let by_design = BY_DESIGN
            .iter()
            .find(|(f, needle, _)| *f == rel && (error.contains(needle) || logs.contains(needle)));
        let why = if rel.starts_with("valid/failing/") {
            if !name.starts_with("fail") {
                problems.push(format!(
                    "{rel}: task {name} failed, not a fail* task: {error}"
                ));
            }
            if !error.contains("exit code 1") {
                problems.push(format!("{rel}: {name} failed for another reason: {error}"));
            }
            "fails as the pipeline intends".to_string()
        } else if name.starts_with("fail") && error.starts_with("exit code 1") {
            // Pipelines that show exit handlers, final status or ignore_upstream_failure with a
            // step that always fails.
            "a step the pipeline means to fail".to_string()
        } else if let Some((_, _, why)) = by_design {
            why.to_string()
        } else {
            match environment_reason(error, &logs) {
                Some(why) => why,
                None => {
                    problems.push(format!(
                        "{rel}: task {name} failed for a reason that is not this machine's: {error}\n{}",
                        tail(&logs, 15)
                    ));
                    format!("UNEXPLAINED: {error}")
                }
            }
        };
        parts.push(format!("{name}: {why}"));
    }
    if rel.starts_with("valid/failing/") {
        let tasks = run["tasks"].as_array().cloned().unwrap_or_default();
        for name in exit_tasks {
            match tasks.iter().find(|t| t["name"] == name.as_str()) {
                Some(t) if t["state"] == "SUCCEEDED" => {}
                Some(t) => problems.push(format!("{rel}: exit task {name} ended {}", t["state"])),
                None => problems.push(format!("{rel}: exit task {name} never ran")),
            }
        }
    }
    if parts.is_empty() {
        parts.push(format!(
            "run error: {}",
            run["error"].as_str().unwrap_or("")
        ));
    }
    parts.join("; ")
}

/// What a run that did not end was doing: each task not yet ended, with its log's last lines.
fn unfinished_tasks(cli: &Cli, run_id: &str, run: &Value) -> String {
    let tasks = run["tasks"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for t in &tasks {
        let state = t["state"].as_str().unwrap_or_default();
        if matches!(
            state,
            "SUCCEEDED" | "FAILED" | "CANCELED" | "SKIPPED" | "CACHED"
        ) {
            continue;
        }
        let name = t["name"].as_str().unwrap_or_default();
        let logs = cli.run(&["run", "logs", run_id, "--task", name]).stdout;
        out.push(format!("  task {name}: {state}\n{}", tail(&logs, 20)));
    }
    if out.is_empty() {
        return format!("  no unfinished task; run: {run}");
    }
    out.join("\n")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn check_rules(o: &Outcome, problems: &mut Vec<String>) {
    let f = &o.file;
    if f.starts_with("invalid/") {
        if o.result != "refused" {
            problems.push(format!(
                "{f}: an invalid document was not refused ({})",
                o.result
            ));
        }
        return;
    }
    if f.starts_with("valid/failing/") && o.result != "FAILED" && o.result != "refused" {
        problems.push(format!("{f}: meant to fail, ended {}", o.result));
    }
    if o.result == "refused" && !o.detail.contains("Kubernetes") {
        problems.push(format!(
            "{f}: refused for a reason that is not a Kubernetes-only feature: {}",
            o.detail
        ));
    }
}

fn render(outcomes: &BTreeMap<String, Outcome>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes.values() {
        *counts.entry(o.result.as_str()).or_default() += 1;
    }
    let mut s = String::from(
        "# KFP conformance\n\n\
         Every pipeline of KFP's own compiled corpus (`shared/kfp-conformance`, compiled by kfp \
         2.0.0b13 to 2.15.2) submitted to `gantry dev` on the Docker runtime with artifacts on a \
         local S3 server, each step running the pipeline's own command in a container. Generated \
         by `tests/tests/kfp_corpus.rs` (`cargo test -p gantry-tests --test kfp_corpus`; \
         `GANTRY_BLESS=1` rewrites it after a deliberate change).\n\n\
         - **SUCCEEDED**: the run ended SUCCEEDED.\n\
         - **FAILED**: the run ended FAILED; the detail names each failed step and why. Under \
         `valid/failing/` that is the pipeline's intent, as it is for steps named `fail*` that \
         exit 1 elsewhere. Otherwise the test allows only reasons of this machine — no container \
         registry (an image that is neither a public base image the project builds a stand-in \
         for nor buildable here), no package index or internet for steps (they install only from \
         the image's wheelhouse), no GPU, 2 CPUs, a kfp SDK newer than any release, the test S3 \
         server's key length — or a by-design reason the test checks against the step's own \
         output.\n\
         - **refused**: `gantry run submit` refused it and changed nothing; for `valid/` files \
         only features that need Kubernetes are refused.\n\n\
         Base images: `python:*`, `registry.access.redhat.com/ubi9/python-311`, \
         `public.ecr.aws/docker/library/python:3.12` run on the local Python 3.11 + kfp 2.16.1 \
         image; `alpine*`, `ghcr.io/containerd/busybox` and `library/bash` on the local busybox \
         image (images/build.sh). The agent's secret store holds `test-secret-1` to \
         `test-secret-3` with the values KFP's own tests give them, and it has a volume `data`, \
         which `valid/pvc_mount.yaml` mounts by the claim name its parameter gives.\n\n",
    );
    s.push_str("| result | files |\n| --- | --- |\n");
    for (r, n) in &counts {
        s.push_str(&format!("| {r} | {n} |\n"));
    }
    s.push_str("\n| file | features | result | detail |\n| --- | --- | --- | --- |\n");
    for o in outcomes.values() {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            o.file,
            cell(&o.features),
            o.result,
            cell(&o.detail)
        ));
    }
    s
}
