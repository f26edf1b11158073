//! The coordinator's listener: TCP connections, TLS-terminated when the node has TLS material,
//! handed to tonic with the peer's verified identity attached ([`PeerInfo`], read by handlers
//! and the authorization layer from the request's extensions).
//!
//! Handshakes run on their own tasks with a deadline, so a client that connects and says
//! nothing holds up no one.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::identity::Identity;
use crate::material::TlsContext;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What the server knows about the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The identity of the certificate the peer presented and the CA verified; `None` without
    /// TLS or without a client certificate.
    pub identity: Option<Identity>,
    /// The connection is encrypted.
    pub tls: bool,
}

/// One accepted connection.
pub enum Conn {
    Plain(TcpStream, Option<SocketAddr>),
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(_, remote) => PeerInfo {
                remote: *remote,
                identity: None,
                tls: false,
            },
            Conn::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Accepted connections, as tonic's `serve_with_incoming` takes them. Dropping it stops
/// accepting.
pub struct Incoming {
    rx: mpsc::Receiver<std::io::Result<Conn>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Stream for Incoming {
    type Item = std::io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Serves `listener`: TLS with the context's current server configuration, or plain TCP
/// when `tls` is `None`.
pub fn incoming(listener: TcpListener, tls: Option<Arc<TlsContext>>) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small messages on long-lived streams: without nodelay, Nagle and delayed ACKs
            // add ~40 ms to every assignment.
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                if tx.send(Ok(Conn::Plain(tcp, Some(remote)))).await.is_err() {
                    return;
                }
                continue;
            };
            let Some(config) = tls.server_config() else {
                tracing::error!("no server certificate loaded; refusing the connection");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|der| Identity::from_der(der));
                        let info = PeerInfo {
                            remote: Some(remote),
                            identity,
                            tls: true,
                        };
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream), info))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    Incoming { rx, accept }
}
