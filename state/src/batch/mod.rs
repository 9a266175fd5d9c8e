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
//! Layout: this module picks the format and names a message of neither; `json` and
//! `protobuf` each decode one format into the same model; `shared` holds what both use (the
//! [`DecodeError`] and its reason codes, the limits, field paths, commerce and position
//! normalisation). Neither decoder imports the other, nor this module.
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

use crate::model::Inbound;
use audience_proto::v1 as pb;
use json::{decode_json, json_error, json_kind};
use prost::Message;
use protobuf::{decode_protobuf, from_envelope};
use serde_json::Value;
use shared::{Result, UTF8_BOM};

pub use shared::{DecodeError, DEFAULT_MAX_MESSAGE_BYTES};

mod json;
mod protobuf;
mod shared;
#[cfg(test)]
mod tests;

/// Decodes one Kafka message. `content_type` is the `content-type` header, if any.
pub fn decode(payload: &[u8], content_type: Option<&str>, max_bytes: usize) -> Result<Inbound> {
    decode_sourced(payload, content_type, max_bytes, &[]).map(|(inbound, _)| inbound)
}

/// [`decode`], with the message's source value, which inputs claim messages by (see
/// [`crate::inputs`]): in JSON, the scalar at `source_field` (a path of object fields, such as
/// `["context", "source"]`; empty: none); in the protobuf envelope, its `source` field.
/// Absent, null or empty: `None`.
pub fn decode_sourced(
    payload: &[u8],
    content_type: Option<&str>,
    max_bytes: usize,
    source_field: &[String],
) -> Result<(Inbound, Option<String>)> {
    if payload.len() > max_bytes {
        return Err(DecodeError::Oversized {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    match Format::detect(payload, content_type) {
        Format::Json => decode_json(payload, source_field),
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
        Format::JsonOrProtobuf => match decode_json(payload, source_field) {
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
