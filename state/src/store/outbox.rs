//! The outbox of deltas and dead letters, per partition in sequence order, the sinks' published
//! sequences and the consumed input offsets. Invariant: a sequence is written once, in the same
//! batch as the state change that produced it, and pruned only after every reader is past it.

use super::db::*;
use super::deadletter::*;
use super::keys::*;
use crate::model::{Delta, TimestampMs};
use rocksdb::{Direction, IteratorMode};

impl WriteBatch<'_> {
    pub fn put_delta(&mut self, partition: Partition, seq: u64, delta: &Delta) {
        let cf = CF_OUTBOX;
        let bytes = postcard::to_stdvec(delta).expect("delta always serialises");
        self.put(cf, seq_key(partition, seq), bytes);
    }

    pub fn set_outbox_head(&mut self, partition: Partition, seq: u64) {
        self.put_meta_u64(&outbox_head_key(partition), seq);
    }

    pub fn put_dead_letter(&mut self, partition: Partition, seq: u64, letter: &DeadLetter) {
        let cf = CF_DEADLETTERS;
        let bytes = postcard::to_stdvec(letter).expect("dead letter always serialises");
        self.put(cf, seq_key(partition, seq), bytes);
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

    pub(super) fn read_seq<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        partition: Partition,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, T)>> {
        self.read_seq_with(cf, partition, after, limit, |v| postcard::from_bytes(v))
    }

    pub(super) fn read_seq_with<T>(
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
