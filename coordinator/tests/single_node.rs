//! A coordinator in this process, on port 0: a single voter elects itself and serves the
//! cluster API with the address it actually bound. No other process, namespace or image.

use std::time::Duration;

use gantry_coordinator::server::{start, CoordinatorConfig};
use gantry_proto::v1 as pb;
use gantry_proto::v1::cluster_service_client::ClusterServiceClient;
use gantry_testkit::poll_async;

#[tokio::test]
async fn a_single_voter_leads_and_reports_the_address_it_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = format!("file://{}", dir.path().join("artifacts").display());
    let listen = "127.0.0.1:0".parse().expect("an address");
    let server = start(CoordinatorConfig::single(
        1,
        listen,
        dir.path().join("c"),
        root,
    ))
    .await
    .expect("the coordinator starts");
    assert_ne!(
        server.addr.port(),
        0,
        "the bound port, not the one asked for"
    );
    let url = format!("http://{}", server.addr);
    let status = poll_async(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            let mut c = ClusterServiceClient::connect(url.clone())
                .await
                .map_err(|e| e.to_string())?;
            let s = c
                .status(pb::ClusterStatusRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if s.role == "LEADER" {
                Ok(s)
            } else {
                Err(format!("not leading yet: {s:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("no leader within 10 s: {e}"));
    assert_eq!((status.node_id, status.leader_id), (1, 1));
    let members: Vec<(u64, String)> = status
        .members
        .iter()
        .map(|m| (m.id, m.address.clone()))
        .collect();
    assert_eq!(members, vec![(1, server.addr.to_string())]);
    server.stop().await;
}
