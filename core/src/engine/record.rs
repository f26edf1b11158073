//! Recording what happened to attempts: assignment, start, outcome, cancellation.

use gantry_model::{AgentId, RunId, StepOutcome, TaskId};

use super::advance::component;
use super::{AttemptRecord, RunRecord, RunState, TaskKind, TaskRecord, TaskState};
use crate::ir::{Implementation, TaskSpec};

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeEffect {
    /// The result was recorded; the task is done.
    Recorded,
    /// The attempt failed and the retry policy allows another one.
    Retrying { next_attempt: u32, not_before: i64 },
    /// Not the current attempt, or already recorded: nothing changed.
    Ignored(AttemptError),
}

/// Why an assignment, a start or a result does not apply to a task as it is now: placements
/// and reports made on an older state arrive late, and are then left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The run has ended or is being canceled: nothing more is placed.
    #[error("run is {0}")]
    RunNotActive(RunState),
    #[error("no task {0:?}")]
    NoTask(TaskId),
    #[error("task {task:?} is {state}, not READY")]
    NotReady { task: TaskId, state: TaskState },
    #[error("attempt {attempt} is not the next one ({expected})")]
    NotNext { attempt: u32, expected: u32 },
    #[error("attempt {attempt} is not the current attempt ({current:?})")]
    NotCurrent { attempt: u32, current: Option<u32> },
    #[error("attempt {0} already has a result")]
    AlreadyRecorded(u32),
}

/// A run that is not FAILED or CANCELED cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run_id} is {state}: only a FAILED or CANCELED run can be retried")]
pub struct NotRetryable {
    pub run_id: RunId,
    pub state: RunState,
}

/// Attempts of one task that may be lost with their agents before the task fails: apart from
/// (and on top of) its retry policy.
pub const MAX_LOST_ATTEMPTS: u32 = 3;

/// The IR spec of a task record, found through its parent DAG.
pub fn task_spec<'a>(run: &'a RunRecord, rec: &TaskRecord) -> Option<&'a TaskSpec> {
    let parent_comp = match &rec.parent {
        None => &run.pipeline.root,
        Some(p) => component(&run.pipeline, &run.tasks.get(p)?.component)?,
    };
    match &parent_comp.implementation {
        Implementation::Dag(d) => d.tasks.get(&rec.name),
        Implementation::Executor(_) => None,
    }
}

/// The READY container task `task_id` of a run still going: what placement acts on.
fn ready_container<'a>(
    run: &'a mut RunRecord,
    task_id: &TaskId,
) -> Result<&'a mut TaskRecord, AttemptError> {
    if run.state.is_terminal() || run.state == RunState::Canceling {
        return Err(AttemptError::RunNotActive(run.state));
    }
    let rec = run
        .tasks
        .get_mut(task_id)
        .ok_or_else(|| AttemptError::NoTask(task_id.clone()))?;
    if rec.kind != TaskKind::Container || rec.state != TaskState::Ready {
        return Err(AttemptError::NotReady {
            task: task_id.clone(),
            state: rec.state,
        });
    }
    Ok(rec)
}

/// Commits the placement of the next attempt of a ready task.
pub fn record_assignment(
    run: &mut RunRecord,
    task_id: &TaskId,
    attempt: u32,
    agent: &AgentId,
    gpus: &[String],
    now: i64,
) -> Result<(), AttemptError> {
    let rec = ready_container(run, task_id)?;
    let expected = rec.attempts.len() as u32 + 1;
    if attempt != expected {
        return Err(AttemptError::NotNext { attempt, expected });
    }
    rec.attempts.push(AttemptRecord {
        number: attempt,
        agent: agent.clone(),
        gpus: gpus.to_vec(),
        assigned_at: now,
        started_at: None,
        finished_at: None,
        outcome: None,
    });
    rec.state = TaskState::Running;
    rec.started_at.get_or_insert(now);
    rec.not_before = None;
    if run.state == RunState::Pending {
        run.state = RunState::Running;
    }
    super::claims::settle(run, task_id, agent);
    Ok(())
}

fn current_running<'a>(
    run: &'a mut RunRecord,
    task_id: &TaskId,
    attempt: u32,
) -> Result<&'a mut TaskRecord, AttemptError> {
    let rec = run
        .tasks
        .get_mut(task_id)
        .ok_or_else(|| AttemptError::NoTask(task_id.clone()))?;
    let current = rec.attempts.last().map(|a| a.number);
    if current != Some(attempt) {
        return Err(AttemptError::NotCurrent { attempt, current });
    }
    if rec.state != TaskState::Running || rec.attempts.last().is_some_and(|a| a.outcome.is_some()) {
        return Err(AttemptError::AlreadyRecorded(attempt));
    }
    Ok(rec)
}

/// Notes that the agent started the container of an attempt.
pub fn record_started(run: &mut RunRecord, task_id: &TaskId, attempt: u32, now: i64) -> bool {
    match current_running(run, task_id, attempt) {
        Ok(rec) => {
            if let Some(a) = rec.attempts.last_mut() {
                a.started_at.get_or_insert(now);
            }
            true
        }
        Err(_) => false,
    }
}

fn backoff_ms(spec: Option<&TaskSpec>, failed_attempt: u32) -> Option<i64> {
    let policy = spec?.retry.as_ref()?;
    if failed_attempt > policy.max_retry_count {
        return None;
    }
    let base = policy.backoff_duration_ms as f64;
    let factor = if policy.backoff_factor > 0.0 {
        policy.backoff_factor
    } else {
        2.0
    };
    let exp = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let mut delay = base * factor.powi(exp);
    if policy.backoff_max_duration_ms > 0 {
        delay = delay.min(policy.backoff_max_duration_ms as f64);
    }
    Some(delay.clamp(0.0, 86_400_000.0) as i64)
}

/// Records the outcome of an attempt. Only the current attempt of a running task counts: a
/// late or duplicate report changes nothing. Call [`super::advance`] afterwards.
pub fn record_outcome(
    run: &mut RunRecord,
    task_id: &TaskId,
    attempt: u32,
    outcome: StepOutcome,
    now: i64,
) -> OutcomeEffect {
    let outcome = super::outcome_check::confine_outcome(
        &run.pipeline_root,
        &run.run_id,
        task_id,
        attempt,
        outcome,
    );
    let retry_delay = run
        .tasks
        .get(task_id)
        .and_then(|rec| backoff_ms(task_spec(run, rec), attempt));
    let canceling = run.state == RunState::Canceling;
    let rec = match current_running(run, task_id, attempt) {
        Ok(rec) => rec,
        Err(why) => return OutcomeEffect::Ignored(why),
    };
    if let Some(a) = rec.attempts.last_mut() {
        a.finished_at = Some(now);
        a.outcome = Some(outcome.clone());
    }
    let mut first_error = None;
    let effect = match outcome {
        StepOutcome::Succeeded {
            parameters,
            artifacts,
        } => {
            rec.outputs.parameters = parameters;
            rec.outputs.artifacts = artifacts;
            rec.state = TaskState::Succeeded;
            rec.error = None;
            rec.finished_at = Some(now);
            OutcomeEffect::Recorded
        }
        StepOutcome::Canceled => {
            rec.state = TaskState::Canceled;
            rec.error = Some("canceled".into());
            rec.finished_at = Some(now);
            OutcomeEffect::Recorded
        }
        StepOutcome::Lost { error } => {
            // Losing a host says nothing about the step: its own retry policy is left alone,
            // and a separate allowance keeps a step that kills its hosts from going round.
            let lost = rec
                .attempts
                .iter()
                .filter(|a| matches!(a.outcome, Some(StepOutcome::Lost { .. })))
                .count() as u32;
            if lost <= MAX_LOST_ATTEMPTS && !canceling {
                rec.state = TaskState::Ready;
                rec.error = Some(error);
                rec.not_before = None;
                OutcomeEffect::Retrying {
                    next_attempt: attempt + 1,
                    not_before: now,
                }
            } else if canceling {
                rec.state = TaskState::Canceled;
                rec.error = Some(error);
                rec.finished_at = Some(now);
                OutcomeEffect::Recorded
            } else {
                let error = format!("{error} ({lost} attempts lost with their agents)");
                first_error = Some(format!("task {task_id:?} failed: {error}"));
                rec.state = TaskState::Failed;
                rec.error = Some(error);
                rec.finished_at = Some(now);
                OutcomeEffect::Recorded
            }
        }
        StepOutcome::Failed { error, .. } => match retry_delay.filter(|_| !canceling) {
            Some(delay) => {
                rec.state = TaskState::Ready;
                rec.error = Some(error);
                rec.not_before = Some(now + delay);
                OutcomeEffect::Retrying {
                    next_attempt: attempt + 1,
                    not_before: now + delay,
                }
            }
            None => {
                first_error = Some(format!("task {task_id:?} failed: {error}"));
                rec.state = TaskState::Failed;
                rec.error = Some(error);
                rec.finished_at = Some(now);
                OutcomeEffect::Recorded
            }
        },
    };
    if run.error.is_none() {
        run.error = first_error;
    }
    effect
}

/// Fails a ready container task that no agent of the fleet could ever run (placement found it
/// unschedulable): waiting would never end. Not retried: no attempt was made, and another
/// attempt would meet the same fleet.
pub fn fail_unschedulable(
    run: &mut RunRecord,
    task_id: &TaskId,
    reason: &str,
    now: i64,
) -> Result<(), AttemptError> {
    let rec = ready_container(run, task_id)?;
    let error = format!("unschedulable: {reason}");
    rec.state = TaskState::Failed;
    rec.error = Some(error.clone());
    rec.finished_at = Some(now);
    if run.error.is_none() {
        run.error = Some(format!("task {task_id:?} failed: {error}"));
    }
    Ok(())
}

/// Starts canceling a run: tasks not yet running are canceled now; the returned running
/// attempts (task id, attempt, agent) must be stopped on their agents, and their reports
/// finish the cancellation.
pub fn cancel_run(run: &mut RunRecord, now: i64) -> Vec<(TaskId, u32, AgentId)> {
    cancel_run_because(run, now, "run canceled")
}

/// [`cancel_run`], with `reason` as the error of the tasks it cancels.
pub(crate) fn cancel_run_because(
    run: &mut RunRecord,
    now: i64,
    reason: &str,
) -> Vec<(TaskId, u32, AgentId)> {
    if run.state.is_terminal() || run.state == RunState::Canceling {
        return Vec::new();
    }
    run.state = RunState::Canceling;
    let mut running = Vec::new();
    for rec in run.tasks.values_mut() {
        match (rec.kind, rec.state) {
            (TaskKind::Container, TaskState::Ready) => {
                rec.state = TaskState::Canceled;
                rec.error = Some(reason.into());
                rec.finished_at = Some(now);
            }
            (TaskKind::Container, TaskState::Running) => {
                if let Some(a) = rec.attempts.last() {
                    running.push((rec.task_id.clone(), a.number, a.agent.clone()));
                }
            }
            _ => {}
        }
    }
    running
}

/// Puts a FAILED or CANCELED run back to work from where it failed: tasks that succeeded (or
/// were served from the cache) keep their outputs; every other task is forgotten and decided
/// again, so it runs anew with the same inputs. The DAGs and loops around kept tasks run
/// again. Call [`super::advance`] afterwards.
pub fn retry_run(run: &mut RunRecord, now: i64) -> Result<(), NotRetryable> {
    if !matches!(run.state, RunState::Failed | RunState::Canceled) {
        return Err(NotRetryable {
            run_id: run.run_id.clone(),
            state: run.state,
        });
    }
    // DAGs (and loops) that contain a kept task stay, reopened; the rest goes.
    let mut reopen: std::collections::BTreeSet<TaskId> = std::collections::BTreeSet::new();
    reopen.insert(TaskId::from(super::ROOT_TASK_ID));
    for t in run.tasks.values().filter(|t| t.state.is_success()) {
        let mut parent = t.parent.clone();
        while let Some(p) = parent {
            parent = run.tasks.get(&p).and_then(|r| r.parent.clone());
            reopen.insert(p);
        }
    }
    run.tasks
        .retain(|id, t| t.state.is_success() || reopen.contains(id));
    for id in &reopen {
        if let Some(t) = run.tasks.get_mut(id) {
            if !t.state.is_success() {
                t.state = TaskState::Running;
                t.error = None;
                t.finished_at = None;
                t.outputs = Default::default();
            }
        }
    }
    run.state = RunState::Running;
    run.error = None;
    run.finished_at = None;
    run.timed_out = None;
    // A retried run gets its full time again.
    run.restarted_at = Some(now);
    Ok(())
}
