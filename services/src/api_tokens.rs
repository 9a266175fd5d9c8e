//! Tokens created and revoked through the API (`AdminService.CreateToken`, `RevokeToken`):
//! the secret made here and answered once, the catalog's records (their SHA-256 digests, see
//! [`audience_state::api_tokens`]) turned into what the authenticator checks.
//!
//! Invariants:
//! - a secret is 256 bits from the kernel's random source, written `aud_` and 64 hex digits;
//!   only its digest leaves this module;
//! - the authenticator reads the catalog's tokens as this node applied them last: a token
//!   created or revoked on any node is accepted or refused here once this node applied the
//!   change (the catalog topic's delay, well under a second on a healthy cluster);
//! - a record this version cannot read (a scope it does not know) is not accepted, and says so
//!   once per catalog change.

use crate::access::{self, Scopes, WORKSPACE_PREFIX};
use crate::auth::{CatalogVerdict, TokenSet};
use audience_state::api_tokens::ApiTokenRecord;
use audience_state::model::TimestampMs;
use std::io::Read;
use std::sync::Arc;

/// What a secret starts with: tells an engine token from any other in a config or a leak scan.
pub const SECRET_PREFIX: &str = "aud_";

/// A new secret: `aud_` and 256 random bits in hex.
pub fn new_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

/// The digest a record keeps of `secret`, in lowercase hex.
pub fn digest_hex(secret: &str) -> String {
    hex(&crate::auth::digest(secret))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A grant as a record keeps it: the scopes' names, and the workspaces apart.
pub fn scope_names(scopes: Scopes) -> Vec<String> {
    scopes
        .listed()
        .iter()
        .map(|s| s.name().to_string())
        .collect()
}

/// A record's scopes and workspaces as one list, as `CreateToken` takes them and
/// `ListTokens` shows them.
pub fn grant_words(scopes: &[String], workspaces: &[String]) -> Vec<String> {
    let limits = workspaces.iter().map(|w| format!("{WORKSPACE_PREFIX}{w}"));
    scopes.iter().cloned().chain(limits).collect()
}

/// The records the authenticator accepts; the ones it cannot read are left out, each named.
pub fn token_set(records: &[ApiTokenRecord]) -> TokenSet {
    let mut entries = Vec::new();
    for r in records {
        let grant = access::parse_grant(&grant_words(&r.scopes, &r.workspaces).join(","));
        match (unhex(&r.digest), grant) {
            (Some(digest), Ok((scopes, workspaces))) => {
                entries.push((r.name.clone(), digest, scopes, workspaces))
            }
            (_, Err(e)) => {
                tracing::warn!(token = %r.name, error = %e, "API token not accepted: its scopes do not parse")
            }
            (None, _) => {
                tracing::warn!(token = %r.name, "API token not accepted: its digest is not hex")
            }
        }
    }
    // Names are unique in the catalog; a set that still refuses them accepts none.
    TokenSet::of_digests(entries).unwrap_or_else(|e| {
        tracing::error!(error = %e, "API tokens not accepted");
        TokenSet::default()
    })
}

type Source = Box<dyn Fn() -> Arc<Vec<ApiTokenRecord>> + Send + Sync>;
type Clock = Box<dyn Fn() -> TimestampMs + Send + Sync>;

/// The catalog's tokens as the authenticator checks them, rebuilt when the catalog's list
/// changes (the list is swapped whole, so a pointer comparison tells).
pub struct CatalogTokens {
    source: Source,
    now: Clock,
    cache: parking_lot::Mutex<(Option<Arc<Vec<ApiTokenRecord>>>, TokenSet)>,
}

impl CatalogTokens {
    /// Tokens read from `source` (the engine's list as its catalog applier keeps it), expired
    /// by the instants of `now` (the engine's clock).
    pub fn new(
        source: impl Fn() -> Arc<Vec<ApiTokenRecord>> + Send + Sync + 'static,
        now: impl Fn() -> TimestampMs + Send + Sync + 'static,
    ) -> Self {
        CatalogTokens {
            source: Box::new(source),
            now: Box::new(now),
            cache: parking_lot::Mutex::new((None, TokenSet::default())),
        }
    }

    /// What the catalog says of the presented token: `None` when it holds no such token.
    pub fn check(&self, presented: &str) -> Option<CatalogVerdict> {
        let current = (self.source)();
        let mut cache = self.cache.lock();
        if !cache.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, &current)) {
            cache.1 = token_set(&current);
            cache.0 = Some(current.clone());
        }
        let (name, scopes, workspaces) = cache.1.check(presented)?;
        let record = current.iter().find(|r| r.name == name)?;
        if record.expired((self.now)()) {
            return Some(CatalogVerdict::Expired {
                name: name.to_string(),
                at_ms: record.expires_at_ms().unwrap_or_default(),
            });
        }
        Some(CatalogVerdict::Accepted(
            name.to_string(),
            scopes,
            workspaces.to_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Scope;

    fn record(name: &str, secret: &str, scopes: &[&str], workspaces: &[&str]) -> ApiTokenRecord {
        ApiTokenRecord {
            name: name.into(),
            digest: digest_hex(secret),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            workspaces: workspaces.iter().map(|w| w.to_string()).collect(),
            created_at_ms: 0,
            created_by: String::new(),
            valid_for_ms: 0,
        }
    }

    #[test]
    fn secrets_are_random_and_only_their_digest_is_kept() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        let d = digest_hex(&a);
        assert_eq!(d.len(), 64);
        assert!(!d.contains(&a[SECRET_PREFIX.len()..]));
        assert_eq!(unhex(&d), Some(crate::auth::digest(&a)));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn the_catalogs_tokens_are_checked_and_follow_its_changes() {
        let list = Arc::new(parking_lot::Mutex::new(Arc::new(vec![
            record("ci", "secret-of-ci-0123456789", &["read"], &[]),
            record(
                "b",
                "secret-of-b-0123456789",
                &["read", "write"],
                &["app-b"],
            ),
            record("future", "secret-of-future-0123", &["telepathy"], &[]),
        ])));
        let source = list.clone();
        let clock = Arc::new(std::sync::atomic::AtomicI64::new(1_000));
        let now = clock.clone();
        let tokens = CatalogTokens::new(
            move || source.lock().clone(),
            move || now.load(std::sync::atomic::Ordering::Relaxed),
        );
        let Some(CatalogVerdict::Accepted(name, scopes, workspaces)) =
            tokens.check("secret-of-b-0123456789")
        else {
            panic!("b is accepted")
        };
        assert_eq!(name, "b");
        assert!(scopes.allows(Scope::Write) && !scopes.allows(Scope::Admin));
        assert_eq!(workspaces, vec!["app-b".to_string()]);
        assert!(
            tokens.check("secret-of-future-0123").is_none(),
            "unknown scope"
        );
        assert!(tokens.check("wrong").is_none());
        // Revoked: the list changes, and the token is refused.
        *list.lock() = Arc::new(vec![record(
            "b",
            "secret-of-b-0123456789",
            &["read"],
            &["app-b"],
        )]);
        assert!(tokens.check("secret-of-ci-0123456789").is_none());
        // Expired by the clock: named as expired, with the instant.
        let mut brief = record("brief", "secret-of-brief-0123456", &["read"], &[]);
        brief.created_at_ms = 1_000;
        brief.valid_for_ms = 60_000;
        *list.lock() = Arc::new(vec![brief]);
        assert!(matches!(
            tokens.check("secret-of-brief-0123456"),
            Some(CatalogVerdict::Accepted(..))
        ));
        clock.store(61_000, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(
            tokens.check("secret-of-brief-0123456"),
            Some(CatalogVerdict::Expired { at_ms: 61_000, .. })
        ));
        assert_eq!(
            grant_words(&scope_names(Scopes::of(&[Scope::Read])), &["app-b".into()]),
            ["read", "workspace:app-b"]
        );
    }
}
