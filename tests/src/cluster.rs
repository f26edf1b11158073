//! A real multi-process coordinator cluster for fault tests: every coordinator is its own
//! `gantry-coordinator` process in its own network namespace (scripts/netns-cluster.sh), so a
//! test can kill -9, pause (SIGSTOP) or cut off any node. Agents run on the host and reach the
//! nodes over their host links. Everything is torn down on drop, also when a test fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gantry_proto::v1 as pb;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;

use crate::{bin, repo_root, Cli, Proc};

/// Cluster tests are timing-sensitive and share the host's namespaces: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const PORT: u16 = 7070;

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub nodes: usize,
    pub snapshot_entries: u64,
    pub artifact_root: String,
    /// Extra environment for every coordinator.
    pub env: Vec<(String, String)>,
    /// Start nodes 2.. without --peer, to be joined with `gantry cluster join`.
    pub bootstrap_one: bool,
}

impl ClusterOpts {
    pub fn new(nodes: usize, artifact_root: &str) -> Self {
        ClusterOpts {
            nodes,
            snapshot_entries: 10_000,
            artifact_root: artifact_root.to_string(),
            env: Vec::new(),
            bootstrap_one: false,
        }
    }
}

pub struct Node {
    pub id: u64,
    pub address: String,
    pub data: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
    paused: bool,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    k: u32,
    pub nodes: Vec<Node>,
    opts: ClusterOpts,
    agents: Vec<Proc>,
    rt: tokio::runtime::Runtime,
    _turn: MutexGuard<'static, ()>,
}

fn netns(args: &[String]) -> Result<()> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/netns-cluster.sh"))
        .args(args)
        .output()
        .context("running scripts/netns-cluster.sh")?;
    if !out.status.success() {
        bail!(
            "netns-cluster.sh {args:?} failed (fault tests need root and iproute2): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    pub fn start(opts: ClusterOpts) -> Result<Cluster> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir()?;
        // A namespace set of our own: K from the pid, so parallel test binaries differ.
        let k = 20 + std::process::id() % 200;
        let n = opts.nodes.to_string();
        let _ = netns(&["down".into(), k.to_string(), n.clone()]);
        netns(&["up".into(), k.to_string(), n])?;
        let nodes = (1..=opts.nodes as u64)
            .map(|id| Node {
                id,
                address: format!("10.77.{k}.{id}:{PORT}"),
                data: dir.path().join(format!("n{id}")),
                log: dir.path().join(format!("n{id}.log")),
                proc: None,
                paused: false,
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut c = Cluster {
            dir,
            k,
            nodes,
            opts,
            agents: Vec::new(),
            rt,
            _turn: turn,
        };
        for id in 1..=c.nodes.len() as u64 {
            c.start_node(id)?;
        }
        Ok(c)
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.address))
            .collect();
        let (address, data, log) = {
            let n = self.node(id);
            (n.address.clone(), n.data.clone(), n.log.clone())
        };
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("gt{}-n{id}", self.k)])
            .arg(bin("gantry-coordinator"))
            .args(["--node-id", &id.to_string(), "--listen", &address])
            .arg("--data-dir")
            .arg(&data)
            .args(["--artifact-root", &self.opts.artifact_root])
            .args([
                "--snapshot-entries",
                &self.opts.snapshot_entries.to_string(),
            ]);
        if self.opts.bootstrap_one {
            if id == 1 {
                cmd.arg("--bootstrap");
            }
        } else {
            for p in &peers {
                cmd.args(["--peer", p]);
            }
        }
        let child = cmd
            .envs(self.opts.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting gantry-coordinator in its namespace")?;
        let node = self.node_mut(id);
        node.proc = Some(Proc {
            child,
            name: format!("coordinator {id}"),
        });
        node.paused = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status(id).is_none() {
            if Instant::now() > deadline {
                bail!("node {id} did not answer within 20 s:\n{}", self.log(id));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn kill9(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut p) = node.proc.take() {
            p.kill9();
        }
        node.paused = false;
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).proc.is_some()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).proc.as_ref().map(|p| p.pid())
    }

    fn signal(&mut self, id: u64, sig: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on the pid of a child this harness started and still holds.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        self.node_mut(id).paused = true;
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.node_mut(id).paused = false;
    }

    /// Drops every packet between nodes `i` and `j`; the host still reaches both.
    pub fn cut(&self, i: u64, j: u64) -> Result<()> {
        netns(&[
            "cut".into(),
            self.k.to_string(),
            i.to_string(),
            j.to_string(),
        ])
    }

    pub fn heal(&self, i: u64, j: u64) -> Result<()> {
        netns(&[
            "heal".into(),
            self.k.to_string(),
            i.to_string(),
            j.to_string(),
        ])
    }

    pub fn address(&self, id: u64) -> String {
        self.node(id).address.clone()
    }

    /// Every node's endpoint, comma-separated, as agents and the CLI take them.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.address))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn cli(&self) -> Cli {
        Cli {
            endpoint: self.endpoints(),
            env: Vec::new(),
        }
    }

    /// The CLI pointed at some nodes only.
    pub fn cli_for(&self, ids: &[u64]) -> Cli {
        Cli {
            endpoint: ids
                .iter()
                .map(|id| format!("http://{}", self.address(*id)))
                .collect::<Vec<_>>()
                .join(","),
            env: Vec::new(),
        }
    }

    /// Node `id`'s own view, or None when it does not answer within 500 ms.
    pub fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        self.node(id).proc.as_ref()?;
        let url = format!("http://{}", self.address(id));
        self.rt.block_on(async move {
            let call = async {
                let ch = tonic::transport::Endpoint::from_shared(url)
                    .ok()?
                    .connect_timeout(Duration::from_millis(300))
                    .connect()
                    .await
                    .ok()?;
                ClusterServiceClient::new(ch)
                    .status(pb::ClusterStatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            tokio::time::timeout(Duration::from_millis(500), call)
                .await
                .ok()
                .flatten()
        })
    }

    /// Waits until one of `among` says it leads (and no other of them in a higher term says
    /// otherwise); returns (leader id, term).
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<pb::ClusterStatus> =
                among.iter().filter_map(|id| self.status(*id)).collect();
            let max_term = views.iter().map(|s| s.term).max().unwrap_or(0);
            if let Some(l) = views
                .iter()
                .find(|s| s.role == "LEADER" && s.term == max_term)
            {
                return Ok((l.node_id, l.term));
            }
            if Instant::now() > deadline {
                bail!("no leader among {among:?} within {timeout:?}: {views:?}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn all_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Waits until every running node has applied the same index as the leader's commit.
    pub fn wait_converged(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<_> = self
                .all_ids()
                .into_iter()
                .filter(|id| self.is_running(*id))
                .map(|id| (id, self.status(id)))
                .collect();
            let applied: Vec<Option<u64>> = views
                .iter()
                .map(|(_, s)| s.as_ref().map(|s| s.applied_index))
                .collect();
            if let Some(Some(first)) = applied.first() {
                if applied.iter().all(|a| *a == Some(*first)) {
                    return Ok(*first);
                }
            }
            if Instant::now() > deadline {
                bail!("nodes did not converge within {timeout:?}: {views:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts an agent on the host with the process runtime, given every node's endpoint.
    pub fn start_agent(&mut self, agent_id: &str, env: &[(String, String)]) -> Result<()> {
        self.start_agent_with(agent_id, &[], env)
    }

    /// Like [`Self::start_agent`] with extra agent flags (`--label`, `--taint`).
    pub fn start_agent_with(
        &mut self,
        agent_id: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        self.start_agent_on("process", agent_id, args, env)
    }

    /// Starts agent `agent_id` on `runtime` (`process`, `docker`). An agent of that id
    /// started before is stopped first (`kill -9` if still running): the new one is its
    /// restart, with the same work directory, and its log goes on in the same file.
    pub fn start_agent_on(
        &mut self,
        runtime: &str,
        agent_id: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let name = format!("agent {agent_id}");
        self.agents.retain(|p| p.name != name);
        let work = self.dir.path().join(format!("agent-{agent_id}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("agent-{agent_id}.log")))?;
        let child = Command::new(bin("gantry-agent"))
            .args(["--coordinator", &self.endpoints()])
            .args(["--agent-id", agent_id, "--runtime", runtime])
            .args(args)
            .arg("--work-dir")
            .arg(&work)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting gantry-agent")?;
        self.agents.push(Proc { child, name });
        Ok(())
    }

    /// SIGTERM to agent `agent_id`, then SIGKILL if it has not exited within 10 s.
    pub fn stop_agent(&mut self, agent_id: &str) {
        let name = format!("agent {agent_id}");
        if let Some(p) = self.agents.iter_mut().find(|p| p.name == name) {
            p.terminate(Duration::from_secs(10));
        }
    }

    /// `kill -9` of agent `agent_id`'s process.
    pub fn kill_agent(&mut self, agent_id: &str) {
        let name = format!("agent {agent_id}");
        if let Some(p) = self.agents.iter_mut().find(|p| p.name == name) {
            p.kill9();
        }
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    pub fn agent_log(&self, agent_id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{agent_id}.log")))
            .unwrap_or_default()
    }

    /// Every node's log tail, for assertion messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = self.log(n.id);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("\n--- node {} ---\n", n.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        for id in self.all_ids() {
            if self.node(id).paused {
                self.resume(id);
            }
            self.kill9(id);
        }
        let _ = netns(&[
            "down".into(),
            self.k.to_string(),
            self.nodes.len().to_string(),
        ]);
    }
}
