//! Outputs: where audiences are forwarded. An output configuration names a kind of output
//! (webhook, Kafka topic...), its settings and secrets, and the identity types it accepts; a
//! connection links an audience to an output configuration, with its status and the user
//! attributes it shares.
//!
//! Pure: validation, the redaction of secrets, what one delta becomes for one output (the
//! identities it accepts, the attributes the connection shares), and the retry schedule.
//! Sending is the actors' business.
//!
//! Invariants:
//! - secrets (`secrets` of a configuration) are stored, used by the output, and never returned
//!   by the API nor logged: [`OutputConfig::redacted`] is what leaves the engine;
//! - a connection delivers at least once, in order per (audience, MPID), and every item
//!   carries the id and version that let a receiver drop duplicates and stale items.

use crate::criteria::DefinitionError;
use crate::model::{AudienceId, Delta, DeltaKind, Mpid, TimestampMs};
use crate::profile::ProfileState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type OutputId = u64;
pub type ConnectionId = u64;

/// The kinds of output this engine implements.
pub const OUTPUT_KINDS: &[&str] = &["webhook", "kafka", "grpc"];

/// An output configuration as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputConfig {
    pub id: OutputId,
    pub name: String,
    /// `webhook` or `kafka`.
    pub kind: String,
    /// Kind-specific settings (webhook: url, batch_size, linger_ms, timeout_ms, max_attempts;
    /// kafka: bootstrap_servers, topic; grpc: none, subscribers attach).
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Credentials and headers that must never leave the engine (webhook: headers such as
    /// Authorization; kafka: sasl.password...).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Identity types the output accepts (email, customer_id, ios_advertising_id...).
    pub accepted_identities: Vec<String>,
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    #[serde(default)]
    pub updated_at_ms: TimestampMs,
}

/// What deleting an audience does downstream, per output (`settings.on_audience_delete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAudienceDelete {
    /// `notify` (the default): a message of type `audience_deleted` naming the audience
    /// (webhook: a POST; kafka: a record; grpc: a batch to an attached receiver).
    Notify,
    /// `delete` (webhook only: the receiver keeps the audience as a resource): an HTTP DELETE
    /// of it, to the url with `audience_id` and `connection_id` in the query and the notice
    /// as the body. A Kafka topic or a gRPC receiver holds no audience object to delete.
    Delete,
    /// `leave`: nothing is sent; the downstream copy stays as it is.
    Leave,
}

/// The values of `settings.on_audience_delete`.
pub const ON_AUDIENCE_DELETE: &[&str] = &["notify", "delete", "leave"];

/// What the API shows in place of a secret's value.
pub const REDACTED: &str = "********";

impl OutputConfig {
    /// The configuration with every secret's value, and every query value of a webhook url
    /// (an API key often travels there), replaced by [`REDACTED`].
    pub fn redacted(&self) -> OutputConfig {
        let mut settings = self.settings.clone();
        if let Some(url) = self.setting_str("url") {
            settings.insert("url".into(), redact_url(url).into());
        }
        OutputConfig {
            secrets: self
                .secrets
                .keys()
                .map(|k| (k.clone(), REDACTED.to_string()))
                .collect(),
            settings,
            ..self.clone()
        }
    }

    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.name.trim().is_empty() {
            return Err(DefinitionError::new("name", "must not be empty"));
        }
        if !OUTPUT_KINDS.contains(&self.kind.as_str()) {
            return Err(DefinitionError::new(
                "kind",
                format!(
                    "unknown output kind \"{}\" (one of: {})",
                    self.kind,
                    OUTPUT_KINDS.join(", ")
                ),
            ));
        }
        if self.accepted_identities.is_empty() {
            return Err(DefinitionError::new(
                "accepted_identities",
                "an output accepts at least one identity type",
            ));
        }
        let text = |key: &str| self.settings.get(key).and_then(|v| v.as_str());
        match self.kind.as_str() {
            "webhook" => {
                let url = text("url")
                    .ok_or_else(|| DefinitionError::new("settings.url", "a webhook needs a url"))?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(DefinitionError::new(
                        "settings.url",
                        "the url is not an http:// or https:// URL",
                    ));
                }
                let authority = url.split("://").nth(1).unwrap_or_default();
                let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
                if authority.contains('@') {
                    // A URL is shown and logged; a credential in it would be too (REVIEW S6).
                    return Err(DefinitionError::new(
                        "settings.url",
                        "the url holds credentials (user:password@): put them in the output's \
                         secrets, which are sent as request headers and never shown",
                    ));
                }
            }
            // Subscribers attach to the connection: nothing to configure.
            "grpc" => {}
            _ => {
                for key in ["bootstrap_servers", "topic"] {
                    if text(key).is_none_or(|v| v.trim().is_empty()) {
                        return Err(DefinitionError::new(
                            format!("settings.{key}"),
                            format!("a kafka output needs {key}"),
                        ));
                    }
                }
            }
        }
        if let Some(v) = self.settings.get("on_audience_delete") {
            if !v.as_str().is_some_and(|v| ON_AUDIENCE_DELETE.contains(&v)) {
                return Err(DefinitionError::new(
                    "settings.on_audience_delete",
                    format!("{v} is not one of: {}", ON_AUDIENCE_DELETE.join(", ")),
                ));
            }
            if v == "delete" && self.kind != "webhook" {
                return Err(DefinitionError::new(
                    "settings.on_audience_delete",
                    format!(
                        "a {} output keeps no audience downstream to delete (a webhook does: \
                         it is sent an HTTP DELETE): choose notify or leave",
                        self.kind
                    ),
                ));
            }
        }
        for (key, max) in [
            ("batch_size", 10_000),
            ("linger_ms", 600_000),
            ("timeout_ms", 600_000),
            ("max_attempts", 100),
        ] {
            if let Some(v) = self.settings.get(key) {
                if v.as_u64().is_none_or(|n| n == 0 || n > max) {
                    return Err(DefinitionError::new(
                        format!("settings.{key}"),
                        format!("{v} is not a whole number from 1 to {max}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What deleting a connected audience does downstream ([`OnAudienceDelete`]).
    pub fn on_audience_delete(&self) -> OnAudienceDelete {
        match self.setting_str("on_audience_delete") {
            Some("leave") => OnAudienceDelete::Leave,
            Some("delete") => OnAudienceDelete::Delete,
            _ => OnAudienceDelete::Notify,
        }
    }

    pub fn setting_u64(&self, key: &str, default: u64) -> u64 {
        self.settings
            .get(key)
            .and_then(|v| v.as_u64())
            .unwrap_or(default)
    }

    pub fn setting_str(&self, key: &str) -> Option<&str> {
        self.settings.get(key).and_then(|v| v.as_str())
    }

    /// Secrets sent back as the API shows them ([`REDACTED`]) take their value from `stored`,
    /// the output as it stands; unless the destination changes: a stored credential never
    /// follows an output to another host.
    /// A url sent back as the API shows it (query values redacted) takes the stored one.
    pub fn keep_redacted_secrets(&mut self, stored: &OutputConfig) -> Result<(), DefinitionError> {
        if let (Some(sent), Some(real)) = (self.setting_str("url"), stored.setting_str("url")) {
            if sent != real && sent == redact_url(real) {
                self.settings.insert("url".into(), real.into());
            }
        }
        if self
            .setting_str("url")
            .is_some_and(|u| u.contains(REDACTED))
        {
            return Err(DefinitionError::new(
                "settings.url",
                format!(
                    "{REDACTED} stands for a stored query value only in the url as shown: \
                     enter the values again"
                ),
            ));
        }
        let destination = |o: &OutputConfig| {
            (
                o.kind.clone(),
                o.setting_str("url").map(str::to_string),
                o.setting_str("bootstrap_servers").map(str::to_string),
            )
        };
        let moved = destination(self) != destination(stored);
        for (key, value) in self.secrets.iter_mut() {
            if value != REDACTED {
                continue;
            }
            if moved {
                return Err(DefinitionError::new(
                    format!("secrets.{key}"),
                    "the destination changed: enter the secret again",
                ));
            }
            match stored.secrets.get(key) {
                Some(real) => value.clone_from(real),
                None => {
                    return Err(DefinitionError::new(
                        format!("secrets.{key}"),
                        "no stored value to keep",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// A url as it may be shown and logged: each query value (or a bare query word) replaced by
/// [`REDACTED`], keys kept (REVIEW S6). The rest is kept as it is.
pub fn redact_url(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else {
        return url.to_string();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, "")) => format!("{key}="),
            Some((key, _)) => format!("{key}={REDACTED}"),
            None if pair.is_empty() => String::new(),
            None => REDACTED.to_string(),
        })
        .collect();
    let mut shown = format!("{base}?{}", query.join("&"));
    if let Some(fragment) = fragment {
        shown.push('#');
        shown.push_str(fragment);
    }
    shown
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Sending,
    Inactive,
}

/// An audience connected to an output configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub id: ConnectionId,
    pub audience_id: AudienceId,
    pub output_id: OutputId,
    pub status: ConnectionStatus,
    /// Connection settings the output reads (e.g. a list id downstream).
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// User attributes sent with the identities (none by default).
    #[serde(default)]
    pub shared_attributes: Vec<String>,
    #[serde(default)]
    pub created_at_ms: TimestampMs,
    #[serde(default)]
    pub updated_at_ms: TimestampMs,
    /// The A/B test variation it sends (its members only, named after it downstream); empty:
    /// the whole audience. Kept for the connection's life; the test's deletion deletes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variation: String,
}

/// Why a connection stopped sending: the last failure after its retries ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub connection_id: ConnectionId,
    /// HTTP status or other protocol code, when the output answered.
    pub status: Option<u32>,
    /// The start of a 4xx answer's body (see [`fault_excerpt`]); empty for any other.
    pub body_excerpt: String,
    pub message: String,
    pub at_ms: TimestampMs,
    pub attempts: u32,
}

pub const BODY_EXCERPT_CHARS: usize = 200;

/// The most of an error answer's body a delivery reads: a hostile receiver may stream
/// gigabytes (REVIEW S4).
pub const MAX_ERROR_BODY_BYTES: usize = 4096;

/// What a fault keeps of an answer's body: for a 4xx (the receiver says what it refused) its
/// first [`BODY_EXCERPT_CHARS`] printable characters; for any other status nothing, since a
/// 5xx or a redirect may be an internal page read back through the fault (REVIEW S2).
pub fn fault_excerpt(status: u16, body: &str) -> String {
    if !(400..500).contains(&status) {
        return String::new();
    }
    body.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(BODY_EXCERPT_CHARS)
        .collect()
}

/// One membership change as an output receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryItem {
    /// `add` or `drop`.
    pub action: String,
    pub mpid: Mpid,
    /// Accepted identity types present on the profile to their values.
    pub identities: BTreeMap<String, Vec<String>>,
    /// The shared user attributes the profile has, by the name the connection gave.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// `<audience>:<mpid>:<version>`: the same change always has the same key.
    pub idempotency_key: String,
    /// Per (audience, MPID); a receiver keeps the highest.
    pub version: u64,
    pub event_time_ms: TimestampMs,
    /// The A/B test variation of the member, for a connection of a variation.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub variation: String,
}

/// What one membership change of `profile` becomes for an output accepting `accepted`
/// identity types and a connection sharing `shared` attributes; `None` for an add whose
/// profile has no accepted identity (it is not sent, and counted).
pub fn delivery_item(
    change: &Delta,
    profile: Option<&ProfileState>,
    accepted: &[String],
    shared: &[String],
) -> Option<DeliveryItem> {
    let Delta {
        audience_id,
        mpid,
        kind,
        event_time_ms,
        version,
        ..
    } = *change;
    let identities: BTreeMap<String, Vec<String>> = match profile {
        Some(profile) => accepted_identities(profile, accepted),
        None => BTreeMap::new(),
    };
    // An add without an accepted identity is useless downstream; a drop is always sent (the
    // identity may have gone since the add), with whatever accepted identities remain.
    if identities.is_empty() && kind == DeltaKind::Added {
        return None;
    }
    let attributes = profile
        .map(|profile| {
            shared
                .iter()
                .filter_map(|name| {
                    let a = profile.attributes.get(&name.to_lowercase())?;
                    Some((name.clone(), attr_json(&a.value)))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(DeliveryItem {
        action: match kind {
            DeltaKind::Added => "add",
            DeltaKind::Dropped => "drop",
        }
        .to_string(),
        mpid,
        identities,
        attributes,
        idempotency_key: format!("{audience_id}:{mpid}:{version}"),
        version,
        event_time_ms,
        variation: String::new(),
    })
}

fn accepted_identities(
    profile: &ProfileState,
    accepted: &[String],
) -> BTreeMap<String, Vec<String>> {
    accepted
        .iter()
        .filter_map(|t| {
            let values = profile.identities.get(&t.to_lowercase())?;
            (!values.is_empty()).then(|| (t.to_lowercase(), values.clone()))
        })
        .collect()
}

fn attr_json(v: &crate::model::AttrValue) -> serde_json::Value {
    use crate::model::AttrValue as A;
    match v {
        A::String(s) => s.clone().into(),
        A::Number(n) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
        }
        A::Bool(b) => (*b).into(),
        A::Date(ms) => (*ms).into(),
        A::List(items) => items.clone().into(),
        A::Null => serde_json::Value::Null,
    }
}

/// The wait before retry `attempt` (1 for the first retry): exponential from `base_ms`,
/// capped at `max_ms`, with "equal jitter" (half fixed, half random from `jitter` in [0, 1))
/// so that many connections failing together do not retry together. A `Retry-After` the
/// output asked for wins when it is longer.
pub fn backoff_ms(
    attempt: u32,
    base_ms: u64,
    max_ms: u64,
    jitter: f64,
    retry_after_ms: Option<u64>,
) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(max_ms);
    let half = capped / 2;
    let wait = half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64;
    match retry_after_ms {
        Some(asked) => wait.max(asked),
        None => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AttrValue;
    use crate::profile::NamedAttr;

    #[test]
    fn a_fault_keeps_a_short_printable_excerpt_of_a_4xx_only() {
        let page = format!("<h1>internal</h1>\n{}", "x".repeat(5000));
        assert_eq!(fault_excerpt(500, &page), "");
        assert_eq!(fault_excerpt(302, &page), "");
        let kept = fault_excerpt(400, &page);
        assert_eq!(kept.chars().count(), BODY_EXCERPT_CHARS);
        assert!(kept.starts_with("<h1>internal</h1> x"), "{kept}");
    }

    #[test]
    fn a_webhook_url_with_credentials_is_refused() {
        let mut config = OutputConfig {
            id: 0,
            name: "crm".into(),
            kind: "webhook".into(),
            settings: BTreeMap::from([("url".into(), "https://user:pw@x.example/hook".into())]),
            secrets: BTreeMap::new(),
            accepted_identities: vec!["email".into()],
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("secrets"), "{err}");
        assert!(
            !err.to_string().contains("pw"),
            "the error never repeats it: {err}"
        );
        config
            .settings
            .insert("url".into(), "https://x.example/hook?at=a@b".into());
        assert!(
            config.validate().is_ok(),
            "an @ past the host is no credential"
        );
    }

    #[test]
    fn secrets_never_leave_redaction() {
        let config = OutputConfig {
            id: 1,
            name: "crm".into(),
            kind: "webhook".into(),
            settings: BTreeMap::from([("url".into(), "https://x.example/hook".into())]),
            secrets: BTreeMap::from([("authorization".into(), "Bearer s3cr3t".into())]),
            accepted_identities: vec!["email".into()],
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        config.validate().unwrap();
        let shown = serde_json::to_string(&config.redacted()).unwrap();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("authorization"));
    }

    #[test]
    fn query_values_are_shown_redacted_and_a_round_trip_keeps_them() {
        assert_eq!(
            redact_url("https://x.example/hook?api_key=k3y&region=eu&flag&empty=#top"),
            "https://x.example/hook?api_key=********&region=********&********&empty=#top"
        );
        assert_eq!(
            redact_url("https://x.example/hook"),
            "https://x.example/hook"
        );
        let stored = OutputConfig {
            id: 1,
            name: "crm".into(),
            kind: "webhook".into(),
            settings: BTreeMap::from([("url".into(), "https://x.example/hook?api_key=k3y".into())]),
            secrets: BTreeMap::new(),
            accepted_identities: vec!["email".into()],
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let shown = stored.redacted();
        assert!(!serde_json::to_string(&shown).unwrap().contains("k3y"));
        // Sent back as shown (a rename, say): the stored url stays.
        let mut renamed = OutputConfig {
            name: "crm eu".into(),
            ..shown.clone()
        };
        renamed.keep_redacted_secrets(&stored).unwrap();
        assert_eq!(renamed.setting_str("url"), stored.setting_str("url"));
        // The placeholder elsewhere is refused, never stored as a value.
        let mut moved = shown;
        moved.settings.insert(
            "url".into(),
            "https://y.example/hook?api_key=********".into(),
        );
        let e = moved.keep_redacted_secrets(&stored).unwrap_err();
        assert!(e.to_string().contains("settings.url"), "{e}");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let mut config = OutputConfig {
            id: 1,
            name: "x".into(),
            kind: "fax".into(),
            settings: BTreeMap::new(),
            secrets: BTreeMap::new(),
            accepted_identities: vec!["email".into()],
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert_eq!(config.validate().unwrap_err().field, "kind");
        config.kind = "webhook".into();
        assert_eq!(config.validate().unwrap_err().field, "settings.url");
        config.settings.insert("url".into(), "ftp://x".into());
        assert_eq!(config.validate().unwrap_err().field, "settings.url");
        config
            .settings
            .insert("url".into(), "http://127.0.0.1:1/x".into());
        config.settings.insert("batch_size".into(), 0.into());
        assert_eq!(config.validate().unwrap_err().field, "settings.batch_size");
        config.settings.remove("batch_size");
        assert_eq!(config.on_audience_delete(), OnAudienceDelete::Notify);
        config
            .settings
            .insert("on_audience_delete".into(), "forget".into());
        let refused = config.validate().unwrap_err();
        assert_eq!(refused.field, "settings.on_audience_delete");
        assert!(
            refused.reason.contains("notify, delete, leave"),
            "{refused:?}"
        );
        config
            .settings
            .insert("on_audience_delete".into(), "leave".into());
        config.validate().unwrap();
        assert_eq!(config.on_audience_delete(), OnAudienceDelete::Leave);
        config
            .settings
            .insert("on_audience_delete".into(), "delete".into());
        config.validate().unwrap();
        assert_eq!(config.on_audience_delete(), OnAudienceDelete::Delete);
        config.kind = "kafka".into();
        config
            .settings
            .insert("bootstrap_servers".into(), "127.0.0.1:9092".into());
        config.settings.insert("topic".into(), "members".into());
        let refused = config.validate().unwrap_err();
        assert_eq!(refused.field, "settings.on_audience_delete");
        assert!(
            refused.reason.contains("a kafka output keeps no audience"),
            "{refused:?}"
        );
        config.settings.remove("on_audience_delete");
        config.validate().unwrap();
        config.settings.remove("topic");
        assert_eq!(config.validate().unwrap_err().field, "settings.topic");
        config.settings.remove("bootstrap_servers");
        assert_eq!(
            config.validate().unwrap_err().field,
            "settings.bootstrap_servers"
        );
    }

    #[test]
    fn only_accepted_identities_and_shared_attributes_travel() {
        let mut profile = ProfileState::new(7);
        profile
            .identities
            .insert("email".into(), vec!["a@example.com".into()]);
        profile.identities.insert(
            "ios_advertising_id".into(),
            vec!["IDFA-1".into(), "IDFA-2".into()],
        );
        profile.attributes.insert(
            "tier".into(),
            NamedAttr {
                name: "Tier".into(),
                value: AttrValue::String("gold".into()),
            },
        );
        let change = |kind, version| Delta {
            audience_id: 3,
            mpid: 7,
            kind,
            event_time_ms: 10,
            processing_time_ms: 10,
            version,
        };
        let item = delivery_item(
            &change(DeltaKind::Added, 2),
            Some(&profile),
            &["ios_advertising_id".into(), "android_advertising_id".into()],
            &["Tier".into(), "age".into()],
        )
        .unwrap();
        assert_eq!(item.identities.len(), 1);
        assert_eq!(item.identities["ios_advertising_id"].len(), 2);
        assert_eq!(item.attributes["Tier"], serde_json::json!("gold"));
        assert_eq!(item.idempotency_key, "3:7:2");
        assert!(delivery_item(
            &change(DeltaKind::Added, 3),
            Some(&profile),
            &["customer_id".into()],
            &[]
        )
        .is_none());
        let drop = delivery_item(
            &change(DeltaKind::Dropped, 4),
            Some(&profile),
            &["customer_id".into()],
            &[],
        )
        .expect("drops are always sent");
        assert!(drop.identities.is_empty());
    }

    #[test]
    fn backoff_grows_is_capped_jittered_and_honours_retry_after() {
        assert_eq!(backoff_ms(1, 100, 10_000, 0.0, None), 50);
        assert_eq!(backoff_ms(1, 100, 10_000, 0.999, None), 99);
        assert_eq!(backoff_ms(4, 100, 10_000, 0.0, None), 400);
        assert_eq!(backoff_ms(30, 100, 10_000, 0.0, None), 5_000);
        assert_eq!(backoff_ms(1, 100, 10_000, 0.0, Some(2_000)), 2_000);
    }
}
