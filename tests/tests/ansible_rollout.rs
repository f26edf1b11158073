//! The Ansible roles (`ansible/`) on a fleet of five hosts: containers with systemd as PID 1
//! (`images/systemd-host.sh`) on a private Docker network, reached through Ansible's Docker
//! connection, with a real `ansible-playbook`. Three coordinators form one cluster (one
//! bootstraps, two join), two agents register with their group's labels, a pipeline runs
//! across both, a second run changes nothing, and a third one, while a long step runs, joins
//! a rebuilt coordinator host again without a second bootstrap and rolls the agents to a
//! rebuilt binary: the drained agent's step finishes first, and its run SUCCEEDS. A last run
//! upgrades the coordinators one at a time under a submission load, the leader handing over
//! first, and every submission is acknowledged.
//!
//! The agents use the process runtime: the hosts are containers without a Docker engine of
//! their own, and steps run as processes inside them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_testkit::{bin_dir, compile_source, poll_every, repo_root, run_within, S3};
use serde_json::Value;

const HOSTS: [&str; 5] = ["c1", "c2", "c3", "a1", "a2"];
const IMAGE: &str = "gantry/systemd-host:bookworm";

/// What the test started, removed by id when it ends, passed or failed.
struct Fleet {
    tag: String,
    network: String,
    /// Host name → (container id, IP address).
    hosts: Vec<(String, String, String)>,
    dir: tempfile::TempDir,
    _s3: S3,
    s3_endpoint: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, id, _) in &self.hosts {
            let _ = docker(&["rm", "-f", "-v", id]);
        }
        // A host whose `docker run` failed midway has a container by name and no id here.
        for name in HOSTS {
            let _ = docker(&["rm", "-f", "-v", &format!("{}-{name}", self.tag)]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    let o = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Fleet {
    fn start() -> Fleet {
        sh(Command::new("bash").arg(repo_root().join("images/systemd-host.sh")));
        let tag = format!("gantry-rollout-{}", std::process::id());
        // A subnet of its own, so each host has a fixed address and a rebuilt one comes
        // back at its own: the first of these that no other network on this machine uses.
        let (network, prefix) = (0..64)
            .find_map(|i| {
                let prefix = format!("10.213.{}", (std::process::id() as usize + i) % 250);
                docker(&[
                    "network",
                    "create",
                    "--subnet",
                    &format!("{prefix}.0/24"),
                    "--gateway",
                    &format!("{prefix}.1"),
                    &tag,
                ])
                .ok()
                .map(|id| (id, prefix))
            })
            .expect("no free subnet for the fleet's network");
        let gateway = format!("{prefix}.1");
        let s3 = S3::start_at(&gateway).unwrap();
        let s3_endpoint = s3.env()[0].1.clone();
        let mut fleet = Fleet {
            tag,
            network,
            hosts: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            _s3: s3,
            s3_endpoint,
        };
        for (i, name) in HOSTS.iter().enumerate() {
            let ip = format!("{prefix}.{}", 10 + i);
            let id = fleet.run_host(name, &ip);
            fleet.hosts.push((name.to_string(), id, ip));
        }
        fleet
    }

    fn run_host(&self, name: &str, ip: &str) -> String {
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &format!("{}-{name}", self.tag),
            "--hostname",
            name,
            "--network",
            &self.network,
            "--ip",
            ip,
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            IMAGE,
        ])
        .unwrap();
        poll_every(Duration::from_secs(60), Duration::from_millis(500), || {
            let state = Command::new("docker")
                .args(["exec", &id, "systemctl", "is-system-running"])
                .output()
                .map_err(|_| ())?;
            let s = String::from_utf8_lossy(&state.stdout);
            matches!(s.trim(), "running" | "degraded")
                .then_some(())
                .ok_or(())
        })
        .unwrap_or_else(|()| panic!("systemd did not come up in {name}"));
        id
    }

    /// Replaces host `name` with a fresh container at the same address: a rebuilt machine.
    fn rebuild(&mut self, name: &str) {
        let at = self.hosts.iter().position(|h| h.0 == name).unwrap();
        let (_, old, ip) = self.hosts[at].clone();
        docker(&["rm", "-f", "-v", &old]).unwrap();
        let id = self.run_host(name, &ip);
        self.hosts[at].1 = id;
    }

    fn ip(&self, name: &str) -> &str {
        &self.hosts.iter().find(|h| h.0 == name).unwrap().2
    }

    fn container(&self, name: &str) -> &str {
        &self.hosts.iter().find(|h| h.0 == name).unwrap().1
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn write_inventory(&self) {
        let host = |indent: usize, name: &str, extra: &str| {
            format!(
                "{:indent$}{name}: {{ ansible_host: {}{extra} }}\n",
                "",
                self.container(name)
            )
        };
        let inventory = format!(
            r#"all:
  vars:
    ansible_connection: community.docker.docker
    ansible_become: false
    gantry_cluster_name: rollout
    gantry_binaries_dir: {bin}
    gantry_pki_dir: {pki}
    gantry_artifact_root: s3://gantry-artifacts/rollout
    gantry_coordinator_health_delay: 1
    gantry_agent_health_delay: 1
    gantry_agent_drain_delay: 1
    gantry_s3: &s3
      AWS_ENDPOINT_URL: {s3}
      AWS_ALLOW_HTTP: "true"
      AWS_REGION: us-east-1
      AWS_ACCESS_KEY_ID: gantry
      AWS_SECRET_ACCESS_KEY: gantrysecret
  children:
    coordinators:
      vars:
        gantry_coordinator_environment: *s3
      hosts:
{c1}{c2}{c3}    agents:
      vars:
        gantry_agent_runtime: process
        gantry_agent_environment: *s3
      children:
        gpu_h100:
          vars:
            gantry_agent_labels: {{ gpu: h100, zone: z1 }}
          hosts:
{a1}        cpu:
          vars:
            gantry_agent_labels: {{ pool: cpu, zone: z1 }}
          hosts:
{a2}"#,
            bin = self.path("bin").display(),
            pki = self.path("pki").display(),
            s3 = self.s3_endpoint,
            c1 = host(8, "c1", ", gantry_node_id: 1"),
            c2 = host(8, "c2", ", gantry_node_id: 2"),
            c3 = host(8, "c3", ", gantry_node_id: 3"),
            a1 = host(12, "a1", ""),
            a2 = host(12, "a2", ""),
        );
        std::fs::write(self.path("inventory.yml"), inventory).unwrap();
    }

    /// Runs site.yml; the recap's counts by host.
    fn playbook(&self, what: &str) -> Vec<(String, Value)> {
        self.write_inventory();
        let ansible = repo_root().join("ansible");
        let out = run_within(
            Command::new("python3")
                .args(["-m", "ansible.cli.playbook", "-i"])
                .arg(self.path("inventory.yml"))
                .arg(ansible.join("site.yml"))
                .env("ANSIBLE_CONFIG", ansible.join("ansible.cfg"))
                .env("ANSIBLE_NOCOLOR", "1")
                .env("ANSIBLE_FORCE_COLOR", "0")
                .current_dir(&ansible),
            Duration::from_secs(900),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let log = self.path(&format!("{what}.log"));
        std::fs::write(&log, &out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{what}: ansible-playbook failed ({})\n{}\n{}",
            out.status,
            tail(&out.stdout, 80),
            out.stderr
        );
        recap(&out.stdout)
    }

    /// The CLI's global flags for this cluster: every coordinator, the CA, the admin token.
    fn cli_flags(&self) -> Vec<std::ffi::OsString> {
        let endpoints = ["c1", "c2", "c3"]
            .iter()
            .map(|h| format!("{}:7070", self.ip(h)))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "--endpoint".into(),
            endpoints.into(),
            "--ca".into(),
            self.path("pki/ca.pem").into(),
            "--token-file".into(),
            self.path("pki/admin.token").into(),
            "-o".into(),
            "json".into(),
        ]
    }

    fn gantry(&self, args: &[&str]) -> Value {
        let out = sh(Command::new(bin_dir().join("gantry"))
            .args(self.cli_flags())
            .args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// A node's own view of the cluster, asked of that node alone.
    fn status_of(&self, host: &str) -> Value {
        let out = sh(Command::new(bin_dir().join("gantry"))
            .args(["--endpoint", &format!("{}:7070", self.ip(host)), "--ca"])
            .arg(self.path("pki/ca.pem"))
            .arg("--token-file")
            .arg(self.path("pki/admin.token"))
            .args(["-o", "json", "cluster", "status"]));
        serde_json::from_str(&out).unwrap()
    }

    fn in_host(&self, host: &str, cmd: &str) -> String {
        docker(&["exec", self.container(host), "sh", "-c", cmd]).unwrap()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `host : ok=N changed=N unreachable=N failed=N ...` lines of the PLAY RECAP.
fn recap(out: &str) -> Vec<(String, Value)> {
    let at = out.rfind("PLAY RECAP").expect("a PLAY RECAP");
    out[at..]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (host, counts) = l.split_once(" : ")?;
            let counts: serde_json::Map<String, Value> = counts
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse::<u64>().ok()?.into()))
                })
                .collect();
            Some((host.trim().to_string(), Value::Object(counts)))
        })
        .collect()
}

/// Voters (LEADER or FOLLOWER) in a status's member list.
fn voters(status: &Value) -> Vec<u64> {
    status["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["role"] == "LEADER" || m["role"] == "FOLLOWER")
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// The debug build of `names`, stripped (a sixth of the size to copy to each host); `all:
/// true` strips everything, for a "rebuilt" binary with other bytes.
fn stage_binaries(dir: &Path, names: &[&str], all: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for b in names {
        let out = dir.join(b);
        let _ = std::fs::remove_file(&out);
        sh(Command::new("strip")
            .arg(if all { "--strip-all" } else { "--strip-debug" })
            .arg("-o")
            .arg(&out)
            .arg(bin_dir().join(b)));
    }
}

fn sha256_of(path: &Path) -> String {
    sh(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ansible_forms_the_cluster_runs_a_pipeline_is_idempotent_and_rolls_agents_without_losing_a_step()
{
    let mut fleet = Fleet::start();
    stage_binaries(
        &fleet.path("bin"),
        &["gantry", "gantry-coordinator", "gantry-agent"],
        false,
    );

    // First run: the cluster forms, agents register.
    let first = fleet.playbook("first");
    for host in HOSTS {
        let counts = &first.iter().find(|(h, _)| h == host).unwrap().1;
        assert_eq!(counts["failed"], 0, "{host}: {counts}");
    }
    for host in ["c1", "c2", "c3"] {
        let s = fleet.status_of(host);
        assert_eq!(voters(&s), vec![1, 2, 3], "{host}: {s}");
    }
    let agents = fleet.gantry(&["agent", "list"]);
    let agent = |id: &str| {
        agents
            .as_array()
            .and_then(|a| a.iter().find(|x| x["agent_id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no agent {id}: {agents}"))
    };
    for (id, key, value) in [("a1", "gpu", "h100"), ("a2", "pool", "cpu")] {
        let a = agent(id);
        assert_eq!(a["state"], "CONNECTED", "{a}");
        assert_eq!(a["labels"][key], value, "{a}");
        assert_eq!(a["labels"]["zone"], "z1", "{a}");
        assert_eq!(a["runtime"], "process", "{a}");
    }
    for host in ["c1", "a1"] {
        let unit = if host == "c1" {
            "gantry-coordinator"
        } else {
            "gantry-agent"
        };
        let props = fleet.in_host(
            host,
            &format!("systemctl show {unit} -p NoNewPrivileges -p ProtectSystem -p User"),
        );
        assert!(props.contains("NoNewPrivileges=yes"), "{props}");
        assert!(props.contains("ProtectSystem=strict"), "{props}");
        assert!(!props.contains("User=root"), "{props}");
    }

    // A pipeline across both agents.
    let pipelines = fleet.path("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let yaml = compile_source(Path::new("tests/pipelines/fleet.py"), &pipelines).unwrap();
    let run = fleet.gantry(&["run", "submit", yaml.to_str().unwrap(), "--wait"]);
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    let hosts: Vec<&str> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "where" || t["name"] == "where-2")
        .filter_map(|t| t["outputs"]["parameters"]["host"].as_str())
        .collect();
    assert_eq!(
        {
            let mut h = hosts.clone();
            h.sort_unstable();
            h
        },
        vec!["a1", "a2"],
        "{run}"
    );

    // Nothing changed: nothing changes.
    let second = fleet.playbook("second");
    for (host, counts) in &second {
        assert_eq!(
            counts["changed"], 0,
            "{host} changed on the second run: {counts}"
        );
        assert_eq!(counts["failed"], 0, "{host}: {counts}");
    }

    // Rolling upgrade of the agents to a rebuilt binary while a long step runs on a1.
    let long = fleet.path("long.py");
    std::fs::write(
        &long,
        r#"import sys
from kfp import compiler, dsl, kubernetes

@dsl.container_component
def nap(seconds: int):
    return dsl.ContainerSpec(image="gantry/busybox:latest", command=["sh", "-c"],
                             args=['echo start; sleep "$0"; echo end', seconds])

@dsl.pipeline(name="long")
def long(seconds: int = 25):
    t = nap(seconds=seconds)
    t.set_caching_options(False)
    kubernetes.add_node_selector(t, label_key="gpu", label_value="h100")

compiler.Compiler().compile(long, sys.argv[1])
"#,
    )
    .unwrap();
    let long_yaml = compile_source(&long, &pipelines).unwrap();
    let run_id = fleet.gantry(&["run", "submit", long_yaml.to_str().unwrap()])["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    poll_every(Duration::from_secs(60), Duration::from_millis(300), || {
        let r = fleet.gantry(&["run", "get", &run_id]);
        r["tasks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == "nap"))
            .filter(|t| t["state"] == "RUNNING")
            .map(|_| ())
            .ok_or(())
    })
    .unwrap_or_else(|()| panic!("the long step never ran"));
    stage_binaries(&fleet.path("bin"), &["gantry-agent"], true);
    let new_agent = sha256_of(&fleet.path("bin/gantry-agent"));
    // In the same run, a rebuilt coordinator host (an empty machine at the same address)
    // joins the same cluster again; nothing bootstraps a second one.
    fleet.rebuild("c2");
    let upgrade = fleet.playbook("upgrade");
    assert!(upgrade.iter().all(|(_, c)| c["failed"] == 0), "{upgrade:?}");
    let log = std::fs::read_to_string(fleet.path("upgrade.log")).unwrap();
    assert!(
        log.contains("TASK [gantry_coordinator : Remove this host's old membership"),
        "{}",
        tail(&log, 60)
    );
    assert_eq!(
        fleet.in_host(
            "c2",
            "ls /etc/gantry/bootstrap.env 2>/dev/null || echo none"
        ),
        "none"
    );
    poll_every(Duration::from_secs(60), Duration::from_millis(500), || {
        let s = fleet.status_of("c2");
        (voters(&s) == vec![1, 2, 3] && s["runs"] == 2)
            .then_some(())
            .ok_or(())
    })
    .unwrap_or_else(|()| panic!("c2 did not rejoin: {}", fleet.status_of("c2")));
    assert!(
        log.contains("TASK [gantry_agent : Drain the agent (no new steps)]"),
        "{}",
        tail(&log, 60)
    );
    let run = fleet.gantry(&["run", "get", &run_id]);
    assert_eq!(run["state"], "SUCCEEDED", "{run}");
    let nap = run["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "nap"))
        .cloned()
        .unwrap();
    assert_eq!(
        nap["attempts"], 1,
        "the step was stopped and run again: {nap}"
    );
    for host in ["a1", "a2"] {
        let installed = fleet.in_host(host, "sha256sum /usr/local/bin/gantry-agent");
        assert!(installed.starts_with(&new_agent), "{host}: {installed}");
    }
    let agents = fleet.gantry(&["agent", "list"]);
    for a in agents.as_array().unwrap() {
        assert_eq!(a["state"], "CONNECTED", "{a}");
        assert_eq!(a["draining"], false, "{a}");
    }

    // Rolling upgrade of the coordinators to a rebuilt binary under a submission load: one at
    // a time, the leader handing over before its restart, and every submission acknowledged.
    let idle = fleet.path("idle.py");
    std::fs::write(
        &idle,
        r#"import sys
from kfp import compiler, dsl, kubernetes

@dsl.container_component
def nothing():
    return dsl.ContainerSpec(image="gantry/busybox:latest", command=["true"])

@dsl.pipeline(name="idle")
def idle():
    # No agent has this label: the run ends at once, unschedulable, and loads no agent.
    kubernetes.add_node_selector(nothing(), label_key="pool", label_value="none")

compiler.Compiler().compile(idle, sys.argv[1])
"#,
    )
    .unwrap();
    let idle_yaml = compile_source(&idle, &pipelines).unwrap();
    stage_binaries(&fleet.path("bin"), &["gantry", "gantry-coordinator"], true);
    let new_coordinator = sha256_of(&fleet.path("bin/gantry-coordinator"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let flags = fleet.cli_flags();
        let gantry = bin_dir().join("gantry");
        std::thread::spawn(move || {
            let (mut acked, mut refused) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = Command::new(&gantry)
                    .args(&flags)
                    .args(["run", "submit"])
                    .arg(&idle_yaml)
                    .output()
                    .expect("gantry runs");
                if o.status.success() {
                    acked += 1;
                } else {
                    refused.push(String::from_utf8_lossy(&o.stderr).into_owned());
                }
            }
            (acked, refused)
        })
    };
    let rolled = fleet.playbook("coordinators");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, refused) = load.join().unwrap();
    assert!(rolled.iter().all(|(_, c)| c["failed"] == 0), "{rolled:?}");
    assert!(
        refused.is_empty(),
        "{} of {} submissions failed: {refused:?}",
        refused.len(),
        acked + refused.len()
    );
    assert!(acked > 0);
    let log = std::fs::read_to_string(fleet.path("coordinators.log")).unwrap();
    // Shown as "RUNNING HANDLER [gantry_coordinator : Hand leadership to another voter]":
    // the leader of the moment hands over before its restart (on one host or more, as
    // leadership moves to hosts not yet upgraded).
    let handed = log
        .split("[gantry_coordinator : Hand leadership to another voter]")
        .skip(1)
        .filter(|after| {
            after
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("changed:"))
        })
        .count();
    assert!(handed >= 1, "no leader handed over: {}", tail(&log, 120));
    for host in ["c1", "c2", "c3"] {
        let installed = fleet.in_host(host, "sha256sum /usr/local/bin/gantry-coordinator");
        assert!(
            installed.starts_with(&new_coordinator),
            "{host}: {installed}"
        );
        assert_eq!(voters(&fleet.status_of(host)), vec![1, 2, 3], "{host}");
    }
    let listed = fleet.gantry(&["run", "list", "--limit", "100000"]);
    assert!(
        listed.as_array().map_or(0, Vec::len) >= acked + 2,
        "{acked} acknowledged"
    );
}

#[test]
fn the_roles_pass_ansible_lint_with_the_production_profile() {
    // scripts/test.sh installs it (in a virtual environment) and names it here.
    let lint = std::env::var_os("GANTRY_ANSIBLE_LINT")
        .map(PathBuf::from)
        .or_else(|| gantry_testkit::program("ansible-lint"))
        .expect("ansible-lint: run the tests with scripts/test.sh, which installs it");
    let out = run_within(
        Command::new(lint)
            .args(["--offline", "--nocolor", "--profile", "production"])
            .current_dir(repo_root().join("ansible")),
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "ansible-lint: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .contains("Profile 'production' was required, and it passed")
            || out
                .stdout
                .contains("Profile 'production' was required, and it passed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}
