//! `audiencectl token`: API tokens, created (the secret printed once), listed and revoked.

use crate::print::*;
use audience_proto::v1 as pb;
use clap::Subcommand;
use pb::admin_service_client::AdminServiceClient;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it, once: keep it now, the engine keeps only its digest.
    Create {
        name: String,
        /// read, write, subscribe, admin, and workspace:NAME for each workspace it is
        /// limited to (comma separated, or repeated).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Every token: the configuration's and the API's (never their secrets).
    List,
    /// Revoke a token created through the API: every node refuses it from then on.
    Revoke { name: String },
}

fn token_json(t: &pb::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "scopes": t.scopes,
        "source": t.source,
        "created_at": when_json(t.created_at_ms),
        "created_by": t.created_by,
    })
}

fn token_line(t: &pb::ApiToken) -> String {
    let created = match t.source.as_str() {
        "api" => format!(
            "  created {} by {}",
            when(t.created_at_ms),
            if t.created_by.is_empty() {
                "-"
            } else {
                &t.created_by
            }
        ),
        _ => String::new(),
    };
    format!(
        "{:<24} {:<6} [{}]{created}",
        t.name,
        t.source,
        t.scopes.join(", ")
    )
}

pub async fn token(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    match cmd {
        TokenCmd::Create { name, scopes } => {
            let created = admin
                .create_token(pb::CreateTokenRequest { name, scopes })
                .await?
                .into_inner();
            let token = created.token.unwrap_or_default();
            if ctx.json() {
                let mut shown = token_json(&token);
                shown["secret"] = created.secret.into();
                say_json(&shown);
            } else {
                say!("{}", token_line(&token));
                say!("{}", created.secret);
                eprintln!(
                    "audiencectl: the token above is shown once; the engine keeps only its digest"
                );
            }
        }
        TokenCmd::List => {
            let list = admin
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner();
            for t in &list.tokens {
                match ctx.json() {
                    true => say_json(&token_json(t)),
                    false => say!("{}", token_line(t)),
                }
            }
        }
        TokenCmd::Revoke { name } => {
            admin
                .revoke_token(pb::RevokeTokenRequest { name: name.clone() })
                .await?;
            match ctx.json() {
                true => say_json(&serde_json::json!({"revoked": name})),
                false => say!("token '{name}' revoked"),
            }
        }
    }
    Ok(())
}
