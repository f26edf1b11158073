//! Channels to coordinators: plain TCP, or TLS with the context's current client
//! configuration (its certificate, if any, and the CA), for tonic's `connect_with_connector`.
//!
//! Each new connection takes the material current at that moment, so a channel keeps working
//! across a certificate rotation: it reconnects with the new certificates.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use crate::material::TlsContext;

/// The TLS client side of a connection, or plain TCP.
pub enum ClientConn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ClientConn::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            ClientConn::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for ClientConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for ClientConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Dials coordinators for tonic.
#[derive(Clone, Debug)]
pub struct Connector {
    tls: Option<Arc<TlsContext>>,
    timeout: Duration,
}

impl Connector {
    pub fn new(tls: Option<Arc<TlsContext>>, timeout: Duration) -> Connector {
        Connector { tls, timeout }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<ClientConn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri.host().ok_or("the address has no host")?.to_string();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or("the address has no port")?;
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let conn = match tls {
                    None => ClientConn::Plain(tcp),
                    Some(tls) => {
                        // The name is only sent as SNI: the verifier checks the certificate's
                        // coordinator role and cluster, not the address it was dialled at.
                        let name = ServerName::try_from(
                            tls.cluster()
                                .map(crate::identity::coordinator_server_name)
                                .unwrap_or_else(|| "coordinator.gantry".to_string()),
                        )?;
                        let connector = tokio_rustls::TlsConnector::from(tls.client_config());
                        ClientConn::Tls(Box::new(connector.connect(name, tcp).await?))
                    }
                };
                Ok::<_, BoxError>(conn)
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(conn) => Ok(TokioIo::new(conn?)),
                Err(_) => {
                    Err(format!("connecting to {host}:{port} timed out after {timeout:?}").into())
                }
            }
        })
    }
}

/// Turns `host:port` (or a URL) into the URL tonic wants. The scheme stays `http`: TLS, when
/// configured, is the connector's business, not tonic's.
pub fn endpoint_url(addr: &str) -> String {
    let rest = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    format!("http://{rest}")
}

/// A lazily connecting channel to a coordinator.
pub fn channel(
    addr: &str,
    tls: Option<Arc<TlsContext>>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = tune(Endpoint::from_shared(endpoint_url(addr))?);
    Ok(endpoint.connect_with_connector_lazy(Connector::new(tls, Duration::from_secs(5))))
}
