//! RunService: submit, get, list, cancel, logs.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use gantry_core::engine::{check_host_rules, check_supported, CachePolicy, RunLimits};
use gantry_core::ir::bounds::{check_pipeline_size, check_submission};
use gantry_core::ir::{parse_pipeline, resolve_run_artifacts, resolve_run_parameters};
use gantry_core::state::{Command, NewRun, Outcome};
use gantry_model::{RunId, TaskId};
use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_proto::v1::run_service_server::RunService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::run_to_proto;
use super::status::ApiError;
use super::{forwarded, relay, Api, ROUTE_WAIT};
use crate::logs::{LogRecord, PAGE_LINES};
use crate::server::Route;

impl Api {
    /// Checks and creates a run (on the leader): `yaml` the pipeline, `given` its parameters
    /// (JSON values, converted to the types the pipeline declares), `opts` the rest of a
    /// submission (its pipeline and parameters are not read), `info` what the KFP API
    /// attaches. Returns the run's id and whether its request id named an existing run.
    pub(crate) async fn submit(
        &self,
        yaml: &str,
        given: BTreeMap<String, serde_json::Value>,
        opts: &pb::SubmitRunRequest,
        info: Option<gantry_core::state::catalog::RunInfo>,
        request_window_ms: Option<i64>,
    ) -> Result<(RunId, bool), ApiError> {
        let bounds = self.0.submit_limits;
        check_pipeline_size(yaml.len(), &bounds).map_err(ApiError::OverLimit)?;
        let shared = self.0.parsed.get_or_parse(
            yaml,
            |y| parse_pipeline(y).map_err(ApiError::InvalidPipeline),
            |p| {
                check_supported(p).map_err(ApiError::UnsupportedPipeline)?;
                check_host_rules(p, &self.0.uri_policy).map_err(ApiError::HostRefusal)
            },
        )?;
        let pipeline: &gantry_core::ir::PipelineSpec = &shared;
        let caching = cache_policy(pipeline, opts)?;
        let limits = run_limits(pipeline, opts, &bounds)?;
        let parameters =
            resolve_run_parameters(pipeline, &given).map_err(ApiError::InvalidParameters)?;
        check_submission(pipeline, &parameters, &bounds).map_err(ApiError::OverLimit)?;
        let given_artifacts: BTreeMap<String, String> = opts
            .artifacts
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let artifacts = resolve_run_artifacts(pipeline, &given_artifacts, &self.0.uri_policy)
            .map_err(ApiError::InvalidArtifacts)?;
        let request_id = (!opts.request_id.is_empty()).then(|| opts.request_id.clone());
        let cmd = Command::CreateRun(NewRun {
            run_id: uuid::Uuid::new_v4().to_string().into(),
            request_id,
            pipeline: shared.clone(),
            pipeline_root: self.0.artifact_root.clone(),
            parameters,
            artifacts,
            at: crate::now_ms(),
            caching,
            limits,
            priority: opts.priority,
            uri_policy: Some(self.0.uri_policy.clone()),
            info: info.map(Box::new),
            request_window_ms,
        });
        match self.0.propose(cmd).await?.result {
            Ok(Outcome::RunCreated { run_id, existing }) => Ok((run_id, existing)),
            Ok(other) => Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            Err(r) => Err(ApiError::from(r)),
        }
    }

    /// Commits `cmd` (on the leader) and answers with run `run_id` as it is then.
    async fn change_run(&self, run_id: &RunId, cmd: Command) -> Result<Response<pb::Run>, Status> {
        self.0.propose(cmd).await?.result.map_err(ApiError::from)?;
        Ok(Response::new(self.run_proto(run_id)?))
    }

    /// The task of `run_id` that `task` names: a task id, or an IR task name that one task has.
    fn task_named(&self, run_id: &RunId, task: &str) -> Result<TaskId, ApiError> {
        let st = self.0.state.read();
        let run = st
            .runs
            .get(run_id)
            .ok_or_else(|| ApiError::RunNotFound(run_id.clone()))?;
        if run.tasks.contains_key(&TaskId::from(task)) {
            return Ok(TaskId::from(task));
        }
        let named: Vec<&TaskId> = run
            .tasks
            .values()
            .filter(|t| t.name == task)
            .map(|t| &t.task_id)
            .collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ApiError::UnknownRunTask {
                run: run_id.clone(),
                task: task.to_string(),
            }),
            many => Err(ApiError::AmbiguousTask {
                task: task.to_string(),
                ids: many
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    fn run_proto(&self, run_id: &RunId) -> Result<pb::Run, ApiError> {
        let waiting = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let st = self.0.state.read();
        st.runs
            .get(run_id)
            .map(|r| run_to_proto(r, &waiting))
            .ok_or_else(|| ApiError::RunNotFound(run_id.clone()))
    }
}

/// Checks a per-task setting: the task must exist in the pipeline, the value be positive.
fn check_per_task(
    pipeline: &gantry_core::ir::PipelineSpec,
    setting: &'static str,
    values: &std::collections::HashMap<String, i64>,
) -> Result<(), ApiError> {
    let mut names = std::collections::BTreeSet::new();
    for comp in std::iter::once(&pipeline.root).chain(pipeline.components.values()) {
        if let gantry_core::ir::Implementation::Dag(d) = &comp.implementation {
            names.extend(d.tasks.keys().cloned());
        }
    }
    for (task, v) in values {
        if !names.contains(task) {
            return Err(ApiError::UnknownTask {
                setting,
                task: task.clone(),
                known: names.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        if *v <= 0 {
            return Err(ApiError::NotPositive {
                setting,
                task: task.clone(),
            });
        }
    }
    Ok(())
}

/// The longest a run may ask to be kept once finished: ten years.
const MAX_RUN_TTL_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// The run's time limits from the request.
fn run_limits(
    pipeline: &gantry_core::ir::PipelineSpec,
    req: &pb::SubmitRunRequest,
    bounds: &gantry_core::ir::bounds::SubmitLimits,
) -> Result<RunLimits, ApiError> {
    if req.timeout_ms < 0 {
        return Err(ApiError::NegativeTimeout);
    }
    check_per_task(pipeline, "timeout", &req.task_timeout_ms)?;
    // kfp-kubernetes' set_timeout, unless the submission says otherwise.
    let mut task_timeout_ms = gantry_core::engine::platform::task_timeouts(pipeline);
    task_timeout_ms.extend(req.task_timeout_ms.iter().map(|(k, v)| (k.clone(), *v)));
    if !(0..=MAX_RUN_TTL_MS).contains(&req.ttl_ms) {
        return Err(ApiError::BadRunTtl {
            ttl: req.ttl_ms,
            max: MAX_RUN_TTL_MS,
        });
    }
    Ok(RunLimits {
        timeout_ms: (req.timeout_ms > 0).then_some(req.timeout_ms),
        task_timeout_ms,
        max_tasks: Some(bounds.max_tasks_per_run),
        ttl_ms: (req.ttl_ms > 0).then_some(req.ttl_ms),
        cel_budget: Some(bounds.cel_evaluation_budget),
    })
}

/// The run's cache policy from the request; unknown task names and bad ages are refused.
fn cache_policy(
    pipeline: &gantry_core::ir::PipelineSpec,
    req: &pb::SubmitRunRequest,
) -> Result<CachePolicy, ApiError> {
    if req.cache_max_age_ms < 0 {
        return Err(ApiError::NegativeCacheAge);
    }
    check_per_task(pipeline, "cache max age", &req.task_cache_max_age_ms)?;
    Ok(CachePolicy {
        enabled: !req.disable_cache,
        max_age_ms: (req.cache_max_age_ms > 0).then_some(req.cache_max_age_ms),
        task_max_age_ms: req
            .task_cache_max_age_ms
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    })
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

fn log_entry(r: LogRecord) -> pb::LogEntry {
    pb::LogEntry {
        run_id: r.run_id.into_string(),
        task_id: r.task_id.into_string(),
        attempt: r.attempt,
        stream: r.stream,
        line: r.line,
        at_ms: r.at_ms,
    }
}

#[tonic::async_trait]
impl RunService for Api {
    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return RunServiceClient::new(ch).submit_run(relay(req)).await;
        }
        let req = req.into_inner();
        let given: BTreeMap<String, serde_json::Value> = req
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let info = match req.experiment.trim() {
            "" => None,
            name => Some(gantry_core::state::catalog::RunInfo {
                experiment_id: Some(
                    crate::kfp::experiments::experiment_by_name(&self.0, name, "").await?,
                ),
                ..Default::default()
            }),
        };
        let (run_id, existing) = self
            .submit(&req.pipeline_yaml, given, &req, info, None)
            .await?;
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: run_id.into_string(),
            existing,
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.0.read_barrier().await?;
        Ok(Response::new(
            self.run_proto(&RunId::from(req.into_inner().run_id))?,
        ))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.0.read_barrier().await?;
        let limit = match req.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let waiting = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let st = self.0.state.read();
        let runs = st
            .runs_newest_first()
            .take(limit)
            .map(|r| {
                let mut p = run_to_proto(r, &waiting);
                p.tasks.clear();
                p
            })
            .collect();
        Ok(Response::new(pb::ListRunsResponse { runs }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return RunServiceClient::new(ch).cancel_run(relay(req)).await;
        }
        let run_id = RunId::from(req.into_inner().run_id);
        let cmd = Command::CancelRun {
            run_id: run_id.clone(),
            at: crate::now_ms(),
        };
        self.change_run(&run_id, cmd).await
    }

    async fn retry_run(
        &self,
        req: Request<pb::RetryRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return RunServiceClient::new(ch).retry_run(relay(req)).await;
        }
        let run_id = RunId::from(req.into_inner().run_id);
        let cmd = Command::RetryRun {
            run_id: run_id.clone(),
            at: crate::now_ms(),
        };
        self.change_run(&run_id, cmd).await
    }

    async fn decide_approval(
        &self,
        req: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return RunServiceClient::new(ch).decide_approval(relay(req)).await;
        }
        let by = crate::auth::principal(&req).name();
        let r = req.into_inner();
        if !r.approve && r.reason.trim().is_empty() {
            return Err(ApiError::RejectWithoutReason.into());
        }
        let run_id = RunId::from(r.run_id);
        let task_id = self.task_named(&run_id, &r.task)?;
        let cmd = Command::DecideApproval {
            run_id: run_id.clone(),
            task_id,
            decision: gantry_core::engine::approval::Decision {
                approved: r.approve,
                by: by.clone(),
                reason: r.reason.trim().to_string(),
                at: crate::now_ms(),
            },
        };
        self.change_run(&run_id, cmd).await?;
        tracing::info!(run = %run_id, task = %r.task, approved = r.approve, %by, "approval decided");
        Ok(Response::new(self.run_proto(&run_id)?))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        // Agents stream their logs to the leader: read them there.
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            let remote = RunServiceClient::new(ch)
                .stream_logs(relay(req))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(remote.map(|r| r))));
        }
        self.0.read_barrier().await?;
        let req = req.into_inner();
        let run_id = RunId::from(req.run_id);
        // Existence check, and the task filter matches either the IR name or the task id.
        self.run_proto(&run_id)?;
        let c = self.0.clone();
        // Subscribe before reading the backlog so no line falls between the two.
        let live = c.logs.subscribe();
        let finished = c.dispatcher.run_finished.subscribe();
        let matches = {
            let task = req.task.clone();
            let names: BTreeMap<TaskId, String> = {
                let st = c.state.read();
                st.runs
                    .get(&run_id)
                    .map(|r| {
                        r.tasks
                            .values()
                            .map(|t| (t.task_id.clone(), t.name.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            move |r: &LogRecord| {
                task.is_empty()
                    || r.task_id == task
                    || names.get(&r.task_id).is_some_and(|n| *n == task)
            }
        };
        let follow = req.follow;
        let stream = async_stream_logs(c, run_id, follow, matches, live, finished);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn async_stream_logs(
    c: std::sync::Arc<crate::server::Coordinator>,
    run_id: RunId,
    follow: bool,
    matches: impl Fn(&LogRecord) -> bool + Send + 'static,
    mut live: tokio::sync::broadcast::Receiver<LogRecord>,
    mut finished: tokio::sync::broadcast::Receiver<RunId>,
) -> impl Stream<Item = Result<pb::LogEntry, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        // The stored log, a page at a time: a long history is never in memory at once, and
        // the next page is read only once the client has taken the last.
        let mut last_seen = 0;
        loop {
            let page = c.logs.read_page(&run_id, last_seen, PAGE_LINES);
            let Some(last) = page.last() else { break };
            last_seen = last.seq;
            for r in page {
                if matches(&r) && tx.send(Ok(log_entry(r))).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        loop {
            let done = {
                let st = c.state.read();
                st.runs.get(&run_id).is_none_or(|r| r.state.is_terminal())
            };
            tokio::select! {
                r = live.recv() => match r {
                    Ok(rec) => {
                        // Lines stored between subscribe and the backlog read arrive twice.
                        if rec.seq > last_seen && rec.run_id == run_id && matches(&rec)
                            && tx.send(Ok(log_entry(rec))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.send(Err(ApiError::LogsDropped(n).into())).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = finished.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)), if done => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
