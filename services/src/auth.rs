//! Who may call the API: bearer tokens with scopes, checked on every gRPC call but health in
//! one tower layer ([`AuthLayer`]), and the client side of the same (a channel that sends a
//! token, over TLS when the address is `https://`), shared by `audiencectl` and the end-to-end
//! tests.
//!
//! Invariants:
//! - A presented token is compared in constant time against every accepted token: both are
//!   reduced to SHA-256 digests first, and every digest is compared, so neither the length of a
//!   token, the place of its first wrong byte nor which token matched shows in the timing.
//! - Every call passes one check, [`Authenticator::admit`], before any service sees it: no
//!   valid token is UNAUTHENTICATED; a method outside the token's scopes (the table of
//!   `access.rs`) is PERMISSION_DENIED, naming the scope. A service never checks on its own.
//! - Tokens have names, and several are valid at once, so they rotate without an outage: add
//!   the new one, move the clients, remove the old one. The tokens file is re-read when it
//!   changes, without a restart; a file that no longer parses keeps the previous set (and says
//!   so), so a typo does not lock every client out.
//! - A token of the configuration listed without scopes is the operator's: it holds `admin`.
//! - Health answers without a token (orchestrators and load balancers probe it); reflection
//!   needs a valid token of any scope, since it maps the whole API.
//! - A token never reaches a log: the configuration prints names only.
//! - Tokens created through the API (`AdminService.CreateToken`) are the catalog's, kept as
//!   digests ([`crate::api_tokens`]) and accepted beside the configuration's on every node.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

use crate::access::{self, Scopes};

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The environment variable `audiencectl` (and any script) reads its token from.
pub const CLIENT_TOKEN_ENV: &str = "AUDIENCE_TOKEN";

const MISSING: &str = "this engine requires a bearer token: audiencectl sends the one in \
the AUDIENCE_TOKEN environment variable; other clients send the metadata \
`authorization: Bearer <token>`";
const REFUSED: &str = "the bearer token is not accepted: check AUDIENCE_TOKEN against the \
engine's auth.tokens or auth.tokens_file (a rotated-out token is refused)";

/// The tokens a node accepts: names with the SHA-256 digest of each token and its scopes.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
}

#[derive(Clone)]
struct TokenEntry {
    name: String,
    digest: [u8; 32],
    scopes: Scopes,
    /// The workspaces the token is limited to (empty: every one).
    workspaces: Vec<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenSet {
    /// Tokens by name, each holding every scope (the operator's). A name is refused when
    /// empty, a token when shorter than [`MIN_TOKEN_CHARS`] or not printable ASCII without
    /// spaces (it travels in a header).
    pub fn new<'a>(
        tokens: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TokenSet, String> {
        TokenSet::scoped(tokens.into_iter().map(|(n, t)| (n, t, Scopes::all())))
    }

    /// Tokens by name with their scopes, checked as [`TokenSet::new`] checks them.
    pub fn scoped<'a>(
        tokens: impl IntoIterator<Item = (&'a str, &'a str, Scopes)>,
    ) -> Result<TokenSet, String> {
        TokenSet::granted(tokens.into_iter().map(|(n, t, s)| (n, t, s, Vec::new())))
    }

    /// Tokens by name with their scopes and the workspaces each is limited to (empty: every
    /// one), checked as [`TokenSet::new`] checks them.
    pub fn granted<'a>(
        tokens: impl IntoIterator<Item = (&'a str, &'a str, Scopes, Vec<String>)>,
    ) -> Result<TokenSet, String> {
        let mut set = TokenSet::default();
        for (name, token, scopes, workspaces) in tokens {
            let name = name.trim();
            if name.is_empty() {
                return Err("a token has an empty name".into());
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!(
                    "token '{name}' has fewer than {MIN_TOKEN_CHARS} characters \
                     (`openssl rand -hex 32` makes a good one)"
                ));
            }
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "token '{name}' has a character other than printable ASCII (no spaces)"
                ));
            }
            set.push(TokenEntry {
                name: name.to_string(),
                digest: digest(token),
                scopes,
                workspaces,
            })?;
        }
        Ok(set)
    }

    fn push(&mut self, entry: TokenEntry) -> Result<(), String> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(format!("two tokens are named '{}'", entry.name));
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The lines of a tokens file: `name token [scopes]` or `name=token [scopes]`, one per
    /// line, scopes as `read,subscribe` (every scope without), with `workspace:NAME` for each
    /// workspace the token is limited to; blank lines and lines starting with `#` are skipped.
    pub fn parse_file(text: &str) -> Result<TokenSet, String> {
        let mut triples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", n + 1);
            // At the first separator: a token may hold '=' (base64) and never whitespace.
            let Some((name, rest)) = line
                .find(|c: char| c == '=' || c.is_whitespace())
                .map(|at| (&line[..at], &line[at + 1..]))
            else {
                return Err(at(
                    "expected `name token [scopes]` or `name=token [scopes]`".into(),
                ));
            };
            let mut fields = rest.split_whitespace();
            let token = fields.next().unwrap_or("");
            let scopes: Vec<&str> = fields.collect();
            let (scopes, workspaces) = if scopes.is_empty() {
                (Scopes::all(), Vec::new())
            } else {
                access::parse_grant(&scopes.join(" "))
                    .map_err(|e| at(format!("token '{name}': {e}")))?
            };
            triples.push((name.trim(), token, scopes, workspaces));
        }
        TokenSet::granted(triples).map_err(|e| format!("{e} (in the tokens file)"))
    }

    /// Tokens given by their digests (the catalog's API tokens: [`crate::api_tokens`]); a
    /// name twice is an error.
    pub fn of_digests(
        entries: impl IntoIterator<Item = (String, [u8; 32], Scopes, Vec<String>)>,
    ) -> Result<TokenSet, String> {
        let mut set = TokenSet::default();
        for (name, digest, scopes, workspaces) in entries {
            set.push(TokenEntry {
                name,
                digest,
                scopes,
                workspaces,
            })?;
        }
        Ok(set)
    }

    /// Each token's name, scopes and workspaces.
    pub fn grants(&self) -> Vec<(&str, Scopes, &[String])> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), e.scopes, e.workspaces.as_slice()))
            .collect()
    }

    /// Both sets; a name in both is an error.
    pub fn union(&self, other: &TokenSet) -> Result<TokenSet, String> {
        let mut all = self.clone();
        for e in &other.entries {
            all.push(e.clone())?;
        }
        Ok(all)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The name, scopes and workspaces of the token presented, when it is one of the set.
    /// Every digest is compared (no early exit), in constant time.
    pub fn check(&self, presented: &str) -> Option<(&str, Scopes, &[String])> {
        let presented = digest(presented);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&presented)) {
                found = Some((e.name.as_str(), e.scopes, e.workspaces.as_slice()));
            }
        }
        found
    }
}

/// Where a node's tokens come from: the configuration's own, and a file re-read on change.
#[derive(Clone, Debug)]
pub struct TokenSources {
    pub inline: TokenSet,
    pub file: Option<PathBuf>,
}

impl TokenSources {
    /// The accepted set now: the inline tokens and the file's.
    pub fn load(&self) -> Result<TokenSet, String> {
        match &self.file {
            None => Ok(self.inline.clone()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
                let from_file = TokenSet::parse_file(&text)
                    .map_err(|e| format!("auth.tokens_file {}: {e}", path.display()))?;
                self.inline.union(&from_file)
            }
        }
    }

    pub fn is_configured(&self) -> bool {
        self.file.is_some() || !self.inline.is_empty()
    }
}

/// The server side: the check of every call ([`AuthLayer`] applies it). `open` accepts every
/// call (a loopback engine with `auth.allow_unauthenticated`, for development).
#[derive(Clone)]
pub struct Authenticator {
    tokens: Option<Arc<parking_lot::RwLock<TokenSet>>>,
    /// The catalog's API tokens, accepted beside the configuration's (with tokens only).
    catalog: Option<Arc<TokenCheck>>,
}

/// A check of a presented token against another set than the configuration's (the catalog's):
/// what that set says of it, `None` when it does not hold it.
pub type TokenCheck = dyn Fn(&str) -> Option<CatalogVerdict> + Send + Sync;

/// The token a call came with, in the request's extensions: its name (who made a change) and
/// its scopes.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub scopes: Scopes,
    /// The workspaces the token is limited to (empty: every one).
    pub workspaces: Vec<String>,
}

/// What the catalog says of a token presented to it (see `crate::api_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogVerdict {
    /// Its name, scopes and workspaces.
    Accepted(String, Scopes, Vec<String>),
    /// Its validity ended at `at_ms`.
    Expired { name: String, at_ms: i64 },
}

/// An instant as RFC 3339 (UTC, seconds), for refusals.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

impl Authenticator {
    /// Accepts every call.
    pub fn open() -> Authenticator {
        Authenticator {
            tokens: None,
            catalog: None,
        }
    }

    pub fn with_tokens(tokens: TokenSet) -> Authenticator {
        Authenticator {
            tokens: Some(Arc::new(parking_lot::RwLock::new(tokens))),
            catalog: None,
        }
    }

    /// Accepts the catalog's API tokens too (an engine with tokens; an open one accepts
    /// every call anyway).
    pub fn with_catalog(
        mut self,
        check: impl Fn(&str) -> Option<CatalogVerdict> + Send + Sync + 'static,
    ) -> Authenticator {
        self.catalog = Some(Arc::new(check));
        self
    }

    /// Whether it accepts every call (no token configured).
    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// The configuration's tokens: name, scopes and workspaces of each.
    pub fn configured(&self) -> Vec<(String, Scopes, Vec<String>)> {
        self.tokens
            .as_ref()
            .map(|t| {
                t.read()
                    .grants()
                    .into_iter()
                    .map(|(n, s, w)| (n.to_string(), s, w.to_vec()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces the accepted set (a reload of the tokens file).
    pub fn replace(&self, tokens: TokenSet) {
        if let Some(current) = &self.tokens {
            *current.write() = tokens;
        }
    }

    /// Re-reads the tokens file once a second while its modification time or length changes,
    /// until shutdown. A file that does not load keeps the previous set.
    pub fn watch_file(&self, sources: TokenSources, mut shutdown: watch::Receiver<bool>) {
        let Some(path) = sources.file.clone() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            // The first look re-reads the file: a change between the first load and now
            // (start-up takes seconds) is not missed.
            let mut seen = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
                let now = file_stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match sources.load() {
                    Ok(tokens) => {
                        tracing::info!(names = ?tokens.names(), "auth tokens reloaded");
                        metrics::counter!("audience_auth_reloads_total").increment(1);
                        this.replace(tokens);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "auth tokens not reloaded: the previous set stays");
                        metrics::counter!("audience_auth_reload_failures_total").increment(1);
                    }
                }
            }
        });
    }

    /// The one check of a call to the gRPC method at `path` with these headers: the caller
    /// when it may go on (`None` on an open engine or for health), else the status to answer.
    pub fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        if access::is_probe(path) {
            return Ok(None);
        }
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let refuse = |reason: &'static str, status: Status| {
            metrics::counter!("audience_auth_refused_total", "reason" => reason).increment(1);
            Err(status)
        };
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            return refuse("missing", Status::unauthenticated(MISSING));
        };
        let Some(token) = header.to_str().ok().and_then(bearer) else {
            return refuse(
                "malformed",
                Status::unauthenticated("the authorization metadata is not `Bearer <token>`"),
            );
        };
        // Both sets are always compared: which one holds the token does not show in the time.
        let configured_set = tokens.read();
        let configured = configured_set
            .check(token)
            .map(|(n, s, w)| (n.to_string(), s, w.to_vec()));
        let from_catalog = self.catalog.as_ref().and_then(|check| check(token));
        let (name, scopes, workspaces) = match (configured, from_catalog) {
            (Some(grant), _) => grant,
            // A name the configuration took since the catalog's token was created is the
            // configuration's: the catalog's secret no longer opens it.
            (None, Some(CatalogVerdict::Accepted(name, ..)))
                if configured_set.names().contains(&name.as_str()) =>
            {
                return refuse("refused", Status::unauthenticated(REFUSED));
            }
            (None, Some(CatalogVerdict::Accepted(name, scopes, workspaces))) => {
                (name, scopes, workspaces)
            }
            (None, Some(CatalogVerdict::Expired { name, at_ms })) => {
                return refuse(
                    "expired",
                    Status::unauthenticated(format!(
                        "token '{name}' expired at {} (its ttl): create another",
                        rfc3339(at_ms)
                    )),
                );
            }
            (None, None) => return refuse("refused", Status::unauthenticated(REFUSED)),
        };
        drop(configured_set);
        if let Some(needed) = access::required_scope(path) {
            if !scopes.allows(needed) {
                return refuse(
                    "scope",
                    Status::permission_denied(access::refusal(&name, path, needed, scopes)),
                );
            }
        }
        if !workspaces.is_empty() && !access::workspace_aware(path) {
            return refuse(
                "workspace",
                Status::permission_denied(access::workspace_refusal(&name, path, &workspaces)),
            );
        }
        Ok(Some(Caller {
            name,
            scopes,
            workspaces,
        }))
    }
}

/// The name of the token a call came with, as changes record it: "" on an open engine.
pub fn caller_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// The token of an `authorization` value `Bearer <token>` (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The layer over every service of the server: [`Authenticator::admit`] on each call, the
/// caller in the request's extensions, a refusal answered without reaching any service.
#[derive(Clone)]
pub struct AuthLayer(pub Authenticator);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            auth: self.0.clone(),
            inner,
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Guarded<S> {
    auth: Authenticator,
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Guarded<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<http::Response<ResBody>, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match self.auth.admit(request.uri().path(), request.headers()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Refuses to expose an unauthenticated API: a listener reachable from other hosts needs a
/// token, and an engine without tokens runs only when `allow_unauthenticated` says so, on
/// loopback. The error is the one line the engine stops with.
pub fn check_exposure(
    listen: std::net::SocketAddr,
    tokens_configured: bool,
    allow_unauthenticated: bool,
) -> Result<(), String> {
    if tokens_configured {
        return Ok(());
    }
    if !listen.ip().is_loopback() {
        return Err(format!(
            "grpc.listen {listen} is reachable from other hosts and no token is configured: \
             set auth.tokens or auth.tokens_file (AUDIENCE_TOKENS, AUDIENCE_TOKENS_FILE), or \
             listen on 127.0.0.1"
        ));
    }
    if !allow_unauthenticated {
        return Err(
            "no token is configured: set auth.tokens or auth.tokens_file (AUDIENCE_TOKENS, \
             AUDIENCE_TOKENS_FILE), or auth.allow_unauthenticated = true for a development \
             engine on loopback"
                .into(),
        );
    }
    Ok(())
}

/// The client side: adds `authorization: Bearer <token>` to every call when there is a token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<BearerToken, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(BearerToken(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| "the token has a character a header cannot carry".to_string()),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to an engine that sends a token with every call.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// How a client reaches an engine: its address (`http://` or `https://`), the token, and for
/// `https://` the CA file that signed the engine's certificate (the system's roots without) and
/// the client's own certificate and key where the engine requires one (mutual TLS).
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// PEM files of the client's certificate (chain) and private key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientOptions {
    /// The token from `AUDIENCE_TOKEN`, the CA file and client identity given.
    pub fn from_env(
        ca_file: Option<PathBuf>,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> ClientOptions {
        ClientOptions {
            token: std::env::var(CLIENT_TOKEN_ENV).ok(),
            ca_file,
            identity,
        }
    }

    /// The endpoint for `server`, TLS configured; errors name what was wrong.
    pub fn endpoint(&self, server: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        let endpoint = Channel::from_shared(server.to_string()).map_err(|_| {
            anyhow::anyhow!("'{server}' is not an engine address (like http://127.0.0.1:50051)")
        })?;
        let https = server.starts_with("https://");
        if !https {
            if let Some(ca) = &self.ca_file {
                anyhow::bail!(
                    "a CA file ({}) is given for {server}: use an https:// address",
                    ca.display()
                );
            }
            if let Some((cert, _)) = &self.identity {
                anyhow::bail!(
                    "a client certificate ({}) is given for {server}: use an https:// address",
                    cert.display()
                );
            }
            return Ok(endpoint);
        }
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))
        };
        let mut tls = match &self.ca_file {
            Some(ca) => {
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA file", ca)?))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        Ok(endpoint.tls_config(tls)?)
    }

    pub fn interceptor(&self) -> anyhow::Result<BearerToken> {
        BearerToken::new(self.token.as_deref()).map_err(|e| anyhow::anyhow!("AUDIENCE_TOKEN: {e}"))
    }

    /// Connects now.
    pub async fn connect(&self, server: &str) -> anyhow::Result<AuthChannel> {
        let channel = self.endpoint(server)?.connect().await?;
        Ok(InterceptedService::new(channel, self.interceptor()?))
    }
}

/// Tokens of the configuration: `name = token` pairs, and the scopes of some of them by name
/// (every scope for a token not listed there).
pub fn inline_tokens(
    tokens: &BTreeMap<String, String>,
    scopes: &BTreeMap<String, String>,
) -> Result<TokenSet, String> {
    if let Some(name) = scopes.keys().find(|n| !tokens.contains_key(*n)) {
        return Err(format!(
            "auth.scopes names '{name}', which is not a token of auth.tokens"
        ));
    }
    let mut granted = Vec::new();
    for (name, token) in tokens {
        let (held, workspaces) = match scopes.get(name) {
            Some(text) => {
                access::parse_grant(text).map_err(|e| format!("auth.scopes of '{name}': {e}"))?
            }
            None => (Scopes::all(), Vec::new()),
        };
        granted.push((name.as_str(), token.as_str(), held, workspaces));
    }
    TokenSet::granted(granted).map_err(|e| format!("auth.tokens: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = authorization {
            r.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        r
    }

    #[test]
    fn a_token_is_accepted_by_name_and_others_are_refused() {
        let set = TokenSet::new([("ops", A), ("ci", B)]).unwrap();
        assert_eq!(set.check(A).map(|c| c.0), Some("ops"));
        assert_eq!(set.check(B).map(|c| c.0), Some("ci"));
        assert_eq!(set.check(&A[1..]), None);
        assert_eq!(set.check(&format!("{A}a")), None);
        assert_eq!(set.check(""), None);
    }

    #[test]
    fn short_unnamed_duplicated_or_spaced_tokens_are_refused_with_their_name() {
        let e = TokenSet::new([("ops", "short")]).unwrap_err();
        assert!(e.contains("'ops'") && e.contains("16"), "{e}");
        assert!(TokenSet::new([("", A)]).is_err());
        assert!(TokenSet::new([("x", A), ("x", B)])
            .unwrap_err()
            .contains("two tokens are named 'x'"));
        assert!(TokenSet::new([("x", "aaaaaaaa aaaaaaaaaa")]).is_err());
    }

    #[test]
    fn a_tokens_file_takes_both_forms_comments_and_blank_lines() {
        let set = TokenSet::parse_file(&format!("# rotated 2026-12\n\nops {A}\nci={B}\n")).unwrap();
        assert_eq!(set.names(), ["ops", "ci"]);
        // A base64 token keeps its '=' in either form.
        let padded = "QUJDREVGR0hJSktMTU5PUA==";
        let set = TokenSet::parse_file(&format!("ops {padded}\nci={padded}x\n")).unwrap();
        assert_eq!(set.check(padded).map(|c| c.0), Some("ops"));
        assert_eq!(set.check(&format!("{padded}x")).map(|c| c.0), Some("ci"));
        let e = TokenSet::parse_file("justonefield").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        // Scopes after the token; a wrong one names its line.
        let set = TokenSet::parse_file(&format!("ci {A} read, subscribe\n")).unwrap();
        assert_eq!(set.check(A).unwrap().1.to_string(), "read,subscribe");
        let e = TokenSet::parse_file(&format!("ci {A} rread\n")).unwrap_err();
        assert!(e.contains("line 1") && e.contains("'rread'"), "{e}");
    }

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = authorization {
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    const STATUS: &str = "/audience.v1.AdminService/GetEngineStatus";

    #[test]
    fn the_check_refuses_missing_malformed_and_wrong_tokens_and_names_the_caller() {
        let auth = Authenticator::with_tokens(TokenSet::new([("ops", A)]).unwrap());
        let missing = auth.admit(STATUS, &headers(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("AUDIENCE_TOKEN"));
        let wrong = auth
            .admit(STATUS, &headers(Some(&format!("Bearer {B}"))))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(wrong.message().contains("not accepted"));
        let basic = auth
            .admit(STATUS, &headers(Some("Basic b3BzOnNlY3JldA==")))
            .unwrap_err();
        assert_eq!(basic.code(), tonic::Code::Unauthenticated);
        let ok = auth
            .admit(STATUS, &headers(Some(&format!("bearer {A}"))))
            .unwrap()
            .unwrap();
        assert_eq!(ok.name, "ops");
        assert_eq!(ok.scopes, Scopes::all());
        // Health needs nothing; reflection any valid token.
        assert!(auth
            .admit("/grpc.health.v1.Health/Check", &headers(None))
            .is_ok());
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(auth.admit(reflection, &headers(None)).is_err());
        // A reload replaces the set: the old token stops working at once.
        auth.replace(TokenSet::new([("ci", B)]).unwrap());
        assert!(auth
            .admit(STATUS, &headers(Some(&format!("Bearer {A}"))))
            .is_err());
        assert!(auth
            .admit(STATUS, &headers(Some(&format!("Bearer {B}"))))
            .is_ok());
        // An open engine accepts anything.
        assert!(Authenticator::open().admit(STATUS, &headers(None)).is_ok());
    }

    #[test]
    fn the_catalogs_tokens_are_accepted_unless_expired_or_named_by_the_configuration() {
        use crate::access::Scope;
        const EXPIRED: &str = "secret-of-an-expired-token";
        let auth = Authenticator::with_tokens(TokenSet::new([("ops", A)]).unwrap()).with_catalog(
            |presented| match presented {
                B => Some(CatalogVerdict::Accepted(
                    "ci".into(),
                    Scopes::of(&[Scope::Read]),
                    vec![],
                )),
                "secret-of-a-shadowed-token" => Some(CatalogVerdict::Accepted(
                    "ops".into(),
                    Scopes::all(),
                    vec![],
                )),
                EXPIRED => Some(CatalogVerdict::Expired {
                    name: "brief".into(),
                    at_ms: 0,
                }),
                _ => None,
            },
        );
        let ci = auth
            .admit(STATUS, &headers(Some(&format!("Bearer {B}"))))
            .unwrap()
            .unwrap();
        assert_eq!(ci.name, "ci");
        let expired = auth
            .admit(STATUS, &headers(Some(&format!("Bearer {EXPIRED}"))))
            .unwrap_err();
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert!(
            expired
                .message()
                .contains("token 'brief' expired at 1970-01-01T00:00:00Z"),
            "{expired:?}"
        );
        let shadowed = auth
            .admit(STATUS, &headers(Some("Bearer secret-of-a-shadowed-token")))
            .unwrap_err();
        assert_eq!(shadowed.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_call_outside_the_tokens_scopes_is_denied_naming_the_scope() {
        let set =
            TokenSet::parse_file(&format!("reader {A} read\nwatcher={B} subscribe\n")).unwrap();
        let auth = Authenticator::with_tokens(set);
        let reader = headers(Some(&format!("Bearer {A}")));
        assert!(auth.admit(STATUS, &reader).is_ok());
        let create = "/audience.v1.AudienceService/CreateAudience";
        let denied = auth.admit(create, &reader).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("'write'") && denied.message().contains("'reader'"),
            "{}",
            denied.message()
        );
        let watcher = headers(Some(&format!("Bearer {B}")));
        let subscribe = "/audience.v1.MembershipService/Subscribe";
        assert!(auth.admit(subscribe, &watcher).is_ok());
        assert!(auth.admit(subscribe, &reader).is_err());
        assert_eq!(
            auth.admit(STATUS, &watcher).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // Reflection lets any valid token in.
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(auth.admit(reflection, &watcher).is_ok());
    }

    #[test]
    fn inline_scopes_name_tokens_of_the_configuration() {
        let tokens: BTreeMap<String, String> = [
            ("ops".to_string(), A.to_string()),
            ("ci".to_string(), B.to_string()),
        ]
        .into();
        let scopes: BTreeMap<String, String> = [("ci".to_string(), "read".to_string())].into();
        let set = inline_tokens(&tokens, &scopes).unwrap();
        assert_eq!(set.check(A).unwrap().1, Scopes::all());
        assert_eq!(
            set.check(B).unwrap().1,
            Scopes::of(&[crate::access::Scope::Read])
        );
        let stray: BTreeMap<String, String> = [("nobody".to_string(), "read".to_string())].into();
        assert!(inline_tokens(&tokens, &stray)
            .unwrap_err()
            .contains("'nobody'"));
        let bad: BTreeMap<String, String> = [("ci".to_string(), "reed".to_string())].into();
        assert!(inline_tokens(&tokens, &bad).unwrap_err().contains("'reed'"));
    }

    #[test]
    fn an_unauthenticated_engine_runs_on_loopback_only_and_only_when_allowed() {
        let public: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let v6: std::net::SocketAddr = "[::1]:50051".parse().unwrap();
        let e = check_exposure(public, false, true).unwrap_err();
        assert!(
            e.contains("0.0.0.0:50051") && e.contains("AUDIENCE_TOKENS"),
            "{e}"
        );
        assert!(check_exposure(public, true, false).is_ok());
        assert!(check_exposure(loopback, false, false).is_err());
        assert!(check_exposure(loopback, false, true).is_ok());
        assert!(check_exposure(v6, false, true).is_ok());
    }

    #[test]
    fn the_client_sends_a_bearer_header_only_with_a_token() {
        use tonic::service::Interceptor;
        let sent = BearerToken::new(Some(A))
            .unwrap()
            .call(request(None))
            .unwrap();
        assert_eq!(
            sent.metadata().get("authorization").unwrap(),
            &format!("Bearer {A}")
        );
        let none = BearerToken::new(Some("  "))
            .unwrap()
            .call(request(None))
            .unwrap();
        assert!(none.metadata().get("authorization").is_none());
    }
}
