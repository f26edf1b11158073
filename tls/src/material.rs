//! Certificates and keys on disk → rustls configurations, reloaded when the files change.
//!
//! A [`TlsContext`] holds the current server and client configurations behind an `ArcSwap`.
//! New connections take whatever is current; connections already open keep theirs, so rotating
//! the CA-signed certificates of a running cluster drops nothing. A reload that fails (a half
//! rotated pair, a key that does not match) keeps the previous material and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::identity::{cluster_of_server_name, dns_names, Identity, Role};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error(
        "{path} names no Gantry identity (a SAN like coordinator-1.<cluster>.gantry, \
         agent-<id>.<cluster>.gantry or client-<name>.<cluster>.gantry)"
    )]
    NoIdentity { path: PathBuf },
    #[error("{path} is a certificate for {found}, but this program needs a {want} certificate")]
    WrongRole {
        path: PathBuf,
        found: Role,
        want: &'static str,
    },
}

/// The crypto provider every configuration here uses (aws-lc-rs, which the workspace's other
/// TLS users already compile).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file's contents.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn certs_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certs(&read(path)?).map_err(|reason| TlsError::Pem {
        path: path.to_path_buf(),
        reason,
    })
}

fn key_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Which files make up a node's TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The cluster CA (PEM, may hold several CAs during a CA rotation).
    pub ca: PathBuf,
    /// This program's own certificate and key; a client without them still verifies servers.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.ca.as_path()];
        v.extend(self.cert.as_deref());
        v.extend(self.key.as_deref());
        v
    }
}

/// Whether a server asks connecting programs for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Verified when presented; programs with only a token (the CLI, `kfp.Client`) connect too,
    /// and authorization decides what each may do.
    Optional,
    /// Every connection must present a certificate of the cluster CA.
    Required,
}

/// What a program expects of its own certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Coordinator,
    Agent,
    Any,
}

struct Loaded {
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
    own: Option<Identity>,
}

/// Modification time and length of each file, to notice a change.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    files
        .paths()
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

pub struct TlsContext {
    files: TlsFiles,
    client_certs: ClientCerts,
    expect: Expect,
    /// The cluster whose coordinators this program talks to; `None` accepts any cluster the CA
    /// vouches for (a CLI given only the CA).
    cluster: Option<String>,
    loaded: ArcSwap<Loaded>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("files", &self.files)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl TlsContext {
    /// Loads the files. The cluster is the one named by this program's own certificate, else
    /// `cluster`, else the CA's (`<cluster>.gantry` as its common name), else any.
    pub fn load(
        files: TlsFiles,
        client_certs: ClientCerts,
        expect: Expect,
        cluster: Option<String>,
    ) -> Result<Arc<TlsContext>, TlsError> {
        let stamp_now = stamp(&files);
        let mut ctx = TlsContext {
            files,
            client_certs,
            expect,
            cluster,
            loaded: ArcSwap::from_pointee(Loaded {
                server: None,
                client: Arc::new(
                    ClientConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()?
                        .with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth(),
                ),
                own: None,
            }),
            stamp: Mutex::new(stamp_now),
        };
        let loaded = ctx.build()?;
        if ctx.cluster.is_none() {
            ctx.cluster = loaded.own.as_ref().map(|i| i.cluster.clone()).or_else(|| {
                std::fs::read_to_string(&ctx.files.ca)
                    .ok()
                    .and_then(|pem| crate::issue::ca_cluster(&pem))
            });
        }
        // Built again now that the cluster is known, so the verifier checks it.
        let loaded = ctx.build()?;
        ctx.loaded.store(Arc::new(loaded));
        Ok(Arc::new(ctx))
    }

    fn build(&self) -> Result<Loaded, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for c in certs_file(&self.files.ca)? {
            roots.add(c)?;
        }
        let roots = Arc::new(roots);
        let own = match (&self.files.cert, &self.files.key) {
            (Some(cert), Some(key)) => {
                let chain = certs_file(cert)?;
                let key = key_file(key)?;
                let identity = Identity::from_der(&chain[0])
                    .ok_or_else(|| TlsError::NoIdentity { path: cert.clone() })?;
                let want = match self.expect {
                    Expect::Coordinator if !matches!(identity.role, Role::Coordinator(_)) => {
                        Some("coordinator")
                    }
                    Expect::Agent if !matches!(identity.role, Role::Agent(_)) => Some("agent"),
                    _ => None,
                };
                if let Some(want) = want {
                    return Err(TlsError::WrongRole {
                        path: cert.clone(),
                        found: identity.role,
                        want,
                    });
                }
                Some((chain, key, identity))
            }
            _ => None,
        };
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let verifier = Arc::new(CoordinatorVerifier {
            inner: server_verifier,
            cluster: self.cluster.clone(),
        });
        let client_builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut client = match &own {
            Some((chain, key, _)) => {
                client_builder.with_client_auth_cert(chain.clone(), key.clone_key())?
            }
            None => client_builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![b"h2".to_vec()];
        let server = match &own {
            Some((
                chain,
                key,
                Identity {
                    role: Role::Coordinator(_),
                    ..
                },
            )) => {
                let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let builder = match self.client_certs {
                    ClientCerts::Optional => builder.allow_unauthenticated(),
                    ClientCerts::Required => builder,
                };
                let client_verifier = builder
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
                let mut server = ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_client_cert_verifier(client_verifier)
                    .with_single_cert(chain.clone(), key.clone_key())?;
                server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(Arc::new(server))
            }
            _ => None,
        };
        Ok(Loaded {
            server,
            client: Arc::new(client),
            own: own.map(|(_, _, id)| id),
        })
    }

    /// Loads the files again if any changed since the last look; true if new material is in
    /// use. On error the previous material stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return Ok(false);
        }
        let loaded = self.build()?;
        if let (Some(old), Some(new)) = (&self.loaded.load().own, &loaded.own) {
            if old != new {
                tracing::warn!(%old, %new, "the reloaded certificate names another identity; the old one stays in use");
                *last = now;
                return Ok(false);
            }
        }
        self.loaded.store(Arc::new(loaded));
        *last = now;
        Ok(true)
    }

    /// Checks the files every `every` on a tokio task, for as long as the context lives.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(ctx) = weak.upgrade() else { return };
                match ctx.reload_if_changed() {
                    Ok(true) => tracing::info!(files = ?ctx.files.paths(), "TLS material reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS material changed but cannot be loaded; keeping the previous")
                    }
                }
            }
        });
    }

    /// The server configuration; `None` unless this program holds a coordinator certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.loaded.load().server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.loaded.load().client.clone()
    }

    /// Who this program's own certificate says it is.
    pub fn identity(&self) -> Option<Identity> {
        self.loaded.load().own.clone()
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }
}

/// Accepts a server only if the CA signed its certificate for a coordinator of the expected
/// cluster (`coordinator.<cluster>.gantry`), whatever address it was dialled at: coordinators
/// are reached by IP as often as by name, and their role is what a client must trust.
#[derive(Debug)]
struct CoordinatorVerifier {
    inner: Arc<WebPkiServerVerifier>,
    cluster: Option<String>,
}

impl ServerCertVerifier for CoordinatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let names = dns_names(end_entity);
        let name = names
            .iter()
            .find(|n| {
                cluster_of_server_name(n)
                    .is_some_and(|c| self.cluster.as_deref().is_none_or(|want| want == c))
            })
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate is not a coordinator certificate of cluster {} \
                     (its names: {names:?})",
                    self.cluster.as_deref().unwrap_or("(any)")
                ))
            })?;
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
