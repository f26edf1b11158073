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

/// A pipeline whose root takes the artifact `data`, read by one step that prints it and
/// reports whether it saw the agent's AWS secret; `ENV` is spliced into the step's `env`,
/// `IMPORTER` into the root DAG's tasks (with its component and executor).
const HOSTS_PIPELINE: &str = r#"
pipelineInfo: {name: hosts}
components:
  comp-read:
    executorLabel: exec-read
    inputDefinitions:
      artifacts:
        data: {artifactType: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}}
    outputDefinitions:
      parameters:
        text: {parameterType: STRING}
        secret: {parameterType: STRING}
  comp-importer:
    executorLabel: exec-importer
    inputDefinitions:
      parameters:
        uri: {parameterType: STRING}
    outputDefinitions:
      artifacts:
        artifact: {artifactType: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}}
deploymentSpec:
  executors:
    exec-read:
      container:
        image: gantry/busybox:latest
        command: [sh, -c]
        args:
        - 'cat "$0" > "$1"; printf "%s" "${AWS_SECRET_ACCESS_KEY:-unset}" > "$2"'
        - "{{$.inputs.artifacts['data'].path}}"
        - "{{$.outputs.parameters['text'].output_file}}"
        - "{{$.outputs.parameters['secret'].output_file}}"
        env: [ENV]
    exec-importer:
      importer:
        artifactUri: IMPORTER_URI
        typeSchema: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}
root:
  inputDefinitions:
    artifacts:
      data: {artifactType: {schemaTitle: system.Dataset, schemaVersion: 0.0.1}}
    parameters:
      uri: {parameterType: STRING, defaultValue: "gs://nowhere/x"}
  dag:
    tasks:
      read:
        taskInfo: {name: read}
        componentRef: {name: comp-read}
        inputs:
          artifacts:
            data: {componentInputArtifact: data}
      importer:
        taskInfo: {name: importer}
        componentRef: {name: comp-importer}
        inputs:
          parameters:
            uri: {componentInputParameter: uri}
"#;

fn hosts_pipeline(
    dir: &std::path::Path,
    name: &str,
    env: &str,
    importer_uri: &str,
) -> std::path::PathBuf {
    let yaml = HOSTS_PIPELINE
        .replace("[ENV]", &format!("[{env}]"))
        .replace("IMPORTER_URI", importer_uri);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn run_count(cli: &Cli) -> usize {
    cli.run(&["run", "list", "-o", "json"])
        .json()
        .unwrap()
        .as_array()
        .map_or(0, Vec::len)
}

/// The URI policy and the reserved variables at submit: file:// outside the import roots, a
/// bucket not allowed, an importer constant outside them and a reserved variable are each
/// refused naming the URI (or variable and task) and the rule, and create no run; a file
/// inside an import root is read; an importer URI from a parameter is checked when it runs.
/// The agent's own AWS secret does not reach a process step.
#[test]
fn host_rules_are_enforced_at_submit_and_in_steps() {
    let out = tempfile::tempdir().unwrap();
    let artifacts = tempfile::tempdir().unwrap();
    let imports = tempfile::tempdir().unwrap();
    std::fs::write(imports.path().join("data.txt"), "imported text").unwrap();
    let root = format!("file://{}", artifacts.path().display());
    let import_root = format!("file://{}", imports.path().display());
    let cluster = DevCluster::start_with(
        Runtime::Process,
        Some(&root),
        &[("AWS_SECRET_ACCESS_KEY".into(), "agent-only-secret".into())],
        &["--import-root", &import_root],
    )
    .expect("gantry dev");
    let cli = cluster.cli();
    let plain = hosts_pipeline(out.path(), "plain", "", "{runtimeParameter: uri}");
    let submit = |file: &std::path::Path, args: &[&str]| {
        let file = file.to_str().unwrap();
        let mut all = vec!["run", "submit", file];
        all.extend_from_slice(args);
        cli.run(&all)
    };
    let before = run_count(&cli);

    let refused = [
        (
            submit(&plain, &["-a", "data=file:///etc/shadow"]),
            format!(
                "artifact input \"data\": file:///etc/shadow is outside the import roots \
                 ({import_root}; see --import-root)"
            ),
        ),
        (
            submit(&plain, &["-a", &format!("data={import_root}/../data.txt")]),
            "'..' segment".to_string(),
        ),
        (
            submit(&plain, &["-a", "data=s3://someone-elses-bucket/k"]),
            "s3://someone-elses-bucket/k is outside the artifact root".to_string(),
        ),
        (
            submit(
                &hosts_pipeline(out.path(), "imp", "", "{constant: \"file:///etc/passwd\"}"),
                &["-a", &format!("data={import_root}/data.txt")],
            ),
            "importer \"importer\": file:///etc/passwd is outside the import roots".to_string(),
        ),
        (
            submit(
                &hosts_pipeline(
                    out.path(),
                    "env",
                    "{name: NVIDIA_VISIBLE_DEVICES, value: all}",
                    "{runtimeParameter: uri}",
                ),
                &["-a", &format!("data={import_root}/data.txt")],
            ),
            "task \"read\": environment variable NVIDIA_VISIBLE_DEVICES is reserved".to_string(),
        ),
    ];
    for (r, want) in refused {
        assert_ne!(r.code, 0, "accepted: {}", r.stdout);
        assert!(r.stderr.contains(&want), "want {want:?} in: {}", r.stderr);
    }
    assert_eq!(
        run_count(&cli),
        before,
        "a refused submission created a run"
    );

    // Inside the import root: read, and the agent's secret stays the agent's.
    let data = format!("data={import_root}/data.txt");
    let (code, run) = cli.submit_wait_with(&plain, &[], &["-a", &data]).unwrap();
    assert_eq!(code, 0, "{run:#}\n{}", cluster.log());
    let read = task(&run, "read");
    assert_eq!(
        read["outputs"]["parameters"]["text"],
        json!("imported text")
    );
    assert_eq!(read["outputs"]["parameters"]["secret"], json!("unset"));

    // An importer URI from a parameter: refused when the importer runs.
    let (code, run) = cli
        .submit_wait_with(&plain, &["uri=file:///etc/hostname"], &["-a", &data])
        .unwrap();
    assert_ne!(code, 0, "{run:#}");
    let err = task(&run, "importer")["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        err,
        format!(
            "importer \"importer\": file:///etc/hostname is outside the import roots \
             ({import_root}; see --import-root)"
        )
    );
}

/// `--runtime auto` with no Docker engine does not start (no silent fallback to host
/// processes) and names `--runtime process`.
#[test]
fn auto_runtime_without_docker_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("gantry"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "auto",
            "--data-dir",
        ])
        .arg(data.path())
        .env("DOCKER_HOST", "unix:///nonexistent/gantry-no-docker.sock")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without Docker: {stderr}");
    assert!(stderr.contains("--runtime process"), "{stderr}");
    assert!(!stderr.contains("gantry dev: coordinator on"), "{stderr}");
}

/// `gantry dev` is a server: a peer hanging up while a socket write is under way must be an
/// error on that connection, not SIGPIPE's default action, which ended the whole embedded
/// cluster (the client commands restore that default, for `| head`).
#[test]
fn gantry_dev_ignores_sigpipe() {
    let cluster = DevCluster::start(Runtime::Process, None, &[]).expect("gantry dev");
    let pid = cluster.proc.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("a SigIgn line");
    let sigpipe = 1u64 << (SIGPIPE - 1);
    assert_ne!(
        ignored & sigpipe,
        0,
        "gantry dev (pid {pid}) does not ignore SIGPIPE: SigIgn {ignored:#x}"
    );
}

/// SIGPIPE's number on Linux.
const SIGPIPE: u64 = 13;

/// An output parameter too large for one Raft entry fails its step with an error naming the
/// limit; the agent's session survives (before the bound, the result broke the session at
/// every reconnect and the run never ended), and the next run succeeds.
#[test]
fn an_output_over_the_size_limit_fails_the_step_and_the_agent_goes_on() {
    let out = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(Runtime::Process, None, &[]).expect("gantry dev");
    let file = compile_pipeline("big_output", out.path()).unwrap();
    let cli = cluster.cli();
    let over = (gantry_model::limits::MAX_STEP_OUTPUTS_BYTES + 1024).to_string();
    let id = cli.submit(&file, &[&format!("size={over}")]).unwrap();
    let run = cli.wait_finished(&id, std::time::Duration::from_secs(120));
    assert_eq!(run["state"], "FAILED", "{run:#}\n{}", cluster.log());
    let error = task(&run, "big")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("over the limit of 4194304 bytes"),
        "{error}\n{}",
        cluster.log()
    );
    let id = cli.submit(&file, &["size=2048"]).unwrap();
    let run = cli.wait_finished(&id, std::time::Duration::from_secs(120));
    assert_eq!(run["state"], "SUCCEEDED", "{run:#}\n{}", cluster.log());
    assert_eq!(
        task(&run, "big")["outputs"]["parameters"]["out"]
            .as_str()
            .map(str::len),
        Some(2048)
    );
}
