//! Dead letters: a message no decoder accepts, kept (bounded) with where it came from until it
//! is published to the dead-letter topic.

use crate::model::TimestampMs;
use crate::row_format::{unframe, LETTER_FORMAT};
use serde::{Deserialize, Serialize};

/// A message that could not be processed, kept with the state until published to the
/// dead-letter topic, then deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Short label for metrics: oversized, malformed, missing_mpid, unknown_event_type, ...
    pub reason_code: String,
    /// What was wrong, naming the field.
    pub reason: String,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    /// The message, or its first [`DeadLetterLimits::prefix_bytes`] when it did not fit.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub at_ms: TimestampMs,
    /// Size of the message as consumed: more than `payload` when truncated.
    pub original_size: u64,
    pub truncated: bool,
}

/// How large a dead letter may be. The letter goes to a topic that refuses records over a
/// size (Kafka's `max.message.bytes`, librdkafka's `message.max.bytes`), while the message it
/// carries may be any size a producer managed to write: a letter that would not fit keeps a
/// prefix of the message, which with the topic, partition and offset headers is enough to
/// find and read the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// The largest record the dead-letter topic accepts, headers and key included.
    pub max_record_bytes: usize,
    /// What a letter that does not fit keeps of the message.
    pub prefix_bytes: usize,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            // librdkafka's default `message.max.bytes`, a little under Kafka's topic default.
            max_record_bytes: 1_000_000,
            prefix_bytes: 64 * 1024,
        }
    }
}

/// What a record's framing and the letter's fixed headers take beyond the key, payload,
/// topic and reason (a generous bound: Kafka's record overhead is under 100 bytes).
pub(super) const LETTER_FRAMING_BYTES: usize = 512;

impl DeadLetter {
    /// The letter of a message, holding the whole message when it fits `limits`, else its
    /// prefix.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topic: String,
        partition: i32,
        offset: i64,
        reason_code: String,
        reason: String,
        key: Option<Vec<u8>>,
        payload: &[u8],
        at_ms: TimestampMs,
        limits: DeadLetterLimits,
    ) -> DeadLetter {
        let mut letter = DeadLetter {
            topic,
            partition,
            offset,
            reason_code,
            reason,
            key,
            payload: Vec::new(),
            at_ms,
            original_size: payload.len() as u64,
            truncated: false,
        };
        let room = limits
            .max_record_bytes
            .saturating_sub(letter.record_bytes_without_payload());
        if payload.len() <= room {
            letter.payload = payload.to_vec();
        } else {
            letter.payload = payload[..limits.prefix_bytes.min(room).min(payload.len())].to_vec();
            letter.truncated = true;
        }
        letter
    }

    /// Bytes the letter's record takes but for its payload.
    pub fn record_bytes_without_payload(&self) -> usize {
        LETTER_FRAMING_BYTES
            + self.topic.len()
            + self.reason.len()
            + self.reason_code.len()
            + self.key.as_ref().map_or(0, Vec::len)
    }

    /// The same letter with at most `bytes` of its payload.
    pub fn cut_to(&self, bytes: usize) -> DeadLetter {
        if self.payload.len() <= bytes {
            return self.clone();
        }
        DeadLetter {
            payload: self.payload[..bytes].to_vec(),
            truncated: true,
            ..self.clone()
        }
    }

    /// The stored letter: [`LETTER_FORMAT`], then postcard.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![LETTER_FORMAT];
        bytes.extend(postcard::to_stdvec(self).expect("dead letter always serialises"));
        bytes
    }

    /// Reads a stored letter: [`LETTER_FORMAT`], then postcard of this version or of the one
    /// before `original_size` and `truncated`.
    pub(super) fn decode(bytes: &[u8]) -> Result<DeadLetter, String> {
        let body = unframe("dead letter", LETTER_FORMAT, bytes)?;
        DeadLetter::decode_body(body).map_err(|e| e.to_string())
    }

    /// Letters of the version before `original_size` and `truncated` held whole messages.
    fn decode_body(bytes: &[u8]) -> Result<DeadLetter, postcard::Error> {
        #[derive(Deserialize)]
        struct Untruncated {
            topic: String,
            partition: i32,
            offset: i64,
            reason_code: String,
            reason: String,
            key: Option<Vec<u8>>,
            payload: Vec<u8>,
            at_ms: TimestampMs,
        }
        postcard::from_bytes::<DeadLetter>(bytes).or_else(|error| {
            let old: Untruncated = postcard::from_bytes(bytes).map_err(|_| error)?;
            Ok(DeadLetter {
                original_size: old.payload.len() as u64,
                topic: old.topic,
                partition: old.partition,
                offset: old.offset,
                reason_code: old.reason_code,
                reason: old.reason,
                key: old.key,
                payload: old.payload,
                at_ms: old.at_ms,
                truncated: false,
            })
        })
    }
}
