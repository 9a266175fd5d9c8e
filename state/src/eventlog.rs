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

use crate::model::{
    AttrValue, Event, EventKind, IdentityChange, Product, Promotion, TimestampMs, DAY_MS,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Version byte of chunk and head records.
pub const LOG_FORMAT: u8 = 1;
/// The tail is sealed into a chunk once it holds this many bytes.
pub const SEAL_BYTES: usize = 2048;
/// Codes per partition dictionary; names beyond are written inline.
pub const MAX_DICTIONARY_CODES: u32 = 1 << 16;
/// Longer names are written inline: they are values more than names.
pub const MAX_DICTIONARY_NAME_BYTES: usize = 64;

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

/// A partition's dictionary of names. Codes are never reused nor changed: a chunk written
/// with a code reads the same name for ever.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    codes: HashMap<String, u32>,
    names: Vec<String>,
    /// Codes assigned since the last [`Dictionary::take_new`], to be written.
    new_from: usize,
}

impl Dictionary {
    /// A dictionary from its stored entries (code, name), in any order.
    pub fn from_entries(entries: impl IntoIterator<Item = (u32, String)>) -> Result<Self, String> {
        let mut sorted: Vec<(u32, String)> = entries.into_iter().collect();
        sorted.sort_by_key(|(c, _)| *c);
        let mut d = Dictionary::default();
        for (code, name) in sorted {
            if code as usize != d.names.len() {
                return Err(format!(
                    "dictionary code {code} follows {} codes: codes must be dense",
                    d.names.len()
                ));
            }
            d.codes.insert(name.clone(), code);
            d.names.push(name);
        }
        d.new_from = d.names.len();
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.names.get(code as usize).map(String::as_str)
    }

    pub fn code_of(&self, name: &str) -> Option<u32> {
        self.codes.get(name).copied()
    }

    /// The code of `name`, assigning one if there is room.
    fn intern(&mut self, name: &str) -> Option<u32> {
        if let Some(&c) = self.codes.get(name) {
            return Some(c);
        }
        if name.len() > MAX_DICTIONARY_NAME_BYTES || self.names.len() as u32 >= MAX_DICTIONARY_CODES
        {
            return None;
        }
        let code = self.names.len() as u32;
        self.codes.insert(name.to_string(), code);
        self.names.push(name.to_string());
        Some(code)
    }

    /// The entries assigned since the last call, to write with the chunks that use them.
    pub fn take_new(&mut self) -> Vec<(u32, String)> {
        let out = self.names[self.new_from..]
            .iter()
            .enumerate()
            .map(|(i, n)| ((self.new_from + i) as u32, n.clone()))
            .collect();
        self.new_from = self.names.len();
        out
    }

    /// Forgets the entries not yet taken (their write failed).
    pub fn rollback(&mut self) {
        for name in self.names.drain(self.new_from..) {
            self.codes.remove(&name);
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

// ---- encoding ----

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A name: 0 and the bytes inline, or its dictionary code plus one.
fn put_name(out: &mut Vec<u8>, dict: &mut Dictionary, name: &str) {
    match dict.intern(name) {
        Some(code) => put_varint(out, code as u64 + 1),
        None => {
            put_varint(out, 0);
            put_bytes(out, name.as_bytes());
        }
    }
}

fn put_opt_name(out: &mut Vec<u8>, dict: &mut Dictionary, name: &Option<String>) {
    match name {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            put_name(out, dict, n);
        }
    }
}

fn put_opt_text(out: &mut Vec<u8>, text: &Option<String>) {
    match text {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_bytes(out, t.as_bytes());
        }
    }
}

/// Numbers: integral ones as zigzag varints (most prices in cents, quantities, totals), the
/// others as 8 bytes.
fn put_opt_number(out: &mut Vec<u8>, n: Option<f64>) {
    match n {
        None => out.push(0),
        Some(n)
            if n.fract() == 0.0
                && n.abs() < (1u64 << 53) as f64
                && !(n == 0.0 && n.is_sign_negative()) =>
        {
            out.push(1);
            put_varint(out, zigzag(n as i64));
        }
        Some(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

const KIND_CUSTOM: u8 = 1;
const KIND_SCREEN_VIEW: u8 = 2;
const KIND_COMMERCE: u8 = 3;
const KIND_PROMOTION: u8 = 4;
const KIND_IMPRESSION: u8 = 5;
const KIND_SESSION_START: u8 = 6;
const KIND_SESSION_END: u8 = 7;
const KIND_CRASH_REPORT: u8 = 8;
const KIND_FIRST_RUN: u8 = 9;
const KIND_STATE_TRANSITION: u8 = 10;
const KIND_ATTRIBUTE_CHANGE: u8 = 11;
const KIND_IDENTITY_CHANGE: u8 = 12;
const KIND_OPT_OUT: u8 = 13;
const KIND_UNINSTALL: u8 = 14;
const KIND_OTHER: u8 = 15;

/// The event type a kind tag stands for (`Other` carries its own, as its selector).
fn tag_event_type(tag: u8) -> Option<&'static str> {
    Some(match tag {
        KIND_CUSTOM => "custom_event",
        KIND_SCREEN_VIEW => "screen_view",
        KIND_COMMERCE | KIND_PROMOTION | KIND_IMPRESSION => "commerce_event",
        KIND_SESSION_START => "session_start",
        KIND_SESSION_END => "session_end",
        KIND_CRASH_REPORT => "crash_report",
        KIND_FIRST_RUN => "first_run",
        KIND_STATE_TRANSITION => "application_state_transition",
        KIND_ATTRIBUTE_CHANGE => "user_attribute_change",
        KIND_IDENTITY_CHANGE => "user_identity_change",
        KIND_OPT_OUT => "opt_out",
        KIND_UNINSTALL => "uninstall",
        _ => return None,
    })
}

/// Kind tag and the name the selector is made of (as the producer spelled it).
fn head_of(kind: &EventKind) -> (u8, Option<&str>) {
    match kind {
        EventKind::Custom { name, .. } => (KIND_CUSTOM, Some(name)),
        EventKind::ScreenView { name } => (KIND_SCREEN_VIEW, Some(name)),
        EventKind::Commerce { product_action, .. } => {
            (KIND_COMMERCE, Some(product_action.as_deref().unwrap_or("")))
        }
        EventKind::Promotion { action, .. } => (KIND_PROMOTION, Some(action)),
        EventKind::Impression { list, .. } => (KIND_IMPRESSION, list.as_deref()),
        EventKind::SessionStart => (KIND_SESSION_START, None),
        EventKind::SessionEnd { .. } => (KIND_SESSION_END, None),
        EventKind::CrashReport => (KIND_CRASH_REPORT, None),
        EventKind::FirstRun => (KIND_FIRST_RUN, None),
        EventKind::ApplicationStateTransition { .. } => (KIND_STATE_TRANSITION, None),
        EventKind::UserAttributeChange { .. } => (KIND_ATTRIBUTE_CHANGE, None),
        EventKind::UserIdentityChange(_) => (KIND_IDENTITY_CHANGE, None),
        EventKind::OptOut { .. } => (KIND_OPT_OUT, None),
        EventKind::Uninstall => (KIND_UNINSTALL, None),
        EventKind::Other { event_type } => (KIND_OTHER, Some(event_type)),
    }
}

fn put_products(out: &mut Vec<u8>, dict: &mut Dictionary, products: &[Product]) {
    put_varint(out, products.len() as u64);
    for p in products {
        put_opt_text(out, &p.id);
        put_opt_text(out, &p.name);
        put_opt_name(out, dict, &p.brand);
        put_opt_name(out, dict, &p.category);
        put_opt_name(out, dict, &p.variant);
        put_opt_number(out, p.price);
        put_opt_number(out, p.quantity);
    }
}

fn put_attr_value(out: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::String(s) => {
            out.push(0);
            put_bytes(out, s.as_bytes());
        }
        AttrValue::Number(n) => {
            out.push(1);
            put_opt_number(out, Some(*n));
        }
        AttrValue::Bool(b) => out.push(if *b { 3 } else { 2 }),
        AttrValue::Date(ms) => {
            out.push(4);
            put_varint(out, zigzag(*ms));
        }
        AttrValue::List(items) => {
            out.push(5);
            put_varint(out, items.len() as u64);
            for i in items {
                put_bytes(out, i.as_bytes());
            }
        }
        AttrValue::Null => out.push(6),
    }
}

fn encode_event(out: &mut Vec<u8>, dict: &mut Dictionary, delta: i64, event: &Event) {
    put_varint(out, zigzag(delta));
    let (tag, name) = head_of(&event.kind);
    out.push(tag);
    match name {
        Some(n) => {
            out.push(1);
            put_name(out, dict, n);
        }
        None => out.push(0),
    }
    let mut body = Vec::with_capacity(32);
    match &event.kind {
        EventKind::Custom { custom_type, .. } => put_opt_name(&mut body, dict, custom_type),
        EventKind::Commerce {
            products,
            total_amount,
            transaction_id,
            ..
        } => {
            put_products(&mut body, dict, products);
            put_opt_number(&mut body, *total_amount);
            put_opt_text(&mut body, transaction_id);
        }
        EventKind::Promotion { promotions, .. } => {
            put_varint(&mut body, promotions.len() as u64);
            for p in promotions {
                put_opt_text(&mut body, &p.id);
                put_opt_text(&mut body, &p.name);
                put_opt_name(&mut body, dict, &p.creative);
                put_opt_name(&mut body, dict, &p.position);
            }
        }
        EventKind::Impression { products, .. } => put_products(&mut body, dict, products),
        EventKind::SessionEnd { duration_ms } => match duration_ms {
            None => body.push(0),
            Some(d) => {
                body.push(1);
                put_varint(&mut body, zigzag(*d));
            }
        },
        EventKind::ApplicationStateTransition {
            transition,
            is_upgrade,
        } => {
            put_opt_name(&mut body, dict, transition);
            body.push(*is_upgrade as u8);
        }
        EventKind::UserAttributeChange {
            name,
            new_value,
            deleted,
        } => {
            put_name(&mut body, dict, name);
            match new_value {
                None => body.push(0),
                Some(v) => {
                    body.push(1);
                    put_attr_value(&mut body, v);
                }
            }
            body.push(*deleted as u8);
        }
        EventKind::UserIdentityChange(change) => {
            put_name(&mut body, dict, &change.identity_type);
            put_opt_text(&mut body, &change.old_value);
            put_opt_text(&mut body, &change.new_value);
        }
        EventKind::OptOut { opted_out } => body.push(*opted_out as u8),
        EventKind::ScreenView { .. }
        | EventKind::SessionStart
        | EventKind::CrashReport
        | EventKind::FirstRun
        | EventKind::Uninstall
        | EventKind::Other { .. } => {}
    }
    put_varint(&mut body, event.attributes.len() as u64);
    for (k, v) in &event.attributes {
        put_name(&mut body, dict, k);
        put_bytes(&mut body, v.as_bytes());
    }
    put_bytes(out, &body);
}

// ---- decoding ----

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Decoded<T> = Result<T, String>;

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn byte(&mut self) -> Decoded<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("event log ends inside a record at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Decoded<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint too long at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("event log ends inside a field at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes_field(&mut self) -> Decoded<&'a [u8]> {
        let n = self.varint()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Decoded<String> {
        String::from_utf8(self.bytes_field()?.to_vec())
            .map_err(|_| "event log text is not utf-8".into())
    }

    fn name_ref(&mut self) -> Decoded<NameRef<'a>> {
        match self.varint()? {
            0 => Ok(NameRef::Inline(
                std::str::from_utf8(self.bytes_field()?)
                    .map_err(|_| "event log name is not utf-8")?,
            )),
            c => Ok(NameRef::Code((c - 1) as u32)),
        }
    }

    fn name(&mut self, dict: &Dictionary) -> Decoded<String> {
        self.name_ref()?.resolve(dict).map(str::to_string)
    }

    fn opt_name(&mut self, dict: &Dictionary) -> Decoded<Option<String>> {
        match self.byte()? {
            0 => Ok(None),
            _ => self.name(dict).map(Some),
        }
    }

    fn opt_text(&mut self) -> Decoded<Option<String>> {
        match self.byte()? {
            0 => Ok(None),
            _ => self.text().map(Some),
        }
    }

    fn opt_number(&mut self) -> Decoded<Option<f64>> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(unzigzag(self.varint()?) as f64)),
            _ => {
                let b = self.take(8)?;
                Ok(Some(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
            }
        }
    }

    fn products(&mut self, dict: &Dictionary) -> Decoded<Vec<Product>> {
        let n = self.varint()? as usize;
        let mut out = Vec::with_capacity(n.min(128));
        for _ in 0..n {
            out.push(Product {
                id: self.opt_text()?,
                name: self.opt_text()?,
                brand: self.opt_name(dict)?,
                category: self.opt_name(dict)?,
                variant: self.opt_name(dict)?,
                price: self.opt_number()?,
                quantity: self.opt_number()?,
            });
        }
        Ok(out)
    }

    fn attr_value(&mut self) -> Decoded<AttrValue> {
        Ok(match self.byte()? {
            0 => AttrValue::String(self.text()?),
            1 => AttrValue::Number(self.opt_number()?.unwrap_or_default()),
            2 => AttrValue::Bool(false),
            3 => AttrValue::Bool(true),
            4 => AttrValue::Date(unzigzag(self.varint()?)),
            5 => {
                let n = self.varint()? as usize;
                let mut items = Vec::with_capacity(n.min(128));
                for _ in 0..n {
                    items.push(self.text()?);
                }
                AttrValue::List(items)
            }
            _ => AttrValue::Null,
        })
    }
}

/// A name as written: a dictionary code or inline bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameRef<'a> {
    Code(u32),
    Inline(&'a str),
}

impl<'a> NameRef<'a> {
    pub fn resolve<'d>(self, dict: &'d Dictionary) -> Decoded<&'d str>
    where
        'a: 'd,
    {
        match self {
            NameRef::Inline(s) => Ok(s),
            NameRef::Code(c) => dict
                .name(c)
                .ok_or_else(|| format!("event log names code {c}, which the dictionary lacks")),
        }
    }
}

/// One logged event, decoded up to its selector: the body is read only on demand.
#[derive(Debug, Clone, Copy)]
pub struct LoggedEvent<'a> {
    pub at: TimestampMs,
    tag: u8,
    name: Option<NameRef<'a>>,
    body: &'a [u8],
    /// The whole record (time delta included).
    record: &'a [u8],
}

impl<'a> LoggedEvent<'a> {
    /// The event's type and selector name (lowercased), as criteria select events.
    pub fn selector(&self, dict: &Dictionary) -> Decoded<(String, String)> {
        let name = match self.name {
            Some(n) => n.resolve(dict)?.to_lowercase(),
            None => String::new(),
        };
        Ok(match self.tag {
            KIND_OTHER => (name, String::new()),
            KIND_PROMOTION => ("commerce_event".into(), format!("promotion_{name}")),
            KIND_IMPRESSION => ("commerce_event".into(), crate::model::IMPRESSION.into()),
            tag => {
                let event_type = tag_event_type(tag)
                    .ok_or_else(|| format!("unknown event kind {tag} in the event log"))?;
                let name = match tag {
                    KIND_CUSTOM | KIND_SCREEN_VIEW | KIND_COMMERCE => name,
                    _ => String::new(),
                };
                (event_type.into(), name)
            }
        })
    }

    /// A key that identifies the selector without resolving names: for memoising decisions.
    pub fn selector_key(&self) -> (u8, Option<NameRef<'a>>) {
        (self.tag, self.name)
    }

    /// The whole event.
    pub fn decode(&self, dict: &Dictionary) -> Decoded<Event> {
        let name = |n: Option<NameRef<'a>>| -> Decoded<Option<String>> {
            n.map(|n| n.resolve(dict).map(str::to_string)).transpose()
        };
        let mut c = Cursor::new(self.body);
        let kind = match self.tag {
            KIND_CUSTOM => EventKind::Custom {
                name: name(self.name)?.unwrap_or_default(),
                custom_type: c.opt_name(dict)?,
            },
            KIND_SCREEN_VIEW => EventKind::ScreenView {
                name: name(self.name)?.unwrap_or_default(),
            },
            KIND_COMMERCE => {
                let action = name(self.name)?.unwrap_or_default();
                EventKind::Commerce {
                    product_action: Some(action).filter(|a| !a.is_empty()),
                    products: c.products(dict)?,
                    total_amount: c.opt_number()?,
                    transaction_id: c.opt_text()?,
                }
            }
            KIND_PROMOTION => {
                let action = name(self.name)?.unwrap_or_default();
                let n = c.varint()? as usize;
                let mut promotions = Vec::with_capacity(n.min(128));
                for _ in 0..n {
                    promotions.push(Promotion {
                        id: c.opt_text()?,
                        name: c.opt_text()?,
                        creative: c.opt_name(dict)?,
                        position: c.opt_name(dict)?,
                    });
                }
                EventKind::Promotion { action, promotions }
            }
            KIND_IMPRESSION => EventKind::Impression {
                list: name(self.name)?,
                products: c.products(dict)?,
            },
            KIND_SESSION_START => EventKind::SessionStart,
            KIND_SESSION_END => EventKind::SessionEnd {
                duration_ms: match c.byte()? {
                    0 => None,
                    _ => Some(unzigzag(c.varint()?)),
                },
            },
            KIND_CRASH_REPORT => EventKind::CrashReport,
            KIND_FIRST_RUN => EventKind::FirstRun,
            KIND_STATE_TRANSITION => EventKind::ApplicationStateTransition {
                transition: c.opt_name(dict)?,
                is_upgrade: c.byte()? != 0,
            },
            KIND_ATTRIBUTE_CHANGE => {
                let attr = c.name(dict)?;
                let new_value = match c.byte()? {
                    0 => None,
                    _ => Some(c.attr_value()?),
                };
                EventKind::UserAttributeChange {
                    name: attr,
                    new_value,
                    deleted: c.byte()? != 0,
                }
            }
            KIND_IDENTITY_CHANGE => EventKind::UserIdentityChange(IdentityChange {
                identity_type: c.name(dict)?,
                old_value: c.opt_text()?,
                new_value: c.opt_text()?,
            }),
            KIND_OPT_OUT => EventKind::OptOut {
                opted_out: c.byte()? != 0,
            },
            KIND_UNINSTALL => EventKind::Uninstall,
            KIND_OTHER => EventKind::Other {
                event_type: name(self.name)?.unwrap_or_default(),
            },
            tag => return Err(format!("unknown event kind {tag} in the event log")),
        };
        let n = c.varint()? as usize;
        let mut attributes = BTreeMap::new();
        for _ in 0..n {
            let k = c.name(dict)?;
            let v = c.text()?;
            attributes.insert(k, v);
        }
        Ok(Event {
            timestamp_ms: self.at,
            kind,
            attributes,
        })
    }
}

/// Reads the events of a chunk body (or a tail) in order.
pub struct ChunkReader<'a> {
    cursor: Cursor<'a>,
    last_ms: TimestampMs,
    failed: bool,
}

impl<'a> ChunkReader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        ChunkReader {
            cursor: Cursor::new(body),
            last_ms: 0,
            failed: false,
        }
    }

    fn read(&mut self) -> Decoded<LoggedEvent<'a>> {
        let start = self.cursor.pos;
        let at = self.last_ms.wrapping_add(unzigzag(self.cursor.varint()?));
        let tag = self.cursor.byte()?;
        let name = match self.cursor.byte()? {
            0 => None,
            _ => Some(self.cursor.name_ref()?),
        };
        let body = self.cursor.bytes_field()?;
        self.last_ms = at;
        Ok(LoggedEvent {
            at,
            tag,
            name,
            body,
            record: &self.cursor.bytes[start..self.cursor.pos],
        })
    }
}

impl<'a> Iterator for ChunkReader<'a> {
    type Item = Decoded<LoggedEvent<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.cursor.done() {
            return None;
        }
        let r = self.read();
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn custom(name: &str, at: TimestampMs, attrs: &[(&str, &str)]) -> Event {
        Event {
            timestamp_ms: at,
            kind: EventKind::Custom {
                name: name.into(),
                custom_type: Some("search".into()),
            },
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn read_all(log: &EventLog, chunks: &[Vec<u8>], dict: &Dictionary) -> Vec<Event> {
        let mut out = Vec::new();
        for c in chunks {
            for e in ChunkReader::new(chunk_body(c).unwrap()) {
                out.push(e.unwrap().decode(dict).unwrap());
            }
        }
        for e in ChunkReader::new(&log.tail) {
            out.push(e.unwrap().decode(dict).unwrap());
        }
        out
    }

    #[test]
    fn appends_seal_and_read_back_in_order() {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        let mut events = Vec::new();
        for i in 0..500 {
            let e = custom(
                "Search",
                1_700_000_000_000 + i * 1000,
                &[("query", &format!("shoe {i}"))],
            );
            log.append(&mut dict, e.timestamp_ms, &e);
            events.push(e);
        }
        let w = log.take_writes();
        assert!(!w.put_chunks.is_empty());
        let chunks: Vec<Vec<u8>> = w.put_chunks.into_iter().map(|(_, b)| b).collect();
        assert_eq!(read_all(&log, &chunks, &dict), events);
        assert_eq!(log.events(), 500);
        // Names are coded once: "Search", "search" and "query".
        assert_eq!(dict.len(), 3);
        let per_event = log.bytes() as f64 / 500.0;
        assert!(per_event < 20.0, "{per_event} bytes per event");
    }

    #[test]
    fn bounds_drop_the_oldest_and_count_them() {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        let limits = LogLimits {
            max_events: 100,
            max_bytes: 1 << 20,
        };
        for i in 0..1000 {
            let e = custom("Search", 1_700_000_000_000 + i, &[("q", "x")]);
            log.append(&mut dict, e.timestamp_ms, &e);
            log.enforce(0, limits);
        }
        assert!(log.events() <= 100);
        assert_eq!(log.dropped_events, 1000 - log.events());
        assert!(log.events() > 0);
    }

    #[test]
    fn tiny_bounds_trim_the_tail() {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        let limits = LogLimits {
            max_events: 3,
            max_bytes: 1 << 20,
        };
        let mut all = Vec::new();
        for i in 0..10 {
            let e = custom("A", 1_000 + i * 7, &[]);
            log.append(&mut dict, e.timestamp_ms, &e);
            log.enforce(0, limits);
            all.push(e);
        }
        assert_eq!(read_all(&log, &[], &dict), all[7..].to_vec());
        assert_eq!(log.dropped_events, 7);
    }

    #[test]
    fn retention_drops_whole_days() {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        for i in 0..400 {
            let e = custom(
                "Search",
                i * 3_600_000,
                &[("query", "long enough to seal chunks")],
            );
            log.append(&mut dict, e.timestamp_ms, &e);
        }
        let _ = log.take_writes();
        let before = log.events();
        let cutoff = 10 * DAY_MS + 5;
        log.enforce(cutoff, LogLimits::default());
        let w = log.take_writes();
        assert!(!w.delete_chunks.is_empty());
        assert_eq!(w.dropped_by_bounds, 0);
        assert!(log.events() < before);
        // Nothing of the cutoff's day or later is gone.
        let oldest_chunk = log.sealed.first().map(|m| m.max_ms).unwrap();
        assert!((oldest_chunk.div_euclid(DAY_MS) + 1) * DAY_MS > cutoff);
        assert_eq!(log.dropped_events, 0);
    }

    #[test]
    fn head_round_trips() {
        let mut dict = Dictionary::default();
        let mut log = EventLog::default();
        for i in 0..300 {
            let e = custom("Search", i, &[("query", "abc")]);
            log.append(&mut dict, e.timestamp_ms, &e);
        }
        let _ = log.take_writes();
        assert_eq!(EventLog::decode(&log.encode()).unwrap(), log);
        let d2 = Dictionary::from_entries(dict.take_new()).unwrap();
        assert_eq!(d2.len(), dict.len());
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-zA-Z ]{0,8}", ".{0,80}"]
    }

    fn arb_product() -> impl Strategy<Value = Product> {
        (
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
            proptest::option::of(arb_text()),
            proptest::option::of(prop_oneof![
                (-1e6..1e6f64),
                (0i64..100_000).prop_map(|n| n as f64)
            ]),
            proptest::option::of((0i64..100).prop_map(|n| n as f64)),
        )
            .prop_map(
                |(id, name, brand, category, variant, price, quantity)| Product {
                    id,
                    name,
                    brand,
                    category,
                    variant,
                    price,
                    quantity,
                },
            )
    }

    fn arb_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (arb_text(), proptest::option::of(arb_text()))
                .prop_map(|(name, custom_type)| EventKind::Custom { name, custom_type }),
            arb_text().prop_map(|name| EventKind::ScreenView { name }),
            (
                proptest::option::of("[a-z_]{1,12}"),
                proptest::collection::vec(arb_product(), 0..3),
                proptest::option::of(-1e5..1e5f64),
                proptest::option::of(arb_text())
            )
                .prop_map(
                    |(product_action, products, total_amount, transaction_id)| {
                        EventKind::Commerce {
                            product_action,
                            products,
                            total_amount,
                            transaction_id,
                        }
                    }
                ),
            (
                "view|click",
                proptest::collection::vec(
                    (
                        proptest::option::of(arb_text()),
                        proptest::option::of(arb_text()),
                        proptest::option::of(arb_text()),
                        proptest::option::of(arb_text())
                    ),
                    0..3
                )
            )
                .prop_map(|(action, ps)| EventKind::Promotion {
                    action,
                    promotions: ps
                        .into_iter()
                        .map(|(id, name, creative, position)| Promotion {
                            id,
                            name,
                            creative,
                            position
                        })
                        .collect()
                }),
            (
                proptest::option::of(arb_text()),
                proptest::collection::vec(arb_product(), 0..3)
            )
                .prop_map(|(list, products)| EventKind::Impression { list, products }),
            Just(EventKind::SessionStart),
            proptest::option::of(any::<i64>())
                .prop_map(|duration_ms| EventKind::SessionEnd { duration_ms }),
            Just(EventKind::CrashReport),
            Just(EventKind::FirstRun),
            (proptest::option::of(arb_text()), any::<bool>()).prop_map(
                |(transition, is_upgrade)| {
                    EventKind::ApplicationStateTransition {
                        transition,
                        is_upgrade,
                    }
                }
            ),
            (
                arb_text(),
                proptest::option::of(prop_oneof![
                    arb_text().prop_map(AttrValue::String),
                    (-1e9..1e9f64).prop_map(AttrValue::Number),
                    any::<bool>().prop_map(AttrValue::Bool),
                    any::<i64>().prop_map(AttrValue::Date),
                    proptest::collection::vec(arb_text(), 0..3).prop_map(AttrValue::List),
                    Just(AttrValue::Null),
                ]),
                any::<bool>()
            )
                .prop_map(|(name, new_value, deleted)| {
                    EventKind::UserAttributeChange {
                        name,
                        new_value,
                        deleted,
                    }
                }),
            (
                arb_text(),
                proptest::option::of(arb_text()),
                proptest::option::of(arb_text())
            )
                .prop_map(|(identity_type, old_value, new_value)| {
                    EventKind::UserIdentityChange(IdentityChange {
                        identity_type,
                        old_value,
                        new_value,
                    })
                }),
            any::<bool>().prop_map(|opted_out| EventKind::OptOut { opted_out }),
            Just(EventKind::Uninstall),
            "[a-z_]{1,12}".prop_map(|event_type| EventKind::Other { event_type }),
        ]
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            -1_000_000_000i64..4_000_000_000_000,
            arb_kind(),
            proptest::collection::btree_map(arb_text(), arb_text(), 0..4),
        )
            .prop_map(|(timestamp_ms, kind, attributes)| Event {
                timestamp_ms,
                kind,
                attributes,
            })
    }

    proptest! {
        #[test]
        fn every_event_reads_back_as_written(events in proptest::collection::vec(arb_event(), 0..60)) {
            let mut dict = Dictionary::default();
            let mut log = EventLog::default();
            for e in &events {
                log.append(&mut dict, e.timestamp_ms, e);
            }
            let w = log.take_writes();
            let chunks: Vec<Vec<u8>> = w.put_chunks.into_iter().map(|(_, b)| b).collect();
            // Read with the dictionary as stored and loaded again.
            let stored = Dictionary::from_entries(dict.take_new()).unwrap();
            let back = read_all(&log, &chunks, &stored);
            prop_assert_eq!(back.len(), events.len());
            for (a, b) in back.iter().zip(&events) {
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
            for (e, original) in ChunkReader::new(&log.tail).zip(events.iter().skip(events.len() - log.tail_meta.events as usize)) {
                let e = e.unwrap();
                let (t, n) = e.selector(&stored).unwrap();
                prop_assert_eq!(t, original.kind.event_type());
                prop_assert_eq!(n, original.kind.selector_name());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let dict = Dictionary::default();
            for e in ChunkReader::new(&bytes) {
                match e {
                    Ok(e) => { let _ = e.decode(&dict); let _ = e.selector(&dict); }
                    Err(_) => break,
                }
            }
            let _ = EventLog::decode(&bytes);
        }
    }
}
