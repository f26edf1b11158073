//! A real multi-process coordinator cluster: every coordinator is its own `gantry-coordinator`
//! process, so a test or a bench can `kill -9`, pause (SIGSTOP) or restart any node, and start
//! `gantry-agent` processes beside them. Two networks:
//! - [`Network::Loopback`]: every node on 127.0.0.1 with its own port; needs nothing.
//! - [`Network::Namespaces`]: every node in its own network namespace
//!   (scripts/netns-cluster.sh; root and iproute2), so a node can also be cut off from another.
//!   Agents and clients on the host reach the nodes over their host links.
//!
//! With [`ClusterOpts::tls`] (the default) the cluster is set up as a production one is: a CA
//! made for the test, a certificate per coordinator and per agent, TLS on every connection,
//! and the ACL bootstrapped once the first leader is elected; the CLI gets the CA and the admin
//! token. Without it, nodes serve plain text (`--insecure` where the address is not loopback).
//!
//! Everything is torn down on drop, also when a test fails. Node status comes over gRPC: the
//! `*_async` methods for async code (the benches), the plain ones for test bodies, which run
//! them on a runtime of their own and so must not be called from async code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gantry_proto::v1 as pb;
use gantry_proto::v1::acl_service_client::AclServiceClient;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_tls::issue::{create_ca, create_cert, CaFiles, CertFiles, CertRequest};
use gantry_tls::{Role, TlsContext, TlsFiles};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::net::{count_lines, free_ports, strip_ansi, wait_for_line};
use crate::poll::{poll_async, poll_every};
use crate::{repo_root, Cli, Proc};

/// Clusters are timing-sensitive, and namespaced ones share the host's namespace names: one
/// at a time per process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The port every namespaced node listens on (each has its own address).
const NETNS_PORT: u16 = 7070;
/// What a coordinator logs once it serves; counted, since a restarted node appends to its log.
const SERVING: &str = "coordinator serving";
/// Short, so that a dead or frozen node does not stall a polling loop.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often leaders and convergence are polled: fine enough for the failover bench.
const EVERY: Duration = Duration::from_millis(10);
/// What the caller's environment could set that would change a node's behaviour or timings.
const SCRUBBED: &[&str] = &[
    "GANTRY_CONFIG",
    "GANTRY_ADVERTISE",
    "GANTRY_ARTIFACT_ROOT",
    "GANTRY_LISTEN",
    "GANTRY_NODE_ID",
    "GANTRY_DATA_DIR",
    "GANTRY_TLS_CA",
    "GANTRY_TLS_CERT",
    "GANTRY_TLS_KEY",
    "GANTRY_CLUSTER",
];
/// The cluster name in the test CA and every certificate.
pub const TEST_CLUSTER: &str = "test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Loopback,
    Namespaces,
}

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub nodes: usize,
    pub network: Network,
    pub snapshot_entries: u64,
    /// None: each node's default (`file://<data-dir>/artifacts`).
    pub artifact_root: Option<String>,
    /// Extra environment for every coordinator.
    pub env: Vec<(String, String)>,
    /// Extra environment for one coordinator: (node id, name, value).
    pub node_env: Vec<(u64, String, String)>,
    /// Start node 1 with --bootstrap and the others with neither --bootstrap nor --peer, to be
    /// joined with `gantry cluster join`.
    pub bootstrap_one: bool,
    /// Where `gantry-coordinator` and `gantry-agent` are; None: built by cargo
    /// ([`crate::bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    /// Certificates for every node and agent, TLS everywhere, and a bootstrapped ACL.
    pub tls: bool,
}

impl ClusterOpts {
    /// `nodes` namespaced nodes writing artifacts under `artifact_root`: the fault tests' setup.
    pub fn new(nodes: usize, artifact_root: &str) -> Self {
        ClusterOpts {
            nodes,
            network: Network::Namespaces,
            snapshot_entries: 10_000,
            artifact_root: Some(artifact_root.to_string()),
            env: Vec::new(),
            node_env: Vec::new(),
            bootstrap_one: false,
            bin_dir: None,
            tls: true,
        }
    }

    /// `nodes` nodes on loopback ports with every default.
    pub fn loopback(nodes: usize) -> Self {
        ClusterOpts {
            nodes,
            network: Network::Loopback,
            snapshot_entries: 10_000,
            artifact_root: None,
            env: Vec::new(),
            node_env: Vec::new(),
            bootstrap_one: false,
            bin_dir: None,
            tls: true,
        }
    }
}

/// The cluster's CA and the credentials the harness itself uses.
struct ClusterTls {
    ca: CaFiles,
    dir: PathBuf,
    /// The harness's own credentials: a client certificate (enough to ask any node its
    /// status, even one that does not know the cluster's tokens yet) and the CA.
    client: Arc<TlsContext>,
}

/// Adds the admin token to the harness's own calls.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel to a node with the harness's credentials.
pub type Authed = InterceptedService<Channel, BearerToken>;

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
    pub nodes: Vec<Node>,
    opts: ClusterOpts,
    bin_dir: PathBuf,
    /// The namespace set's number (scripts/netns-cluster.sh K), when namespaced.
    netns: Option<u32>,
    tls: Option<ClusterTls>,
    /// The admin token made when the ACL was bootstrapped.
    token: Option<String>,
    agents: Vec<Proc>,
    rt: OnceLock<tokio::runtime::Runtime>,
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
            "netns-cluster.sh {args:?} failed (namespaced clusters need root and iproute2): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    /// Starts every node and waits until each serves.
    pub fn start(opts: ClusterOpts) -> Result<Cluster> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("gantry-cluster-")
            .tempdir()?;
        let (netns_k, addresses) = match opts.network {
            Network::Namespaces => {
                // A namespace set of our own: K from the pid, so parallel test binaries differ.
                let k = 20 + std::process::id() % 200;
                let n = opts.nodes.to_string();
                let _ = netns(&["down".into(), k.to_string(), n.clone()]);
                netns(&["up".into(), k.to_string(), n])?;
                let addrs = (1..=opts.nodes)
                    .map(|id| format!("10.77.{k}.{id}:{NETNS_PORT}"))
                    .collect();
                (Some(k), addrs)
            }
            // Every peer's address must be known before the first node starts, so these
            // cannot be port 0.
            Network::Loopback => (
                None,
                free_ports(opts.nodes)
                    .context("picking ports on 127.0.0.1")?
                    .into_iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect::<Vec<_>>(),
            ),
        };
        let nodes = addresses
            .into_iter()
            .enumerate()
            .map(|(i, address)| {
                let id = i as u64 + 1;
                Node {
                    id,
                    address,
                    data: dir.path().join(format!("n{id}")),
                    log: dir.path().join(format!("n{id}.log")),
                    proc: None,
                    paused: false,
                }
            })
            .collect();
        let bin_dir = match &opts.bin_dir {
            Some(d) => d.clone(),
            None => crate::bin_dir().to_path_buf(),
        };
        let tls = if opts.tls {
            let tls_dir = dir.path().join("tls");
            let ca = create_ca(&tls_dir, TEST_CLUSTER, 30, false)?;
            for id in 1..=opts.nodes as u64 {
                issue(&ca, &tls_dir, Role::Coordinator(id))?;
            }
            let harness = issue(&ca, &tls_dir, Role::Client("harness".into()))?;
            let client = client_tls(&ca.cert, Some(&harness))?;
            Some(ClusterTls {
                ca,
                dir: tls_dir,
                client,
            })
        } else {
            None
        };
        // Built before any child, so the guard covers a failed start too.
        let mut c = Cluster {
            dir,
            nodes,
            opts,
            bin_dir,
            netns: netns_k,
            tls,
            token: None,
            agents: Vec::new(),
            rt: OnceLock::new(),
            _turn: turn,
        };
        for id in c.all_ids() {
            c.start_node(id)?;
        }
        let token = c.block_on(c.bootstrap_acl_async())?;
        c.token = Some(token);
        if !c.opts.bootstrap_one {
            // Every node knows the token before a test uses it: a follower that has not yet
            // applied the bootstrap would refuse it as unknown.
            c.wait_converged(Duration::from_secs(30))?;
        }
        Ok(c)
    }

    /// Makes the first admin token, as an operator would after the first start: any node
    /// takes the call and the leader commits it, once one is elected.
    async fn bootstrap_acl_async(&self) -> Result<String> {
        poll_async(
            Duration::from_secs(30),
            Duration::from_millis(100),
            async || {
                let mut last = String::from("no node answered");
                for id in self.all_ids() {
                    let Some(ch) = self.channel(id) else { continue };
                    let mut acl = AclServiceClient::new(ch);
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        acl.bootstrap(pb::AclBootstrapRequest {}),
                    )
                    .await
                    {
                        Ok(Ok(r)) => return Ok(r.into_inner().secret),
                        Ok(Err(s)) => last = format!("node {id}: {}", s.message()),
                        Err(_) => last = format!("node {id}: no answer"),
                    }
                }
                Err(anyhow!("the ACL could not be bootstrapped: {last}"))
            },
        )
        .await
    }

    /// The admin token.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Where the test CA and certificates are (`ca.pem`, `<role>-<id>.pem`/`.key`).
    pub fn tls_dir(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|t| t.dir.as_path())
    }

    /// The CA, to issue more certificates in a test (another agent, a stranger).
    pub fn ca(&self) -> Option<&CaFiles> {
        self.tls.as_ref().map(|t| &t.ca)
    }

    /// A channel to node `id` with the harness's CA, certificate and admin token (None: the
    /// address is bad).
    pub fn channel(&self, id: u64) -> Option<Authed> {
        self.channel_with(id, true)
    }

    /// Like [`Self::channel`]; without the token only the certificate speaks (a node that has
    /// not caught up does not know the token and would refuse it).
    fn channel_with(&self, id: u64, with_token: bool) -> Option<Authed> {
        let tls = self.tls.as_ref().map(|t| {
            // As a long-lived client would (`TlsContext::watch`): a test that rotates the
            // certificates in `tls_dir` rotates the harness's too. A half-written pair keeps
            // the previous material.
            let _ = t.client.reload_if_changed();
            t.client.clone()
        });
        let token = self.token.as_deref().filter(|_| with_token);
        self.channel_as(id, tls, token).ok()
    }

    /// A channel to node `id` with other credentials: `tls` (None: plain TCP; see
    /// [`client_tls`]) and a bearer `token`, each what a test chooses to present.
    pub fn channel_as(
        &self,
        id: u64,
        tls: Option<Arc<TlsContext>>,
        token: Option<&str>,
    ) -> Result<Authed> {
        let ch = gantry_tls::client::channel(&self.address(id), tls, |e| {
            e.connect_timeout(CONNECT_TIMEOUT)
        })?;
        let token = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("the token is not a valid header value")?,
            ),
        };
        Ok(InterceptedService::new(ch, BearerToken(token)))
    }

    /// The TLS material of agent `agent_id` (its certificate is issued on first use), as the
    /// agent process would load it; None without TLS.
    pub fn agent_tls(&self, agent_id: &str) -> Result<Option<Arc<TlsContext>>> {
        let Some(t) = &self.tls else { return Ok(None) };
        let files = self.agent_cert(agent_id)?.expect("TLS is on");
        Ok(Some(client_tls(&t.ca.cert, Some(&files))?))
    }

    /// Agent `agent_id`'s certificate in [`Self::tls_dir`], issued by the test CA when it is
    /// not there yet; None without TLS.
    pub fn agent_cert(&self, agent_id: &str) -> Result<Option<CertFiles>> {
        let Some(t) = &self.tls else { return Ok(None) };
        let files = CertFiles {
            cert: t.dir.join(format!("agent-{agent_id}.pem")),
            key: t.dir.join(format!("agent-{agent_id}.key")),
        };
        if files.cert.exists() {
            return Ok(Some(files));
        }
        Ok(Some(issue(
            &t.ca,
            &t.dir,
            Role::Agent(agent_id.to_string()),
        )?))
    }

    /// The TLS flags of a program whose certificate is `<stem>.pem`.
    fn tls_args(&self, stem: &str) -> Vec<String> {
        match &self.tls {
            None => {
                if self.netns.is_some() {
                    vec!["--insecure".into()]
                } else {
                    Vec::new()
                }
            }
            Some(t) => vec![
                "--tls-ca".into(),
                t.ca.cert.to_string_lossy().into_owned(),
                "--tls-cert".into(),
                t.dir
                    .join(format!("{stem}.pem"))
                    .to_string_lossy()
                    .into_owned(),
                "--tls-key".into(),
                t.dir
                    .join(format!("{stem}.key"))
                    .to_string_lossy()
                    .into_owned(),
            ],
        }
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts (or restarts) node `id` on its data directory, with the same arguments every
    /// time, and waits until it serves (its storage is open: a partial snapshot left by a kill
    /// is gone by then).
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        self.launch(id, true)
    }

    /// Starts node `id` with neither `--bootstrap` nor `--peer`: a node with a fresh data
    /// directory then waits for `gantry cluster join`.
    pub fn start_node_waiting(&mut self, id: u64) -> Result<()> {
        self.launch(id, false)
    }

    fn launch(&mut self, id: u64, with_membership: bool) -> Result<()> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.address))
            .collect();
        let (address, data, log) = {
            let n = self.node(id);
            (n.address.clone(), n.data.clone(), n.log.clone())
        };
        let served_before = count_lines(&log, SERVING);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let coordinator = self.bin_dir.join("gantry-coordinator");
        let mut cmd = match self.netns {
            Some(k) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &format!("gt{k}-n{id}")])
                    .arg(&coordinator);
                c
            }
            None => Command::new(&coordinator),
        };
        cmd.args(["--node-id", &id.to_string(), "--listen", &address])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--snapshot-entries",
                &self.opts.snapshot_entries.to_string(),
            ]);
        if let Some(root) = &self.opts.artifact_root {
            cmd.args(["--artifact-root", root]);
        }
        cmd.args(self.tls_args(&format!("coordinator-{id}")));
        if with_membership && self.opts.bootstrap_one {
            if id == 1 {
                cmd.arg("--bootstrap");
            }
        } else if with_membership {
            for p in &peers {
                cmd.args(["--peer", p]);
            }
        }
        for v in SCRUBBED {
            cmd.env_remove(v);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .envs(self.opts.env.iter().cloned())
            .envs(
                self.opts
                    .node_env
                    .iter()
                    .filter(|(node, ..)| *node == id)
                    .map(|(_, k, v)| (k, v)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", coordinator.display()))?;
        let node = self.node_mut(id);
        node.proc = Some(Proc::new(child, format!("coordinator {id}")));
        node.paused = false;
        let what = format!("coordinator {id}");
        let proc = node.proc.as_mut().map(|p| &mut p.child);
        let child = proc.ok_or_else(|| anyhow!("node {id} has no process"))?;
        wait_for_line(
            &log,
            SERVING,
            served_before + 1,
            child,
            &what,
            Duration::from_secs(20),
        )?;
        Ok(())
    }

    /// The store id of node `id`'s data directory, which it stamps on its raft traffic.
    pub fn store_id(&self, id: u64) -> Result<u64> {
        let path = self.node(id).data.join("store-id");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        u64::from_str_radix(text.trim(), 16).with_context(|| format!("{}", path.display()))
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).data.clone()
    }

    pub fn kill9(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut p) = node.proc.take() {
            p.kill9();
        }
        node.paused = false;
    }

    /// How node `id`'s process ended, once it has ended by itself; None while it runs.
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.node_mut(id).proc.as_mut().and_then(Proc::exit_status)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).proc.is_some()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).proc.as_ref().map(|p| p.pid())
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub fn pause(&mut self, id: u64) {
        if let Some(p) = &self.node(id).proc {
            p.signal(libc::SIGSTOP);
        }
        self.node_mut(id).paused = true;
    }

    pub fn resume(&mut self, id: u64) {
        if let Some(p) = &self.node(id).proc {
            p.signal(libc::SIGCONT);
        }
        self.node_mut(id).paused = false;
    }

    fn netns_k(&self, what: &str) -> Result<u32> {
        self.netns
            .ok_or_else(|| anyhow!("{what} needs a namespaced cluster (Network::Namespaces)"))
    }

    /// Drops every packet between nodes `i` and `j`; the host still reaches both.
    pub fn cut(&self, i: u64, j: u64) -> Result<()> {
        let k = self.netns_k("cut")?;
        netns(&["cut".into(), k.to_string(), i.to_string(), j.to_string()])
    }

    pub fn heal(&self, i: u64, j: u64) -> Result<()> {
        let k = self.netns_k("heal")?;
        netns(&["heal".into(), k.to_string(), i.to_string(), j.to_string()])
    }

    pub fn address(&self, id: u64) -> String {
        self.node(id).address.clone()
    }

    pub fn all_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Every node's endpoint, comma-separated, as agents and the CLI take them.
    pub fn endpoints(&self) -> String {
        self.endpoints_of(&self.all_ids())
    }

    fn endpoints_of(&self, ids: &[u64]) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        ids.iter()
            .map(|id| format!("{scheme}://{}", self.address(*id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn cli(&self) -> Cli {
        self.cli_for(&self.all_ids())
    }

    /// The CLI pointed at some nodes only.
    pub fn cli_for(&self, ids: &[u64]) -> Cli {
        let mut env = Vec::new();
        if let Some(t) = &self.tls {
            env.push(("GANTRY_CA".into(), t.ca.cert.to_string_lossy().into_owned()));
        }
        if let Some(token) = &self.token {
            env.push(("GANTRY_TOKEN".into(), token.clone()));
        }
        Cli {
            endpoint: self.endpoints_of(ids),
            env,
        }
    }

    // ------------------------------------------------------------ status, async

    /// Node `id`'s own view, or None when it is not running or does not answer in 500 ms.
    pub async fn status_async(&self, id: u64) -> Option<pb::ClusterStatus> {
        if !self.is_running(id) {
            return None;
        }
        let call = async {
            let with_token = self.tls.is_none();
            ClusterServiceClient::new(self.channel_with(id, with_token)?)
                .status(pb::ClusterStatusRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(STATUS_TIMEOUT, call)
            .await
            .ok()
            .flatten()
    }

    /// The views of `ids`, asked at once.
    pub async fn statuses_async(&self, ids: &[u64]) -> Vec<Option<pb::ClusterStatus>> {
        futures::future::join_all(ids.iter().map(|id| self.status_async(*id))).await
    }

    /// A node of `among` that says it leads in a term after `after_term`, with no node of
    /// `among` answering in a higher term.
    pub async fn leader_async(&self, among: &[u64], after_term: u64) -> Option<pb::ClusterStatus> {
        leader_of(self.statuses_async(among).await, after_term)
    }

    /// Until [`Self::leader_async`] finds one, polling every 10 ms.
    pub async fn wait_leader_async(
        &self,
        among: &[u64],
        after_term: u64,
        within: Duration,
    ) -> Result<pb::ClusterStatus> {
        poll_async(within, EVERY, async || {
            self.leader_async(among, after_term).await.ok_or_else(|| {
                anyhow!("no leader after term {after_term} among nodes {among:?} within {within:?}")
            })
        })
        .await
    }

    /// Every running node's applied index, when all of them answer.
    async fn applied_async(&self) -> Result<u64, String> {
        let running: Vec<u64> = self
            .all_ids()
            .into_iter()
            .filter(|id| self.is_running(*id))
            .collect();
        let views = self.statuses_async(&running).await;
        let applied: Vec<Option<u64>> = views
            .iter()
            .map(|s| s.as_ref().map(|s| s.applied_index))
            .collect();
        match applied.first() {
            Some(Some(first)) if applied.iter().all(|a| *a == Some(*first)) => Ok(*first),
            _ => Err(format!("nodes {running:?} applied {applied:?}: {views:?}")),
        }
    }

    // ------------------------------------------------------------ status, for test bodies

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt
            .get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the cluster's status calls")
            })
            .block_on(f)
    }

    /// [`Self::status_async`] for test bodies.
    pub fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        self.block_on(self.status_async(id))
    }

    /// Waits until one of `among` says it leads (and no other of them in a higher term says
    /// otherwise); returns (leader id, term).
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> Result<(u64, u64)> {
        let s = self.block_on(self.wait_leader_async(among, 0, timeout))?;
        Ok((s.node_id, s.term))
    }

    /// Waits until every running node has applied the same index; returns it.
    pub fn wait_converged(&self, timeout: Duration) -> Result<u64> {
        poll_every(timeout, EVERY, || self.block_on(self.applied_async()))
            .map_err(|e| anyhow!("nodes did not converge within {timeout:?}: {e}"))
    }

    // ------------------------------------------------------------ agents

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
            .open(self.agent_log_path(agent_id))?;
        let child = self
            .agent_command(agent_id)?
            .args(["--agent-id", agent_id, "--runtime", runtime])
            .args(args)
            .arg("--work-dir")
            .arg(&work)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting gantry-agent")?;
        self.agents.push(Proc::new(child, name));
        Ok(())
    }

    /// `gantry-agent` pointed at every node, with the TLS flags of agent `cert_of`'s
    /// certificate (issued on first use), and nothing else: the caller adds the agent id, the
    /// runtime and the rest.
    pub fn agent_command(&self, cert_of: &str) -> Result<Command> {
        self.agent_cert(cert_of)?;
        let mut cmd = Command::new(self.bin_dir.join("gantry-agent"));
        cmd.args(["--coordinator", &self.endpoints()])
            .args(self.tls_args(&format!("agent-{cert_of}")));
        Ok(cmd)
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

    /// One namespaced coordinator writing artifacts under `artifact_root`, with `env`, and a
    /// process-runtime agent for each of `agents`, all connected: the host-loss tests' setup.
    pub fn single_with_agents(
        artifact_root: &str,
        env: &[(&str, &str)],
        agents: &[&str],
    ) -> Result<Cluster> {
        let mut opts = ClusterOpts::new(1, artifact_root);
        opts.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut c = Cluster::start(opts)?;
        c.wait_leader(&[1], Duration::from_secs(20))?;
        for a in agents {
            c.start_agent(a, &[])?;
        }
        c.cli().wait_for_agents(agents.len())?;
        Ok(c)
    }

    /// Submits `pipeline` with `params`, waits until its task `task` runs, then `kill -9`s the
    /// agent running it: the run id and that agent's id.
    pub fn kill_the_agent_running(
        &mut self,
        pipeline: &Path,
        params: &[&str],
        task: &str,
    ) -> Result<(String, String)> {
        let cli = self.cli();
        let run_id = cli.submit(pipeline, params)?;
        let run = cli.wait_until(&run_id, Duration::from_secs(60), |r| {
            crate::task(r, task)["state"] == "RUNNING"
        });
        let victim = crate::task(&run, task)["agent"]
            .as_str()
            .ok_or_else(|| anyhow!("task {task} runs on no agent: {run:#}"))?
            .to_string();
        self.kill_agent(&victim);
        Ok((run_id, victim))
    }

    // ------------------------------------------------------------ logs

    fn agent_log_path(&self, agent_id: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{agent_id}.log"))
    }

    /// Node `id`'s log, without colour codes.
    pub fn log(&self, id: u64) -> String {
        strip_ansi(&std::fs::read_to_string(&self.node(id).log).unwrap_or_default())
    }

    /// How many lines of node `id`'s log hold every one of `parts`.
    pub fn log_count(&self, id: u64, parts: &[&str]) -> usize {
        self.log(id)
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Agent `agent_id`'s log, without colour codes.
    pub fn agent_log(&self, agent_id: &str) -> String {
        strip_ansi(&std::fs::read_to_string(self.agent_log_path(agent_id)).unwrap_or_default())
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

    /// Copies every log (nodes and agents) out of the cluster's directory, which goes with the
    /// guard, into a new directory under `into`; returns the copies.
    pub fn keep_logs(&self, into: &std::path::Path) -> Vec<PathBuf> {
        let kept = into.join(format!(
            "gantry-cluster-logs-{}-{}",
            std::process::id(),
            self.dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut out = Vec::new();
        if std::fs::create_dir_all(&kept).is_err() {
            return out;
        }
        let logs = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"));
        for log in logs {
            if let Some(name) = log.file_name() {
                let to = kept.join(name);
                if std::fs::copy(&log, &to).is_ok() {
                    out.push(to);
                }
            }
        }
        out.sort();
        out
    }
}

/// Issues a certificate of the CA `ca` (for the CA's own cluster) into `dir`, as
/// `<role>-<id>.pem` and `.key`, replacing what is there (atomically: written beside, then
/// renamed).
pub fn issue(ca: &CaFiles, dir: &Path, role: Role) -> Result<CertFiles> {
    issue_for(ca, dir, role, None)
}

/// Like [`issue`], naming `cluster` in the certificate instead of the CA's cluster (what
/// `gantry tls cert create --cluster` does).
pub fn issue_for(ca: &CaFiles, dir: &Path, role: Role, cluster: Option<&str>) -> Result<CertFiles> {
    // Coordinators also answer to 127.0.0.1, as HTTP clients (kfp.Client) dial them.
    let ips = match role {
        Role::Coordinator(_) => vec![std::net::Ipv4Addr::LOCALHOST.into()],
        _ => vec![],
    };
    Ok(create_cert(
        ca,
        &CertRequest {
            role,
            cluster: cluster.map(str::to_string),
            dns: vec![],
            ips,
            days: 30,
        },
        dir,
        true,
    )?)
}

/// A client's TLS material: it trusts the CA (or CAs) in `ca` and verifies that servers are
/// coordinators of the test cluster; it presents `cert` when given (any role, any CA: a test
/// may present what a server must refuse).
pub fn client_tls(ca: &Path, cert: Option<&CertFiles>) -> Result<Arc<TlsContext>> {
    Ok(TlsContext::load(
        TlsFiles {
            ca: ca.to_path_buf(),
            cert: cert.map(|c| c.cert.clone()),
            key: cert.map(|c| c.key.clone()),
        },
        gantry_tls::ClientCerts::Optional,
        gantry_tls::Expect::Any,
        Some(TEST_CLUSTER.into()),
    )?)
}

/// Replaces `path` with `data` as a reloading reader must see it: whole or not at all (written
/// beside, then renamed over it).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".swap");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

/// An agent session a test holds itself (a simulated agent, or a forging one): what it sends
/// and what the coordinator answers.
pub struct AgentSession {
    tx: futures::channel::mpsc::UnboundedSender<pb::AgentMessage>,
    pub inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

impl AgentSession {
    /// Opens `AgentService.Session` on `ch` (the leader's) with `register` as its first
    /// message; the coordinator's refusal, if it refuses.
    pub async fn open(ch: Authed, register: pb::Register) -> Result<AgentSession, tonic::Status> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let first = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Register(register)),
        };
        tx.unbounded_send(first)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let inbound = AgentServiceClient::new(ch).session(rx).await?.into_inner();
        Ok(AgentSession { tx, inbound })
    }

    pub fn send(&self, body: pb::agent_message::Body) -> Result<()> {
        self.tx
            .unbounded_send(pb::AgentMessage { body: Some(body) })
            .map_err(|_| anyhow!("the session's outbound stream is closed"))
    }

    /// The first message from the coordinator that `pick` takes, within `within`; the ones
    /// before it are passed over.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&pb::coordinator_message::Body) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .map_err(|_| anyhow!("no such message from the coordinator within {within:?}"))?
                .map_err(|s| anyhow!("the session broke: {s}"))?
                .ok_or_else(|| anyhow!("the coordinator ended the session"))?;
            if let Some(t) = m.body.as_ref().and_then(&mut pick) {
                return Ok(t);
            }
        }
    }
}

/// The leader among `views`: says LEADER in a term after `after_term`, and no view is in a
/// higher term.
fn leader_of(views: Vec<Option<pb::ClusterStatus>>, after_term: u64) -> Option<pb::ClusterStatus> {
    let views: Vec<pb::ClusterStatus> = views.into_iter().flatten().collect();
    let max_term = views.iter().map(|s| s.term).max()?;
    views
        .into_iter()
        .find(|s| s.role == "LEADER" && s.term == max_term && s.term > after_term)
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
        if let Some(k) = self.netns {
            let _ = netns(&["down".into(), k.to_string(), self.nodes.len().to_string()]);
        }
        // The cluster may be dropped inside an async caller (the benches), where a runtime's
        // ordinary drop would block and panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(node_id: u64, role: &str, term: u64) -> Option<pb::ClusterStatus> {
        Some(pb::ClusterStatus {
            node_id,
            role: role.into(),
            term,
            ..Default::default()
        })
    }

    #[test]
    fn the_leader_is_the_one_in_the_highest_term_after_the_given_one() {
        let views = vec![view(1, "LEADER", 3), view(2, "FOLLOWER", 3), None];
        assert_eq!(leader_of(views.clone(), 0).map(|s| s.node_id), Some(1));
        assert_eq!(leader_of(views, 3), None);
        // A stale leader, with a node already in a higher term, is not the leader.
        let stale = vec![view(1, "LEADER", 3), view(2, "CANDIDATE", 4)];
        assert_eq!(leader_of(stale, 0), None);
        assert_eq!(leader_of(vec![None, None], 0), None);
    }
}
