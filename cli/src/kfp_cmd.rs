//! `gantry pipeline|experiment|schedule ...`: the KFP catalog and recurring runs, through the
//! coordinators' KFP REST API (sent over the same connection, TLS and token as gRPC).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Subcommand;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::client::{connect, Client, Svc};
use crate::exit::CliError;
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum PipelineCommand {
    /// Store a compiled pipeline (YAML or a .tar.gz of it): a new pipeline, or with
    /// --to a new version of an existing one.
    Upload {
        file: PathBuf,
        /// The pipeline's name (default: the file's name without extension); with --to, the
        /// version's.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Add the file as a new version of this pipeline (name or id).
        #[arg(long, value_name = "PIPELINE")]
        to: Option<String>,
    },
    /// List pipelines, oldest first.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Create an experiment (a name taken is refused).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List experiments, oldest first.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Run a stored pipeline on a schedule.
    Create {
        /// The schedule's name.
        name: String,
        /// The pipeline (name or id); its newest version runs.
        #[arg(long)]
        pipeline: String,
        /// KFP's cron: 5 or 6 fields, seconds first (`0 0 3 * * *` is 03:00 UTC daily).
        #[arg(long, conflicts_with = "every", required_unless_present = "every")]
        cron: Option<String>,
        /// A period instead: `30s`, `1h`, `1d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<Duration>,
        /// At most this many of its runs at once (1 to 10).
        #[arg(long, default_value_t = 1)]
        max_concurrency: u32,
        /// After a pause, fire only the latest due tick instead of every missed one.
        #[arg(long)]
        no_catchup: bool,
        /// No ticks before this time (RFC 3339).
        #[arg(long)]
        start: Option<String>,
        /// No ticks after this time (RFC 3339).
        #[arg(long)]
        end: Option<String>,
        /// The experiment (name or id; default `Default`).
        #[arg(long)]
        experiment: Option<String>,
        /// A pipeline parameter, NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List schedules.
    List,
    /// Let it fire again.
    Enable { id: String },
    /// Stop its firing (runs going on are not stopped).
    Disable { id: String },
    /// Remove it (its runs stay).
    Delete { id: String },
}

/// One KFP request; a refusal comes back as a `Status` with KFP's code and message.
async fn request(
    svc: Svc,
    method: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> Result<Value, tonic::Status> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(tonic::body::Body::new(http_body_util::Full::new(body)))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let resp = svc
        .oneshot(req)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(v);
    }
    let code = tonic::Code::from_i32(v["code"].as_i64().unwrap_or(2) as i32);
    let message = v["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(tonic::Status::new(code, message))
}

async fn call(
    c: &mut Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> Result<Value, CliError> {
    c.call(Duration::from_secs(30), |cl| {
        let body = body.clone();
        async move { request(cl.http, method, path, content_type, body).await }
    })
    .await
}

async fn get(c: &mut Client, path: &str) -> Result<Value, CliError> {
    call(c, "GET", path, "application/json", Bytes::new()).await
}

async fn post(c: &mut Client, path: &str, body: Value) -> Result<Value, CliError> {
    call(
        c,
        "POST",
        path,
        "application/json",
        Bytes::from(body.to_string()),
    )
    .await
}

fn query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Every page of a KFP list.
async fn list_all(c: &mut Client, path: &str, key: &str) -> Result<Vec<Value>, CliError> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = get(
            c,
            &format!("{path}?page_size=200&page_token={}", query(&token)),
        )
        .await?;
        out.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return Ok(out),
        }
    }
}

/// The id of the pipeline named or identified by `p`.
async fn pipeline_id(c: &mut Client, p: &str) -> Result<String, CliError> {
    let all = list_all(c, "/apis/v2beta1/pipelines", "pipelines").await?;
    all.iter()
        .find(|x| x["pipeline_id"] == p)
        .or_else(|| all.iter().find(|x| x["name"] == p))
        .and_then(|x| x["pipeline_id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| CliError::Refused(format!("no pipeline is named or has the id {p:?}")))
}

fn multipart(file: &Path, data: &[u8]) -> (String, Bytes) {
    let boundary = format!("gantry{:016x}", data.len() as u64 ^ 0x5eed);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_else(|| "pipeline.yaml".into());
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

fn time_cell(v: &Value) -> String {
    v.as_str()
        .map(|s| s.replace('T', " ").trim_end_matches('Z').to_string())
        .unwrap_or_default()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

pub async fn pipeline(
    target: &crate::client::Target,
    format: Format,
    cmd: PipelineCommand,
) -> Result<(), CliError> {
    let mut c = connect(target).await?;
    match cmd {
        PipelineCommand::Upload {
            file,
            name,
            description,
            to,
        } => {
            let data = std::fs::read(&file)
                .map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches(".tar").to_string())
                .unwrap_or_default();
            let name = name.unwrap_or(stem);
            let mut path = match &to {
                None => format!("/apis/v2beta1/pipelines/upload?name={}", query(&name)),
                Some(p) => {
                    let id = pipeline_id(&mut c, p).await?;
                    format!(
                        "/apis/v2beta1/pipelines/upload_version?name={}&pipelineid={}",
                        query(&name),
                        query(&id)
                    )
                }
            };
            if let Some(d) = description {
                path.push_str(&format!("&description={}", query(&d)));
            }
            let (ct, body) = multipart(&file, &data);
            let v = call(&mut c, "POST", &path, &ct, body).await?;
            if !output::print_structured(format, &v) {
                match to {
                    None => println!("pipeline {} uploaded: {}", name, text(&v["pipeline_id"])),
                    Some(_) => println!(
                        "version {} of pipeline {} uploaded: {}",
                        name,
                        text(&v["pipeline_id"]),
                        text(&v["pipeline_version_id"])
                    ),
                }
            }
        }
        PipelineCommand::List => {
            let all = list_all(&mut c, "/apis/v2beta1/pipelines", "pipelines").await?;
            if !output::print_structured(format, &Value::Array(all.clone())) {
                output::table(
                    &["PIPELINE", "NAME", "CREATED", "DESCRIPTION"],
                    all.iter()
                        .map(|p| {
                            vec![
                                text(&p["pipeline_id"]),
                                text(&p["name"]),
                                time_cell(&p["created_at"]),
                                text(&p["description"]),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(())
}

pub async fn experiment(
    target: &crate::client::Target,
    format: Format,
    cmd: ExperimentCommand,
) -> Result<(), CliError> {
    let mut c = connect(target).await?;
    match cmd {
        ExperimentCommand::Create { name, description } => {
            let mut body = json!({"display_name": name});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = post(&mut c, "/apis/v2beta1/experiments", body).await?;
            if !output::print_structured(format, &v) {
                println!("experiment {name} created: {}", text(&v["experiment_id"]));
            }
        }
        ExperimentCommand::List => {
            let all = list_all(&mut c, "/apis/v2beta1/experiments", "experiments").await?;
            if !output::print_structured(format, &Value::Array(all.clone())) {
                output::table(
                    &["EXPERIMENT", "NAME", "STATE", "CREATED"],
                    all.iter()
                        .map(|e| {
                            vec![
                                text(&e["experiment_id"]),
                                text(&e["display_name"]),
                                text(&e["storage_state"]),
                                time_cell(&e["created_at"]),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(())
}

/// A `NAME=VALUE` parameter as JSON: a number or boolean when it reads as one (the pipeline's
/// declared type decides in the end), else text.
fn param_value(v: &str) -> Value {
    serde_json::from_str::<Value>(v)
        .ok()
        .filter(|j| j.is_number() || j.is_boolean())
        .unwrap_or_else(|| Value::String(v.to_string()))
}

pub async fn schedule(
    target: &crate::client::Target,
    format: Format,
    cmd: ScheduleCommand,
) -> Result<(), CliError> {
    let mut c = connect(target).await?;
    match cmd {
        ScheduleCommand::Create {
            name,
            pipeline,
            cron,
            every,
            max_concurrency,
            no_catchup,
            start,
            end,
            experiment,
            params,
            disabled,
        } => {
            let pipeline_id = pipeline_id(&mut c, &pipeline).await?;
            let experiment_id = match experiment {
                None => None,
                Some(e) => {
                    let all = list_all(&mut c, "/apis/v2beta1/experiments", "experiments").await?;
                    let found = all
                        .iter()
                        .find(|x| {
                            x["experiment_id"] == e.as_str() || x["display_name"] == e.as_str()
                        })
                        .and_then(|x| x["experiment_id"].as_str())
                        .map(str::to_string);
                    Some(found.ok_or_else(|| {
                        CliError::Refused(format!(
                            "no experiment is named or has the id {e:?} (gantry experiment create {e})"
                        ))
                    })?)
                }
            };
            let mut parameters = serde_json::Map::new();
            for p in &params {
                let (k, v) = gantry_model::flags::key_value("--param", p)?;
                parameters.insert(k.to_string(), param_value(v));
            }
            let mut window = serde_json::Map::new();
            if let Some(s) = start {
                window.insert("start_time".into(), json!(s));
            }
            if let Some(e) = end {
                window.insert("end_time".into(), json!(e));
            }
            let trigger = match (cron, every) {
                (Some(cron), _) => {
                    window.insert("cron".into(), json!(cron));
                    json!({"cron_schedule": window})
                }
                (None, Some(d)) => {
                    window.insert("interval_second".into(), json!(d.as_secs()));
                    json!({"periodic_schedule": window})
                }
                (None, None) => return Err(CliError::Refused("give --cron or --every".into())),
            };
            let mut body = json!({
                "display_name": name,
                "pipeline_version_reference": {"pipeline_id": pipeline_id},
                "runtime_config": {"parameters": parameters},
                "max_concurrency": max_concurrency,
                "no_catchup": no_catchup,
                "mode": if disabled { "DISABLE" } else { "ENABLE" },
                "trigger": trigger,
            });
            if let Some(e) = experiment_id {
                body["experiment_id"] = json!(e);
            }
            let v = post(&mut c, "/apis/v2beta1/recurringruns", body).await?;
            if !output::print_structured(format, &v) {
                println!(
                    "schedule {name} created: {} ({})",
                    text(&v["recurring_run_id"]),
                    text(&v["status"])
                );
                if let Some(u) = v["gantry_cron_understood"].as_str() {
                    println!("cron read as: {u}");
                }
            }
        }
        ScheduleCommand::List => {
            let all = list_all(&mut c, "/apis/v2beta1/recurringruns", "recurringRuns").await?;
            if !output::print_structured(format, &Value::Array(all.clone())) {
                output::table(
                    &["SCHEDULE", "NAME", "STATUS", "TRIGGER", "LAST FIRED"],
                    all.iter()
                        .map(|s| {
                            let t = &s["trigger"];
                            let trigger = match t["cron_schedule"]["cron"].as_str() {
                                Some(c) => format!("cron {c}"),
                                None => format!(
                                    "every {}s",
                                    text(&t["periodic_schedule"]["interval_second"])
                                ),
                            };
                            vec![
                                text(&s["recurring_run_id"]),
                                text(&s["display_name"]),
                                text(&s["status"]),
                                trigger,
                                time_cell(&s["gantry_last_fired"]),
                            ]
                        })
                        .collect(),
                );
            }
        }
        ScheduleCommand::Enable { id }
        | ScheduleCommand::Disable { id }
        | ScheduleCommand::Delete { id }
            if id.is_empty() =>
        {
            return Err(CliError::Refused("the schedule id is empty".into()))
        }
        ScheduleCommand::Enable { id } => {
            post(
                &mut c,
                &format!("/apis/v2beta1/recurringruns/{}:enable", query(&id)),
                json!({}),
            )
            .await?;
            println!("schedule {id} enabled");
        }
        ScheduleCommand::Disable { id } => {
            post(
                &mut c,
                &format!("/apis/v2beta1/recurringruns/{}:disable", query(&id)),
                json!({}),
            )
            .await?;
            println!("schedule {id} disabled");
        }
        ScheduleCommand::Delete { id } => {
            call(
                &mut c,
                "DELETE",
                &format!("/apis/v2beta1/recurringruns/{}", query(&id)),
                "application/json",
                Bytes::new(),
            )
            .await?;
            println!("schedule {id} deleted");
        }
    }
    Ok(())
}
