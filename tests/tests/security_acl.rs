//! The authorization table, walked on a real 3-node TLS cluster: every RPC and every KFP HTTP
//! route of `gantry_coordinator::auth::TABLE` (so a new one is covered as soon as it is in
//! the table),
//! on every node, by every kind of caller — a token of each role, none, a wrong one, an
//! expired one, a revoked one, and certificates of a client, an agent and a coordinator —
//! answers as the table says: allowed calls get past authorization, a missing or bad token is
//! `Unauthenticated` saying what is missing, a credential without the right is
//! `PermissionDenied` saying what is needed. A refused call carries a request that would change
//! something had it been let through (a run, a cancel, a drain, a token, a member, a term), and
//! nothing changed.

use std::time::Duration;

use bytes::{Buf, BufMut};
use gantry_coordinator::auth::{markdown_table, needs, Allow, TABLE};
use gantry_core::state::acl::Role;
use gantry_proto::v1 as pb;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::cluster::{client_tls, Authed, Cluster, ClusterOpts, TEST_CLUSTER};
use gantry_testkit::kfp_http::{http_call, multipart_upload as multipart};
use gantry_testkit::{compile_pipeline, eventually, repo_root, sim, task, Cli};
use gantry_tls::issue::CertFiles;
use prost::Message as _;
use protobuf::Message as _;
use serde_json::{json, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

const GIB: u64 = 1024 * 1024 * 1024;

/// Requests and answers as bytes: any method of the table is called the same way.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Calls `method` with one request message (a unary method reads exactly one; a streaming one
/// gets a stream of one) and waits for the first answer or the refusal.
async fn call(ch: Authed, method: &'static str, body: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let req = tonic::Request::new(tokio_stream::iter(vec![body]));
    let answer = async {
        let mut stream = grpc.streaming(req, path, Raw).await?.into_inner();
        stream.message().await.map(|_| ())
    };
    tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in 15 s")))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cert {
    None,
    /// `client-harness`: a certificate of the cluster CA, but neither a coordinator nor an agent.
    Client,
    /// `agent-walker`: an agent that never registered.
    Agent,
    /// A coordinator of the cluster other than the node called.
    Coordinator,
}

#[derive(Clone, Debug)]
enum Token {
    None,
    Good {
        role: Role,
        name: String,
        secret: String,
    },
    Wrong(String),
    Expired(String),
    Revoked(String),
}

impl Token {
    fn secret(&self) -> Option<&str> {
        match self {
            Token::None => None,
            Token::Good { secret, .. } => Some(secret),
            Token::Wrong(s) | Token::Expired(s) | Token::Revoked(s) => Some(s),
        }
    }
}

struct Caller {
    name: String,
    token: Token,
    cert: Cert,
}

/// What the answer must be: allowed past authorization, or refused with a code and words.
#[derive(Debug)]
enum Want {
    Allowed,
    Refused(Code, Vec<String>),
}

/// What the table says `caller` gets from a method with rule `allow`.
fn want(method: &str, allow: Allow, caller: &Caller) -> Want {
    let unauth = |words: Vec<String>| Want::Refused(Code::Unauthenticated, words);
    let denied = |mut words: Vec<String>| {
        words.push(needs(allow));
        Want::Refused(Code::PermissionDenied, words)
    };
    let role = match &caller.token {
        Token::Wrong(_) | Token::Revoked(_) => {
            return unauth(vec!["the token is not valid (unknown, or revoked)".into()])
        }
        Token::Expired(_) => return unauth(vec!["expired".into()]),
        Token::None => None,
        Token::Good { role, .. } => Some(*role),
    };
    // How a refusal names a caller with a good token.
    let caller_name = match &caller.token {
        Token::Good { role, name, .. } => vec![format!("the caller is token {name} ({role})")],
        _ => Vec::new(),
    };
    // How a refusal tells a caller without a token to send one.
    let how = if method.starts_with('/') {
        "GANTRY_TOKEN"
    } else {
        "existing_token"
    };
    match allow {
        Allow::Anyone | Allow::Public => Want::Allowed,
        Allow::Roles(roles) => match role {
            None => unauth(vec![method.to_string(), needs(allow), how.into()]),
            Some(r) if roles.contains(&r) => Want::Allowed,
            Some(_) => denied(caller_name),
        },
        Allow::RolesOrCertificates(roles) => {
            if caller.cert != Cert::None || role.is_some_and(|r| roles.contains(&r)) {
                Want::Allowed
            } else if role.is_none() {
                unauth(vec![needs(allow)])
            } else {
                denied(caller_name)
            }
        }
        // Tokens grant neither.
        Allow::Coordinators if caller.cert == Cert::Coordinator => Want::Allowed,
        Allow::Agents if caller.cert == Cert::Agent => Want::Allowed,
        Allow::Coordinators | Allow::Agents => denied(caller_name),
    }
}

/// What the calls are about.
struct Ctx {
    pipeline_yaml: String,
    run_id: String,
    /// The agent that runs the run's step.
    agent: String,
    /// A token an allowed RevokeToken would remove.
    viewer_accessor: String,
    /// Each node's store id, which a peer stamps on its raft traffic.
    stores: std::collections::BTreeMap<u64, u64>,
    /// KFP records a refused HTTP call would change.
    experiment_id: String,
    pipeline_id: String,
    pipeline_version_id: String,
    /// Disabled: a refused `:enable` would show.
    recurring_run_id: String,
}

/// A recurring run of the walk's pipeline, disabled so that it never fires.
fn recurring_body(name: &str, pipeline_id: &str) -> Value {
    json!({"display_name": name,
        "pipeline_version_reference": {"pipeline_id": pipeline_id},
        "runtime_config": {"parameters": {"seconds": 1}},
        "max_concurrency": 1, "mode": "DISABLE",
        "trigger": {"periodic_schedule": {"interval_second": 3600}}})
}

/// The HTTP request sent to route `key` (`"METHOD /apis/..."`) on a node: like [`payload`],
/// harmful when the caller is to be refused, harmless (refused by the handler) otherwise.
/// Returns (method, path and query, content type, body).
fn http_request(key: &str, refused: bool, ctx: &Ctx) -> (String, String, String, Vec<u8>) {
    let (method, pattern) = key.split_once(' ').unwrap();
    let pick = |harmful: &str, harmless: &str| {
        if refused {
            harmful.to_string()
        } else {
            harmless.to_string()
        }
    };
    let path = pattern
        .replace(
            "{experiment_id}",
            &pick(&ctx.experiment_id, "no-such-experiment"),
        )
        .replace("{pipeline_id}", &pick(&ctx.pipeline_id, "no-such-pipeline"))
        .replace(
            "{pipeline_version_id}",
            &pick(&ctx.pipeline_version_id, "no-such-version"),
        )
        .replace("{run_id}", &pick(&ctx.run_id, "no-such-run"))
        .replace(
            "{recurring_run_id}",
            &pick(&ctx.recurring_run_id, "no-such-recurring-run"),
        );
    let json = |v: Value| ("application/json".to_string(), v.to_string().into_bytes());
    let (query, (content_type, body)) = match (method, pattern) {
        ("POST", "/apis/v2beta1/experiments") => (
            String::new(),
            json(if refused {
                json!({"display_name": "walk-forged"})
            } else {
                json!({})
            }),
        ),
        ("POST", "/apis/v2beta1/pipelines/upload") => (
            "?name=walk-forged".to_string(),
            multipart(if refused { &ctx.pipeline_yaml } else { "" }),
        ),
        ("POST", "/apis/v2beta1/pipelines/upload_version") => (
            pick(
                &format!("?name=walk-forged&pipelineid={}", ctx.pipeline_id),
                "?name=walk-forged",
            ),
            multipart(&ctx.pipeline_yaml),
        ),
        ("DELETE", "/apis/v2beta1/pipelines/{pipeline_id}") => {
            ("?cascade=true".to_string(), json(json!({})))
        }
        ("POST", "/apis/v2beta1/runs") => (
            String::new(),
            json(if refused {
                json!({"display_name": "walk-forged",
                    "pipeline_version_reference": {"pipeline_id": ctx.pipeline_id},
                    "runtime_config": {"parameters": {"seconds": 1}}})
            } else {
                json!({})
            }),
        ),
        ("POST", "/apis/v2beta1/recurringruns") => (
            String::new(),
            json(if refused {
                recurring_body("walk-forged", &ctx.pipeline_id)
            } else {
                json!({})
            }),
        ),
        // Action verbs and reads carry no body, as kfp.Client sends them.
        _ => (String::new(), ("application/json".to_string(), Vec::new())),
    };
    (
        method.to_string(),
        format!("{path}{query}"),
        content_type,
        body,
    )
}

/// `GET path` as the harness (admin), as JSON.
fn http_get(c: &Cluster, rt: &tokio::runtime::Runtime, path: &str) -> Result<Value, String> {
    let _in_runtime = rt.enter();
    let ch = c.channel(1).ok_or("no channel to node 1")?;
    rt.block_on(http_call(ch, "GET", path, "application/json", Vec::new()))
        .map(|(_, v)| v)
        .map_err(|s| format!("GET {path}: {s:?}"))
}

/// The coordinator certificate a caller presents to `node`: another member's.
fn peer_of(node: u64) -> u64 {
    node % 3 + 1
}

fn raft_heartbeat(from: u64, to: u64, term: u64) -> raft::eraftpb::Message {
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// The request sent to `method` on `node`. A caller the table refuses sends one that would
/// change something if it got through; an allowed caller sends one that is refused by the
/// handler or changes nothing, so that the walk itself moves nothing.
fn payload(method: &str, refused: bool, ctx: &Ctx, node: u64) -> Vec<u8> {
    let pick = |harmful: &str, harmless: &str| {
        if refused {
            harmful.to_string()
        } else {
            harmless.to_string()
        }
    };
    let peer = peer_of(node);
    match method.trim_start_matches("/gantry.v1.") {
        "RunService/SubmitRun" => pb::SubmitRunRequest {
            pipeline_yaml: pick(&ctx.pipeline_yaml, ""),
            parameters: [("seconds".to_string(), "1".to_string())].into(),
            request_id: request_id(node),
            ..Default::default()
        }
        .encode_to_vec(),
        "RunService/CancelRun" => pb::CancelRunRequest {
            run_id: pick(&ctx.run_id, "no-such-run"),
        }
        .encode_to_vec(),
        "RunService/RetryRun" => pb::RetryRunRequest {
            run_id: pick(&ctx.run_id, "no-such-run"),
        }
        .encode_to_vec(),
        "RunService/GetRun" => pb::GetRunRequest {
            run_id: ctx.run_id.clone(),
        }
        .encode_to_vec(),
        "RunService/ListRuns" => pb::ListRunsRequest { limit: 10 }.encode_to_vec(),
        "RunService/StreamLogs" => pb::StreamLogsRequest {
            run_id: ctx.run_id.clone(),
            task: String::new(),
            follow: false,
        }
        .encode_to_vec(),
        "RunService/DecideApproval" => pb::DecideApprovalRequest {
            run_id: pick(&ctx.run_id, "no-such-run"),
            task: "nap".into(),
            approve: false,
            reason: "walk".into(),
        }
        .encode_to_vec(),
        "AgentService/Session" => {
            let body = refused.then(|| {
                pb::agent_message::Body::Register(pb::Register {
                    agent_id: "walk-forged".into(),
                    inventory_json: serde_json::to_string(&sim::inventory(
                        "walk-forged",
                        8.0,
                        64 * GIB,
                    ))
                    .unwrap(),
                    ..Default::default()
                })
            });
            pb::AgentMessage { body }.encode_to_vec()
        }
        "AgentService/ListAgents" => pb::ListAgentsRequest {}.encode_to_vec(),
        "AgentService/DrainAgent" => pb::DrainAgentRequest {
            agent_id: pick(&ctx.agent, "no-such-agent"),
            drain: true,
        }
        .encode_to_vec(),
        "ClusterService/Status" => pb::ClusterStatusRequest {}.encode_to_vec(),
        "ClusterService/AddMember" => pb::AddMemberRequest {
            address: pick("127.0.0.1:9", ""),
        }
        .encode_to_vec(),
        "ClusterService/RemoveMember" => pb::RemoveMemberRequest {
            node_id: if refused { peer } else { 42 },
        }
        .encode_to_vec(),
        // A node that is no voter: let through, the handler refuses it and leadership stays.
        "ClusterService/TransferLeader" => {
            pb::TransferLeaderRequest { node_id: 42 }.encode_to_vec()
        }
        "RaftService/Send" | "RaftService/Stream" => pb::RaftBatch {
            from: peer,
            from_address: "127.0.0.1:9".into(),
            messages: if refused {
                vec![raft_heartbeat(peer, node, 1_000_000)
                    .write_to_bytes()
                    .unwrap()]
            } else {
                Vec::new()
            },
            cluster: TEST_CLUSTER.into(),
            from_store: ctx.stores[&peer],
        }
        .encode_to_vec(),
        "RaftService/InstallSnapshot" | "RaftService/InstallSnapshotV2" => {
            // Not a MsgSnapshot: the handler refuses it once the caller is let through.
            let mut m = raft_heartbeat(peer, node, 1);
            if refused {
                m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
                m.term = 1_000_000;
                let mut snap = raft::eraftpb::Snapshot::default();
                let mut meta = raft::eraftpb::SnapshotMetadata {
                    index: 1_000_000,
                    term: 1_000_000,
                    ..Default::default()
                };
                let mut cs = raft::eraftpb::ConfState::default();
                cs.set_voters(vec![node]);
                meta.set_conf_state(cs);
                snap.set_metadata(meta);
                m.set_snapshot(snap);
            }
            pb::SnapshotChunk {
                from: peer,
                from_address: "127.0.0.1:9".into(),
                message: m.write_to_bytes().unwrap(),
                data: b"{}".to_vec(),
                total_size: 2,
                cluster: TEST_CLUSTER.into(),
                from_store: ctx.stores[&peer],
            }
            .encode_to_vec()
        }
        "AclService/Bootstrap" => pb::AclBootstrapRequest {}.encode_to_vec(),
        "AclService/CreateToken" => pb::CreateTokenRequest {
            name: pick("walk-forged", ""),
            role: "admin".into(),
            ttl_ms: 0,
        }
        .encode_to_vec(),
        "AclService/ListTokens" => pb::ListTokensRequest {}.encode_to_vec(),
        "AclService/RevokeToken" => pb::RevokeTokenRequest {
            accessor: pick(&ctx.viewer_accessor, "no-such-token"),
        }
        .encode_to_vec(),
        "WebhookService/AddWebhook" => pb::AddWebhookRequest {
            id: pick("walk-forged", ""),
            url: "http://127.0.0.1:9/forged".into(),
            events: String::new(),
        }
        .encode_to_vec(),
        "WebhookService/ListWebhooks" => pb::ListWebhooksRequest {}.encode_to_vec(),
        "WebhookService/RemoveWebhook" => pb::RemoveWebhookRequest {
            id: pick(WALK_HOOK, "no-such-hook"),
        }
        .encode_to_vec(),
        // A method added to the table after this test: an empty request, which every proto3
        // message reads.
        _ => Vec::new(),
    }
}

/// A request id of its own for each submission, so that none is taken for a retry.
fn request_id(node: u64) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("walk-{node}-{n}")
}

/// What a refused call could have changed.
#[derive(Debug, PartialEq)]
struct Observed {
    /// (run id, state, task states)
    runs: Vec<Value>,
    /// (agent, state, draining)
    agents: Vec<Value>,
    /// (accessor, name, role)
    tokens: Vec<Value>,
    /// Per node: (term, leader, members)
    nodes: Vec<Value>,
    /// KFP experiments, pipelines and versions, and the runs' archive flags.
    catalog: Vec<Value>,
    /// (id, url, events)
    webhooks: Vec<Value>,
}

/// A webhook there for the walk's whole length: a refused remove would show.
const WALK_HOOK: &str = "walk-hook";

fn list(cli: &Cli, args: &[&str]) -> Result<Vec<Value>, String> {
    let r = cli.run(args);
    r.json()
        .map_err(|e| format!("gantry {args:?}: {e:#}"))?
        .as_array()
        .cloned()
        .ok_or_else(|| format!("gantry {args:?} is not a list: {}", r.stdout))
}

fn observe(c: &Cluster, rt: &tokio::runtime::Runtime, ctx: &Ctx) -> Result<Observed, String> {
    let cli = c.cli();
    let mut catalog = vec![
        http_get(c, rt, "/apis/v2beta1/experiments?page_size=200")?,
        http_get(c, rt, "/apis/v2beta1/pipelines?page_size=200")?,
        http_get(
            c,
            rt,
            &format!(
                "/apis/v2beta1/pipelines/{}/versions?page_size=200",
                ctx.pipeline_id
            ),
        )?,
    ];
    catalog.push(http_get(
        c,
        rt,
        "/apis/v2beta1/recurringruns?page_size=200",
    )?);
    let runs = http_get(c, rt, "/apis/v2beta1/runs?page_size=200")?;
    catalog.push(json!(runs["runs"].as_array().map(|rs| rs
        .iter()
        .map(|r| json!([r["run_id"], r["storage_state"]]))
        .collect::<Vec<_>>())));
    let mut nodes = Vec::new();
    for id in c.all_ids() {
        let s = c
            .status(id)
            .ok_or_else(|| format!("node {id} does not answer"))?;
        let members: Vec<(u64, String)> =
            s.members.iter().map(|m| (m.id, m.role.clone())).collect();
        nodes.push(json!([s.term, s.leader_id, members]));
    }
    Ok(Observed {
        runs: list(&cli, &["run", "list", "-o", "json"])?
            .iter()
            .map(|r| json!([r["run_id"], r["state"]]))
            .collect(),
        agents: list(&cli, &["agent", "list", "-o", "json"])?
            .iter()
            .map(|a| json!([a["agent_id"], a["state"], a["draining"]]))
            .collect(),
        tokens: list(&cli, &["acl", "token", "list", "-o", "json"])?
            .iter()
            .map(|t| json!([t["accessor"], t["name"], t["role"]]))
            .collect(),
        nodes,
        catalog,
        webhooks: {
            let r = cli.run(&["webhook", "list", "-o", "json"]);
            let v = r.json().map_err(|e| format!("{e:#}"))?;
            v["webhooks"]
                .as_array()
                .ok_or_else(|| format!("no webhooks in {v}"))?
                .iter()
                .map(|h| json!([h["id"], h["url"], h["events"]]))
                .collect()
        },
    })
}

/// `gantry acl token create`: the secret and the accessor.
fn create_token(cli: &Cli, name: &str, role: &str, ttl: Option<&str>) -> (String, String) {
    let mut args = vec!["acl", "token", "create", "--name", name, "--role", role];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    args.extend(["-o", "json"]);
    let r = cli.run(&args);
    assert_eq!(r.code, 0, "token {name}: {}", r.stderr);
    let v = r.json().unwrap();
    (
        v["secret"].as_str().unwrap().to_string(),
        v["accessor"].as_str().unwrap().to_string(),
    )
}

#[test]
fn every_rpc_answers_every_caller_as_the_authorization_table_says() {
    let mut c = Cluster::start(ClusterOpts::loopback(3)).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.start_agent("a1", &[]).unwrap();
    let cli = c.cli();
    cli.wait_for_agents(1).unwrap();
    let file = compile_pipeline("sleeper", c.dir.path()).unwrap();
    // A run whose step goes on for the whole test: a refused cancel or retry would show.
    let run_id = cli.submit(&file, &["seconds=300"]).unwrap();
    cli.wait_until(&run_id, Duration::from_secs(60), |r| {
        task(r, "nap")["state"] == "RUNNING"
    });

    // Unreachable on purpose: its deliveries are retried in the background all along.
    let r = cli.run(&["webhook", "add", WALK_HOOK, "http://127.0.0.1:9/walk"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let mut callers = Vec::new();
    let mut viewer_accessor = String::new();
    for role in Role::ALL {
        let name = format!("walk-{role}");
        let (secret, accessor) = create_token(&cli, &name, role.as_str(), None);
        if role == Role::Viewer {
            viewer_accessor = accessor;
        }
        callers.push(Caller {
            name: format!("{role} token"),
            token: Token::Good { role, name, secret },
            cert: Cert::None,
        });
    }
    // Admin tokens, so that only their expiry or revocation can be what refuses them.
    let (expired, _) = create_token(&cli, "walk-expired", "admin", Some("1s"));
    let (revoked, _) = create_token(&cli, "walk-revoked", "admin", None);
    let r = cli.run(&["acl", "token", "revoke", "walk-revoked"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, c.logs_tail());
    let bad = [
        ("no token", Token::None),
        (
            "a wrong token",
            Token::Wrong("gantry_0123456789abcdef0123456789abcdef".into()),
        ),
        ("an expired admin token", Token::Expired(expired.clone())),
        ("a revoked admin token", Token::Revoked(revoked)),
    ];
    for (name, token) in bad {
        callers.push(Caller {
            name: name.into(),
            token,
            cert: Cert::None,
        });
    }
    for (name, cert) in [
        ("a client certificate", Cert::Client),
        ("an agent certificate", Cert::Agent),
        ("another coordinator's certificate", Cert::Coordinator),
    ] {
        callers.push(Caller {
            name: name.into(),
            token: Token::None,
            cert,
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls_dir = c.tls_dir().unwrap().to_path_buf();
    let ca = tls_dir.join("ca.pem");
    let pair = |stem: &str| CertFiles {
        cert: tls_dir.join(format!("{stem}.pem")),
        key: tls_dir.join(format!("{stem}.key")),
    };
    let walker = c.agent_cert("walker").unwrap().unwrap();
    let channel = |caller: &Caller, node: u64| -> Authed {
        let cert = match caller.cert {
            Cert::None => None,
            Cert::Client => Some(pair("client-harness")),
            Cert::Agent => Some(walker.clone()),
            Cert::Coordinator => Some(pair(&format!("coordinator-{}", peer_of(node)))),
        };
        let tls = client_tls(&ca, cert.as_ref()).unwrap();
        c.channel_as(node, Some(tls), caller.token.secret())
            .unwrap()
    };

    // The expired token is refused as expired by then.
    eventually(Duration::from_secs(10), || {
        let r = rt.block_on(async {
            let ch = c
                .channel_as(1, Some(client_tls(&ca, None).unwrap()), Some(&expired))
                .unwrap();
            RunServiceClient::new(ch)
                .list_runs(pb::ListRunsRequest { limit: 1 })
                .await
        });
        match r {
            Err(s) if s.code() == Code::Unauthenticated && s.message().contains("expired") => {
                Ok(())
            }
            other => Err(format!(
                "the 1 s token is not refused as expired: {other:?}"
            )),
        }
    });

    let ctx = Ctx {
        pipeline_yaml: std::fs::read_to_string(&file).unwrap(),
        run_id: run_id.clone(),
        agent: "a1".into(),
        viewer_accessor,
        stores: c
            .all_ids()
            .into_iter()
            .map(|id| (id, c.store_id(id).unwrap()))
            .collect(),
        experiment_id: String::new(),
        pipeline_id: String::new(),
        pipeline_version_id: String::new(),
        recurring_run_id: String::new(),
    };
    let ctx = {
        let mut ctx = ctx;
        // An experiment and a pipeline of the KFP API for refused calls to aim at.
        let _in_runtime = rt.enter();
        let admin = c.channel(1).unwrap();
        let (_, e) = rt
            .block_on(http_call(
                admin.clone(),
                "POST",
                "/apis/v2beta1/experiments",
                "application/json",
                json!({"display_name": "walk-experiment"})
                    .to_string()
                    .into_bytes(),
            ))
            .unwrap();
        ctx.experiment_id = e["experiment_id"].as_str().unwrap().to_string();
        let (ct, body) = multipart(&ctx.pipeline_yaml);
        let (_, p) = rt
            .block_on(http_call(
                admin.clone(),
                "POST",
                "/apis/v2beta1/pipelines/upload?name=walk-pipeline",
                &ct,
                body,
            ))
            .unwrap();
        ctx.pipeline_id = p["pipeline_id"].as_str().unwrap().to_string();
        let (_, vs) = rt
            .block_on(http_call(
                admin,
                "GET",
                &format!("/apis/v2beta1/pipelines/{}/versions", ctx.pipeline_id),
                "application/json",
                Vec::new(),
            ))
            .unwrap();
        ctx.pipeline_version_id = vs["pipeline_versions"][0]["pipeline_version_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, r) = rt
            .block_on(http_call(
                c.channel(1).unwrap(),
                "POST",
                "/apis/v2beta1/recurringruns",
                "application/json",
                recurring_body("walk-schedule", &ctx.pipeline_id)
                    .to_string()
                    .into_bytes(),
            ))
            .unwrap();
        ctx.recurring_run_id = r["recurring_run_id"].as_str().unwrap().to_string();
        ctx
    };
    let before = observe(&c, &rt, &ctx).unwrap();
    let mut wrong = Vec::new();
    let mut calls = 0;
    for rule in TABLE {
        for node in c.all_ids() {
            for caller in &callers {
                let want = want(rule.method, rule.allow, caller);
                let refused = !matches!(want, Want::Allowed);
                // The channel is made on the runtime: its connection task lives there.
                let got = if rule.method.starts_with('/') {
                    let body = payload(rule.method, refused, &ctx, node);
                    rt.block_on(async { call(channel(caller, node), rule.method, body).await })
                } else {
                    let (method, path, ct, body) = http_request(rule.method, refused, &ctx);
                    rt.block_on(async {
                        http_call(channel(caller, node), &method, &path, &ct, body)
                            .await
                            .map(|_| ())
                    })
                };
                calls += 1;
                let what = format!("{} on node {node} by {}", rule.method, caller.name);
                match (&want, got) {
                    (Want::Allowed, Ok(())) => {}
                    (Want::Allowed, Err(s)) => {
                        if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
                            wrong.push(format!("{what}: should be allowed, got {s:?}"));
                        }
                    }
                    (Want::Refused(code, _), Ok(())) => {
                        wrong.push(format!("{what}: should be refused ({code:?}), was allowed"))
                    }
                    (Want::Refused(code, words), Err(s)) => {
                        let missing: Vec<&String> =
                            words.iter().filter(|w| !s.message().contains(*w)).collect();
                        if s.code() != *code || !missing.is_empty() {
                            wrong.push(format!(
                                "{what}: should be {code:?} saying {words:?}, got {:?}: {:?}",
                                s.code(),
                                s.message()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {calls} calls answered against the table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The second bootstrap is refused and creates nothing.
    let again = cli.run(&["acl", "bootstrap"]);
    assert_eq!(again.code, 2, "{} {}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("already bootstrapped"),
        "{}",
        again.stderr
    );

    let after = observe(&c, &rt, &ctx).unwrap();
    assert_eq!(
        before,
        after,
        "refused calls changed the cluster:\n{}",
        c.logs_tail()
    );
    assert_eq!(
        task(&cli.get_run(&run_id).unwrap(), "nap")["state"],
        "RUNNING"
    );
    let cancel = cli.run(&["run", "cancel", &run_id]);
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    c.stop_agent("a1");
}

#[test]
fn the_readme_shows_the_authorization_table() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let table = markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's \"Who may call what\" table is not the authorization table; replace it \
         with:\n{table}"
    );
}
