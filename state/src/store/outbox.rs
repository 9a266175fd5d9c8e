//! The outbox of deltas and dead letters, per partition in sequence order, the sinks' published
//! sequences and the consumed input offsets. Invariant: a sequence is written once, in the same
//! batch as the state change that produced it, and pruned only after every reader is past it.

use super::db::*;
use super::deadletter::*;
use super::keys::*;
use crate::model::{Delta, TimestampMs};
use crate::row_format::{frame_legacy_row, unframe, DELTA_FORMAT};
use rocksdb::{Direction, IteratorMode};

/// Meta key (the node's own) of the format of this store's outbox and dead-letter rows:
/// absent in stores written before those rows had a format byte.
const ROW_FORMAT_KEY: &str = "rows/format";

/// The value of [`ROW_FORMAT_KEY`]: every outbox and dead-letter row has its format byte.
const ROW_FORMAT: u64 = 1;

/// A stored delta: [`DELTA_FORMAT`], then postcard.
fn encode_delta(delta: &Delta) -> Vec<u8> {
    let mut bytes = vec![DELTA_FORMAT];
    bytes.extend(postcard::to_stdvec(delta).expect("delta always serialises"));
    bytes
}

fn decode_delta(bytes: &[u8]) -> Result<Delta, String> {
    postcard::from_bytes(unframe("delta", DELTA_FORMAT, bytes)?).map_err(|e| e.to_string())
}

impl WriteBatch<'_> {
    pub fn put_delta(&mut self, partition: Partition, seq: u64, delta: &Delta) {
        let cf = CF_OUTBOX;
        self.put(cf, seq_key(partition, seq), encode_delta(delta));
    }

    pub fn set_outbox_head(&mut self, partition: Partition, seq: u64) {
        self.put_meta_u64(&outbox_head_key(partition), seq);
    }

    pub fn put_dead_letter(&mut self, partition: Partition, seq: u64, letter: &DeadLetter) {
        let cf = CF_DEADLETTERS;
        self.put(cf, seq_key(partition, seq), letter.encode());
        self.put_meta_u64(&deadletter_head_key(partition), seq);
    }

    /// Deletes the partition's dead letters up to `seq` (published, or dropped past the
    /// bound on what is kept).
    pub fn delete_dead_letters_through(&mut self, partition: Partition, seq: u64) {
        let cf = CF_DEADLETTERS;
        let end = seq_key(partition, seq.saturating_add(1));
        self.delete_range(cf, seq_key(partition, 0), end);
        if seq == u64::MAX {
            self.delete(cf, end);
        }
    }

    /// Records that everything before `next_offset` of `topic`/`partition` has been applied.
    pub fn set_next_offset(&mut self, topic: &str, partition: Partition, next_offset: i64) {
        self.put_meta_u64(&offset_key(topic, partition), next_offset as u64);
    }

    pub fn set_published(&mut self, sink: &str, partition: Partition, seq: u64) {
        self.put_meta_u64(&published_key(sink, partition), seq);
    }
}

impl Store {
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
        let mut b = self.partition_batch();
        b.set_published(sink, partition, seq);
        self.commit_partition(b, partition)
    }

    /// Deltas of a partition with sequence in `(after, ..]`, at most `limit`.
    pub fn read_outbox(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Delta)>> {
        self.read_seq_with(CF_OUTBOX, partition, after, limit, decode_delta)
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
        let prefix = partition.to_be_bytes();
        let count = self
            .rows_with_prefix(CF_DEADLETTERS, &prefix)
            .try_fold(0, |n, row| row.map(|_| n + 1));
        count
    }

    /// The rows of a sequence-keyed column family after `after`, at most `limit`, decoded. A
    /// row that does not decode is set aside ([`super::quarantine`]) and skipped: its readers
    /// (the publisher, the connections) go on with the next.
    pub(super) fn read_seq_with<T>(
        &self,
        cf: &'static str,
        partition: Partition,
        after: u64,
        limit: usize,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> StoreResult<Vec<(u64, T)>> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = seq_key(partition, from);
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if k[..4] != partition.to_be_bytes() || out.len() >= limit {
                break;
            }
            let seq = be_u64(&k[4..12]);
            match decode(&v) {
                Ok(value) => out.push((seq, value)),
                Err(reason) => unreadable.push(UnreadableRow::new(
                    partition,
                    cf,
                    &k,
                    format!("{partition}/{seq}"),
                    reason,
                )),
            }
        }
        self.set_aside(&unreadable)?;
        Ok(out)
    }

    /// The oldest sequence still in the outbox of a partition.
    pub fn outbox_tail(&self, partition: Partition) -> StoreResult<Option<u64>> {
        Ok(self.read_outbox(partition, 0, 1)?.first().map(|(s, _)| *s))
    }

    /// Deletes the deltas of a partition up to and including `through`.
    pub fn prune_outbox(&self, partition: Partition, through: u64) -> StoreResult<()> {
        let mut b = self.partition_batch();
        b.delete_range(
            CF_OUTBOX,
            seq_key(partition, 0),
            seq_key(partition, through.saturating_add(1)),
        );
        self.commit_partition(b, partition)
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
}

impl Store {
    /// Gives the outbox's and the dead letters' rows of a store written before they had a
    /// format byte that byte, and the units waiting for the changelog topic the current unit
    /// format: once, in one synced write, at open.
    pub(super) fn migrate_row_formats(&self) -> StoreResult<()> {
        if self.meta_u64(ROW_FORMAT_KEY)?.is_some() {
            return Ok(());
        }
        let mut b = self.batch();
        let rows = self.frame_legacy_rows(&mut b, &[])?;
        for item in self
            .db
            .iterator_cf(self.cf(CF_CHANGELOG), IteratorMode::Start)
        {
            let (k, v) = item?;
            // Units are keyed (partition, sequence); the node's positions are shorter keys.
            if k.len() == 12 {
                if let Ok(unit) = crate::changelog::Unit::decode(&v) {
                    b.batch.put_cf(self.cf(CF_CHANGELOG), k, unit.encode());
                }
            }
        }
        b.put_meta_u64(ROW_FORMAT_KEY, ROW_FORMAT);
        self.commit_synced(b)?;
        if rows > 0 {
            tracing::info!(rows, "outbox and dead-letter rows given their format byte");
        }
        Ok(())
    }

    /// Gives a partition's outbox and dead-letter rows, loaded from a snapshot of the legacy
    /// format, the format byte they lack.
    pub(super) fn frame_legacy_rows_of(&self, partition: Partition) -> StoreResult<()> {
        let mut b = self.batch();
        self.frame_legacy_rows(&mut b, &partition.to_be_bytes())?;
        self.commit(b)
    }

    /// Adds to `b` the framed form of every outbox and dead-letter row whose key starts with
    /// `prefix` (empty: all of them). Returns how many.
    fn frame_legacy_rows(&self, b: &mut WriteBatch<'_>, prefix: &[u8]) -> StoreResult<u64> {
        let mut rows = 0;
        for cf in [CF_OUTBOX, CF_DEADLETTERS] {
            for row in self.rows_with_prefix(cf, prefix) {
                let (k, v) = row?;
                if let Some(framed) = frame_legacy_row(cf, &v) {
                    b.batch.put_cf(self.cf(cf), k, framed);
                    rows += 1;
                }
            }
        }
        Ok(rows)
    }
}
