//! The Docker runtime and the launcher on it, against the local engine.
//!
//! These tests FAIL when no Docker engine answers, unless `GANTRY_SKIP_DOCKER_TESTS=1`.
//! They use `gantry/busybox:latest`, built by `images/busybox.sh` when missing (a second or
//! so, no registry). Every container they start carries the test's unique `gantry.run` label
//! and is removed by that label when the test ends, pass or fail.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use bollard::Docker;
use common::*;
use gantry_agent::launcher::Launcher;
use gantry_agent::runtime::{ContainerRun, DockerRuntime, LogStream, Runtime};
use gantry_model::{ArtifactRef, ParamType, StepOutcome, StepSpec};
use gantry_testkit::poll_async;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const BUSYBOX: &str = "gantry/busybox:latest";
const BUSYBOX_NOBODY: &str = "gantry/busybox-nobody:latest";

fn skip() -> bool {
    if std::env::var("GANTRY_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: GANTRY_SKIP_DOCKER_TESTS=1");
        return true;
    }
    false
}

async fn docker() -> DockerRuntime {
    DockerRuntime::connect().await.unwrap_or_else(|e| {
        panic!(
            "these tests need a Docker engine ({e}); set GANTRY_SKIP_DOCKER_TESTS=1 to skip them"
        )
    })
}

fn docker_cli(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

fn image_present(image: &str) -> bool {
    docker_cli(&["image", "inspect", image]).status.success()
}

static IMAGES: Mutex<bool> = Mutex::new(false);

/// Builds the test images once per test binary, if missing.
fn ensure_images() {
    let mut done = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    if !image_present(BUSYBOX) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/busybox.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .expect("run images/busybox.sh");
        assert!(
            out.status.success(),
            "images/busybox.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !image_present(BUSYBOX_NOBODY) {
        // The same image with a non-root USER, as many published images have.
        let cid = docker_cli(&["create", BUSYBOX, "true"]);
        assert!(cid.status.success(), "docker create failed");
        let cid = String::from_utf8_lossy(&cid.stdout).trim().to_string();
        let commit = docker_cli(&[
            "commit",
            "--change",
            "USER 65534:65534",
            &cid,
            BUSYBOX_NOBODY,
        ]);
        let _ = docker_cli(&["rm", "-f", &cid]);
        assert!(commit.status.success(), "docker commit failed");
    }
    *done = true;
}

/// Removes every container of a test run when dropped (also when the test panics).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = docker_cli(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=gantry.run={}", self.0),
        ]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker_cli(&["rm", "-f", id]);
        }
    }
}

async fn containers_of(docker: &Docker, run: &str) -> Vec<bollard::models::ContainerSummary> {
    let filters = HashMap::from([("label".to_string(), vec![format!("gantry.run={run}")])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
}

/// Waits until the run has a running container; its id.
async fn wait_running(docker: &Docker, run: &str) -> String {
    let running = poll_async(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            containers_of(docker, run)
                .await
                .into_iter()
                .find(|c| c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running"))
                .and_then(|c| c.id)
                .ok_or(())
        },
    )
    .await;
    running.unwrap_or_else(|()| panic!("no running container for {run}"))
}

struct Env {
    root_dir: tempfile::TempDir,
    _work_dir: tempfile::TempDir,
    runtime: Arc<DockerRuntime>,
    launcher: Arc<Launcher>,
}

async fn env() -> Env {
    let runtime = Arc::new(docker().await);
    ensure_images();
    let root_dir = tempfile::tempdir().expect("tempdir");
    let work_dir = tempfile::tempdir().expect("tempdir");
    let launcher = Arc::new(
        Launcher::new(runtime.clone(), work_dir.path().join("agent")).network(Some("none".into())),
    );
    Env {
        root_dir,
        _work_dir: work_dir,
        runtime,
        launcher,
    }
}

/// The usual start of a test: the environment, a fresh run id and the guard that removes the
/// run's containers; None when Docker tests are skipped.
async fn setup(tag: &str) -> Option<(Env, String, Cleanup)> {
    if skip() {
        return None;
    }
    let env = env().await;
    let run = run_id(tag);
    let cleanup = Cleanup(run.clone());
    Some((env, run, cleanup))
}

impl Env {
    /// Neither a container of `run` nor the step's attempt directory is left.
    async fn assert_cleaned_up(&self, run: &str, s: &StepSpec) {
        assert!(
            containers_of(self.runtime.client(), run).await.is_empty(),
            "container left behind"
        );
        assert!(
            !self.launcher.attempt_dir(s).exists(),
            "attempt directory left behind"
        );
    }

    /// A step of `run` whose artifacts go under this environment's root.
    fn step(&self, run: &str, task_id: &str, image: &str, command: &[&str]) -> StepSpec {
        step(
            run,
            task_id,
            &file_root(self.root_dir.path()),
            image,
            command,
        )
    }
}

const STEP: &str = r#"
set -e
echo "paths $0 $1"
echo "to stderr" >&2
echo $(( $2 + 1 )) > "$0"
mkdir -p "$1"
echo hello > "$1/greeting.txt"
sleep 2
echo bye
"#;

#[tokio::test]
async fn runs_a_step_with_labels_limits_logs_outputs_and_removes_it() {
    let Some((env, run, _cleanup)) = setup("docker").await else {
        return;
    };
    let mut s = env.step(&run, "loop-1/0/work", BUSYBOX, &["sh", "-c"]);
    s.container.args = strings(&[
        STEP,
        "{{$.outputs.parameters['next'].output_file}}",
        "{{$.outputs.artifacts['out'].path}}",
        "{{$.inputs.parameters['n']}}",
    ]);
    s.container.resources.cpu_limit = Some(0.5);
    s.container.resources.memory_limit_bytes = Some(64 << 20);
    s.inputs.parameters.insert("n".into(), json!(41));
    add_output_param(&mut s, "next", ParamType::NumberInteger);
    add_output_artifact(&mut s, "out", "system.Artifact");

    let (tx, logs) = log_collector();
    let launcher = env.launcher.clone();
    let spec = s.clone();
    let task =
        tokio::spawn(async move { launcher.run_step(&spec, tx, CancellationToken::new()).await });
    let docker = env.runtime.client();
    let id = wait_running(docker, &run).await;
    let info = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let labels: BTreeMap<String, String> = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    assert_eq!(labels.get("gantry.run"), Some(&run));
    assert_eq!(
        labels.get("gantry.task").map(String::as_str),
        Some("loop-1/0/work")
    );
    assert_eq!(labels.get("gantry.attempt").map(String::as_str), Some("1"));
    assert_eq!(
        labels.get("gantry.managed").map(String::as_str),
        Some("true")
    );
    let hc = info.host_config.expect("host config");
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.memory, Some(64 << 20));
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    let cfg = info.config.expect("config");
    assert_eq!(cfg.entrypoint, Some(strings(&["sh", "-c"])));

    let outcome = task.await.expect("join");
    let logs = logs.await.expect("logs");
    let (params, artifacts) = succeeded(&outcome);
    assert_eq!(params["next"], json!(42));
    let out = lines(&logs, LogStream::Stdout);
    assert_eq!(
        out,
        vec![
            "paths /gantry/outputs/params/next /gantry/outputs/artifacts/out",
            "bye"
        ]
    );
    assert_eq!(lines(&logs, LogStream::Stderr), vec!["to stderr"]);
    let a = &artifacts["out"][0];
    assert_eq!(a.uri, s.outputs.artifacts["out"].uri);
    let stored = env
        .root_dir
        .path()
        .join(&run)
        .join("loop-1/0/work/attempt-1/out/greeting.txt");
    assert_eq!(
        std::fs::read_to_string(stored).expect("uploaded"),
        "hello\n"
    );
    env.assert_cleaned_up(&run, &s).await;
}

#[tokio::test]
async fn non_zero_exit_is_a_failure_with_its_code() {
    let Some((env, run, _cleanup)) = setup("exit").await else {
        return;
    };
    let mut s = env.step(&run, "t", BUSYBOX, &["sh", "-c"]);
    s.container.args = strings(&["echo 'it broke' >&2; exit 7"]);
    let (outcome, _logs) = run_step(&env.launcher, &s).await;
    match &outcome {
        StepOutcome::Failed { error, exit_code } => {
            assert_eq!(*exit_code, Some(7));
            assert!(error.starts_with("exit code 7"), "{error}");
            assert!(error.contains("it broke"), "{error}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(containers_of(env.runtime.client(), &run).await.is_empty());
}

#[tokio::test]
async fn a_missing_image_fails_with_a_clear_pull_error() {
    let Some((env, run, _cleanup)) = setup("pull").await else {
        return;
    };
    let image = "gantry/no-such-image:never";
    let s = env.step(&run, "t", image, &["true"]);
    let (outcome, _logs) = run_step(&env.launcher, &s).await;
    match &outcome {
        StepOutcome::Failed { error, exit_code } => {
            assert_eq!(*exit_code, None);
            assert!(error.contains(image), "{error}");
            assert!(error.contains("not present locally"), "{error}");
            assert!(error.contains("pulling it failed"), "{error}");
            eprintln!("pull error: {error}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(containers_of(env.runtime.client(), &run).await.is_empty());
}

#[tokio::test]
async fn cancel_stops_and_removes_the_container() {
    let Some((env, run, _cleanup)) = setup("cancel").await else {
        return;
    };
    let mut s = env.step(&run, "t", BUSYBOX, &["sh", "-c"]);
    s.container.args = strings(&["trap '' TERM; echo started; sleep 300"]);
    let cancel = CancellationToken::new();
    let (tx, logs) = log_collector();
    let launcher = env.launcher.clone();
    let (spec, c2) = (s.clone(), cancel.clone());
    let task = tokio::spawn(async move { launcher.run_step(&spec, tx, c2).await });
    let docker = env.runtime.client();
    wait_running(docker, &run).await;
    let t0 = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("cancel took too long")
        .expect("join");
    assert_eq!(outcome, StepOutcome::Canceled);
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(logs
        .await
        .expect("logs")
        .iter()
        .any(|l| l.line == "started"));
    env.assert_cleaned_up(&run, &s).await;
}

#[tokio::test]
async fn a_non_root_image_user_can_write_its_outputs() {
    let Some((env, run, _cleanup)) = setup("nobody").await else {
        return;
    };
    let mut s = env.step(&run, "t", BUSYBOX_NOBODY, &["sh", "-c"]);
    s.container.args = strings(&[
        "id -u; cat \"$2\" > \"$0\"; cp \"$2\" \"$1\"",
        "{{$.outputs.parameters['p'].output_file}}",
        "{{$.outputs.artifacts['a'].path}}",
        "{{$.inputs.artifacts['in'].path}}",
    ]);
    let in_path = env.root_dir.path().join("upstream/in");
    std::fs::create_dir_all(in_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&in_path, "payload").expect("write");
    s.inputs.artifacts.insert(
        "in".into(),
        vec![ArtifactRef {
            name: "in".into(),
            uri: file_root(&in_path),
            schema_title: "system.Dataset".into(),
            schema_version: String::new(),
            metadata: Default::default(),
        }],
    );
    add_output_param(&mut s, "p", ParamType::String);
    add_output_artifact(&mut s, "a", "system.Dataset");
    let (outcome, logs) = run_step(&env.launcher, &s).await;
    let (params, _) = succeeded_or_logs(&outcome, &logs);
    assert_eq!(lines(&logs, LogStream::Stdout), vec!["65534"]);
    assert_eq!(params["p"], json!("payload"));
}

#[tokio::test]
async fn waiting_outlives_the_client_request_timeout() {
    if skip() {
        return;
    }
    docker().await;
    ensure_images();
    // bollard's request timeout covers each request until its response headers; wait and
    // follow-logs must not be cut by it however long the step runs.
    let client = Docker::connect_with_defaults()
        .expect("docker client")
        .with_timeout(Duration::from_secs(2));
    let runtime = DockerRuntime::from_client(client).await.expect("engine");
    let run = run_id("timeout");
    let _cleanup = Cleanup(run.clone());
    let work = tempfile::tempdir().expect("tempdir");
    let spec = ContainerRun {
        name: format!("gantry-{run}"),
        image: BUSYBOX.into(),
        command: strings(&["sh", "-c"]),
        args: strings(&["echo begin; sleep 4; echo end; exit 5"]),
        work_dir: work.path().to_path_buf(),
        labels: BTreeMap::from([("gantry.run".to_string(), run.clone())]),
        ..Default::default()
    };
    let (tx, logs) = log_collector();
    let exit = runtime
        .run(&spec, tx, CancellationToken::new())
        .await
        .expect("run");
    assert_eq!(exit.exit_code, 5);
    assert!(!exit.canceled);
    assert_eq!(
        lines(&logs.await.expect("logs"), LogStream::Stdout),
        vec!["begin", "end"]
    );
    assert!(containers_of(runtime.client(), &run).await.is_empty());
}

#[tokio::test]
async fn out_of_memory_is_reported() {
    let Some((env, run, _cleanup)) = setup("oom").await else {
        return;
    };
    let mut s = env.step(&run, "t", BUSYBOX, &["sh", "-c"]);
    // A string that doubles forever.
    s.container.args = strings(&["awk 'BEGIN { s = \"x\"; while (1) s = s s }'"]);
    s.container.resources.memory_limit_bytes = Some(16 << 20);
    let (outcome, _logs) = run_step(&env.launcher, &s).await;
    match &outcome {
        StepOutcome::Failed { error, exit_code } => {
            assert!(exit_code.is_some_and(|c| c != 0), "{outcome:?}");
            assert!(error.contains("out of memory"), "{error}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn kfp_python_executor_in_a_container() {
    if skip() {
        return;
    }
    let image = "gantry/python-kfp:3.11";
    assert!(
        image_present(image),
        "{image} is absent: bash images/build.sh builds it (scripts/test.sh does)"
    );
    let env = env().await;
    let run = run_id("kfp");
    let _cleanup = Cleanup(run.clone());
    let root = file_root(env.root_dir.path());
    let data_path = env.root_dir.path().join("upstream/data");
    std::fs::create_dir_all(data_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&data_path, "a\nb\nc\n").expect("write");
    let s = train_step(
        &run,
        &root,
        image,
        file_root(&data_path),
        (json!(2), json!(0.5), json!("x")),
    );
    let (outcome, logs) = run_step(&env.launcher, &s).await;
    let (params, artifacts) = succeeded_or_logs(&outcome, &logs);
    assert_eq!(params["rows"], json!(3));
    assert_eq!(params["note"], json!("ok x"));
    assert_eq!(
        artifacts["metrics"][0].metadata.get("accuracy"),
        Some(&json!(0.75))
    );
    let stored = env.root_dir.path().join(&run).join("train/attempt-1/model");
    assert_eq!(
        std::fs::read_to_string(stored).expect("model"),
        "model of 3 rows, n=2, rate=0.5, tag=x"
    );
}

#[tokio::test]
async fn orphans_are_removed_by_label() {
    if skip() {
        return;
    }
    let runtime = docker().await;
    ensure_images();
    let run = run_id("orphan");
    let _cleanup = Cleanup(run.clone());
    for _ in 0..2 {
        let out = docker_cli(&[
            "run",
            "-d",
            "--label",
            &format!("gantry.run={run}"),
            "--label",
            "gantry.agent=test-orphans",
            BUSYBOX,
            "sleep",
            "300",
        ]);
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = runtime
        .remove_labelled(&[("gantry.run", &run), ("gantry.agent", "test-orphans")])
        .await
        .expect("remove");
    assert_eq!(n, 2);
    assert!(containers_of(runtime.client(), &run).await.is_empty());
}

#[tokio::test]
async fn orphans_whose_labels_lead_outside_the_work_dir_are_removed_not_followed() {
    if skip() {
        return;
    }
    let runtime = docker().await;
    ensure_images();
    let run = run_id("orphan-escape");
    let _cleanup = Cleanup(run.clone());
    let work = tempfile::tempdir().unwrap();
    let agent = format!("agent-{run}");
    let work_label = work.path().to_string_lossy().into_owned();
    // A container claiming this agent, whose task label climbs out of its work directory.
    let out = docker_cli(&[
        "run",
        "-d",
        "--label",
        &format!("gantry.run={run}"),
        "--label",
        "gantry.managed=true",
        "--label",
        &format!("gantry.agent={agent}"),
        "--label",
        &format!("gantry.work-dir={work_label}"),
        "--label",
        "gantry.task=../../../etc",
        "--label",
        "gantry.attempt=1",
        BUSYBOX,
        "sleep",
        "300",
    ]);
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launcher = Launcher::new(Arc::new(runtime.clone()), work.path().to_path_buf()).labels(
        BTreeMap::from([
            ("gantry.agent".to_string(), agent.clone()),
            ("gantry.work-dir".to_string(), work_label.clone()),
        ]),
    );
    assert!(launcher.orphans().await.is_empty());
    assert!(containers_of(runtime.client(), &run).await.is_empty());
}

/// The isolation every step gets by default, seen from the engine (the container's
/// HostConfig while it runs) and from inside (its capabilities, no-new-privileges, the
/// network `none` leaves it).
#[tokio::test]
async fn steps_run_with_dropped_capabilities_no_new_privileges_and_limits() {
    let Some((env, run, _cleanup)) = setup("isolation").await else {
        return;
    };
    let mut s = env.step(&run, "t", BUSYBOX, &["sh", "-c"]);
    s.container.args =
        strings(&["grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ls /sys/class/net; sleep 2"]);
    let launcher = env.launcher.clone();
    let spec = s.clone();
    let step = tokio::spawn(async move { run_step(&launcher, &spec).await });
    let id = wait_running(env.runtime.client(), &run).await;
    let hc = env
        .runtime
        .client()
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .host_config
        .expect("host config");
    let (outcome, logs) = step.await.expect("step task");
    succeeded_or_logs(&outcome, &logs);
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    let mut added: Vec<String> = hc
        .cap_add
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    added.sort();
    let mut want = gantry_agent::runtime::DEFAULT_STEP_CAPS
        .map(String::from)
        .to_vec();
    want.sort();
    assert_eq!(added, want);
    assert_eq!(
        hc.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(hc.pids_limit, Some(4096));
    assert_eq!(hc.memory, Some(4 << 30), "the default memory limit");
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    // Inside: exactly CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE
    // (bits 0 1 3 4 5 6 7 10), so no CAP_SYS_ADMIN (bit 21) nor NET_RAW (13); no new
    // privileges; only the loopback interface.
    assert_eq!(
        lines(&logs, LogStream::Stdout),
        vec!["CapEff:\t00000000000004fb", "NoNewPrivs:\t1", "lo"]
    );
}

/// A fork bomb stops at the PID limit: the step fails instead of the host.
#[tokio::test]
async fn the_pid_limit_bounds_a_fork_bomb() {
    let Some((env, run, _cleanup)) = setup("pids").await else {
        return;
    };
    let runtime = Arc::new(
        docker()
            .await
            .with_isolation(gantry_agent::runtime::StepIsolation {
                pids_limit: Some(20),
                ..Default::default()
            }),
    );
    let launcher = Launcher::new(runtime, env._work_dir.path().join("pids"));
    let mut s = env.step(&run, "t", BUSYBOX, &["sh", "-c"]);
    s.container.args = strings(&["for i in $(seq 60); do sleep 3 & done; echo all-started"]);
    let (outcome, logs) = run_step(&launcher, &s).await;
    let StepOutcome::Failed { error, .. } = &outcome else {
        panic!("the fork bomb was not stopped: {outcome:?} {logs:?}");
    };
    assert!(error.contains("can't fork"), "{error}");
    assert!(!lines(&logs, LogStream::Stdout).contains(&"all-started"));
}
