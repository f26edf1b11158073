//! Agent sessions, and the side effects of committed events: assignments and cancels reach
//! agents only after the command that made them is applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gantry_core::engine::step_spec;
use gantry_core::state::Event;
use gantry_model::{AgentId, AttemptKey, RunId, TaskId};
use gantry_proto::v1::{coordinator_message::Body, Assignment, CoordinatorMessage};
use tokio::sync::{broadcast, mpsc, Notify};
use tonic::Status;

/// Unbounded on purpose: an assignment is committed before it is sent, so it must not be
/// dropped for want of room; the queue holds at most the agent's committed work.
pub type SessionTx = mpsc::UnboundedSender<Result<CoordinatorMessage, Status>>;

struct Session {
    id: u64,
    tx: SessionTx,
}

/// The live sessions, and a generation that moves whenever one opens or closes, so the
/// leader's placer learns the connected set only when it may have changed.
#[derive(Default)]
struct Sessions {
    by_agent: HashMap<AgentId, Session>,
    generation: u64,
}

pub struct Dispatcher {
    sessions: Mutex<Sessions>,
    /// When this node last heard from each agent (any message, heartbeats every 5 s). Agents
    /// it never heard from count from when it first looked (so a new leader gives every agent
    /// a whole lease to come to it).
    last_heard: Mutex<HashMap<AgentId, std::time::Instant>>,
    next_session: AtomicU64,
    state: crate::machine::SharedState,
    /// Wakes the scheduling loop.
    pub schedule: Arc<Notify>,
    /// Run ids as they finish (ends `logs -f` followers).
    pub run_finished: broadcast::Sender<RunId>,
    /// This node's step logs: retention drops a removed run's.
    logs: Arc<crate::logs::StepLogs>,
}

impl Dispatcher {
    pub fn new(state: crate::machine::SharedState, logs: Arc<crate::logs::StepLogs>) -> Arc<Self> {
        let (run_finished, _) = broadcast::channel(1024);
        Arc::new(Dispatcher {
            sessions: Mutex::new(Sessions::default()),
            last_heard: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            state,
            schedule: Arc::new(Notify::new()),
            run_finished,
            logs,
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn connected(&self) -> BTreeSet<AgentId> {
        self.sessions().by_agent.keys().cloned().collect()
    }

    /// Moves whenever the connected set may have changed. Read before [`Self::connected`], a
    /// set newer than its generation only makes the placer read it again.
    pub fn connected_generation(&self) -> u64 {
        self.sessions().generation
    }

    /// Notes a message from `agent_id`.
    pub fn heard(&self, agent_id: &AgentId) {
        self.last_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(agent_id.clone(), std::time::Instant::now());
    }

    /// Agents among `candidates` not heard from for longer than `lease`.
    pub fn silent_for(&self, candidates: &[AgentId], lease: std::time::Duration) -> Vec<AgentId> {
        let now = std::time::Instant::now();
        let mut heard = self.last_heard.lock().unwrap_or_else(|e| e.into_inner());
        candidates
            .iter()
            .filter(|a| now.duration_since(*heard.entry((*a).clone()).or_insert(now)) > lease)
            .cloned()
            .collect()
    }

    /// Makes `tx` the live session of `agent_id` (replacing an older one). Returns its id.
    pub fn attach(&self, agent_id: &AgentId, tx: SessionTx) -> u64 {
        self.heard(agent_id);
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut s = self.sessions();
        s.by_agent.insert(agent_id.clone(), Session { id, tx });
        s.generation += 1;
        drop(s);
        self.schedule.notify_one();
        id
    }

    pub fn detach(&self, agent_id: &AgentId, session_id: u64) {
        let mut s = self.sessions();
        if s.by_agent.get(agent_id).is_some_and(|x| x.id == session_id) {
            s.by_agent.remove(agent_id);
            s.generation += 1;
        }
    }

    /// Ends every agent session (shutdown): their response streams close.
    pub fn close_all(&self) {
        let mut s = self.sessions();
        s.by_agent.clear();
        s.generation += 1;
    }

    pub fn send(&self, agent_id: &AgentId, body: Body) -> bool {
        let tx = self.sessions().by_agent.get(agent_id).map(|s| s.tx.clone());
        match tx {
            Some(tx) => tx.send(Ok(CoordinatorMessage { body: Some(body) })).is_ok(),
            None => false,
        }
    }

    fn assignment(&self, key: &AttemptKey) -> Option<Body> {
        let st = self.state.read();
        let run = st.runs.get(&key.run_id)?;
        match step_spec(run, &key.task_id, key.attempt) {
            Ok(spec) => match serde_json::to_string(&spec) {
                Ok(step_json) => Some(Body::Assign(Assignment { step_json })),
                Err(e) => {
                    tracing::error!(attempt = %key, error = %e, "cannot encode step");
                    None
                }
            },
            Err(e) => {
                tracing::error!(attempt = %key, error = %e, "cannot build step");
                None
            }
        }
    }

    /// After a (re)connect: sends the committed assignments of `agent_id` that it does not
    /// report as running or finished.
    pub fn resend_assignments(&self, agent_id: &AgentId, known: &BTreeSet<AttemptKey>) {
        let missing: Vec<AttemptKey> = {
            let st = self.state.read();
            st.agents
                .get(agent_id)
                .map(|a| {
                    a.running
                        .iter()
                        .filter(|k| !known.contains(*k))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        for key in missing {
            if let Some(body) = self.assignment(&key) {
                tracing::info!(agent = %agent_id, attempt = %key, "re-sending assignment");
                self.send(agent_id, body);
            }
        }
    }

    /// After a (re)connect: stops the attempts `agent_id` still runs that are no longer its own
    /// (it was declared lost meanwhile and they were placed again elsewhere).
    pub fn cancel_superseded(&self, agent_id: &AgentId, known: &BTreeSet<AttemptKey>) {
        let stale: Vec<AttemptKey> = {
            let st = self.state.read();
            let mine = st.agents.get(agent_id).map(|a| &a.running);
            known
                .iter()
                .filter(|k| !mine.is_some_and(|m| m.contains(*k)))
                .filter(|k| {
                    // Only attempts whose task moved on; a finished one is just unreported.
                    st.runs
                        .get(&k.run_id)
                        .and_then(|r| r.tasks.get(&k.task_id))
                        .is_some_and(|t| t.attempts.len() as u32 > k.attempt)
                })
                .cloned()
                .collect()
        };
        for key in stale {
            tracing::info!(agent = %agent_id, attempt = %key, "stopping a superseded attempt");
            self.send(
                agent_id,
                Body::Cancel(crate::api::convert::attempt_ref(&key)),
            );
        }
    }

    /// Acts on committed events, in commit order.
    pub async fn run_events(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Event>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::AttemptAssigned { agent_id, attempt } => {
                    if let Some(body) = self.assignment(&attempt) {
                        if !self.send(&agent_id, body) {
                            tracing::info!(agent = %agent_id, attempt = %attempt,
                                "agent not connected; assignment goes out when it reconnects");
                        }
                    }
                }
                Event::AttemptCanceled { agent_id, attempt } => {
                    self.send(
                        &agent_id,
                        Body::Cancel(crate::api::convert::attempt_ref(&attempt)),
                    );
                }
                Event::ClaimsReleased {
                    agent_id,
                    run_id,
                    claims,
                } => {
                    // Not resent: an agent away now keeps the directories (README, "Volumes a
                    // run makes").
                    if !self.send(
                        &agent_id,
                        Body::ReleaseClaims(gantry_proto::v1::RunClaims {
                            run_id: run_id.to_string(),
                            claims: claims.clone(),
                        }),
                    ) {
                        tracing::warn!(agent = %agent_id, run = %run_id, ?claims,
                            "agent not connected; the run's volumes stay on it");
                    }
                }
                Event::TasksReady { .. } | Event::CapacityChanged => self.schedule.notify_one(),
                Event::RunsRemoved { run_ids } => {
                    let logs = self.logs.clone();
                    tokio::task::spawn_blocking(move || {
                        let lines: usize = run_ids.iter().map(|id| logs.remove_run(id)).sum();
                        tracing::info!(runs = run_ids.len(), lines, "retention removed runs");
                    });
                }
                Event::RunFinished { run_id, state } => {
                    tracing::info!(run = %run_id, state = state.as_str(), "run finished");
                    let _ = self.run_finished.send(run_id);
                    self.schedule.notify_one();
                }
            }
        }
    }
}

/// Why ready tasks wait, from the last scheduling pass.
#[derive(Debug, Default)]
pub struct Waiting {
    /// Why every ready task waits, when the pass did not walk them one by one (no agent can
    /// take any step).
    pub all: Option<String>,
    pub each: BTreeMap<(RunId, TaskId), String>,
}

impl Waiting {
    /// Why the task waits, if it does (`ready`: the task is in state READY).
    pub fn reason(&self, run_id: &RunId, task_id: &TaskId, ready: bool) -> Option<&str> {
        if let Some(why) = self.each.get(&(run_id.clone(), task_id.clone())) {
            return Some(why);
        }
        self.all.as_deref().filter(|_| ready)
    }
}

/// The last pass's [`Waiting`], shared whole so readers never copy it.
pub type WaitingReasons = Arc<Mutex<Arc<Waiting>>>;

#[cfg(test)]
mod tests {
    use super::Waiting;

    #[test]
    fn a_reason_for_all_is_given_to_ready_tasks_only_and_a_task_of_its_own_wins() {
        let (run, a, b) = ("r".into(), "a".into(), "b".into());
        let none = Waiting::default();
        assert_eq!(none.reason(&run, &a, true), None);
        let all = Waiting {
            all: Some("no agent is connected".into()),
            ..Default::default()
        };
        assert_eq!(all.reason(&run, &a, true), Some("no agent is connected"));
        assert_eq!(all.reason(&run, &a, false), None, "running or done");
        let each = Waiting {
            all: Some("everyone".into()),
            each: [((run.clone(), a.clone()), "this one".to_string())].into(),
        };
        assert_eq!(each.reason(&run, &a, true), Some("this one"));
        assert_eq!(each.reason(&run, &b, true), Some("everyone"));
    }
}
