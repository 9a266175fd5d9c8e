//! Who may call the API: bearer tokens, checked on every gRPC service but health, and the
//! client side of the same (a channel that sends a token, over TLS when the address is
//! `https://`), shared by `audiencectl` and the end-to-end tests.
//!
//! Invariants:
//! - A presented token is compared in constant time against every accepted token: both are
//!   reduced to SHA-256 digests first, and every digest is compared, so neither the length of a
//!   token, the place of its first wrong byte nor which token matched shows in the timing.
//! - Tokens have names, and several are valid at once, so they rotate without an outage: add
//!   the new one, move the clients, remove the old one. The tokens file is re-read when it
//!   changes, without a restart; a file that no longer parses keeps the previous set (and says
//!   so), so a typo does not lock every client out.
//! - Health answers without a token (orchestrators and load balancers probe it); reflection
//!   does not, since it maps the whole API.
//! - A token never reaches a log: the configuration prints names only.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status};

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The environment variable `audiencectl` (and any script) reads its token from.
pub const CLIENT_TOKEN_ENV: &str = "AUDIENCE_TOKEN";

const MISSING: &str = "this engine requires a bearer token: audiencectl sends the one in \
the AUDIENCE_TOKEN environment variable; other clients send the metadata \
`authorization: Bearer <token>`";
const REFUSED: &str = "the bearer token is not accepted: check AUDIENCE_TOKEN against the \
engine's auth.tokens or auth.tokens_file (a rotated-out token is refused)";

/// The tokens a node accepts: names with the SHA-256 digest of each token.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenSet {
    /// Tokens by name. A name is refused when empty, a token when shorter than
    /// [`MIN_TOKEN_CHARS`] or not printable ASCII without spaces (it travels in a header).
    pub fn new<'a>(
        tokens: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TokenSet, String> {
        let mut digests: Vec<(String, [u8; 32])> = Vec::new();
        for (name, token) in tokens {
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
            if digests.iter().any(|(n, _)| n == name) {
                return Err(format!("two tokens are named '{name}'"));
            }
            digests.push((name.to_string(), digest(token)));
        }
        Ok(TokenSet { digests })
    }

    /// The lines of a tokens file: `name token` or `name=token`, one per line; blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse_file(text: &str) -> Result<TokenSet, String> {
        let mut pairs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // At the first separator: a token may hold '=' (base64) and never whitespace.
            let split = line
                .find(|c: char| c == '=' || c.is_whitespace())
                .map(|at| (&line[..at], &line[at + 1..]));
            match split {
                Some((name, token)) => pairs.push((name.trim(), token.trim())),
                None => {
                    return Err(format!(
                        "line {}: expected `name token` or `name=token`",
                        n + 1
                    ))
                }
            }
        }
        TokenSet::new(pairs).map_err(|e| format!("{e} (in the tokens file)"))
    }

    /// Both sets; a name in both is an error.
    pub fn union(&self, other: &TokenSet) -> Result<TokenSet, String> {
        let mut all = self.digests.clone();
        for (name, d) in &other.digests {
            if all.iter().any(|(n, _)| n == name) {
                return Err(format!("two tokens are named '{name}'"));
            }
            all.push((name.clone(), *d));
        }
        Ok(TokenSet { digests: all })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.digests.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The name of the token presented, when it is one of the set. Every digest is compared
    /// (no early exit), in constant time.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let presented = digest(presented);
        let mut found = None;
        for (name, d) in &self.digests {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(name.as_str());
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

/// The server side: an interceptor over every service but health. `open` accepts every call
/// (a loopback engine with `auth.allow_unauthenticated`, for development).
#[derive(Clone)]
pub struct Authenticator {
    tokens: Option<Arc<parking_lot::RwLock<TokenSet>>>,
}

/// The name of the token a call came with, in the request's extensions.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

impl Authenticator {
    /// Accepts every call.
    pub fn open() -> Authenticator {
        Authenticator { tokens: None }
    }

    pub fn with_tokens(tokens: TokenSet) -> Authenticator {
        Authenticator {
            tokens: Some(Arc::new(parking_lot::RwLock::new(tokens))),
        }
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

    fn authenticate(&self, request: &Request<()>) -> Result<Option<String>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let refuse = |reason: &'static str, message: &str| {
            metrics::counter!("audience_auth_refused_total", "reason" => reason).increment(1);
            Err(Status::unauthenticated(message))
        };
        let Some(header) = request.metadata().get("authorization") else {
            return refuse("missing", MISSING);
        };
        let Some(token) = header.to_str().ok().and_then(bearer) else {
            return refuse(
                "malformed",
                "the authorization metadata is not `Bearer <token>`",
            );
        };
        match tokens.read().check(token) {
            Some(name) => Ok(Some(name.to_string())),
            None => refuse("refused", REFUSED),
        }
    }
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

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(name) = self.authenticate(&request)? {
            request.extensions_mut().insert(Caller(name));
        }
        Ok(request)
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
/// `https://` the CA file that signed the engine's certificate (the system's roots without).
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl ClientOptions {
    /// The token from `AUDIENCE_TOKEN`, the CA file given.
    pub fn from_env(ca_file: Option<PathBuf>) -> ClientOptions {
        ClientOptions {
            token: std::env::var(CLIENT_TOKEN_ENV).ok(),
            ca_file,
        }
    }

    /// The endpoint for `server`, TLS configured; errors name what was wrong.
    pub fn endpoint(&self, server: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        let endpoint = Channel::from_shared(server.to_string()).map_err(|_| {
            anyhow::anyhow!("'{server}' is not an engine address (like http://127.0.0.1:50051)")
        })?;
        let https = server.starts_with("https://");
        match (&self.ca_file, https) {
            (Some(ca), false) => anyhow::bail!(
                "a CA file ({}) is given for {server}: use an https:// address",
                ca.display()
            ),
            (None, false) => Ok(endpoint),
            (ca, true) => {
                let tls = match ca {
                    Some(ca) => {
                        let pem = std::fs::read(ca)
                            .map_err(|e| anyhow::anyhow!("CA file {}: {e}", ca.display()))?;
                        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                    }
                    None => ClientTlsConfig::new().with_native_roots(),
                };
                Ok(endpoint.tls_config(tls)?)
            }
        }
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

/// Tokens of the configuration: `name = token` pairs.
pub fn inline_tokens(tokens: &BTreeMap<String, String>) -> Result<TokenSet, String> {
    TokenSet::new(tokens.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .map_err(|e| format!("auth.tokens: {e}"))
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
        assert_eq!(set.check(A), Some("ops"));
        assert_eq!(set.check(B), Some("ci"));
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
        assert_eq!(set.check(padded), Some("ops"));
        assert_eq!(set.check(&format!("{padded}x")), Some("ci"));
        let e = TokenSet::parse_file("justonefield").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_interceptor_refuses_missing_malformed_and_wrong_tokens_and_names_the_caller() {
        use tonic::service::Interceptor;
        let mut auth = Authenticator::with_tokens(TokenSet::new([("ops", A)]).unwrap());
        let missing = auth.call(request(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("AUDIENCE_TOKEN"));
        let wrong = auth
            .call(request(Some(&format!("Bearer {B}"))))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(wrong.message().contains("not accepted"));
        let basic = auth
            .call(request(Some("Basic b3BzOnNlY3JldA==")))
            .unwrap_err();
        assert_eq!(basic.code(), tonic::Code::Unauthenticated);
        let ok = auth.call(request(Some(&format!("bearer {A}")))).unwrap();
        assert_eq!(ok.extensions().get::<Caller>().unwrap().0, "ops");
        // A reload replaces the set: the old token stops working at once.
        auth.replace(TokenSet::new([("ci", B)]).unwrap());
        assert!(auth.call(request(Some(&format!("Bearer {A}")))).is_err());
        assert!(auth.call(request(Some(&format!("Bearer {B}")))).is_ok());
        // An open engine accepts anything.
        assert!(Authenticator::open().call(request(None)).is_ok());
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
