//! Connecting to coordinators: each call goes to the endpoint that last answered and moves on to
//! the next one when a node is down, paused, cut off or has no leader. Every call carries the
//! token, and goes over TLS whenever a CA is configured.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_model::limits::{MAX_CLIENT_REQUEST_BYTES, MAX_CLIENT_RESPONSE_BYTES};
use gantry_proto::v1::acl_service_client::AclServiceClient;
use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::run_service_client::RunServiceClient;
use gantry_proto::v1::webhook_service_client::WebhookServiceClient;
use gantry_tls::TlsContext;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::exit::CliError;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AddToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, AddToken>;

/// The services over one channel.
#[derive(Clone)]
pub struct Clients {
    pub runs: RunServiceClient<Svc>,
    pub agents: AgentServiceClient<Svc>,
    pub cluster: ClusterServiceClient<Svc>,
    pub acl: AclServiceClient<Svc>,
    pub webhooks: WebhookServiceClient<Svc>,
    /// The same connection for the KFP HTTP API.
    pub http: Svc,
}

/// Where the CLI connects and with what credentials.
#[derive(Clone, Debug)]
pub struct Target {
    /// Comma-separated `host:port` or URLs.
    pub endpoints: String,
    pub tls: Option<Arc<TlsContext>>,
    pub token: Option<String>,
}

/// Endpoints tried in turn, for up to `retry_for` per call.
pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Option<Channel>>,
    current: usize,
    tls: Option<Arc<TlsContext>>,
    token: AddToken,
    pub retry_for: Duration,
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || broken_connection(s)
}

/// A request whose connection broke under it (the node, or the leader it forwarded to,
/// restarted) comes back as `Unknown: transport error`, not `Unavailable` (seen once in 1 831
/// submissions during a rolling restart of the coordinators).
fn broken_connection(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unknown
        && (s.message() == "transport error"
            || std::error::Error::source(s)
                .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some()))
}

/// A client for `target` that connects on first use.
pub fn connect_lazy(target: &Target) -> Result<Client, CliError> {
    let endpoints: Vec<String> = target
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err(CliError::Refused(
            "no coordinator endpoint given (--endpoint / GANTRY_ENDPOINT)".into(),
        ));
    }
    for e in &endpoints {
        if e.starts_with("https://") && target.tls.is_none() {
            return Err(CliError::Refused(format!(
                "{e} is a TLS endpoint: give the cluster CA with --ca or GANTRY_CA"
            )));
        }
        tonic::transport::Endpoint::from_shared(gantry_tls::client::endpoint_url(e))
            .map_err(|err| CliError::Refused(format!("bad endpoint {e}: {err}")))?;
    }
    let token = match &target.token {
        None => None,
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
            CliError::Refused("the token holds characters a header cannot carry".into())
        })?),
    };
    Ok(Client {
        channels: vec![None; endpoints.len()],
        endpoints,
        current: 0,
        tls: target.tls.clone(),
        token: AddToken(token),
        retry_for: Duration::from_secs(30),
    })
}

/// Like [`connect_lazy`], and fails at once when no endpoint accepts a connection.
pub async fn connect(target: &Target) -> Result<Client, CliError> {
    let mut c = connect_lazy(target)?;
    c.call(Duration::from_secs(5), |cl| async move {
        let mut cluster = cl.cluster;
        cluster
            .status(gantry_proto::v1::ClusterStatusRequest {})
            .await
            .map(|_| ())
    })
    .await?;
    Ok(c)
}

impl Client {
    fn channel(&mut self, i: usize) -> Result<Channel, CliError> {
        if let Some(c) = &self.channels[i] {
            return Ok(c.clone());
        }
        let ch = gantry_tls::client::channel(&self.endpoints[i], self.tls.clone(), |e| e)
            .map_err(|e| CliError::Refused(format!("bad endpoint {}: {e}", self.endpoints[i])))?;
        self.channels[i] = Some(ch.clone());
        Ok(ch)
    }

    /// Runs `f` against the current endpoint; on an unavailable node, a timeout after
    /// `per_try`, or "no leader", tries the next endpoint, round after round, until
    /// `retry_for` has passed. Only use it for calls that are safe to repeat (reads, and writes
    /// that carry a request id or are idempotent).
    pub async fn call<T, F, Fut>(&mut self, per_try: Duration, mut f: F) -> Result<T, CliError>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let began = Instant::now();
        let mut last = String::new();
        loop {
            for k in 0..self.endpoints.len() {
                let i = (self.current + k) % self.endpoints.len();
                let ch = self.channel(i)?;
                let svc = |ch: Channel| InterceptedService::new(ch, self.token.clone());
                let clients = Clients {
                    runs: RunServiceClient::new(svc(ch.clone()))
                        .max_encoding_message_size(MAX_CLIENT_REQUEST_BYTES)
                        .max_decoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
                    agents: AgentServiceClient::new(svc(ch.clone()))
                        .max_encoding_message_size(MAX_CLIENT_REQUEST_BYTES)
                        .max_decoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
                    cluster: ClusterServiceClient::new(svc(ch.clone()))
                        .max_encoding_message_size(MAX_CLIENT_REQUEST_BYTES)
                        .max_decoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
                    acl: AclServiceClient::new(svc(ch.clone()))
                        .max_encoding_message_size(MAX_CLIENT_REQUEST_BYTES)
                        .max_decoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
                    webhooks: WebhookServiceClient::new(svc(ch.clone()))
                        .max_encoding_message_size(MAX_CLIENT_REQUEST_BYTES)
                        .max_decoding_message_size(MAX_CLIENT_RESPONSE_BYTES),
                    http: svc(ch),
                };
                match tokio::time::timeout(per_try, f(clients)).await {
                    Ok(Ok(v)) => {
                        self.current = i;
                        return Ok(v);
                    }
                    Ok(Err(s)) if retryable(&s) => {
                        last = format!("{}: {}", self.endpoints[i], s.message());
                        // A dead connection is not reused.
                        self.channels[i] = None;
                    }
                    Ok(Err(s)) => return Err(s.into()),
                    Err(_) => {
                        last = format!("{}: no answer within {per_try:?}", self.endpoints[i]);
                        self.channels[i] = None;
                    }
                }
            }
            if began.elapsed() >= self.retry_for {
                return Err(CliError::Unavailable(format!(
                    "no coordinator could serve the request within {:?} (last: {last}); \
                     start one with `gantry dev` or set --endpoint / GANTRY_ENDPOINT",
                    self.retry_for
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retryable;
    use tonic::Status;

    #[test]
    fn a_broken_connection_is_tried_again_and_a_refusal_is_not() {
        assert!(retryable(&Status::unavailable("no leader")));
        assert!(retryable(&Status::unknown("transport error")));
        assert!(!retryable(&Status::unknown("the pipeline panicked")));
        assert!(!retryable(&Status::invalid_argument("bad parameter")));
        assert!(!retryable(&Status::permission_denied("not allowed")));
    }
}
