//! Transport security for Gantry: every listener serves TLS, and coordinators and agents
//! authenticate with certificates from the cluster CA that name their role and id.
//!
//! - [`identity`]: the names a certificate carries (`coordinator-3.<cluster>.gantry`, …) and
//!   reading them back from a verified certificate;
//! - [`issue`]: `gantry tls ca create` and `gantry tls cert create` (rcgen);
//! - [`material`]: PEM files → rustls configurations, reloaded when the files change;
//! - [`server`]: the coordinator's listener, which tells handlers who connected;
//! - [`client`]: the connector behind every channel to a coordinator.

pub mod client;
pub mod identity;
pub mod issue;
pub mod material;
pub mod server;

pub use identity::{Identity, Role};
pub use material::{ClientCerts, Expect, TlsContext, TlsError, TlsFiles};
pub use server::PeerInfo;
