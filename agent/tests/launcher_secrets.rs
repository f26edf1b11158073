//! Secrets as variables and volumes through the launcher on the process runtime: the step gets
//! the value, its logs and failure message show `***` instead; a missing secret or a volume
//! on the process runtime fails the step, saying which.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use gantry_agent::launcher::Launcher;
use gantry_agent::runtime::{LogStream, ProcessRuntime};
use gantry_agent::secrets::SecretStore;
use gantry_model::{SecretEnv, StepOutcome, VolumeMount};

const VALUE: &str = "pa55-w0rd-xyz";

fn secret_env(secret: &str, key: &str, env: &str) -> SecretEnv {
    SecretEnv {
        secret: secret.into(),
        key: key.into(),
        env: env.into(),
        optional: false,
    }
}

struct Env {
    _dirs: [tempfile::TempDir; 3],
    root: String,
    launcher: Launcher,
}

fn env() -> Env {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir(secrets.path().join("db")).unwrap();
    let file = secrets.path().join("db/password");
    // A trailing line with the value again: multi-line values are masked line by line.
    std::fs::write(&file, format!("{VALUE}\nsecond-line-{VALUE}")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let launcher = Launcher::new(Arc::new(ProcessRuntime::new()), work.path().join("agent"))
        .secrets(Some(SecretStore::open(secrets.path()).unwrap()));
    Env {
        root: file_root(root.path()),
        _dirs: [secrets, work, root],
        launcher,
    }
}

async fn run(env: &Env, spec: &gantry_model::StepSpec) -> (StepOutcome, Vec<String>) {
    let (outcome, logs) = run_step(&env.launcher, spec).await;
    let all = lines(&logs, LogStream::Stdout)
        .into_iter()
        .chain(lines(&logs, LogStream::Stderr))
        .map(str::to_string)
        .collect();
    (outcome, all)
}

#[tokio::test]
async fn the_step_gets_the_value_and_its_logs_and_failure_show_it_masked() {
    let env = env();
    let script = format!(
        r#"case "$PW" in "{VALUE}"*) echo "match";; *) echo "no match"; exit 9;; esac
echo "pw is $PW"
echo "err $PW" >&2
exit 3"#
    );
    let mut spec = step(&run_id("sec"), "t", &env.root, "", &["sh", "-c", &script]);
    spec.container.secret_env = vec![secret_env("db", "password", "PW")];
    let (outcome, logs) = run(&env, &spec).await;
    let StepOutcome::Failed { error, exit_code } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*exit_code, Some(3), "{error}\n{logs:?}");
    assert!(logs.iter().any(|l| l == "match"), "{logs:?}");
    assert!(logs.iter().any(|l| l == "pw is ***"), "{logs:?}");
    assert!(logs.iter().any(|l| l == "***"), "{logs:?}");
    assert!(error.contains("err ***"), "{error}");
    for text in logs.iter().chain([error]) {
        assert!(!text.contains(VALUE), "value leaked: {text}");
    }
}

#[tokio::test]
async fn a_missing_secret_or_a_volume_on_the_process_runtime_fails_clearly() {
    let env = env();
    let mut spec = step(&run_id("sec"), "t", &env.root, "", &["true"]);
    spec.container.secret_env = vec![secret_env("db", "token", "TOKEN")];
    let (outcome, _) = run(&env, &spec).await;
    let StepOutcome::Failed { error, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        error.contains("secret \"db\" has no key \"token\""),
        "{error}"
    );

    let mut spec = step(&run_id("vol"), "t", &env.root, "", &["true"]);
    spec.container.volumes = vec![VolumeMount {
        volume: "data".into(),
        mount_path: "/data".into(),
        sub_path: String::new(),
        run_claim: false,
    }];
    let (outcome, _) = run(&env, &spec).await;
    let StepOutcome::Failed { error, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        error.contains("\"data\" at /data") && error.contains("process runtime"),
        "{error}"
    );
}
