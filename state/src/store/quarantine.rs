//! Rows this version cannot read, set aside. One undecodable row (a bit flip, a bug, a row of a
//! newer version after a downgrade) must cost that row and the messages that needed it, never a
//! partition or the engine: the reader skips it, copies it here with why it failed, counts it,
//! and goes on. `audiencectl verify` reports what is here.
//!
//! The `quarantine` column family is this node's own record (like `changelog`, never
//! replicated): each node sets aside what it failed to read. Its copies are written outside the
//! changelog's units, so a replica's replicated column families stay byte for byte its
//! owner's. Key: partition (4 bytes BE, [`NODE_ROWS`] for rows of no partition), the code of
//! the column family the row was in ([`crate::changelog::cf_code`]), the row's key. Value:
//! [`QUARANTINE_FORMAT`], then postcard of [`Quarantined`].

use super::db::*;
use super::keys::from_ordered_i64;
use crate::changelog::{cf_code, cf_name};
use crate::model::{Mpid, TimestampMs};
use rocksdb::{Direction, IteratorMode};
use serde::{Deserialize, Serialize};

/// Version byte of a quarantine record.
const QUARANTINE_FORMAT: u8 = 1;

/// A row set aside: its copy, and why and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub cf: String,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub display_key: String,
    pub reason: String,
    pub at_ms: TimestampMs,
    /// The row as it was found (empty when it was gone by the time it was set aside).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

fn quarantine_key(partition: Partition, cf: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.push(cf_code(cf));
    k.extend_from_slice(key);
    k
}

impl UnreadableRow {
    /// The profile the row belongs to, for rows keyed by profile (`profiles`, `derived`,
    /// `facts`, `eventlog`).
    pub fn mpid(&self) -> Option<Mpid> {
        let keyed_by_profile = [CF_PROFILES, CF_DERIVED, CF_FACTS, CF_EVENTLOG].contains(&self.cf);
        (keyed_by_profile && self.key.len() >= 12).then(|| from_ordered_i64(&self.key[4..12]))
    }

    /// Whether the row is (a part of) a profile's state: a cache of its base and log, so
    /// rebuilt from them rather than lost.
    pub fn is_profile_state(&self) -> bool {
        self.cf == CF_PROFILES || self.cf == CF_DERIVED
    }
}

impl WriteBatch<'_> {
    /// Sets a row aside: copies its current value (read now, before this batch rewrites it)
    /// into the quarantine, outside the changelog unit. Counted in
    /// `audience_rows_quarantined_total`.
    pub fn quarantine(&mut self, row: &UnreadableRow, at_ms: TimestampMs) -> StoreResult<()> {
        let key = quarantine_key(row.partition, row.cf, &row.key);
        let quarantine = self.store.cf(CF_QUARANTINE);
        if self.store.db.get_pinned_cf(quarantine, &key)?.is_some() {
            // Set aside already: a reader that skips a row meets it on every pass.
            return Ok(());
        }
        let value = self
            .store
            .db
            .get_cf(self.store.cf(row.cf), &row.key)?
            .unwrap_or_default();
        let record = Quarantined {
            cf: row.cf.to_string(),
            key: row.key.clone(),
            display_key: row.display_key.clone(),
            reason: row.reason.clone(),
            at_ms,
            value,
        };
        let mut bytes = vec![QUARANTINE_FORMAT];
        bytes.extend(postcard::to_stdvec(&record).expect("quarantine record always serialises"));
        // Not `self.put`: the node's own record, never part of a replicated unit.
        self.batch.put_cf(quarantine, key, bytes);
        tracing::error!(partition = row.partition, cf = row.cf, key = %row.display_key,
            reason = %row.reason, "unreadable row set aside in the quarantine");
        metrics::counter!("audience_rows_quarantined_total", "cf" => row.cf).increment(1);
        Ok(())
    }
}

impl Store {
    /// Sets rows aside in a write of their own, at the wall clock's time: rows met by
    /// readers outside a unit of work (definitions at start-up, the outbox's readers, scans
    /// for previews and first syncs), which have no engine clock at hand.
    pub fn set_aside(&self, rows: &[UnreadableRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as TimestampMs);
        let mut b = self.batch();
        for row in rows {
            b.quarantine(row, now)?;
        }
        self.commit(b)
    }

    /// The rows set aside under a partition ([`NODE_ROWS`]: definitions), oldest key first,
    /// at most `limit`; and how many there are in all.
    pub fn quarantined(
        &self,
        partition: Partition,
        limit: usize,
    ) -> StoreResult<(Vec<Quarantined>, u64)> {
        let prefix = partition.to_be_bytes();
        let mut rows = Vec::new();
        let mut count = 0;
        for item in self.db.iterator_cf(
            self.cf(CF_QUARANTINE),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.len() < 5 || k[..4] != prefix {
                break;
            }
            count += 1;
            if rows.len() >= limit {
                continue;
            }
            let record = match v.split_first() {
                Some((&QUARANTINE_FORMAT, rest)) => postcard::from_bytes(rest).ok(),
                _ => None,
            };
            // A record this version cannot read still says where the row was.
            rows.push(record.unwrap_or_else(|| Quarantined {
                cf: cf_name(k[4]).unwrap_or("unknown").to_string(),
                key: k[5..].to_vec(),
                display_key: format!("{:02x?}", &k[5..]),
                reason: "quarantine record of another version".to_string(),
                at_ms: 0,
                value: Vec::new(),
            }));
        }
        Ok((rows, count))
    }
}
