//! AclService: the first admin token, and tokens for people and programs.
//!
//! A token's secret is drawn here, on the node that takes the request, and only its hash is
//! proposed: the secret appears once, in the reply, and never in the Raft log.

use gantry_core::state::acl::{Role, TokenRecord, MAX_NAME};
use gantry_core::state::{Command, Outcome};
use gantry_proto::v1 as pb;
use gantry_proto::v1::acl_service_client::AclServiceClient;
use gantry_proto::v1::acl_service_server::AclService;
use tonic::{Request, Response, Status};

use super::status::ApiError;
use super::{forwarded, relay, Api, ROUTE_WAIT};
use crate::auth::{principal, token_hash};
use crate::server::Route;

/// Tokens live at most this long when a TTL is given (ten years).
const MAX_TTL_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// A fresh secret (244 random bits from the OS generator, in two v4 UUIDs) and its record.
fn new_token(
    name: &str,
    role: Role,
    ttl_ms: Option<i64>,
    created_by: Option<String>,
) -> (String, TokenRecord) {
    let secret = format!(
        "gantry_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let now = crate::now_ms();
    let accessor = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let record = TokenRecord {
        accessor,
        name: name.to_string(),
        role,
        secret_sha256: token_hash(&secret),
        created_at: now,
        expires_at: ttl_ms.map(|t| now.saturating_add(t)),
        created_by,
    };
    (secret, record)
}

pub(super) fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        accessor: t.accessor.clone(),
        name: t.name.clone(),
        role: t.role.to_string(),
        created_at_ms: t.created_at,
        expires_at_ms: t.expires_at.unwrap_or(0),
        created_by: t.created_by.clone().unwrap_or_default(),
    }
}

/// The token that bootstrap creates.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap-admin";

#[tonic::async_trait]
impl AclService for Api {
    async fn bootstrap(
        &self,
        req: Request<pb::AclBootstrapRequest>,
    ) -> Result<Response<pb::TokenSecret>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return AclServiceClient::new(ch).bootstrap(relay(req)).await;
        }
        let (secret, record) = new_token(BOOTSTRAP_TOKEN_NAME, Role::Admin, None, None);
        let applied = self
            .0
            .propose(Command::AclBootstrap {
                token: record.clone(),
            })
            .await?;
        applied.result.map_err(ApiError::from)?;
        tracing::info!(accessor = %record.accessor, "ACL bootstrapped: the first admin token was created");
        Ok(Response::new(pb::TokenSecret {
            token: Some(token_info(&record)),
            secret,
        }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::TokenSecret>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return AclServiceClient::new(ch).create_token(relay(req)).await;
        }
        let by = principal(&req).token.map(|t| t.name);
        let r = req.into_inner();
        let role = Role::parse(&r.role).ok_or_else(|| ApiError::BadRole(r.role.clone()))?;
        if r.name.is_empty() || r.name.len() > MAX_NAME {
            return Err(ApiError::BadTokenName { max: MAX_NAME }.into());
        }
        let ttl = match r.ttl_ms {
            0 => None,
            t if (1..=MAX_TTL_MS).contains(&t) => Some(t),
            ttl => {
                return Err(ApiError::BadTtl {
                    ttl,
                    max: MAX_TTL_MS,
                }
                .into())
            }
        };
        let (secret, record) = new_token(&r.name, role, ttl, by);
        let applied = self
            .0
            .propose(Command::CreateToken {
                token: record.clone(),
            })
            .await?;
        applied.result.map_err(ApiError::from)?;
        tracing::info!(name = %record.name, role = %record.role, accessor = %record.accessor, by = ?record.created_by, "token created");
        Ok(Response::new(pb::TokenSecret {
            token: Some(token_info(&record)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.0.read_barrier().await?;
        let st = self.0.state.read();
        let mut tokens: Vec<pb::TokenInfo> = st.acl.tokens.values().map(token_info).collect();
        tokens.sort_by(|a, b| (a.created_at_ms, &a.name).cmp(&(b.created_at_ms, &b.name)));
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        if let Route::Leader(ch) = self.0.route_write(forwarded(&req), ROUTE_WAIT).await? {
            return AclServiceClient::new(ch).revoke_token(relay(req)).await;
        }
        let by = principal(&req).name();
        let accessor = req.into_inner().accessor;
        let applied = self
            .0
            .propose(Command::RevokeToken {
                accessor: accessor.clone(),
            })
            .await?;
        match applied.result.map_err(ApiError::from)? {
            Outcome::TokenRevoked(t) => {
                tracing::info!(name = %t.name, accessor = %t.accessor, %by, "token revoked");
                Ok(Response::new(token_info(&t)))
            }
            other => Err(ApiError::UnexpectedOutcome(format!("{other:?}")).into()),
        }
    }
}
