//! Real TLS handshakes over loopback: who the server sees, whom the client trusts, and a
//! certificate rotation picked up without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gantry_tls::issue::{create_ca, create_cert, CaFiles, CertRequest};
use gantry_tls::{ClientCerts, Expect, Identity, Role, TlsContext, TlsFiles};
use tonic::transport::server::Connected;
use tower_service::Service;

fn cert(ca: &CaFiles, role: Role, out: &Path) -> TlsFiles {
    let files = create_cert(
        ca,
        &CertRequest {
            role,
            cluster: None,
            dns: vec![],
            ips: vec![],
            days: 1,
        },
        out,
        true,
    )
    .unwrap();
    TlsFiles {
        ca: ca.cert.clone(),
        cert: Some(files.cert),
        key: Some(files.key),
    }
}

struct Server {
    addr: std::net::SocketAddr,
    incoming: gantry_tls::server::Incoming,
}

async fn server(tls: Arc<TlsContext>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Server {
        addr,
        incoming: gantry_tls::server::incoming(listener, Some(tls)),
    }
}

/// Connects as `client` and returns what the server saw, or the client's error.
async fn connect(
    s: &mut Server,
    client: Option<Arc<TlsContext>>,
) -> Result<Option<Identity>, String> {
    let mut connector = gantry_tls::client::Connector::new(client, Duration::from_secs(5));
    let uri: http::Uri = format!("http://{}", s.addr).parse().unwrap();
    let dialled = connector.call(uri).await;
    match dialled {
        Ok(_io) => {
            let conn = tokio::time::timeout(Duration::from_secs(1), s.incoming.next())
                .await
                .map_err(|_| "the server accepted nothing".to_string())?
                .unwrap()
                .unwrap();
            Ok(conn.connect_info().identity)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn the_server_learns_who_connected_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = create_ca(&dir.path().join("ca"), "prod", 1, false).unwrap();
    let coord = cert(&ca, Role::Coordinator(1), &dir.path().join("c"));
    let ctx = |files: TlsFiles, expect| {
        TlsContext::load(files, ClientCerts::Optional, expect, None).unwrap()
    };
    let mut s = server(ctx(coord.clone(), Expect::Coordinator)).await;

    let agent = ctx(
        cert(&ca, Role::Agent("gpu07".into()), &dir.path().join("a")),
        Expect::Agent,
    );
    assert_eq!(
        connect(&mut s, Some(agent)).await.unwrap(),
        Some(Identity {
            role: Role::Agent("gpu07".into()),
            cluster: "prod".into()
        })
    );
    // Only the CA: the server is verified, the client is anonymous (tokens decide later).
    let anonymous = ctx(
        TlsFiles {
            ca: ca.cert.clone(),
            cert: None,
            key: None,
        },
        Expect::Any,
    );
    assert_eq!(connect(&mut s, Some(anonymous)).await.unwrap(), None);

    // A certificate of another CA is refused by the server.
    let other_ca = create_ca(&dir.path().join("other"), "prod", 1, false).unwrap();
    let stranger = ctx(
        cert(
            &other_ca,
            Role::Agent("gpu07".into()),
            &dir.path().join("s"),
        ),
        Expect::Agent,
    );
    // rustls' client side reports the handshake as done before the server's alert arrives:
    // what matters is that the server hands tonic no connection.
    let _ = connect(&mut s, Some(stranger)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.incoming.next())
            .await
            .is_err(),
        "a certificate of another CA was accepted"
    );

    // A client of another cluster does not trust this cluster's coordinator.
    let other_cluster_ca = create_ca(&dir.path().join("oc"), "staging", 1, false).unwrap();
    let mut mixed = std::fs::read_to_string(&other_cluster_ca.cert).unwrap();
    mixed.push_str(&std::fs::read_to_string(&ca.cert).unwrap());
    std::fs::write(dir.path().join("both.pem"), mixed).unwrap();
    let staging = TlsContext::load(
        TlsFiles {
            ca: dir.path().join("both.pem"),
            cert: None,
            key: None,
        },
        ClientCerts::Optional,
        Expect::Any,
        Some("staging".into()),
    )
    .unwrap();
    let err = connect(&mut s, Some(staging)).await.unwrap_err();
    assert!(
        err.contains("not a coordinator certificate of cluster staging"),
        "{err}"
    );

    // Plain TCP to a TLS listener gets nowhere.
    let _ = connect(&mut s, None).await;
}

#[tokio::test]
async fn rotated_certificates_are_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = create_ca(&dir.path().join("ca"), "prod", 1, false).unwrap();
    let coord = cert(&ca, Role::Coordinator(1), &dir.path().join("c"));
    let server_ctx = TlsContext::load(
        coord.clone(),
        ClientCerts::Required,
        Expect::Coordinator,
        None,
    )
    .unwrap();
    let mut s = server(server_ctx.clone()).await;
    let agent_files = cert(&ca, Role::Agent("a1".into()), &dir.path().join("a"));
    let agent = TlsContext::load(
        agent_files.clone(),
        ClientCerts::Optional,
        Expect::Agent,
        None,
    )
    .unwrap();
    assert!(connect(&mut s, Some(agent.clone())).await.is_ok());

    // A new CA: every certificate is reissued and the CA file holds both during the switch.
    let new_ca = create_ca(&dir.path().join("ca2"), "prod", 1, false).unwrap();
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&ca.cert).unwrap(),
        std::fs::read_to_string(&new_ca.cert).unwrap()
    );
    std::fs::write(&coord.ca, &both).unwrap();
    cert(&new_ca, Role::Coordinator(1), &dir.path().join("c"));
    std::fs::write(&agent_files.ca, &both).unwrap();
    cert(&new_ca, Role::Agent("a1".into()), &dir.path().join("a"));
    assert!(server_ctx.reload_if_changed().unwrap());
    assert!(agent.reload_if_changed().unwrap());
    assert!(!agent.reload_if_changed().unwrap(), "nothing changed since");
    assert!(connect(&mut s, Some(agent.clone())).await.is_ok());

    // The old CA is retired: only the new one is trusted, and the reissued pair still works.
    std::fs::copy(&new_ca.cert, &coord.ca).unwrap();
    std::fs::copy(&new_ca.cert, &agent_files.ca).unwrap();
    assert!(server_ctx.reload_if_changed().unwrap());
    assert!(agent.reload_if_changed().unwrap());
    assert!(connect(&mut s, Some(agent)).await.is_ok());

    // A key that does not match its certificate is not loaded; the previous material stays.
    std::fs::copy(
        dir.path().join("a/agent-a1.key"),
        dir.path().join("c/coordinator-1.key"),
    )
    .unwrap();
    assert!(server_ctx.reload_if_changed().is_err());
    assert!(server_ctx.server_config().is_some());
}
