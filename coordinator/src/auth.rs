//! Who may call what: the one authorization table, and the tower layer that applies it to
//! every request before any handler runs.
//!
//! Two kinds of credential reach a coordinator:
//! - a **certificate** of the cluster CA, verified during the TLS handshake, naming a
//!   coordinator (Raft traffic), an agent (its session) or a client;
//! - a **bearer token** (`authorization: Bearer <secret>`), looked up by its SHA-256 in the
//!   replicated token table, whose role is admin, submitter or viewer.
//!
//! A method missing from [`TABLE`] is refused: new RPCs are closed until someone decides who
//! may call them. Refusals are `Unauthenticated` (no or a bad credential) or
//! `PermissionDenied` (a good credential without the right), say what was missing, and are
//! logged; the handler never runs, so nothing changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use gantry_core::state::acl::{Role, TokenRecord};
use gantry_tls::{Identity, PeerInfo};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::server::Coordinator;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// No credential needed (only the one-time ACL bootstrap).
    Anyone,
    /// No credential needed, and nothing is revealed but that the API is up (the KFP health
    /// check, which `kfp.Client()` calls before anything else).
    Public,
    /// A token with one of these roles.
    Roles(&'static [Role]),
    /// A coordinator certificate of this cluster (peer traffic).
    Coordinators,
    /// An agent certificate of this cluster; the agent id is the certificate's.
    Agents,
    /// A token with one of these roles, or any certificate of the cluster CA: a leader asking
    /// a coordinator who it is before it joins, or an operator looking at a node that does not
    /// know the cluster's tokens yet.
    RolesOrCertificates(&'static [Role]),
}

pub const READ: &[Role] = &[Role::Admin, Role::Submitter, Role::Viewer];
pub const WRITE: &[Role] = &[Role::Admin, Role::Submitter];
pub const ADMIN: &[Role] = &[Role::Admin];

pub struct Rule {
    pub method: &'static str,
    pub allow: Allow,
}

const fn rule(method: &'static str, allow: Allow) -> Rule {
    Rule { method, allow }
}

/// Every RPC and who may call it. The README's table is rendered from this one
/// ([`markdown_table`], checked by a test).
pub const TABLE: &[Rule] = &[
    rule("/gantry.v1.RunService/SubmitRun", Allow::Roles(WRITE)),
    rule("/gantry.v1.RunService/CancelRun", Allow::Roles(WRITE)),
    rule("/gantry.v1.RunService/RetryRun", Allow::Roles(WRITE)),
    rule("/gantry.v1.RunService/GetRun", Allow::Roles(READ)),
    rule("/gantry.v1.RunService/ListRuns", Allow::Roles(READ)),
    rule("/gantry.v1.RunService/StreamLogs", Allow::Roles(READ)),
    rule("/gantry.v1.RunService/DecideApproval", Allow::Roles(WRITE)),
    rule("/gantry.v1.AgentService/Session", Allow::Agents),
    rule("/gantry.v1.AgentService/ListAgents", Allow::Roles(READ)),
    rule("/gantry.v1.AgentService/DrainAgent", Allow::Roles(ADMIN)),
    rule(
        "/gantry.v1.ClusterService/Status",
        Allow::RolesOrCertificates(READ),
    ),
    rule("/gantry.v1.ClusterService/AddMember", Allow::Roles(ADMIN)),
    rule(
        "/gantry.v1.ClusterService/RemoveMember",
        Allow::Roles(ADMIN),
    ),
    rule(
        "/gantry.v1.ClusterService/TransferLeader",
        Allow::Roles(ADMIN),
    ),
    rule("/gantry.v1.RaftService/Send", Allow::Coordinators),
    rule("/gantry.v1.RaftService/Stream", Allow::Coordinators),
    rule(
        "/gantry.v1.RaftService/InstallSnapshot",
        Allow::Coordinators,
    ),
    rule(
        "/gantry.v1.RaftService/InstallSnapshotV2",
        Allow::Coordinators,
    ),
    rule("/gantry.v1.AclService/Bootstrap", Allow::Anyone),
    rule("/gantry.v1.AclService/CreateToken", Allow::Roles(ADMIN)),
    rule("/gantry.v1.AclService/ListTokens", Allow::Roles(ADMIN)),
    rule("/gantry.v1.AclService/RevokeToken", Allow::Roles(ADMIN)),
    rule("/gantry.v1.WebhookService/AddWebhook", Allow::Roles(ADMIN)),
    rule(
        "/gantry.v1.WebhookService/ListWebhooks",
        Allow::Roles(ADMIN),
    ),
    rule(
        "/gantry.v1.WebhookService/RemoveWebhook",
        Allow::Roles(ADMIN),
    ),
    // The KFP REST API (`crate::kfp::routes`), keyed by method and route.
    rule("GET /apis/v2beta1/healthz", Allow::Public),
    rule("GET /apis/v2beta1/experiments", Allow::Roles(READ)),
    rule("POST /apis/v2beta1/experiments", Allow::Roles(WRITE)),
    rule(
        "GET /apis/v2beta1/experiments/{experiment_id}",
        Allow::Roles(READ),
    ),
    rule(
        "DELETE /apis/v2beta1/experiments/{experiment_id}",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/experiments/{experiment_id}:archive",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/experiments/{experiment_id}:unarchive",
        Allow::Roles(WRITE),
    ),
    rule("GET /apis/v2beta1/pipelines", Allow::Roles(READ)),
    rule("POST /apis/v2beta1/pipelines/upload", Allow::Roles(WRITE)),
    rule(
        "POST /apis/v2beta1/pipelines/upload_version",
        Allow::Roles(WRITE),
    ),
    rule(
        "GET /apis/v2beta1/pipelines/{pipeline_id}",
        Allow::Roles(READ),
    ),
    rule(
        "DELETE /apis/v2beta1/pipelines/{pipeline_id}",
        Allow::Roles(WRITE),
    ),
    rule(
        "GET /apis/v2beta1/pipelines/{pipeline_id}/versions",
        Allow::Roles(READ),
    ),
    rule(
        "GET /apis/v2beta1/pipelines/{pipeline_id}/versions/{pipeline_version_id}",
        Allow::Roles(READ),
    ),
    rule(
        "DELETE /apis/v2beta1/pipelines/{pipeline_id}/versions/{pipeline_version_id}",
        Allow::Roles(WRITE),
    ),
    rule("GET /apis/v2beta1/runs", Allow::Roles(READ)),
    rule("POST /apis/v2beta1/runs", Allow::Roles(WRITE)),
    rule("GET /apis/v2beta1/runs/{run_id}", Allow::Roles(READ)),
    rule("DELETE /apis/v2beta1/runs/{run_id}", Allow::Roles(WRITE)),
    rule(
        "POST /apis/v2beta1/runs/{run_id}:terminate",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/runs/{run_id}:retry",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/runs/{run_id}:archive",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/runs/{run_id}:unarchive",
        Allow::Roles(WRITE),
    ),
    rule("GET /apis/v2beta1/recurringruns", Allow::Roles(READ)),
    rule("POST /apis/v2beta1/recurringruns", Allow::Roles(WRITE)),
    rule(
        "GET /apis/v2beta1/recurringruns/{recurring_run_id}",
        Allow::Roles(READ),
    ),
    rule(
        "DELETE /apis/v2beta1/recurringruns/{recurring_run_id}",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/recurringruns/{recurring_run_id}:enable",
        Allow::Roles(WRITE),
    ),
    rule(
        "POST /apis/v2beta1/recurringruns/{recurring_run_id}:disable",
        Allow::Roles(WRITE),
    ),
];

pub fn lookup(method: &str) -> Option<&'static Rule> {
    TABLE.iter().find(|r| r.method == method)
}

/// The caller of a request, as authenticated. Handlers read it from the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    pub cert: Option<Identity>,
    pub token: Option<TokenRecord>,
}

impl Principal {
    /// How logs and records name the caller.
    pub fn name(&self) -> String {
        match (&self.token, &self.cert) {
            (Some(t), _) => format!("token {} ({})", t.name, t.role),
            (None, Some(id)) => id.role.to_string(),
            (None, None) => "anonymous".into(),
        }
    }
}

/// The SHA-256 of a token secret, as stored.
pub fn token_hash(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// The bearer token of a request, if any.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Status> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <token>`"))?
        .trim();
    Ok(Some(token))
}

/// Whether the listener runs without TLS (`--insecure`): then no certificate can be checked,
/// and peer and agent traffic is trusted as the network is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Insecure,
}

/// Authenticates and authorizes one call.
pub fn check(
    c: &Coordinator,
    transport: Transport,
    method: &str,
    peer: Option<&PeerInfo>,
    headers: &http::HeaderMap,
    now: i64,
) -> Result<Principal, Status> {
    let rule = lookup(method).ok_or_else(|| {
        Status::permission_denied(format!(
            "{method} is not in the authorization table; nobody may call it"
        ))
    })?;
    let cert = peer
        .and_then(|p| p.identity.clone())
        .filter(|id| c.cluster.as_deref().is_none_or(|want| want == id.cluster));
    let token = match bearer(headers)? {
        None => None,
        Some(secret) => {
            let st = c.state.read();
            let record = st.acl.token(&token_hash(secret)).cloned().ok_or_else(|| {
                Status::unauthenticated("the token is not valid (unknown, or revoked)")
            })?;
            if record.expired(now) {
                return Err(Status::unauthenticated(format!(
                    "token {} expired",
                    record.name
                )));
            }
            Some(record)
        }
    };
    let principal = Principal { cert, token };
    let has_role = |roles: &[Role]| {
        principal
            .token
            .as_ref()
            .is_some_and(|t| roles.contains(&t.role))
    };
    let is_coordinator = matches!(
        principal.cert.as_ref().map(|i| &i.role),
        Some(gantry_tls::Role::Coordinator(_))
    ) || transport == Transport::Insecure;
    let has_cert = principal.cert.is_some() || transport == Transport::Insecure;
    let is_agent = matches!(
        principal.cert.as_ref().map(|i| &i.role),
        Some(gantry_tls::Role::Agent(_))
    ) || transport == Transport::Insecure;
    let ok = match rule.allow {
        Allow::Anyone | Allow::Public => true,
        Allow::Roles(_) if principal.token.is_none() => {
            let how = if method.starts_with('/') {
                "pass --token or set GANTRY_TOKEN"
            } else {
                "send `Authorization: Bearer <token>` (kfp.Client(existing_token=...))"
            };
            return Err(Status::unauthenticated(format!(
                "{method} needs {}: {how}",
                needs(rule.allow)
            )));
        }
        Allow::RolesOrCertificates(_) if principal.token.is_none() && !has_cert => {
            return Err(Status::unauthenticated(format!(
                "{method} needs {}",
                needs(rule.allow)
            )));
        }
        Allow::Roles(roles) => has_role(roles),
        Allow::RolesOrCertificates(roles) => has_cert || has_role(roles),
        Allow::Coordinators => is_coordinator,
        Allow::Agents => is_agent,
    };
    if ok {
        return Ok(principal);
    }
    Err(Status::permission_denied(format!(
        "{method} needs {}; the caller is {}",
        needs(rule.allow),
        principal.name()
    )))
}

fn roles_text(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// What a rule asks of a caller, in words (errors and the README).
pub fn needs(allow: Allow) -> String {
    match allow {
        Allow::Anyone => "no credential (it works once: the first admin token)".into(),
        Allow::Public => "no credential (it tells only that the API is up)".into(),
        Allow::Roles(roles) => format!("a token with role {}", roles_text(roles)),
        Allow::RolesOrCertificates(roles) => format!(
            "a token with role {}, or a certificate of the cluster CA",
            roles_text(roles)
        ),
        Allow::Coordinators => "a coordinator certificate of this cluster".into(),
        Allow::Agents => {
            "an agent certificate of this cluster (the agent acts as itself only)".into()
        }
    }
}

/// The authorization table as a markdown table, for the README.
pub fn markdown_table() -> String {
    let mut out = String::from("| RPC or HTTP route | who may call it |\n| --- | --- |\n");
    for r in TABLE {
        let name = r.method.trim_start_matches("/gantry.v1.");
        out.push_str(&format!("| `{name}` | {} |\n", needs(r.allow)));
    }
    out
}

/// Applies [`check`] to every request; a refusal is answered before the handler runs.
#[derive(Clone)]
pub struct AuthLayer {
    pub coordinator: Arc<Coordinator>,
    pub transport: Transport,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let rest = path.starts_with(crate::kfp::routes::PREFIX);
        let method = if rest {
            match crate::kfp::routes::find(req.method().as_str(), &path) {
                crate::kfp::routes::Found::Route { route, .. } => crate::kfp::routes::key(route),
                // No such route: the handler says so, and nothing is served.
                _ => {
                    let clone = self.inner.clone();
                    let mut ready = std::mem::replace(&mut self.inner, clone);
                    return Box::pin(ready.call(req));
                }
            }
        } else {
            path
        };
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let result = check(
            &self.layer.coordinator,
            self.layer.transport,
            &method,
            peer.as_ref(),
            req.headers(),
            crate::now_ms(),
        );
        match result {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                // The clone that was polled ready serves this call; a fresh one waits for the next.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(status) => {
                tracing::warn!(
                    %method,
                    remote = ?peer.as_ref().and_then(|p| p.remote),
                    caller = ?peer.as_ref().and_then(|p| p.identity.as_ref()).map(|i| i.to_string()),
                    reason = %status.message(),
                    "request refused"
                );
                if rest {
                    let e = crate::kfp::HttpError::from(status);
                    let (parts, body) = e.response().into_parts();
                    return Box::pin(async move {
                        Ok(http::Response::from_parts(
                            parts,
                            tonic::body::Body::new(body),
                        ))
                    });
                }
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The principal the authorization layer attached to a request.
pub fn principal<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_every_service_is_in_the_table_once() {
        let services = [
            (
                "RunService",
                gantry_proto::v1::run_service_server::SERVICE_NAME,
            ),
            (
                "AgentService",
                gantry_proto::v1::agent_service_server::SERVICE_NAME,
            ),
            (
                "ClusterService",
                gantry_proto::v1::cluster_service_server::SERVICE_NAME,
            ),
            (
                "RaftService",
                gantry_proto::v1::raft_service_server::SERVICE_NAME,
            ),
            (
                "AclService",
                gantry_proto::v1::acl_service_server::SERVICE_NAME,
            ),
            (
                "WebhookService",
                gantry_proto::v1::webhook_service_server::SERVICE_NAME,
            ),
        ];
        let proto = include_str!("../../proto/proto/gantry.proto");
        let mut declared = Vec::new();
        let mut service = "";
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or("").trim();
                let full = services
                    .iter()
                    .find(|(s, _)| *s == service)
                    .map(|(_, full)| *full)
                    .unwrap_or_else(|| panic!("service {service} is not listed here"));
                declared.push(format!("/{full}/{name}"));
            }
        }
        let mut in_table: Vec<String> = TABLE
            .iter()
            .filter(|r| r.method.starts_with('/'))
            .map(|r| r.method.to_string())
            .collect();
        declared.sort();
        in_table.sort();
        assert_eq!(
            declared, in_table,
            "the proto's RPCs and the authorization table differ"
        );
    }

    #[test]
    fn the_readme_shows_the_table() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's authorization table is out of date; it should read:\n{}",
            markdown_table()
        );
    }
}
