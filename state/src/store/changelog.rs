//! A partition's changelog on the node that owns it: each logged batch is committed as the
//! partition's next unit ([`Store::commit_unit`]), and the encoded unit is kept in the
//! `changelog` column family, in the same write, until the changelog topic acknowledged it
//! ([`Store::acknowledge_units`]). So a unit is never lost between the local write and the
//! topic: a node that crashed in between sends it on restart.
//!
//! Invariants: unit sequences of a partition are 1, 2, 3... in commit order, and the next
//! sequence is itself replicated (meta `changelog/seq/{p}`), so a node that takes the
//! partition over continues the numbering; what waits for the topic is node-local and never
//! replicated.

use super::db::*;
use super::keys::{meta_key_partition, outbox_head_key, seq_key};
use crate::changelog::follow::Position;
use crate::changelog::{cf_code, Op, Unit};
use std::sync::atomic::Ordering;

pub(super) fn next_seq_key(partition: Partition) -> String {
    format!("changelog/seq/{partition}")
}

/// In the `changelog` column family (node-local), after every unit key of the partition: its
/// units are 12-byte keys whose sequence starts with a zero byte below 2^56.
fn acknowledged_key(partition: Partition) -> [u8; 7] {
    let mut k = [0u8; 7];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(b"ack");
    k
}

/// In the `changelog` column family: the outbox head written by the last unit the topic
/// acknowledged, up to which outbox readers may read.
fn readable_key(partition: Partition) -> [u8; 7] {
    let mut k = [0u8; 7];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(b"out");
    k
}

/// In the `changelog` column family: where this node stands in the partition's changelog
/// topic (see [`crate::changelog::follow`]).
pub(super) fn position_key(partition: Partition) -> [u8; 7] {
    let mut k = [0u8; 7];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(b"pos");
    k
}

/// The first key of a partition's range in a column family keyed by partition first, and the
/// first key after it.
pub(super) fn partition_range(partition: Partition) -> ([u8; 4], [u8; 4]) {
    let next = partition
        .checked_add(1)
        .expect("partitions are Kafka's, below 2^31");
    (partition.to_be_bytes(), next.to_be_bytes())
}

/// The outbox head a unit writes, if it writes one.
fn outbox_head_in(unit: &Unit) -> Option<u64> {
    let (meta, key) = (cf_code(CF_META), outbox_head_key(unit.partition));
    unit.ops.iter().rev().find_map(|op| match op {
        Op::Put { cf, key: k, value } if *cf == meta && k == key.as_bytes() => Some(be_u64(value)),
        _ => None,
    })
}

impl Store {
    /// The outbox head readers may read up to (publishers, deliveries, subscribers): with
    /// partition writes logged, the head written by the last unit the changelog topic holds,
    /// so that nothing leaves the node before it is in the changelog; otherwise the head.
    pub fn readable_outbox_head(&self, partition: Partition) -> StoreResult<u64> {
        if self.logs_partition_writes() {
            if let Some(v) = self
                .db
                .get_pinned_cf(self.cf(CF_CHANGELOG), readable_key(partition))?
            {
                return Ok(be_u64(&v));
            }
        }
        self.outbox_head(partition)
    }

    /// Deltas of a partition after `after`, as [`Store::read_outbox`], up to the readable
    /// head only (see [`Store::readable_outbox_head`]).
    pub fn read_readable_outbox(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, crate::model::Delta)>> {
        let readable = self.readable_outbox_head(partition)?;
        let mut deltas = self.read_outbox(partition, after, limit)?;
        deltas.retain(|(seq, _)| *seq <= readable);
        Ok(deltas)
    }

    /// From now on, every write of a partition's state is committed as a unit of its
    /// changelog (see [`Store::partition_batch`]).
    pub fn log_partition_writes(&self) {
        self.changelog.enabled.store(true, Ordering::SeqCst);
    }

    pub fn logs_partition_writes(&self) -> bool {
        self.changelog.enabled.load(Ordering::SeqCst)
    }

    /// The epoch of this node's accepted claim on a partition: from now on it may write the
    /// partition, and the units it writes carry the epoch.
    pub fn set_partition_epoch(&self, partition: Partition, epoch: u64) {
        self.epochs().insert(partition, epoch);
    }

    /// Whether this node may write the partition: always without the changelog, only under an
    /// accepted claim with it.
    pub fn may_write(&self, partition: Partition) -> bool {
        !self.logs_partition_writes() || self.epochs().contains_key(&partition)
    }

    /// The partitions this node may write (with an accepted claim), in order.
    pub fn writable_partitions(&self) -> Vec<Partition> {
        let mut partitions: Vec<Partition> = self.epochs().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// This node no longer owns the partition (revoked, or being restored): with the changelog
    /// on, its writes of the partition are refused from now on ([`StoreError::NotWritable`]).
    /// Held under the unit lock: a unit being committed is committed before this returns.
    pub fn stop_writing(&self, partition: Partition) {
        let _no_unit_in_flight = self.unit_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.epochs().remove(&partition);
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Partition, u64>> {
        self.changelog
            .epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A batch for a partition's state: logged when partition writes are (so that
    /// [`Store::commit_partition`] makes it a unit of the changelog).
    pub fn partition_batch(&self) -> WriteBatch<'_> {
        if self.logs_partition_writes() {
            self.logged_batch()
        } else {
            self.batch()
        }
    }

    /// Commits a batch of a partition's state: as its next changelog unit when the batch is
    /// logged, as a plain write otherwise.
    pub fn commit_partition(&self, batch: WriteBatch<'_>, partition: Partition) -> StoreResult<()> {
        let bytes = batch.size_in_bytes() as u64;
        if batch.ops().is_some() {
            self.commit_owned_unit(batch, partition)?;
        } else {
            self.commit(batch)?;
        }
        self.partition_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of the batches [`Store::commit_partition`] committed since the store was opened:
    /// what the partitions' state costs the write-ahead log and the memtables, before flushes
    /// and compactions rewrite it. Over the messages processed, the store's cost of one.
    pub fn partition_bytes_committed(&self) -> u64 {
        self.partition_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commits a logged batch as the next unit of a partition this node claimed, under its
    /// claim's epoch; refused for any other partition.
    fn commit_owned_unit(&self, batch: WriteBatch<'_>, partition: Partition) -> StoreResult<()> {
        let _one_at_a_time = self.unit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = self.epochs().get(&partition).copied();
        let epoch = epoch.ok_or(StoreError::NotWritable { partition })?;
        self.commit_unit_locked(batch, partition, epoch)?;
        Ok(())
    }

    /// Commits a logged batch (see [`Store::logged_batch`]) as the next unit of `partition`,
    /// written under `epoch`; returns its sequence.
    pub fn commit_unit(
        &self,
        batch: WriteBatch<'_>,
        partition: Partition,
        epoch: u64,
    ) -> StoreResult<u64> {
        let _one_at_a_time = self.unit_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.commit_unit_locked(batch, partition, epoch)
    }

    fn commit_unit_locked(
        &self,
        mut batch: WriteBatch<'_>,
        partition: Partition,
        epoch: u64,
    ) -> StoreResult<u64> {
        let key = next_seq_key(partition);
        let seq = self.meta_u64(&key)?.unwrap_or(0) + 1;
        batch.put_meta_u64(&key, seq);
        let ops = batch
            .ops
            .take()
            .expect("a unit is committed from a logged batch");
        let unit = Unit {
            partition,
            epoch,
            seq,
            ops,
        };
        // Not an operation of the unit: what waits for the topic stays on this node.
        let changelog = self.cf(CF_CHANGELOG);
        batch
            .batch
            .put_cf(changelog, seq_key(partition, seq), unit.encode());
        if self
            .db
            .get_pinned_cf(changelog, readable_key(partition))?
            .is_none()
        {
            // The first logged unit: what came before it stays readable, it waits.
            let head = self.outbox_head(partition)?;
            batch
                .batch
                .put_cf(changelog, readable_key(partition), head.to_be_bytes());
        }
        self.commit(batch)?;
        Ok(seq)
    }

    /// Units of a partition waiting for the changelog topic, from the oldest, as encoded.
    pub fn pending_units(
        &self,
        partition: Partition,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let from = seq_key(partition, 0);
        for item in self.db.iterator_cf(
            self.cf(CF_CHANGELOG),
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() != 12 || k[..4] != partition.to_be_bytes() || out.len() >= limit {
                break;
            }
            out.push((be_u64(&k[4..]), v.to_vec()));
        }
        Ok(out)
    }

    /// The partitions with units waiting for the changelog topic.
    pub fn partitions_with_pending_units(&self) -> StoreResult<Vec<Partition>> {
        let mut out = Vec::new();
        let mut next: u64 = 0;
        while next <= u32::MAX as u64 {
            let from = seq_key(next as Partition, 0);
            let mut it = self.db.iterator_cf(
                self.cf(CF_CHANGELOG),
                rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
            );
            let Some(item) = it.next() else { break };
            let (k, _) = item?;
            let p = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
            // A unit key (12 bytes) waits; the acknowledged position (7) does not.
            if k.len() == 12 && !out.contains(&p) {
                out.push(p);
            }
            next = p as u64 + 1;
        }
        Ok(out)
    }

    /// The changelog topic holds the partition's units `delivered` (sequence and topic offset,
    /// in order, from the oldest waiting): they stop waiting. Returns whether the log accepts
    /// them as this node's.
    ///
    /// The fencing of a zombie, on the writer's side: after this node's claim, its units must
    /// land right after it and after each other, in its own epoch. A record of another writer
    /// in between (a newer owner's claim) means this node lost the partition: from there on
    /// its units are refused by every reader, so what they wrote to the outbox never becomes
    /// readable here, and the position stays at the last accepted unit.
    ///
    /// `benign` lists offset ranges (from, to: excluded) known to hold no claim above this
    /// node's epoch (see [`crate::changelog::follow::gap_keeps_reign`]): a unit landing right
    /// after such a range still follows.
    pub fn acknowledge_units(
        &self,
        partition: Partition,
        delivered: &[(u64, i64)],
        benign: &[(i64, i64)],
    ) -> StoreResult<bool> {
        let Some(&(last_seq, _)) = delivered.last() else {
            return Ok(true);
        };
        let _positions = self.lock_positions();
        let mut position = self.changelog_follow_position(partition)?;
        let mut advanced = false;
        let mut readable = None;
        let mut accepted = true;
        let waiting: std::collections::HashMap<u64, Vec<u8>> = self
            .pending_units(partition, delivered.len())?
            .into_iter()
            .collect();
        for &(seq, offset) in delivered {
            let unit = waiting.get(&seq).and_then(|bytes| Unit::decode(bytes).ok());
            let lands_next =
                offset == position.next_offset || benign.contains(&(position.next_offset, offset));
            let follows = unit.as_ref().is_some_and(|u| u.epoch == position.own_epoch)
                && lands_next
                && seq == position.seq + 1;
            if !(accepted && follows) {
                accepted = false;
                continue;
            }
            position.next_offset = offset + 1;
            position.seq = seq;
            advanced = true;
            if let Some(head) = unit.as_ref().and_then(outbox_head_in) {
                readable = Some(head);
            }
        }
        let changelog = self.cf(CF_CHANGELOG);
        let mut b = self.batch();
        if let Some(head) = readable {
            // Readers may now read what these units wrote to the outbox.
            b.batch
                .put_cf(changelog, readable_key(partition), head.to_be_bytes());
        }
        if advanced {
            b.batch
                .put_cf(changelog, position_key(partition), position.encode());
        }
        b.batch.delete_range_cf(
            changelog,
            seq_key(partition, 0),
            seq_key(partition, last_seq.saturating_add(1)),
        );
        b.batch.put_cf(
            changelog,
            acknowledged_key(partition),
            last_seq.to_be_bytes(),
        );
        self.commit(b)?;
        Ok(accepted)
    }

    /// The partition's last unit committed here, and the last the topic acknowledged.
    pub fn changelog_position(&self, partition: Partition) -> StoreResult<(u64, u64)> {
        let acknowledged = self
            .db
            .get_pinned_cf(self.cf(CF_CHANGELOG), acknowledged_key(partition))?
            .map_or(0, |v| be_u64(&v));
        Ok((
            self.meta_u64(&next_seq_key(partition))?.unwrap_or(0),
            acknowledged,
        ))
    }

    /// Where this node stands in the partition's changelog topic.
    pub fn changelog_follow_position(&self, partition: Partition) -> StoreResult<Position> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_CHANGELOG), position_key(partition))?
        {
            None => Ok(Position::default()),
            Some(v) => Position::decode(&v).map_err(|reason| StoreError::Corrupt {
                cf: CF_CHANGELOG,
                key: format!("{partition}/pos"),
                reason,
            }),
        }
    }

    /// Stores where this node stands in the partition's changelog topic (after records that
    /// changed nothing: claims, repetitions, its own units).
    pub fn save_changelog_follow_position(
        &self,
        partition: Partition,
        position: &Position,
    ) -> StoreResult<()> {
        let _positions = self.lock_positions();
        let mut b = self.batch();
        b.batch.put_cf(
            self.cf(CF_CHANGELOG),
            position_key(partition),
            position.encode(),
        );
        self.commit(b)
    }

    fn lock_positions(&self) -> std::sync::MutexGuard<'_, ()> {
        self.position_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a unit read from the changelog topic, and the position past it, in one write:
    /// a crash re-reads it or not at all.
    pub fn apply_unit_at(&self, unit: &Unit, position: &Position) -> StoreResult<()> {
        self.apply_units_at(unit.partition, std::slice::from_ref(unit), position)
    }

    /// Applies consecutive units of `partition` read from the changelog topic, in order, and
    /// the position past the last record read, in one write: a restore reading a long log
    /// writes once per run of units the consumer had ready instead of once per unit.
    pub fn apply_units_at(
        &self,
        partition: Partition,
        units: &[Unit],
        position: &Position,
    ) -> StoreResult<()> {
        let _positions = self.lock_positions();
        let mut b = self.batch();
        for unit in units {
            debug_assert_eq!(unit.partition, partition, "units of one partition");
            self.add_unit(&mut b, unit)?;
        }
        b.batch.put_cf(
            self.cf(CF_CHANGELOG),
            position_key(partition),
            position.encode(),
        );
        self.commit(b)
    }

    /// Whether column family `cf` holds a key in `[from, to)`.
    fn holds_keys_between(
        &self,
        cf: &'static str,
        from: [u8; 4],
        to: [u8; 4],
    ) -> StoreResult<bool> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(to.to_vec());
        let mut keys = self.db.raw_iterator_cf_opt(self.cf(cf), options);
        keys.seek(from);
        if keys.valid() {
            return Ok(true);
        }
        keys.status()?;
        Ok(false)
    }

    /// The partition is restored to `position`, the changelog topic's end: every unit this
    /// node holds is on the topic, so every delta of its outbox may leave (the readable head
    /// left by an earlier ownership is stale).
    pub fn mark_restored(&self, partition: Partition, position: &Position) -> StoreResult<()> {
        let _positions = self.lock_positions();
        let changelog = self.cf(CF_CHANGELOG);
        let mut b = self.batch();
        b.batch
            .put_cf(changelog, position_key(partition), position.encode());
        b.batch.put_cf(
            changelog,
            readable_key(partition),
            self.outbox_head(partition)?.to_be_bytes(),
        );
        b.batch.put_cf(
            changelog,
            acknowledged_key(partition),
            position.seq.to_be_bytes(),
        );
        self.commit(b)
    }

    /// Deletes every key of a partition's state, and this node's changelog records of it
    /// (waiting units, position): the state went another way than the changelog, which
    /// rebuilds it. The catalog and the node's own keys stay.
    pub fn wipe_partition(&self, partition: Partition) -> StoreResult<()> {
        let _positions = self.lock_positions();
        let (from, to) = partition_range(partition);
        let mut b = self.batch();
        for &cf in REPLICATED.iter().chain(&[CF_CHANGELOG]) {
            // No tombstone over a range without keys (a node new to the partition): a snapshot
            // ingested next over a range tombstone in the memtable waits for a flush per column
            // family.
            if cf != CF_META && cf != CF_AUDIENCES && self.holds_keys_between(cf, from, to)? {
                b.batch.delete_range_cf(self.cf(cf), from, to);
            }
        }
        for item in self
            .db
            .iterator_cf(self.cf(CF_META), rocksdb::IteratorMode::Start)
        {
            let (k, _) = item?;
            if meta_key_partition(&k) == Some(partition) {
                b.batch.delete_cf(self.cf(CF_META), k);
            }
        }
        self.commit(b)?;
        self.stop_writing(partition);
        Ok(())
    }
}
