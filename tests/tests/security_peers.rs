//! Forged Raft traffic on a 3-node TLS cluster. Whoever is not the coordinator a message claims
//! to come from — no certificate, an agent's, a coordinator certificate of another CA or
//! another cluster, another coordinator's, or the right coordinator vouching for a message of
//! a third — is refused, on every node and for all three kinds of peer traffic (a heartbeat
//! raising the term and commit, an append carrying a command, a snapshot stream making the
//! target a cluster of its own), and the right coordinator speaking from another data directory
//! (a wiped node) or with no store id, are refused. Nothing moves: no node's term, leader, commit or applied
//! index, no run, no token; and the target logs each refusal with its reason.

use std::sync::Arc;
use std::time::Duration;

use gantry_coordinator::auth::token_hash;
use gantry_proto::v1 as pb;
use gantry_proto::v1::raft_service_client::RaftServiceClient;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_testkit::cluster::{
    client_tls, issue, issue_for, Authed, Cluster, ClusterOpts, TEST_CLUSTER,
};
use gantry_testkit::{always, eventually, settled};
use gantry_tls::issue::{create_ca, CertFiles};
use gantry_tls::{Role, TlsContext};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};
use serde_json::{json, Value};
use tonic::Code;

/// The secret of the admin token the forged append tries to create.
const FORGED_SECRET: &str = "gantry_forged_by_a_stranger";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What must not move: every node's Raft position, and what the state machine holds.
#[derive(Debug, PartialEq)]
struct Observed {
    /// (node, term, leader, commit index, applied index, runs)
    nodes: Vec<(u64, u64, u64, u64, u64, u32)>,
    runs: Value,
    tokens: Value,
}

fn observe(c: &Cluster) -> Result<Observed, String> {
    let mut nodes = Vec::new();
    for id in c.all_ids() {
        let s = c
            .status(id)
            .ok_or_else(|| format!("node {id} does not answer"))?;
        nodes.push((
            id,
            s.term,
            s.leader_id,
            s.commit_index,
            s.applied_index,
            s.runs,
        ));
    }
    let cli = c.cli();
    let json = |args: &[&str]| -> Result<Value, String> {
        let r = cli.run(args);
        r.json().map_err(|e| format!("gantry {args:?}: {e:#}"))
    };
    let tokens = json(&["acl", "token", "list", "-o", "json"])?;
    Ok(Observed {
        nodes,
        runs: json(&["run", "list", "-o", "json"])?,
        // Without the creation times, which a listing does not change.
        tokens: Value::Array(
            tokens
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|t| json!([t["accessor"], t["name"], t["role"]]))
                .collect(),
        ),
    })
}

/// The kinds of peer traffic, forged.
#[derive(Clone, Copy, Debug)]
enum Forgery {
    /// `MsgHeartbeat` with a term and a commit index far ahead.
    Heartbeat,
    /// `MsgAppend` in a higher term, its entry a committed admin token of our own.
    Append,
    /// The same append on the peers' long-lived `Stream` instead of a `Send`.
    StreamedAppend,
    /// `InstallSnapshot` whose first chunk is a `MsgSnapshot` far ahead that makes the target
    /// the only voter.
    Snapshot,
}

const FORGERIES: [Forgery; 4] = [
    Forgery::Heartbeat,
    Forgery::Append,
    Forgery::StreamedAppend,
    Forgery::Snapshot,
];

/// The target's position, which the forged messages claim to be ahead of.
#[derive(Clone, Copy)]
struct Position {
    term: u64,
    last: u64,
}

fn raft_message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// A `CreateToken` command, as the coordinator proposes it, for a token whose secret we know.
fn forged_command() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "create_token",
        "token": {
            "accessor": "f0f0f0f0f0f0f0f0",
            "name": "forged",
            "role": "admin",
            "secret_sha256": token_hash(FORGED_SECRET),
            "created_at": 0,
        }
    }))
    .unwrap()
}

async fn forge(
    ch: Authed,
    what: Forgery,
    from: u64,
    msg_from: u64,
    store: u64,
    to: u64,
    at: Position,
) -> Result<(), tonic::Status> {
    let mut client = RaftServiceClient::new(ch);
    let term = at.term + 100;
    let call = async {
        match what {
            Forgery::Heartbeat => {
                let mut m = raft_message(MessageType::MsgHeartbeat, msg_from, to, term);
                m.commit = at.last + 100;
                send(&mut client, from, store, m).await
            }
            Forgery::Append | Forgery::StreamedAppend => {
                let mut m = raft_message(MessageType::MsgAppend, msg_from, to, term);
                m.index = at.last;
                m.log_term = at.term;
                let mut e = Entry {
                    term,
                    index: at.last + 1,
                    ..Default::default()
                };
                e.set_data(forged_command().into());
                m.set_entries(vec![e].into());
                m.commit = at.last + 1;
                if matches!(what, Forgery::StreamedAppend) {
                    client
                        .stream(tokio_stream::iter(vec![batch(from, store, m)]))
                        .await
                        .map(|_| ())
                } else {
                    send(&mut client, from, store, m).await
                }
            }
            Forgery::Snapshot => {
                let mut m = raft_message(MessageType::MsgSnapshot, msg_from, to, term);
                let mut cs = ConfState::default();
                cs.set_voters(vec![to]);
                let mut meta = SnapshotMetadata {
                    index: at.last + 1000,
                    term,
                    ..Default::default()
                };
                meta.set_conf_state(cs);
                let mut snap = Snapshot::default();
                snap.set_metadata(meta);
                m.set_snapshot(snap);
                let data = b"{}".to_vec();
                let first = pb::SnapshotChunk {
                    from,
                    from_address: "127.0.0.1:9".into(),
                    message: m.write_to_bytes().unwrap(),
                    total_size: data.len() as u64,
                    data,
                    cluster: TEST_CLUSTER.into(),
                    from_store: store,
                };
                client
                    .install_snapshot(tokio_stream::iter(vec![first]))
                    .await
                    .map(|_| ())
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 10 s")))
}

async fn send(
    client: &mut RaftServiceClient<Authed>,
    from: u64,
    store: u64,
    m: Message,
) -> Result<(), tonic::Status> {
    client.send(batch(from, store, m)).await.map(|_| ())
}

/// One forged message in a batch that claims to come from node `from` of this cluster.
fn batch(from: u64, store: u64, m: Message) -> pb::RaftBatch {
    pb::RaftBatch {
        from,
        from_address: "127.0.0.1:9".into(),
        messages: vec![m.write_to_bytes().unwrap()],
        cluster: TEST_CLUSTER.into(),
        from_store: store,
    }
}

/// How a forgery must be refused, and what the target must log.
#[derive(Clone)]
enum Refusal {
    /// By the authorization layer: PermissionDenied, `request refused` with this in the reason.
    Layer(&'static str),
    /// By the peer check: PermissionDenied, `raft traffic refused` with this in the reason.
    Peer(String),
    /// In the TLS handshake: the CA does not vouch for the client's certificate.
    Handshake,
}

struct Case {
    name: String,
    tls: Arc<TlsContext>,
    /// The batch's `from`, and its message's.
    from: u64,
    msg_from: u64,
    refusal: Refusal,
    /// The store id stamped on the traffic (the claimed sender's real one, unless the case is
    /// about the store id).
    store: u64,
}

/// Certificates of coordinator `id` no node may accept: one signed by a stranger's CA for a
/// cluster of another name, one signed by this cluster's CA for another cluster.
struct Strangers {
    foreign_ca: Vec<CertFiles>,
    other_cluster: Vec<CertFiles>,
}

fn strangers(c: &Cluster) -> Strangers {
    let dir = c.dir.path().join("strangers");
    let ca = create_ca(&dir.join("ca"), "elsewhere", 30, false).unwrap();
    let ours = c.ca().expect("a TLS cluster");
    let mut s = Strangers {
        foreign_ca: Vec::new(),
        other_cluster: Vec::new(),
    };
    for id in c.all_ids() {
        // Files named after the role: one directory per kind, so nothing in tls_dir changes.
        s.foreign_ca
            .push(issue(&ca, &dir.join("foreign"), Role::Coordinator(id)).unwrap());
        s.other_cluster.push(
            issue_for(
                ours,
                &dir.join("other"),
                Role::Coordinator(id),
                Some("other"),
            )
            .unwrap(),
        );
    }
    s
}

fn cases(c: &Cluster, s: &Strangers, target: u64) -> Vec<Case> {
    let ca = c.tls_dir().unwrap().join("ca.pem");
    let others: Vec<u64> = c.all_ids().into_iter().filter(|i| *i != target).collect();
    let (a, b) = (others[0], others[1]);
    let own = |id: u64| CertFiles {
        cert: c.tls_dir().unwrap().join(format!("coordinator-{id}.pem")),
        key: c.tls_dir().unwrap().join(format!("coordinator-{id}.key")),
    };
    let agent = c.agent_cert("a1").unwrap().unwrap();
    let tls = |cert: Option<&CertFiles>| client_tls(&ca, cert).unwrap();
    let idx = (a - 1) as usize;
    let real = |id: u64| c.store_id(id).unwrap();
    vec![
        Case {
            name: format!("(a) no client certificate, claiming to be node {a}"),
            tls: tls(None),
            from: a,
            msg_from: a,
            store: real(a),
            refusal: Refusal::Layer("the caller is anonymous"),
        },
        Case {
            name: format!("(b) agent a1's certificate, claiming to be node {a}"),
            tls: tls(Some(&agent)),
            from: a,
            msg_from: a,
            store: real(a),
            refusal: Refusal::Layer("the caller is agent a1"),
        },
        Case {
            name: format!("(c) coordinator-{a} of another CA's cluster"),
            tls: tls(Some(&s.foreign_ca[idx])),
            from: a,
            msg_from: a,
            store: real(a),
            refusal: Refusal::Handshake,
        },
        Case {
            name: format!("(c) coordinator-{a} of cluster `other`, signed by this CA"),
            tls: tls(Some(&s.other_cluster[idx])),
            from: a,
            msg_from: a,
            store: real(a),
            refusal: Refusal::Layer("the caller is anonymous"),
        },
        Case {
            name: format!("(d) coordinator-{a}'s certificate claiming to be node {b}"),
            tls: tls(Some(&own(a))),
            from: b,
            msg_from: b,
            store: real(b),
            refusal: Refusal::Peer(format!(
                "coordinator {a} sent raft messages claiming to be node {b}"
            )),
        },
        Case {
            name: format!("(e) coordinator-{a}, batch from {a}, message from {b}"),
            tls: tls(Some(&own(a))),
            from: a,
            msg_from: b,
            store: real(a),
            refusal: Refusal::Peer(format!(
                "raft message from {b} to {target} arrived in a batch from {a}"
            )),
        },
        Case {
            name: format!("(f) coordinator-{a} speaking from another data directory"),
            tls: tls(Some(&own(a))),
            from: a,
            msg_from: a,
            store: real(a) ^ 1,
            refusal: Refusal::Peer(format!("node {a} came back with another data directory")),
        },
        Case {
            name: format!("(f) coordinator-{a} without a store id"),
            tls: tls(Some(&own(a))),
            from: a,
            msg_from: a,
            store: 0,
            refusal: Refusal::Peer(format!("node {a} sent raft traffic without a store id")),
        },
    ]
}

fn refusals(c: &Cluster, target: u64, r: &Refusal) -> usize {
    match r {
        Refusal::Layer(why) => c.log_count(
            target,
            &["request refused", "/gantry.v1.RaftService/", "reason=", why],
        ),
        Refusal::Peer(why) => c.log_count(target, &["raft traffic refused", "reason=", why]),
        Refusal::Handshake => c.log_count(target, &["TLS handshake refused"]),
    }
}

#[test]
fn forged_raft_traffic_is_refused_by_every_node_and_moves_nothing() {
    let c = Cluster::start(ClusterOpts::loopback(3)).unwrap();
    c.wait_leader(&c.all_ids(), Duration::from_secs(20))
        .unwrap();
    c.wait_converged(Duration::from_secs(20)).unwrap();
    let s = strangers(&c);
    let rt = runtime();
    // The cluster at rest: nothing changes by itself for a while.
    let before = settled(Duration::from_secs(20), Duration::from_secs(1), || {
        observe(&c)
    });

    for target in c.all_ids() {
        let at = before.nodes[(target - 1) as usize];
        let at = Position {
            term: at.1,
            last: at.3,
        };
        for case in cases(&c, &s, target) {
            for what in FORGERIES {
                let seen = refusals(&c, target, &case.refusal);
                let result = rt.block_on(async {
                    let ch = c.channel_as(target, Some(case.tls.clone()), None).unwrap();
                    forge(ch, what, case.from, case.msg_from, case.store, target, at).await
                });
                let what_case = format!("{what:?} to node {target}, {}", case.name);
                let status = match result {
                    Ok(()) => panic!("{what_case}: accepted\n{}", c.logs_tail()),
                    Err(s) => s,
                };
                match &case.refusal {
                    Refusal::Layer(_) | Refusal::Peer(_) => assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{what_case}: {status:?}"
                    ),
                    // The client learns of it as a broken connection, in one of several words.
                    Refusal::Handshake => assert!(
                        matches!(
                            status.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        ),
                        "{what_case}: {status:?}"
                    ),
                }
                // The handshake is refused on a task of its own: its line may come later.
                eventually(Duration::from_secs(5), || {
                    if refusals(&c, target, &case.refusal) > seen {
                        Ok(())
                    } else {
                        Err(format!(
                            "{what_case}: node {target} did not log the refusal\n{}",
                            c.log(target)
                        ))
                    }
                });
            }
        }
    }

    // Nothing moved then, and nothing moves now.
    always(Duration::from_secs(3), || {
        let now = observe(&c)?;
        if now == before {
            Ok(())
        } else {
            Err(format!(
                "the cluster changed:\nbefore {before:#?}\nafter {now:#?}\n{}",
                c.logs_tail()
            ))
        }
    });
    // The token the forged append carried was never committed anywhere.
    for id in c.all_ids() {
        let refused = rt.block_on(async {
            let tls = client_tls(&c.tls_dir().unwrap().join("ca.pem"), None).unwrap();
            let ch = c.channel_as(id, Some(tls), Some(FORGED_SECRET)).unwrap();
            RunServiceClient::new(ch)
                .list_runs(pb::ListRunsRequest { limit: 1 })
                .await
        });
        let status = refused.expect_err("the forged token works");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "node {id}: {status:?}"
        );
    }
}
