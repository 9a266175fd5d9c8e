//! Membership history (every change, by audience and by profile) and audience sizes per
//! partition. Invariant: a pair's last change is never pruned; its version is where deltas
//! continue from.

use super::db::*;
use super::keys::*;
use crate::model::{AudienceId, Delta, DeltaKind, Mpid, TimestampMs};
use rocksdb::{Direction, IteratorMode};
use std::collections::BTreeMap;

impl WriteBatch<'_> {
    /// Records a delta's change in the membership history (both keys).
    pub fn record_membership(&mut self, partition: Partition, delta: &Delta) {
        let cf = CF_MEMBERS;
        let value = crate::membership::encode_change(delta.kind, delta.processing_time_ms);
        self.put(
            cf,
            member_by_audience_key(partition, delta.audience_id, delta.mpid, delta.version),
            value,
        );
        self.put(
            cf,
            member_by_profile_key(partition, delta.mpid, delta.audience_id, delta.version),
            value,
        );
    }

    pub fn set_audience_size(&mut self, audience: AudienceId, partition: Partition, size: u64) {
        self.put_meta_u64(&size_key(audience, partition), size);
    }

    pub(super) fn delete_membership(
        &mut self,
        partition: Partition,
        audience: AudienceId,
        mpid: Mpid,
        version: u64,
    ) {
        let cf = CF_MEMBERS;
        self.delete(
            cf,
            member_by_audience_key(partition, audience, mpid, version),
        );
        self.delete(
            cf,
            member_by_profile_key(partition, mpid, audience, version),
        );
    }
}

impl Store {
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
        let mut batch = self.partition_batch();
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
        self.commit_partition(batch, partition)?;
        Ok(pruned)
    }

    pub fn audience_size(&self, audience: AudienceId, partition: Partition) -> StoreResult<u64> {
        Ok(self.meta_u64(&size_key(audience, partition))?.unwrap_or(0))
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
}
