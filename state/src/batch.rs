//! Decoding of what producers write to the events and identities topics into [`Inbound`].
//!
//! Two wire formats are accepted on either topic:
//! - mParticle's server-to-server JSON batch, as the official `mparticle` Python SDK and
//!   `@mparticle/event-models` serialise it, and a JSON identity message shaped like an IDSync
//!   modify request (an object with an `identity_changes` field);
//! - the protobuf [`pb::Envelope`] of `proto/audience/v1/envelope.proto`.
//!
//! The Kafka `content-type` header picks the format; without one the first byte tells.
//!
//! Invariants:
//! - [`decode`] is pure and total: any byte string yields an [`Inbound`] or a [`DecodeError`],
//!   never a panic, and the size limit is checked before a single byte is parsed.
//! - Every error names the field path and the bad value (quoted, at most `EXCERPT_CHARS`
//!   characters, so a hostile payload cannot blow up a log line or a dead-letter header), and
//!   maps to one of five bounded [`DecodeError::reason_code`] labels.
//! - Forward compatible: unknown fields are ignored everywhere, and JSON `null` means absent.
//!   The one refusal is an event type this version does not know, because silently dropping
//!   an event would make audiences wrong without anyone noticing.
//! - Every decoded message has an MPID other than 0: proto3 cannot tell 0 from "unset", and
//!   mParticle never assigns 0, so JSON follows the same rule.
//! - Identity types are lowercased; attribute names keep their case (the evaluator lowercases
//!   when it matches). Empty strings are read as absent for identities, device fields and
//!   optional names, as proto3 defaults are.
//!
//! JSON is parsed into a [`serde_json::Value`] first (serde_json's recursion limit of 128 stays
//! on, so deep nesting is an error, not a stack overflow) and then walked with explicit field
//! paths: that is what lets every error say where it is, and lets the numbers mParticle SDKs
//! send as strings be read leniently. The tree costs one allocation per node of a payload
//! already bounded by `max_bytes`.

use crate::model::{
    format_number, AttrValue, Attribution, Batch, ConsentState, DeviceInfo, Event, EventKind,
    GdprConsent, GeoLocation, IdentityChange, IdentityUpdate, Inbound, Mpid, Product, Promotion,
    TimestampMs, DEVICE_IDENTITY_TYPES, PRODUCT_ACTIONS,
};
use audience_proto::v1 as pb;
use prost::Message;
use serde_json::{Map, Number, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Largest message [`decode`] accepts unless the caller configures another limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Longest excerpt of a bad value or a key quoted in an error message.
const EXCERPT_CHARS: usize = 64;

/// Largest magnitude up to which every integer is exactly representable as an `f64`: an MPID
/// written as a float beyond it may already have been rounded to another profile's id.
const MAX_EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Most actions (product action, promotion action, impression lists) one commerce event may
/// carry: each becomes an event of its own.
const MAX_COMMERCE_ACTIONS: usize = 100;
/// Most custom attribute entries a message may duplicate into the extra events of its
/// commerce events, so that a small message cannot decode into a huge one.
const MAX_SPLIT_ATTRIBUTE_COPIES: usize = 100_000;

/// Checks a commerce event's split against the limits; `copies` counts the attribute entries
/// duplicated so far in the message.
fn check_split(kinds: usize, attributes: usize, copies: &mut usize, path: &Path<'_>) -> Result<()> {
    if kinds > MAX_COMMERCE_ACTIONS {
        return Err(invalid(
            path,
            format!("{kinds} actions and impression lists in one commerce event; at most {MAX_COMMERCE_ACTIONS}"),
        ));
    }
    *copies += attributes * kinds.saturating_sub(1);
    if *copies > MAX_SPLIT_ATTRIBUTE_COPIES {
        return Err(invalid(
            path,
            format!("commerce events with many actions and custom attributes would copy more than {MAX_SPLIT_ATTRIBUTE_COPIES} attributes; send fewer impression lists per event"),
        ));
    }
    Ok(())
}

/// Accepted event types that criteria read no further than their type.
const OTHER_EVENT_TYPES: &[&str] = &[
    "push_registration",
    "push_message",
    "network_performance",
    "breadcrumb",
    "profile",
    "media",
];

/// Why a message could not be decoded. Every variant means the message is bad, not the
/// engine: retrying cannot help, the caller dead-letters it and counts [`Self::reason_code`].
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("invalid json at line {line} column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("expected a json object, found {found}")]
    NotAnObject { found: String },
    #[error("invalid protobuf envelope: {0}")]
    InvalidProtobuf(String),
    #[error("envelope: missing payload")]
    EmptyEnvelope,
    /// Zero bytes, or only whitespace, with no content type that says protobuf.
    #[error("empty message: neither a JSON batch object nor a protobuf envelope")]
    Empty,
    /// Sniffed as neither format: `json` says what the JSON reading found ("found an array",
    /// or the parse error), `protobuf` why it is no envelope (empty when the payload is valid
    /// JSON, whose reading alone names the problem).
    #[error("not a JSON batch object ({json}) nor a protobuf envelope{protobuf}")]
    NotABatch { json: String, protobuf: String },
    #[error("mpid: missing")]
    MissingMpid,
    #[error("{path}: unknown event type {event_type:?}")]
    UnknownEventType { path: String, event_type: String },
    /// A protobuf event without a kind: absent, or a kind added after this version.
    #[error("{path}.kind: missing or unknown event kind")]
    MissingEventKind { path: String },
    #[error("{path}: {reason}")]
    InvalidField { path: String, reason: String },
}

impl DecodeError {
    /// A short, bounded label for metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::InvalidJson { .. }
            | DecodeError::NotAnObject { .. }
            | DecodeError::InvalidProtobuf(_)
            | DecodeError::EmptyEnvelope
            | DecodeError::Empty
            | DecodeError::NotABatch { .. } => "malformed",
            DecodeError::MissingMpid => "missing_mpid",
            DecodeError::UnknownEventType { .. } | DecodeError::MissingEventKind { .. } => {
                "unknown_event_type"
            }
            DecodeError::InvalidField { .. } => "invalid_field",
        }
    }
}

type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Decodes one Kafka message. `content_type` is the `content-type` header, if any.
pub fn decode(payload: &[u8], content_type: Option<&str>, max_bytes: usize) -> Result<Inbound> {
    if payload.len() > max_bytes {
        return Err(DecodeError::Oversized {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    match Format::detect(payload, content_type) {
        Format::Json => decode_json(payload),
        Format::Protobuf => decode_protobuf(payload),
        Format::ProtobufOrOther => {
            decode_protobuf(payload).map_err(|protobuf_error| match protobuf_error {
                DecodeError::InvalidProtobuf(_) | DecodeError::EmptyEnvelope => {
                    neither_format(payload, &protobuf_error)
                }
                // A well-formed envelope with bad content: its own error names the field.
                other => other,
            })
        }
        Format::JsonOrProtobuf => match decode_json(payload) {
            Err(json_error @ DecodeError::InvalidJson { .. }) => {
                match pb::Envelope::decode(payload) {
                    Ok(envelope) => from_envelope(envelope),
                    Err(_) => Err(json_error),
                }
            }
            decoded => decoded,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    /// The content type says protobuf.
    Protobuf,
    /// No content type, and not JSON text starting with `{`: a protobuf envelope, or a
    /// message that is neither (a JSON array, `null`, plain text, nothing), whose error then
    /// says what it is rather than what a protobuf decoder tripped on.
    ProtobufOrOther,
    /// JSON whitespace then `{`. Usually JSON, but an envelope holding a batch starts with
    /// 0x0a (`\n`, the tag of field 1) then the batch length, which is `{` for 123 bytes: so
    /// protobuf is tried when the JSON does not parse.
    JsonOrProtobuf,
}

impl Format {
    fn detect(payload: &[u8], content_type: Option<&str>) -> Format {
        if let Some(content_type) = content_type {
            let content_type = content_type.to_ascii_lowercase();
            if content_type.contains("protobuf") {
                return Format::Protobuf;
            }
            if content_type.contains("json") {
                return Format::Json;
            }
        }
        let body = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
        match body
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            Some(0) if body[0] == b'{' => Format::Json,
            Some(i) if body[i] == b'{' => Format::JsonOrProtobuf,
            _ => Format::ProtobufOrOther,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field paths and error helpers

/// Where a value sits in the message, built on the stack as the walk descends and only
/// rendered when an error names it.
#[derive(Debug, Clone, Copy)]
enum Path<'a> {
    Key(Option<&'a Path<'a>>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    fn top(key: &'a str) -> Path<'a> {
        Path::Key(None, key)
    }

    fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(Some(self), key)
    }

    fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Key(parent, key) => {
                if let Some(parent) = parent {
                    write!(f, "{parent}.")?;
                }
                match key.char_indices().nth(EXCERPT_CHARS) {
                    Some((end, _)) => write!(f, "{}...", &key[..end]),
                    None => f.write_str(key),
                }
            }
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

fn invalid(path: &Path<'_>, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// `s` as a quoted, escaped excerpt of at most [`EXCERPT_CHARS`] characters.
fn quote(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// `s` cut to at most [`EXCERPT_CHARS`] characters.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// A JSON value as an error message shows it: scalars as they are, containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn expected(path: &Path<'_>, what: &str, value: &Value) -> DecodeError {
    invalid(path, format!("expected {what}, found {}", describe(value)))
}

// ---------------------------------------------------------------------------------------------
// JSON value readers: lenient where mParticle SDKs are (numbers as strings, ids as numbers)

/// Numbers print as users typed them: integers exactly, floats without a trailing `.0`.
fn number_text(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        format_number(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The string form of an attribute value; `None` for null, which means absent.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(number_text(n)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

fn as_string(value: &Value, path: &Path<'_>) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(number_text(n)),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(expected(path, "a string", value)),
    }
}

fn as_f64(value: &Value, path: &Path<'_>) -> Result<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed
        .filter(|n| n.is_finite())
        .ok_or_else(|| expected(path, "a number", value))
}

fn as_i64(value: &Value, path: &Path<'_>) -> Result<i64> {
    let from_float = |f: f64| {
        // Fractions (a timestamp in fractional milliseconds) are truncated; only a value that
        // does not fit is refused.
        (f.is_finite() && f.abs() < 9.2e18).then_some(f as i64)
    };
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(from_float)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(from_float))
        }
        _ => None,
    };
    parsed.ok_or_else(|| expected(path, "a 64-bit integer", value))
}

fn as_bool(value: &Value, path: &Path<'_>) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(expected(path, "a boolean", value)),
    }
}

/// A user attribute value. Unlike elsewhere, null is kept: a null attribute exists.
fn attr_value(value: &Value, path: &Path<'_>) -> Result<AttrValue> {
    match value {
        Value::Null => Ok(AttrValue::Null),
        Value::String(s) => Ok(AttrValue::String(s.clone())),
        Value::Number(n) => n
            .as_f64()
            .filter(|n| n.is_finite())
            .map(AttrValue::Number)
            .ok_or_else(|| invalid(path, format!("number {n} out of range"))),
        Value::Bool(b) => Ok(AttrValue::Bool(*b)),
        Value::Array(items) => Ok(AttrValue::List(
            items.iter().filter_map(scalar_text).collect(),
        )),
        Value::Object(_) => Err(expected(
            path,
            "a string, number, boolean, null or list",
            value,
        )),
    }
}

/// A JSON object and where it sits. Readers treat null and absent alike.
#[derive(Debug, Clone, Copy)]
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: Option<Path<'a>>,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: Path<'a>) -> Result<Obj<'a>> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                path: Some(path),
            }),
            _ => Err(expected(&path, "an object", value)),
        }
    }

    /// The path of the object itself (the top level has none and never needs it).
    fn here(&self) -> Path<'_> {
        self.path.unwrap_or(Path::top("$"))
    }

    fn path<'s>(&'s self, key: &'s str) -> Path<'s> {
        Path::Key(self.path.as_ref(), key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn read<T>(&self, key: &str, read: fn(&Value, &Path<'_>) -> Result<T>) -> Result<Option<T>> {
        self.get(key).map(|v| read(v, &self.path(key))).transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.read(key, as_string)
    }

    /// An optional string where empty means absent.
    fn text(&self, key: &str) -> Result<Option<String>> {
        Ok(self.string(key)?.filter(|s| !s.is_empty()))
    }

    fn required_text(&self, key: &str) -> Result<String> {
        match self.string(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(invalid(
                &self.path(key),
                "expected a non-empty string, found \"\"",
            )),
            None => Err(invalid(&self.path(key), "missing")),
        }
    }

    fn i64(&self, key: &str) -> Result<Option<i64>> {
        self.read(key, as_i64)
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.read(key, as_f64)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.read(key, as_bool)
    }

    fn required_bool(&self, key: &str) -> Result<bool> {
        self.bool(key)?
            .ok_or_else(|| invalid(&self.path(key), "missing"))
    }

    fn object<'s>(&'s self, key: &'s str) -> Result<Option<Obj<'s>>> {
        self.get(key)
            .map(|v| Obj::new(v, self.path(key)))
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(expected(&self.path(key), "an array", other)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

fn decode_json(payload: &[u8]) -> Result<Inbound> {
    let body = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let value: Value = serde_json::from_slice(body).map_err(json_error)?;
    let Value::Object(map) = &value else {
        return Err(DecodeError::NotAnObject {
            found: json_kind(&value).to_string(),
        });
    };
    let top = Obj { map, path: None };
    if top.get("identity_changes").is_some() {
        identity_from_json(top).map(Inbound::Identity)
    } else {
        batch_from_json(top).map(Inbound::Batch)
    }
}

/// The error of a sniffed message that decoded as no envelope: what it is as JSON, if JSON.
fn neither_format(payload: &[u8], protobuf_error: &DecodeError) -> DecodeError {
    let body = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    if body
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return DecodeError::Empty;
    }
    let protobuf = match protobuf_error {
        DecodeError::InvalidProtobuf(reason) => format!(" ({reason})"),
        _ => " (no payload)".to_string(),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => DecodeError::NotABatch {
            json: format!("found {}", json_kind(&value)),
            protobuf: String::new(),
        },
        Err(error) => DecodeError::NotABatch {
            json: match std::str::from_utf8(body) {
                Ok(_) => json_error(error).to_string(),
                Err(utf8) => format!("not UTF-8 text: invalid byte at {}", utf8.valid_up_to()),
            },
            protobuf,
        },
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_error(error: serde_json::Error) -> DecodeError {
    let (line, column) = (error.line(), error.column());
    let full = error.to_string();
    // serde_json appends the position to its message; it has a place of its own here.
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_string();
    DecodeError::InvalidJson {
        line,
        column,
        message,
    }
}

fn mpid_from_json(top: &Obj<'_>) -> Result<Mpid> {
    let Some(value) = top.get("mpid") else {
        return Err(DecodeError::MissingMpid);
    };
    let mpid = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_EXACT_F64_INT)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match mpid {
        Some(0) => Err(DecodeError::MissingMpid),
        Some(mpid) => Ok(mpid),
        None => Err(expected(
            &top.path("mpid"),
            "a signed 64-bit integer",
            value,
        )),
    }
}

fn batch_from_json(top: Obj<'_>) -> Result<Batch> {
    let mpid = mpid_from_json(&top)?;
    let timestamp_ms = top.i64("timestamp_unixtime_ms")?;

    let mut events = Vec::new();
    let mut location = match top.object("context")? {
        Some(context) => match context.object("location")? {
            Some(position) => position_from_json(&position)?,
            None => None,
        },
        None => None,
    };
    let mut copies = 0;
    if let Some(items) = top.array("events")? {
        events.reserve(items.len());
        let path = top.path("events");
        for (i, item) in items.iter().enumerate() {
            if !item.is_null() {
                let event = Obj::new(item, path.index(i))?;
                if let Some(data) = event.object("data")? {
                    if let Some(position) = data.object("location")? {
                        if let Some(p) = position_from_json(&position)? {
                            location = Some(p);
                        }
                    }
                }
                events_from_json(event, timestamp_ms, &mut events, &mut copies)?;
            }
        }
    }

    let mut user_attributes = Vec::new();
    if let Some(attributes) = top.object("user_attributes")? {
        for (name, value) in attributes.map {
            user_attributes.push((name.clone(), attr_value(value, &attributes.path(name))?));
        }
    }

    let mut deleted_user_attributes = Vec::new();
    if let Some(items) = top.array("deleted_user_attributes")? {
        let path = top.path("deleted_user_attributes");
        for (i, item) in items.iter().enumerate() {
            if !item.is_null() {
                let name = as_string(item, &path.index(i))?;
                if !name.is_empty() {
                    deleted_user_attributes.push(name);
                }
            }
        }
    }

    let mut user_identities = Vec::new();
    if let Some(identities) = top.object("user_identities")? {
        for (identity_type, value) in identities.map {
            if value.is_null() {
                continue;
            }
            let value = as_string(value, &identities.path(identity_type))?;
            if !value.is_empty() {
                user_identities.push((identity_type.to_lowercase(), value));
            }
        }
    }

    let mut device_identities = Vec::new();
    let mut device_info = None;
    if let Some(device) = top.object("device_info")? {
        let info = DeviceInfo {
            platform: device.text("platform")?,
            os_version: device.text("os_version")?,
            device_model: device.text("device_model")?,
            device_manufacturer: device.text("device_manufacturer")?,
            network_carrier: device.text("network_carrier")?,
            brand: device.text("brand")?,
            locale_country: device.text("locale_country")?,
            locale_language: device.text("locale_language")?,
        };
        if info != DeviceInfo::default() {
            device_info = Some(info);
        }
        for &identity_type in DEVICE_IDENTITY_TYPES {
            if let Some(value) = device.text(identity_type)? {
                device_identities.push((identity_type.to_string(), value));
            }
        }
    }

    let consent = match top.object("consent_state")? {
        Some(consent) => consent_from_json(consent)?,
        None => None,
    };

    let app_version = match top.object("application_info")? {
        Some(app) => app.text("application_version")?,
        None => None,
    };

    let attribution = match top.object("attribution_info")? {
        Some(info) => {
            let a = Attribution {
                publisher: info.text("publisher")?,
                campaign: info.text("campaign")?,
                service_provider: info.text("service_provider")?,
            };
            (a != Attribution::default()).then_some(a)
        }
        None => None,
    };
    if attribution.is_some() {
        mark_attribution_events(&mut events);
    }

    Ok(Batch {
        mpid,
        timestamp_ms,
        events,
        user_attributes,
        deleted_user_attributes,
        user_identities,
        device_identities,
        device_info,
        consent,
        app_version,
        attribution,
        ip: top.text("ip")?,
        location,
    })
}

/// In a batch an attribution partner sent (it carries `attribution_info`), custom events of no
/// particular type are attribution events (install, engagement, re-engagement...).
fn mark_attribution_events(events: &mut [Event]) {
    for event in events {
        if let EventKind::Custom { custom_type, .. } = &mut event.kind {
            if custom_type.as_deref().is_none_or(|t| t == "other") {
                *custom_type = Some("attribution".to_string());
            }
        }
    }
}

/// A device position (`{"latitude": .., "longitude": ..}`); `None` unless both are present and
/// on the globe.
fn position_from_json(position: &Obj<'_>) -> Result<Option<GeoLocation>> {
    let (Some(latitude), Some(longitude)) = (position.f64("latitude")?, position.f64("longitude")?)
    else {
        return Ok(None);
    };
    Ok(valid_position(latitude, longitude))
}

/// A position on the globe; devices report sentinels such as -999 when they have none, which
/// are not worth losing the batch over: they are ignored.
fn valid_position(latitude: f64, longitude: f64) -> Option<GeoLocation> {
    ((-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude)).then_some(
        GeoLocation {
            latitude: Some(latitude),
            longitude: Some(longitude),
            ..Default::default()
        },
    )
}

fn consent_from_json(consent: Obj<'_>) -> Result<Option<ConsentState>> {
    let mut state = ConsentState::default();
    if let Some(gdpr) = consent.object("gdpr")? {
        for (purpose, value) in gdpr.map {
            if value.is_null() {
                continue;
            }
            let entry = Obj::new(value, gdpr.path(purpose))?;
            state.gdpr.insert(
                purpose.to_lowercase(),
                GdprConsent {
                    consented: entry.required_bool("consented")?,
                    timestamp_ms: entry.i64("timestamp_unixtime_ms")?,
                    document: entry.text("document")?,
                },
            );
        }
    }
    if let Some(ccpa) = consent.object("ccpa")? {
        if let Some(opt_out) = ccpa.object("data_sale_opt_out")? {
            state.ccpa_data_sale_opt_out = Some(opt_out.required_bool("consented")?);
        }
    }
    Ok((state != ConsentState::default()).then_some(state))
}

/// Appends the events one JSON event stands for: one, except for a commerce event, which
/// yields one event per action it carries (product action, promotion action, each impression
/// list), so each can be selected and counted on its own.
fn events_from_json(
    event: Obj<'_>,
    batch_timestamp: Option<TimestampMs>,
    out: &mut Vec<Event>,
    copies: &mut usize,
) -> Result<()> {
    let type_path = event.path("event_type");
    let event_type = match event.get("event_type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(expected(&type_path, "a string", other)),
        None => return Err(invalid(&type_path, "missing")),
    };
    let no_data = Map::new();
    let data = match event.object("data")? {
        Some(data) => data,
        None => Obj {
            map: &no_data,
            path: Some(event.path("data")),
        },
    };

    let mut kinds = Vec::with_capacity(1);
    let kind = match event_type {
        "commerce_event" => {
            kinds = commerce_from_json(&data)?;
            None
        }
        kind => Some(single_event_from_json(kind, &data, &type_path)?),
    };
    kinds.extend(kind);

    let mut attributes = BTreeMap::new();
    if let Some(custom) = data.object("custom_attributes")? {
        for (name, value) in custom.map {
            if let Some(text) = scalar_text(value) {
                attributes.insert(name.clone(), text);
            }
        }
    }
    check_split(kinds.len(), attributes.len(), copies, &event.here())?;
    let timestamp_ms = data
        .i64("timestamp_unixtime_ms")?
        .or(batch_timestamp)
        .unwrap_or(0);
    let last = kinds.len().saturating_sub(1);
    for (i, kind) in kinds.into_iter().enumerate() {
        out.push(Event {
            timestamp_ms,
            kind,
            attributes: if i == last {
                std::mem::take(&mut attributes)
            } else {
                attributes.clone()
            },
        });
    }
    Ok(())
}

fn single_event_from_json(
    event_type: &str,
    data: &Obj<'_>,
    type_path: &Path<'_>,
) -> Result<EventKind> {
    Ok(match event_type {
        "custom_event" => EventKind::Custom {
            name: data.required_text("event_name")?,
            custom_type: data.text("custom_event_type")?.map(|t| t.to_lowercase()),
        },
        "screen_view" => EventKind::ScreenView {
            name: data.required_text("screen_name")?,
        },
        "session_start" => EventKind::SessionStart,
        "session_end" => EventKind::SessionEnd {
            duration_ms: data.i64("session_duration_ms")?,
        },
        "crash_report" => EventKind::CrashReport,
        "first_run" => EventKind::FirstRun,
        "uninstall" => EventKind::Uninstall,
        "application_state_transition" => EventKind::ApplicationStateTransition {
            transition: data.text("application_transition_type")?,
            is_upgrade: data.bool("is_upgrade")?.unwrap_or(false),
        },
        "user_attribute_change" => EventKind::UserAttributeChange {
            name: data.required_text("user_attribute_name")?,
            new_value: data.read("new", attr_value)?,
            deleted: data.bool("deleted")?.unwrap_or(false),
        },
        "user_identity_change" => EventKind::UserIdentityChange(identity_event_from_json(data)?),
        "opt_out" => EventKind::OptOut {
            opted_out: data.required_bool("is_opted_out")?,
        },
        other if OTHER_EVENT_TYPES.contains(&other) => EventKind::Other {
            event_type: other.to_string(),
        },
        other => {
            return Err(DecodeError::UnknownEventType {
                path: type_path.to_string(),
                event_type: excerpt(other),
            })
        }
    })
}

fn products_from_json(holder: &Obj<'_>) -> Result<Vec<Product>> {
    let mut products = Vec::new();
    if let Some(items) = holder.array("products")? {
        let path = holder.path("products");
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let product = Obj::new(item, path.index(i))?;
            products.push(Product {
                id: product.text("id")?,
                name: product.text("name")?,
                brand: product.text("brand")?,
                category: product.text("category")?,
                variant: product.text("variant")?,
                price: product.f64("price")?,
                quantity: product.f64("quantity")?,
            });
        }
    }
    Ok(products)
}

/// The events of one commerce event: its product action, its promotion action, one per
/// impression list; a commerce event with none of them stays one event without an action.
fn commerce_from_json(data: &Obj<'_>) -> Result<Vec<EventKind>> {
    let mut kinds = Vec::new();
    if let Some(action) = data.object("product_action")? {
        let product_action = match action.text("action")? {
            Some(raw) => Some(product_action(&raw, &action.path("action"))?),
            None => None,
        };
        kinds.push(EventKind::Commerce {
            product_action,
            products: products_from_json(&action)?,
            total_amount: action.f64("total_amount")?,
            transaction_id: action.text("transaction_id")?,
        });
    }
    if let Some(promotion) = data.object("promotion_action")? {
        let action = promotion_action(
            &promotion.required_text("action")?,
            &promotion.path("action"),
        )?;
        let mut promotions = Vec::new();
        if let Some(items) = promotion.array("promotions")? {
            let path = promotion.path("promotions");
            for (i, item) in items.iter().enumerate() {
                if item.is_null() {
                    continue;
                }
                let p = Obj::new(item, path.index(i))?;
                promotions.push(Promotion {
                    id: p.text("id")?,
                    name: p.text("name")?,
                    creative: p.text("creative")?,
                    position: p.text("position")?,
                });
            }
        }
        kinds.push(EventKind::Promotion { action, promotions });
    }
    if let Some(items) = data.array("product_impressions")? {
        let path = data.path("product_impressions");
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let impression = Obj::new(item, path.index(i))?;
            kinds.push(EventKind::Impression {
                list: impression.text("product_impression_list")?,
                products: products_from_json(&impression)?,
            });
        }
    }
    if kinds.is_empty() {
        kinds.push(EventKind::Commerce {
            product_action: None,
            products: Vec::new(),
            total_amount: None,
            transaction_id: None,
        });
    }
    Ok(kinds)
}

/// `view` or `click`, however the SDK spelled it (`View`, `promotion_click`...).
fn promotion_action(raw: &str, path: &Path<'_>) -> Result<String> {
    let lowered = raw.trim().to_lowercase();
    match lowered
        .trim_start_matches("promotion")
        .trim_start_matches(['_', ' '])
    {
        "view" => Ok("view".to_string()),
        "click" => Ok("click".to_string()),
        _ => Err(invalid(
            path,
            format!("unknown promotion action {} (view or click)", quote(raw)),
        )),
    }
}

/// A product action in snake_case, whether sent as `add_to_cart` or as the JS SDK's
/// `AddToCart`.
fn product_action(raw: &str, path: &Path<'_>) -> Result<String> {
    let mut action = String::with_capacity(raw.len() + 4);
    let mut after_lower = false;
    for c in raw.trim().chars() {
        if matches!(c, '_' | '-' | ' ') {
            if !action.is_empty() && !action.ends_with('_') {
                action.push('_');
            }
            after_lower = false;
        } else if c.is_uppercase() {
            if after_lower {
                action.push('_');
            }
            action.extend(c.to_lowercase());
            after_lower = false;
        } else {
            action.push(c);
            after_lower = c.is_lowercase() || c.is_ascii_digit();
        }
    }
    if PRODUCT_ACTIONS.contains(&action.as_str()) {
        Ok(action)
    } else {
        Err(invalid(
            path,
            format!("unknown product action {}", quote(raw)),
        ))
    }
}

fn identity_event_from_json(data: &Obj<'_>) -> Result<IdentityChange> {
    let new = data.object("new")?;
    let old = data.object("old")?;
    let (Some(first), second) = (new.or(old), new.and(old)) else {
        return Err(invalid(&data.here(), "neither new nor old identity is set"));
    };
    let identity_type = match first.text("identity_type")? {
        Some(t) => t,
        None => second
            .map(|old| old.text("identity_type"))
            .transpose()?
            .flatten()
            .ok_or_else(|| invalid(&first.path("identity_type"), "missing"))?,
    };
    Ok(IdentityChange {
        identity_type: identity_type.to_lowercase(),
        old_value: old.map(|o| o.text("identity")).transpose()?.flatten(),
        new_value: new.map(|n| n.text("identity")).transpose()?.flatten(),
    })
}

fn identity_from_json(top: Obj<'_>) -> Result<IdentityUpdate> {
    let mpid = mpid_from_json(&top)?;
    let timestamp_ms = top.i64("timestamp_unixtime_ms")?;
    let mut changes = Vec::new();
    if let Some(items) = top.array("identity_changes")? {
        let path = top.path("identity_changes");
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let change = Obj::new(item, path.index(i))?;
            let identity_type = change
                .text("identity_type")?
                .ok_or_else(|| invalid(&change.path("identity_type"), "missing"))?;
            let old_value = change.text("old_value")?;
            let new_value = change.text("new_value")?;
            if old_value.is_none() && new_value.is_none() {
                return Err(invalid(
                    &change.here(),
                    "neither old_value nor new_value is set",
                ));
            }
            changes.push(IdentityChange {
                identity_type: identity_type.to_lowercase(),
                old_value,
                new_value,
            });
        }
    }
    Ok(IdentityUpdate {
        mpid,
        timestamp_ms,
        changes,
    })
}

// ---------------------------------------------------------------------------------------------
// Protobuf: proto3 cannot tell a default from "unset", so 0 and "" read as absent.

fn decode_protobuf(payload: &[u8]) -> Result<Inbound> {
    let envelope = pb::Envelope::decode(payload).map_err(|e| {
        let message = e.to_string();
        let message = message
            .strip_prefix("failed to decode Protobuf message: ")
            .unwrap_or(&message);
        DecodeError::InvalidProtobuf(message.to_string())
    })?;
    from_envelope(envelope)
}

fn from_envelope(envelope: pb::Envelope) -> Result<Inbound> {
    match envelope.payload {
        Some(pb::envelope::Payload::Batch(batch)) => batch_from_proto(batch).map(Inbound::Batch),
        Some(pb::envelope::Payload::Identity(identity)) => {
            identity_from_proto(identity).map(Inbound::Identity)
        }
        None => Err(DecodeError::EmptyEnvelope),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn non_zero_i64(n: i64) -> Option<i64> {
    (n != 0).then_some(n)
}

fn non_zero_f64(n: f64) -> Option<f64> {
    (n != 0.0 && n.is_finite()).then_some(n)
}

fn required(s: String, path: &Path<'_>) -> Result<String> {
    non_empty(s).ok_or_else(|| invalid(path, "missing"))
}

/// `(type, value)` pairs of a proto map, types lowercased, empty values dropped, sorted so
/// the result does not depend on hash order.
fn identity_pairs(map: HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = map
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(identity_type, value)| (identity_type.to_lowercase(), value))
        .collect();
    pairs.sort();
    pairs
}

fn batch_from_proto(batch: pb::EventBatch) -> Result<Batch> {
    if batch.mpid == 0 {
        return Err(DecodeError::MissingMpid);
    }
    let timestamp_ms = non_zero_i64(batch.timestamp_unixtime_ms);
    let events_path = Path::top("events");
    let mut location = batch.location.and_then(position_from_proto);
    let mut events = Vec::with_capacity(batch.events.len());
    let mut copies = 0;
    for (i, mut event) in batch.events.into_iter().enumerate() {
        let path = events_path.index(i);
        if let Some(p) = event.location.take().and_then(position_from_proto) {
            location = Some(p);
        }
        events_from_proto(event, &path, timestamp_ms, &mut events, &mut copies)?;
    }
    let attribution = batch.attribution_info.and_then(|info| {
        let a = Attribution {
            publisher: non_empty(info.publisher),
            campaign: non_empty(info.campaign),
            service_provider: non_empty(info.service_provider),
        };
        (a != Attribution::default()).then_some(a)
    });
    if attribution.is_some() {
        mark_attribution_events(&mut events);
    }

    let attributes_path = Path::top("user_attributes");
    let mut user_attributes = batch
        .user_attributes
        .into_iter()
        .map(|(name, value)| {
            let value = attr_value_from_proto(value, &attributes_path.key(&name))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>>>()?;
    user_attributes.sort_by(|a, b| a.0.cmp(&b.0));

    let (device_info, device_identities) = match batch.device_info {
        Some(device) => {
            let info = DeviceInfo {
                platform: non_empty(device.platform),
                os_version: non_empty(device.os_version),
                device_model: non_empty(device.device_model),
                device_manufacturer: non_empty(device.device_manufacturer),
                network_carrier: non_empty(device.network_carrier),
                brand: non_empty(device.brand),
                locale_country: non_empty(device.locale_country),
                locale_language: non_empty(device.locale_language),
            };
            let info = (info != DeviceInfo::default()).then_some(info);
            (info, identity_pairs(device.device_identities))
        }
        None => (None, Vec::new()),
    };

    let consent = batch.consent_state.and_then(|consent| {
        let state = ConsentState {
            gdpr: consent
                .gdpr
                .into_iter()
                .map(|(purpose, c)| {
                    let consent = GdprConsent {
                        consented: c.consented,
                        timestamp_ms: non_zero_i64(c.timestamp_unixtime_ms),
                        document: non_empty(c.document),
                    };
                    (purpose.to_lowercase(), consent)
                })
                .collect(),
            ccpa_data_sale_opt_out: consent.ccpa_data_sale_opt_out,
        };
        (state != ConsentState::default()).then_some(state)
    });

    Ok(Batch {
        mpid: batch.mpid,
        timestamp_ms,
        events,
        user_attributes,
        deleted_user_attributes: batch
            .deleted_user_attributes
            .into_iter()
            .filter(|name| !name.is_empty())
            .collect(),
        user_identities: identity_pairs(batch.user_identities),
        device_identities,
        device_info,
        consent,
        app_version: batch
            .application_info
            .and_then(|app| non_empty(app.application_version)),
        attribution,
        ip: non_empty(batch.ip),
        location,
    })
}

/// A protobuf position; (0, 0) is proto3's "unset", not a point in the Gulf of Guinea.
fn position_from_proto(p: pb::GeoPosition) -> Option<GeoLocation> {
    if p.latitude == 0.0 && p.longitude == 0.0 {
        return None;
    }
    valid_position(p.latitude, p.longitude)
}

fn product_from_proto(p: pb::Product) -> Product {
    Product {
        id: non_empty(p.id),
        name: non_empty(p.name),
        brand: non_empty(p.brand),
        category: non_empty(p.category),
        variant: non_empty(p.variant),
        price: non_zero_f64(p.price),
        quantity: non_zero_f64(p.quantity),
    }
}

fn attr_value_from_proto(value: pb::AttributeValue, path: &Path<'_>) -> Result<AttrValue> {
    use pb::attribute_value::Value as V;
    match value.value {
        Some(V::StringValue(s)) => Ok(AttrValue::String(s)),
        Some(V::NumberValue(n)) if n.is_finite() => Ok(AttrValue::Number(n)),
        Some(V::NumberValue(n)) => Err(invalid(
            path,
            format!("expected a finite number, found {n}"),
        )),
        Some(V::BoolValue(b)) => Ok(AttrValue::Bool(b)),
        Some(V::DateUnixtimeMs(ms)) => Ok(AttrValue::Date(ms)),
        Some(V::ListValue(list)) => Ok(AttrValue::List(list.values)),
        Some(V::NullValue(_)) => Ok(AttrValue::Null),
        None => Err(invalid(path, "missing value")),
    }
}

/// Appends the events of one protobuf event (a commerce event yields one per action, as in
/// JSON).
fn events_from_proto(
    event: pb::Event,
    path: &Path<'_>,
    batch_timestamp: Option<TimestampMs>,
    out: &mut Vec<Event>,
    copies: &mut usize,
) -> Result<()> {
    use pb::event::Kind as K;
    let mut kinds = Vec::with_capacity(1);
    let kind = match event.kind {
        None => {
            return Err(DecodeError::MissingEventKind {
                path: path.to_string(),
            })
        }
        Some(K::CustomEvent(custom)) => EventKind::Custom {
            name: required(
                custom.event_name,
                &path.key("custom_event").key("event_name"),
            )?,
            custom_type: non_empty(custom.custom_event_type).map(|t| t.to_lowercase()),
        },
        Some(K::ScreenView(screen)) => EventKind::ScreenView {
            name: required(
                screen.screen_name,
                &path.key("screen_view").key("screen_name"),
            )?,
        },
        Some(K::CommerceEvent(commerce)) => {
            let commerce_path = path.key("commerce_event");
            let product_action = match non_empty(commerce.product_action) {
                Some(raw) => Some(product_action(&raw, &commerce_path.key("product_action"))?),
                None => None,
            };
            let has_product_part = product_action.is_some()
                || !commerce.products.is_empty()
                || commerce.total_amount != 0.0
                || !commerce.transaction_id.is_empty();
            if let Some(promotion) = commerce.promotion_action {
                let action = promotion_action(
                    &promotion.action,
                    &commerce_path.key("promotion_action").key("action"),
                )?;
                kinds.push(EventKind::Promotion {
                    action,
                    promotions: promotion
                        .promotions
                        .into_iter()
                        .map(|p| Promotion {
                            id: non_empty(p.id),
                            name: non_empty(p.name),
                            creative: non_empty(p.creative),
                            position: non_empty(p.position),
                        })
                        .collect(),
                });
            }
            for impression in commerce.product_impressions {
                kinds.push(EventKind::Impression {
                    list: non_empty(impression.product_impression_list),
                    products: impression
                        .products
                        .into_iter()
                        .map(product_from_proto)
                        .collect(),
                });
            }
            if has_product_part || kinds.is_empty() {
                kinds.insert(
                    0,
                    EventKind::Commerce {
                        product_action,
                        products: commerce
                            .products
                            .into_iter()
                            .map(product_from_proto)
                            .collect(),
                        total_amount: non_zero_f64(commerce.total_amount),
                        transaction_id: non_empty(commerce.transaction_id),
                    },
                );
            }
            // Never empty: the product part is kept when there is nothing else.
            kinds.remove(0)
        }
        Some(K::SessionStart(_)) => EventKind::SessionStart,
        Some(K::SessionEnd(end)) => EventKind::SessionEnd {
            duration_ms: non_zero_i64(end.session_duration_ms),
        },
        Some(K::CrashReport(_)) => EventKind::CrashReport,
        Some(K::FirstRun(_)) => EventKind::FirstRun,
        Some(K::ApplicationStateTransition(transition)) => EventKind::ApplicationStateTransition {
            transition: non_empty(transition.application_transition_type),
            is_upgrade: transition.is_upgrade,
        },
        Some(K::UserAttributeChange(change)) => {
            let change_path = path.key("user_attribute_change");
            EventKind::UserAttributeChange {
                name: required(
                    change.user_attribute_name,
                    &change_path.key("user_attribute_name"),
                )?,
                new_value: change
                    .new
                    .map(|v| attr_value_from_proto(v, &change_path.key("new")))
                    .transpose()?,
                deleted: change.deleted,
            }
        }
        Some(K::UserIdentityChange(change)) => {
            let change_path = path.key("user_identity_change");
            EventKind::UserIdentityChange(IdentityChange {
                identity_type: required(change.identity_type, &change_path.key("identity_type"))?
                    .to_lowercase(),
                old_value: change.old_value.and_then(non_empty),
                new_value: change.new_value.and_then(non_empty),
            })
        }
        Some(K::OptOut(opt_out)) => EventKind::OptOut {
            opted_out: opt_out.is_opted_out,
        },
        Some(K::Uninstall(_)) => EventKind::Uninstall,
    };
    let timestamp_ms = non_zero_i64(event.timestamp_unixtime_ms)
        .or(batch_timestamp)
        .unwrap_or(0);
    let attributes: BTreeMap<String, String> = event.custom_attributes.into_iter().collect();
    check_split(1 + kinds.len(), attributes.len(), copies, path)?;
    for kind in std::iter::once(kind).chain(kinds) {
        out.push(Event {
            timestamp_ms,
            kind,
            attributes: attributes.clone(),
        });
    }
    Ok(())
}

fn identity_from_proto(message: pb::IdentityMessage) -> Result<IdentityUpdate> {
    if message.mpid == 0 {
        return Err(DecodeError::MissingMpid);
    }
    let changes_path = Path::top("identity_changes");
    let changes = message
        .identity_changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| {
            let path = changes_path.index(i);
            let identity_type = required(change.identity_type, &path.key("identity_type"))?;
            let old_value = change.old_value.and_then(non_empty);
            let new_value = change.new_value.and_then(non_empty);
            if old_value.is_none() && new_value.is_none() {
                return Err(invalid(&path, "neither old_value nor new_value is set"));
            }
            Ok(IdentityChange {
                identity_type: identity_type.to_lowercase(),
                old_value,
                new_value,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(IdentityUpdate {
        mpid: message.mpid,
        timestamp_ms: non_zero_i64(message.timestamp_unixtime_ms),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const JSON: Option<&str> = Some("application/json");
    const PROTOBUF: Option<&str> = Some("application/x-protobuf");

    fn decode_value(value: &Value) -> Result<Inbound> {
        decode(
            value.to_string().as_bytes(),
            JSON,
            DEFAULT_MAX_MESSAGE_BYTES,
        )
    }

    fn batch_of(value: &Value) -> Batch {
        match decode_value(value) {
            Ok(Inbound::Batch(batch)) => batch,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn error_of(value: &Value) -> DecodeError {
        decode_value(value).expect_err("decoding should fail")
    }

    fn custom(name: &str) -> Value {
        json!({"event_type": "custom_event", "data": {"event_name": name}})
    }

    /// A batch as `json.dumps(batch.to_dict())` of the `mparticle` Python SDK writes it: every
    /// unset optional field is there as null.
    const PYTHON_SDK_BATCH: &str = r#"{
            "source_request_id": null,
            "environment": "development",
            "ip": null,
            "schema_version": 2,
            "api_key": null,
            "mpid": 8675309,
            "mp_deviceid": null,
            "timestamp_unixtime_ms": 1700000000000,
            "context": null,
            "batch_id": null,
            "sdk_version": null,
            "integration_attributes": null,
            "partner_identity": null,
            "source_info": {"is_history": false, "received_timestamp_unixtime_ms": null},
            "some_future_field": {"nested": [1, 2, 3]},
            "user_attributes": {
                "$FirstName": "Ada",
                "Tier": "gold",
                "LTV": 1234.5,
                "visits": 12,
                "favourite_colours": ["red", "blue", 7, true, null],
                "nickname": null,
                "subscribed": true
            },
            "deleted_user_attributes": ["old_attr", null],
            "user_identities": {
                "customer_id": "cust-1",
                "email": "ada@example.com",
                "other": null,
                "facebook": null,
                "Other_ID_2": "x2",
                "twitter": ""
            },
            "device_info": {
                "brand": "Apple",
                "product": null,
                "device": null,
                "android_uuid": null,
                "device_manufacturer": "Apple",
                "platform": "iOS",
                "os_version": "17.1",
                "device_model": "iPhone15,2",
                "screen_height": null,
                "screen_width": null,
                "screen_dpi": null,
                "device_country": null,
                "locale_language": "en",
                "locale_country": "GB",
                "network_country": null,
                "network_carrier": null,
                "network_code": null,
                "network_mobile_country_code": null,
                "timezone_offset": null,
                "build_identifier": null,
                "http_header_user_agent": null,
                "ios_advertising_id": null,
                "push_token": "",
                "cpu_architecture": null,
                "is_tablet": false,
                "push_notification_sound_enabled": null,
                "push_notification_vibrate_enabled": null,
                "radio_access_technology": null,
                "supports_telephony": null,
                "has_nfc": null,
                "bluetooth_enabled": null,
                "bluetooth_version": null,
                "ios_idfv": "IDFV-1",
                "android_advertising_id": null,
                "build_version_release": null,
                "limit_ad_tracking": false,
                "amp_id": null,
                "is_dst": null,
                "roku_advertising_id": null,
                "roku_publisher_id": null,
                "microsoft_advertising_id": null,
                "microsoft_publisher_id": null,
                "fire_advertising_id": null
            },
            "application_info": {
                "application_name": "Shop",
                "application_version": "4.2.0",
                "application_build_number": null,
                "install_referrer": null,
                "package": "com.example.shop",
                "os": null,
                "apple_search_ads_attributes": null
            },
            "consent_state": {
                "gdpr": {
                    "Marketing": {
                        "regulation": null,
                        "document": "v2",
                        "consented": true,
                        "timestamp_unixtime_ms": 1699999999000,
                        "location": "london",
                        "hardware_id": null
                    },
                    "analytics": null
                },
                "ccpa": {
                    "data_sale_opt_out": {
                        "regulation": null,
                        "document": null,
                        "consented": false,
                        "timestamp_unixtime_ms": 1699999999000,
                        "location": null,
                        "hardware_id": null
                    }
                }
            },
            "events": [
                {"event_type": "custom_event", "data": {
                    "event_id": null,
                    "source_message_id": "m-1",
                    "session_id": null,
                    "session_uuid": null,
                    "session_start_unixtime_ms": null,
                    "timestamp_unixtime_ms": 1700000000100,
                    "event_start_unixtime_ms": null,
                    "location": null,
                    "device_current_state": null,
                    "is_goal_defined": null,
                    "lifetime_value_change": null,
                    "lifetime_value_attribute_name": null,
                    "data_connection_type": null,
                    "event_num": null,
                    "view_controller": null,
                    "is_main_thread": null,
                    "canonical_name": null,
                    "event_system_notification_info": null,
                    "custom_flags": null,
                    "custom_attributes": {
                        "price": 9.0,
                        "discount": 0.25,
                        "sku": "A1",
                        "count": 3,
                        "gift": false,
                        "tags": ["a", "b"],
                        "meta": {"k": 1},
                        "none": null
                    },
                    "event_name": "Added to Wishlist",
                    "custom_event_type": "Navigation"
                }},
                {"event_type": "screen_view", "data": {
                    "timestamp_unixtime_ms": null,
                    "custom_attributes": null,
                    "screen_name": "Home",
                    "activity_type": null
                }},
                {"event_type": "commerce_event", "data": {
                    "timestamp_unixtime_ms": 1700000000200,
                    "custom_attributes": null,
                    "product_action": {
                        "action": "purchase",
                        "checkout_step": null,
                        "checkout_options": null,
                        "product_action_list": null,
                        "product_list_source": null,
                        "transaction_id": "T-1",
                        "affiliation": null,
                        "total_amount": 99.98,
                        "tax_amount": null,
                        "shipping_amount": null,
                        "coupon_code": null,
                        "products": [{
                            "id": "sku-1",
                            "name": "Shoe",
                            "brand": null,
                            "category": "shoes",
                            "variant": null,
                            "position": null,
                            "price": "49.99",
                            "quantity": 2,
                            "coupon_code": null,
                            "added_to_cart_time_ms": null,
                            "total_product_amount": 99.98,
                            "custom_attributes": null
                        }]
                    },
                    "promotion_action": null,
                    "product_impressions": null,
                    "shopping_cart": null,
                    "currency_code": "GBP",
                    "screen_name": null,
                    "is_non_interactive": null,
                    "event_name": null
                }},
                {"event_type": "commerce_event", "data": {
                    "product_action": {"action": "AddToCart", "products": [
                        {"id": 1001, "name": "Hat", "price": 15, "quantity": "1"}
                    ]},
                    "promotion_action": {"action": "view", "promotions": [{"id": "p1"}]},
                    "product_impressions": [{"product_impression_list": "home", "products": []}]
                }},
                {"event_type": "commerce_event", "data": {
                    "product_action": null,
                    "product_impressions": [{"product_impression_list": "home", "products": []}]
                }},
                {"event_type": "session_start", "data": {"timestamp_unixtime_ms": 1700000000300}},
                {"event_type": "session_end", "data": {"session_duration_ms": 60000}},
                {"event_type": "crash_report", "data": {
                    "breadcrumbs": null, "class_name": "NPE", "severity": "fatal", "message": "boom",
                    "stack_trace": null, "exception_handled": false
                }},
                {"event_type": "first_run", "data": {}},
                {"event_type": "uninstall", "data": null},
                {"event_type": "application_state_transition", "data": {
                    "successfully_closed": null, "is_first_run": false, "is_upgrade": false,
                    "push_notification_payload": null, "launch_referral": null,
                    "application_transition_type": "application_background"
                }},
                {"event_type": "user_attribute_change", "data": {
                    "user_attribute_name": "Tier", "new": "gold", "old": "silver",
                    "deleted": false, "is_new_attribute": false
                }},
                {"event_type": "user_identity_change", "data": {
                    "new": {"identity_type": "Email", "identity": "ada@example.com",
                            "timestamp_unixtime_ms": 1700000000000, "created_this_batch": true},
                    "old": null
                }},
                {"event_type": "opt_out", "data": {"is_opted_out": true}},
                {"event_type": "push_registration", "data": {"push_token": "tok", "register": true}},
                {"event_type": "push_message", "data": {"push_message_token": "tok", "push_message_type": "received"}},
                {"event_type": "network_performance", "data": {"http_verb": "GET", "url": "https://x"}},
                {"event_type": "breadcrumb", "data": {"label": "tapped"}},
                {"event_type": "profile", "data": {"profile_event_type": "login"}},
                {"event_type": "media", "data": {"media_content_id": "v1"}}
            ]
        }"#;

    fn python_sdk_batch() -> Value {
        serde_json::from_str(PYTHON_SDK_BATCH).expect("valid json")
    }

    #[test]
    fn python_sdk_batch_decodes() {
        let decoded = decode(PYTHON_SDK_BATCH.as_bytes(), None, DEFAULT_MAX_MESSAGE_BYTES);
        let Ok(Inbound::Batch(batch)) = decoded else {
            panic!("expected a batch, got {decoded:?}");
        };
        assert_eq!(batch.mpid, 8675309);
        assert_eq!(batch.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(batch.app_version.as_deref(), Some("4.2.0"));

        let attributes: BTreeMap<_, _> = batch.user_attributes.iter().cloned().collect();
        assert_eq!(attributes.len(), 7);
        assert_eq!(attributes["$FirstName"], AttrValue::String("Ada".into()));
        assert_eq!(attributes["LTV"], AttrValue::Number(1234.5));
        assert_eq!(attributes["visits"], AttrValue::Number(12.0));
        assert_eq!(attributes["subscribed"], AttrValue::Bool(true));
        assert_eq!(attributes["nickname"], AttrValue::Null);
        assert_eq!(
            attributes["favourite_colours"],
            AttrValue::List(vec!["red".into(), "blue".into(), "7".into(), "true".into()])
        );
        assert_eq!(batch.deleted_user_attributes, vec!["old_attr".to_string()]);
        // Keys lowercased, nulls and empty values dropped.
        let identities: BTreeMap<_, _> = batch.user_identities.iter().cloned().collect();
        let expected_identities: BTreeMap<String, String> = [
            ("customer_id", "cust-1"),
            ("email", "ada@example.com"),
            ("other_id_2", "x2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(identities, expected_identities);
        assert_eq!(batch.user_identities.len(), 3);
        assert_eq!(
            batch.device_identities,
            vec![("ios_idfv".to_string(), "IDFV-1".to_string())]
        );
        assert_eq!(
            batch.device_info,
            Some(DeviceInfo {
                platform: Some("iOS".into()),
                os_version: Some("17.1".into()),
                device_model: Some("iPhone15,2".into()),
                device_manufacturer: Some("Apple".into()),
                network_carrier: None,
                brand: Some("Apple".into()),
                locale_country: Some("GB".into()),
                locale_language: Some("en".into()),
            })
        );
        let consent = batch.consent.as_ref().expect("consent state");
        assert_eq!(consent.ccpa_data_sale_opt_out, Some(false));
        assert_eq!(
            consent.gdpr.get("marketing"),
            Some(&GdprConsent {
                consented: true,
                timestamp_ms: Some(1_699_999_999_000),
                document: Some("v2".into()),
            })
        );
        assert_eq!(consent.gdpr.len(), 1);

        let kinds: Vec<&str> = batch.events.iter().map(|e| e.kind.event_type()).collect();
        assert_eq!(
            kinds,
            vec![
                "custom_event",
                "screen_view",
                "commerce_event",
                "commerce_event",
                "commerce_event",
                "commerce_event",
                "commerce_event",
                "session_start",
                "session_end",
                "crash_report",
                "first_run",
                "uninstall",
                "application_state_transition",
                "user_attribute_change",
                "user_identity_change",
                "opt_out",
                "push_registration",
                "push_message",
                "network_performance",
                "breadcrumb",
                "profile",
                "media",
            ]
        );

        let first = &batch.events[0];
        assert_eq!(first.timestamp_ms, 1_700_000_000_100);
        assert_eq!(
            first.kind,
            EventKind::Custom {
                name: "Added to Wishlist".into(),
                custom_type: Some("navigation".into()),
            }
        );
        let expected: BTreeMap<String, String> = [
            ("price", "9"),
            ("discount", "0.25"),
            ("sku", "A1"),
            ("count", "3"),
            ("gift", "false"),
            ("tags", "[\"a\",\"b\"]"),
            ("meta", "{\"k\":1}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(first.attributes, expected);

        // No event timestamp: the batch's.
        assert_eq!(batch.events[1].timestamp_ms, 1_700_000_000_000);
        assert_eq!(
            batch.events[1].kind,
            EventKind::ScreenView {
                name: "Home".into()
            }
        );
        assert!(batch.events[1].attributes.is_empty());

        assert_eq!(
            batch.events[2].kind,
            EventKind::Commerce {
                product_action: Some("purchase".into()),
                products: vec![Product {
                    id: Some("sku-1".into()),
                    name: Some("Shoe".into()),
                    brand: None,
                    category: Some("shoes".into()),
                    variant: None,
                    price: Some(49.99),
                    quantity: Some(2.0),
                }],
                total_amount: Some(99.98),
                transaction_id: Some("T-1".into()),
            }
        );
        assert_eq!(
            batch.events[3].kind,
            EventKind::Commerce {
                product_action: Some("add_to_cart".into()),
                products: vec![Product {
                    id: Some("1001".into()),
                    name: Some("Hat".into()),
                    brand: None,
                    category: None,
                    variant: None,
                    price: Some(15.0),
                    quantity: Some(1.0),
                }],
                total_amount: None,
                transaction_id: None,
            }
        );
        assert_eq!(
            batch.events[4].kind,
            EventKind::Promotion {
                action: "view".into(),
                promotions: vec![Promotion {
                    id: Some("p1".into()),
                    name: None,
                    creative: None,
                    position: None,
                }],
            }
        );
        for i in [5, 6] {
            assert_eq!(
                batch.events[i].kind,
                EventKind::Impression {
                    list: Some("home".into()),
                    products: vec![],
                }
            );
            assert_eq!(batch.events[i].kind.selector_name(), "impression");
        }
        assert_eq!(batch.events[7].timestamp_ms, 1_700_000_000_300);
        assert_eq!(
            batch.events[8].kind,
            EventKind::SessionEnd {
                duration_ms: Some(60000)
            }
        );
        assert_eq!(
            batch.events[12].kind,
            EventKind::ApplicationStateTransition {
                transition: Some("application_background".into()),
                is_upgrade: false,
            }
        );
        assert_eq!(
            batch.events[13].kind,
            EventKind::UserAttributeChange {
                name: "Tier".into(),
                new_value: Some(AttrValue::String("gold".into())),
                deleted: false,
            }
        );
        assert_eq!(
            batch.events[14].kind,
            EventKind::UserIdentityChange(IdentityChange {
                identity_type: "email".into(),
                old_value: None,
                new_value: Some("ada@example.com".into()),
            })
        );
        assert_eq!(batch.events[15].kind, EventKind::OptOut { opted_out: true });
        assert_eq!(
            batch.events[21].kind,
            EventKind::Other {
                event_type: "media".into()
            }
        );
    }

    #[test]
    fn json_identity_message_decodes() {
        let message = json!({
            "mpid": "123",
            "timestamp_unixtime_ms": 1_700_000_000_000_i64,
            "environment": "production",
            "identity_changes": [
                {"identity_type": "Email", "old_value": null, "new_value": "a@b.c"},
                null,
                {"identity_type": "customer_id", "old_value": "c1", "new_value": null}
            ]
        });
        assert_eq!(
            decode_value(&message),
            Ok(Inbound::Identity(IdentityUpdate {
                mpid: 123,
                timestamp_ms: Some(1_700_000_000_000),
                changes: vec![
                    IdentityChange {
                        identity_type: "email".into(),
                        old_value: None,
                        new_value: Some("a@b.c".into()),
                    },
                    IdentityChange {
                        identity_type: "customer_id".into(),
                        old_value: Some("c1".into()),
                        new_value: None,
                    },
                ],
            }))
        );
    }

    #[test]
    fn event_timestamp_falls_back_to_the_batch_then_zero() {
        let batch = batch_of(&json!({"mpid": 1, "events": [custom("a")]}));
        assert_eq!(batch.timestamp_ms, None);
        assert_eq!(batch.events[0].timestamp_ms, 0);

        let batch = batch_of(&json!({
            "mpid": 1,
            "timestamp_unixtime_ms": "1700000000000",
            "events": [custom("a"), {"event_type": "custom_event",
                "data": {"event_name": "b", "timestamp_unixtime_ms": 1_700_000_000_500.7}}]
        }));
        assert_eq!(batch.events[0].timestamp_ms, 1_700_000_000_000);
        assert_eq!(batch.events[1].timestamp_ms, 1_700_000_000_500);
    }

    #[test]
    fn mpid_forms() {
        for (mpid, expected) in [
            (json!(42), 42),
            (json!(-9_223_372_036_854_775_808_i64), i64::MIN),
            (json!("-8675309"), -8675309),
            (json!(1e3), 1000),
        ] {
            assert_eq!(batch_of(&json!({"mpid": mpid})).mpid, expected);
        }
    }

    #[test]
    fn attribution_ip_and_positions_are_read() {
        let batch = batch_of(&json!({
            "mpid": 5,
            "ip": "81.2.69.5",
            "attribution_info": {"service_provider": "Adjust", "publisher": "Meta", "campaign": "spring"},
            "context": {"location": {"latitude": 48.85, "longitude": 2.35}},
            "events": [
                {"event_type": "custom_event", "data": {"event_name": "attribution", "custom_event_type": "other"}},
                {"event_type": "custom_event", "data": {"event_name": "play", "custom_event_type": "navigation",
                    "location": {"latitude": 51.5, "longitude": -0.12}}},
                {"event_type": "application_state_transition", "data": {
                    "application_transition_type": "application_initialized", "is_upgrade": true}}
            ]
        }));
        assert_eq!(batch.ip.as_deref(), Some("81.2.69.5"));
        let attribution = batch.attribution.as_ref().unwrap();
        assert_eq!(attribution.publisher.as_deref(), Some("Meta"));
        assert_eq!(attribution.campaign.as_deref(), Some("spring"));
        // The partner's batch makes its untyped custom events attribution events; typed ones
        // keep their type.
        assert_eq!(
            batch.events[0].kind,
            EventKind::Custom {
                name: "attribution".into(),
                custom_type: Some("attribution".into())
            }
        );
        assert_eq!(
            batch.events[1].kind,
            EventKind::Custom {
                name: "play".into(),
                custom_type: Some("navigation".into())
            }
        );
        // The latest position wins: the event's, after the batch context's.
        let location = batch.location.unwrap();
        assert_eq!(
            (location.latitude, location.longitude),
            (Some(51.5), Some(-0.12))
        );
        assert_eq!(
            batch.events[2].kind,
            EventKind::ApplicationStateTransition {
                transition: Some("application_initialized".into()),
                is_upgrade: true,
            }
        );
        // A position off the globe (a device's "unknown" sentinel) is ignored, not fatal.
        let off = batch_of(
            &json!({"mpid": 5, "context": {"location": {"latitude": -999, "longitude": -999}}}),
        );
        assert_eq!(off.location, None);
        let impressions: Vec<serde_json::Value> = (0..101)
            .map(|i| json!({"product_impression_list": format!("l{i}")}))
            .collect();
        let error = error_of(
            &json!({"mpid": 5, "events": [{"event_type": "commerce_event",
            "data": {"product_impressions": impressions}}]}),
        );
        assert!(
            error.to_string().contains("events[0]: 101 actions"),
            "{error}"
        );
        let error = error_of(
            &json!({"mpid": 5, "events": [{"event_type": "commerce_event",
            "data": {"promotion_action": {"action": "hover"}}}]}),
        );
        assert!(
            error.to_string().contains("promotion_action.action"),
            "{error}"
        );
    }

    #[test]
    fn protobuf_commerce_yields_one_event_per_action() {
        use pb::event::Kind as K;
        let commerce = pb::CommerceEvent {
            promotion_action: Some(pb::PromotionAction {
                action: "click".into(),
                promotions: vec![pb::Promotion {
                    name: "Summer".into(),
                    ..Default::default()
                }],
            }),
            product_impressions: vec![pb::ProductImpression {
                product_impression_list: "search".into(),
                products: vec![pb::Product {
                    id: "sku-9".into(),
                    ..Default::default()
                }],
            }],
            ..Default::default()
        };
        let batch = pb::EventBatch {
            mpid: 3,
            events: vec![pb_event(5, K::CommerceEvent(commerce))],
            attribution_info: Some(pb::AttributionInfo {
                publisher: "Meta".into(),
                ..Default::default()
            }),
            location: Some(pb::GeoPosition {
                latitude: 40.7,
                longitude: -74.0,
                accuracy: 0.0,
            }),
            ..Default::default()
        };
        let bytes = envelope_bytes(pb::envelope::Payload::Batch(batch));
        let Inbound::Batch(batch) = decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES).unwrap() else {
            panic!("a batch")
        };
        let names: Vec<String> = batch
            .events
            .iter()
            .map(|e| e.kind.selector_name())
            .collect();
        assert_eq!(names, vec!["promotion_click", "impression"]);
        assert_eq!(
            batch.attribution.unwrap().publisher.as_deref(),
            Some("Meta")
        );
        assert_eq!(batch.location.unwrap().latitude, Some(40.7));
    }

    #[test]
    fn product_actions_are_normalised() {
        let path = Path::top("action");
        for (raw, expected) in [
            ("add_to_cart", "add_to_cart"),
            ("AddToCart", "add_to_cart"),
            ("addToCart", "add_to_cart"),
            ("ADD_TO_CART", "add_to_cart"),
            ("add to cart", "add_to_cart"),
            ("Checkout Option", "checkout_option"),
            ("ViewDetail", "view_detail"),
            ("RemoveFromWishlist", "remove_from_wishlist"),
            (" Purchase ", "purchase"),
            ("refund", "refund"),
        ] {
            assert_eq!(product_action(raw, &path).as_deref(), Ok(expected), "{raw}");
        }
        assert_eq!(
            product_action("AddToBasket", &path)
                .unwrap_err()
                .to_string(),
            "action: unknown product action \"AddToBasket\""
        );
    }

    // ----- errors ------------------------------------------------------------------------------

    #[test]
    fn oversized_is_refused_before_parsing() {
        let error = decode(&[0xff; 100], None, 10).unwrap_err();
        assert_eq!(
            error,
            DecodeError::Oversized {
                size: 100,
                limit: 10
            }
        );
        assert_eq!(
            error.to_string(),
            "message of 100 bytes exceeds the limit of 10"
        );
        assert_eq!(error.reason_code(), "oversized");

        let big = vec![b' '; 2_000_000];
        assert_eq!(
            decode(&big, JSON, DEFAULT_MAX_MESSAGE_BYTES)
                .unwrap_err()
                .to_string(),
            "message of 2000000 bytes exceeds the limit of 1048576"
        );

        let exact = json!({"mpid": 1}).to_string();
        assert!(decode(exact.as_bytes(), None, exact.len()).is_ok());
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let error = decode(b"{\"mpid\": }", None, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid json at line 1 column 10: expected value"
        );
        assert_eq!(error.reason_code(), "malformed");

        let error = decode(b"{\"mpid\": 1,\n \"events\": [", JSON, 1 << 20).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid json at line 2 column 12: EOF"),
            "{error}"
        );

        // Non-UTF-8 inside a string, and trailing garbage.
        for payload in [&b"{\"mpid\": \"\xff\xfe\"}"[..], b"{\"mpid\": 1} x"] {
            let error = decode(payload, None, 1 << 20).unwrap_err();
            assert!(matches!(error, DecodeError::InvalidJson { .. }), "{error}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "{{\"mpid\": 1, \"x\": {}1{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let error = decode(deep.as_bytes(), None, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert_eq!(error.reason_code(), "malformed");
        assert!(
            error.to_string().contains("recursion limit exceeded"),
            "{error}"
        );
    }

    #[test]
    fn non_object_json_is_malformed() {
        for (payload, found) in [
            ("[1, 2]", "an array"),
            ("\"batch\"", "a string"),
            ("42", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let error = decode(payload.as_bytes(), JSON, 1 << 20).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("expected a json object, found {found}")
            );
            assert_eq!(error.reason_code(), "malformed");
        }
    }

    #[test]
    fn missing_mpid() {
        for batch in [
            json!({"events": [custom("a")]}),
            json!({"mpid": null}),
            json!({"mpid": 0}),
            json!({"mpid": "0"}),
            json!({"identity_changes": [{"identity_type": "email", "new_value": "a@b.c"}]}),
        ] {
            let error = error_of(&batch);
            assert_eq!(error.to_string(), "mpid: missing", "{batch}");
            assert_eq!(error.reason_code(), "missing_mpid");
        }
    }

    #[test]
    fn mpid_that_is_not_an_integer() {
        for (mpid, shown) in [
            (json!("abc"), "\"abc\""),
            (json!("12.5"), "\"12.5\""),
            (json!(1.5), "1.5"),
            (
                json!(18_446_744_073_709_551_615_u64),
                "18446744073709551615",
            ),
            (json!(true), "true"),
            (json!([1]), "an array"),
        ] {
            let error = error_of(&json!({"mpid": mpid}));
            assert_eq!(
                error.to_string(),
                format!("mpid: expected a signed 64-bit integer, found {shown}")
            );
            assert_eq!(error.reason_code(), "invalid_field");
        }
    }

    #[test]
    fn unknown_event_type_names_index_and_type() {
        let batch = json!({"mpid": 1, "events": [
            custom("a"),
            {"event_type": "session_start", "data": {}},
            {"event_type": "attribution", "data": {}}
        ]});
        let error = error_of(&batch);
        assert_eq!(
            error.to_string(),
            "events[2].event_type: unknown event type \"attribution\""
        );
        assert_eq!(error.reason_code(), "unknown_event_type");

        let long = "x".repeat(10_000);
        let error = error_of(&json!({"mpid": 1, "events": [{"event_type": long}]}));
        assert!(error.to_string().len() < 120, "{error}");
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (
                json!({"mpid": 1, "events": [{"event_type": "custom_event", "data": {"custom_event_type": "other"}}]}),
                "events[0].data.event_name: missing",
            ),
            (
                json!({"mpid": 1, "events": [custom("a"), {"event_type": "custom_event", "data": null}]}),
                "events[1].data.event_name: missing",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "custom_event", "data": {"event_name": ""}}]}),
                "events[0].data.event_name: expected a non-empty string, found \"\"",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "screen_view", "data": {"screen_name": {"a": 1}}}]}),
                "events[0].data.screen_name: expected a string, found an object",
            ),
            (
                json!({"mpid": 1, "events": [{"data": {"event_name": "a"}}]}),
                "events[0].event_type: missing",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": 7}]}),
                "events[0].event_type: expected a string, found 7",
            ),
            (
                json!({"mpid": 1, "events": [[]]}),
                "events[0]: expected an object, found an array",
            ),
            (
                json!({"mpid": 1, "events": {"event_type": "custom_event"}}),
                "events: expected an array, found an object",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "custom_event", "data": "x"}]}),
                "events[0].data: expected an object, found \"x\"",
            ),
            (
                json!({"mpid": 1, "timestamp_unixtime_ms": "yesterday"}),
                "timestamp_unixtime_ms: expected a 64-bit integer, found \"yesterday\"",
            ),
            (
                json!({"mpid": 1, "user_attributes": {"address": {"city": "Paris"}}}),
                "user_attributes.address: expected a string, number, boolean, null or list, found an object",
            ),
            (
                json!({"mpid": 1, "deleted_user_attributes": "tier"}),
                "deleted_user_attributes: expected an array, found \"tier\"",
            ),
            (
                json!({"mpid": 1, "user_identities": {"email": ["a"]}}),
                "user_identities.email: expected a string, found an array",
            ),
            (
                json!({"mpid": 1, "consent_state": {"gdpr": {"marketing": {"document": "v1"}}}}),
                "consent_state.gdpr.marketing.consented: missing",
            ),
            (
                json!({"mpid": 1, "consent_state": {"ccpa": {"data_sale_opt_out": {"consented": "maybe"}}}}),
                "consent_state.ccpa.data_sale_opt_out.consented: expected a boolean, found \"maybe\"",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "commerce_event", "data": {"product_action": {"action": "steal"}}}]}),
                "events[0].data.product_action.action: unknown product action \"steal\"",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "commerce_event", "data": {"product_action": {"action": "purchase", "products": [{"price": "free"}]}}}]}),
                "events[0].data.product_action.products[0].price: expected a number, found \"free\"",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "user_attribute_change", "data": {"user_attribute_name": "a", "new": {"x": 1}}}]}),
                "events[0].data.new: expected a string, number, boolean, null or list, found an object",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "user_identity_change", "data": {"new": null, "old": null}}]}),
                "events[0].data: neither new nor old identity is set",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "user_identity_change", "data": {"new": {"identity": "x"}}}]}),
                "events[0].data.new.identity_type: missing",
            ),
            (
                json!({"mpid": 1, "events": [{"event_type": "opt_out", "data": {"is_opted_out": null}}]}),
                "events[0].data.is_opted_out: missing",
            ),
            (
                json!({"mpid": 1, "identity_changes": [{"identity_type": "email", "new_value": "a"}, {"old_value": "x"}]}),
                "identity_changes[1].identity_type: missing",
            ),
            (
                json!({"mpid": 1, "identity_changes": [{"identity_type": "email", "old_value": null, "new_value": null}]}),
                "identity_changes[0]: neither old_value nor new_value is set",
            ),
            (
                json!({"mpid": 1, "identity_changes": {"identity_type": "email"}}),
                "identity_changes: expected an array, found an object",
            ),
        ];
        for (message, expected) in cases {
            let error = error_of(&message);
            assert_eq!(error.to_string(), expected, "{message}");
            assert_eq!(error.reason_code(), "invalid_field", "{message}");
        }
    }

    #[test]
    fn user_identity_change_reads_old_when_new_is_absent() {
        let batch = batch_of(
            &json!({"mpid": 1, "events": [{"event_type": "user_identity_change",
            "data": {"new": null, "old": {"identity_type": "Customer_ID", "identity": "c1"}}}]}),
        );
        assert_eq!(
            batch.events[0].kind,
            EventKind::UserIdentityChange(IdentityChange {
                identity_type: "customer_id".into(),
                old_value: Some("c1".into()),
                new_value: None,
            })
        );
    }

    // ----- protobuf ----------------------------------------------------------------------------

    fn pb_event(timestamp: i64, kind: pb::event::Kind) -> pb::Event {
        pb::Event {
            timestamp_unixtime_ms: timestamp,
            custom_attributes: HashMap::new(),
            location: None,
            kind: Some(kind),
        }
    }

    fn pb_batch() -> pb::EventBatch {
        use pb::event::Kind as K;
        let mut custom = pb_event(
            1_700_000_000_100,
            K::CustomEvent(pb::CustomEvent {
                event_name: "Play".into(),
                custom_event_type: "Navigation".into(),
            }),
        );
        custom
            .custom_attributes
            .insert("genre".into(), "jazz".into());
        pb::EventBatch {
            mpid: -77,
            timestamp_unixtime_ms: 1_700_000_000_000,
            events: vec![
                custom,
                pb_event(
                    0,
                    K::ScreenView(pb::ScreenView {
                        screen_name: "Home".into(),
                    }),
                ),
                pb_event(
                    0,
                    K::CommerceEvent(pb::CommerceEvent {
                        product_action: "AddToCart".into(),
                        products: vec![pb::Product {
                            id: "sku".into(),
                            price: 10.5,
                            quantity: 2.0,
                            ..Default::default()
                        }],
                        transaction_id: String::new(),
                        total_amount: 21.0,
                        currency_code: "EUR".into(),
                        promotion_action: None,
                        product_impressions: vec![],
                    }),
                ),
                pb_event(0, K::SessionStart(pb::SessionStart {})),
                pb_event(
                    0,
                    K::SessionEnd(pb::SessionEnd {
                        session_duration_ms: 5,
                    }),
                ),
                pb_event(0, K::CrashReport(pb::CrashReport::default())),
                pb_event(0, K::FirstRun(pb::FirstRun {})),
                pb_event(
                    0,
                    K::ApplicationStateTransition(pb::ApplicationStateTransition {
                        application_transition_type: "application_exit".into(),
                        is_upgrade: false,
                    }),
                ),
                pb_event(
                    0,
                    K::UserAttributeChange(pb::UserAttributeChange {
                        user_attribute_name: "Tier".into(),
                        new: Some(pb::AttributeValue {
                            value: Some(pb::attribute_value::Value::NumberValue(3.0)),
                        }),
                        deleted: false,
                    }),
                ),
                pb_event(
                    0,
                    K::UserIdentityChange(pb::UserIdentityChange {
                        identity_type: "EMAIL".into(),
                        old_value: Some("a@x".into()),
                        new_value: Some(String::new()),
                    }),
                ),
                pb_event(0, K::OptOut(pb::OptOut { is_opted_out: true })),
                pb_event(0, K::Uninstall(pb::Uninstall {})),
            ],
            user_attributes: [
                (
                    "b_list",
                    pb::attribute_value::Value::ListValue(pb::StringList {
                        values: vec!["x".into()],
                    }),
                ),
                (
                    "a_date",
                    pb::attribute_value::Value::DateUnixtimeMs(86_400_000),
                ),
                ("c_null", pb::attribute_value::Value::NullValue(true)),
                ("d_bool", pb::attribute_value::Value::BoolValue(false)),
                (
                    "e_text",
                    pb::attribute_value::Value::StringValue("hi".into()),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), pb::AttributeValue { value: Some(v) }))
            .collect(),
            deleted_user_attributes: vec!["gone".into(), String::new()],
            user_identities: [("Customer_ID", "c1"), ("email", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            device_info: Some(pb::DeviceInfo {
                platform: "Android".into(),
                device_identities: [("android_advertising_id", "aaid"), ("push_token", "pt")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            consent_state: Some(pb::ConsentState {
                gdpr: [(
                    "Marketing".to_string(),
                    pb::GdprConsent {
                        consented: true,
                        document: "v3".into(),
                        ..Default::default()
                    },
                )]
                .into_iter()
                .collect(),
                ccpa_data_sale_opt_out: Some(true),
            }),
            application_info: Some(pb::ApplicationInfo {
                application_version: "1.2.3".into(),
                ..Default::default()
            }),
            source_request_id: "req-1".into(),
            attribution_info: None,
            ip: String::new(),
            location: None,
        }
    }

    fn envelope_bytes(payload: pb::envelope::Payload) -> Vec<u8> {
        pb::Envelope {
            payload: Some(payload),
        }
        .encode_to_vec()
    }

    #[test]
    fn protobuf_batch_roundtrip() {
        let bytes = envelope_bytes(pb::envelope::Payload::Batch(pb_batch()));
        let with_header = decode(&bytes, PROTOBUF, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        let sniffed = decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(with_header, sniffed);
        let Inbound::Batch(batch) = with_header else {
            panic!("expected a batch");
        };
        assert_eq!(batch.mpid, -77);
        assert_eq!(batch.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(batch.events.len(), 12);
        assert_eq!(batch.events[0].timestamp_ms, 1_700_000_000_100);
        assert_eq!(
            batch.events[0].kind,
            EventKind::Custom {
                name: "Play".into(),
                custom_type: Some("navigation".into()),
            }
        );
        assert_eq!(batch.events[0].attributes["genre"], "jazz");
        assert_eq!(batch.events[1].timestamp_ms, 1_700_000_000_000);
        assert_eq!(
            batch.events[2].kind,
            EventKind::Commerce {
                product_action: Some("add_to_cart".into()),
                products: vec![Product {
                    id: Some("sku".into()),
                    name: None,
                    brand: None,
                    category: None,
                    variant: None,
                    price: Some(10.5),
                    quantity: Some(2.0),
                }],
                total_amount: Some(21.0),
                transaction_id: None,
            }
        );
        assert_eq!(
            batch.events[4].kind,
            EventKind::SessionEnd {
                duration_ms: Some(5)
            }
        );
        assert_eq!(
            batch.events[8].kind,
            EventKind::UserAttributeChange {
                name: "Tier".into(),
                new_value: Some(AttrValue::Number(3.0)),
                deleted: false,
            }
        );
        assert_eq!(
            batch.events[9].kind,
            EventKind::UserIdentityChange(IdentityChange {
                identity_type: "email".into(),
                old_value: Some("a@x".into()),
                new_value: None,
            })
        );
        assert_eq!(batch.events[10].kind, EventKind::OptOut { opted_out: true });
        assert_eq!(batch.events[11].kind, EventKind::Uninstall);
        assert_eq!(
            batch.user_attributes,
            vec![
                ("a_date".to_string(), AttrValue::Date(86_400_000)),
                ("b_list".to_string(), AttrValue::List(vec!["x".into()])),
                ("c_null".to_string(), AttrValue::Null),
                ("d_bool".to_string(), AttrValue::Bool(false)),
                ("e_text".to_string(), AttrValue::String("hi".into())),
            ]
        );
        assert_eq!(batch.deleted_user_attributes, vec!["gone".to_string()]);
        assert_eq!(
            batch.user_identities,
            vec![("customer_id".into(), "c1".into())]
        );
        assert_eq!(
            batch.device_identities,
            vec![
                ("android_advertising_id".into(), "aaid".into()),
                ("push_token".into(), "pt".into()),
            ]
        );
        assert_eq!(
            batch.device_info,
            Some(DeviceInfo {
                platform: Some("Android".into()),
                ..Default::default()
            })
        );
        let consent = batch.consent.expect("consent");
        assert_eq!(consent.ccpa_data_sale_opt_out, Some(true));
        assert_eq!(
            consent.gdpr["marketing"],
            GdprConsent {
                consented: true,
                timestamp_ms: None,
                document: Some("v3".into()),
            }
        );
        assert_eq!(batch.app_version.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn protobuf_identity_roundtrip() {
        let bytes = envelope_bytes(pb::envelope::Payload::Identity(pb::IdentityMessage {
            mpid: 5,
            timestamp_unixtime_ms: 0,
            identity_changes: vec![pb::UserIdentityChange {
                identity_type: "Email".into(),
                old_value: None,
                new_value: Some("a@b.c".into()),
            }],
        }));
        assert_eq!(
            decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES),
            Ok(Inbound::Identity(IdentityUpdate {
                mpid: 5,
                timestamp_ms: None,
                changes: vec![IdentityChange {
                    identity_type: "email".into(),
                    old_value: None,
                    new_value: Some("a@b.c".into()),
                }],
            }))
        );
    }

    #[test]
    fn messages_of_neither_format_say_what_they_are() {
        for (payload, reason) in [
            (&b"[1, 2]"[..], "not a JSON batch object (found an array) nor a protobuf envelope"),
            (b"null", "not a JSON batch object (found null) nor a protobuf envelope"),
            (b" \"mpid\"", "not a JSON batch object (found a string) nor a protobuf envelope"),
            (b"42", "not a JSON batch object (found a number) nor a protobuf envelope"),
            (b"true", "not a JSON batch object (found a boolean) nor a protobuf envelope"),
            (
                b"yesterday",
                "not a JSON batch object (invalid json at line 1 column 1: expected value) nor a protobuf envelope (",
            ),
            (
                b"[1, 2",
                "not a JSON batch object (invalid json at line 1 column 5: EOF while parsing a list) nor a protobuf envelope (",
            ),
            (b"\xff\xfe\xfd", "not a JSON batch object (not UTF-8 text: invalid byte at 0) nor a protobuf envelope ("),
        ] {
            let error = decode(payload, None, 1 << 20).unwrap_err();
            assert!(
                error.to_string().starts_with(reason),
                "{:?}: {error}",
                String::from_utf8_lossy(payload)
            );
            assert_eq!(error.reason_code(), "malformed");
            assert!(!error.to_string().contains("failed to decode"), "{error}");
        }
        // With a JSON content type, the JSON reading alone speaks.
        assert_eq!(
            decode(b"[1]", JSON, 1 << 20).unwrap_err().to_string(),
            "expected a json object, found an array"
        );
    }

    #[test]
    fn protobuf_errors() {
        let garbage = decode(&[0xff, 0xff, 0xff, 0xff], PROTOBUF, 1 << 20).unwrap_err();
        assert!(
            garbage
                .to_string()
                .starts_with("invalid protobuf envelope: "),
            "{garbage}"
        );
        assert_eq!(garbage.reason_code(), "malformed");

        // An envelope without payload is zero bytes; so is an empty message: said so when the
        // content type declares an envelope, told as an empty message otherwise.
        let empty = pb::Envelope { payload: None }.encode_to_vec();
        let error = decode(&empty, PROTOBUF, 1 << 20).unwrap_err();
        assert_eq!(error, DecodeError::EmptyEnvelope);
        assert_eq!(error.to_string(), "envelope: missing payload");
        assert_eq!(error.reason_code(), "malformed");
        for blank in [&b""[..], b"  \n", b"\xEF\xBB\xBF"] {
            let error = decode(blank, None, 1 << 20).unwrap_err();
            assert_eq!(error, DecodeError::Empty, "{blank:?}");
            assert_eq!(error.reason_code(), "malformed");
        }

        let mut batch = pb_batch();
        batch.mpid = 0;
        let error = decode(
            &envelope_bytes(pb::envelope::Payload::Batch(batch)),
            None,
            1 << 20,
        );
        assert_eq!(error, Err(DecodeError::MissingMpid));

        let mut batch = pb_batch();
        batch.events[3].kind = None;
        let error = decode(
            &envelope_bytes(pb::envelope::Payload::Batch(batch)),
            None,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "events[3].kind: missing or unknown event kind"
        );
        assert_eq!(error.reason_code(), "unknown_event_type");

        let mut batch = pb_batch();
        batch.events[1].kind = Some(pb::event::Kind::ScreenView(pb::ScreenView::default()));
        let error = decode(
            &envelope_bytes(pb::envelope::Payload::Batch(batch)),
            None,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "events[1].screen_view.screen_name: missing"
        );

        let identity = pb::IdentityMessage {
            mpid: 5,
            timestamp_unixtime_ms: 0,
            identity_changes: vec![pb::UserIdentityChange {
                identity_type: "email".into(),
                old_value: None,
                new_value: None,
            }],
        };
        let error = decode(
            &envelope_bytes(pb::envelope::Payload::Identity(identity)),
            None,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "identity_changes[0]: neither old_value nor new_value is set"
        );

        // The header wins over sniffing.
        let json = json!({"mpid": 1}).to_string();
        let error = decode(json.as_bytes(), PROTOBUF, 1 << 20).unwrap_err();
        assert_eq!(error.reason_code(), "malformed");
        let bytes = envelope_bytes(pb::envelope::Payload::Batch(pb_batch()));
        let error = decode(&bytes, Some("application/json; charset=utf-8"), 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::InvalidJson { .. }), "{error}");
    }

    /// An envelope whose batch is 123 bytes long starts with `\n{`, which looks like JSON.
    #[test]
    fn protobuf_that_looks_like_json_is_still_decoded() {
        let mut batch = pb::EventBatch {
            mpid: 42,
            ..Default::default()
        };
        while batch.encoded_len() < 123 {
            batch.source_request_id.push('x');
        }
        assert_eq!(batch.encoded_len(), 123);
        let bytes = envelope_bytes(pb::envelope::Payload::Batch(batch));
        assert_eq!(&bytes[..2], b"\n{");
        let decoded = decode(&bytes, None, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(decoded.mpid(), 42);

        // JSON after whitespace stays JSON, and its errors stay JSON errors.
        assert_eq!(
            decode(b"\n {\"mpid\": 7}", None, 1 << 20).unwrap().mpid(),
            7
        );
        assert_eq!(
            decode(b"\xEF\xBB\xBF{\"mpid\": 8}", None, 1 << 20)
                .unwrap()
                .mpid(),
            8
        );
        let error = decode(b"\n {\"mpid\": }", None, 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::InvalidJson { .. }), "{error}");
    }

    // ----- properties --------------------------------------------------------------------------

    const REASONS: &[&str] = &[
        "oversized",
        "malformed",
        "missing_mpid",
        "unknown_event_type",
        "invalid_field",
    ];

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-zA-Z0-9_ .]{0,12}".prop_map(Value::from),
            prop::sample::select(vec![
                "custom_event",
                "purchase",
                "AddToCart",
                "true",
                "12",
                "1.5",
                "email",
                "",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        "[a-z_]{1,8}",
                        prop::sample::select(vec![
                            "event_type",
                            "data",
                            "event_name",
                            "identity_type",
                            "identity",
                            "consented",
                            "action",
                            "products",
                            "price",
                        ])
                        .prop_map(String::from),
                    ],
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// JSON pointers into [`python_sdk_batch`] and the path an error there must name.
    const MUTATION_TARGETS: &[(&str, &str)] = &[
        ("/mpid", "mpid"),
        ("/timestamp_unixtime_ms", "timestamp_unixtime_ms"),
        ("/events", "events"),
        ("/events/0", "events[0]"),
        ("/events/0/event_type", "events[0].event_type"),
        ("/events/0/data", "events[0].data"),
        ("/events/0/data/event_name", "events[0].data.event_name"),
        (
            "/events/0/data/timestamp_unixtime_ms",
            "events[0].data.timestamp_unixtime_ms",
        ),
        (
            "/events/0/data/custom_attributes",
            "events[0].data.custom_attributes",
        ),
        (
            "/events/2/data/product_action",
            "events[2].data.product_action",
        ),
        (
            "/events/2/data/product_action/products",
            "events[2].data.product_action.products",
        ),
        (
            "/events/2/data/product_action/products/0/price",
            "events[2].data.product_action.products[0].price",
        ),
        (
            "/events/6/data/session_duration_ms",
            "events[6].data.session_duration_ms",
        ),
        ("/events/11/data/new", "events[11].data.new"),
        (
            "/events/12/data/new/identity_type",
            "events[12].data.new.identity_type",
        ),
        (
            "/events/13/data/is_opted_out",
            "events[13].data.is_opted_out",
        ),
        ("/user_attributes", "user_attributes"),
        ("/user_attributes/Tier", "user_attributes.Tier"),
        ("/deleted_user_attributes", "deleted_user_attributes"),
        ("/user_identities", "user_identities"),
        ("/user_identities/email", "user_identities.email"),
        ("/device_info", "device_info"),
        ("/device_info/platform", "device_info.platform"),
        (
            "/consent_state/gdpr/Marketing",
            "consent_state.gdpr.Marketing",
        ),
        ("/consent_state/ccpa", "consent_state.ccpa"),
        ("/application_info", "application_info"),
        ("/environment", "environment"),
    ];

    #[derive(Debug, Clone)]
    enum GenValue {
        Text(String),
        Int(i64),
        Quarter(i32),
        Bool(bool),
        Null,
    }

    impl GenValue {
        fn json(&self) -> Value {
            match self {
                GenValue::Text(s) => json!(s),
                GenValue::Int(i) => json!(i),
                GenValue::Quarter(q) => json!(f64::from(*q) / 4.0),
                GenValue::Bool(b) => json!(b),
                GenValue::Null => Value::Null,
            }
        }

        fn text(&self) -> Option<String> {
            match self {
                GenValue::Text(s) => Some(s.clone()),
                GenValue::Int(i) => Some(i.to_string()),
                GenValue::Quarter(q) => Some(format_number(f64::from(*q) / 4.0)),
                GenValue::Bool(b) => Some(b.to_string()),
                GenValue::Null => None,
            }
        }
    }

    fn gen_value() -> impl Strategy<Value = GenValue> {
        prop_oneof![
            ".{0,16}".prop_map(GenValue::Text),
            any::<i64>().prop_map(GenValue::Int),
            any::<i32>().prop_map(GenValue::Quarter),
            any::<bool>().prop_map(GenValue::Bool),
            Just(GenValue::Null),
        ]
    }

    #[derive(Debug, Clone)]
    struct GenEvent {
        name: String,
        custom_type: Option<String>,
        timestamp: Option<i64>,
        attributes: BTreeMap<String, GenValue>,
    }

    fn gen_event() -> impl Strategy<Value = GenEvent> {
        (
            ".{1,24}".prop_filter("non-empty", |s: &String| !s.is_empty()),
            prop::option::of(prop::sample::select(vec![
                "navigation",
                "Transaction",
                "OTHER",
            ])),
            prop::option::of(0..4_102_444_800_000_i64),
            prop::collection::btree_map(".{0,12}", gen_value(), 0..6),
        )
            .prop_map(|(name, custom_type, timestamp, attributes)| GenEvent {
                name,
                custom_type: custom_type.map(String::from),
                timestamp,
                attributes,
            })
    }

    fn assert_error_is_well_formed(error: &DecodeError) {
        assert!(REASONS.contains(&error.reason_code()));
        let message = error.to_string();
        assert!(!message.is_empty());
        assert!(message.len() < 1024, "unbounded message: {message}");
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            for content_type in [None, JSON, PROTOBUF] {
                if let Err(error) = decode(&bytes, content_type, DEFAULT_MAX_MESSAGE_BYTES) {
                    assert_error_is_well_formed(&error);
                }
            }
            // Also behind a `{`, where the JSON parser does the work.
            let mut json = b"{".to_vec();
            json.extend_from_slice(&bytes);
            if let Err(error) = decode(&json, None, DEFAULT_MAX_MESSAGE_BYTES) {
                assert_error_is_well_formed(&error);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_strings(text in ".{0,256}", jsonish in "[{}\\[\\]\":,0-9a-z_ .-]{0,256}") {
            for payload in [&text, &jsonish] {
                for content_type in [None, JSON] {
                    if let Err(error) = decode(payload.as_bytes(), content_type, DEFAULT_MAX_MESSAGE_BYTES) {
                        assert_error_is_well_formed(&error);
                    }
                }
            }
        }

        /// Whatever value replaces a field of a valid batch, the batch decodes or the error
        /// names that field.
        #[test]
        fn a_bad_field_is_named_by_the_error(
            target in prop::sample::select(MUTATION_TARGETS),
            replacement in arb_json(),
        ) {
            let (pointer, path) = target;
            let mut batch = python_sdk_batch();
            *batch.pointer_mut(pointer).expect("target exists") = replacement.clone();
            match decode_value(&batch) {
                Ok(inbound) => prop_assert!(matches!(inbound, Inbound::Batch(_))),
                Err(error) => {
                    assert_error_is_well_formed(&error);
                    let message = error.to_string();
                    prop_assert!(
                        message.starts_with(path),
                        "replacing {} with {} gave {:?}", pointer, replacement, message
                    );
                }
            }
        }

        #[test]
        fn custom_events_roundtrip(
            mpid in any::<i64>().prop_filter("0 is no mpid", |m| *m != 0),
            mpid_as_string in any::<bool>(),
            batch_timestamp in prop::option::of(0..4_102_444_800_000_i64),
            events in prop::collection::vec(gen_event(), 0..8),
        ) {
            let wire_events: Vec<Value> = events
                .iter()
                .map(|event| {
                    let attributes: Map<String, Value> = event
                        .attributes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.json()))
                        .collect();
                    json!({
                        "event_type": "custom_event",
                        "data": {
                            "event_name": event.name,
                            "custom_event_type": event.custom_type,
                            "timestamp_unixtime_ms": event.timestamp,
                            "custom_attributes": attributes,
                            "event_id": null,
                            "source_message_id": null,
                            "session_id": null,
                            "location": null,
                            "device_current_state": null,
                            "custom_flags": null
                        }
                    })
                })
                .collect();
            let mpid_json = if mpid_as_string { json!(mpid.to_string()) } else { json!(mpid) };
            let message = json!({
                "mpid": mpid_json,
                "environment": "production",
                "timestamp_unixtime_ms": batch_timestamp,
                "events": wire_events,
            });

            let batch = batch_of(&message);
            let expected: Vec<Event> = events
                .iter()
                .map(|event| Event {
                    timestamp_ms: event.timestamp.or(batch_timestamp).unwrap_or(0),
                    kind: EventKind::Custom {
                        name: event.name.clone(),
                        custom_type: event.custom_type.as_ref().map(|t| t.to_lowercase()),
                    },
                    attributes: event
                        .attributes
                        .iter()
                        .filter_map(|(k, v)| v.text().map(|text| (k.clone(), text)))
                        .collect(),
                })
                .collect();
            prop_assert_eq!(batch.mpid, mpid);
            prop_assert_eq!(batch.timestamp_ms, batch_timestamp);
            prop_assert_eq!(batch.events, expected);
        }
    }
}
