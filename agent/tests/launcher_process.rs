//! The launcher end to end on the process runtime with `file://` artifacts: executor input,
//! placeholders, outputs, uploads, a consumer step, failures, cancel, cleanup.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gantry_agent::launcher::Launcher;
use gantry_agent::runtime::{LogStream, ProcessRuntime};
use gantry_model::{ArtifactRef, ParamType, StepOutcome, StepSpec};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Env {
    root_dir: tempfile::TempDir,
    work_dir: tempfile::TempDir,
    launcher: Launcher,
}

fn env() -> Env {
    let root_dir = tempfile::tempdir().expect("tempdir");
    let work_dir = tempfile::tempdir().expect("tempdir");
    let launcher = Launcher::new(
        Arc::new(ProcessRuntime::new()),
        work_dir.path().join("agent"),
    );
    Env {
        root_dir,
        work_dir,
        launcher,
    }
}

impl Env {
    fn root(&self) -> String {
        file_root(self.root_dir.path())
    }
}

const PRODUCER: &str = r#"
set -e
n="$0"; count_file="$1"; label_file="$2"; data="$3"; dir="$4"; exec_in="$5"
echo "producing n=$n"
echo "a warning" >&2
echo $((n * 2)) > "$count_file"
printf 'text with a trailing newline\n' > "$label_file"
printf 'row1\nrow2\nrow3\n' > "$data"
mkdir -p "$dir/sub"
echo nested > "$dir/sub/f.txt"
echo top > "$dir/top.txt"
printf '%s' "$6" > "$exec_in"
"#;

fn producer(env: &Env, run: &str) -> StepSpec {
    let mut s = step(run, "produce", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&[
        PRODUCER,
        "{{$.inputs.parameters['n']}}",
        "{{$.outputs.parameters['count'].output_file}}",
        "{{$.outputs.parameters['label'].output_file}}",
        "{{$.outputs.artifacts['data'].path}}",
        "{{$.outputs.artifacts['dir'].path}}",
        "{{$.outputs.artifacts['exec_in'].path}}",
        "{{$}}",
    ]);
    s.inputs.parameters.insert("n".into(), json!(21));
    add_output_param(&mut s, "count", ParamType::NumberInteger);
    add_output_param(&mut s, "label", ParamType::String);
    add_output_artifact(&mut s, "data", "system.Dataset");
    add_output_artifact(&mut s, "dir", "system.Artifact");
    add_output_artifact(&mut s, "exec_in", "system.Artifact");
    s
}

const CONSUMER: &str = r#"
set -e
data="$0"; dir="$1"; total_file="$2"; exec_out="$3"; metrics_path="$4"
wc -l < "$data" | tr -d ' ' > "$total_file"
cat "$dir/sub/f.txt" "$dir/top.txt"
test "$5" = "42"
test "$6" = '{"rows":3}'
test ! -e "$metrics_path"
cat > "$exec_out" <<EOF
{"parameterValues": {"doubled": 84}, "artifacts": {"metrics": {"artifacts": [{"name": "metrics", "uri": "$metrics_path", "metadata": {"accuracy": 0.9}}]}}}
EOF
"#;

#[tokio::test]
async fn producer_and_consumer_through_a_file_root() {
    let env = env();
    let run = run_id("pc");
    let spec = producer(&env, &run);
    let (outcome, logs) = run_step(&env.launcher, &spec).await;
    let (params, artifacts) = succeeded(&outcome);
    assert_eq!(params["count"], json!(42));
    assert_eq!(params["label"], json!("text with a trailing newline\n"));
    assert_eq!(lines(&logs, LogStream::Stdout), vec!["producing n=21"]);
    assert_eq!(lines(&logs, LogStream::Stderr), vec!["a warning"]);

    // Artifacts are recorded under their spec URIs, with the files in the store.
    for name in ["data", "dir", "exec_in"] {
        let a = &artifacts[name][0];
        assert_eq!(a.uri, spec.outputs.artifacts[name].uri);
        assert_eq!(a.name, name);
    }
    assert_eq!(artifacts["data"][0].schema_title, "system.Dataset");
    let stored = env.root_dir.path().join(&run).join("produce/attempt-1");
    assert_eq!(
        std::fs::read_to_string(stored.join("data")).expect("data"),
        "row1\nrow2\nrow3\n"
    );
    assert_eq!(
        std::fs::read_to_string(stored.join("dir/sub/f.txt")).expect("dir"),
        "nested\n"
    );

    // The executor input the step got: KFP's shape, host paths under the process runtime.
    let exec_in: Value =
        serde_json::from_str(&std::fs::read_to_string(stored.join("exec_in")).expect("exec_in"))
            .expect("executor input JSON");
    let attempt = env.launcher.attempt_dir(&spec);
    assert_eq!(exec_in["inputs"]["parameterValues"]["n"], json!(21));
    assert_eq!(
        exec_in["outputs"]["parameters"]["count"]["outputFile"],
        json!(attempt.join("outputs/params/count").display().to_string())
    );
    assert_eq!(
        exec_in["outputs"]["artifacts"]["data"]["artifacts"][0]["uri"],
        json!(attempt.join("outputs/artifacts/data").display().to_string())
    );
    assert_eq!(
        exec_in["outputs"]["artifacts"]["data"]["artifacts"][0]["type"]["schemaTitle"],
        json!("system.Dataset")
    );
    assert_eq!(
        exec_in["outputs"]["outputFile"],
        json!(attempt
            .join("outputs/executor_output.json")
            .display()
            .to_string())
    );
    // Succeeded: the attempt directory is gone, and so are its empty parents.
    assert!(!attempt.exists());
    assert!(!env.launcher.work_root().join(&run).exists());

    // The consumer reads both artifacts and the parameter, reports through executor output.
    let mut c = step(&run, "consume", &env.root(), "ignored", &["sh", "-c"]);
    c.container.args = strings(&[
        CONSUMER,
        "{{$.inputs.artifacts['data'].path}}",
        "{{$.inputs.artifacts['dir'].path}}",
        "{{$.outputs.parameters['total'].output_file}}",
        "{{$.outputs.output_file}}",
        "{{$.outputs.artifacts['metrics'].path}}",
        "{{$.inputs.parameters['count']}}",
        "{{$.inputs.artifacts['data'].metadata}}",
    ]);
    c.inputs
        .parameters
        .insert("count".into(), params["count"].clone());
    let mut data_ref: ArtifactRef = artifacts["data"][0].clone();
    data_ref.metadata = json!({"rows": 3}).as_object().cloned().unwrap_or_default();
    c.inputs.artifacts.insert("data".into(), vec![data_ref]);
    c.inputs
        .artifacts
        .insert("dir".into(), artifacts["dir"].clone());
    add_output_param(&mut c, "total", ParamType::NumberInteger);
    add_output_param(&mut c, "doubled", ParamType::NumberInteger);
    add_output_artifact(&mut c, "metrics", "system.Metrics");
    let (outcome, logs) = run_step(&env.launcher, &c).await;
    let (params, artifacts) = succeeded(&outcome);
    assert_eq!(params["total"], json!(3));
    assert_eq!(params["doubled"], json!(84));
    assert_eq!(lines(&logs, LogStream::Stdout), vec!["nested", "top"]);
    let m = &artifacts["metrics"][0];
    assert_eq!(m.uri, c.outputs.artifacts["metrics"].uri);
    assert_eq!(m.metadata.get("accuracy"), Some(&json!(0.9)));
    assert_eq!(m.schema_title, "system.Metrics");
}

#[tokio::test]
async fn non_zero_exit_fails_with_code_and_stderr_tail_and_keeps_outputs() {
    let env = env();
    let run = run_id("fail");
    let mut s = step(&run, "group/fails", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&[
        "echo partial > \"$0\"; for i in $(seq 1 30); do echo \"err $i\" >&2; done; exit 3",
        "{{$.outputs.artifacts['out'].path}}",
    ]);
    add_output_artifact(&mut s, "out", "system.Artifact");
    let (outcome, _) = run_step(&env.launcher, &s).await;
    match &outcome {
        StepOutcome::Failed { error, exit_code } => {
            assert_eq!(*exit_code, Some(3));
            assert!(error.starts_with("exit code 3"), "{error}");
            assert!(error.contains("err 30"), "{error}");
            assert!(error.contains("err 11"), "{error}");
            assert!(!error.contains("err 10\n"), "only the tail: {error}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    let attempt = env.launcher.attempt_dir(&s);
    assert!(attempt.join("outputs/artifacts/out").exists());
    assert!(attempt.join("executor_input.json").exists());
    assert!(!attempt.join("inputs").exists());
    // Nothing was uploaded.
    assert!(!env.root_dir.path().join(&run).exists());
}

fn failure(outcome: &StepOutcome) -> &str {
    match outcome {
        StepOutcome::Failed { error, .. } => error,
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_outputs_fail_naming_them() {
    let env = env();
    let run = run_id("missing");
    let mut s = step(&run, "lazy", &env.root(), "ignored", &["true"]);
    add_output_param(&mut s, "answer", ParamType::NumberInteger);
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let e = failure(&outcome);
    assert!(
        e.contains("output parameter \"answer\" was not written"),
        "{e}"
    );

    let mut s = step(&run, "lazy2", &env.root(), "ignored", &["true"]);
    add_output_artifact(&mut s, "model", "system.Model");
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let e = failure(&outcome);
    assert!(
        e.contains("output artifact \"model\" was not written"),
        "{e}"
    );

    let mut s = step(&run, "badtype", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&[
        "echo lots > \"$0\"",
        "{{$.outputs.parameters['answer'].output_file}}",
    ]);
    add_output_param(&mut s, "answer", ParamType::NumberInteger);
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let e = failure(&outcome);
    assert!(
        e.contains("\"answer\"") && e.contains("not an integer"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_placeholder_fails_before_running() {
    let env = env();
    let run = run_id("ph");
    let marker = env.work_dir.path().join("ran");
    let mut s = step(&run, "t", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&[
        "touch \"$0\"",
        &marker.display().to_string(),
        "--project={{$.pipeline_google_cloud_project_id}}",
    ]);
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let e = failure(&outcome);
    assert!(e.contains("{{$.pipeline_google_cloud_project_id}}"), "{e}");
    assert!(!marker.exists());
}

#[tokio::test]
async fn missing_input_artifact_fails_naming_it() {
    let env = env();
    let run = run_id("in");
    let mut s = step(&run, "t", &env.root(), "ignored", &["true"]);
    let uri = format!("{}/nowhere/data", env.root());
    s.inputs.artifacts.insert(
        "data".into(),
        vec![ArtifactRef {
            name: "data".into(),
            uri: uri.clone(),
            schema_title: "system.Dataset".into(),
            schema_version: String::new(),
            metadata: Default::default(),
        }],
    );
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let e = failure(&outcome);
    assert!(
        e.contains("input artifact \"data\"") && e.contains(&uri),
        "{e}"
    );
}

#[tokio::test]
async fn links_out_of_the_attempt_directory_are_refused() {
    let env = env();
    let run = run_id("link");
    let secret = env.work_dir.path().join("secret");
    std::fs::write(&secret, "host secret").expect("write");
    let mut s = step(&run, "t", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&[
        "ln -s \"$2\" \"$0\"; ln -s \"$2\" \"$1\"",
        "{{$.outputs.artifacts['out'].path}}",
        "{{$.outputs.parameters['p'].output_file}}",
        &secret.display().to_string(),
    ]);
    add_output_artifact(&mut s, "out", "system.Artifact");
    add_output_param(&mut s, "p", ParamType::String);
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let e = failure(&outcome);
    assert!(e.contains("outside the attempt directory"), "{e}");
    assert!(!e.contains("host secret"), "{e}");
}

#[tokio::test]
async fn cancel_stops_the_step_and_cleans_up() {
    let env = env();
    let run = run_id("cancel");
    let mut s = step(&run, "sleepy", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&["echo started; sleep 300"]);
    let cancel = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<gantry_agent::runtime::LogLine>(16);
    let c2 = cancel.clone();
    let watcher = tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            if l.line == "started" {
                c2.cancel();
            }
        }
    });
    let t0 = std::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        env.launcher.run_step(&s, tx, cancel),
    )
    .await
    .expect("cancel took too long");
    assert_eq!(outcome, StepOutcome::Canceled);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let _ = watcher.await;
    assert!(!env.launcher.attempt_dir(&s).exists());
}

#[tokio::test]
async fn kfp_python_executor_runs_a_lightweight_component() {
    assert!(
        python_has_kfp(),
        "python3 cannot import kfp: install kfp==2.16.1 (scripts/test.sh does)"
    );
    let env = env();
    let run = run_id("kfp");
    // The input dataset, already in the store.
    let data_uri = format!("{}/{run}/upstream/attempt-1/data", env.root());
    let data_path = env
        .root_dir
        .path()
        .join(&run)
        .join("upstream/attempt-1/data");
    std::fs::create_dir_all(data_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&data_path, "a\nb\nc\nd\n").expect("write");

    let s = train_step(
        &run,
        &env.root(),
        "python:3.11",
        data_uri,
        (json!(5), json!(0.25), json!("{{$.pipeline_task_name}}")),
    );
    let (outcome, logs) = run_step(&env.launcher, &s).await;
    let (params, artifacts) = succeeded_or_logs(&outcome, &logs);
    assert_eq!(params["acc"], json!(0.5));
    assert_eq!(params["note"], json!("ok train"));
    assert_eq!(params["rows"], json!(4));
    let model = &artifacts["model"][0];
    assert_eq!(model.metadata.get("framework"), Some(&json!("none")));
    let stored = env.root_dir.path().join(&run).join("train/attempt-1");
    assert_eq!(
        std::fs::read_to_string(stored.join("model")).expect("model"),
        "model of 4 rows, n=5, rate=0.25, tag=train"
    );
    let metrics = &artifacts["metrics"][0];
    assert_eq!(metrics.metadata.get("accuracy"), Some(&json!(0.75)));
}

#[tokio::test]
async fn executor_output_may_move_an_artifact_within_the_attempt_but_not_outside_the_root() {
    let env = env();
    let run = run_id("moved");
    // Pythonic components return `Dataset(uri=dsl.get_uri('x'))`: a path under the directory
    // of the executor output file, not the one the launcher offered.
    let mut s = step(&run, "t", &env.root(), "ignored", &["sh", "-c"]);
    s.container.args = strings(&[
        r#"d=$(dirname "$0"); mkdir -p "$d/custom"; echo moved > "$d/custom/x"
printf '{"artifacts": {"out": {"artifacts": [{"name": "out", "uri": "%s", "metadata": {"k": 1}}]}}}' "$d/custom/x" > "$0""#,
        "{{$.outputs.output_file}}",
    ]);
    add_output_artifact(&mut s, "out", "system.Dataset");
    let (outcome, _) = run_step(&env.launcher, &s).await;
    let (_, artifacts) = succeeded(&outcome);
    let a = &artifacts["out"][0];
    assert_eq!(a.uri, s.outputs.artifacts["out"].uri);
    assert_eq!(a.metadata.get("k"), Some(&json!(1)));
    let stored = env.root_dir.path().join(&run).join("t/attempt-1/out");
    assert_eq!(std::fs::read_to_string(stored).expect("stored"), "moved\n");

    for (task, reported) in [
        ("remote", "file:///etc/passwd".to_string()),
        ("local", "/etc/passwd".to_string()),
    ] {
        let mut s = step(&run, task, &env.root(), "ignored", &["sh", "-c"]);
        s.container.args = strings(&[
            r#"printf '{"artifacts": {"out": {"artifacts": [{"uri": "%s"}]}}}' "$1" > "$0""#,
            "{{$.outputs.output_file}}",
            &reported,
        ]);
        add_output_artifact(&mut s, "out", "system.Dataset");
        let (outcome, _) = run_step(&env.launcher, &s).await;
        let e = failure(&outcome);
        assert!(
            e.contains("output artifact \"out\"") && e.contains(&reported),
            "{e}"
        );
    }
}

/// The process runtime shows steps host paths unchanged: a step that mounts a volume is
/// refused (it would otherwise read whatever lies at its mount path on the host).
#[tokio::test]
async fn a_step_mounting_a_volume_fails_on_a_runtime_that_cannot_mount_it() {
    let env = env();
    let mut s = step("r-vol", "uses-volume", &env.root(), "ignored", &["true"]);
    s.container.volumes = vec![gantry_model::VolumeMount {
        volume: "data".into(),
        mount_path: "/data".into(),
        sub_path: String::new(),
        run_claim: false,
    }];
    let (outcome, _) = run_step(&env.launcher, &s).await;
    match outcome {
        StepOutcome::Failed { error, exit_code } => {
            assert_eq!(exit_code, None);
            assert_eq!(
                error,
                "the step mounts volume(s) \"data\" at /data, and the process runtime cannot \
                 show a host directory at another path; run the agent with --runtime docker"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A step's `file://` inputs come from under the run's artifact root or this agent's import
/// roots only, checked after resolving symbolic links; anything else fails the attempt naming
/// the input and the URI, before the step runs.
#[tokio::test]
async fn inputs_outside_the_artifact_root_and_import_roots_are_refused() {
    let env = env();
    let outside = tempfile::tempdir().expect("tempdir");
    let imports = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret"), "s3cr3t").expect("write");
    std::fs::write(imports.path().join("data.csv"), "a,b\n").expect("write");
    let access = gantry_agent::access::UriAccess::new(vec![file_root(imports.path())], vec![])
        .expect("import root");
    let launcher = Launcher::new(
        Arc::new(ProcessRuntime::new()),
        env.work_dir.path().join("agent2"),
    )
    .uri_access(access);
    let marker = env.work_dir.path().join("ran");
    let input_step = |run: &str, uri: String| {
        let mut s = step(run, "t", &env.root(), "ignored", &["sh", "-c"]);
        s.container.args = strings(&[
            "cat \"$0\"; touch \"$1\"",
            "{{$.inputs.artifacts['data'].path}}",
            &marker.display().to_string(),
        ]);
        s.inputs.artifacts.insert(
            "data".into(),
            vec![ArtifactRef {
                name: "data".into(),
                uri,
                schema_title: "system.Dataset".into(),
                schema_version: String::new(),
                metadata: Default::default(),
            }],
        );
        s
    };
    // A link under the artifact root that leads out.
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        env.root_dir.path().join("link"),
    )
    .expect("symlink");
    let run = run_id("access");
    for uri in [
        file_root(&outside.path().join("secret")),
        format!("{}/link", env.root()),
        format!("{}/../{}", env.root(), "x"),
        "s3://not-allowed/key".to_string(),
    ] {
        let (outcome, logs) = run_step(&launcher, &input_step(&run, uri.clone())).await;
        let e = failure(&outcome);
        assert!(
            e.contains("input artifact \"data\"") && e.contains(&uri),
            "{uri}: {e}"
        );
        assert!(!marker.exists(), "the step ran for {uri}");
        assert!(
            !logs.iter().any(|l| l.line.contains("s3cr3t")),
            "the secret leaked"
        );
    }
    // Inside the import root it works.
    let uri = file_root(&imports.path().join("data.csv"));
    let (outcome, logs) = run_step(&launcher, &input_step(&run, uri)).await;
    succeeded(&outcome);
    assert!(logs.iter().any(|l| l.line == "a,b"), "{logs:?}");
}
