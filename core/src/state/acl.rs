//! API tokens, replicated: who may call what is decided on every node from the same committed
//! records, so a token revoked (or expired) is refused everywhere from the next commit on.
//!
//! Only a token's SHA-256 is stored; the secret itself is shown once, to whoever created it.
//! The proposer draws the secret and the accessor id and puts only the hash in the command, so
//! the plaintext never enters the Raft log or a snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a token may do. The authorization table (coordinator `auth`) maps each RPC to the
/// roles allowed to call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Cluster membership, agents, tokens; and everything a submitter may do.
    Admin,
    /// Submit, cancel and retry runs; and everything a viewer may do.
    Submitter,
    /// Read runs, logs, agents and the cluster.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Submitter, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest token name.
pub const MAX_NAME: usize = 64;
/// At most this many tokens exist at once.
pub const MAX_TOKENS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id of the token (listing, revoking); not a secret.
    pub accessor: String,
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub created_at: i64,
    /// Refused from this time on (ms since the epoch); `None` never expires.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The token (name) that created this one; `None` for the bootstrap token.
    #[serde(default)]
    pub created_by: Option<String>,
}

impl TokenRecord {
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AclState {
    /// The first admin token was made; `acl bootstrap` is refused from then on, even after that
    /// token is revoked.
    pub bootstrapped: bool,
    /// By secret hash: a request's token is found in one lookup.
    pub tokens: BTreeMap<String, TokenRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("the ACL system is already bootstrapped; ask an admin for a token")]
    AlreadyBootstrapped,
    #[error("a token named {0:?} exists; revoke it first or choose another name")]
    NameTaken(String),
    #[error(
        "token name {0:?} must be 1 to {MAX_NAME} characters of letters, digits, '-', '_' or '.'"
    )]
    BadName(String),
    #[error("no token with accessor or name {0:?}")]
    NotFound(String),
    #[error("there are already {MAX_TOKENS} tokens; revoke some first")]
    TooMany,
    #[error("the token record is malformed: {0}")]
    Malformed(&'static str),
}

fn check(t: &TokenRecord) -> Result<(), AclError> {
    let name_ok = !t.name.is_empty()
        && t.name.len() <= MAX_NAME
        && t.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(AclError::BadName(t.name.clone()));
    }
    if t.secret_sha256.len() != 64 || !t.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AclError::Malformed("secret_sha256 is not 64 hex digits"));
    }
    if t.accessor.is_empty() || t.accessor.len() > 64 {
        return Err(AclError::Malformed("accessor"));
    }
    Ok(())
}

impl AclState {
    /// Never bootstrapped and no tokens.
    pub fn is_empty(&self) -> bool {
        !self.bootstrapped && self.tokens.is_empty()
    }

    /// The token whose secret hashes to `secret_sha256`.
    pub fn token(&self, secret_sha256: &str) -> Option<&TokenRecord> {
        self.tokens.get(secret_sha256)
    }

    fn find(&self, accessor_or_name: &str) -> Option<&String> {
        self.tokens
            .iter()
            .find(|(_, t)| t.accessor == accessor_or_name)
            .or_else(|| self.tokens.iter().find(|(_, t)| t.name == accessor_or_name))
            .map(|(hash, _)| hash)
    }

    pub(super) fn bootstrap(&mut self, token: TokenRecord) -> Result<(), AclError> {
        if self.bootstrapped {
            return Err(AclError::AlreadyBootstrapped);
        }
        check(&token)?;
        self.bootstrapped = true;
        self.tokens.insert(token.secret_sha256.clone(), token);
        Ok(())
    }

    pub(super) fn create(&mut self, token: TokenRecord) -> Result<(), AclError> {
        check(&token)?;
        if self.tokens.len() >= MAX_TOKENS {
            return Err(AclError::TooMany);
        }
        if self.tokens.values().any(|t| t.name == token.name) {
            return Err(AclError::NameTaken(token.name));
        }
        if self.tokens.contains_key(&token.secret_sha256) {
            return Err(AclError::Malformed("a token with this secret exists"));
        }
        self.tokens.insert(token.secret_sha256.clone(), token);
        Ok(())
    }

    /// Removes the token; returns its record.
    pub(super) fn revoke(&mut self, accessor_or_name: &str) -> Result<TokenRecord, AclError> {
        let hash = self
            .find(accessor_or_name)
            .cloned()
            .ok_or_else(|| AclError::NotFound(accessor_or_name.to_string()))?;
        self.tokens
            .remove(&hash)
            .ok_or_else(|| AclError::NotFound(accessor_or_name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, hash_digit: char) -> TokenRecord {
        TokenRecord {
            accessor: format!("acc-{name}"),
            name: name.into(),
            role: Role::Viewer,
            secret_sha256: hash_digit.to_string().repeat(64),
            created_at: 1,
            expires_at: Some(100),
            created_by: None,
        }
    }

    #[test]
    fn bootstrap_once_names_unique_revoke_by_accessor_or_name() {
        let mut acl = AclState::default();
        acl.bootstrap(token("root", 'a')).unwrap();
        assert_eq!(
            acl.bootstrap(token("again", 'b')),
            Err(AclError::AlreadyBootstrapped)
        );
        acl.create(token("ci", 'c')).unwrap();
        assert_eq!(
            acl.create(token("ci", 'd')),
            Err(AclError::NameTaken("ci".into()))
        );
        assert!(matches!(
            acl.create(token("bad name", 'e')),
            Err(AclError::BadName(_))
        ));
        assert_eq!(acl.token(&"c".repeat(64)).unwrap().name, "ci");
        acl.revoke("acc-ci").unwrap();
        assert!(acl.token(&"c".repeat(64)).is_none());
        acl.revoke("root").unwrap();
        assert!(matches!(acl.revoke("root"), Err(AclError::NotFound(_))));
        // Revoking the bootstrap token does not reopen bootstrap.
        assert_eq!(
            acl.bootstrap(token("x", 'f')),
            Err(AclError::AlreadyBootstrapped)
        );
        assert!(token("t", '1').expired(100));
        assert!(!token("t", '1').expired(99));
    }
}
