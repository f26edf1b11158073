//! Connecting to a coordinator: endpoints are tried in turn.

use gantry_proto::v1::agent_service_client::AgentServiceClient;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_proto::v1::run_service_client::RunServiceClient;
use tonic::transport::Channel;

use crate::exit::CliError;

pub struct Clients {
    pub runs: RunServiceClient<Channel>,
    pub agents: AgentServiceClient<Channel>,
    pub cluster: ClusterServiceClient<Channel>,
}

/// `endpoints` is a comma-separated list; the first that answers is used.
pub async fn connect(endpoints: &str) -> Result<Clients, CliError> {
    let mut last_err = String::from("no endpoint given");
    for ep in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let ep = if ep.contains("://") {
            ep.to_string()
        } else {
            format!("http://{ep}")
        };
        let endpoint = match Channel::from_shared(ep.clone()) {
            Ok(e) => e.connect_timeout(std::time::Duration::from_secs(3)),
            Err(e) => {
                last_err = format!("{ep}: {e}");
                continue;
            }
        };
        match endpoint.connect().await {
            Ok(ch) => {
                return Ok(Clients {
                    runs: RunServiceClient::new(ch.clone()),
                    agents: AgentServiceClient::new(ch.clone()),
                    cluster: ClusterServiceClient::new(ch),
                })
            }
            Err(e) => last_err = format!("{ep}: {e}"),
        }
    }
    Err(CliError::Unavailable(format!(
        "cannot reach a coordinator ({last_err}); start one with `gantry dev` or set --endpoint / GANTRY_ENDPOINT"
    )))
}
