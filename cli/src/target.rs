//! Where the CLI connects and with what: flags and environment over a client config file
//! over defaults.
//!
//! The config file is TOML (`endpoint`, `ca`, `cert`, `key`, `token_file`; relative paths are
//! relative to the file). `gantry dev` writes one to `<data-dir>/client.toml`; without
//! `--client-config` the CLI reads `.gantry/client.toml` from the working directory when it
//! exists, so the quickstart needs no flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::Target;
use crate::exit::CliError;

/// The default data directory of `gantry dev`, and so where its client config is found.
pub const DEFAULT_CONFIG: &str = ".gantry/client.toml";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Coordinator endpoint(s), comma-separated, tried in turn [default: 127.0.0.1:7070].
    #[arg(long, global = true, env = "GANTRY_ENDPOINT")]
    pub endpoint: Option<String>,
    /// API token (sent as `authorization: Bearer`). Prefer GANTRY_TOKEN or --token-file:
    /// a flag shows in the process list.
    #[arg(long, global = true, env = "GANTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token.
    #[arg(long, global = true, env = "GANTRY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster CA (PEM): connect with TLS and trust coordinators it signed.
    #[arg(long, global = true, env = "GANTRY_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// A client certificate (for clusters that require one).
    #[arg(long, global = true, env = "GANTRY_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, global = true, env = "GANTRY_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Client config file [default: .gantry/client.toml when it exists].
    #[arg(long, global = true, env = "GANTRY_CLIENT_CONFIG", value_name = "FILE")]
    pub client_config: Option<PathBuf>,
}

/// The client config file.
#[derive(Debug, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub endpoint: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig, CliError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Refused(format!("client config {}: {e}", path.display())))?;
        let mut c: ClientConfig = toml::from_str(&text)
            .map_err(|e| CliError::Refused(format!("client config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.ca, &mut c.cert, &mut c.key, &mut c.token_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }
}

fn read_token(path: &Path) -> Result<String, CliError> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| CliError::Refused(format!("token file {}: {e}", path.display())))?;
    Ok(t.trim().to_string())
}

impl TargetArgs {
    pub fn resolve(&self) -> Result<Target, CliError> {
        let file = match &self.client_config {
            Some(p) => ClientConfig::load(p)?,
            None if Path::new(DEFAULT_CONFIG).is_file() => {
                ClientConfig::load(Path::new(DEFAULT_CONFIG))?
            }
            None => ClientConfig::default(),
        };
        let endpoints = self
            .endpoint
            .clone()
            .or(file.endpoint)
            .unwrap_or_else(|| "127.0.0.1:7070".into());
        let token = match (&self.token, &self.token_file, &file.token_file) {
            (Some(t), _, _) => Some(t.trim().to_string()),
            (None, Some(f), _) | (None, None, Some(f)) => Some(read_token(f)?),
            (None, None, None) => None,
        };
        let ca = self.ca.clone().or(file.ca);
        let (cert, key) = match (self.cert.clone(), self.key.clone()) {
            (None, None) => (file.cert, file.key),
            pair => pair,
        };
        if cert.is_some() != key.is_some() {
            return Err(CliError::Refused(
                "--cert and --key go together: give both".into(),
            ));
        }
        let tls = match ca {
            None => None,
            Some(ca) => Some(
                gantry_tls::TlsContext::load(
                    gantry_tls::TlsFiles { ca, cert, key },
                    gantry_tls::ClientCerts::Optional,
                    gantry_tls::Expect::Any,
                    None,
                )
                .map_err(|e| CliError::Refused(format!("TLS: {e}")))?,
            ),
        };
        Ok(Target {
            endpoints,
            tls,
            token,
        })
    }
}
