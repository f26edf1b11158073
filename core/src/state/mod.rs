//! The replicated state machine: `apply(index, command) -> Applied`, a total function.
//!
//! Live state is kept in memory; the Raft log (and, later, snapshots) make it durable. A
//! domain rejection (unknown run, stale placement) is a returned [`Rejection`], recorded the
//! same way on every replica, never a panic.

pub mod acl;
pub mod catalog;
mod command;
mod command_decoder;
pub mod notify;
mod pipelines;
pub mod retention;
pub(crate) mod snapshot_codec;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gantry_model::{AgentId, HostInventory, ResourceRequest, RunId, TaskId};
use serde::{Deserialize, Serialize};

pub use command::{Command, NewRun, Placement, Unschedulable};
pub use command_decoder::CommandDecoder;
/// Re-exported from the vocabulary crate, where the agent finds it too.
pub use gantry_model::AttemptKey;
pub use snapshot_codec::{decode_snapshot, encode_snapshot, snapshot_format, SnapshotFormat};

use crate::engine::{self, CacheEntry, OutcomeEffect, RunRecord, RunState, TaskState};
use crate::scheduler::matching;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    pub inventory: HostInventory,
    pub labels: BTreeMap<String, String>,
    pub registered_at: i64,
    /// Attempts assigned to this agent that have no result yet.
    pub running: BTreeSet<AttemptKey>,
    pub cpu_allocated: f64,
    pub memory_allocated: u64,
    /// GPU UUID → the attempt it is assigned to.
    #[serde(default)]
    pub gpus_in_use: BTreeMap<String, AttemptKey>,
    /// From the agent's configuration: steps must tolerate these to land here.
    #[serde(default)]
    pub taints: Vec<gantry_model::Taint>,
    /// Drained: running steps finish, no new ones are placed here.
    #[serde(default)]
    pub draining: bool,
    /// When it was declared lost; cleared when it registers again.
    #[serde(default)]
    pub lost_at: Option<i64>,
    /// Bumped by every change to what placement sees of the agent (capacity, allocations,
    /// labels, taints, drain, loss), so the leader's placer finds changed agents by comparing
    /// integers instead of rebuilding its view of the whole fleet each pass. Not meaningful as
    /// a number: only whether it moved.
    #[serde(default)]
    pub changes: u64,
}

impl AgentRecord {
    /// Marks a change placement must see.
    fn touch(&mut self) {
        self.changes = self.changes.wrapping_add(1);
    }

    /// Whether `req` with the GPUs `gpus` can be assigned here now. Re-checked when a placement
    /// is applied, so a plan made on an older state can never oversubscribe the agent.
    /// The labels placement matches a selector against: the agent's own and
    /// [`engine::claims::AGENT_ID_LABEL`], so a task can ask for this agent (where a claim of
    /// its run lives).
    pub fn placement_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(
            engine::claims::AGENT_ID_LABEL.to_string(),
            self.agent_id.to_string(),
        );
        labels
    }

    pub fn fits(&self, req: &ResourceRequest, gpus: &[String]) -> bool {
        let cpu_ok = self.cpu_allocated + req.cpu_reserved() <= self.inventory.cpu_cores + 1e-9;
        let mem_ok = self.memory_allocated.saturating_add(req.memory_reserved())
            <= self.inventory.memory_bytes;
        let distinct: BTreeSet<&String> = gpus.iter().collect();
        let gpu_ok = gpus.len() == req.accelerator_count as usize
            && distinct.len() == gpus.len()
            && gpus.iter().all(|uuid| {
                !self.gpus_in_use.contains_key(uuid)
                    && self.inventory.gpus.iter().any(|g| {
                        &g.uuid == uuid
                            && g.healthy
                            && matching::gpu_model_matches(req.accelerator_type.as_deref(), &g.name)
                    })
            });
        let placement_ok = !self.draining
            && matching::missing_label(&req.node_selector, &self.placement_labels()).is_none()
            && matching::blocking_taint(&self.taints, &req.tolerations).is_none();
        cpu_ok && mem_ok && gpu_ok && placement_ok
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("run {0} not found")]
    RunNotFound(RunId),
    #[error("run {0} already exists")]
    RunExists(RunId),
    #[error("agent {0} is not registered")]
    AgentNotFound(AgentId),
    #[error(transparent)]
    NotRetryable(#[from] engine::NotRetryable),
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    #[error("node {node} is recorded with store {known:016x}, not {got:016x}")]
    MemberStoreConflict { node: u64, known: u64, got: u64 },
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Approval(#[from] engine::approval::ApprovalError),
    #[error(transparent)]
    Webhook(#[from] notify::WebhookError),
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    RunCreated {
        run_id: RunId,
        existing: bool,
    },
    AgentRegistered,
    /// Placements that took effect; the others were stale.
    Assigned(Vec<Placement>),
    Started,
    /// The report was recorded (or ignored as a duplicate, which the agent also treats as done).
    ResultRecorded(OutcomeEffect),
    CancelRequested,
    /// Whether the task was served from the cache (false: the entry or the task changed
    /// meanwhile, and the task stays ready to run).
    CacheUsed(bool),
    CacheForgotten(usize),
    /// Whether the deadline had passed (false: nothing changed).
    TimedOut(bool),
    Retried,
    /// How many of the tasks were failed as unschedulable.
    Unschedulable(usize),
    /// The agent's drain flag, as now set.
    AgentDraining(bool),
    /// How many running attempts ended LOST with the agent.
    AgentLost(usize),
    /// A token was created (or the first admin token, by bootstrap).
    TokenCreated,
    /// The revoked token's record.
    TokenRevoked(acl::TokenRecord),
    /// The runs removed (those of the command that were still finished).
    RunsRemoved(Vec<RunId>),
    /// How many agents were forgotten.
    AgentsForgotten(usize),
    /// Whether the member's store was new (false: the same record was there already).
    MemberStoreRecorded(bool),
    /// Whether there was a record to forget.
    MemberStoreForgotten(bool),
    /// An experiment, pipeline, version or run's archive flag changed as asked.
    CatalogChanged,
    /// A decision on an approval gate was recorded.
    ApprovalDecided,
    /// A webhook was added or removed, or its delivery mark moved.
    WebhooksChanged,
}

/// Something that happened, for the node's side effects after commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New work may be placeable.
    TasksReady {
        run_id: RunId,
    },
    /// Tell `agent_id` to run this attempt (committed now, so it may act on it).
    AttemptAssigned {
        agent_id: AgentId,
        attempt: AttemptKey,
    },
    /// Tell `agent_id` to stop this attempt.
    AttemptCanceled {
        agent_id: AgentId,
        attempt: AttemptKey,
    },
    RunFinished {
        run_id: RunId,
        state: RunState,
    },
    /// Capacity freed or agents changed.
    CapacityChanged,
    /// Retention removed these runs: each node drops what it keeps of them (step logs).
    RunsRemoved {
        run_ids: Vec<RunId>,
    },
    /// Tell `agent_id` to remove these volumes of the run (deleted, or left when it ended).
    ClaimsReleased {
        agent_id: AgentId,
        run_id: RunId,
        claims: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub result: Result<Outcome, Rejection>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Behind `Arc` so a snapshot's copy of the state costs a pointer per run; a run is copied
    /// only when it changes while a snapshot still holds it.
    pub runs: BTreeMap<RunId, Arc<RunRecord>>,
    /// (created_at, run_id) for listing newest first.
    pub run_order: BTreeSet<(i64, RunId)>,
    /// Client request id → the run it created.
    pub request_ids: BTreeMap<String, RunId>,
    pub agents: BTreeMap<AgentId, AgentRecord>,
    pub applied_index: u64,
    /// Successful cacheable executions by cache key (the newest for each key).
    #[serde(default)]
    pub cache: BTreeMap<String, CacheEntry>,
    /// API tokens. Left out of the encoding while empty, so a state from before tokens existed
    /// encodes as it did.
    #[serde(default, skip_serializing_if = "acl::AclState::is_empty")]
    pub acl: acl::AclState,
    /// Coordinator node id → the store id of the data directory it speaks from. Left out of
    /// the encoding while empty, like `acl`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_stores: BTreeMap<u64, u64>,
    /// Experiments, pipelines and versions (the KFP API's); left out while empty, like `acl`.
    #[serde(default, skip_serializing_if = "catalog::Catalog::is_empty")]
    pub catalog: catalog::Catalog,
    /// Recurring runs by id; left out while empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recurring: BTreeMap<String, crate::schedule::RecurringRun>,
    /// Webhooks and the state changes they have not been sent; left out while empty.
    #[serde(default, skip_serializing_if = "notify::Notifications::is_empty")]
    pub notifications: notify::Notifications,
    /// Derived from `runs`, never encoded.
    #[serde(skip)]
    pub(crate) watch: watch::WatchIndex,
    /// Which pipelines runs share; never encoded.
    #[serde(skip)]
    pipelines: pipelines::SharedPipelines,
}

/// The events an [`engine::advance`] calls for: new ready tasks, a finished run.
fn note_progress(events: &mut Vec<Event>, run_id: &RunId, progress: engine::Progress) {
    if !progress.ready.is_empty() {
        events.push(Event::TasksReady {
            run_id: run_id.clone(),
        });
    }
    if let Some(state) = progress.finished {
        events.push(Event::RunFinished {
            run_id: run_id.clone(),
            state,
        });
    }
    for (agent_id, claims) in progress.released {
        events.push(Event::ClaimsReleased {
            agent_id,
            run_id: run_id.clone(),
            claims,
        });
    }
}

/// Tells the agents running these attempts (task id, attempt, agent) of `run_id` to stop.
fn stop_attempts(events: &mut Vec<Event>, run_id: &RunId, running: Vec<(TaskId, u32, AgentId)>) {
    for (task_id, attempt, agent_id) in running {
        events.push(Event::AttemptCanceled {
            agent_id,
            attempt: AttemptKey {
                run_id: run_id.clone(),
                task_id,
                attempt,
            },
        });
    }
}

fn resources_of(run: &RunRecord, task_id: &TaskId) -> ResourceRequest {
    run.tasks
        .get(task_id)
        .and_then(|t| engine::task_resources(run, t).ok())
        .unwrap_or_default()
}

impl ClusterState {
    pub fn apply(&mut self, index: u64, command: Command) -> Applied {
        self.applied_index = index;
        if !self.watch.is_built() {
            self.watch.build(self.runs.values().map(|r| &**r));
            // A decoded snapshot holds a copy of a pipeline per run.
            for run in self.runs.values_mut() {
                let shared = self.pipelines.share(run.pipeline.clone());
                if !Arc::ptr_eq(&shared, &run.pipeline) {
                    Arc::make_mut(run).pipeline = shared;
                }
            }
        }
        let before = if self.notifications.hooks.is_empty() {
            None
        } else {
            let (runs, at) = self.runs_changed_by(&command);
            notify::Before::take(&self.notifications, &self.runs, runs, at)
        };
        let applied = self.apply_command(command);
        if let Some(before) = before {
            before.record(&mut self.notifications, &self.runs);
        }
        applied
    }

    /// The runs whose state `command` may change, and its time. Every command is named, so a
    /// new one cannot slip past the webhooks unnoticed.
    fn runs_changed_by(&self, command: &Command) -> (Vec<RunId>, i64) {
        match command {
            Command::CreateRun(NewRun { run_id, at, .. })
            | Command::CancelRun { run_id, at }
            | Command::UseCachedResult { run_id, at, .. }
            | Command::RetryRun { run_id, at }
            | Command::TimeOutRun { run_id, at } => (vec![run_id.clone()], *at),
            Command::AttemptStarted { attempt, at }
            | Command::AttemptFinished { attempt, at, .. }
            | Command::TimeOutAttempt { attempt, at } => (vec![attempt.run_id.clone()], *at),
            Command::DecideApproval {
                run_id, decision, ..
            } => (vec![run_id.clone()], decision.at),
            Command::AssignAttempts { placements, at } => {
                let runs: BTreeSet<RunId> = placements.iter().map(|p| p.run_id.clone()).collect();
                (runs.into_iter().collect(), *at)
            }
            Command::FailUnschedulable { tasks, at } => {
                let runs: BTreeSet<RunId> = tasks.iter().map(|u| u.run_id.clone()).collect();
                (runs.into_iter().collect(), *at)
            }
            Command::DeclareAgentLost { agent_id, at } => {
                let runs: BTreeSet<RunId> = self
                    .agents
                    .get(agent_id)
                    .map(|a| a.running.iter().map(|k| k.run_id.clone()).collect())
                    .unwrap_or_default();
                (runs.into_iter().collect(), *at)
            }
            // No run or task changes state.
            Command::RegisterAgent { .. }
            | Command::UpdateInventory { .. }
            | Command::SetAgentDraining { .. }
            | Command::ForgetCache { .. }
            | Command::AclBootstrap { .. }
            | Command::CreateToken { .. }
            | Command::RevokeToken { .. }
            | Command::RemoveRuns { .. }
            | Command::ForgetLostAgents { .. }
            | Command::RecordMemberStore { .. }
            | Command::ForgetMemberStore { .. }
            | Command::CreateExperiment { .. }
            | Command::SetExperimentArchived { .. }
            | Command::DeleteExperiment { .. }
            | Command::CreatePipeline { .. }
            | Command::CreatePipelineVersion { .. }
            | Command::DeletePipeline { .. }
            | Command::DeletePipelineVersion { .. }
            | Command::SetRunArchived { .. }
            | Command::CreateRecurringRun { .. }
            | Command::SetRecurringRunEnabled { .. }
            | Command::DeleteRecurringRun { .. }
            | Command::AddWebhook { .. }
            | Command::RemoveWebhook { .. }
            | Command::WebhookDelivered { .. } => (Vec::new(), 0),
        }
    }

    fn apply_command(&mut self, command: Command) -> Applied {
        let mut events = Vec::new();
        let result = match command {
            Command::CreateRun(new) => self.create_run(new, &mut events),
            Command::RegisterAgent {
                agent_id,
                inventory,
                labels,
                taints,
                at,
            } => {
                let rec = self
                    .agents
                    .entry(agent_id.clone())
                    .or_insert_with(|| AgentRecord {
                        agent_id,
                        inventory: inventory.clone(),
                        labels: labels.clone(),
                        registered_at: at,
                        running: BTreeSet::new(),
                        cpu_allocated: 0.0,
                        memory_allocated: 0,
                        gpus_in_use: BTreeMap::new(),
                        taints: Vec::new(),
                        draining: false,
                        lost_at: None,
                        changes: 0,
                    });
                rec.touch();
                rec.inventory = inventory;
                rec.labels = labels;
                rec.taints = taints;
                rec.lost_at = None;
                events.push(Event::CapacityChanged);
                Ok(Outcome::AgentRegistered)
            }
            Command::DeclareAgentLost { agent_id, at } => {
                let Some(rec) = self.agents.get_mut(&agent_id) else {
                    return Applied {
                        result: Err(Rejection::AgentNotFound(agent_id)),
                        events,
                    };
                };
                rec.lost_at = Some(at);
                rec.touch();
                let running: Vec<AttemptKey> = rec.running.iter().cloned().collect();
                let error = format!("agent {agent_id} was lost: no word from it within its lease");
                for key in &running {
                    let outcome = gantry_model::StepOutcome::Lost {
                        error: error.clone(),
                    };
                    // Finishing releases the attempt's CPU, memory and GPUs on the agent.
                    let _ = self.finish_attempt(key.clone(), outcome, at, &mut events);
                }
                events.push(Event::CapacityChanged);
                Ok(Outcome::AgentLost(running.len()))
            }
            Command::UpdateInventory {
                agent_id,
                inventory,
            } => match self.agents.get_mut(&agent_id) {
                Some(rec) => {
                    rec.inventory = inventory;
                    rec.touch();
                    events.push(Event::CapacityChanged);
                    Ok(Outcome::AgentRegistered)
                }
                None => Err(Rejection::AgentNotFound(agent_id)),
            },
            Command::SetAgentDraining { agent_id, draining } => {
                match self.agents.get_mut(&agent_id) {
                    Some(rec) => {
                        rec.draining = draining;
                        rec.touch();
                        events.push(Event::CapacityChanged);
                        Ok(Outcome::AgentDraining(draining))
                    }
                    None => Err(Rejection::AgentNotFound(agent_id)),
                }
            }
            Command::AssignAttempts { placements, at } => {
                Ok(Outcome::Assigned(self.assign(placements, at, &mut events)))
            }
            Command::AttemptStarted { attempt, at } => {
                match self.runs.get_mut(&attempt.run_id).map(Arc::make_mut) {
                    Some(run) => {
                        engine::record_started(run, &attempt.task_id, attempt.attempt, at);
                        Ok(Outcome::Started)
                    }
                    None => Err(Rejection::RunNotFound(attempt.run_id)),
                }
            }
            Command::AttemptFinished {
                attempt,
                outcome,
                at,
            } => self.finish_attempt(attempt, outcome, at, &mut events),
            Command::UseCachedResult {
                run_id,
                task_id,
                at,
            } => self.use_cached(run_id, task_id, at, &mut events),
            Command::TimeOutRun { run_id, at } => self.time_out_run(run_id, at, &mut events),
            Command::DecideApproval {
                run_id,
                task_id,
                decision,
            } => match self.runs.get_mut(&run_id).map(Arc::make_mut) {
                Some(run) => {
                    let (at, approved) = (decision.at, decision.approved);
                    match engine::approval::decide(run, &task_id, decision) {
                        Ok(()) => {
                            if approved {
                                events.push(Event::TasksReady {
                                    run_id: run_id.clone(),
                                });
                            } else {
                                note_progress(&mut events, &run_id, engine::advance(run, at));
                            }
                            Ok(Outcome::ApprovalDecided)
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                None => Err(Rejection::RunNotFound(run_id)),
            },
            Command::RetryRun { run_id, at } => {
                match self.runs.get_mut(&run_id).map(Arc::make_mut) {
                    Some(run) => match engine::retry_run(run, at) {
                        Ok(()) => {
                            note_progress(&mut events, &run_id, engine::advance(run, at));
                            Ok(Outcome::Retried)
                        }
                        Err(e) => Err(Rejection::NotRetryable(e)),
                    },
                    None => Err(Rejection::RunNotFound(run_id)),
                }
            }
            Command::TimeOutAttempt { attempt, at } => {
                self.time_out_attempt(attempt, at, &mut events)
            }
            Command::FailUnschedulable { tasks, at } => {
                let mut failed = 0;
                for u in tasks {
                    let Some(run) = self.runs.get_mut(&u.run_id).map(Arc::make_mut) else {
                        continue;
                    };
                    if engine::fail_unschedulable(run, &u.task_id, &u.reason, at).is_ok() {
                        failed += 1;
                        note_progress(&mut events, &u.run_id, engine::advance(run, at));
                    }
                }
                Ok(Outcome::Unschedulable(failed))
            }
            Command::ForgetCache { keys } => {
                let before = self.cache.len();
                for k in &keys {
                    self.cache.remove(k);
                }
                // The tasks that waited on these entries can now be placed.
                events.push(Event::CapacityChanged);
                Ok(Outcome::CacheForgotten(before - self.cache.len()))
            }
            Command::AclBootstrap { token } => self
                .acl
                .bootstrap(token)
                .map(|()| Outcome::TokenCreated)
                .map_err(Rejection::from),
            Command::CreateToken { token } => self
                .acl
                .create(token)
                .map(|()| Outcome::TokenCreated)
                .map_err(Rejection::from),
            Command::RevokeToken { accessor } => self
                .acl
                .revoke(&accessor)
                .map(Outcome::TokenRevoked)
                .map_err(Rejection::from),
            Command::RemoveRuns { run_ids } => {
                let removed = self.remove_runs(&run_ids);
                if !removed.is_empty() {
                    events.push(Event::RunsRemoved {
                        run_ids: removed.clone(),
                    });
                }
                Ok(Outcome::RunsRemoved(removed))
            }
            Command::ForgetLostAgents { agent_ids } => {
                let before = self.agents.len();
                for id in &agent_ids {
                    let idle_and_lost = self.agents.get(id).is_some_and(|a| {
                        a.lost_at.is_some() && a.running.is_empty() && a.gpus_in_use.is_empty()
                    });
                    if idle_and_lost {
                        self.agents.remove(id);
                    }
                }
                Ok(Outcome::AgentsForgotten(before - self.agents.len()))
            }
            Command::RecordMemberStore { node, store } => match self.member_stores.get(&node) {
                None => {
                    self.member_stores.insert(node, store);
                    Ok(Outcome::MemberStoreRecorded(true))
                }
                Some(known) if *known == store => Ok(Outcome::MemberStoreRecorded(false)),
                Some(known) => Err(Rejection::MemberStoreConflict {
                    node,
                    known: *known,
                    got: store,
                }),
            },
            Command::ForgetMemberStore { node } => Ok(Outcome::MemberStoreForgotten(
                self.member_stores.remove(&node).is_some(),
            )),
            Command::CreateExperiment { .. }
            | Command::SetExperimentArchived { .. }
            | Command::DeleteExperiment { .. }
            | Command::CreatePipeline { .. }
            | Command::CreatePipelineVersion { .. }
            | Command::DeletePipeline { .. }
            | Command::DeletePipelineVersion { .. }
            | Command::SetRunArchived { .. }
            | Command::CreateRecurringRun { .. }
            | Command::SetRecurringRunEnabled { .. }
            | Command::DeleteRecurringRun { .. } => self
                .apply_catalog(command)
                .map(|()| Outcome::CatalogChanged),
            Command::AddWebhook { hook } => self
                .notifications
                .add(hook)
                .map(|()| Outcome::WebhooksChanged)
                .map_err(Rejection::from),
            Command::RemoveWebhook { id } => self
                .notifications
                .remove(&id)
                .map(|_| Outcome::WebhooksChanged)
                .map_err(Rejection::from),
            Command::WebhookDelivered { id, upto } => self
                .notifications
                .delivered(&id, upto)
                .map(|()| Outcome::WebhooksChanged)
                .map_err(Rejection::from),
            Command::CancelRun { run_id, at } => {
                match self.runs.get_mut(&run_id).map(Arc::make_mut) {
                    Some(run) => {
                        stop_attempts(&mut events, &run_id, engine::cancel_run(run, at));
                        note_progress(&mut events, &run_id, engine::advance(run, at));
                        Ok(Outcome::CancelRequested)
                    }
                    None => Err(Rejection::RunNotFound(run_id)),
                }
            }
        };
        Applied { result, events }
    }

    #[allow(clippy::too_many_arguments)]
    /// How many runs of recurring run `id` are not finished.
    pub fn active_runs_of(&self, id: &str) -> usize {
        self.runs
            .values()
            .filter(|r| {
                !r.state.is_terminal()
                    && r.info
                        .as_ref()
                        .is_some_and(|i| i.recurring_run_id.as_deref() == Some(id))
            })
            .count()
    }

    /// The catalog's commands (experiments, pipelines, versions, archive flags, recurring
    /// runs).
    fn apply_catalog(&mut self, command: Command) -> Result<(), Rejection> {
        match command {
            Command::CreateExperiment { experiment } => {
                self.catalog.create_experiment(experiment)?
            }
            Command::SetExperimentArchived {
                experiment_id,
                archived,
            } => {
                self.catalog
                    .set_experiment_archived(&experiment_id, archived)?;
                if archived {
                    let ids: Vec<RunId> = self
                        .runs
                        .iter()
                        .filter(|(_, r)| {
                            r.info.as_ref().is_some_and(|i| {
                                !i.archived && i.experiment_id.as_ref() == Some(&experiment_id)
                            })
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in ids {
                        if let Some(info) = self
                            .runs
                            .get_mut(&id)
                            .map(Arc::make_mut)
                            .and_then(|r| r.info.as_mut())
                        {
                            info.archived = true;
                        }
                    }
                }
            }
            Command::DeleteExperiment { experiment_id } => {
                let runs = catalog::runs_in_experiment(
                    self.runs.iter().map(|(id, r)| (id, r.info.as_deref())),
                    &experiment_id,
                );
                let schedules = self
                    .recurring
                    .values()
                    .filter(|s| s.experiment_id == experiment_id)
                    .count();
                if schedules > 0 && self.catalog.experiments.contains_key(&experiment_id) {
                    return Err(catalog::CatalogError::ExperimentHasSchedules {
                        id: experiment_id,
                        schedules,
                    }
                    .into());
                }
                self.catalog.delete_experiment(&experiment_id, runs)?
            }
            Command::CreateRecurringRun { recurring } => {
                use catalog::CatalogError as E;
                catalog::check_id("recurring_run_id", &recurring.id)?;
                catalog::check_name("display_name", &recurring.display_name)?;
                catalog::check_description(&recurring.description)?;
                crate::schedule::check_trigger(&recurring.trigger).map_err(E::Invalid)?;
                if self.recurring.len() >= catalog::MAX_RECORDS {
                    return Err(E::Full {
                        what: "recurring runs",
                        max: catalog::MAX_RECORDS,
                    }
                    .into());
                }
                if self.recurring.contains_key(&recurring.id) {
                    return Err(E::IdTaken {
                        what: format!("recurring run {}", recurring.id),
                    }
                    .into());
                }
                if !self
                    .catalog
                    .experiments
                    .contains_key(&recurring.experiment_id)
                {
                    return Err(E::ExperimentNotFound(recurring.experiment_id.clone()).into());
                }
                self.recurring.insert(recurring.id.clone(), *recurring);
            }
            Command::SetRecurringRunEnabled { id, enabled, at } => {
                let s = self
                    .recurring
                    .get_mut(&id)
                    .ok_or(catalog::CatalogError::RecurringRunNotFound(id))?;
                s.enabled = enabled;
                s.updated_at = at;
            }
            Command::DeleteRecurringRun { id } => {
                self.recurring
                    .remove(&id)
                    .ok_or(catalog::CatalogError::RecurringRunNotFound(id))?;
            }
            Command::CreatePipeline { pipeline, version } => self
                .catalog
                .create_pipeline(pipeline, version.map(|v| *v))?,
            Command::CreatePipelineVersion { version } => self.catalog.create_version(*version)?,
            Command::DeletePipeline {
                pipeline_id,
                cascade,
            } => self.catalog.delete_pipeline(&pipeline_id, cascade)?,
            Command::DeletePipelineVersion {
                pipeline_id,
                pipeline_version_id,
            } => self
                .catalog
                .delete_version(&pipeline_id, &pipeline_version_id)?,
            Command::SetRunArchived { run_id, archived } => {
                let run = self
                    .runs
                    .get_mut(&run_id)
                    .map(Arc::make_mut)
                    .ok_or_else(|| Rejection::RunNotFound(run_id.clone()))?;
                run.info.get_or_insert_with(Default::default).archived = archived;
            }
            _ => {}
        }
        Ok(())
    }

    fn create_run(&mut self, new: NewRun, events: &mut Vec<Event>) -> Result<Outcome, Rejection> {
        let NewRun {
            run_id,
            request_id,
            pipeline,
            pipeline_root,
            parameters,
            artifacts,
            at,
            caching,
            limits,
            priority,
            uri_policy,
            info,
            request_window_ms,
        } = new;
        if let Some(existing) = request_id.as_ref().and_then(|r| self.request_ids.get(r)) {
            // Past its window, the id names nothing: a new run takes it over.
            let expired = request_window_ms.is_some_and(|w| {
                self.runs
                    .get(existing)
                    .is_some_and(|r| at.saturating_sub(r.created_at) > w)
            });
            if !expired {
                return Ok(Outcome::RunCreated {
                    run_id: existing.clone(),
                    existing: true,
                });
            }
        }
        if self.runs.contains_key(&run_id) {
            return Err(Rejection::RunExists(run_id));
        }
        if let Some(e) = info.as_ref().and_then(|i| i.experiment_id.as_ref()) {
            if !self.catalog.experiments.contains_key(e) {
                return Err(catalog::CatalogError::ExperimentNotFound(e.clone()).into());
            }
        }
        // A recurring run's firing: its tick must come after the last one fired, with a slot.
        let fired = info
            .as_ref()
            .and_then(|i| Some((i.recurring_run_id.clone()?, i.scheduled_at?)));
        if let Some((id, tick)) = &fired {
            let active = self.active_runs_of(id);
            let s = self
                .recurring
                .get(id)
                .ok_or_else(|| catalog::CatalogError::RecurringRunNotFound(id.clone()))?;
            s.may_fire(*tick, active)
                .map_err(catalog::CatalogError::NotFired)?;
        }
        let pipeline = self.pipelines.share(pipeline);
        let mut run = RunRecord::new(run_id.clone(), pipeline, pipeline_root, parameters, at);
        if let Some(root) = run.tasks.get_mut(engine::ROOT_TASK_ID) {
            root.inputs.artifacts = artifacts;
        }
        run.caching = caching;
        run.limits = limits;
        run.priority = priority;
        run.uri_policy = uri_policy;
        run.info = info;
        if let Some((id, tick)) = fired {
            if let Some(s) = self.recurring.get_mut(&id) {
                s.last_fired = Some(tick);
            }
        }
        note_progress(events, &run_id, engine::advance(&mut run, at));
        if let Some(r) = request_id {
            self.request_ids.insert(r, run_id.clone());
        }
        self.run_order.insert((at, run_id.clone()));
        self.watch.add(&run);
        self.runs.insert(run_id.clone(), Arc::new(run));
        Ok(Outcome::RunCreated {
            run_id,
            existing: false,
        })
    }

    fn assign(
        &mut self,
        placements: Vec<Placement>,
        at: i64,
        events: &mut Vec<Event>,
    ) -> Vec<Placement> {
        let mut done = Vec::new();
        for p in placements {
            let Some(run) = self.runs.get_mut(&p.run_id).map(Arc::make_mut) else {
                continue;
            };
            let Some(agent) = self.agents.get_mut(&p.agent_id) else {
                continue;
            };
            let req = resources_of(run, &p.task_id);
            if !agent.fits(&req, &p.gpus) {
                continue;
            }
            if engine::record_assignment(run, &p.task_id, p.attempt, &p.agent_id, &p.gpus, at)
                .is_err()
            {
                continue;
            }
            agent.touch();
            agent.cpu_allocated += req.cpu_reserved();
            agent.memory_allocated = agent.memory_allocated.saturating_add(req.memory_reserved());
            let key = AttemptKey {
                run_id: p.run_id.clone(),
                task_id: p.task_id.clone(),
                attempt: p.attempt,
            };
            for uuid in &p.gpus {
                agent.gpus_in_use.insert(uuid.clone(), key.clone());
            }
            agent.running.insert(key.clone());
            events.push(Event::AttemptAssigned {
                agent_id: p.agent_id.clone(),
                attempt: key,
            });
            done.push(p);
        }
        done
    }

    fn release(&mut self, agent_id: &AgentId, key: &AttemptKey, req: &ResourceRequest) {
        if let Some(agent) = self.agents.get_mut(agent_id) {
            if agent.running.remove(key) {
                agent.touch();
                agent.cpu_allocated = (agent.cpu_allocated - req.cpu_reserved()).max(0.0);
                agent.memory_allocated =
                    agent.memory_allocated.saturating_sub(req.memory_reserved());
                agent.gpus_in_use.retain(|_, k| k != key);
            }
        }
    }

    fn finish_attempt(
        &mut self,
        key: AttemptKey,
        outcome: gantry_model::StepOutcome,
        at: i64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome, Rejection> {
        let Some(run) = self.runs.get_mut(&key.run_id).map(Arc::make_mut) else {
            return Err(Rejection::RunNotFound(key.run_id));
        };
        let agent = run
            .tasks
            .get(&key.task_id)
            .and_then(|t| t.attempts.iter().find(|a| a.number == key.attempt))
            .map(|a| a.agent.clone());
        let effect = engine::record_outcome(run, &key.task_id, key.attempt, outcome, at);
        if matches!(effect, OutcomeEffect::Ignored(_)) {
            return Ok(Outcome::ResultRecorded(effect));
        }
        let req = resources_of(run, &key.task_id);
        if let Some(t) = run.tasks.get(&key.task_id) {
            if let (TaskState::Succeeded, Some(k)) = (t.state, &t.cache_key) {
                self.cache.insert(
                    k.clone(),
                    CacheEntry {
                        run_id: key.run_id.clone(),
                        task_id: key.task_id.clone(),
                        outputs: t.outputs.clone(),
                        created_at: at,
                    },
                );
            }
        }
        if matches!(effect, OutcomeEffect::Retrying { .. }) {
            // The retry waits out its backoff: the scheduler must look again then.
            events.push(Event::TasksReady {
                run_id: key.run_id.clone(),
            });
        }
        note_progress(
            events,
            &key.run_id,
            engine::advance_from(run, &key.task_id, at),
        );
        if let Some(agent_id) = agent {
            self.release(&agent_id, &key, &req);
        }
        events.push(Event::CapacityChanged);
        Ok(Outcome::ResultRecorded(effect))
    }

    /// The cache entry ready task `task_id` of `run_id` may use at `now`, if any.
    pub fn usable_cache_entry(
        &self,
        run_id: &RunId,
        task_id: &TaskId,
        now: i64,
    ) -> Option<&CacheEntry> {
        let run = self.runs.get(run_id)?;
        let task = run.tasks.get(task_id)?;
        self.usable_cache_entry_for(run, task, now)
    }

    /// [`Self::usable_cache_entry`] for a run and task in hand: the scheduler's walks call it
    /// for every ready task, and looking both up again by name was a tenth of the leader's CPU
    /// under a stream of submissions.
    pub fn usable_cache_entry_for(
        &self,
        run: &RunRecord,
        task: &engine::TaskRecord,
        now: i64,
    ) -> Option<&CacheEntry> {
        if task.state != TaskState::Ready {
            return None;
        }
        let entry = self.cache.get(task.cache_key.as_ref()?)?;
        entry.usable_by(run, task, now).then_some(entry)
    }

    fn use_cached(
        &mut self,
        run_id: RunId,
        task_id: TaskId,
        at: i64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome, Rejection> {
        if !self.runs.contains_key(&run_id) {
            return Err(Rejection::RunNotFound(run_id));
        }
        // Re-checked here: the entry may have been forgotten or the task canceled since the
        // leader looked.
        let Some(entry) = self.usable_cache_entry(&run_id, &task_id, at).cloned() else {
            events.push(Event::TasksReady { run_id });
            return Ok(Outcome::CacheUsed(false));
        };
        let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) else {
            return Err(Rejection::RunNotFound(run_id));
        };
        if !engine::record_cached(run, &task_id, &entry, at) {
            return Ok(Outcome::CacheUsed(false));
        }
        note_progress(events, &run_id, engine::advance(run, at));
        Ok(Outcome::CacheUsed(true))
    }

    fn time_out_run(
        &mut self,
        run_id: RunId,
        at: i64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome, Rejection> {
        let Some(run) = self.runs.get_mut(&run_id).map(Arc::make_mut) else {
            return Err(Rejection::RunNotFound(run_id));
        };
        let Some(running) = engine::time_out_run(run, at) else {
            return Ok(Outcome::TimedOut(false));
        };
        stop_attempts(events, &run_id, running);
        note_progress(events, &run_id, engine::advance(run, at));
        Ok(Outcome::TimedOut(true))
    }

    /// Fails the attempt as timed out (its retry policy applies) and stops its container.
    fn time_out_attempt(
        &mut self,
        key: AttemptKey,
        at: i64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome, Rejection> {
        let Some(run) = self.runs.get(&key.run_id) else {
            return Err(Rejection::RunNotFound(key.run_id));
        };
        let Some(task) = run.tasks.get(&key.task_id) else {
            return Ok(Outcome::TimedOut(false));
        };
        let due = engine::attempt_deadline(run, task)
            .is_some_and(|(n, deadline)| n == key.attempt && deadline <= at);
        let limit = run.limits.task_timeout_ms.get(&task.name).copied();
        let agent = task.attempts.last().map(|a| a.agent.clone());
        let (true, Some(limit), Some(agent_id)) = (due, limit, agent) else {
            return Ok(Outcome::TimedOut(false));
        };
        let outcome = gantry_model::StepOutcome::Failed {
            error: format!("timed out after {}", engine::human_ms(limit)),
            exit_code: None,
        };
        self.finish_attempt(key.clone(), outcome, at, events)?;
        events.push(Event::AttemptCanceled {
            agent_id,
            attempt: key,
        });
        Ok(Outcome::TimedOut(true))
    }

    /// Removes the runs of `run_ids` that are finished, with their request ids and the cache
    /// entries they produced; returns the ones removed.
    /// Removes the finished runs of `run_ids` that no agent still works for; returns them.
    fn remove_runs(&mut self, run_ids: &[RunId]) -> Vec<RunId> {
        let busy = self.runs_on_agents();
        let mut removed = Vec::new();
        for id in run_ids {
            let Some(run) = self.runs.get(id) else {
                continue;
            };
            if !run.state.is_terminal() || busy.contains(id) {
                continue;
            }
            self.run_order.remove(&(run.created_at, id.clone()));
            self.watch.remove(run);
            self.runs.remove(id);
            removed.push(id.clone());
        }
        if !removed.is_empty() {
            let gone: BTreeSet<&RunId> = removed.iter().collect();
            self.request_ids.retain(|_, run| !gone.contains(run));
            self.cache.retain(|_, entry| !gone.contains(&entry.run_id));
        }
        removed
    }

    /// Every artifact URI a run or a cache entry refers to (a task's inputs and outputs: a
    /// cached result and a later run's input may point into another run's prefix).
    pub fn artifact_uris_in_use(&self) -> BTreeSet<&str> {
        let runs = self
            .runs
            .values()
            .flat_map(|r| r.tasks.values())
            .flat_map(|t| {
                t.inputs
                    .artifacts
                    .values()
                    .chain(t.outputs.artifacts.values())
                    .flatten()
                    .map(|a| a.uri.as_str())
            });
        let cached = self.cache.values().flat_map(|e| e.artifact_uris());
        runs.chain(cached).collect()
    }

    /// Runs of which an agent still holds an attempt (its result, when it comes, must find
    /// the run to free the agent's resources).
    pub fn runs_on_agents(&self) -> BTreeSet<RunId> {
        self.agents
            .values()
            .flat_map(|a| a.running.iter().map(|k| k.run_id.clone()))
            .collect()
    }

    /// Runs newest first.
    pub fn runs_newest_first(&self) -> impl Iterator<Item = &RunRecord> {
        self.run_order
            .iter()
            .rev()
            .filter_map(|(_, id)| self.runs.get(id).map(|r| &**r))
    }

    pub fn active_runs(&self) -> usize {
        self.runs
            .values()
            .filter(|r| !r.state.is_terminal())
            .count()
    }
}

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod tests;
