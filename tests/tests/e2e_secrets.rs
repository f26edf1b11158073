//! kfp-kubernetes `use_secret_as_env` and `mount_pvc` end to end on the Docker runtime, with a
//! pipeline compiled by kfp + kfp-kubernetes 2.16.1: the agent resolves the secret from its
//! `--secrets-dir` and mounts its `--volume`; the step sees the value, the logs show `***`,
//! the value is nowhere in the coordinator's data directory, and the step's file lands in the
//! host directory. A step needing a secret no agent has fails at once saying so; a secret name
//! from a pipeline parameter is resolved when the step is ready (as variables and as a mounted
//! directory), and one that is no valid name fails the task saying so. Config maps from
//! `--config-maps-dir` reach the step as variables and as files.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_testkit::*;

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(p.display().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[test]
fn secrets_as_env_and_volumes_reach_the_step_and_the_value_never_leaves_the_agent() {
    let secrets = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let value = format!("e2e-s3cr3t-{}-{nanos}", std::process::id());
    let token = secrets.path().join("api/token");
    std::fs::create_dir(secrets.path().join("api")).unwrap();
    std::fs::write(&token, &value).unwrap();
    std::fs::write(scratch.path().join("in.txt"), "from the host").unwrap();
    let volume = format!("scratch={}", scratch.path().display());
    let secrets_dir = secrets.path().display().to_string();
    let config_maps = tempfile::tempdir().unwrap();
    std::fs::create_dir(config_maps.path().join("app")).unwrap();
    std::fs::write(config_maps.path().join("app/mode"), "fast").unwrap();
    let config_maps_dir = config_maps.path().display().to_string();
    let mut env = DockerEnv::start_with(
        "secrets",
        &[
            "--secrets-dir",
            &secrets_dir,
            "--volume",
            &volume,
            "--config-maps-dir",
            &config_maps_dir,
        ],
    );
    let file = compile_pipeline("secrets_volumes", env.out.path()).unwrap();
    let cli = env.cluster.cli();

    let agents = cli.run(&["agent", "list", "-o", "json"]).json().unwrap();
    let labels = &agents[0]["labels"];
    assert_eq!(labels["secret.gantry.dev/api"], "true", "{agents:#}");
    assert_eq!(labels["volume.gantry.dev/scratch"], "true", "{agents:#}");
    assert_eq!(labels["configmap.gantry.dev/app"], "true", "{agents:#}");

    let (code, run) = cli.submit_wait(&file, &[]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", env.cluster.log());
    let run_id = run["run_id"].as_str().unwrap().to_string();

    // The step saw the value: it wrote its hash into the volume, and read the host's file.
    let expected = Command::new("sha256sum").arg(&token).output().unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    let seen = std::fs::read_to_string(scratch.path().join("token.sha256")).unwrap();
    assert_eq!(
        seen.trim(),
        expected.split_whitespace().next().unwrap_or("?")
    );
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("out.txt")).unwrap(),
        "read: from the host\n"
    );

    let logs = cli.run(&["run", "logs", &run_id, "--task", "use-secret"]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert!(logs.stdout.contains("token is ***"), "{}", logs.stdout);
    assert!(logs.stdout.contains("on stderr: ***"), "{}", logs.stdout);
    assert!(!logs.stdout.contains(&value), "{}", logs.stdout);
    let shown = cli.run(&["run", "get", &run_id, "-o", "json"]);
    assert!(!shown.stdout.contains(&value), "{}", shown.stdout);

    // A step needing a secret that no agent has never runs, and says which.
    let missing = env.out.path().join("missing_secret.yaml");
    let (code, run) = cli.submit_wait(&missing, &[]).unwrap();
    assert_eq!(code, 1, "{run:#}");
    let t = task(&run, "nothing");
    assert_eq!(t["state"], "FAILED", "{run:#}");
    assert_eq!(t["attempts"], 0, "{t:#}");
    let err = t["error"].as_str().unwrap_or("");
    assert!(
        err.starts_with("unschedulable:") && err.contains("secret.gantry.dev/absent"),
        "{err}"
    );

    // A secret name from a pipeline parameter is resolved when the step is ready: as
    // variables and as a read-only directory of files.
    let dynamic = env.out.path().join("dynamic_secret.yaml");
    let (code, run) = cli.submit_wait(&dynamic, &[]).unwrap();
    assert_eq!(code, 0, "{run:#}");
    let dyn_id = run["run_id"].as_str().unwrap().to_string();
    let logs = cli.run(&["run", "logs", &dyn_id]);
    assert!(
        logs.stdout.contains("dynamic token is ***") && !logs.stdout.contains(&value),
        "{}",
        logs.stdout
    );
    // A name no agent has: unschedulable, naming it; one that is no name: the task fails.
    let (code, run) = cli
        .submit_wait(&dynamic, &["secret_name=elsewhere"])
        .unwrap();
    assert_eq!(code, 1, "{run:#}");
    let err = task(&run, "check-dynamic")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.starts_with("unschedulable:") && err.contains("secret.gantry.dev/elsewhere"),
        "{err}"
    );
    let (code, run) = cli.submit_wait(&dynamic, &["secret_name=../etc"]).unwrap();
    assert_eq!(code, 1, "{run:#}");
    let t = task(&run, "check-dynamic");
    assert_eq!(t["attempts"], 0, "{t:#}");
    let err = t["error"].as_str().unwrap_or("");
    assert!(
        err.contains("secret name \"../etc\"") && err.contains("secretAsEnv"),
        "{err}"
    );

    // Config maps: as variables (by a name from a parameter) and as files; an optional one no
    // agent has is left out; a required one no agent has is unschedulable, naming it.
    let cm = env.out.path().join("config_maps.yaml");
    let (code, run) = cli.submit_wait(&cm, &[]).unwrap();
    assert_eq!(code, 0, "{run:#}");
    let cm_id = run["run_id"].as_str().unwrap().to_string();
    let logs = cli.run(&["run", "logs", &cm_id]);
    assert!(logs.stdout.contains("mode is fast"), "{}", logs.stdout);
    let (code, run) = cli.submit_wait(&cm, &["cm=elsewhere"]).unwrap();
    assert_eq!(code, 1, "{run:#}");
    let err = task(&run, "check-config")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.starts_with("unschedulable:") && err.contains("configmap.gantry.dev/elsewhere"),
        "{err}"
    );

    // Nothing the coordinator keeps (Raft log, state, step logs, its own log) holds the value.
    env.cluster.proc.terminate(Duration::from_secs(10));
    let leaks = files_holding(env.cluster.data_dir.path(), value.as_bytes());
    assert!(leaks.is_empty(), "the secret value is in {leaks:?}");
}
