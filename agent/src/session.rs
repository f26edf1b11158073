//! The agent's session with the coordinator: register, receive committed assignments, run
//! them, stream logs, report results until the coordinator confirms it recorded them.
//!
//! The session may break at any time (coordinator restart, leader change). Running steps go
//! on; their results wait in memory and are reported again on the next session, so none is
//! lost and a duplicate report changes nothing on the coordinator.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_model::{AgentId, AttemptKey, HostInventory, StepOutcome, StepSpec};
use gantry_proto::v1 as pb;
use gantry_proto::v1::agent_message::Body as Out;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::coordinator_message::Body as In;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::launcher::Launcher;
use crate::runtime::{LogLine, LogStream};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub agent_id: AgentId,
    /// Coordinator endpoints, tried in turn.
    pub coordinators: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Steps must tolerate these to be placed here (`KEY[=VALUE]:EFFECT`, checked at start).
    pub taints: Vec<gantry_model::Taint>,
    /// The host as first probed; [`Reprobe`] keeps it current.
    pub inventory: HostInventory,
    /// Probes the host again; `None`: the inventory never changes (tests, benches).
    pub reprobe: Option<Reprobe>,
    /// TLS material: the agent's certificate (its identity) and the cluster CA; `None` speaks
    /// plain text (loopback or `--insecure` only).
    pub tls: Option<Arc<gantry_tls::TlsContext>>,
}

/// How the agent probes its host again while it runs, so a GPU that fails or vanishes stops
/// getting steps.
#[derive(Clone)]
pub struct Reprobe(pub Arc<dyn Fn() -> HostInventory + Send + Sync>);

impl std::fmt::Debug for Reprobe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reprobe")
    }
}

/// How often the host is probed again.
const REPROBE_EVERY: Duration = Duration::from_secs(5);

/// What placement depends on: a change here is reported at once. Free memory and utilisation
/// move all the time and are not worth a replicated command each.
fn placement_view(inv: &HostInventory) -> impl PartialEq {
    (
        inv.cpu_cores.to_bits(),
        inv.memory_bytes,
        inv.gpus
            .iter()
            .map(|g| (g.uuid.clone(), g.name.clone(), g.healthy, g.mig_enabled))
            .collect::<Vec<_>>(),
    )
}

/// The attempt a coordinator's message names (the wire carries ids as strings).
fn key_of(r: &pb::AttemptRef) -> AttemptKey {
    AttemptKey::new(r.run_id.as_str(), r.task_id.as_str(), r.attempt)
}

/// An attempt as the agent's messages name it.
fn attempt_ref(k: &AttemptKey) -> pb::AttemptRef {
    pb::AttemptRef {
        run_id: k.run_id.to_string(),
        task_id: k.task_id.to_string(),
        attempt: k.attempt,
    }
}

struct Attempt {
    cancel: CancellationToken,
    /// Set when the step ended; cleared once the coordinator recorded it.
    result: Option<StepOutcome>,
    /// When the result was last sent.
    reported_at: Option<std::time::Instant>,
}

/// A result the coordinator has not confirmed this long after it was sent is sent again on the
/// same session: the coordinator may have failed to commit it (a lost leadership, a slow disk)
/// while the session itself stayed up.
const RESEND_AFTER: Duration = Duration::from_secs(30);

/// The agent's memory of its attempts, shared by sessions and the tasks running steps.
pub struct AgentCore {
    launcher: Arc<Launcher>,
    attempts: Mutex<HashMap<AttemptKey, Attempt>>,
    outbound: Mutex<Option<mpsc::Sender<pb::AgentMessage>>>,
}

fn msg(body: Out) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

impl AgentCore {
    pub fn new(launcher: Arc<Launcher>) -> Arc<Self> {
        Arc::new(AgentCore {
            launcher,
            attempts: Mutex::new(HashMap::new()),
            outbound: Mutex::new(None),
        })
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, Attempt>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outbound(&self) -> Option<mpsc::Sender<pb::AgentMessage>> {
        self.outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Best effort (logs, start notices): dropped when the session is gone or saturated.
    fn send(&self, m: pb::AgentMessage) {
        if let Some(tx) = self.outbound() {
            let _ = tx.try_send(m);
        }
    }

    /// Waits for room: a result must not be lost behind a burst of log lines. If the session
    /// breaks meanwhile, the result is reported again on the next one.
    async fn send_reliably(&self, m: pb::AgentMessage) {
        if let Some(tx) = self.outbound() {
            let _ = tx.send(m).await;
        }
    }

    fn set_outbound(&self, tx: Option<mpsc::Sender<pb::AgentMessage>>) {
        *self.outbound.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    /// Attempts running or holding an unreported result.
    pub fn active(&self) -> Vec<pb::AttemptRef> {
        self.attempts().keys().map(attempt_ref).collect()
    }

    pub fn running_count(&self) -> usize {
        self.attempts()
            .values()
            .filter(|a| a.result.is_none())
            .count()
    }

    fn unreported(&self) -> Vec<(AttemptKey, StepOutcome)> {
        self.attempts()
            .iter()
            .filter_map(|(k, a)| a.result.clone().map(|r| (k.clone(), r)))
            .collect()
    }

    /// Results sent more than `after` ago and still not confirmed; each is marked as sent now.
    fn overdue(&self, after: Duration) -> Vec<(AttemptKey, StepOutcome)> {
        let now = std::time::Instant::now();
        let mut due = Vec::new();
        for (k, a) in self.attempts().iter_mut() {
            let Some(result) = &a.result else { continue };
            if a.reported_at.is_none_or(|t| now.duration_since(t) >= after) {
                a.reported_at = Some(now);
                due.push((k.clone(), result.clone()));
            }
        }
        due
    }

    fn finished_msg(k: &AttemptKey, outcome: &StepOutcome) -> pb::AgentMessage {
        let outcome_json = serde_json::to_string(outcome).unwrap_or_else(|e| {
            serde_json::json!({"status": "failed", "error": format!("cannot encode outcome: {e}")})
                .to_string()
        });
        msg(Out::Finished(pb::AttemptFinished {
            attempt: Some(attempt_ref(k)),
            outcome_json,
        }))
    }

    /// Starts a committed assignment unless this attempt is already known.
    pub fn start(self: &Arc<Self>, spec: StepSpec) {
        self.spawn(spec, false);
    }

    /// Takes over the steps an earlier process of this agent left running (Docker), before
    /// the first registration: they are then reported as active, so the coordinator neither
    /// sends them again nor runs them twice. How many were found.
    pub async fn reattach_orphans(self: &Arc<Self>) -> usize {
        let orphans = self.launcher.orphans().await;
        let n = orphans.len();
        for spec in orphans {
            tracing::info!(attempt = %spec.attempt_key(), "reattaching to a running step");
            self.spawn(spec, true);
        }
        n
    }

    fn spawn(self: &Arc<Self>, spec: StepSpec, reattach: bool) {
        let k = spec.attempt_key();
        let cancel = CancellationToken::new();
        {
            let mut attempts = self.attempts();
            if attempts.contains_key(&k) {
                tracing::debug!(attempt = %spec.attempt_key(), "duplicate assignment ignored");
                return;
            }
            attempts.insert(
                k.clone(),
                Attempt {
                    cancel: cancel.clone(),
                    result: None,
                    reported_at: None,
                },
            );
        }
        if !reattach {
            tracing::info!(attempt = %spec.attempt_key(), image = %spec.container.image, "starting step");
            self.send(msg(Out::Started(pb::AttemptStarted {
                attempt: Some(attempt_ref(&k)),
            })));
        }
        let core = self.clone();
        tokio::spawn(async move {
            let (log_tx, log_rx) = mpsc::channel::<LogLine>(1024);
            let forwarder = tokio::spawn(forward_logs(core.clone(), k.clone(), log_rx));
            let outcome = if reattach {
                core.launcher.resume(&spec, log_tx, cancel).await
            } else {
                core.launcher.run_step(&spec, log_tx, cancel).await
            };
            let _ = forwarder.await;
            tracing::info!(attempt = %spec.attempt_key(), outcome = outcome_name(&outcome), "step ended");
            if let Some(a) = core.attempts().get_mut(&k) {
                a.result = Some(outcome.clone());
                a.reported_at = Some(std::time::Instant::now());
            }
            core.send_reliably(Self::finished_msg(&k, &outcome)).await;
        });
    }

    fn cancel(&self, k: &AttemptKey) {
        if let Some(a) = self.attempts().get(k) {
            a.cancel.cancel();
        }
    }

    fn forget(&self, k: &AttemptKey) {
        let mut attempts = self.attempts();
        if attempts.get(k).is_some_and(|a| a.result.is_some()) {
            attempts.remove(k);
        }
    }

    /// Cancels every running step (agent shutdown).
    pub fn cancel_all(&self) {
        for a in self.attempts().values() {
            a.cancel.cancel();
        }
    }
}

fn outcome_name(o: &StepOutcome) -> &'static str {
    match o {
        StepOutcome::Succeeded { .. } => "succeeded",
        StepOutcome::Failed { .. } => "failed",
        StepOutcome::Canceled => "canceled",
        StepOutcome::Lost { .. } => "lost",
    }
}

/// Sends log lines in batches: up to 128 lines or 100 ms.
async fn forward_logs(core: Arc<AgentCore>, k: AttemptKey, mut rx: mpsc::Receiver<LogLine>) {
    let mut batch = Vec::new();
    loop {
        let line = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(l) => l,
                Err(_) => {
                    flush(&core, &k, &mut batch);
                    continue;
                }
            }
        };
        match line {
            Some(l) => {
                batch.push(pb::LogLine {
                    stream: match l.stream {
                        LogStream::Stdout => "stdout".into(),
                        LogStream::Stderr => "stderr".into(),
                    },
                    line: l.line,
                });
                if batch.len() >= 128 {
                    flush(&core, &k, &mut batch);
                }
            }
            None => {
                flush(&core, &k, &mut batch);
                return;
            }
        }
    }
}

fn flush(core: &AgentCore, k: &AttemptKey, batch: &mut Vec<pb::LogLine>) {
    if batch.is_empty() {
        return;
    }
    core.send(msg(Out::Logs(pb::LogBatch {
        attempt: Some(attempt_ref(k)),
        lines: std::mem::take(batch),
    })));
}

/// A coordinator endpoint that is not `host:port` or a URL.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("an empty coordinator endpoint was given")]
    Empty,
    #[error("coordinator endpoint {given:?} is not HOST:PORT or a URL: {error}")]
    NotAUrl {
        given: String,
        error: tonic::codegen::http::uri::InvalidUri,
    },
}

/// A coordinator endpoint as given on the command line (`host:port` or a URL) as a URL.
pub fn endpoint_url(given: &str) -> Result<String, EndpointError> {
    let given = given.trim();
    if given.is_empty() {
        return Err(EndpointError::Empty);
    }
    let url = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    if let Err(error) = url.parse::<tonic::transport::Uri>() {
        return Err(EndpointError::NotAUrl {
            given: given.to_string(),
            error,
        });
    }
    Ok(url)
}

/// How a session with a coordinator failed, decided where the call failed, so the reconnect
/// loop matches on what happened instead of digging in an error's text.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The coordinator is not the leader and named it: go there (a URL).
    #[error("not the leader; the leader is at {leader}")]
    NotLeader { leader: String },
    /// No connection to the coordinator (down, unreachable, a bad endpoint).
    #[error("{0}")]
    Unreachable(tonic::transport::Error),
    /// The coordinator refused the session without naming a leader (no leader elected yet,
    /// a registration it did not accept).
    #[error("{0}")]
    Refused(tonic::Status),
    /// The open session broke (the coordinator died, was cut off, or dropped the stream).
    #[error("{0}")]
    Broken(tonic::Status),
    #[error("cannot encode the inventory: {0}")]
    Encode(serde_json::Error),
    /// The session's own outbound queue closed under it.
    #[error("the session's outbound stream closed")]
    Closed,
}

impl SessionError {
    /// A refusal of the session call: a redirect when it names the leader.
    fn refused(status: tonic::Status) -> Self {
        match gantry_proto::leader_hint(&status) {
            Some(addr) => SessionError::NotLeader {
                leader: if addr.contains("://") {
                    addr.to_string()
                } else {
                    format!("http://{addr}")
                },
            },
            None => SessionError::Refused(status),
        }
    }
}

/// How one attempt at a session ended, for pacing the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The session worked for a while (it was up for more than a moment), then broke.
    Worked,
    /// A coordinator answered and named the leader.
    Redirected,
    /// The leader a coordinator named could not be reached (it may have just died, and the
    /// others have not noticed yet).
    NamedLeaderFailed,
    /// A configured coordinator could not be reached or refused without naming a leader.
    Failed,
}

/// Pauses between session attempts. A coordinator that answers proves the cluster is there,
/// and followers hold an attempt until an election settles, so only a whole round of
/// configured coordinators failing makes the pause grow.
#[derive(Debug)]
struct Pacer {
    coordinators: usize,
    failed_in_row: usize,
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Capped low: a step waits on this reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const AT_ONCE: Duration = Duration::from_millis(10);

impl Pacer {
    fn new(coordinators: usize) -> Self {
        Pacer {
            coordinators: coordinators.max(1),
            failed_in_row: 0,
            backoff: FIRST_BACKOFF,
        }
    }

    fn pause_after(&mut self, end: SessionEnd) -> Duration {
        match end {
            SessionEnd::Worked | SessionEnd::Redirected => {
                self.failed_in_row = 0;
                self.backoff = FIRST_BACKOFF;
                AT_ONCE
            }
            SessionEnd::NamedLeaderFailed => FIRST_BACKOFF,
            SessionEnd::Failed => {
                self.failed_in_row += 1;
                if !self.failed_in_row.is_multiple_of(self.coordinators) {
                    return AT_ONCE;
                }
                let p = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                p
            }
        }
    }
}

/// Keeps a session with the leading coordinator open until `shutdown`: tries the configured
/// coordinators in turn, goes straight to the leader when a follower names it, and reconnects
/// when the session breaks (leader lost, paused or stepped down).
pub async fn run(cfg: SessionConfig, core: Arc<AgentCore>, shutdown: CancellationToken) {
    let current = Arc::new(Mutex::new(cfg.inventory.clone()));
    if let Some(probe) = cfg.reprobe.clone() {
        tokio::spawn(reprobe_loop(
            probe,
            current.clone(),
            core.clone(),
            shutdown.clone(),
        ));
    }
    let n = cfg.coordinators.len().max(1);
    let mut pacer = Pacer::new(n);
    let mut i = 0usize;
    let mut hint: Option<String> = None;
    loop {
        let (endpoint, named) = match hint.take() {
            Some(h) => (h, true),
            None => {
                i += 1;
                (cfg.coordinators[(i - 1) % n].clone(), false)
            }
        };
        let began = std::time::Instant::now();
        let end = tokio::select! {
            r = session(&cfg, &current, &endpoint, &core) => match r {
                Ok(()) => {
                    tracing::info!(%endpoint, "session ended by the coordinator");
                    SessionEnd::Worked
                }
                Err(SessionError::NotLeader { leader }) if leader != endpoint => {
                    tracing::info!(%endpoint, %leader, "not the leader; going to the leader");
                    hint = Some(leader);
                    SessionEnd::Redirected
                }
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "coordinator session failed");
                    if began.elapsed() > Duration::from_secs(2) {
                        SessionEnd::Worked
                    } else if named {
                        SessionEnd::NamedLeaderFailed
                    } else {
                        SessionEnd::Failed
                    }
                }
            },
            _ = shutdown.cancelled() => {
                core.set_outbound(None);
                return;
            }
        };
        core.set_outbound(None);
        let pause = pacer.pause_after(end);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Probes the host every [`REPROBE_EVERY`]; when what placement depends on changed, keeps the
/// new inventory (the next registration carries it) and reports it on the current session.
async fn reprobe_loop(
    probe: Reprobe,
    current: Arc<Mutex<HostInventory>>,
    core: Arc<AgentCore>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPROBE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let p = probe.0.clone();
        // NVML calls block.
        let Ok(fresh) = tokio::task::spawn_blocking(move || p()).await else {
            continue;
        };
        let changed = {
            let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
            let changed = placement_view(&cur) != placement_view(&fresh);
            *cur = fresh.clone();
            changed
        };
        if !changed {
            continue;
        }
        tracing::info!(
            gpus = fresh.gpus.len(),
            healthy = fresh.gpus.iter().filter(|g| g.healthy).count(),
            "host changed; reporting"
        );
        match serde_json::to_string(&fresh) {
            Ok(json) => {
                core.send_reliably(msg(Out::Inventory(pb::InventoryUpdate {
                    inventory_json: json,
                })))
                .await
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the inventory"),
        }
    }
}

async fn session(
    cfg: &SessionConfig,
    current: &Mutex<HostInventory>,
    endpoint: &str,
    core: &Arc<AgentCore>,
) -> Result<(), SessionError> {
    // Keepalive notices a coordinator that is paused or cut off, not only one that is gone.
    let channel = gantry_tls::client::channel(endpoint, cfg.tls.clone(), |e| {
        e.http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
    })
    .map_err(SessionError::Unreachable)?;
    let mut client = AgentServiceClient::new(channel)
        .max_encoding_message_size(gantry_model::limits::MAX_AGENT_MESSAGE_BYTES)
        .max_decoding_message_size(gantry_model::limits::MAX_AGENT_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(4096);
    let inventory_json = serde_json::to_string(&*current.lock().unwrap_or_else(|e| e.into_inner()))
        .map_err(SessionError::Encode)?;
    tx.send(msg(Out::Register(pb::Register {
        agent_id: cfg.agent_id.to_string(),
        inventory_json,
        labels: cfg.labels.clone().into_iter().collect(),
        active: core.active(),
        taints: cfg.taints.iter().map(|t| t.to_string()).collect(),
    })))
    .await
    .map_err(|_| SessionError::Closed)?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(SessionError::refused)?
        .into_inner();
    core.set_outbound(Some(tx.clone()));
    for (k, outcome) in core.unreported() {
        tracing::info!(run = %k.run_id, task = %k.task_id, attempt = k.attempt, "re-reporting a result");
        let _ = tx.send(AgentCore::finished_msg(&k, &outcome)).await;
    }
    let heartbeat = {
        let tx = tx.clone();
        let core = core.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if tx
                    .send(msg(Out::Heartbeat(pb::Heartbeat {})))
                    .await
                    .is_err()
                {
                    return;
                }
                for (k, outcome) in core.overdue(RESEND_AFTER) {
                    tracing::warn!(run = %k.run_id, task = %k.task_id, attempt = k.attempt,
                        "a result is still unconfirmed; reporting it again");
                    if tx
                        .send(AgentCore::finished_msg(&k, &outcome))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    };
    let result = async {
        while let Some(m) = inbound.message().await.map_err(SessionError::Broken)? {
            match m.body {
                Some(In::Registered(r)) => {
                    tracing::info!(agent = %r.agent_id, %endpoint, "registered with coordinator")
                }
                Some(In::Assign(a)) => match serde_json::from_str::<StepSpec>(&a.step_json) {
                    Ok(spec) => core.start(spec),
                    Err(e) => tracing::error!(error = %e, "unreadable assignment"),
                },
                Some(In::Cancel(r)) => core.cancel(&key_of(&r)),
                Some(In::ResultRecorded(r)) => core.forget(&key_of(&r)),
                Some(In::ReleaseClaims(c)) => {
                    let work_root = core.launcher.work_root().to_path_buf();
                    tokio::spawn(async move {
                        crate::volumes::release_run_claims(&work_root, &c.run_id, &c.claims).await
                    });
                }
                None => {}
            }
        }
        Ok(())
    }
    .await;
    heartbeat.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_only_when_every_coordinator_failed_in_a_row() {
        let mut p = Pacer::new(3);
        // The leader died: the other two are tried at once.
        assert_eq!(p.pause_after(SessionEnd::Worked), AT_ONCE);
        assert_eq!(p.pause_after(SessionEnd::Failed), AT_ONCE);
        assert_eq!(p.pause_after(SessionEnd::Failed), AT_ONCE);
        // A whole round failed: back off, doubling per round up to the cap.
        assert_eq!(p.pause_after(SessionEnd::Failed), FIRST_BACKOFF);
        let mut last = FIRST_BACKOFF;
        for _ in 0..10 {
            p.pause_after(SessionEnd::Failed);
            p.pause_after(SessionEnd::Failed);
            let pause = p.pause_after(SessionEnd::Failed);
            assert!(pause >= last && pause <= MAX_BACKOFF, "{pause:?}");
            last = pause;
        }
        assert_eq!(last, MAX_BACKOFF);
        // A coordinator that answers (naming the leader) proves the cluster is up: start over.
        assert_eq!(p.pause_after(SessionEnd::Redirected), AT_ONCE);
        assert_eq!(p.pause_after(SessionEnd::Failed), AT_ONCE);
        assert_eq!(p.pause_after(SessionEnd::Failed), AT_ONCE);
        assert_eq!(p.pause_after(SessionEnd::Failed), FIRST_BACKOFF);
    }

    #[test]
    fn a_refusal_naming_the_leader_is_a_redirect_to_its_url() {
        let mut s = tonic::Status::unavailable("node 2 is not the leader (leader: 1)");
        assert!(matches!(
            SessionError::refused(s.clone()),
            SessionError::Refused(_)
        ));
        s.metadata_mut()
            .insert(gantry_proto::LEADER_HINT, "10.0.0.1:7070".parse().unwrap());
        match SessionError::refused(s) {
            SessionError::NotLeader { leader } => assert_eq!(leader, "http://10.0.0.1:7070"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoints_are_taken_as_host_port_or_url() {
        assert_eq!(
            endpoint_url("10.0.0.1:7070").unwrap(),
            "http://10.0.0.1:7070"
        );
        assert_eq!(endpoint_url(" https://c:1 ").unwrap(), "https://c:1");
        assert!(matches!(endpoint_url(""), Err(EndpointError::Empty)));
        assert!(matches!(
            endpoint_url("a b:1"),
            Err(EndpointError::NotAUrl { .. })
        ));
    }

    #[test]
    fn a_named_leader_that_is_gone_costs_a_short_fixed_pause() {
        let mut p = Pacer::new(3);
        for _ in 0..20 {
            assert_eq!(p.pause_after(SessionEnd::Redirected), AT_ONCE);
            assert_eq!(p.pause_after(SessionEnd::NamedLeaderFailed), FIRST_BACKOFF);
        }
        // It does not count towards a failed round either.
        assert_eq!(p.pause_after(SessionEnd::Failed), AT_ONCE);
    }
}
