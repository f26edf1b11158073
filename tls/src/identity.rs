//! Who a certificate speaks for. Every Gantry certificate names its role, its id and its cluster
//! in a DNS subject alternative name, as Nomad's `server.<region>.nomad` does:
//!
//! | role | SAN |
//! | --- | --- |
//! | coordinator 3 | `coordinator-3.<cluster>.gantry`, and `coordinator.<cluster>.gantry`, the name clients verify |
//! | agent gpu07 | `agent-gpu07.<cluster>.gantry` |
//! | client alice | `client-alice.<cluster>.gantry` |
//!
//! A certificate is trusted because the cluster CA signed it; what it may do follows from the
//! role and id read here.

use std::fmt;

use x509_parser::extensions::GeneralName;

/// The DNS suffix of every Gantry name.
pub const SUFFIX: &str = "gantry";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Coordinator(u64),
    Agent(String),
    Client(String),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Coordinator(id) => write!(f, "coordinator {id}"),
            Role::Agent(id) => write!(f, "agent {id}"),
            Role::Client(name) => write!(f, "client {name}"),
        }
    }
}

/// The role and cluster a verified certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub cluster: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of cluster {}", self.role, self.cluster)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {value:?} is empty or longer than 63 characters")]
    Length { what: &'static str, value: String },
    #[error(
        "{what} {value:?} may hold only lowercase letters, digits and '-' (it becomes part of a \
         DNS name in the certificate), and may not begin or end with '-'"
    )]
    Characters { what: &'static str, value: String },
}

/// Checks one DNS label: a cluster name, an agent id or a client name.
pub fn check_label(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() || value.len() > 63 {
        return Err(NameError::Length {
            what,
            value: value.to_string(),
        });
    }
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        return Err(NameError::Characters {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

impl Identity {
    /// The DNS names a certificate for this identity carries.
    pub fn sans(&self) -> Vec<String> {
        let c = &self.cluster;
        match &self.role {
            Role::Coordinator(id) => vec![
                format!("coordinator-{id}.{c}.{SUFFIX}"),
                coordinator_server_name(c),
            ],
            Role::Agent(id) => vec![format!("agent-{id}.{c}.{SUFFIX}")],
            Role::Client(name) => vec![format!("client-{name}.{c}.{SUFFIX}")],
        }
    }

    /// The identity one SAN names, if it is a Gantry identity name.
    pub fn from_san(name: &str) -> Option<Identity> {
        let rest = name.strip_suffix(&format!(".{SUFFIX}"))?;
        let (label, cluster) = rest.split_once('.')?;
        if check_label("cluster", cluster).is_err() {
            return None;
        }
        let role = if let Some(id) = label.strip_prefix("coordinator-") {
            Role::Coordinator(id.parse().ok().filter(|id| *id > 0)?)
        } else if let Some(id) = label.strip_prefix("agent-") {
            check_label("agent id", id).ok()?;
            Role::Agent(id.to_string())
        } else if let Some(name) = label.strip_prefix("client-") {
            check_label("client name", name).ok()?;
            Role::Client(name.to_string())
        } else {
            return None;
        };
        Some(Identity {
            role,
            cluster: cluster.to_string(),
        })
    }

    /// The identity a DER certificate names. A certificate naming two identities names none:
    /// it could be used as either.
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        let found: Vec<Identity> = dns_names(der)
            .iter()
            .filter_map(|n| Identity::from_san(n))
            .collect();
        match found.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }
}

/// The name every coordinator certificate carries and clients verify: the role, not the host,
/// so one CA-issued certificate serves whatever address the coordinator is reached at.
pub fn coordinator_server_name(cluster: &str) -> String {
    format!("coordinator.{cluster}.{SUFFIX}")
}

/// The cluster a `coordinator.<cluster>.gantry` name belongs to.
pub fn cluster_of_server_name(name: &str) -> Option<&str> {
    name.strip_prefix("coordinator.")?
        .strip_suffix(&format!(".{SUFFIX}"))
        .filter(|c| check_label("cluster", c).is_ok())
}

/// The DNS subject alternative names of a DER certificate (none if it does not parse).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_not_identities() {
        for role in [
            Role::Coordinator(3),
            Role::Agent("gpu-07".into()),
            Role::Client("alice".into()),
        ] {
            let id = Identity {
                role,
                cluster: "prod".into(),
            };
            assert_eq!(Identity::from_san(&id.sans()[0]), Some(id.clone()));
        }
        for bad in [
            "coordinator.prod.gantry",
            "coordinator-0.prod.gantry",
            "coordinator-x.prod.gantry",
            "agent-.prod.gantry",
            "agent-gpu07.prod.example",
            "agent-GPU.prod.gantry",
            "operator-1.prod.gantry",
            "agent-a.b.c.gantry",
        ] {
            assert_eq!(Identity::from_san(bad), None, "{bad}");
        }
        assert_eq!(
            cluster_of_server_name("coordinator.prod.gantry"),
            Some("prod")
        );
        assert_eq!(cluster_of_server_name("coordinator-1.prod.gantry"), None);
    }

    #[test]
    fn labels_must_fit_a_dns_name() {
        assert!(check_label("agent id", "gpu-07").is_ok());
        for bad in ["", "GPU", "a_b", "-a", "a-", "a.b", &"x".repeat(64)] {
            assert!(check_label("agent id", bad).is_err(), "{bad}");
        }
    }
}
