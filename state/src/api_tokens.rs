//! API tokens: the bearer tokens created and revoked through the API (beside those of the
//! engine's configuration), kept in the catalog so that every node accepts the same ones.
//!
//! Invariants:
//! - a token is kept hashed: its record holds the SHA-256 digest (hex) of the secret, never
//!   the secret, on the catalog topic as in every store; the secret is shown once, to the
//!   call that created it. Digests of 256 random bits need no slow hash: nothing can be
//!   guessed from them;
//! - names are unique among API tokens (the configuration's are checked by the node that
//!   proposes a creation), short, and of letters, digits, `.`, `_` and `-`, so that they
//!   print safely in logs and the audit log;
//! - a revoked token is deleted: the next call with it is refused on every node once the
//!   node applied the revocation.

use crate::criteria::DefinitionError;
use crate::model::TimestampMs;
use serde::{Deserialize, Serialize};

/// The longest token name, in characters.
pub const MAX_TOKEN_NAME_CHARS: usize = 64;

/// A token created through the API, as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub name: String,
    /// SHA-256 of the token, 64 lowercase hex digits.
    pub digest: String,
    /// Its scopes by name ("read", "write", "subscribe", "admin"), as the API checks them.
    pub scopes: Vec<String>,
    /// The workspaces it is limited to (empty: every one).
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// Set when applied: the proposer's clock and the token that created it.
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    #[serde(default)]
    pub created_by: String,
    /// How long it is accepted after its creation, in milliseconds (0: until revoked).
    #[serde(default)]
    pub valid_for_ms: i64,
}

impl ApiTokenRecord {
    /// The instant it stops being accepted (`None`: until revoked).
    pub fn expires_at_ms(&self) -> Option<TimestampMs> {
        (self.valid_for_ms > 0).then(|| self.created_at_ms.saturating_add(self.valid_for_ms))
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: TimestampMs) -> bool {
        self.expires_at_ms().is_some_and(|at| now >= at)
    }

    /// Checks what the catalog can check alone: the name, the digest's form, some scope, a
    /// validity that is not negative.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        check_token_name(&self.name)?;
        if self.valid_for_ms < 0 {
            return Err(DefinitionError {
                field: "ttl_seconds".into(),
                reason: "a token's validity is a duration: 0 (until revoked) or more".into(),
            });
        }
        if self.digest.len() != 64
            || !self
                .digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DefinitionError {
                field: "digest".into(),
                reason: "a token is kept as its SHA-256 digest: 64 lowercase hex digits".into(),
            });
        }
        if self.scopes.is_empty() {
            return Err(DefinitionError {
                field: "scopes".into(),
                reason: "a token holds some scope (read, write, subscribe or admin)".into(),
            });
        }
        Ok(())
    }
}

/// Whether `name` may name a token: 1 to [`MAX_TOKEN_NAME_CHARS`] letters, digits, `.`, `_`
/// or `-`.
pub fn check_token_name(name: &str) -> Result<(), DefinitionError> {
    let chars = name.chars().count();
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if chars == 0 || chars > MAX_TOKEN_NAME_CHARS || !name.chars().all(fine) {
        return Err(DefinitionError {
            field: "name".into(),
            reason: format!(
                "token name \"{name}\": 1 to {MAX_TOKEN_NAME_CHARS} letters, digits, '.', '_' or '-'"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, digest: &str) -> ApiTokenRecord {
        ApiTokenRecord {
            name: name.into(),
            digest: digest.into(),
            scopes: vec!["read".into()],
            workspaces: vec![],
            created_at_ms: 0,
            created_by: String::new(),
            valid_for_ms: 0,
        }
    }

    #[test]
    fn names_and_digests_are_checked() {
        let digest = "ab".repeat(32);
        assert!(token("ci-reader.2", &digest).validate().is_ok());
        for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
            let e = token(bad, &digest).validate().unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
        for bad in ["ab", &"AB".repeat(32), &"zz".repeat(32)] {
            let e = token("t", bad).validate().unwrap_err();
            assert_eq!(e.field, "digest", "{bad:?}");
        }
        let mut none = token("t", &digest);
        none.scopes.clear();
        assert_eq!(none.validate().unwrap_err().field, "scopes");
        let mut backwards = token("t", &digest);
        backwards.valid_for_ms = -1;
        assert_eq!(backwards.validate().unwrap_err().field, "ttl_seconds");
    }

    #[test]
    fn a_token_expires_its_validity_after_its_creation_or_never() {
        let mut t = token("t", &"ab".repeat(32));
        t.created_at_ms = 1_000;
        assert_eq!(t.expires_at_ms(), None);
        assert!(!t.expired(i64::MAX));
        t.valid_for_ms = 500;
        assert_eq!(t.expires_at_ms(), Some(1_500));
        assert!(!t.expired(1_499) && t.expired(1_500));
    }
}
