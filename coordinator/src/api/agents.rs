//! AgentService: the agent's session and the agent list.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use gantry_core::state::{Command, Outcome};
use gantry_model::{AgentId, AttemptKey, HostInventory, StepOutcome};
use gantry_proto::v1 as pb;
use gantry_proto::v1::agent_message::Body as In;
use gantry_proto::v1::agent_service_server::AgentService;
use gantry_proto::v1::coordinator_message::Body as Out;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{agent_to_proto, attempt_key, attempt_ref};
use super::status::ApiError;
use super::Api;
use crate::log_limits::AttemptLog;
use crate::logs::LogRecord;
use crate::server::{Coordinator, Route};
use gantry_core::ir::bounds::check_json_depth;
use gantry_model::limits::MAX_STEP_OUTCOME_BYTES;

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

fn key(r: Option<pb::AttemptRef>) -> Result<AttemptKey, ApiError> {
    r.map(attempt_key).ok_or(ApiError::MissingAttempt)
}

/// Whether `attempt` was assigned to `agent_id`. An attempt number is given to one agent,
/// once, so the answer never changes after it is true.
fn assigned_to(c: &Coordinator, attempt: &AttemptKey, agent_id: &AgentId) -> bool {
    let st = c.state.read();
    st.runs
        .get(&attempt.run_id)
        .and_then(|r| r.tasks.get(&attempt.task_id))
        .and_then(|t| t.attempts.iter().find(|a| a.number == attempt.attempt))
        .is_some_and(|a| a.agent == *agent_id)
}

/// A report about an attempt this agent was never given is refused and logged: an agent acts
/// only on its own attempts.
fn refuse_foreign(c: &Coordinator, attempt: &AttemptKey, agent_id: &AgentId, what: &str) -> bool {
    if assigned_to(c, attempt, agent_id) {
        return false;
    }
    tracing::warn!(agent = %agent_id, %attempt, what,
        "refused: the attempt is not assigned to this agent");
    true
}

/// A reported outcome, or why it cannot be recorded as it is: over the size agents keep to,
/// unreadable, or with output values nested deeper than the coordinator allows (an agent is
/// trusted with its own steps' results, not with every replica's memory).
fn outcome_of(json: &str, max_depth: usize) -> Result<StepOutcome, String> {
    if json.len() > MAX_STEP_OUTCOME_BYTES {
        return Err(format!(
            "the step's outcome holds {} bytes, over the limit of {MAX_STEP_OUTCOME_BYTES}",
            json.len()
        ));
    }
    let outcome: StepOutcome = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if let StepOutcome::Succeeded { parameters, .. } = &outcome {
        for (name, v) in parameters {
            check_json_depth(&format!("output parameter {name:?}"), v, max_depth)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(outcome)
}

/// Commits a reported outcome, then tells the agent it may forget it.
async fn record_finished(c: Arc<Coordinator>, agent_id: AgentId, f: pb::AttemptFinished) {
    let attempt = match key(f.attempt) {
        Ok(k) => k,
        Err(e) => return tracing::warn!(agent = %agent_id, error = %e, "bad report"),
    };
    if refuse_foreign(&c, &attempt, &agent_id, "result") {
        // Acknowledged so the agent stops resending it; nothing was recorded.
        c.dispatcher
            .send(&agent_id, Out::ResultRecorded(attempt_ref(&attempt)));
        return;
    }
    let outcome: StepOutcome = match outcome_of(&f.outcome_json, c.submit_limits.max_json_depth) {
        // Only the coordinator declares an attempt lost (that outcome does not count against
        // the step's retries); an agent saying so is reporting a failure.
        Ok(StepOutcome::Lost { error }) => StepOutcome::Failed {
            error: format!("the agent reported the attempt lost: {error}"),
            exit_code: None,
        },
        Ok(o) => o,
        Err(e) => StepOutcome::Failed {
            error: format!("the coordinator refused the agent's report: {e}"),
            exit_code: None,
        },
    };
    let cmd = Command::AttemptFinished {
        attempt: attempt.clone(),
        outcome,
        at: crate::now_ms(),
    };
    match c.propose(cmd).await {
        Ok(applied) => {
            match &applied.result {
                Ok(Outcome::ResultRecorded(effect)) => {
                    tracing::debug!(attempt = %attempt, ?effect, "result committed")
                }
                other => tracing::debug!(attempt = %attempt, ?other, "report applied"),
            }
            // Recorded, a duplicate, or for a run that no longer exists: the agent is done
            // with it either way.
            c.dispatcher
                .send(&agent_id, Out::ResultRecorded(attempt_ref(&attempt)));
        }
        Err(e) => {
            // Not committed: the agent keeps the result and reports it again on reconnect.
            tracing::warn!(attempt = %attempt, error = %e, "could not commit a result");
        }
    }
}

async fn serve_session(
    c: Arc<Coordinator>,
    agent_id: AgentId,
    session_id: u64,
    mut inbound: Streaming<pb::AgentMessage>,
) {
    // Each attempt's log so far, against c.log_limits; an entry goes when its attempt ends.
    let mut attempt_logs: HashMap<AttemptKey, AttemptLog> = HashMap::new();
    loop {
        let msg = match inbound.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::info!(agent = %agent_id, error = %e, "agent session broke");
                break;
            }
            None => break,
        };
        c.dispatcher.heard(&agent_id);
        match msg.body {
            Some(In::Heartbeat(_)) | None => {}
            Some(In::Register(_)) => {
                tracing::warn!(agent = %agent_id, "ignoring a second registration in one session")
            }
            Some(In::Inventory(u)) => {
                match serde_json::from_str::<HostInventory>(&u.inventory_json) {
                    Ok(inventory) => {
                        let healthy = inventory.gpus.iter().filter(|g| g.healthy).count();
                        tracing::info!(agent = %agent_id, gpus = inventory.gpus.len(), healthy,
                        "agent inventory changed");
                        let c = c.clone();
                        let agent_id = agent_id.clone();
                        tokio::spawn(async move {
                            let cmd = Command::UpdateInventory {
                                agent_id,
                                inventory,
                            };
                            if let Err(e) = c.propose(cmd).await {
                                tracing::warn!(error = %e, "could not record an inventory change");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(agent = %agent_id, error = %e, "unreadable inventory update")
                    }
                }
            }
            Some(In::Started(s)) => {
                if let Ok(attempt) = key(s.attempt) {
                    if refuse_foreign(&c, &attempt, &agent_id, "start") {
                        continue;
                    }
                    let c = c.clone();
                    tokio::spawn(async move {
                        let cmd = Command::AttemptStarted {
                            attempt,
                            at: crate::now_ms(),
                        };
                        if let Err(e) = c.propose(cmd).await {
                            tracing::debug!(error = %e, "could not record a start");
                        }
                    });
                }
            }
            Some(In::Logs(batch)) => {
                if let Ok(attempt) = key(batch.attempt) {
                    if refuse_foreign(&c, &attempt, &agent_id, "log lines") {
                        continue;
                    }
                    let now = crate::now_ms();
                    let limits = c.log_limits;
                    let log = attempt_logs
                        .entry(attempt.clone())
                        .or_insert_with(|| AttemptLog::new(&limits, now));
                    for l in batch.lines {
                        for line in log.admit(&limits, l.line, now) {
                            c.logs.append(LogRecord {
                                run_id: attempt.run_id.clone(),
                                task_id: attempt.task_id.clone(),
                                attempt: attempt.attempt,
                                stream: l.stream.clone(),
                                line,
                                at_ms: now,
                                seq: 0,
                            });
                        }
                    }
                }
            }
            Some(In::Finished(f)) => {
                if let Ok(attempt) = key(f.attempt.clone()) {
                    attempt_logs.remove(&attempt);
                }
                tokio::spawn(record_finished(c.clone(), agent_id.clone(), f));
            }
        }
    }
    c.dispatcher.detach(&agent_id, session_id);
    tracing::info!(agent = %agent_id, "agent disconnected");
}

#[tonic::async_trait]
impl AgentService for Api {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        // Assignments go out from the leader only; elsewhere say where the leader is. During an
        // election this waits for the outcome, so the agent is sent on as soon as there is one.
        if let Route::Leader(_) = self.0.route_write(false, super::ROUTE_WAIT).await? {
            return Err(self.0.not_leader().into());
        }
        let principal = crate::auth::principal(&req);
        let mut inbound = req.into_inner();
        let first = inbound.next().await.ok_or(ApiError::NoRegistration)??;
        let Some(In::Register(reg)) = first.body else {
            return Err(ApiError::FirstNotRegister.into());
        };
        // With TLS the agent is who its certificate says, whatever it claims.
        let agent_id: AgentId = match principal.cert.as_ref().map(|i| &i.role) {
            Some(gantry_tls::Role::Agent(id)) => {
                if !reg.agent_id.is_empty() && reg.agent_id != *id {
                    let e = ApiError::AgentRefused(format!(
                        "this agent's certificate is for agent {id}; it may not register as {}",
                        reg.agent_id
                    ));
                    tracing::warn!(cert = %id, claimed = %reg.agent_id,
                        "refused: an agent registered under another agent's id");
                    return Err(e.into());
                }
                AgentId::from(id.as_str())
            }
            _ if self.0.transport == crate::auth::Transport::Tls => {
                let e =
                    ApiError::AgentRefused("an agent session needs an agent certificate".into());
                tracing::warn!(caller = %principal.name(), claimed = %reg.agent_id, reason = %e,
                    "refused: an agent session without an agent certificate");
                return Err(e.into());
            }
            _ if reg.agent_id.is_empty() => return Err(ApiError::EmptyAgentId.into()),
            _ => AgentId::from(reg.agent_id.as_str()),
        };
        let inventory: HostInventory =
            serde_json::from_str(&reg.inventory_json).map_err(ApiError::Inventory)?;
        let labels: BTreeMap<String, String> = reg.labels.into_iter().collect();
        let taints = reg
            .taints
            .iter()
            .map(|t| gantry_model::Taint::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::from)?;
        let known: BTreeSet<AttemptKey> = reg.active.into_iter().map(attempt_key).collect();
        self.0
            .propose(Command::RegisterAgent {
                agent_id: agent_id.clone(),
                inventory,
                labels,
                taints,
                at: crate::now_ms(),
            })
            .await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let session_id = self.0.dispatcher.attach(&agent_id, tx.clone());
        let _ = tx.send(Ok(pb::CoordinatorMessage {
            body: Some(Out::Registered(pb::Registered {
                agent_id: agent_id.to_string(),
            })),
        }));
        self.0.dispatcher.resend_assignments(&agent_id, &known);
        self.0.dispatcher.cancel_superseded(&agent_id, &known);
        tracing::info!(agent = %agent_id, "agent connected");
        tokio::spawn(serve_session(self.0.clone(), agent_id, session_id, inbound));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        // Sessions live on the leader: only it knows who is connected.
        if let crate::server::Route::Leader(ch) = self
            .0
            .route_write(super::forwarded(&req), super::ROUTE_WAIT)
            .await?
        {
            return pb::agent_service_client::AgentServiceClient::new(ch)
                .list_agents(super::relay(req))
                .await;
        }
        self.0.read_barrier().await?;
        let connected = self.0.dispatcher.connected();
        let st = self.0.state.read();
        let agents = st
            .agents
            .values()
            .map(|a| agent_to_proto(a, connected.contains(&a.agent_id)))
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn drain_agent(
        &self,
        req: Request<pb::DrainAgentRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        if let crate::server::Route::Leader(ch) = self
            .0
            .route_write(super::forwarded(&req), super::ROUTE_WAIT)
            .await?
        {
            return pb::agent_service_client::AgentServiceClient::new(ch)
                .drain_agent(super::relay(req))
                .await;
        }
        let req = req.into_inner();
        let agent_id = AgentId::from(req.agent_id);
        self.0
            .propose(Command::SetAgentDraining {
                agent_id: agent_id.clone(),
                draining: req.drain,
            })
            .await?
            .result
            .map_err(ApiError::from)?;
        let connected = self.0.dispatcher.connected();
        let st = self.0.state.read();
        let a = st
            .agents
            .get(&agent_id)
            .ok_or_else(|| ApiError::AgentNotFound(agent_id.clone()))?;
        Ok(Response::new(agent_to_proto(
            a,
            connected.contains(&a.agent_id),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_over_the_size_or_depth_limits_are_refused_naming_them() {
        let ok = r#"{"status":"succeeded","parameters":{"n":[[1]]}}"#;
        assert!(matches!(
            outcome_of(ok, 2),
            Ok(StepOutcome::Succeeded { .. })
        ));
        assert_eq!(
            outcome_of(ok, 1).unwrap_err(),
            "output parameter \"n\" nests 2 levels deep, over the limit of 1 (--max-json-depth)"
        );
        let big = format!(
            r#"{{"status":"failed","error":"{}"}}"#,
            "x".repeat(MAX_STEP_OUTCOME_BYTES)
        );
        assert!(outcome_of(&big, 32)
            .unwrap_err()
            .starts_with("the step's outcome holds 4259"));
        assert!(outcome_of("{", 32).is_err());
    }
}
