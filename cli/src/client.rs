//! Connecting to coordinators: each call goes to the endpoint that last answered and moves on to
//! the next one when a node is down, paused, cut off or has no leader.

use std::future::Future;
use std::time::{Duration, Instant};

use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::run_service_client::RunServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::exit::CliError;

/// The three services over one channel.
#[derive(Clone)]
pub struct Clients {
    pub runs: RunServiceClient<Channel>,
    pub agents: AgentServiceClient<Channel>,
    pub cluster: ClusterServiceClient<Channel>,
}

/// Endpoints tried in turn, for up to `retry_for` per call.
pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Option<Channel>>,
    current: usize,
    pub retry_for: Duration,
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

/// `endpoints` is a comma-separated list of `host:port` or URLs.
pub fn connect_lazy(endpoints: &str) -> Result<Client, CliError> {
    let endpoints: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Err(CliError::Refused(
            "no coordinator endpoint given (--endpoint / GANTRY_ENDPOINT)".into(),
        ));
    }
    for e in &endpoints {
        Endpoint::from_shared(e.clone())
            .map_err(|err| CliError::Refused(format!("bad endpoint {e}: {err}")))?;
    }
    Ok(Client {
        channels: vec![None; endpoints.len()],
        endpoints,
        current: 0,
        retry_for: Duration::from_secs(30),
    })
}

/// Like [`connect_lazy`], and fails at once when no endpoint accepts a connection.
pub async fn connect(endpoints: &str) -> Result<Client, CliError> {
    let mut c = connect_lazy(endpoints)?;
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
        let ch = Endpoint::from_shared(self.endpoints[i].clone())
            .map_err(|e| CliError::Refused(format!("bad endpoint {}: {e}", self.endpoints[i])))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
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
                let clients = Clients {
                    runs: RunServiceClient::new(ch.clone()),
                    agents: AgentServiceClient::new(ch.clone()),
                    cluster: ClusterServiceClient::new(ch),
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
