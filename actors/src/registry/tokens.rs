//! API tokens through the catalog (see [`audience_state::api_tokens`]): created with their
//! digest only, revoked by name, listed from what this node applied.

use super::{unexpected, Registry, RegistryError};
use crate::engine::Quotas;
use audience_state::api_tokens::ApiTokenRecord;
use audience_state::catalog_log::{Applied, Change};

impl Registry {
    /// The catalog's API tokens, by name.
    pub fn api_tokens(&self) -> Vec<ApiTokenRecord> {
        self.node.engine.api_tokens.load().as_ref().clone()
    }

    /// Creates the token on behalf of `by`; its creation time and creator are set when the
    /// catalog applies it.
    pub async fn create_token(
        &self,
        by: &str,
        token: ApiTokenRecord,
    ) -> Result<ApiTokenRecord, RegistryError> {
        token.validate()?;
        let held = self.api_tokens();
        if held.iter().any(|t| t.name == token.name) {
            return Err(RegistryError::Exists(format!(
                "name: a token named '{}' exists: revoke it first, or choose another name",
                token.name
            )));
        }
        let max = self.node.engine.settings.quotas.api_tokens;
        Quotas::check("API tokens", "engine.max_api_tokens", held.len(), max)
            .map_err(RegistryError::Quota)?;
        match self
            .catalog
            .submit(by, Change::CreateToken { token })
            .await?
        {
            Applied::Token(token) => {
                tracing::info!(token = %token.name, by, "API token created");
                Ok(token)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Revokes the token named `name`: every node refuses it once it applied this.
    pub async fn revoke_token(&self, by: &str, name: &str) -> Result<(), RegistryError> {
        if !self.api_tokens().iter().any(|t| t.name == name) {
            return Err(RegistryError::Gone(format!("token '{name}' not found")));
        }
        let change = Change::RevokeToken {
            name: name.to_string(),
        };
        match self.catalog.submit(by, change).await? {
            Applied::TokenRevoked(_) => {
                tracing::info!(token = %name, by, "API token revoked");
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }
}
