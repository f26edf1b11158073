//! Whole-system helpers: the binaries built once per test process, `gantry dev` in a child
//! process, the `gantry` CLI pointed at a cluster, pipelines compiled by the real kfp SDK, the
//! stand-in NVML library and the Docker test images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::net::{first_word, wait_for_line};
use crate::poll::poll_every;
use crate::{repo_root, Proc, S3};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Builds the three binaries once per test process and returns the directory holding them.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "gantry-cli",
                "-p",
                "gantry-coordinator",
                "-p",
                "gantry-agent",
                "--bins",
                // The crash tests panic a coordinator through failpoints; gantry-tests turns
                // the feature on too, so both builds agree and neither rebuilds the other's.
                "--features",
                "gantry-coordinator/failpoints",
            ])
            .current_dir(repo_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the gantry binaries failed");
        target_dir().join("debug")
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Compiles `tests/pipelines/<name>.py` with the real kfp SDK into `out_dir`.
pub fn compile_pipeline(name: &str, out_dir: &Path) -> Result<PathBuf> {
    compile_source(
        &repo_root()
            .join("tests/pipelines")
            .join(format!("{name}.py")),
        out_dir,
    )
}

/// Compiles a pipeline source (relative to the repository root, or absolute) into `out_dir`.
pub fn compile_source(src: &Path, out_dir: &Path) -> Result<PathBuf> {
    compile_source_with(src, out_dir, &[])
}

/// Like [`compile_source`], passing `args` to the pipeline script after the output path.
pub fn compile_source_with(src: &Path, out_dir: &Path, args: &[&str]) -> Result<PathBuf> {
    let src = repo_root().join(src);
    let name = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into());
    let out = out_dir.join(format!("{name}.yaml"));
    let o = Command::new("python3")
        .arg(&src)
        .arg(&out)
        .args(args)
        .output()
        .context("running python3")?;
    if !o.status.success() {
        bail!(
            "compiling {} failed (is kfp==2.16.1 installed?): {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// The stand-in NVML library (tests/nvml/standin_nvml.c), built once per test process: agents
/// load it through `GANTRY_NVML_LIBRARY` and report the GPUs that `GANTRY_STANDIN_GPUS` or the
/// file `GANTRY_STANDIN_GPUS_FILE` describe.
pub fn standin_nvml() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = target_dir().join("standin-nvml");
        std::fs::create_dir_all(&dir).expect("creating the stand-in NVML directory");
        let out = dir.join(format!("libnvidia-ml-standin-{}.so", std::process::id()));
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(repo_root().join("tests/nvml/standin_nvml.c"))
            .status()
            .expect("cc runs");
        assert!(
            status.success(),
            "building the stand-in NVML library failed"
        );
        out
    })
    .clone()
}

/// Builds the test images if they are missing (images/build.sh is idempotent).
pub fn ensure_images() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let missing = ["gantry/python-kfp:3.11", "gantry/busybox:latest"]
            .iter()
            .any(|img| {
                !Command::new("docker")
                    .args(["image", "inspect", img])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            });
        if !missing {
            return Ok(());
        }
        let status = Command::new("bash")
            .arg(repo_root().join("images/build.sh"))
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err("images/build.sh failed".into())
        }
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Which runtime a cluster's agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Process,
}

impl Runtime {
    fn flag(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Process => "process",
        }
    }
}

/// A real S3 server and `gantry dev` on the Docker runtime writing artifacts under
/// `s3://<bucket>/<prefix>`, with a directory for compiled pipelines: the usual setup of the
/// end-to-end tests.
pub struct DockerEnv {
    pub s3: S3,
    pub cluster: DevCluster,
    pub out: tempfile::TempDir,
}

impl DockerEnv {
    pub fn start(prefix: &str) -> DockerEnv {
        Self::start_with(prefix, &[])
    }

    /// Like [`Self::start`] with extra `gantry dev` flags.
    pub fn start_with(prefix: &str, dev_args: &[&str]) -> DockerEnv {
        Self::start_configured(prefix, |_| dev_args.iter().map(|a| a.to_string()).collect())
    }

    /// Like [`Self::start`] with extra `gantry dev` flags that depend on the S3 server (an
    /// `--allow-bucket` naming its bucket).
    pub fn start_configured(prefix: &str, dev_args: impl FnOnce(&S3) -> Vec<String>) -> DockerEnv {
        ensure_images().expect("test images");
        let s3 = S3::start().expect("S3 server");
        let args = dev_args(&s3);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cluster = DevCluster::start_with(
            Runtime::Docker,
            Some(&s3.artifact_root(prefix)),
            &s3.env(),
            &args,
        )
        .expect("gantry dev starts");
        DockerEnv {
            s3,
            cluster,
            out: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Compiles `tests/pipelines/<pipeline>.py` into [`Self::out`], submits it with `params`
    /// and waits: the exit code and the run.
    pub fn submit_wait(&self, pipeline: &str, params: &[&str]) -> (i32, Value) {
        let file = compile_pipeline(pipeline, self.out.path())
            .unwrap_or_else(|e| panic!("compiling {pipeline}: {e:#}"));
        self.cluster
            .cli()
            .submit_wait(&file, params)
            .unwrap_or_else(|e| panic!("submitting {pipeline}: {e:#}"))
    }
}

/// `gantry dev` in a child process.
pub struct DevCluster {
    pub endpoint: String,
    pub data_dir: tempfile::TempDir,
    pub proc: Proc,
    env: Vec<(String, String)>,
}

impl DevCluster {
    pub fn start(
        runtime: Runtime,
        artifact_root: Option<&str>,
        env: &[(String, String)],
    ) -> Result<DevCluster> {
        Self::start_with(runtime, artifact_root, env, &[])
    }

    /// Like [`Self::start`] with extra `gantry dev` flags.
    pub fn start_with(
        runtime: Runtime,
        artifact_root: Option<&str>,
        env: &[(String, String)],
        dev_args: &[&str],
    ) -> Result<DevCluster> {
        let data_dir = tempfile::tempdir()?;
        // Port 0 and the address from the log: a port picked here could be taken by another
        // test's server before `gantry dev` binds it.
        let mut cmd = Command::new(bin("gantry"));
        cmd.arg("dev")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--runtime", runtime.flag()])
            .args(dev_args);
        if let Some(root) = artifact_root {
            cmd.args(["--artifact-root", root]);
        }
        let log_path = data_dir.path().join("dev.log");
        let log = std::fs::File::create(&log_path)?;
        cmd.envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().context("starting gantry dev")?;
        let banner = wait_for_line(
            &log_path,
            "gantry dev: coordinator on ",
            1,
            &mut child,
            "gantry dev",
            Duration::from_secs(60),
        )?;
        // Owned (and so stopped on drop) before anything else can fail.
        let proc = Proc::new(child, "gantry dev");
        let endpoint = first_word(&banner)?;
        let c = DevCluster {
            endpoint,
            data_dir,
            proc,
            env: env.to_vec(),
        };
        c.wait_for_agents(1)?;
        Ok(c)
    }

    /// The CLI as `gantry dev` set it up: its CA and admin token, through the client config
    /// it wrote.
    pub fn cli(&self) -> Cli {
        let mut env = self.env.clone();
        env.push((
            "GANTRY_CLIENT_CONFIG".into(),
            self.data_dir
                .path()
                .join("client.toml")
                .to_string_lossy()
                .into_owned(),
        ));
        Cli {
            endpoint: self.endpoint.clone(),
            env,
        }
    }

    /// The admin token `gantry dev` made.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("admin.token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }

    pub fn wait_for_agents(&self, n: usize) -> Result<()> {
        self.cli().wait_for_agents(n)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("dev.log")).unwrap_or_default()
    }
}

/// The `gantry` CLI pointed at one endpoint.
#[derive(Clone)]
pub struct Cli {
    pub endpoint: String,
    pub env: Vec<(String, String)>,
}

pub struct CliResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliResult {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> CliResult {
        let o: Output = Command::new(bin("gantry"))
            .args(args)
            .env("GANTRY_ENDPOINT", &self.endpoint)
            .envs(self.env.iter().cloned())
            .output()
            .expect("gantry runs");
        CliResult {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `gantry run submit FILE -p ... --wait -o json`: the exit code and the run.
    pub fn submit_wait(&self, file: &Path, params: &[&str]) -> Result<(i32, Value)> {
        self.submit_wait_with(file, params, &[])
    }

    /// Like [`Self::submit_wait`] with extra `run submit` flags.
    pub fn submit_wait_with(
        &self,
        file: &Path,
        params: &[&str],
        flags: &[&str],
    ) -> Result<(i32, Value)> {
        let file = file.to_string_lossy().into_owned();
        let mut args = vec!["run", "submit", file.as_str(), "--wait", "-o", "json"];
        for p in params {
            args.push("-p");
            args.push(p);
        }
        args.extend_from_slice(flags);
        let r = self.run(&args);
        let v = r.json().with_context(|| format!("exit code {}", r.code))?;
        Ok((r.code, v))
    }

    /// `gantry run submit FILE -p ...` without waiting: the new run's id.
    pub fn submit(&self, file: &Path, params: &[&str]) -> Result<String> {
        self.submit_with(file, params, &[])
    }

    /// Like [`Self::submit`] with extra `run submit` flags.
    pub fn submit_with(&self, file: &Path, params: &[&str], flags: &[&str]) -> Result<String> {
        let file = file.to_string_lossy().into_owned();
        let mut args = vec!["run", "submit", file.as_str(), "-o", "json"];
        for p in params {
            args.push("-p");
            args.push(p);
        }
        args.extend_from_slice(flags);
        let r = self.run(&args);
        if r.code != 0 {
            bail!("submit exited {}: {}", r.code, r.stderr);
        }
        r.json()?["run_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no run_id in {}", r.stdout))
    }

    pub fn get_run(&self, run_id: &str) -> Result<Value> {
        self.run(&["run", "get", run_id, "-o", "json"]).json()
    }

    /// Polls the run until `done(run)` holds; panics with the last state after `timeout`.
    #[track_caller]
    pub fn wait_until(
        &self,
        run_id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        // The coordinator may be restarting: keep asking until the deadline.
        let r = poll_every(timeout, Duration::from_millis(100), || {
            match self.get_run(run_id) {
                Ok(run) if done(&run) => Ok(run),
                Ok(run) => Err(format!("run did not get there in {timeout:?}: {run:#}")),
                Err(e) => Err(format!("run {run_id} unreadable for {timeout:?}: {e:#}")),
            }
        });
        match r {
            Ok(run) => run,
            Err(why) => panic!("{why}"),
        }
    }

    /// Waits for a terminal state and returns the run.
    pub fn wait_finished(&self, run_id: &str, timeout: Duration) -> Value {
        self.wait_until(run_id, timeout, |r| {
            matches!(
                r["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "CANCELED")
            )
        })
    }

    pub fn wait_for_agents(&self, n: usize) -> Result<()> {
        poll_every(Duration::from_secs(30), Duration::from_millis(100), || {
            let r = self.run(&["agent", "list", "-o", "json"]);
            let connected = r
                .json()
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|a| a.iter().filter(|x| x["state"] == "CONNECTED").count())
                })
                .unwrap_or(0);
            if connected >= n {
                Ok(())
            } else {
                Err(anyhow!(
                    "{n} agent(s) did not connect: {} {}",
                    r.stdout,
                    r.stderr
                ))
            }
        })
    }
}

/// The task of a run JSON with this IR task name.
pub fn task<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("run has no task {name}: {run:#}"))
}

/// How many times each step wrote its name to `marker`, the file the `chain` pipeline's steps
/// (`tests/pipelines/chain.py`) append to: one line per execution.
pub fn marks(marker: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(marker).unwrap_or_default().lines() {
        *m.entry(line.to_string()).or_insert(0) += 1;
    }
    m
}

/// Containers on the local engine carrying label `gantry.run=<run_id>`.
pub fn containers_of_run(run_id: &str) -> Vec<String> {
    Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=gantry.run={run_id}"),
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}
