//! `gantry run ...`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use gantry_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::client::{connect, Client};
use crate::exit::CliError;
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum RunCommand {
    /// Submit a kfp-compiled pipeline (IR YAML).
    Submit {
        file: PathBuf,
        /// A pipeline parameter, NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// A pipeline input artifact, NAME=URI with URI s3://bucket/key or file:///path
        /// (repeatable).
        #[arg(short = 'a', long = "artifact", value_name = "NAME=URI")]
        artifacts: Vec<String>,
        /// Wait for the run to end; exit 0 if it succeeded, 1 if it failed, 3 if canceled.
        #[arg(long)]
        wait: bool,
        /// Idempotency key: resubmitting with the same id returns the same run.
        #[arg(long)]
        request_id: Option<String>,
        /// Placement order across runs: steps of higher-priority runs are placed first
        /// (default 0; negative values go after).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Run every task, even those an earlier execution could serve from the cache.
        #[arg(long)]
        disable_cache: bool,
        /// Use only cache entries younger than this (e.g. 30m, 24h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
        cache_max_age: Option<i64>,
        /// The same for one task, TASK=DURATION with TASK the IR task name (repeatable).
        #[arg(long, value_name = "TASK=DURATION")]
        task_cache_max_age: Vec<String>,
        /// Fail the run if it has not ended this long after submission; what still runs is
        /// stopped.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
        timeout: Option<i64>,
        /// Fail an attempt of task TASK (IR task name) that runs longer than DURATION, stopping
        /// its container; its retry policy applies (repeatable).
        #[arg(long, value_name = "TASK=DURATION")]
        task_timeout: Vec<String>,
        /// Remove the run (its record, step logs and cache entries) this long after it
        /// finishes, e.g. 1h or 30d, instead of the coordinator's --retain-runs-for.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
        ttl: Option<i64>,
        /// Put the run in this KFP experiment (a name or an id; created when no experiment
        /// has that name), where kfp.Client and `gantry experiment list` see it.
        #[arg(long)]
        experiment: Option<String>,
    },
    /// Show a run and its tasks.
    Get { run_id: String },
    /// List runs, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print the logs of a run's steps.
    Logs {
        run_id: String,
        /// Only this task (IR task name or task id).
        #[arg(long)]
        task: Option<String>,
        /// Keep following until the run ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Cancel a run: stops its running steps.
    Cancel { run_id: String },
    /// Run a FAILED or CANCELED run again from where it failed: tasks that succeeded keep
    /// their outputs, the others run anew.
    Retry {
        run_id: String,
        /// Wait for the run to end; exit 0 if it succeeded, 1 if it failed, 3 if canceled.
        #[arg(long)]
        wait: bool,
    },
    /// Let a task waiting at its approval gate (annotation gantry.dev/approval: required) go
    /// on; you are recorded as the approver.
    Approve {
        run_id: String,
        /// IR task name or task id.
        task: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop a task waiting at its approval gate: it fails with the reason, and so does the run.
    Reject {
        run_id: String,
        /// IR task name or task id.
        task: String,
        #[arg(long)]
        reason: String,
    },
}

/// `NAME=VALUE` flags (`what` names them in errors) as a map; a name given twice is refused.
fn parse_pairs(what: &str, pairs: &[String]) -> Result<HashMap<String, String>, CliError> {
    let mut out = HashMap::new();
    for p in pairs {
        let (k, v) = gantry_model::flags::key_value(what, p)?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(CliError::Refused(format!("{what} {k:?} given twice")));
        }
    }
    Ok(out)
}

fn show_run(format: Format, run: &pb::Run) {
    if !output::print_structured(format, &output::run_json(run, true)) {
        output::print_run(run);
    }
}

fn final_status(run: &pb::Run) -> Result<(), CliError> {
    match run.state() {
        pb::RunState::Succeeded => Ok(()),
        pb::RunState::Canceled => Err(CliError::RunCanceled(run.run_id.clone())),
        _ => Err(CliError::RunFailed(run.run_id.clone())),
    }
}

/// `gantry run approve|reject`.
async fn decide(
    endpoint: &crate::client::Target,
    format: Format,
    run_id: String,
    task: String,
    approve: bool,
    reason: String,
) -> Result<(), CliError> {
    let mut c = connect(endpoint).await?;
    let req = pb::DecideApprovalRequest {
        run_id,
        task: task.clone(),
        approve,
        reason,
    };
    let run = c
        .call(Duration::from_secs(15), |mut cl| {
            let req = req.clone();
            async move { cl.runs.decide_approval(req).await }
        })
        .await?
        .into_inner();
    if format == Format::Table {
        let verb = if approve { "approved" } else { "rejected" };
        println!(
            "{task} {verb}; run {} is {}",
            run.run_id,
            run.state().word()
        );
    } else {
        show_run(format, &run);
    }
    Ok(())
}

/// How long one call may take on one endpoint before the next is tried.
const PER_TRY: Duration = Duration::from_secs(5);

pub async fn run(
    endpoint: &crate::client::Target,
    format: Format,
    cmd: RunCommand,
) -> Result<(), CliError> {
    match cmd {
        RunCommand::Submit {
            file,
            params,
            artifacts,
            wait,
            request_id,
            priority,
            disable_cache,
            cache_max_age,
            task_cache_max_age,
            timeout,
            task_timeout,
            ttl,
            experiment,
        } => {
            let yaml = std::fs::read_to_string(&file)
                .map_err(|e| CliError::Refused(format!("cannot read {}: {e}", file.display())))?;
            let parameters = parse_pairs("parameter", &params)?;
            let artifacts = parse_pairs("input artifact", &artifacts)?;
            let mut c = connect(endpoint).await?;
            let request_id = request_id.unwrap_or_else(|| format!("cli-{}", uuid_like()));
            let task_ages = per_task_durations("--task-cache-max-age", &task_cache_max_age)?;
            let task_timeouts = per_task_durations("--task-timeout", &task_timeout)?;
            let req = pb::SubmitRunRequest {
                pipeline_yaml: yaml,
                parameters,
                request_id,
                disable_cache,
                cache_max_age_ms: cache_max_age.unwrap_or(0),
                task_cache_max_age_ms: task_ages,
                timeout_ms: timeout.unwrap_or(0),
                task_timeout_ms: task_timeouts,
                artifacts,
                priority,
                ttl_ms: ttl.unwrap_or(0),
                experiment: experiment.unwrap_or_default(),
            };
            // A timeout, a lost connection or a leader change is retried, on the next endpoint
            // when there is one, with the same request id: one run.
            let resp = c
                .call(Duration::from_secs(15), |mut cl| {
                    let req = req.clone();
                    async move { cl.runs.submit_run(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            if !wait {
                let v = serde_json::json!({"run_id": resp.run_id, "existing": resp.existing});
                if !output::print_structured(format, &v) {
                    println!("{}", resp.run_id);
                }
                return Ok(());
            }
            if format == Format::Table {
                eprintln!("submitted run {}; waiting", resp.run_id);
            }
            let run = wait_for(&mut c, &resp.run_id).await?;
            show_run(format, &run);
            final_status(&run)
        }
        RunCommand::Get { run_id } => {
            let mut c = connect(endpoint).await?;
            let run = c
                .call(PER_TRY, |mut cl| {
                    let run_id = run_id.clone();
                    async move { cl.runs.get_run(pb::GetRunRequest { run_id }).await }
                })
                .await?
                .into_inner();
            show_run(format, &run);
            Ok(())
        }
        RunCommand::List { limit } => {
            let mut c = connect(endpoint).await?;
            let runs = c
                .call(PER_TRY, |mut cl| async move {
                    cl.runs.list_runs(pb::ListRunsRequest { limit }).await
                })
                .await?
                .into_inner()
                .runs;
            let v =
                serde_json::Value::Array(runs.iter().map(|r| output::run_json(r, false)).collect());
            if !output::print_structured(format, &v) {
                output::table(
                    &["RUN", "PIPELINE", "STATE", "CREATED", "ERROR"],
                    runs.iter()
                        .map(|r| {
                            vec![
                                r.run_id.clone(),
                                r.pipeline_name.clone(),
                                r.state().word().to_string(),
                                output::short_time(r.created_at_ms),
                                r.error.chars().take(80).collect(),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(())
        }
        RunCommand::Logs {
            run_id,
            task,
            follow,
        } => {
            let mut c = connect(endpoint).await?;
            let req = pb::StreamLogsRequest {
                run_id,
                task: task.unwrap_or_default(),
                follow,
            };
            let mut stream = c
                .call(PER_TRY, |mut cl| {
                    let req = req.clone();
                    async move { cl.runs.stream_logs(req).await }
                })
                .await?
                .into_inner();
            while let Some(entry) = stream.next().await {
                let e = entry?;
                match format {
                    Format::Table => println!("[{}#{}] {}", e.task_id, e.attempt, e.line),
                    _ => println!(
                        "{}",
                        serde_json::json!({"task_id": e.task_id, "attempt": e.attempt,
                            "stream": e.stream, "line": e.line, "at": output::short_time(e.at_ms)})
                    ),
                }
            }
            Ok(())
        }
        RunCommand::Retry { run_id, wait } => {
            let mut c = connect(endpoint).await?;
            let run = c
                .call(Duration::from_secs(15), |mut cl| {
                    let run_id = run_id.clone();
                    async move { cl.runs.retry_run(pb::RetryRunRequest { run_id }).await }
                })
                .await?
                .into_inner();
            if !wait {
                show_run(format, &run);
                return Ok(());
            }
            if format == Format::Table {
                eprintln!("retrying run {run_id}; waiting");
            }
            let run = wait_for(&mut c, &run_id).await?;
            show_run(format, &run);
            final_status(&run)
        }
        RunCommand::Approve {
            run_id,
            task,
            reason,
        } => decide(endpoint, format, run_id, task, true, reason).await,
        RunCommand::Reject {
            run_id,
            task,
            reason,
        } => decide(endpoint, format, run_id, task, false, reason).await,
        RunCommand::Cancel { run_id } => {
            let mut c = connect(endpoint).await?;
            let run = c
                .call(Duration::from_secs(15), |mut cl| {
                    let run_id = run_id.clone();
                    async move { cl.runs.cancel_run(pb::CancelRunRequest { run_id }).await }
                })
                .await?
                .into_inner();
            show_run(format, &run);
            Ok(())
        }
    }
}

/// Polls until the run is terminal, riding out coordinator restarts and leader changes.
async fn wait_for(c: &mut Client, run_id: &str) -> Result<pb::Run, CliError> {
    c.retry_for = Duration::from_secs(120);
    loop {
        let run = c
            .call(PER_TRY, |mut cl| {
                let run_id = run_id.to_string();
                async move { cl.runs.get_run(pb::GetRunRequest { run_id }).await }
            })
            .await?
            .into_inner();
        if run.state().is_terminal() {
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// `TASK=DURATION` flags as milliseconds per task name.
fn per_task_durations(
    flag: &str,
    specs: &[String],
) -> Result<std::collections::HashMap<String, i64>, CliError> {
    let mut out = std::collections::HashMap::new();
    for spec in specs {
        let (task, d) = spec
            .split_once('=')
            .ok_or_else(|| CliError::Refused(format!("{flag} {spec:?}: expected TASK=DURATION")))?;
        let ms =
            parse_duration_ms(d).map_err(|e| CliError::Refused(format!("{flag} {spec:?}: {e}")))?;
        out.insert(task.to_string(), ms);
    }
    Ok(out)
}

/// Why a flag's text is not a usable duration; each variant holds the text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum DurationError {
    #[error("{text:?} is not a duration like 30m, 24h or 7d: {error}")]
    Syntax {
        text: String,
        error: humantime::DurationError,
    },
    #[error("{0:?} is too long")]
    TooLong(String),
    #[error("{0:?}: a duration here must be at least 1ms")]
    Zero(String),
}

/// A duration such as `90s`, `30m`, `24h` or `7d`, in milliseconds (at least 1 ms).
fn parse_duration_ms(text: &str) -> Result<i64, DurationError> {
    let d = humantime::parse_duration(text.trim()).map_err(|error| DurationError::Syntax {
        text: text.to_string(),
        error,
    })?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| DurationError::TooLong(text.to_string()))?;
    if ms == 0 {
        return Err(DurationError::Zero(text.to_string()));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_must_be_name_value() {
        let parse = |v: &[&str]| {
            parse_pairs(
                "input artifact",
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert!(parse(&["a=1", "b=x=y"]).is_ok());
        assert_eq!(parse(&["b=s3://b/k?x=y"]).unwrap()["b"], "s3://b/k?x=y");
        for bad in [&["a"][..], &["=1"], &["a=1", "a=2"]] {
            match parse(bad) {
                Err(CliError::Refused(m)) => assert!(m.starts_with("input artifact "), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn cache_ages_are_durations_of_at_least_a_millisecond() {
        assert_eq!(super::parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(super::parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(
            super::parse_duration_ms("0s"),
            Err(DurationError::Zero("0s".into()))
        );
        assert!(super::parse_duration_ms("soon")
            .unwrap_err()
            .to_string()
            .starts_with(r#""soon" is not a duration like 30m"#));
    }
}
