//! What both decoders share: the error a bad message gets and its reason codes, the limits,
//! field paths for error messages, and the normalisation both apply (commerce actions and
//! their bounds, attribution events, positions on the globe).

use crate::model::{Event, EventKind, GeoLocation, PRODUCT_ACTIONS};
use std::fmt;

/// Largest message [`super::decode`] accepts unless the caller configures another limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Longest excerpt of a bad value or a key quoted in an error message.
pub(super) const EXCERPT_CHARS: usize = 64;

/// Largest magnitude up to which every integer is exactly representable as an `f64`: an MPID
/// written as a float beyond it may already have been rounded to another profile's id.
pub(super) const MAX_EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

pub(super) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Most actions (product action, promotion action, impression lists) one commerce event may
/// carry: each becomes an event of its own.
pub(super) const MAX_COMMERCE_ACTIONS: usize = 100;
/// Most custom attribute entries a message may duplicate into the extra events of its
/// commerce events, so that a small message cannot decode into a huge one.
pub(super) const MAX_SPLIT_ATTRIBUTE_COPIES: usize = 100_000;

/// Checks a commerce event's split against the limits; `copies` counts the attribute entries
/// duplicated so far in the message.
pub(super) fn check_split(
    kinds: usize,
    attributes: usize,
    copies: &mut usize,
    path: &Path<'_>,
) -> Result<()> {
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
pub(super) const OTHER_EVENT_TYPES: &[&str] = &[
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

pub(super) type Result<T, E = DecodeError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Field paths and error helpers

/// Where a value sits in the message, built on the stack as the walk descends and only
/// rendered when an error names it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Path<'a> {
    Key(Option<&'a Path<'a>>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    pub(super) fn top(key: &'a str) -> Path<'a> {
        Path::Key(None, key)
    }

    pub(super) fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(Some(self), key)
    }

    pub(super) fn index(&'a self, index: usize) -> Path<'a> {
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

/// The first instant a batch, an event or an identity message may not carry (consent
/// timestamps are only shown, not checked): 2200-01-01T00:00:00Z. A timestamp before 1970
/// or after this is a producer's bug (year 1, year 9999, seconds read as microseconds): kept,
/// it would hold an event inside "the last N days" for centuries, or before every window and
/// every day of the history, so the message is refused like any other bad field.
pub(super) const TIMESTAMP_LIMIT_MS: i64 = 7_258_118_400_000;

/// `ms` when it is an instant from 1970-01-01 up to [`TIMESTAMP_LIMIT_MS`].
pub(super) fn check_timestamp(ms: i64, path: &Path<'_>) -> Result<i64> {
    if (0..TIMESTAMP_LIMIT_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(invalid(
            path,
            format!("{ms} is not a time from 1970-01-01 to 2199-12-31 in Unix milliseconds"),
        ))
    }
}

pub(super) fn invalid(path: &Path<'_>, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// `s` as a quoted, escaped excerpt of at most [`EXCERPT_CHARS`] characters.
pub(super) fn quote(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// `s` cut to at most [`EXCERPT_CHARS`] characters.
pub(super) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// In a batch an attribution partner sent (it carries `attribution_info`), custom events of no
/// particular type are attribution events (install, engagement, re-engagement...).
pub(super) fn mark_attribution_events(events: &mut [Event]) {
    for event in events {
        if let EventKind::Custom { custom_type, .. } = &mut event.kind {
            if custom_type.as_deref().is_none_or(|t| t == "other") {
                *custom_type = Some("attribution".to_string());
            }
        }
    }
}

/// A position on the globe; devices report sentinels such as -999 when they have none, which
/// are not worth losing the batch over: they are ignored.
pub(super) fn valid_position(latitude: f64, longitude: f64) -> Option<GeoLocation> {
    ((-90.0..=90.0).contains(&latitude) && (-180.0..=180.0).contains(&longitude)).then_some(
        GeoLocation {
            latitude: Some(latitude),
            longitude: Some(longitude),
            ..Default::default()
        },
    )
}

/// `view` or `click`, however the SDK spelled it (`View`, `promotion_click`...).
pub(super) fn promotion_action(raw: &str, path: &Path<'_>) -> Result<String> {
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
pub(super) fn product_action(raw: &str, path: &Path<'_>) -> Result<String> {
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
