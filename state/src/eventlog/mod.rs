//! The per-profile event log: every event of the retention window, compactly encoded, so that
//! a definition created or changed today is computed as if it had existed before the first
//! event (backfill), and so that estimates, previews and replays read what really happened.
//!
//! Layout (see the table in `store.rs`):
//! - a profile's log is a list of sealed, immutable **chunks** (`seq` 0, 1, ...) and one
//!   **head** record: the open tail chunk, what each sealed chunk holds (events, bytes, times)
//!   and the counters of what was dropped. Appending rewrites only the head (at most
//!   [`SEAL_BYTES`] of tail), never the sealed chunks;
//! - names (event names, product actions, attribute keys, brands, categories...) are
//!   dictionary-coded per partition; values stay literal. The dictionary is bounded
//!   ([`MAX_DICTIONARY_CODES`], [`MAX_DICTIONARY_NAME_BYTES`]): past it, names are written
//!   inline, so no input can grow it without bound;
//! - times are zigzag varint deltas from the previous event of the chunk;
//! - each event starts with its time, its kind and its selector name, then the length of its
//!   body: a reader looking for some events skips the others without decoding them.
//!
//! Invariants:
//! - events are kept in arrival order, the order the profile applied them: replaying a log
//!   reproduces what streaming folded (calculated attributes keep the order of ties);
//! - a sealed chunk is dropped when its newest event left retention (by whole UTC day, as the
//!   event history prunes), or, oldest first, when the log is over its bounds; a drop by the
//!   bounds is counted, never silent;
//! - every change to a log is written in the same batch as the profile state it belongs to.
//!
//! Layout: `dictionary` (the names), `encode` and `decode` (the chunk format); this module
//! keeps the log structure (head, chunks, bounds, retention).

mod decode;
mod dictionary;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::*;
pub use dictionary::*;
use encode::*;

use crate::model::{Event, TimestampMs, DAY_MS};
use serde::{Deserialize, Serialize};

/// Version byte of chunk and head records.
pub const LOG_FORMAT: u8 = 1;
/// The tail is sealed into a chunk once it holds this many bytes.
pub const SEAL_BYTES: usize = 2048;

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
    fn take(&mut self, at: TimestampMs, bytes: usize) {
        if self.events == 0 {
            self.min_ms = at;
            self.max_ms = at;
        }
        self.events += 1;
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
    /// Encoded events of the open chunk, and their summary (its `seq` is unused).
    pub tail: Vec<u8>,
    pub tail_meta: ChunkMeta,
    /// Time of the last event of the tail, the base of the next delta.
    pub tail_last_ms: TimestampMs,
    /// Events (and their bytes) dropped because the log was over its bounds, ever.
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
        self.sealed.is_empty() && self.tail_meta.events == 0
    }

    /// The earliest event time the log holds: before it, only what streaming kept is known.
    pub fn oldest_ms(&self) -> Option<TimestampMs> {
        let metas = self.sealed.iter().chain(Some(&self.tail_meta));
        metas.filter(|m| m.events > 0).map(|m| m.min_ms).min()
    }

    pub fn stats(&self) -> LogStats {
        let metas = || self.sealed.iter().chain(Some(&self.tail_meta));
        LogStats {
            events: self.events(),
            bytes: self.bytes(),
            chunks: self.sealed.len() as u32,
            oldest_ms: self.oldest_ms(),
            newest_ms: metas().filter(|m| m.events > 0).map(|m| m.max_ms).max(),
            dropped_events: self.dropped_events,
        }
    }

    /// Appends one event, as the profile applied it at time `at`.
    pub fn append(&mut self, dict: &mut Dictionary, at: TimestampMs, event: &Event) {
        let before = self.tail.len();
        let prev = if self.tail_meta.events == 0 {
            0
        } else {
            self.tail_last_ms
        };
        encode_event(&mut self.tail, dict, at.wrapping_sub(prev), event);
        self.tail_meta.take(at, self.tail.len() - before);
        self.tail_last_ms = at;
        self.writes.head_changed = true;
        if self.tail.len() >= SEAL_BYTES {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if self.tail_meta.events == 0 {
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

    /// Drops what left retention (`cutoff`: now minus retention; whole UTC days, as the event
    /// history) and, oldest first, what is over the bounds.
    pub fn enforce(&mut self, cutoff: TimestampMs, limits: LogLimits) {
        let aged = |m: &ChunkMeta| (m.max_ms.div_euclid(DAY_MS) + 1) * DAY_MS <= cutoff;
        let mut deleted = Vec::new();
        self.sealed.retain(|m| {
            let keep = !aged(m);
            if !keep {
                deleted.push(m.seq);
            }
            keep
        });
        if self.tail_meta.events > 0 && aged(&self.tail_meta) {
            self.tail.clear();
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

    /// Bounds smaller than one chunk: drops the tail's oldest events one by one.
    fn trim_tail(&mut self, limits: LogLimits) {
        let mut kept: Vec<(TimestampMs, Vec<u8>)> = ChunkReader::new(&self.tail)
            .map(|r| r.map(|e| (e.at, e.record.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let mut dropped = 0u64;
        let mut dropped_bytes = 0u64;
        let size =
            |kept: &[(TimestampMs, Vec<u8>)]| kept.iter().map(|(_, r)| r.len()).sum::<usize>();
        while !kept.is_empty()
            && (kept.len() as u64 > limits.max_events as u64
                || size(&kept) as u64 > limits.max_bytes as u64)
        {
            let (_, r) = kept.remove(0);
            dropped += 1;
            dropped_bytes += r.len() as u64;
        }
        self.tail.clear();
        self.tail_meta = ChunkMeta::default();
        self.tail_last_ms = 0;
        for (at, record) in kept {
            // Re-encode the time delta against the new predecessor; the rest is unchanged.
            let prev = if self.tail_meta.events == 0 {
                0
            } else {
                self.tail_last_ms
            };
            let before = self.tail.len();
            let mut cursor = Cursor::new(&record);
            let _ = cursor.varint();
            put_varint(&mut self.tail, zigzag(at.wrapping_sub(prev)));
            self.tail.extend_from_slice(&record[cursor.pos..]);
            self.tail_meta.take(at, self.tail.len() - before);
            self.tail_last_ms = at;
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
            Some((&LOG_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown event log format {v}")),
            None => Err("empty event log head".to_string()),
        }
    }
}

/// The body of a sealed chunk record (after its format byte).
pub fn chunk_body(record: &[u8]) -> Result<&[u8], String> {
    match record.split_first() {
        Some((&LOG_FORMAT, rest)) => Ok(rest),
        Some((v, _)) => Err(format!("unknown event log chunk format {v}")),
        None => Err("empty event log chunk".to_string()),
    }
}
