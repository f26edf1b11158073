//! `gantry-coordinator` configuration: flags over a TOML file over defaults that suit a LAN.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::log_limits::LogLimits;
use crate::raft::{Members, NodeConfig};
use crate::server::CoordinatorConfig;
use gantry_core::ir::bounds::SubmitLimits;
use gantry_core::scheduler::CpuPolicy;
use gantry_core::state::retention::RetentionPolicy;

/// Gantry coordinator: keeps run state (Raft + sled) and serves the gRPC API.
///
/// Flags override the TOML file given with --config; both override the defaults.
#[derive(Parser, Debug, Default)]
#[command(version)]
pub struct Args {
    /// TOML file with any of: node_id, listen, advertise, data_dir, artifact_root,
    /// import_roots, allow_buckets (lists of strings), bootstrap,
    /// peers (a table id = "host:port"), tick_ms, election_ticks, heartbeat_ticks,
    /// snapshot_entries, max_snapshot_bytes, cpu_placement, agent_lease_ms, tls_ca, tls_cert, tls_key, insecure,
    /// cluster, require_client_certs, propose_timeout_ms, max_pipeline_bytes,
    /// max_tasks_per_run, max_json_depth, max_parameter_bytes, max_cel_bytes,
    /// cel_evaluation_budget, max_log_line_bytes,
    /// max_log_lines_per_sec, max_log_burst_lines, max_log_bytes_per_step,
    /// max_log_bytes_per_run, max_step_log_bytes, retain_runs_for, delete_removed_run_artifacts,
    /// max_finished_runs, forget_lost_agents_after, idempotency_window.
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Raft node id of this coordinator (unique in the cluster, not 0). Default 1.
    #[arg(long, env = "GANTRY_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address the gRPC API and the Raft transport listen on. Default 127.0.0.1:7070.
    #[arg(long, env = "GANTRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address peers, agents and clients reach this node at. Default: the listen address.
    #[arg(long, env = "GANTRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory for the Raft log, snapshots and local state. Default .gantry/coordinator.
    #[arg(long, env = "GANTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Artifact root for runs: file:///abs/dir or s3://bucket/prefix.
    /// Default: file://<data-dir>/artifacts.
    #[arg(long, env = "GANTRY_ARTIFACT_ROOT")]
    pub artifact_root: Option<String>,
    /// A `file:///abs/dir` runs may import from: importer URIs and `gantry run submit -a
    /// NAME=file://…` must lie under one (repeatable; none by default, so file:// inputs are
    /// refused). Comma-separated in the environment variable.
    #[arg(
        long = "import-root",
        env = "GANTRY_IMPORT_ROOTS",
        value_delimiter = ',',
        value_name = "file:///DIR"
    )]
    pub import_roots: Vec<String>,
    /// An S3 bucket runs may import from besides the artifact root's prefix (repeatable;
    /// none by default). Comma-separated in the environment variable.
    #[arg(
        long = "allow-bucket",
        env = "GANTRY_ALLOW_BUCKETS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allow_buckets: Vec<String>,
    /// Start a new cluster with this node as its only voter (first start only); grow it with
    /// `gantry cluster join`.
    #[arg(long)]
    pub bootstrap: bool,
    /// An initial voter as ID=HOST:PORT, this node included; repeat for each (first start
    /// only). Without --bootstrap or --peer a fresh node waits to be joined.
    #[arg(long = "peer", value_name = "ID=HOST:PORT")]
    pub peers: Vec<String>,
    /// Raft tick in milliseconds. Default 100.
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Ticks without a leader before an election (randomised up to twice this). A leader that
    /// has not heard from a majority for this long steps down. Default 6.
    #[arg(long, env = "GANTRY_ELECTION_TICKS")]
    pub election_ticks: Option<usize>,
    /// Ticks between leader heartbeats. Default 1.
    #[arg(long)]
    pub heartbeat_ticks: Option<usize>,
    /// Snapshot and compact the log every this many applied entries (past a 16 MiB snapshot,
    /// also not before the log since holds as many bytes). Default 100000, as etcd's
    /// `--snapshot-count`.
    #[arg(long)]
    pub snapshot_entries: Option<u64>,
    /// The largest snapshot accepted from the leader, in bytes. Default 8 GiB.
    #[arg(long, value_name = "BYTES")]
    pub max_snapshot_bytes: Option<u64>,
    /// How steps without GPUs choose among agents that fit: `spread` (most free CPU first,
    /// the default) or `binpack` (least free CPU first). GPU steps always bin-pack GPUs.
    #[arg(long, value_name = "spread|binpack")]
    pub cpu_placement: Option<String>,
    /// An agent with running steps that is not heard from for this long (ms) is declared lost
    /// and its steps are placed elsewhere. Default 15000 (three missed heartbeats).
    #[arg(long, env = "GANTRY_AGENT_LEASE_MS")]
    pub agent_lease_ms: Option<u64>,
    /// The cluster CA (PEM). With --tls-cert and --tls-key every listener and every peer
    /// connection uses TLS; see `gantry tls`. The files are reloaded when they change.
    #[arg(long, env = "GANTRY_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This coordinator's certificate (`gantry tls cert create --coordinator ID`).
    #[arg(long, env = "GANTRY_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// This coordinator's private key.
    #[arg(long, env = "GANTRY_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS on a non-loopback address. Anyone on the network can then read the
    /// traffic and act as a peer or an agent; tokens still gate the API.
    #[arg(long)]
    pub insecure: bool,
    /// The cluster's name, stamped on peer messages. With TLS it comes from the certificate.
    #[arg(long, env = "GANTRY_CLUSTER")]
    pub cluster: Option<String>,
    /// Refuse connections without a client certificate of the cluster CA (by default the API
    /// also takes token-only clients such as the CLI and kfp.Client).
    #[arg(long)]
    pub require_client_certs: bool,
    /// How long a write waits to be committed before the caller gets an error (the cluster
    /// has no quorum). The write may still commit later. Default 10000.
    #[arg(long, env = "GANTRY_PROPOSE_TIMEOUT_MS", value_name = "MS")]
    pub propose_timeout_ms: Option<u64>,
    /// The largest pipeline document a submission may carry, in bytes. Default 4194304
    /// (4 MiB), at most 12582912.
    #[arg(long, env = "GANTRY_MAX_PIPELINE_BYTES", value_name = "BYTES")]
    pub max_pipeline_bytes: Option<usize>,
    /// Most tasks one run may create, counting loop iterations (nested loops multiply) and
    /// the DAGs around them. Checked at submit and again when each loop starts. Default
    /// 100000.
    #[arg(long, env = "GANTRY_MAX_TASKS_PER_RUN", value_name = "N")]
    pub max_tasks_per_run: Option<u64>,
    /// How deep lists and objects may nest in a run's parameters and a step's outputs.
    /// Default 32, at most 128.
    #[arg(long, env = "GANTRY_MAX_JSON_DEPTH", value_name = "LEVELS")]
    pub max_json_depth: Option<usize>,
    /// The largest value of one run parameter, as JSON, in bytes. Default 262144 (256 KiB).
    #[arg(long, env = "GANTRY_MAX_PARAMETER_BYTES", value_name = "BYTES")]
    pub max_parameter_bytes: Option<usize>,
    /// The longest CEL expression (a trigger condition or a parameter selector) a pipeline
    /// may carry, in bytes. Default and most 16384.
    #[arg(long, env = "GANTRY_MAX_CEL_BYTES", value_name = "BYTES")]
    pub max_cel_bytes: Option<usize>,
    /// The evaluation budget of each CEL expression of a run submitted here: units of one
    /// node, or one byte copied, compared or parsed. A condition over it fails its task.
    /// Default 16777216, between 1000 and 1073741824.
    #[arg(long, env = "GANTRY_CEL_EVALUATION_BUDGET", value_name = "UNITS")]
    pub cel_evaluation_budget: Option<u64>,
    /// The longest step log line kept whole; a longer one is cut and marked. Default 65536,
    /// between 80 and 1048576.
    #[arg(long, env = "GANTRY_MAX_LOG_LINE_BYTES", value_name = "BYTES")]
    pub max_log_line_bytes: Option<usize>,
    /// Log lines a step may send per second, sustained; lines over it are dropped and a marker
    /// line counts them. Default 1000.
    #[arg(long, env = "GANTRY_MAX_LOG_LINES_PER_SEC", value_name = "N")]
    pub max_log_lines_per_sec: Option<u32>,
    /// Log lines a step may send at once above the sustained rate. Default 10000.
    #[arg(long, env = "GANTRY_MAX_LOG_BURST_LINES", value_name = "N")]
    pub max_log_burst_lines: Option<u32>,
    /// Bytes of log kept per step attempt; the rest is dropped after one marker line.
    /// Default 67108864 (64 MiB).
    #[arg(long, env = "GANTRY_MAX_LOG_BYTES_PER_STEP", value_name = "BYTES")]
    pub max_log_bytes_per_step: Option<u64>,
    /// Bytes of log kept per run, all its steps together; then one marker line and nothing
    /// more. Default 1073741824 (1 GiB).
    #[arg(long, env = "GANTRY_MAX_LOG_BYTES_PER_RUN", value_name = "BYTES")]
    pub max_log_bytes_per_run: Option<u64>,
    /// Bytes of step logs this node keeps in all; over it, the logs of the runs that began
    /// first are dropped whole. Default 8589934592 (8 GiB).
    #[arg(long, env = "GANTRY_MAX_STEP_LOG_BYTES", value_name = "BYTES")]
    pub max_step_log_bytes: Option<u64>,
    /// Remove a finished run (its record, step logs and the cache entries it made) this long
    /// after it finished, e.g. 30d or 12h; a run's own `gantry run submit --ttl` wins.
    /// Default: finished runs are kept.
    #[arg(long, env = "GANTRY_RETAIN_RUNS_FOR", value_name = "DURATION")]
    pub retain_runs_for: Option<String>,
    /// Keep at most this many finished runs; the ones that finished first go first. Default:
    /// no limit.
    #[arg(long, env = "GANTRY_MAX_FINISHED_RUNS", value_name = "N")]
    pub max_finished_runs: Option<usize>,
    /// Forget an agent that has been lost, with nothing running, this long (e.g. 7d); it
    /// registers again if it comes back. Default: lost agents are kept.
    #[arg(long, env = "GANTRY_FORGET_LOST_AGENTS_AFTER", value_name = "DURATION")]
    pub forget_lost_agents_after: Option<String>,
    /// When retention removes a run, also delete its artifacts (everything under
    /// `<artifact root>/<run id>/`) except those a remaining run or cache entry still refers
    /// to; those go with the last run that used them. Default: artifacts are kept.
    #[arg(long, env = "GANTRY_DELETE_REMOVED_RUN_ARTIFACTS")]
    pub delete_removed_run_artifacts: bool,
    /// How long a KFP `Idempotency-Key` names the run it created: a repeat within this window
    /// gets that run back, a later one makes a new run. Default 24h.
    #[arg(long, env = "GANTRY_IDEMPOTENCY_WINDOW", value_name = "DURATION")]
    pub idempotency_window: Option<String>,
}

/// The TOML file. Unknown keys are refused so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub artifact_root: Option<String>,
    pub import_roots: Option<Vec<String>>,
    pub allow_buckets: Option<Vec<String>>,
    pub bootstrap: Option<bool>,
    /// id (as a string key, TOML tables have string keys) → address
    pub peers: Option<std::collections::BTreeMap<String, String>>,
    pub tick_ms: Option<u64>,
    pub election_ticks: Option<usize>,
    pub heartbeat_ticks: Option<usize>,
    pub snapshot_entries: Option<u64>,
    pub max_snapshot_bytes: Option<u64>,
    pub cpu_placement: Option<String>,
    pub agent_lease_ms: Option<u64>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub cluster: Option<String>,
    pub require_client_certs: Option<bool>,
    pub propose_timeout_ms: Option<u64>,
    pub max_pipeline_bytes: Option<usize>,
    pub max_tasks_per_run: Option<u64>,
    pub max_json_depth: Option<usize>,
    pub max_parameter_bytes: Option<usize>,
    pub max_cel_bytes: Option<usize>,
    pub cel_evaluation_budget: Option<u64>,
    pub max_log_line_bytes: Option<usize>,
    pub max_log_lines_per_sec: Option<u32>,
    pub max_log_burst_lines: Option<u32>,
    pub max_log_bytes_per_step: Option<u64>,
    pub max_log_bytes_per_run: Option<u64>,
    pub max_step_log_bytes: Option<u64>,
    pub retain_runs_for: Option<String>,
    pub max_finished_runs: Option<usize>,
    pub forget_lost_agents_after: Option<String>,
    pub delete_removed_run_artifacts: Option<bool>,
    pub idempotency_window: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// `30d`, `12h`, `90m` as milliseconds, for the retention settings.
fn retention_ms(name: &str, text: Option<String>) -> anyhow::Result<Option<i64>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        anyhow::anyhow!("{name} {text:?} is not a duration like 30d, 12h or 90m: {e}")
    })?;
    if d < Duration::from_secs(1) {
        anyhow::bail!("{name} {text:?} must be at least 1s");
    }
    let ms =
        i64::try_from(d.as_millis()).map_err(|_| anyhow::anyhow!("{name} {text:?} is too long"))?;
    Ok(Some(ms))
}

fn parse_peer(s: &str) -> anyhow::Result<(u64, String)> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("peer {s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("peer {s:?}: the id must be a positive integer"))?;
    check_peer(id, addr.trim())
}

fn check_peer(id: u64, addr: &str) -> anyhow::Result<(u64, String)> {
    if id == 0 {
        anyhow::bail!("peer id 0 is reserved by raft");
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("peer {id}: address {addr:?} has no port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        anyhow::bail!("peer {id}: address {addr:?} is not HOST:PORT");
    }
    Ok((id, addr.to_string()))
}

impl Args {
    /// Flags over file over defaults, checked.
    pub fn resolve(self, file: FileConfig) -> anyhow::Result<CoordinatorConfig> {
        let d = NodeConfig::default();
        let node_id = self.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            anyhow::bail!("--node-id 0 is reserved by raft; use 1 or more");
        }
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(".gantry/coordinator"));
        let data_dir = std::path::absolute(&data_dir)?;
        let artifact_root = self
            .artifact_root
            .or(file.artifact_root)
            .unwrap_or_else(|| format!("file://{}", data_dir.join("artifacts").display()));
        let import_roots = if self.import_roots.is_empty() {
            file.import_roots.unwrap_or_default()
        } else {
            self.import_roots
        };
        let allow_buckets = if self.allow_buckets.is_empty() {
            file.allow_buckets.unwrap_or_default()
        } else {
            self.allow_buckets
        };
        // Checked here too, so that a bad flag stops the start with the flag's name.
        gantry_core::ir::UriPolicy::new(
            artifact_root.clone(),
            import_roots.clone(),
            allow_buckets.clone(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let mut peers = Members::new();
        if !self.peers.is_empty() {
            for p in &self.peers {
                let (id, addr) = parse_peer(p)?;
                if peers.insert(id, addr).is_some() {
                    anyhow::bail!("peer id {id} is given twice");
                }
            }
        } else if let Some(file_peers) = file.peers {
            for (id, addr) in file_peers {
                let id: u64 = id
                    .parse()
                    .map_err(|_| anyhow::anyhow!("peers: key {id:?} is not a node id"))?;
                let (id, addr) = check_peer(id, &addr)?;
                peers.insert(id, addr);
            }
        }
        let tick_ms = self.tick_ms.or(file.tick_ms).unwrap_or(100);
        let election_tick = self
            .election_ticks
            .or(file.election_ticks)
            .unwrap_or(d.election_tick);
        let heartbeat_tick = self
            .heartbeat_ticks
            .or(file.heartbeat_ticks)
            .unwrap_or(d.heartbeat_tick);
        if tick_ms == 0 || heartbeat_tick == 0 || election_tick <= heartbeat_tick {
            anyhow::bail!(
                "timing: tick_ms and heartbeat_ticks must be positive and election_ticks \
                 ({election_tick}) greater than heartbeat_ticks ({heartbeat_tick})"
            );
        }
        let snapshot_entries = self
            .snapshot_entries
            .or(file.snapshot_entries)
            .unwrap_or(d.snapshot_entries);
        if snapshot_entries == 0 {
            anyhow::bail!("snapshot_entries must be at least 1");
        }
        let cpu_policy = match self.cpu_placement.or(file.cpu_placement).as_deref() {
            None | Some("spread") => CpuPolicy::Spread,
            Some("binpack") => CpuPolicy::BinPack,
            Some(other) => {
                anyhow::bail!("cpu_placement must be spread or binpack, not {other:?}")
            }
        };
        let agent_lease = match self.agent_lease_ms.or(file.agent_lease_ms) {
            None => crate::server::DEFAULT_AGENT_LEASE,
            Some(ms) if ms >= 6000 => Duration::from_millis(ms),
            Some(ms) => anyhow::bail!(
                "agent_lease_ms must be at least 6000 (agents send a heartbeat every 5 s), not {ms}"
            ),
        };
        let tls = match (
            self.tls_ca.or(file.tls_ca),
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(gantry_tls::TlsFiles {
                ca,
                cert: Some(cert),
                key: Some(key),
            }),
            _ => anyhow::bail!("--tls-ca, --tls-cert and --tls-key go together: give all three"),
        };
        let cluster = self.cluster.or(file.cluster);
        if let Some(c) = &cluster {
            gantry_tls::identity::check_label("cluster", c)?;
        }
        let defaults = SubmitLimits::default();
        let submit_limits = SubmitLimits {
            max_pipeline_bytes: self
                .max_pipeline_bytes
                .or(file.max_pipeline_bytes)
                .unwrap_or(defaults.max_pipeline_bytes),
            max_tasks_per_run: self
                .max_tasks_per_run
                .or(file.max_tasks_per_run)
                .unwrap_or(defaults.max_tasks_per_run),
            max_json_depth: self
                .max_json_depth
                .or(file.max_json_depth)
                .unwrap_or(defaults.max_json_depth),
            max_parameter_bytes: self
                .max_parameter_bytes
                .or(file.max_parameter_bytes)
                .unwrap_or(defaults.max_parameter_bytes),
            max_cel_bytes: self
                .max_cel_bytes
                .or(file.max_cel_bytes)
                .unwrap_or(defaults.max_cel_bytes),
            cel_evaluation_budget: self
                .cel_evaluation_budget
                .or(file.cel_evaluation_budget)
                .unwrap_or(defaults.cel_evaluation_budget),
        };
        submit_limits.check().map_err(anyhow::Error::msg)?;
        let log_defaults = LogLimits::default();
        let log_limits = LogLimits {
            max_line_bytes: self
                .max_log_line_bytes
                .or(file.max_log_line_bytes)
                .unwrap_or(log_defaults.max_line_bytes),
            lines_per_sec: self
                .max_log_lines_per_sec
                .or(file.max_log_lines_per_sec)
                .unwrap_or(log_defaults.lines_per_sec),
            burst_lines: self
                .max_log_burst_lines
                .or(file.max_log_burst_lines)
                .unwrap_or(log_defaults.burst_lines),
            max_attempt_bytes: self
                .max_log_bytes_per_step
                .or(file.max_log_bytes_per_step)
                .unwrap_or(log_defaults.max_attempt_bytes),
            max_run_bytes: self
                .max_log_bytes_per_run
                .or(file.max_log_bytes_per_run)
                .unwrap_or(log_defaults.max_run_bytes),
            max_store_bytes: self
                .max_step_log_bytes
                .or(file.max_step_log_bytes)
                .unwrap_or(log_defaults.max_store_bytes),
        };
        log_limits.check().map_err(anyhow::Error::msg)?;
        let propose_timeout_ms = self
            .propose_timeout_ms
            .or(file.propose_timeout_ms)
            .unwrap_or(crate::server::DEFAULT_PROPOSE_TIMEOUT.as_millis() as u64);
        if propose_timeout_ms == 0 {
            anyhow::bail!("--propose-timeout-ms must be at least 1");
        }
        let retention = RetentionPolicy {
            retain_runs_for_ms: retention_ms(
                "retain_runs_for",
                self.retain_runs_for.or(file.retain_runs_for),
            )?,
            max_finished_runs: self.max_finished_runs.or(file.max_finished_runs),
            forget_lost_agents_after_ms: retention_ms(
                "forget_lost_agents_after",
                self.forget_lost_agents_after
                    .or(file.forget_lost_agents_after),
            )?,
        };
        Ok(CoordinatorConfig {
            node_id,
            listen,
            advertise: self.advertise.or(file.advertise),
            data_dir,
            artifact_root,
            import_roots,
            allow_buckets,
            tick_interval: Duration::from_millis(tick_ms),
            election_tick,
            heartbeat_tick,
            snapshot_entries,
            max_snapshot_bytes: self
                .max_snapshot_bytes
                .or(file.max_snapshot_bytes)
                .unwrap_or(crate::server::DEFAULT_MAX_SNAPSHOT_BYTES),
            bootstrap: self.bootstrap || file.bootstrap.unwrap_or(false),
            peers,
            cpu_policy,
            agent_lease,
            tls,
            insecure: self.insecure || file.insecure.unwrap_or(false),
            delete_removed_run_artifacts: self.delete_removed_run_artifacts
                || file.delete_removed_run_artifacts.unwrap_or(false),
            idempotency_window_ms: retention_ms(
                "idempotency_window",
                self.idempotency_window.or(file.idempotency_window),
            )?
            .unwrap_or(crate::server::DEFAULT_IDEMPOTENCY_WINDOW_MS),
            cluster,
            require_client_certs: self.require_client_certs
                || file.require_client_certs.unwrap_or(false),
            propose_timeout: Duration::from_millis(propose_timeout_ms),
            submit_limits,
            log_limits,
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let file = FileConfig::parse(
            r#"
            node_id = 2
            listen = "10.0.0.2:7070"
            tick_ms = 50
            [peers]
            1 = "10.0.0.1:7070"
            2 = "10.0.0.2:7070"
            3 = "10.0.0.3:7070"
            "#,
        )
        .unwrap();
        let args = Args {
            node_id: Some(3),
            ..Default::default()
        };
        let cfg = args.resolve(file).unwrap();
        assert_eq!(cfg.node_id, 3);
        assert_eq!(cfg.listen.to_string(), "10.0.0.2:7070");
        assert_eq!(cfg.tick_interval, Duration::from_millis(50));
        assert_eq!(cfg.election_tick, 6);
        assert_eq!(cfg.peers.len(), 3);
        assert!(!cfg.bootstrap);
    }

    #[test]
    fn the_example_file_in_the_repository_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coordinator.toml");
        let cfg = Args::default()
            .resolve(FileConfig::load(&path).unwrap())
            .unwrap();
        assert_eq!(cfg.node_id, 1);
        assert_eq!(cfg.peers.len(), 3);
        assert_eq!(cfg.tick_interval, Duration::from_millis(100));
        assert_eq!(cfg.import_roots, ["file:///srv/datasets"]);
        assert_eq!(cfg.allow_buckets, ["gantry-datasets"]);
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        let err = FileConfig::parse("node_idd = 1").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        for (peers, want) in [
            (vec!["1:10.0.0.1:70"], "not ID=HOST:PORT"),
            (vec!["x=10.0.0.1:70"], "positive integer"),
            (vec!["0=10.0.0.1:70"], "reserved"),
            (vec!["1=10.0.0.1"], "no port"),
            (vec!["1=a:1", "1=b:2"], "twice"),
        ] {
            let args = Args {
                peers: peers.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let err = args.resolve(FileConfig::default()).unwrap_err().to_string();
            assert!(err.contains(want), "{peers:?}: {err}");
        }
        for (args, want) in [
            (
                Args {
                    import_roots: vec!["/data".into()],
                    ..Default::default()
                },
                "--import-root \"/data\": expected file:///",
            ),
            (
                Args {
                    allow_buckets: vec!["a/b".into()],
                    ..Default::default()
                },
                "--allow-bucket \"a/b\"",
            ),
        ] {
            let err = args.resolve(FileConfig::default()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let cfg = Args {
            import_roots: vec!["file:///data".into()],
            allow_buckets: vec!["datasets".into()],
            ..Default::default()
        }
        .resolve(FileConfig::default())
        .unwrap();
        assert_eq!(cfg.import_roots, ["file:///data"]);
        assert_eq!(cfg.allow_buckets, ["datasets"]);
        let args = Args {
            election_ticks: Some(1),
            heartbeat_ticks: Some(1),
            ..Default::default()
        };
        assert!(args.resolve(FileConfig::default()).is_err());
    }

    #[test]
    fn log_limits_come_from_flags_or_the_file_and_are_checked() {
        let cfg = Args::default().resolve(FileConfig::default()).unwrap();
        assert_eq!(cfg.log_limits, LogLimits::default());
        let file =
            FileConfig::parse("max_log_lines_per_sec = 50\nmax_log_bytes_per_step = 1048576\n")
                .unwrap();
        let cfg = Args {
            max_log_line_bytes: Some(4096),
            max_log_lines_per_sec: Some(200),
            ..Default::default()
        }
        .resolve(file)
        .unwrap();
        assert_eq!(cfg.log_limits.max_line_bytes, 4096);
        assert_eq!(cfg.log_limits.lines_per_sec, 200);
        assert_eq!(cfg.log_limits.max_attempt_bytes, 1 << 20);
        let err = Args {
            max_log_line_bytes: Some(10),
            ..Default::default()
        }
        .resolve(FileConfig::default())
        .unwrap_err()
        .to_string();
        assert!(err.contains("--max-log-line-bytes is 10"), "{err}");
    }

    #[test]
    fn submission_limits_and_the_proposal_timeout_come_from_flags_or_the_file() {
        let cfg = Args::default().resolve(FileConfig::default()).unwrap();
        assert_eq!(cfg.submit_limits, SubmitLimits::default());
        assert_eq!(cfg.propose_timeout, Duration::from_secs(10));

        let file = FileConfig::parse(
            "max_tasks_per_run = 500\nmax_json_depth = 8\npropose_timeout_ms = 2500\n",
        )
        .unwrap();
        let cfg = Args {
            max_tasks_per_run: Some(700),
            max_pipeline_bytes: Some(1 << 20),
            ..Default::default()
        }
        .resolve(file)
        .unwrap();
        assert_eq!(cfg.submit_limits.max_tasks_per_run, 700);
        assert_eq!(cfg.submit_limits.max_json_depth, 8);
        assert_eq!(cfg.submit_limits.max_pipeline_bytes, 1 << 20);
        assert_eq!(cfg.propose_timeout, Duration::from_millis(2500));

        for (args, want) in [
            (
                Args {
                    max_pipeline_bytes: Some(64 << 20),
                    ..Default::default()
                },
                "--max-pipeline-bytes must be between 1 and 12582912",
            ),
            (
                Args {
                    max_json_depth: Some(1000),
                    ..Default::default()
                },
                "--max-json-depth must be between 1 and 128",
            ),
            (
                Args {
                    propose_timeout_ms: Some(0),
                    ..Default::default()
                },
                "--propose-timeout-ms must be at least 1",
            ),
        ] {
            let err = args.resolve(FileConfig::default()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn retention_settings_are_durations_of_a_second_or_more() {
        let file =
            FileConfig::parse("retain_runs_for = \"30d\"\nmax_finished_runs = 500\n").unwrap();
        let cfg = Args::default().resolve(file).unwrap();
        assert_eq!(cfg.retention.retain_runs_for_ms, Some(30 * 86_400_000));
        assert_eq!(cfg.retention.max_finished_runs, Some(500));
        assert_eq!(cfg.retention.forget_lost_agents_after_ms, None);
        let flags = Args {
            forget_lost_agents_after: Some("90m".into()),
            ..Default::default()
        };
        let cfg = flags.resolve(FileConfig::default()).unwrap();
        assert_eq!(cfg.retention.forget_lost_agents_after_ms, Some(90 * 60_000));
        assert_eq!(
            cfg.retention,
            RetentionPolicy {
                forget_lost_agents_after_ms: Some(90 * 60_000),
                ..Default::default()
            }
        );
        for (text, why) in [("soon", "not a duration like 30d"), ("10ms", "at least 1s")] {
            let args = Args {
                retain_runs_for: Some(text.into()),
                ..Default::default()
            };
            let err = args.resolve(FileConfig::default()).unwrap_err().to_string();
            assert!(
                err.starts_with("retain_runs_for") && err.contains(why),
                "{err}"
            );
        }
    }
}
