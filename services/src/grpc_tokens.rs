//! The token calls of the admin service (CreateToken, ListTokens, RevokeToken): checks and
//! answers; the tokens themselves are the catalog's ([`crate::api_tokens`]).

use crate::access;
use crate::api_tokens::{digest_hex, grant_words, new_secret, scope_names};
use crate::auth::caller_name;
use crate::convert;
use crate::grpc::Services;
use audience_proto::v1 as pb;
use audience_state::api_tokens::{check_token_name, ApiTokenRecord};
use tonic::{Request, Response, Status};

fn shown(t: &ApiTokenRecord, source: &str) -> pb::ApiToken {
    pb::ApiToken {
        name: t.name.clone(),
        scopes: grant_words(&t.scopes, &t.workspaces),
        created_at_ms: t.created_at_ms,
        created_by: t.created_by.clone(),
        source: source.into(),
        expires_at_ms: t.expires_at_ms().unwrap_or_default(),
    }
}

/// The longest validity a token is created with: ten years.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 3_650 * 86_400;

impl Services {
    fn check_tokens_apply(&self) -> Result<(), Status> {
        if self.auth.is_open() {
            return Err(Status::failed_precondition(
                "this engine runs without authentication (auth.allow_unauthenticated): a token \
                 would never be asked for; configure auth.tokens or auth.tokens_file first",
            ));
        }
        Ok(())
    }

    fn is_configured_token(&self, name: &str) -> bool {
        self.auth.configured().iter().any(|(n, _, _)| n == name)
    }

    pub(crate) async fn create_token_call(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        self.check_tokens_apply()?;
        let by = caller_name(&req);
        let r = req.into_inner();
        let name = r.name.trim().to_string();
        check_token_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The registry checks the catalog's names; the configuration's are this node's.
        if self.is_configured_token(&name) {
            return Err(Status::already_exists(format!(
                "name: a token named '{name}' exists in the engine's configuration: choose \
                 another name"
            )));
        }
        let (scopes, workspaces) = access::parse_grant(&r.scopes.join(","))
            .map_err(|e| Status::invalid_argument(format!("scopes: {e}")))?;
        if r.ttl_seconds > MAX_TOKEN_TTL_SECONDS {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: {} is above the limit of {MAX_TOKEN_TTL_SECONDS} (3,650 days)",
                r.ttl_seconds
            )));
        }
        let secret =
            new_secret().map_err(|e| Status::internal(format!("no random source: {e}")))?;
        let record = ApiTokenRecord {
            name,
            digest: digest_hex(&secret),
            scopes: scope_names(scopes),
            workspaces,
            created_at_ms: 0,
            created_by: String::new(),
            valid_for_ms: r.ttl_seconds as i64 * 1_000,
        };
        let token = self
            .registry
            .create_token(&by, record)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::CreatedToken {
            token: Some(shown(&token, "api")),
            secret,
        }))
    }

    pub(crate) fn list_tokens_call(&self) -> Result<Response<pb::ListTokensResponse>, Status> {
        let mut configured = self.auth.configured();
        configured.sort_by(|a, b| a.0.cmp(&b.0));
        let configured = configured
            .into_iter()
            .map(|(name, scopes, workspaces)| pb::ApiToken {
                name,
                scopes: grant_words(&scope_names(scopes), &workspaces),
                source: "config".into(),
                ..Default::default()
            });
        let api = self.registry.api_tokens();
        let api = api.iter().map(|t| shown(t, "api"));
        Ok(Response::new(pb::ListTokensResponse {
            tokens: configured.chain(api).collect(),
        }))
    }

    pub(crate) async fn revoke_token_call(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.check_tokens_apply()?;
        let by = caller_name(&req);
        let name = req.into_inner().name.trim().to_string();
        if self.is_configured_token(&name) {
            return Err(Status::failed_precondition(format!(
                "name: token '{name}' is the engine's configuration's (auth.tokens or \
                 auth.tokens_file): remove it there"
            )));
        }
        self.registry
            .revoke_token(&by, &name)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }
}
