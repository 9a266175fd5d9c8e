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
        /// How long it is accepted: 90s, 30m, 12h, 30d (by the engine's clock); without,
        /// until revoked.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
    },
    /// Every token: the configuration's and the API's (never their secrets).
    List,
    /// Revoke a token created through the API: every node refuses it from then on.
    Revoke { name: String },
}

/// A validity in seconds from `90s`, `30m`, `12h` or `30d` (a bare number is seconds).
fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => return Err(format!("'{other}' is not a unit of time (s, m, h or d)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 30m, 12h or 30d"))?;
    match n.checked_mul(per) {
        Some(0) | None => Err(format!("'{text}': a ttl is at least a second")),
        Some(seconds) => Ok(seconds),
    }
}

fn token_json(t: &pb::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "scopes": t.scopes,
        "source": t.source,
        "created_at": when_json(t.created_at_ms),
        "created_by": t.created_by,
        "expires_at": (t.expires_at_ms > 0).then(|| when_json(t.expires_at_ms)),
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
    let expires = match t.expires_at_ms {
        0 => String::new(),
        at => format!("  expires {}", when(at)),
    };
    format!(
        "{:<24} {:<6} [{}]{created}{expires}",
        t.name,
        t.source,
        t.scopes.join(", ")
    )
}

pub async fn token(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    match cmd {
        TokenCmd::Create { name, scopes, ttl } => {
            let created = admin
                .create_token(pb::CreateTokenRequest {
                    name,
                    scopes,
                    ttl_seconds: ttl.unwrap_or(0),
                })
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

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn a_ttl_reads_in_seconds_minutes_hours_or_days() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1_800));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl(" 30d "), Ok(2_592_000));
        assert!(parse_ttl("3w").unwrap_err().contains("'w' is not a unit"));
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").unwrap_err().contains("at least a second"));
    }
}
