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
use super::keys::seq_key;
use crate::changelog::Unit;

fn next_seq_key(partition: Partition) -> String {
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

impl Store {
    /// Commits a logged batch (see [`Store::logged_batch`]) as the next unit of `partition`,
    /// written under `epoch`; returns its sequence.
    pub fn commit_unit(
        &self,
        mut batch: WriteBatch<'_>,
        partition: Partition,
        epoch: u64,
    ) -> StoreResult<u64> {
        let _one_at_a_time = self.unit_lock.lock().unwrap_or_else(|e| e.into_inner());
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
        batch.batch.put_cf(
            self.cf(CF_CHANGELOG),
            seq_key(partition, seq),
            unit.encode(),
        );
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

    /// The changelog topic holds the partition's units through `seq`: they stop waiting.
    pub fn acknowledge_units(&self, partition: Partition, seq: u64) -> StoreResult<()> {
        let mut b = self.batch();
        b.batch.delete_range_cf(
            self.cf(CF_CHANGELOG),
            seq_key(partition, 0),
            seq_key(partition, seq.saturating_add(1)),
        );
        b.batch.put_cf(
            self.cf(CF_CHANGELOG),
            acknowledged_key(partition),
            seq.to_be_bytes(),
        );
        self.commit(b)
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
}
