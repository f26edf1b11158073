//! `gantry acl`: the first admin token, and tokens for people and programs.

use std::time::Duration;

use gantry_proto::v1 as pb;

use crate::client::{connect, connect_lazy, Target};
use crate::exit::CliError;
use crate::output::{self, Format};

#[derive(clap::Subcommand, Debug)]
pub enum AclCommand {
    /// Create the first admin token. Works once per cluster, and needs no token; the secret
    /// is printed once and cannot be shown again.
    Bootstrap,
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// A name to recognise it by (unique).
        #[arg(long)]
        name: String,
        /// admin (membership, agents, tokens), submitter (submit, cancel, retry) or viewer
        /// (read, logs).
        #[arg(long)]
        role: String,
        /// Expire after this long (`12h`, `30d`); default never.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by accessor id or name: refused on every node from the next commit on.
    Revoke {
        /// Accessor id or name. (Not named `token`: that is the global `--token`, the
        /// caller's own, and clap would take this value for it.)
        #[arg(value_name = "ACCESSOR|NAME")]
        accessor: String,
    },
}

fn info_json(t: &pb::TokenInfo) -> serde_json::Value {
    serde_json::json!({
        "accessor": t.accessor,
        "name": t.name,
        "role": t.role,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": if t.expires_at_ms == 0 { serde_json::Value::Null } else { t.expires_at_ms.into() },
        "created_by": t.created_by,
    })
}

fn print_secret(format: Format, s: &pb::TokenSecret) {
    let info = s.token.clone().unwrap_or_default();
    let mut v = info_json(&info);
    v["secret"] = s.secret.clone().into();
    if !output::print_structured(format, &v) {
        println!(
            "token {} ({}), accessor {}",
            info.name, info.role, info.accessor
        );
        println!("secret: {}", s.secret);
        println!(
            "It is shown once. Use it with: export GANTRY_TOKEN={}",
            s.secret
        );
    }
}

pub async fn run(target: &Target, format: Format, cmd: AclCommand) -> Result<(), CliError> {
    match cmd {
        AclCommand::Bootstrap => {
            // No token yet, so no status probe: straight to the call.
            let mut c = connect_lazy(target)?;
            let s = c
                .call(Duration::from_secs(15), |mut cl| async move {
                    cl.acl.bootstrap(pb::AclBootstrapRequest {}).await
                })
                .await?
                .into_inner();
            print_secret(format, &s);
        }
        AclCommand::Token {
            command: TokenCommand::Create { name, role, ttl },
        } => {
            let mut c = connect(target).await?;
            let ttl_ms = match ttl {
                None => 0,
                Some(d) => i64::try_from(d.as_millis())
                    .map_err(|_| CliError::Refused("--ttl is too long".into()))?
                    .max(1),
            };
            // Not retried on another node: a token created twice would be two tokens.
            c.retry_for = Duration::ZERO;
            let s = c
                .call(Duration::from_secs(15), |mut cl| {
                    let req = pb::CreateTokenRequest {
                        name: name.clone(),
                        role: role.clone(),
                        ttl_ms,
                    };
                    async move { cl.acl.create_token(req).await }
                })
                .await?
                .into_inner();
            print_secret(format, &s);
        }
        AclCommand::Token {
            command: TokenCommand::List,
        } => {
            let mut c = connect(target).await?;
            let tokens = c
                .call(Duration::from_secs(5), |mut cl| async move {
                    cl.acl.list_tokens(pb::ListTokensRequest {}).await
                })
                .await?
                .into_inner()
                .tokens;
            let v = serde_json::Value::Array(tokens.iter().map(info_json).collect());
            if !output::print_structured(format, &v) {
                output::table(
                    &[
                        "ACCESSOR",
                        "NAME",
                        "ROLE",
                        "CREATED",
                        "EXPIRES",
                        "CREATED BY",
                    ],
                    tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.accessor.clone(),
                                t.name.clone(),
                                t.role.clone(),
                                output::short_time(t.created_at_ms),
                                if t.expires_at_ms == 0 {
                                    "never".into()
                                } else {
                                    output::short_time(t.expires_at_ms)
                                },
                                t.created_by.clone(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        AclCommand::Token {
            command: TokenCommand::Revoke { accessor },
        } => {
            let mut c = connect(target).await?;
            let t = c
                .call(Duration::from_secs(15), |mut cl| {
                    let req = pb::RevokeTokenRequest {
                        accessor: accessor.clone(),
                    };
                    async move { cl.acl.revoke_token(req).await }
                })
                .await?
                .into_inner();
            if !output::print_structured(format, &info_json(&t)) {
                println!(
                    "revoked token {} ({}), accessor {}",
                    t.name, t.role, t.accessor
                );
            }
        }
    }
    Ok(())
}
