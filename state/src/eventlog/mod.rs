//! The per-profile event log: every event of the retention window, compactly encoded, so that
//! a definition created or changed today is computed as if it had existed before the first
//! event (backfill), and so that estimates, previews and replays read what really happened.
//!
//! Layout (see the table in `store.rs`):
//! - a profile's log is a list of sealed, immutable **chunks** (`seq` 0, 1, ...) and one
//!   **head** record: the open tail chunk, what each sealed chunk holds (events, bytes, times)
//!   and the counters of what was dropped. Appending rewrites only the head, never the sealed
//!   chunks. The tail is sealed at a size that grows with the log ([`EventLog::seal_at`]):
//!   a short log keeps its head short, a long one keeps its list of chunks short;
//! - names (event names, product actions, attribute keys, brands, categories...) are
//!   dictionary-coded per partition; values stay literal. The dictionary is bounded
//!   ([`MAX_DICTIONARY_CODES`], [`MAX_DICTIONARY_NAME_BYTES`]): past it, names are written
//!   inline, so no input can grow it without bound;
//! - times are zigzag varint deltas from the previous event of the chunk;
//! - each event starts with its time, its kind and its selector name, then the length of its
//!   body: a reader looking for some events skips the others without decoding them.
//!
//! - since format 2, the log holds every message that changed the profile (`message`): a
//!   header entry with the message's profile-level parts, then its events. Format 1 logged
//!   events alone; its chunks are still read (their events are "bare": the profile's facts
//!   record holds what they did to the profile).
//!
//! Invariants:
//! - messages and their events are kept in arrival order, the order the profile applied them:
//!   folding a log reproduces what streaming folded (calculated attributes keep the order of
//!   ties);
//! - a message never spans two chunks: the tail is sealed between messages;
//! - chunks leave oldest first: the first while its newest entry left retention (by whole UTC
//!   day, as the event history prunes), or while the log is over its bounds; a drop by the
//!   bounds is counted, never silent. What leaves is handed back ([`LogWrites`]) to be folded
//!   into the profile's base (its facts record) in the same batch, so the log always starts
//!   where the base ends;
//! - every change to a log is written in the same batch as the profile state it belongs to.
//!
//! Layout: `dictionary` (the names), `encode` and `decode` (the chunk format), `message` (the
//! message entries and reading a log as messages); this module keeps the log structure (head,
//! chunks, bounds, retention).

mod decode;
mod dictionary;
mod encode;
mod message;
#[cfg(test)]
mod tests;

pub use decode::*;
pub use dictionary::*;
use encode::*;
use message::encode_header;
pub use message::{
    for_each_stamped_event, read_units, LogUnit, LoggedMessage, MessageEvent, MessageParts,
};

use crate::model::{Event, TimestampMs, DAY_MS};
use serde::{Deserialize, Serialize};

/// Version byte of chunk and head records. 2: messages (header entries, event flags); logs of
/// format 1 (events only) are still read.
pub const LOG_FORMAT: u8 = 2;
const LOG_FORMAT_EVENTS_ONLY: u8 = 1;
/// The tail is sealed into a chunk once it holds [`EventLog::seal_at`] bytes: between these.
pub const MIN_SEAL_BYTES: usize = 512;
pub const MAX_SEAL_BYTES: usize = 8192;
/// About what one sealed chunk's summary costs in the head (postcard varints: seq, events,
/// bytes, and two times of 6 to 7 bytes each).
const CHUNK_META_BYTES: u64 = 18;

/// How much log a profile may keep. The oldest events go first when a bound is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_events: u32,
    pub max_bytes: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_events: 10_000,
            max_bytes: 1 << 20,
        }
    }
}
/// What one chunk holds, kept in the head so bounds and retention need no chunk read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub seq: u32,
    pub events: u32,
    pub bytes: u32,
    pub min_ms: TimestampMs,
    pub max_ms: TimestampMs,
}

impl ChunkMeta {
    /// Takes in one entry: an event, or a message header (`is_event` false), whose time counts
    /// for retention but which is no event for the bounds.
    fn take(&mut self, at: TimestampMs, bytes: usize, is_event: bool) {
        if self.bytes == 0 {
            self.min_ms = at;
            self.max_ms = at;
        }
        self.events += u32::from(is_event);
        self.bytes += bytes as u32;
        self.min_ms = self.min_ms.min(at);
        self.max_ms = self.max_ms.max(at);
    }
}

/// A profile's log head: the open tail, the sealed chunks' summaries and the counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventLog {
    /// Sealed chunks, oldest first.
    pub sealed: Vec<ChunkMeta>,
    pub next_seq: u32,
    /// Encoded events of the open chunk, and their summary (its `seq` is unused). As bytes:
    /// postcard writes them as a sequence of `u8` would be, one copy instead of a call each.
    #[serde(with = "serde_bytes")]
    pub tail: Vec<u8>,
    pub tail_meta: ChunkMeta,
    /// Time of the last event of the tail, the base of the next delta.
    pub tail_last_ms: TimestampMs,
    /// Events (and their bytes) dropped because the log was over its bounds, ever (the bytes
    /// of the message headers dropped with them included).
    pub dropped_events: u64,
    pub dropped_bytes: u64,
    #[serde(skip)]
    writes: LogWrites,
}

/// What changed in a log since the last [`EventLog::take_writes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWrites {
    pub head_changed: bool,
    /// Chunks sealed: (seq, record bytes).
    pub put_chunks: Vec<(u32, Vec<u8>)>,
    /// Chunks dropped.
    pub delete_chunks: Vec<u32>,
    /// Events dropped by the bounds by these writes.
    pub dropped_by_bounds: u64,
    /// Entries dropped from the open tail, as a chunk body (oldest first): after the chunks
    /// of `delete_chunks`, what the base takes in.
    pub dropped_tail: Vec<u8>,
}

impl LogWrites {
    /// Whether anything left the log: the base has to take it in.
    pub fn dropped_any(&self) -> bool {
        !self.delete_chunks.is_empty() || !self.dropped_tail.is_empty()
    }
}

/// Summary of a log for lookups and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub events: u64,
    pub bytes: u64,
    pub chunks: u32,
    pub oldest_ms: Option<TimestampMs>,
    pub newest_ms: Option<TimestampMs>,
    pub dropped_events: u64,
}

impl EventLog {
    pub fn events(&self) -> u64 {
        self.sealed.iter().map(|c| c.events as u64).sum::<u64>() + self.tail_meta.events as u64
    }

    pub fn bytes(&self) -> u64 {
        self.sealed.iter().map(|c| c.bytes as u64).sum::<u64>() + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.tail.is_empty()
    }

    /// The earliest time the log holds: before it, only what streaming kept is known.
    pub fn oldest_ms(&self) -> Option<TimestampMs> {
        let metas = self.sealed.iter().chain(Some(&self.tail_meta));
        metas.filter(|m| m.bytes > 0).map(|m| m.min_ms).min()
    }

    pub fn stats(&self) -> LogStats {
        let metas = || self.sealed.iter().chain(Some(&self.tail_meta));
        LogStats {
            events: self.events(),
            bytes: self.bytes(),
            chunks: self.sealed.len() as u32,
            oldest_ms: self.oldest_ms(),
            newest_ms: metas().filter(|m| m.bytes > 0).map(|m| m.max_ms).max(),
            dropped_events: self.dropped_events,
        }
    }

    /// Appends a message as the profile applied it: its header, then its events. The tail is
    /// sealed after it once full, so a message never spans two chunks.
    pub fn append_message(&mut self, dict: &mut Dictionary, message: &LoggedMessage<'_>) {
        let mut header = Vec::with_capacity(32);
        encode_header(&mut header, dict, message);
        self.push_entry(message.now, false, |out, delta| {
            put_varint(out, zigzag(delta));
            out.push(KIND_MESSAGE);
            out.push(0);
            put_bytes(out, &header);
        });
        for e in &message.events {
            let flags = if e.derived { FLAG_DERIVED } else { 0 }
                | if e.outside_tier { FLAG_OUTSIDE_TIER } else { 0 };
            self.push_entry(e.at, true, |out, delta| {
                encode_event(out, dict, delta, &e.event, flags)
            });
        }
        self.seal_if_full();
    }

    /// Seals the tail once it reaches [`EventLog::seal_at`]; below the least size, without
    /// summing the sealed chunks (every append asks).
    fn seal_if_full(&mut self) {
        if self.tail.len() >= MIN_SEAL_BYTES && self.tail.len() >= self.seal_at() {
            self.seal();
        }
    }

    /// The tail size at which it is sealed. Every append rewrites the head: on average half a
    /// tail of `T` bytes, plus a summary per sealed chunk, `CHUNK_META_BYTES` × `S` / `T` for
    /// `S` sealed bytes. The sum is least at `T` = √(2 × `CHUNK_META_BYTES` × `S`): about 330
    /// bytes for a log of 3 KiB, 1,900 for 100 KiB, 6,100 for 1 MiB. That holds for a log in
    /// its steady state (retention drops chunks as new ones come, all sized for about the same
    /// `S`); a log growing from nothing keeps its first, small chunks until they age out.
    /// Measured in the steady benchmark (300,000 short logs): 10 to 14% fewer bytes written
    /// per batch than a fixed 2 KiB. Readers do not depend on it: chunks of any size read the
    /// same.
    pub fn seal_at(&self) -> usize {
        let sealed: u64 = self.sealed.iter().map(|c| c.bytes as u64).sum();
        let best = (2 * CHUNK_META_BYTES * sealed).isqrt() as usize;
        best.clamp(MIN_SEAL_BYTES, MAX_SEAL_BYTES)
    }

    /// Appends one event outside any message, as format 1 logged every event: for tools and
    /// tests that build logs of events alone. Folding such a log reads the event's effects
    /// on event criteria only.
    pub fn append(&mut self, dict: &mut Dictionary, at: TimestampMs, event: &Event) {
        self.push_entry(at, true, |out, delta| {
            encode_event(out, dict, delta, event, 0)
        });
        self.seal_if_full();
    }

    fn push_entry(
        &mut self,
        at: TimestampMs,
        is_event: bool,
        write: impl FnOnce(&mut Vec<u8>, i64),
    ) {
        let before = self.tail.len();
        let prev = if self.tail.is_empty() {
            0
        } else {
            self.tail_last_ms
        };
        write(&mut self.tail, at.wrapping_sub(prev));
        self.tail_meta.take(at, self.tail.len() - before, is_event);
        self.tail_last_ms = at;
        self.writes.head_changed = true;
    }

    fn seal(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let mut record = Vec::with_capacity(self.tail.len() + 1);
        record.push(LOG_FORMAT);
        record.extend_from_slice(&self.tail);
        let meta = ChunkMeta {
            seq: self.next_seq,
            bytes: self.tail.len() as u32,
            ..self.tail_meta
        };
        self.sealed.push(meta);
        self.writes.put_chunks.push((meta.seq, record));
        self.next_seq = self.next_seq.wrapping_add(1);
        self.tail.clear();
        self.tail_meta = ChunkMeta::default();
        self.tail_last_ms = 0;
        self.writes.head_changed = true;
    }

    /// Drops, oldest first, what left retention (`cutoff`: now minus retention; whole UTC
    /// days, as the event history) and what is over the bounds. Only a prefix of the log
    /// leaves, so the base takes messages in the order they came.
    pub fn enforce(&mut self, cutoff: TimestampMs, limits: LogLimits) {
        let aged = |m: &ChunkMeta| (m.max_ms.div_euclid(DAY_MS) + 1) * DAY_MS <= cutoff;
        let mut deleted = Vec::new();
        while self.sealed.first().is_some_and(aged) {
            deleted.push(self.sealed.remove(0).seq);
        }
        if self.sealed.is_empty() && !self.tail.is_empty() && aged(&self.tail_meta) {
            self.writes.dropped_tail.append(&mut self.tail);
            self.tail_meta = ChunkMeta::default();
            self.tail_last_ms = 0;
            self.writes.head_changed = true;
        }
        while (self.events() > limits.max_events as u64 || self.bytes() > limits.max_bytes as u64)
            && !self.sealed.is_empty()
        {
            let oldest = self.sealed.remove(0);
            deleted.push(oldest.seq);
            self.count_drop(oldest.events as u64, oldest.bytes as u64);
        }
        if self.events() > limits.max_events as u64 || self.bytes() > limits.max_bytes as u64 {
            self.trim_tail(limits);
        }
        if !deleted.is_empty() {
            self.writes.head_changed = true;
            self.writes.delete_chunks.extend(deleted);
        }
    }

    fn count_drop(&mut self, events: u64, bytes: u64) {
        self.dropped_events += events;
        self.dropped_bytes += bytes;
        self.writes.dropped_by_bounds += events;
    }

    /// Bounds smaller than one chunk: drops the tail's oldest messages (or format 1 events)
    /// one by one, whole.
    fn trim_tail(&mut self, limits: LogLimits) {
        let tail = std::mem::take(&mut self.tail);
        let units = match message::group_units(&tail) {
            Ok(units) => units,
            Err(_) => {
                self.tail = tail;
                return;
            }
        };
        // (events, bytes) of each unit.
        let sizes: Vec<(u64, u64)> = units
            .iter()
            .map(|u| {
                let events = u.iter().filter(|e| e.tag() != KIND_MESSAGE).count();
                let bytes = u.iter().map(|e| e.record.len()).sum::<usize>();
                (events as u64, bytes as u64)
            })
            .collect();
        let (mut events, mut bytes) = sizes
            .iter()
            .fold((0, 0), |(e, b), (ue, ub)| (e + ue, b + ub));
        let mut cut = 0;
        while cut < units.len()
            && (events > limits.max_events as u64 || bytes > limits.max_bytes as u64)
        {
            events -= sizes[cut].0;
            bytes -= sizes[cut].1;
            cut += 1;
        }
        let (dropped, dropped_bytes) = sizes[..cut]
            .iter()
            .fold((0, 0), |(e, b), (ue, ub)| (e + ue, b + ub));
        // The dropped units are the tail's first: their time deltas read from 0 as stored.
        self.writes
            .dropped_tail
            .extend_from_slice(&tail[..dropped_bytes as usize]);
        self.tail_meta = ChunkMeta::default();
        self.tail_last_ms = 0;
        for entry in units[cut..].iter().flatten() {
            // Re-encode the time delta against the new predecessor; the rest is unchanged.
            let is_event = entry.tag() != KIND_MESSAGE;
            self.push_entry(entry.at, is_event, |out, delta| {
                let mut cursor = Cursor::new(entry.record);
                let _ = cursor.varint();
                put_varint(out, zigzag(delta));
                out.extend_from_slice(&entry.record[cursor.pos..]);
            });
        }
        self.count_drop(dropped, dropped_bytes);
        self.writes.head_changed = true;
    }

    /// The writes owed since the last call.
    pub fn take_writes(&mut self) -> LogWrites {
        std::mem::take(&mut self.writes)
    }

    pub fn has_writes(&self) -> bool {
        self.writes.head_changed
            || !self.writes.put_chunks.is_empty()
            || !self.writes.delete_chunks.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![LOG_FORMAT];
        out.extend(postcard::to_stdvec(self).expect("a log head always serialises"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.split_first() {
            // Format 1's head is format 2's; only its entries differ.
            Some((&LOG_FORMAT, rest)) | Some((&LOG_FORMAT_EVENTS_ONLY, rest)) => {
                postcard::from_bytes(rest).map_err(|e| e.to_string())
            }
            Some((v, _)) => Err(format!("unknown event log format {v}")),
            None => Err("empty event log head".to_string()),
        }
    }
}

/// The body of a sealed chunk record (after its format byte).
pub fn chunk_body(record: &[u8]) -> Result<&[u8], String> {
    match record.split_first() {
        Some((&LOG_FORMAT, rest)) | Some((&LOG_FORMAT_EVENTS_ONLY, rest)) => Ok(rest),
        Some((v, _)) => Err(format!("unknown event log chunk format {v}")),
        None => Err("empty event log chunk".to_string()),
    }
}
