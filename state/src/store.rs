//! The RocksDB layout of the engine. One database per node, column families by kind of record,
//! every per-partition key prefixed by the partition so a partition's data is one key range.
//!
//! | column family | key                                   | value                          |
//! |---------------|---------------------------------------|--------------------------------|
//! | `profiles`    | partition, mpid                       | [`ProfileState`] (postcard)    |
//! | `outbox`      | partition, sequence                   | [`Delta`] (postcard)           |
//! | `timers`      | partition, due time, mpid             | empty                          |
//! | `deadletters` | partition, sequence                   | [`DeadLetter`] (postcard), until published |
//! | `meta`        | text (`offset/…`, `head/…`, `size/…`) | big-endian integers            |
//! | `audiences`   | audience id                           | [`AudienceRecord`] (JSON)      |
//! | `eventlog`    | partition, mpid, chunk seq (u32 BE)   | a sealed chunk: format byte, events |
//! | `eventlog`    | partition, mpid, `u32::MAX`           | the log head [`EventLog`]: format byte, postcard |
//! | `logdict`     | partition, code (u32 BE)              | a dictionary name (UTF-8)      |
//! | `sample`      | partition, sample rank (u64 BE), mpid | empty: profiles in sample order |
//! | `members`     | partition, `a`, audience, mpid, version | a membership change: kind, time |
//! | `members`     | partition, `m`, mpid, audience, version | the same change, by profile   |
//! | `facts`       | partition, mpid                       | [`crate::facts`]: format byte, postcard |
//!
//! The event log (format [`crate::eventlog::LOG_FORMAT`]) is described in [`crate::eventlog`]:
//! a profile's chunks sort before its head, so one forward scan of a partition reads every
//! profile's log in MPID order, as `profiles` lists them. Meta keys `evaluated/{p}/{audience}`
//! and `calc-evaluated/{p}/{name}` hold the revisions a partition's stored profiles were
//! computed for: a definition at another revision is backfilled. `sample` lists every stored
//! profile by [`crate::estimate::sample_rank`], so a uniform sample of n profiles is the first
//! n keys of a partition; meta `profiles/{p}` counts them. Both are written with the profile's
//! first write. `members` holds every delta's change (processing time, version), written with
//! the delta: ListMembers as of an instant reads the `a` range of an audience, a profile's
//! membership history the `m` range of an MPID; closed intervals that left before retention
//! are pruned, but never a pair's last record (it holds the version deltas continue from).
//! `facts` holds each profile's latest facts, written with the profile whenever they change
//! (meta `facts/{p}` marks a partition whose every profile has one): with `eventlog` and
//! `members` it is what [`crate::replay`] rebuilds a profile from, so `profiles` and
//! `timers` are caches of those logs.
//!
//! Invariant: the state a batch produced, the deltas it emitted, the timers it set and the
//! offsets it consumed are written in ONE [`WriteBatch`]: never split. On restart the engine
//! resumes from the stored offsets, so every message's effects are applied exactly once.

use crate::calculated::CalculatedAttributeRecord;
use crate::catalog::AudienceRecord;
use crate::eventlog::{Dictionary, EventLog, LogWrites};
use crate::model::{AudienceId, Delta, DeltaKind, Mpid, TimestampMs};
use crate::outputs::{Connection, ConnectionId, Fault, OutputConfig, OutputId};
use crate::profile::ProfileState;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub type Partition = u32;

const CF_PROFILES: &str = "profiles";
const CF_OUTBOX: &str = "outbox";
const CF_TIMERS: &str = "timers";
const CF_DEADLETTERS: &str = "deadletters";
const CF_META: &str = "meta";
const CF_AUDIENCES: &str = "audiences";
const CF_EVENTLOG: &str = "eventlog";
const CF_LOGDICT: &str = "logdict";
const CF_SAMPLE: &str = "sample";
const CF_MEMBERS: &str = "members";
const CF_FACTS: &str = "facts";
const COLUMN_FAMILIES: &[&str] = &[
    CF_PROFILES,
    CF_OUTBOX,
    CF_TIMERS,
    CF_DEADLETTERS,
    CF_META,
    CF_AUDIENCES,
    CF_EVENTLOG,
    CF_LOGDICT,
    CF_SAMPLE,
    CF_MEMBERS,
    CF_FACTS,
];

/// The chunk seq of a profile's log head: after every chunk of the profile.
const LOG_HEAD_SEQ: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt record in {cf} at key {key}: {reason}")]
    Corrupt {
        cf: &'static str,
        key: String,
        reason: String,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

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
    pub key: Option<Vec<u8>>,
    /// The message, or its first [`DeadLetterLimits::prefix_bytes`] when it did not fit.
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
const LETTER_FRAMING_BYTES: usize = 512;

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

    /// Reads a stored letter, of this version or of the one before `original_size` and
    /// `truncated` (those held whole messages).
    fn decode(bytes: &[u8]) -> Result<DeadLetter, postcard::Error> {
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

/// Order-preserving encoding of a signed integer (sign bit flipped, big-endian).
fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

pub fn profile_key(partition: Partition, mpid: Mpid) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&ordered_i64(mpid));
    k
}

/// The first profile key of a partition scan that resumes after `after` (exclusive); `None`
/// when nothing can follow it.
fn profile_scan_start(partition: Partition, after: Option<Mpid>) -> Option<[u8; 12]> {
    match after {
        Some(m) => m.checked_add(1).map(|next| profile_key(partition, next)),
        None => Some(profile_key(partition, i64::MIN)),
    }
}

pub fn log_key(partition: Partition, mpid: Mpid, seq: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..12].copy_from_slice(&profile_key(partition, mpid));
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn dict_key(partition: Partition, code: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&code.to_be_bytes());
    k
}

fn sample_key(partition: Partition, mpid: Mpid) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..12].copy_from_slice(&crate::estimate::sample_rank(mpid).to_be_bytes());
    k[12..].copy_from_slice(&ordered_i64(mpid));
    k
}

/// `members` key by audience: partition, `a`, audience, mpid, version.
fn member_by_audience_key(
    partition: Partition,
    audience: AudienceId,
    mpid: Mpid,
    version: u64,
) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4] = b'a';
    k[5..13].copy_from_slice(&audience.to_be_bytes());
    k[13..21].copy_from_slice(&ordered_i64(mpid));
    k[21..].copy_from_slice(&version.to_be_bytes());
    k
}

/// `members` key by profile: partition, `m`, mpid, audience, version.
fn member_by_profile_key(
    partition: Partition,
    mpid: Mpid,
    audience: AudienceId,
    version: u64,
) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4] = b'm';
    k[5..13].copy_from_slice(&ordered_i64(mpid));
    k[13..21].copy_from_slice(&audience.to_be_bytes());
    k[21..].copy_from_slice(&version.to_be_bytes());
    k
}

fn profile_count_key(partition: Partition) -> String {
    format!("profiles/{partition}")
}

fn replay_key(partition: Partition) -> String {
    format!("replay/{partition}")
}

fn facts_indexed_key(partition: Partition) -> String {
    format!("facts/{partition}")
}

fn calc_evaluated_key(partition: Partition, key: &str) -> String {
    format!("calc-evaluated/{partition}/{key}")
}

/// A replay in progress: whether it wiped the profile states first, and the last profile it
/// rebuilt (`None`: none yet). Stored, so a restart resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCursor {
    pub wiped: bool,
    pub after: Option<Mpid>,
}

/// A profile's log as stored: its head (`None`: nothing logged) and sealed chunks.
type LogParts = (Option<EventLog>, Vec<Vec<u8>>);

/// What a profile is rebuilt from: its facts, its event log and its membership history.
#[derive(Debug, Clone)]
pub struct ProfileLogs {
    pub mpid: Mpid,
    pub facts: crate::facts::ProfileFacts,
    pub log: EventLog,
    pub chunks: Vec<Vec<u8>>,
    pub memberships: BTreeMap<AudienceId, Vec<crate::membership::Change>>,
}

/// A stored profile with its event log: the head and the sealed chunks, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ProfileWithLog {
    pub profile: ProfileState,
    pub log: EventLog,
    pub chunks: Vec<Vec<u8>>,
}

fn seq_key(partition: Partition, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn timer_key(partition: Partition, due: TimestampMs, mpid: Mpid) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..12].copy_from_slice(&ordered_i64(due));
    k[12..].copy_from_slice(&ordered_i64(mpid));
    k
}

fn offset_key(topic: &str, partition: Partition) -> String {
    format!("offset/{topic}/{partition}")
}
fn outbox_head_key(partition: Partition) -> String {
    format!("head/outbox/{partition}")
}
fn deadletter_head_key(partition: Partition) -> String {
    format!("head/deadletters/{partition}")
}
fn published_key(sink: &str, partition: Partition) -> String {
    format!("published/{sink}/{partition}")
}
fn size_key(audience: AudienceId, partition: Partition) -> String {
    format!("size/{audience}/{partition}")
}
fn evaluated_key(partition: Partition, audience: AudienceId) -> String {
    format!("evaluated/{partition}/{audience}")
}
const AUDIENCE_SEQ_KEY: &str = "seq/audiences";
const CALC_SEQ_KEY: &str = "seq/calculated";
const CALC_PREFIX: &str = "calc/";

/// Read options of the long forward scans of backfills: read ahead, so a page of profiles is
/// a few large reads rather than one per block.
fn scan_options() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_readahead_size(1 << 20);
    opts
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(a)
}

pub struct Store {
    db: DB,
    sync_writes: bool,
}

/// One atomic write: build it, then [`Store::commit`] it.
pub struct WriteBatch<'a> {
    store: &'a Store,
    batch: rocksdb::WriteBatch,
}

impl WriteBatch<'_> {
    pub fn put_profile(&mut self, partition: Partition, profile: &ProfileState) {
        let cf = self.store.cf(CF_PROFILES);
        self.batch
            .put_cf(cf, profile_key(partition, profile.mpid), profile.encode());
    }

    pub fn put_delta(&mut self, partition: Partition, seq: u64, delta: &Delta) {
        let cf = self.store.cf(CF_OUTBOX);
        let bytes = postcard::to_stdvec(delta).expect("delta always serialises");
        self.batch.put_cf(cf, seq_key(partition, seq), bytes);
    }

    /// Records a delta's change in the membership history (both keys).
    pub fn record_membership(&mut self, partition: Partition, delta: &Delta) {
        let cf = self.store.cf(CF_MEMBERS);
        let value = crate::membership::encode_change(delta.kind, delta.processing_time_ms);
        self.batch.put_cf(
            cf,
            member_by_audience_key(partition, delta.audience_id, delta.mpid, delta.version),
            value,
        );
        self.batch.put_cf(
            cf,
            member_by_profile_key(partition, delta.mpid, delta.audience_id, delta.version),
            value,
        );
    }

    pub fn set_outbox_head(&mut self, partition: Partition, seq: u64) {
        self.put_meta_u64(&outbox_head_key(partition), seq);
    }

    pub fn put_dead_letter(&mut self, partition: Partition, seq: u64, letter: &DeadLetter) {
        let cf = self.store.cf(CF_DEADLETTERS);
        let bytes = postcard::to_stdvec(letter).expect("dead letter always serialises");
        self.batch.put_cf(cf, seq_key(partition, seq), bytes);
        self.put_meta_u64(&deadletter_head_key(partition), seq);
    }

    /// Deletes the partition's dead letters up to `seq` (published, or dropped past the
    /// bound on what is kept).
    pub fn delete_dead_letters_through(&mut self, partition: Partition, seq: u64) {
        let cf = self.store.cf(CF_DEADLETTERS);
        let end = seq_key(partition, seq.saturating_add(1));
        self.batch.delete_range_cf(cf, seq_key(partition, 0), end);
        if seq == u64::MAX {
            self.batch.delete_cf(cf, end);
        }
    }

    pub fn set_timer(&mut self, partition: Partition, due: TimestampMs, mpid: Mpid) {
        let cf = self.store.cf(CF_TIMERS);
        self.batch.put_cf(cf, timer_key(partition, due, mpid), []);
    }

    pub fn clear_timer(&mut self, partition: Partition, due: TimestampMs, mpid: Mpid) {
        let cf = self.store.cf(CF_TIMERS);
        self.batch.delete_cf(cf, timer_key(partition, due, mpid));
    }

    /// Records that everything before `next_offset` of `topic`/`partition` has been applied.
    pub fn set_next_offset(&mut self, topic: &str, partition: Partition, next_offset: i64) {
        self.put_meta_u64(&offset_key(topic, partition), next_offset as u64);
    }

    pub fn set_audience_size(&mut self, audience: AudienceId, partition: Partition, size: u64) {
        self.put_meta_u64(&size_key(audience, partition), size);
    }

    pub fn set_published(&mut self, sink: &str, partition: Partition, seq: u64) {
        self.put_meta_u64(&published_key(sink, partition), seq);
    }

    fn put_meta_u64(&mut self, key: &str, value: u64) {
        let cf = self.store.cf(CF_META);
        self.batch.put_cf(cf, key.as_bytes(), value.to_be_bytes());
    }

    /// Records the revision of an audience the partition's stored profiles were all evaluated
    /// against (`None`: forget it).
    pub fn set_evaluated_revision(
        &mut self,
        audience: AudienceId,
        partition: Partition,
        revision: Option<u64>,
    ) {
        let key = evaluated_key(partition, audience);
        match revision {
            Some(r) => self.put_meta_u64(&key, r),
            None => {
                let cf = self.store.cf(CF_META);
                self.batch.delete_cf(cf, key.as_bytes());
            }
        }
    }

    /// Writes what changed in a profile's log: its sealed chunks, the chunks it dropped and
    /// its head.
    pub fn put_log(
        &mut self,
        partition: Partition,
        mpid: Mpid,
        log: &EventLog,
        writes: &LogWrites,
    ) {
        let cf = self.store.cf(CF_EVENTLOG);
        for (seq, bytes) in &writes.put_chunks {
            self.batch.put_cf(cf, log_key(partition, mpid, *seq), bytes);
        }
        for seq in &writes.delete_chunks {
            self.batch.delete_cf(cf, log_key(partition, mpid, *seq));
        }
        if writes.head_changed {
            self.batch
                .put_cf(cf, log_key(partition, mpid, LOG_HEAD_SEQ), log.encode());
        }
    }

    /// Deletes a profile's whole log (every chunk and the head).
    pub fn delete_log(&mut self, partition: Partition, mpid: Mpid) {
        let cf = self.store.cf(CF_EVENTLOG);
        self.batch.delete_range_cf(
            cf,
            log_key(partition, mpid, 0),
            log_key(partition, mpid, LOG_HEAD_SEQ),
        );
        self.batch
            .delete_cf(cf, log_key(partition, mpid, LOG_HEAD_SEQ));
    }

    /// Names newly coded in a partition's dictionary.
    pub fn put_dictionary(&mut self, partition: Partition, entries: &[(u32, String)]) {
        let cf = self.store.cf(CF_LOGDICT);
        for (code, name) in entries {
            self.batch
                .put_cf(cf, dict_key(partition, *code), name.as_bytes());
        }
    }

    /// Records the revision of a calculated attribute the partition's stored profiles were
    /// calculated for (`None`: forget it).
    pub fn set_calculated_evaluated(
        &mut self,
        partition: Partition,
        key: &str,
        revision: Option<u64>,
    ) {
        let key = calc_evaluated_key(partition, key);
        match revision {
            Some(r) => self.put_meta_u64(&key, r),
            None => {
                let cf = self.store.cf(CF_META);
                self.batch.delete_cf(cf, key.as_bytes());
            }
        }
    }

    fn delete_membership(
        &mut self,
        partition: Partition,
        audience: AudienceId,
        mpid: Mpid,
        version: u64,
    ) {
        let cf = self.store.cf(CF_MEMBERS);
        self.batch.delete_cf(
            cf,
            member_by_audience_key(partition, audience, mpid, version),
        );
        self.batch.delete_cf(
            cf,
            member_by_profile_key(partition, mpid, audience, version),
        );
    }

    /// A profile's facts record ([`crate::facts::encode_facts`]).
    pub fn put_facts(&mut self, partition: Partition, mpid: Mpid, record: &[u8]) {
        let cf = self.store.cf(CF_FACTS);
        self.batch.put_cf(cf, profile_key(partition, mpid), record);
    }

    /// Marks every stored profile of the partition as having its facts record.
    pub fn set_facts_indexed(&mut self, partition: Partition) {
        self.put_meta_u64(&facts_indexed_key(partition), 1);
    }

    /// Deletes every profile state and timer of a partition: what a replay rebuilds from the
    /// logs. The logs, the outbox, sizes and offsets stay.
    pub fn wipe_profile_states(&mut self, partition: Partition) {
        let (from, to) = (
            profile_key(partition, i64::MIN),
            profile_key(partition, i64::MAX),
        );
        let profiles = self.store.cf(CF_PROFILES);
        self.batch.delete_range_cf(profiles, from, to);
        self.batch.delete_cf(profiles, to);
        let timers = self.store.cf(CF_TIMERS);
        let (from, to) = (
            timer_key(partition, i64::MIN, i64::MIN),
            timer_key(partition, i64::MAX, i64::MAX),
        );
        self.batch.delete_range_cf(timers, from, to);
        self.batch.delete_cf(timers, to);
    }

    /// Where a running replay of the partition stands (`None`: none runs).
    pub fn set_replay_cursor(&mut self, partition: Partition, cursor: Option<ReplayCursor>) {
        let cf = self.store.cf(CF_META);
        let key = replay_key(partition);
        match cursor {
            None => self.batch.delete_cf(cf, key.as_bytes()),
            Some(c) => {
                let mut v = vec![u8::from(c.wiped)];
                if let Some(after) = c.after {
                    v.extend_from_slice(&after.to_be_bytes());
                }
                self.batch.put_cf(cf, key.as_bytes(), v);
            }
        }
    }

    /// Lists a newly stored profile in the sample index.
    pub fn add_to_sample(&mut self, partition: Partition, mpid: Mpid) {
        let cf = self.store.cf(CF_SAMPLE);
        self.batch.put_cf(cf, sample_key(partition, mpid), []);
    }

    /// How many profiles the partition stores.
    pub fn set_profile_count(&mut self, partition: Partition, count: u64) {
        self.put_meta_u64(&profile_count_key(partition), count);
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, sync_writes: bool) -> StoreResult<Store> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        // One memory budget for the memtables of every column family, so that six column
        // families do not each grow their own 64 MiB buffers.
        options.set_db_write_buffer_size(96 << 20);
        let descriptors = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if *name == CF_EVENTLOG {
                // Logs are read whole, in key order, by backfills: bigger blocks mean fewer
                // block decodes per profile scanned (a profile's log is a few KiB).
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_block_size(16 << 10);
                cf_opts.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        Ok(Store { db, sync_writes })
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    pub fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            store: self,
            batch: rocksdb::WriteBatch::default(),
        }
    }

    pub fn commit(&self, batch: WriteBatch<'_>) -> StoreResult<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync_writes);
        self.db.write_opt(batch.batch, &opts)?;
        Ok(())
    }

    fn meta_u64(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), key.as_bytes())?
            .map(|v| be_u64(&v)))
    }

    pub fn load_profile(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<Option<ProfileState>> {
        let key = profile_key(partition, mpid);
        match self.db.get_pinned_cf(self.cf(CF_PROFILES), key)? {
            None => Ok(None),
            Some(bytes) => {
                ProfileState::decode(&bytes)
                    .map(Some)
                    .map_err(|reason| StoreError::Corrupt {
                        cf: CF_PROFILES,
                        key: format!("{partition}/{mpid}"),
                        reason,
                    })
            }
        }
    }

    /// Finds a profile in whichever partition holds it.
    pub fn find_profile(
        &self,
        mpid: Mpid,
        partitions: impl IntoIterator<Item = Partition>,
    ) -> StoreResult<Option<(Partition, ProfileState)>> {
        for p in partitions {
            if let Some(profile) = self.load_profile(p, mpid)? {
                return Ok(Some((p, profile)));
            }
        }
        Ok(None)
    }

    /// The partitions that hold any profile, from the keys themselves.
    pub fn known_partitions(&self) -> StoreResult<Vec<Partition>> {
        let mut out = Vec::new();
        let mut next: u64 = 0;
        while next <= u32::MAX as u64 {
            let start = (next as u32).to_be_bytes();
            let mut it = self.db.iterator_cf(
                self.cf(CF_PROFILES),
                IteratorMode::From(&start, Direction::Forward),
            );
            match it.next() {
                Some(item) => {
                    let (k, _) = item?;
                    let p = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
                    out.push(p);
                    next = p as u64 + 1;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Visits every profile of a partition, in MPID order, from `after` (exclusive).
    pub fn scan_profiles(
        &self,
        partition: Partition,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<Vec<ProfileState>> {
        let Some(start) = profile_scan_start(partition, after) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_PROFILES),
            scan_options(),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k[..4] != partition.to_be_bytes() || out.len() >= limit {
                break;
            }
            let profile = ProfileState::decode(&v).map_err(|reason| StoreError::Corrupt {
                cf: CF_PROFILES,
                key: format!("{partition}/{}", from_ordered_i64(&k[4..])),
                reason,
            })?;
            out.push(profile);
        }
        Ok(out)
    }

    /// A profile's membership changes in a partition, by audience, in version order.
    pub fn membership_changes_of(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<BTreeMap<AudienceId, Vec<crate::membership::Change>>> {
        let start = member_by_profile_key(partition, mpid, 0, 0);
        let mut out: BTreeMap<AudienceId, Vec<crate::membership::Change>> = BTreeMap::new();
        for item in self.db.iterator_cf(
            self.cf(CF_MEMBERS),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() != 29 || k[..13] != start[..13] {
                break;
            }
            let audience = be_u64(&k[13..21]);
            let version = be_u64(&k[21..]);
            let change = crate::membership::decode_change(version, &v).map_err(|reason| {
                StoreError::Corrupt {
                    cf: CF_MEMBERS,
                    key: format!("{partition}/m/{mpid}/{audience}/{version}"),
                    reason,
                }
            })?;
            out.entry(audience).or_default().push(change);
        }
        Ok(out)
    }

    /// The members of an audience in a partition at `at`, in MPID order, after `after`
    /// (exclusive), at most `limit`: read from the history of changes.
    pub fn members_at(
        &self,
        partition: Partition,
        audience: AudienceId,
        at: TimestampMs,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<Vec<Mpid>> {
        let start = match after {
            Some(m) if m == Mpid::MAX => return Ok(Vec::new()),
            Some(m) => member_by_audience_key(partition, audience, m + 1, 0),
            None => member_by_audience_key(partition, audience, Mpid::MIN, 0),
        };
        let mut out = Vec::new();
        let mut current: Option<(Mpid, Vec<crate::membership::Change>)> = None;
        let finish = |pair: Option<(Mpid, Vec<crate::membership::Change>)>, out: &mut Vec<Mpid>| {
            if let Some((mpid, changes)) = pair {
                if crate::membership::member_at(&changes, at) {
                    out.push(mpid);
                }
            }
        };
        for item in self.db.iterator_cf_opt(
            self.cf(CF_MEMBERS),
            scan_options(),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() != 29 || k[..13] != start[..13] {
                break;
            }
            let mpid = from_ordered_i64(&k[13..21]);
            let version = be_u64(&k[21..]);
            let change = crate::membership::decode_change(version, &v).map_err(|reason| {
                StoreError::Corrupt {
                    cf: CF_MEMBERS,
                    key: format!("{partition}/a/{audience}/{mpid}/{version}"),
                    reason,
                }
            })?;
            if current.as_ref().is_none_or(|(m, _)| *m != mpid) {
                finish(current.take(), &mut out);
                if out.len() >= limit {
                    return Ok(out);
                }
                current = Some((mpid, Vec::new()));
            }
            if let Some((_, changes)) = current.as_mut() {
                changes.push(change);
            }
        }
        finish(current.take(), &mut out);
        Ok(out)
    }

    /// Deletes the membership intervals of a partition that closed before `cutoff` (both
    /// keys of both records), except the last record of each (audience, MPID) pair: it holds
    /// the pair's version, from which a rebuilt profile's next delta continues. Returns how
    /// many intervals went.
    pub fn prune_membership_history(
        &self,
        partition: Partition,
        cutoff: TimestampMs,
    ) -> StoreResult<u64> {
        let mut start = [0u8; 5];
        start[..4].copy_from_slice(&partition.to_be_bytes());
        start[4] = b'm';
        let mut batch = self.batch();
        let mut pruned = 0;
        // Each record is decided when the next one is seen: only a record with a successor
        // of its own pair may go.
        let mut previous: Option<(Mpid, AudienceId, crate::membership::Change)> = None;
        for item in self.db.iterator_cf_opt(
            self.cf(CF_MEMBERS),
            scan_options(),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() != 29 || k[..5] != start[..] {
                break;
            }
            let mpid = from_ordered_i64(&k[5..13]);
            let audience = be_u64(&k[13..21]);
            let version = be_u64(&k[21..]);
            let Ok(change) = crate::membership::decode_change(version, &v) else {
                continue;
            };
            if let Some((m, a, earlier)) = previous.take() {
                let same_pair = m == mpid && a == audience;
                let closed_before_cutoff = match earlier.kind {
                    // An entry goes with the exit that closed it before the cutoff.
                    DeltaKind::Added => change.kind == DeltaKind::Dropped && change.at_ms < cutoff,
                    // An exit goes once it is old and no longer the pair's last word.
                    DeltaKind::Dropped => earlier.at_ms < cutoff,
                };
                if same_pair && closed_before_cutoff {
                    batch.delete_membership(partition, audience, mpid, earlier.version);
                    if earlier.kind == DeltaKind::Added {
                        pruned += 1;
                    }
                }
            }
            previous = Some((mpid, audience, change));
        }
        self.commit(batch)?;
        Ok(pruned)
    }

    /// The first `limit` profiles of a partition in sample order (a uniform sample).
    pub fn sample(&self, partition: Partition, limit: usize) -> StoreResult<Vec<Mpid>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_SAMPLE));
        it.seek(partition.to_be_bytes());
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            match it.key() {
                Some(k) if k.len() == 20 && k[..4] == partition.to_be_bytes() => {
                    out.push(from_ordered_i64(&k[12..]))
                }
                _ => break,
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The stored count of a partition's profiles (`None`: a store from before the count).
    pub fn profile_count(&self, partition: Partition) -> StoreResult<Option<u64>> {
        self.meta_u64(&profile_count_key(partition))
    }

    /// Lists every stored profile of a partition in the sample index and stores their count:
    /// for stores written before the index. Returns the count.
    pub fn index_sample(&self, partition: Partition) -> StoreResult<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_PROFILES));
        it.seek(profile_key(partition, i64::MIN));
        let mut n = 0;
        let mut batch = self.batch();
        while it.valid() {
            match it.key() {
                Some(k) if k[..4] == partition.to_be_bytes() => {
                    batch.add_to_sample(partition, from_ordered_i64(&k[4..]));
                    n += 1;
                }
                _ => break,
            }
            if n % 10_000 == 0 {
                self.commit(std::mem::replace(&mut batch, self.batch()))?;
            }
            it.next();
        }
        it.status()?;
        batch.set_profile_count(partition, n);
        self.commit(batch)?;
        Ok(n)
    }

    /// The partition's running replay, if any.
    pub fn replay_cursor(&self, partition: Partition) -> StoreResult<Option<ReplayCursor>> {
        let key = replay_key(partition);
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_META), key.as_bytes())? else {
            return Ok(None);
        };
        let after = match v.len() {
            1 => None,
            9 => Some(i64::from_be_bytes(v[1..].try_into().expect("8 bytes"))),
            n => {
                return Err(StoreError::Corrupt {
                    cf: CF_META,
                    key,
                    reason: format!("replay cursor of {n} bytes, not 1 or 9"),
                })
            }
        };
        Ok(Some(ReplayCursor {
            wiped: v[0] == 1,
            after,
        }))
    }

    /// Whether every stored profile of the partition has its facts record.
    pub fn facts_indexed(&self, partition: Partition) -> StoreResult<bool> {
        Ok(self.meta_u64(&facts_indexed_key(partition))?.is_some())
    }

    /// Writes the facts record of every stored profile of a partition from its state, for
    /// stores written before the record, then marks the partition. Returns the count.
    pub fn index_facts(&self, partition: Partition) -> StoreResult<u64> {
        let mut n = 0;
        let mut after = None;
        loop {
            let page = self.scan_profiles(partition, after, 1_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.mpid);
            let mut batch = self.batch();
            for profile in &page {
                batch.put_facts(
                    partition,
                    profile.mpid,
                    &crate::facts::encode_facts(profile),
                );
                n += 1;
            }
            self.commit(batch)?;
            if after == Some(Mpid::MAX) {
                break;
            }
        }
        let mut batch = self.batch();
        batch.set_facts_indexed(partition);
        self.commit(batch)?;
        Ok(n)
    }

    /// A profile's facts (`None`: no such profile, or stored before facts records).
    pub fn load_facts(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<Option<crate::facts::ProfileFacts>> {
        let key = profile_key(partition, mpid);
        match self.db.get_pinned_cf(self.cf(CF_FACTS), key)? {
            None => Ok(None),
            Some(bytes) => crate::facts::ProfileFacts::decode(&bytes)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    cf: CF_FACTS,
                    key: format!("{partition}/{mpid}"),
                    reason,
                }),
        }
    }

    /// Everything one profile is rebuilt from (`None`: it has no facts record).
    pub fn load_profile_logs(
        &self,
        partition: Partition,
        mpid: Mpid,
    ) -> StoreResult<Option<ProfileLogs>> {
        let Some(facts) = self.load_facts(partition, mpid)? else {
            return Ok(None);
        };
        Ok(Some(ProfileLogs {
            mpid,
            facts,
            log: self.load_log_head(partition, mpid)?.unwrap_or_default(),
            chunks: self.load_log_chunks(partition, mpid)?,
            memberships: self.membership_changes_of(partition, mpid)?,
        }))
    }

    /// Visits the profiles of a partition that have facts, in MPID order, from `after`
    /// (exclusive), with everything each is rebuilt from. Reads no profile state.
    pub fn scan_profile_logs(
        &self,
        partition: Partition,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<Vec<ProfileLogs>> {
        let Some(start) = profile_scan_start(partition, after) else {
            return Ok(Vec::new());
        };
        let mut facts = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_FACTS),
            scan_options(),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k[..4] != partition.to_be_bytes() || facts.len() >= limit {
                break;
            }
            let mpid = from_ordered_i64(&k[4..]);
            let decoded =
                crate::facts::ProfileFacts::decode(&v).map_err(|reason| StoreError::Corrupt {
                    cf: CF_FACTS,
                    key: format!("{partition}/{mpid}"),
                    reason,
                })?;
            facts.push((mpid, decoded));
        }
        let (Some(first), Some(last)) = (facts.first(), facts.last()) else {
            return Ok(Vec::new());
        };
        let mut logs = self.logs_between(partition, first.0, last.0)?;
        let mut out = Vec::with_capacity(facts.len());
        for (mpid, facts) in facts {
            let (log, chunks) = logs.remove(&mpid).unwrap_or_default();
            out.push(ProfileLogs {
                mpid,
                facts,
                log: log.unwrap_or_default(),
                chunks,
                memberships: self.membership_changes_of(partition, mpid)?,
            });
        }
        Ok(out)
    }

    /// A profile's log head (`None`: the profile has logged nothing).
    pub fn load_log_head(&self, partition: Partition, mpid: Mpid) -> StoreResult<Option<EventLog>> {
        let key = log_key(partition, mpid, LOG_HEAD_SEQ);
        match self.db.get_pinned_cf(self.cf(CF_EVENTLOG), key)? {
            None => Ok(None),
            Some(bytes) => {
                EventLog::decode(&bytes)
                    .map(Some)
                    .map_err(|reason| StoreError::Corrupt {
                        cf: CF_EVENTLOG,
                        key: format!("{partition}/{mpid}/head"),
                        reason,
                    })
            }
        }
    }

    /// A profile's sealed chunks as stored, oldest first.
    pub fn load_log_chunks(&self, partition: Partition, mpid: Mpid) -> StoreResult<Vec<Vec<u8>>> {
        let start = log_key(partition, mpid, 0);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_EVENTLOG),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k[..12] != start[..12] || k[12..] == LOG_HEAD_SEQ.to_be_bytes() {
                break;
            }
            out.push(v.to_vec());
        }
        Ok(out)
    }

    /// A partition's dictionary of log names.
    pub fn load_dictionary(&self, partition: Partition) -> StoreResult<Dictionary> {
        let start = dict_key(partition, 0);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_LOGDICT),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k[..4] != start[..4] {
                break;
            }
            let code = u32::from_be_bytes([k[4], k[5], k[6], k[7]]);
            entries.push((code, String::from_utf8_lossy(&v).into_owned()));
        }
        Dictionary::from_entries(entries).map_err(|reason| StoreError::Corrupt {
            cf: CF_LOGDICT,
            key: format!("{partition}"),
            reason,
        })
    }

    /// Visits every profile of a partition with its event log, in MPID order, from `after`
    /// (exclusive): two forward scans side by side, no lookup per profile.
    pub fn scan_profiles_with_logs(
        &self,
        partition: Partition,
        after: Option<Mpid>,
        limit: usize,
    ) -> StoreResult<Vec<ProfileWithLog>> {
        let profiles = self.scan_profiles(partition, after, limit)?;
        let (Some(first), Some(last)) = (profiles.first(), profiles.last()) else {
            return Ok(Vec::new());
        };
        let mut logs = self.logs_between(partition, first.mpid, last.mpid)?;
        Ok(profiles
            .into_iter()
            .map(|profile| {
                let (log, chunks) = logs.remove(&profile.mpid).unwrap_or_default();
                ProfileWithLog {
                    profile,
                    log: log.unwrap_or_default(),
                    chunks,
                }
            })
            .collect())
    }

    /// The event logs (head, sealed chunks oldest first) of the profiles from `first` to
    /// `last` (inclusive): one forward scan.
    fn logs_between(
        &self,
        partition: Partition,
        first: Mpid,
        last: Mpid,
    ) -> StoreResult<BTreeMap<Mpid, LogParts>> {
        let start = log_key(partition, first, 0);
        let end = profile_key(partition, last);
        let mut logs: BTreeMap<Mpid, LogParts> = BTreeMap::new();
        for item in self.db.iterator_cf_opt(
            self.cf(CF_EVENTLOG),
            scan_options(),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() != 16 || k[..12] > end[..] {
                break;
            }
            let mpid = from_ordered_i64(&k[4..12]);
            let entry = logs.entry(mpid).or_default();
            if k[12..] == LOG_HEAD_SEQ.to_be_bytes() {
                let head = EventLog::decode(&v).map_err(|reason| StoreError::Corrupt {
                    cf: CF_EVENTLOG,
                    key: format!("{partition}/{mpid}/head"),
                    reason,
                })?;
                entry.0 = Some(head);
            } else {
                entry.1.push(v.to_vec());
            }
        }
        Ok(logs)
    }

    /// (calculated attribute, revision) pairs the partition's profiles were calculated for.
    pub fn calculated_evaluated(&self, partition: Partition) -> StoreResult<Vec<(String, u64)>> {
        let prefix = format!("calc-evaluated/{partition}/");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        ) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            out.push((String::from_utf8_lossy(rest).into_owned(), be_u64(&v)));
        }
        Ok(out)
    }

    /// Approximate bytes on disk (SST files) and in memtables of the event log.
    pub fn event_log_bytes(&self) -> StoreResult<(u64, u64)> {
        let cf = self.cf(CF_EVENTLOG);
        let sst = self
            .db
            .property_int_value_cf(cf, "rocksdb.total-sst-files-size")?
            .unwrap_or(0);
        let mem = self
            .db
            .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")?
            .unwrap_or(0);
        Ok((sst, mem))
    }

    /// Next offset to consume of `topic`/`partition`, if any was stored.
    pub fn next_offset(&self, topic: &str, partition: Partition) -> StoreResult<Option<i64>> {
        Ok(self
            .meta_u64(&offset_key(topic, partition))?
            .map(|v| v as i64))
    }

    /// Sequence of the last delta written for the partition (0: none yet).
    pub fn outbox_head(&self, partition: Partition) -> StoreResult<u64> {
        Ok(self.meta_u64(&outbox_head_key(partition))?.unwrap_or(0))
    }

    pub fn deadletter_head(&self, partition: Partition) -> StoreResult<u64> {
        Ok(self.meta_u64(&deadletter_head_key(partition))?.unwrap_or(0))
    }

    pub fn published(&self, sink: &str, partition: Partition) -> StoreResult<u64> {
        Ok(self.meta_u64(&published_key(sink, partition))?.unwrap_or(0))
    }

    pub fn set_published(&self, sink: &str, partition: Partition, seq: u64) -> StoreResult<()> {
        let mut b = self.batch();
        b.set_published(sink, partition, seq);
        self.commit(b)
    }

    /// Deltas of a partition with sequence in `(after, ..]`, at most `limit`.
    pub fn read_outbox(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Delta)>> {
        self.read_seq(CF_OUTBOX, partition, after, limit)
    }

    pub fn read_dead_letters(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, DeadLetter)>> {
        self.read_seq_with(CF_DEADLETTERS, partition, after, limit, DeadLetter::decode)
    }

    /// Dead letters the partition keeps (not yet published), as stored.
    pub fn count_dead_letters(&self, partition: Partition) -> StoreResult<u64> {
        let mut n = 0;
        let prefix = partition.to_be_bytes();
        for item in self.db.iterator_cf(
            self.cf(CF_DEADLETTERS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, _) = item?;
            if k[..4] != prefix {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    fn read_seq<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        partition: Partition,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, T)>> {
        self.read_seq_with(cf, partition, after, limit, |v| postcard::from_bytes(v))
    }

    fn read_seq_with<T>(
        &self,
        cf: &'static str,
        partition: Partition,
        after: u64,
        limit: usize,
        decode: impl Fn(&[u8]) -> Result<T, postcard::Error>,
    ) -> StoreResult<Vec<(u64, T)>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = seq_key(partition, from);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if k[..4] != partition.to_be_bytes() || out.len() >= limit {
                break;
            }
            let seq = be_u64(&k[4..12]);
            let value = decode(&v).map_err(|e| StoreError::Corrupt {
                cf,
                key: format!("{partition}/{seq}"),
                reason: e.to_string(),
            })?;
            out.push((seq, value));
        }
        Ok(out)
    }

    /// The oldest sequence still in the outbox of a partition.
    pub fn outbox_tail(&self, partition: Partition) -> StoreResult<Option<u64>> {
        Ok(self
            .read_seq::<Delta>(CF_OUTBOX, partition, 0, 1)?
            .first()
            .map(|(s, _)| *s))
    }

    /// Deletes the deltas of a partition up to and including `through`.
    pub fn prune_outbox(&self, partition: Partition, through: u64) -> StoreResult<()> {
        self.db.delete_range_cf(
            self.cf(CF_OUTBOX),
            seq_key(partition, 0),
            seq_key(partition, through.saturating_add(1)),
        )?;
        Ok(())
    }

    /// Deletes the oldest deltas of a partition processed before `cutoff_ms`, never beyond
    /// `through` (what every durable reader has consumed). Returns the last sequence deleted.
    pub fn prune_outbox_before(
        &self,
        partition: Partition,
        cutoff_ms: TimestampMs,
        through: u64,
    ) -> StoreResult<Option<u64>> {
        let mut last_old = None;
        let mut after = 0;
        'scan: loop {
            let chunk = self.read_outbox(partition, after, 1000)?;
            if chunk.is_empty() {
                break;
            }
            for (seq, delta) in &chunk {
                if *seq > through || delta.processing_time_ms >= cutoff_ms {
                    break 'scan;
                }
                last_old = Some(*seq);
                after = *seq;
            }
        }
        if let Some(seq) = last_old {
            self.prune_outbox(partition, seq)?;
        }
        Ok(last_old)
    }

    /// Timers of a partition due at or before `now`, earliest first.
    pub fn due_timers(
        &self,
        partition: Partition,
        now: TimestampMs,
        limit: usize,
    ) -> StoreResult<Vec<(TimestampMs, Mpid)>> {
        let start = timer_key(partition, i64::MIN, i64::MIN);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_TIMERS),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, _) = item?;
            if k[..4] != partition.to_be_bytes() || out.len() >= limit {
                break;
            }
            let due = from_ordered_i64(&k[4..12]);
            if due > now {
                break;
            }
            out.push((due, from_ordered_i64(&k[12..20])));
        }
        Ok(out)
    }

    pub fn audience_size(&self, audience: AudienceId, partition: Partition) -> StoreResult<u64> {
        Ok(self.meta_u64(&size_key(audience, partition))?.unwrap_or(0))
    }

    /// (audience, revision) pairs the partition's profiles were evaluated against.
    pub fn evaluated_revisions(&self, partition: Partition) -> StoreResult<Vec<(AudienceId, u64)>> {
        let prefix = format!("evaluated/{partition}/");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        ) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            if let Ok(a) = String::from_utf8_lossy(rest).parse::<AudienceId>() {
                out.push((a, be_u64(&v)));
            }
        }
        Ok(out)
    }

    /// Every stored size counter: (audience, partition, size).
    pub fn audience_sizes(&self) -> StoreResult<Vec<(AudienceId, Partition, u64)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(b"size/", Direction::Forward),
        ) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(b"size/") else {
                break;
            };
            let text = String::from_utf8_lossy(rest);
            let mut parts = text.split('/');
            if let (Some(Ok(a)), Some(Ok(p))) = (
                parts.next().map(str::parse::<AudienceId>),
                parts.next().map(str::parse::<Partition>),
            ) {
                out.push((a, p, be_u64(&v)));
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ event tiers

    /// Sets the data tier of an event (event type, lowercased selector name).
    pub fn set_event_tier(&self, event_type: &str, name: &str, tier: &str) -> StoreResult<()> {
        let key = format!("tier/{event_type}/{name}");
        self.db
            .put_cf(self.cf(CF_META), key.as_bytes(), tier.as_bytes())?;
        Ok(())
    }

    /// Every event tier set: (event type, name, tier).
    pub fn event_tiers(&self) -> StoreResult<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(b"tier/", Direction::Forward),
        ) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(b"tier/") else {
                break;
            };
            let rest = String::from_utf8_lossy(rest).into_owned();
            if let Some((event_type, name)) = rest.split_once('/') {
                out.push((
                    event_type.to_string(),
                    name.to_string(),
                    String::from_utf8_lossy(&v).into_owned(),
                ));
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ calculated attributes

    /// Every calculated attribute, by name.
    pub fn load_calculated(&self) -> StoreResult<Vec<CalculatedAttributeRecord>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(CALC_PREFIX.as_bytes(), Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(CALC_PREFIX.as_bytes()) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                cf: CF_META,
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Stores a calculated attribute under its lowercased name with a revision never used
    /// before (profiles tell a redefinition from the definition they folded by it), together
    /// with the audiences that read it, re-stored in the same write (with their revisions
    /// bumped by the caller) so that none is left evaluated against the old definition.
    pub fn put_calculated(
        &self,
        record: &mut CalculatedAttributeRecord,
        readers: &[AudienceRecord],
    ) -> StoreResult<()> {
        let revision = self.meta_u64(CALC_SEQ_KEY)?.unwrap_or(0) + 1;
        record.revision = revision;
        let mut b = self.batch();
        let key = format!("{CALC_PREFIX}{}", record.name.trim().to_lowercase());
        let bytes = serde_json::to_vec(record).expect("calculated attribute always serialises");
        b.batch.put_cf(self.cf(CF_META), key.as_bytes(), bytes);
        b.put_meta_u64(CALC_SEQ_KEY, revision);
        for reader in readers {
            let bytes = serde_json::to_vec(reader).expect("audience record always serialises");
            b.batch
                .put_cf(self.cf(CF_AUDIENCES), reader.id.to_be_bytes(), bytes);
        }
        self.commit(b)
    }

    pub fn delete_calculated(&self, key: &str) -> StoreResult<()> {
        let key = format!("{CALC_PREFIX}{key}");
        self.db.delete_cf(self.cf(CF_META), key.as_bytes())?;
        Ok(())
    }

    // ------------------------------------------------------------ outputs and connections

    fn put_json<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).expect("records always serialise");
        self.db.put_cf(self.cf(CF_META), key.as_bytes(), bytes)?;
        Ok(())
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        match self.db.get_pinned_cf(self.cf(CF_META), key.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| {
                StoreError::Corrupt {
                    cf: CF_META,
                    key: key.to_string(),
                    reason: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    fn scan_json<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> StoreResult<Vec<T>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(prefix.as_bytes(), Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                cf: CF_META,
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The next id of a sequence (ids are never reused).
    pub fn next_id(&self, sequence: &str) -> StoreResult<u64> {
        let key = format!("seq/{sequence}");
        let id = self.meta_u64(&key)?.unwrap_or(0) + 1;
        self.db
            .put_cf(self.cf(CF_META), key.as_bytes(), id.to_be_bytes())?;
        Ok(id)
    }

    pub fn put_output(&self, config: &OutputConfig) -> StoreResult<()> {
        self.put_json(&format!("output/{:020}", config.id), config)
    }

    pub fn load_outputs(&self) -> StoreResult<Vec<OutputConfig>> {
        self.scan_json("output/")
    }

    pub fn delete_output(&self, id: OutputId) -> StoreResult<()> {
        self.db
            .delete_cf(self.cf(CF_META), format!("output/{id:020}").as_bytes())?;
        Ok(())
    }

    pub fn put_connection(&self, connection: &Connection) -> StoreResult<()> {
        self.put_json(&format!("connection/{:020}", connection.id), connection)
    }

    pub fn load_connections(&self) -> StoreResult<Vec<Connection>> {
        self.scan_json("connection/")
    }

    /// Deletes a connection with its cursor and fault.
    pub fn delete_connection(&self, id: ConnectionId) -> StoreResult<()> {
        let mut b = self.batch();
        let cf = self.cf(CF_META);
        for key in [
            format!("connection/{id:020}"),
            format!("conncursor/{id:020}"),
            format!("connsync/{id:020}"),
            format!("fault/{id:020}"),
        ] {
            b.batch.delete_cf(cf, key.as_bytes());
        }
        self.commit(b)
    }

    /// A connection's position in the outbox: the last sequence delivered per partition.
    /// `None`: it has not yet sent the audience's current members.
    pub fn connection_cursor(
        &self,
        id: ConnectionId,
    ) -> StoreResult<Option<BTreeMap<Partition, u64>>> {
        self.get_json(&format!("conncursor/{id:020}"))
    }

    pub fn set_connection_cursor(
        &self,
        id: ConnectionId,
        cursor: &BTreeMap<Partition, u64>,
    ) -> StoreResult<()> {
        self.put_json(&format!("conncursor/{id:020}"), cursor)
    }

    /// The outbox heads a connection's first sync of the current members started from,
    /// kept until the sync is done (a sync started again resumes from the same heads).
    pub fn connection_sync_heads(
        &self,
        id: ConnectionId,
    ) -> StoreResult<Option<BTreeMap<Partition, u64>>> {
        self.get_json(&format!("connsync/{id:020}"))
    }

    pub fn set_connection_sync_heads(
        &self,
        id: ConnectionId,
        heads: &BTreeMap<Partition, u64>,
    ) -> StoreResult<()> {
        self.put_json(&format!("connsync/{id:020}"), heads)
    }

    /// Ends a first sync: the cursor takes over from the heads, in one write.
    pub fn finish_connection_sync(
        &self,
        id: ConnectionId,
        cursor: &BTreeMap<Partition, u64>,
    ) -> StoreResult<()> {
        let mut b = self.batch();
        let cf = self.cf(CF_META);
        let bytes = serde_json::to_vec(cursor).expect("cursors always serialise");
        b.batch
            .put_cf(cf, format!("conncursor/{id:020}").as_bytes(), bytes);
        b.batch
            .delete_cf(cf, format!("connsync/{id:020}").as_bytes());
        self.commit(b)
    }

    /// The lowest position any existing connection still needs in a partition's outbox (its
    /// cursor, or the heads its first sync started from): pruning stops there, so that a
    /// faulted, inactive or slow connection loses nothing.
    pub fn lowest_connection_cursor(&self, partition: Partition) -> StoreResult<Option<u64>> {
        let mut lowest: Option<u64> = None;
        for c in self.load_connections()? {
            let position = match self.connection_cursor(c.id)? {
                Some(cursor) => Some(cursor.get(&partition).copied().unwrap_or(0)),
                None => self
                    .connection_sync_heads(c.id)?
                    .map(|heads| heads.get(&partition).copied().unwrap_or(0)),
            };
            if let Some(position) = position {
                lowest = Some(lowest.map_or(position, |l| l.min(position)));
            }
        }
        Ok(lowest)
    }

    pub fn put_fault(&self, fault: &Fault) -> StoreResult<()> {
        self.put_json(&format!("fault/{:020}", fault.connection_id), fault)
    }

    /// A connection's fault, if it is faulted.
    pub fn fault(&self, id: ConnectionId) -> StoreResult<Option<Fault>> {
        self.get_json(&format!("fault/{id:020}"))
    }

    pub fn clear_fault(&self, id: ConnectionId) -> StoreResult<()> {
        self.db
            .delete_cf(self.cf(CF_META), format!("fault/{id:020}").as_bytes())?;
        Ok(())
    }

    pub fn load_faults(&self) -> StoreResult<Vec<Fault>> {
        self.scan_json("fault/")
    }

    // ------------------------------------------------------------ audiences

    pub fn load_audiences(&self) -> StoreResult<Vec<AudienceRecord>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_AUDIENCES), IteratorMode::Start)
        {
            let (k, v) = item?;
            let record = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                cf: CF_AUDIENCES,
                key: be_u64(&k).to_string(),
                reason: e.to_string(),
            })?;
            out.push(record);
        }
        Ok(out)
    }

    pub fn put_audience(&self, record: &AudienceRecord) -> StoreResult<()> {
        let mut b = self.batch();
        let bytes = serde_json::to_vec(record).expect("audience record always serialises");
        b.batch
            .put_cf(self.cf(CF_AUDIENCES), record.id.to_be_bytes(), bytes);
        b.put_meta_u64(
            AUDIENCE_SEQ_KEY,
            record.id.max(self.meta_u64(AUDIENCE_SEQ_KEY)?.unwrap_or(0)),
        );
        self.commit(b)
    }

    pub fn delete_audience(&self, id: AudienceId) -> StoreResult<()> {
        let mut b = self.batch();
        b.batch.delete_cf(self.cf(CF_AUDIENCES), id.to_be_bytes());
        self.commit(b)
    }

    /// The next free audience id (ids are never reused, even after a delete).
    pub fn next_audience_id(&self) -> StoreResult<AudienceId> {
        Ok(self.meta_u64(AUDIENCE_SEQ_KEY)?.unwrap_or(0) + 1)
    }

    pub fn flush(&self) -> StoreResult<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeltaKind;

    #[test]
    fn ordered_keys_sort_like_integers() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let keys: Vec<_> = values.iter().map(|&v| ordered_i64(v)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for v in values {
            assert_eq!(from_ordered_i64(&ordered_i64(v)), v);
        }
    }

    #[test]
    fn one_batch_holds_state_deltas_timers_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let mut profile = ProfileState::new(-42);
        profile.first_seen_ms = 5;
        let delta = Delta {
            audience_id: 3,
            mpid: -42,
            kind: DeltaKind::Added,
            event_time_ms: 1,
            processing_time_ms: 2,
            version: 1,
        };
        let mut b = store.batch();
        b.put_profile(7, &profile);
        b.put_delta(7, 1, &delta);
        b.set_outbox_head(7, 1);
        b.set_timer(7, 100, -42);
        b.set_next_offset("events", 7, 11);
        b.set_audience_size(3, 7, 1);
        store.commit(b).unwrap();
        drop(store);

        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(store.load_profile(7, -42).unwrap(), Some(profile));
        assert_eq!(store.read_outbox(7, 0, 10).unwrap(), vec![(1, delta)]);
        assert_eq!(store.outbox_head(7).unwrap(), 1);
        assert_eq!(store.due_timers(7, 99, 10).unwrap(), vec![]);
        assert_eq!(store.due_timers(7, 100, 10).unwrap(), vec![(100, -42)]);
        assert_eq!(store.next_offset("events", 7).unwrap(), Some(11));
        assert_eq!(store.audience_sizes().unwrap(), vec![(3, 7, 1)]);
        assert_eq!(store.known_partitions().unwrap(), vec![7]);
        store.prune_outbox(7, 1).unwrap();
        assert!(store.read_outbox(7, 0, 10).unwrap().is_empty());
    }

    fn letter(offset: i64, payload: &[u8], limits: DeadLetterLimits) -> DeadLetter {
        DeadLetter::new(
            "events".into(),
            0,
            offset,
            "malformed".into(),
            "not a JSON batch object (found an array) nor a protobuf envelope".into(),
            Some(b"42".to_vec()),
            payload,
            7,
            limits,
        )
    }

    #[test]
    fn a_dead_letter_keeps_the_message_when_it_fits_and_a_prefix_when_not() {
        let limits = DeadLetterLimits {
            max_record_bytes: 4096,
            prefix_bytes: 100,
        };
        let small = letter(1, &[b'x'; 1000], limits);
        assert_eq!(
            (small.payload.len(), small.original_size, small.truncated),
            (1000, 1000, false)
        );
        let big = letter(2, &[b'y'; 5000], limits);
        assert_eq!(
            (big.payload.len(), big.original_size, big.truncated),
            (100, 5000, true)
        );
        // Room left after the key and headers bounds the prefix too.
        let tight = letter(
            3,
            &[b'z'; 5000],
            DeadLetterLimits {
                max_record_bytes: 600,
                prefix_bytes: 1000,
            },
        );
        assert!(tight.truncated);
        assert!(tight.payload.len() + tight.record_bytes_without_payload() <= 600);
        let cut = small.cut_to(10);
        assert_eq!(
            (cut.payload.len(), cut.original_size, cut.truncated),
            (10, 1000, true)
        );
    }

    #[test]
    fn dead_letters_are_deleted_once_done_and_old_rows_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let limits = DeadLetterLimits::default();
        let mut b = store.batch();
        for seq in 1..=5 {
            b.put_dead_letter(3, seq, &letter(seq as i64, b"[1]", limits));
        }
        b.put_dead_letter(4, 1, &letter(9, b"null", limits));
        store.commit(b).unwrap();
        // A row written before letters knew their original size.
        #[derive(Serialize)]
        struct Untruncated<'a> {
            topic: &'a str,
            partition: i32,
            offset: i64,
            reason_code: &'a str,
            reason: &'a str,
            key: Option<Vec<u8>>,
            payload: Vec<u8>,
            at_ms: i64,
        }
        let old = postcard::to_stdvec(&Untruncated {
            topic: "events",
            partition: 0,
            offset: 6,
            reason_code: "malformed",
            reason: "old",
            key: None,
            payload: b"abc".to_vec(),
            at_ms: 1,
        })
        .unwrap();
        store
            .db
            .put_cf(store.cf(CF_DEADLETTERS), seq_key(3, 6), old)
            .unwrap();
        let read = store.read_dead_letters(3, 5, 10).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            (
                read[0].1.original_size,
                read[0].1.truncated,
                read[0].1.offset
            ),
            (3, false, 6)
        );
        assert_eq!(store.count_dead_letters(3).unwrap(), 6);

        let mut b = store.batch();
        b.delete_dead_letters_through(3, 4);
        store.commit(b).unwrap();
        let left: Vec<u64> = store
            .read_dead_letters(3, 0, 10)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, vec![5, 6]);
        assert_eq!(store.count_dead_letters(3).unwrap(), 2);
        // Another partition's letters stay.
        assert_eq!(store.count_dead_letters(4).unwrap(), 1);
    }

    fn delta(audience: AudienceId, mpid: Mpid, kind: DeltaKind, version: u64, at: i64) -> Delta {
        Delta {
            audience_id: audience,
            mpid,
            kind,
            event_time_ms: at,
            processing_time_ms: at,
            version,
        }
    }

    #[test]
    fn pruning_the_membership_history_keeps_each_pairs_last_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let mut b = store.batch();
        // Pair (1, 5): in and out twice, long ago. Pair (2, 5): in long ago, still a member.
        // Pair (1, 6): out long ago, then in again recently.
        for d in [
            delta(1, 5, DeltaKind::Added, 1, 10),
            delta(1, 5, DeltaKind::Dropped, 2, 20),
            delta(1, 5, DeltaKind::Added, 3, 30),
            delta(1, 5, DeltaKind::Dropped, 4, 40),
            delta(2, 5, DeltaKind::Added, 1, 10),
            delta(1, 6, DeltaKind::Added, 1, 10),
            delta(1, 6, DeltaKind::Dropped, 2, 20),
            delta(1, 6, DeltaKind::Added, 3, 500),
        ] {
            b.record_membership(0, &d);
        }
        store.commit(b).unwrap();
        assert_eq!(store.prune_membership_history(0, 100).unwrap(), 3);
        let versions = |mpid| -> Vec<(AudienceId, Vec<u64>)> {
            store
                .membership_changes_of(0, mpid)
                .unwrap()
                .into_iter()
                .map(|(a, c)| (a, c.iter().map(|c| c.version).collect()))
                .collect()
        };
        assert_eq!(versions(5), vec![(1, vec![4]), (2, vec![1])]);
        assert_eq!(versions(6), vec![(1, vec![3])]);
        // Pruning again finds nothing more to drop: each pair's last word stays.
        assert_eq!(store.prune_membership_history(0, 100).unwrap(), 0);
        assert_eq!(versions(5), vec![(1, vec![4]), (2, vec![1])]);
        // Members at an instant after the prune read the same.
        let members = store.members_at(0, 1, 600, None, 10).unwrap();
        assert_eq!(members, vec![6]);
    }

    #[test]
    fn a_wipe_deletes_states_and_timers_and_keeps_what_profiles_are_rebuilt_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let mut b = store.batch();
        for (partition, mpid) in [(3, i64::MIN), (3, -1), (3, i64::MAX), (4, 9)] {
            let mut profile = ProfileState::new(mpid);
            profile.last_seen_ms = 77;
            b.put_profile(partition, &profile);
            b.put_facts(partition, mpid, &crate::facts::encode_facts(&profile));
            b.set_timer(partition, 1_000, mpid);
            b.record_membership(partition, &delta(8, mpid, DeltaKind::Added, 2, 50));
        }
        b.set_replay_cursor(
            3,
            Some(ReplayCursor {
                wiped: true,
                after: Some(-1),
            }),
        );
        store.commit(b).unwrap();
        let mut b = store.batch();
        b.wipe_profile_states(3);
        store.commit(b).unwrap();
        assert!(store.scan_profiles(3, None, 10).unwrap().is_empty());
        assert!(store.due_timers(3, i64::MAX, 10).unwrap().is_empty());
        // The other partition is untouched.
        assert_eq!(store.scan_profiles(4, None, 10).unwrap().len(), 1);
        assert_eq!(store.due_timers(4, 1_000, 10).unwrap(), vec![(1_000, 9)]);
        let logs = store.scan_profile_logs(3, None, 10).unwrap();
        let mpids: Vec<Mpid> = logs.iter().map(|l| l.mpid).collect();
        assert_eq!(mpids, vec![i64::MIN, -1, i64::MAX]);
        assert!(logs.iter().all(|l| l.facts.last_seen_ms == 77));
        assert_eq!(logs[1].memberships[&8][0].version, 2);
        assert_eq!(store.scan_profile_logs(3, Some(-1), 10).unwrap().len(), 1);
        assert!(store
            .scan_profile_logs(3, Some(i64::MAX), 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            store.replay_cursor(3).unwrap(),
            Some(ReplayCursor {
                wiped: true,
                after: Some(-1)
            })
        );
        let mut b = store.batch();
        b.set_replay_cursor(3, None);
        store.commit(b).unwrap();
        assert_eq!(store.replay_cursor(3).unwrap(), None);
    }
}
