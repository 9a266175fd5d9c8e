//! Where each connection stands in each partition's outbox. A position is partition state:
//! it is written by the partition's owner as a unit of the partition's changelog (with the
//! changelog on), so a node that takes the partition over delivers from where the last owner
//! stopped, and a node that does not own it cannot write it ([`StoreError::NotWritable`]).
//!
//! Invariants: a position moves only after the output accepted everything up to it; a
//! partition without a position for a connection has not had the audience's current members
//! sent yet (its first sync); a sync started again keeps the outbox head it started from.

use super::db::*;
use crate::outputs::{ConnectionId, ConnectionStatus};
use std::collections::BTreeMap;

/// A connection's position in one partition's outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryPosition {
    /// The first sync of the current members is under way; the deltas after this outbox
    /// head follow it.
    Syncing { head: u64 },
    /// Everything up to this outbox sequence was delivered.
    Delivered(u64),
}

impl DeliveryPosition {
    /// The lowest outbox sequence the connection may still need (pruning stops after it).
    pub fn needs_after(&self) -> u64 {
        match *self {
            DeliveryPosition::Syncing { head } | DeliveryPosition::Delivered(head) => head,
        }
    }
}

const DELIVERED: &str = "delivered/";
const SYNCING: &str = "syncing/";

fn delivered_key(partition: Partition, id: ConnectionId) -> String {
    format!("{DELIVERED}{partition}/{id:020}")
}

fn syncing_key(partition: Partition, id: ConnectionId) -> String {
    format!("{SYNCING}{partition}/{id:020}")
}

/// The connection a position key (without its prefix: `{partition}/{id}`) belongs to.
fn connection_of(rest: &[u8]) -> Option<(Partition, ConnectionId)> {
    let (p, id) = std::str::from_utf8(rest).ok()?.split_once('/')?;
    Some((p.parse().ok()?, id.parse().ok()?))
}

impl Store {
    /// Where a connection stands in a partition's outbox; `None` before its first sync.
    pub fn delivery_position(
        &self,
        partition: Partition,
        id: ConnectionId,
    ) -> StoreResult<Option<DeliveryPosition>> {
        if let Some(seq) = self.meta_u64(&delivered_key(partition, id))? {
            return Ok(Some(DeliveryPosition::Delivered(seq)));
        }
        Ok(self
            .meta_u64(&syncing_key(partition, id))?
            .map(|head| DeliveryPosition::Syncing { head }))
    }

    /// Moves a connection's position in a partition, as a write of the partition's state (a
    /// changelog unit when the changelog is on): refused on a node that does not own it.
    pub fn set_delivery_position(
        &self,
        partition: Partition,
        id: ConnectionId,
        position: DeliveryPosition,
    ) -> StoreResult<()> {
        let mut b = self.partition_batch();
        match position {
            DeliveryPosition::Syncing { head } => {
                b.put_meta_u64(&syncing_key(partition, id), head);
                b.delete(CF_META, delivered_key(partition, id));
            }
            DeliveryPosition::Delivered(seq) => {
                b.put_meta_u64(&delivered_key(partition, id), seq);
                b.delete(CF_META, syncing_key(partition, id));
            }
        }
        self.commit_partition(b, partition)
    }

    /// Every position this store holds, by (partition, connection).
    pub fn delivery_positions(
        &self,
    ) -> StoreResult<BTreeMap<(Partition, ConnectionId), DeliveryPosition>> {
        let mut out = BTreeMap::new();
        for (prefix, delivered) in [(SYNCING, false), (DELIVERED, true)] {
            for (rest, v) in self.meta_with_prefix(prefix)? {
                let Some(at) = connection_of(&rest) else {
                    continue;
                };
                let seq = be_u64(&v);
                // A delivered position wins: it is written after the sync it ends.
                out.insert(
                    at,
                    if delivered {
                        DeliveryPosition::Delivered(seq)
                    } else {
                        DeliveryPosition::Syncing { head: seq }
                    },
                );
            }
        }
        Ok(out)
    }

    /// The lowest position any sending connection still needs in a partition's outbox:
    /// pruning stops there, so that a faulted or slow connection loses nothing. An inactive
    /// one does not hold pruning back for ever: when it sends again after pruning passed it,
    /// it syncs again from the current members (and the drops of those who left). A
    /// connection without a position there starts with a sync of the current members and
    /// needs nothing older.
    pub fn lowest_connection_cursor(&self, partition: Partition) -> StoreResult<Option<u64>> {
        let mut lowest: Option<u64> = None;
        let connections = self.load_connections()?;
        let sending = connections
            .iter()
            .filter(|c| c.status == ConnectionStatus::Sending);
        for c in sending {
            if let Some(position) = self.delivery_position(partition, c.id)? {
                let needs = position.needs_after();
                lowest = Some(lowest.map_or(needs, |l| l.min(needs)));
            }
        }
        Ok(lowest)
    }

    /// Deletes a gone connection's positions held here (its deletion from the catalog): a
    /// plain write on every node. A copy restored from a changelog later is never read, as
    /// connection ids are not used again.
    pub(super) fn delete_delivery_positions(
        &self,
        b: &mut WriteBatch<'_>,
        id: ConnectionId,
    ) -> StoreResult<()> {
        for (p, c) in self.delivery_positions()?.into_keys() {
            if c == id {
                b.delete(CF_META, delivered_key(p, c));
                b.delete(CF_META, syncing_key(p, c));
            }
        }
        Ok(())
    }

    /// Brings positions kept before they were partition state (one record per connection
    /// holding every partition's, node-local) into the per-partition form, once, at open.
    pub(super) fn migrate_connection_cursors(&self) -> StoreResult<()> {
        let mut b = self.batch();
        for (prefix, delivered) in [("connsync/", false), ("conncursor/", true)] {
            for (rest, v) in self.meta_with_prefix(prefix)? {
                let key = format!("{prefix}{}", String::from_utf8_lossy(&rest));
                let id: ConnectionId = std::str::from_utf8(&rest)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        cf: CF_META,
                        key: key.clone(),
                        reason: "not a connection id".into(),
                    })?;
                let positions: BTreeMap<Partition, u64> =
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                        cf: CF_META,
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                for (p, seq) in positions {
                    if delivered {
                        b.put_meta_u64(&delivered_key(p, id), seq);
                        b.delete(CF_META, syncing_key(p, id));
                    } else {
                        b.put_meta_u64(&syncing_key(p, id), seq);
                    }
                }
                b.delete(CF_META, key.as_bytes());
            }
        }
        if b.is_empty() {
            return Ok(());
        }
        self.commit(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::meta_key_partition;
    use super::*;
    use crate::changelog::Unit;
    use crate::outputs::{Connection, ConnectionStatus};

    fn connection(id: ConnectionId) -> Connection {
        Connection {
            id,
            audience_id: 1,
            output_id: 1,
            status: ConnectionStatus::Sending,
            settings: Default::default(),
            shared_attributes: Vec::new(),
            created_at_ms: 0,
            updated_at_ms: 0,
            variation: String::new(),
        }
    }

    #[test]
    fn a_position_is_the_partitions_state_and_a_sync_ends_in_a_delivered_position() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(store.delivery_position(3, 9).unwrap(), None);
        store
            .set_delivery_position(3, 9, DeliveryPosition::Syncing { head: 40 })
            .unwrap();
        assert_eq!(
            store.delivery_position(3, 9).unwrap(),
            Some(DeliveryPosition::Syncing { head: 40 })
        );
        store
            .set_delivery_position(3, 9, DeliveryPosition::Delivered(40))
            .unwrap();
        store
            .set_delivery_position(4, 9, DeliveryPosition::Delivered(7))
            .unwrap();
        assert_eq!(
            store.delivery_position(3, 9).unwrap(),
            Some(DeliveryPosition::Delivered(40))
        );
        assert_eq!(store.delivery_positions().unwrap().len(), 2);
        // Snapshots, wipes and restores take every key of a partition: these are among them.
        assert_eq!(meta_key_partition(delivered_key(3, 9).as_bytes()), Some(3));
        assert_eq!(meta_key_partition(syncing_key(4, 9).as_bytes()), Some(4));
    }

    #[test]
    fn only_the_owner_stores_a_position_and_it_reaches_the_next_owner_through_the_changelog() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Store::open(&dir.path().join("owner"), false).unwrap();
        owner.log_partition_writes();
        let refused = owner.set_delivery_position(2, 5, DeliveryPosition::Delivered(11));
        assert!(
            matches!(refused, Err(StoreError::NotWritable { partition: 2 })),
            "{refused:?}"
        );
        assert!(!owner.may_write(2));
        owner.set_partition_epoch(2, 1);
        assert!(owner.may_write(2));
        owner
            .set_delivery_position(2, 5, DeliveryPosition::Delivered(11))
            .unwrap();
        let next = Store::open(&dir.path().join("next"), false).unwrap();
        for (_, bytes) in owner.pending_units(2, 10).unwrap() {
            next.apply_unit(&Unit::decode(&bytes).unwrap()).unwrap();
        }
        assert_eq!(
            next.delivery_position(2, 5).unwrap(),
            Some(DeliveryPosition::Delivered(11))
        );
    }

    #[test]
    fn pruning_keeps_what_existing_connections_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        for id in [1, 2] {
            store
                .put_json(&format!("connection/{id:020}"), &connection(id))
                .unwrap();
        }
        assert_eq!(store.lowest_connection_cursor(0).unwrap(), None);
        store
            .set_delivery_position(0, 1, DeliveryPosition::Delivered(30))
            .unwrap();
        store
            .set_delivery_position(0, 2, DeliveryPosition::Syncing { head: 12 })
            .unwrap();
        // A deleted connection's position (restored from a changelog, say) holds nothing.
        store
            .set_delivery_position(0, 3, DeliveryPosition::Delivered(2))
            .unwrap();
        assert_eq!(store.lowest_connection_cursor(0).unwrap(), Some(12));
        let mut b = store.batch();
        store.delete_delivery_positions(&mut b, 2).unwrap();
        store.commit(b).unwrap();
        assert_eq!(store.delivery_position(0, 2).unwrap(), None);
        assert_eq!(store.lowest_connection_cursor(0).unwrap(), Some(30));
        // An inactive connection holds nothing back: it syncs again when it sends.
        let inactive = Connection {
            status: ConnectionStatus::Inactive,
            ..connection(1)
        };
        store
            .put_json(&format!("connection/{:020}", 1), &inactive)
            .unwrap();
        assert_eq!(store.lowest_connection_cursor(0).unwrap(), None);
    }

    #[test]
    fn positions_kept_per_connection_before_are_brought_in_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), false).unwrap();
            store
                .put_json(
                    "conncursor/00000000000000000004",
                    &BTreeMap::from([(0u32, 8u64), (1, 3)]),
                )
                .unwrap();
            store
                .put_json(
                    "connsync/00000000000000000006",
                    &BTreeMap::from([(1u32, 5u64)]),
                )
                .unwrap();
        }
        let store = Store::open(dir.path(), false).unwrap();
        let positions = store.delivery_positions().unwrap();
        assert_eq!(
            positions,
            BTreeMap::from([
                ((0, 4), DeliveryPosition::Delivered(8)),
                ((1, 4), DeliveryPosition::Delivered(3)),
                ((1, 6), DeliveryPosition::Syncing { head: 5 }),
            ])
        );
        let old: Option<BTreeMap<Partition, u64>> =
            store.get_json("conncursor/00000000000000000004").unwrap();
        assert_eq!(old, None);
    }
}
