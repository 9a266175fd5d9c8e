//! What a token may do: its scopes, and the one table that says which scope each gRPC method
//! needs. Pure logic; `auth.rs` applies it to every call in one tower layer.
//!
//! Invariants:
//! - every method of the API is in [`required_scope`]'s table; a method it does not know (a
//!   newer client, a typo) needs `admin`, so an addition to the API is closed until classified
//!   (a test walks the descriptor set and fails on a method the table does not name);
//! - scopes nest where the work does: `admin` holds every scope, `write` holds `read` (an edit
//!   needs the revision it edits from); `subscribe` (deltas and deliveries, members' identities
//!   leaving the engine) is held only by itself and `admin`;
//! - reflection and health are outside the table: health answers anyone, reflection any valid
//!   token;
//! - a token limited to workspaces (`workspace:NAME` among its scopes) calls only the methods
//!   of [`workspace_aware`], each of which shows and changes only what belongs to its
//!   workspaces ([`crate::workspace_view`]); it never holds `admin`.

use std::fmt;

/// One permission a token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Definitions, figures, profiles, Explain, members, status.
    Read,
    /// Creating, editing and deleting definitions, outputs and connections.
    Write,
    /// Membership deltas and output deliveries as streams.
    Subscribe,
    /// The clock, replays, the audit log; and every other scope.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Subscribe, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Subscribe => "subscribe",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| format!("'{text}' is not a scope (read, write, subscribe or admin)"))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The scopes a token was given, as listed (what it holds follows from [`Scopes::allows`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: a token of the configuration given no scopes (the operator's own).
    pub fn all() -> Scopes {
        Scopes::of(&[Scope::Admin])
    }

    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(scopes.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// A list such as `read,subscribe` (commas, `+` or spaces between); empty is an error.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Vec::new();
        for word in text
            .split(|c: char| c == ',' || c == '+' || c.is_whitespace())
            .filter(|w| !w.is_empty())
        {
            scopes.push(Scope::parse(word)?);
        }
        if scopes.is_empty() {
            return Err("no scope listed (read, write, subscribe or admin)".into());
        }
        Ok(Scopes::of(&scopes))
    }

    fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether a token with these scopes may do what `needed` covers.
    pub fn allows(self, needed: Scope) -> bool {
        self.has(Scope::Admin)
            || self.has(needed)
            || (needed == Scope::Read && self.has(Scope::Write))
    }

    pub fn listed(self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.listed().iter().map(|s| s.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// The word that limits a token to a workspace: `workspace:app-a`.
pub const WORKSPACE_PREFIX: &str = "workspace:";

/// A token's scopes and the workspaces it is limited to, from a list such as
/// `read,subscribe,workspace:app-b` (empty workspaces: every one). A limited token cannot
/// hold `admin`, which is every workspace's.
pub fn parse_grant(text: &str) -> Result<(Scopes, Vec<String>), String> {
    let mut scope_words = Vec::new();
    let mut workspaces = Vec::new();
    for word in text
        .split(|c: char| c == ',' || c == '+' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        match word.strip_prefix(WORKSPACE_PREFIX) {
            Some(name) => {
                audience_state::inputs::check_scope_name("workspace", name)?;
                if !workspaces.iter().any(|w| w == name) {
                    workspaces.push(name.to_string());
                }
            }
            None => scope_words.push(word),
        }
    }
    let scopes = Scopes::parse(&scope_words.join(","))?;
    if !workspaces.is_empty() && scopes.has(Scope::Admin) {
        return Err(
            "admin holds every workspace: a token limited to workspaces cannot hold it".into(),
        );
    }
    workspaces.sort();
    Ok((scopes, workspaces))
}

/// Whether a token limited to workspaces may call the method at `path`: the methods that
/// check what they show or change against the token's workspaces. Every other one reads or
/// changes what all workspaces share (outputs, tiers, calculated attributes, the engine).
pub fn workspace_aware(path: &str) -> bool {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    matches!(
        (service, method),
        (
            "audience.v1.AudienceService",
            "CreateAudience"
                | "GetAudience"
                | "ListAudiences"
                | "UpdateAudience"
                | "DeleteAudience"
                | "ActivateAudience"
                | "SaveAsDraft"
                | "CloneAudience"
                | "CreateAbTest"
                | "DeleteAbTest"
                | "ListInputs"
                | "EstimateAudience"
                | "PreviewUpdate"
        ) | ("audience.v1.ProfileService", "GetProfile" | "Explain")
            | ("audience.v1.DownloadService", _)
            | (
                "audience.v1.MembershipService",
                "Subscribe" | "ListMembers" | "GetMembershipHistory" | "GetAudienceStats"
            )
    ) || service.starts_with("grpc.reflection.")
}

/// The refusal of a method a token limited to workspaces may not call.
pub fn workspace_refusal(token: &str, path: &str, workspaces: &[String]) -> String {
    format!(
        "token '{token}' is limited to workspace {}: {} reads or changes what every workspace shares",
        workspaces.join(", "),
        path.trim_start_matches('/')
    )
}

/// Whether `path` is a health probe's: answered without any token.
pub fn is_probe(path: &str) -> bool {
    path.trim_start_matches('/').starts_with("grpc.health.")
}

/// What a call of the gRPC method at `path` (`/package.Service/Method`) needs: `None` for
/// health (anyone) and reflection (any valid token).
pub fn required_scope(path: &str) -> Option<Scope> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    if service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.") {
        return None;
    }
    use Scope::*;
    let scope = match (service, method) {
        (
            "audience.v1.AudienceService",
            "GetAudience"
            | "ListAudiences"
            | "ListEventTiers"
            | "ListCalculatedAttributes"
            | "EstimateAudience"
            | "PreviewUpdate"
            | "ListInputs",
        ) => Read,
        (
            "audience.v1.AudienceService",
            "CreateAudience"
            | "UpdateAudience"
            | "DeleteAudience"
            | "ActivateAudience"
            | "SaveAsDraft"
            | "CloneAudience"
            | "CreateAbTest"
            | "DeleteAbTest"
            | "SetEventTier"
            | "PutCalculatedAttribute"
            | "DeleteCalculatedAttribute",
        ) => Write,
        ("audience.v1.MembershipService", "Subscribe") => Subscribe,
        (
            "audience.v1.MembershipService",
            "ListConnectors" | "GetAudienceStats" | "GetMembershipHistory" | "ListMembers",
        ) => Read,
        ("audience.v1.ProfileService", "GetProfile" | "Explain") => Read,
        (
            "audience.v1.AdminService",
            "GetClock" | "GetEngineStatus" | "GetClusterStatus" | "GetReplay",
        ) => Read,
        (
            "audience.v1.AdminService",
            "AdvanceClock" | "ReplayFromLog" | "ListAuditLog" | "CreateToken" | "ListTokens"
            | "RevokeToken",
        ) => Admin,
        (
            "audience.v1.OutputService",
            "GetOutput" | "ListOutputs" | "GetConnection" | "ListConnections" | "ListFaults",
        ) => Read,
        (
            "audience.v1.OutputService",
            "CreateOutput" | "UpdateOutput" | "DeleteOutput" | "CreateConnection"
            | "UpdateConnection" | "DeleteConnection" | "BulkConnect" | "Resume",
        ) => Write,
        ("audience.v1.OutputService", "Receive") => Subscribe,
        // A download holds identities, as GetProfile shows them.
        (
            "audience.v1.DownloadService",
            "StartDownload" | "GetDownload" | "ListDownloads" | "FetchDownload",
        ) => Read,
        _ => Admin,
    };
    Some(scope)
}

/// The refusal of a call outside the token's scopes: names the token, the method, the scope
/// it needs and those the token has.
pub fn refusal(token: &str, path: &str, needed: Scope, held: Scopes) -> String {
    format!(
        "token '{token}' lacks the scope '{needed}' that {} needs (it has: {held})",
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_grant_lists_scopes_and_workspaces_and_a_limited_one_holds_no_admin() {
        let (scopes, workspaces) =
            parse_grant("read,subscribe,workspace:app-b,workspace:app-a").unwrap();
        assert_eq!(scopes.to_string(), "read,subscribe");
        assert_eq!(workspaces, vec!["app-a".to_string(), "app-b".to_string()]);
        assert!(parse_grant("read").unwrap().1.is_empty());
        assert!(parse_grant("admin,workspace:app-a")
            .unwrap_err()
            .contains("admin holds every workspace"));
        assert!(parse_grant("read,workspace:a b").is_err());
        assert!(parse_grant("workspace:app-a")
            .unwrap_err()
            .contains("no scope"));
        assert!(workspace_aware("/audience.v1.ProfileService/GetProfile"));
        assert!(!workspace_aware("/audience.v1.OutputService/ListOutputs"));
        assert!(workspace_aware(
            "/audience.v1.MembershipService/ListMembers"
        ));
        assert!(!workspace_aware(
            "/audience.v1.MembershipService/ListConnectors"
        ));
    }

    #[test]
    fn scopes_parse_in_any_separator_and_refuse_unknown_words() {
        let s = Scopes::parse("read+subscribe").unwrap();
        assert_eq!(s, Scopes::parse(" Read, SUBSCRIBE ").unwrap());
        assert_eq!(s.to_string(), "read,subscribe");
        assert!(Scopes::parse("").unwrap_err().contains("no scope"));
        let e = Scopes::parse("read,wirte").unwrap_err();
        assert!(e.contains("'wirte'"), "{e}");
    }

    #[test]
    fn admin_holds_everything_write_holds_read_and_subscribe_stands_alone() {
        let admin = Scopes::all();
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        let write = Scopes::of(&[Scope::Write]);
        assert!(write.allows(Scope::Read) && write.allows(Scope::Write));
        assert!(!write.allows(Scope::Subscribe) && !write.allows(Scope::Admin));
        let read = Scopes::of(&[Scope::Read]);
        assert!(read.allows(Scope::Read) && !read.allows(Scope::Write));
        let subscribe = Scopes::of(&[Scope::Subscribe]);
        assert!(subscribe.allows(Scope::Subscribe) && !subscribe.allows(Scope::Read));
    }

    #[test]
    fn every_method_of_the_api_is_classified_and_unknown_ones_need_admin() {
        let set = prost_types::FileDescriptorSet::decode(audience_proto::v1::FILE_DESCRIPTOR_SET)
            .unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    methods += 1;
                    // Classified on purpose: admin only where the table says so.
                    let scope = required_scope(&path).unwrap();
                    let admin_by_design = [
                        "AdvanceClock",
                        "ReplayFromLog",
                        "ListAuditLog",
                        "CreateToken",
                        "ListTokens",
                        "RevokeToken",
                    ];
                    assert!(
                        scope != Scope::Admin || admin_by_design.contains(&method.name()),
                        "{path} is not in the table of required_scope"
                    );
                }
            }
        }
        assert!(methods >= 40, "only {methods} methods found");
        assert_eq!(
            required_scope("/audience.v1.AudienceService/Unknown"),
            Some(Scope::Admin)
        );
        assert_eq!(required_scope("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_scope("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn the_refusal_names_the_token_the_method_and_the_scope() {
        let e = refusal(
            "ci",
            "/audience.v1.AudienceService/CreateAudience",
            Scope::Write,
            Scopes::of(&[Scope::Read]),
        );
        assert!(
            e.contains("'ci'")
                && e.contains("'write'")
                && e.contains("AudienceService/CreateAudience")
                && e.contains("it has: read"),
            "{e}"
        );
    }
}
