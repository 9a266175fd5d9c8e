//! Definitions kept beside the state: audiences, calculated attributes, event tiers, outputs,
//! connections (with their cursors) and faults, as JSON records.

use super::db::*;
use super::keys::*;
use crate::calculated::CalculatedAttributeRecord;
use crate::catalog::AudienceRecord;
use crate::model::AudienceId;
use crate::outputs::{Connection, ConnectionId, Fault, OutputConfig, OutputId};
use rocksdb::{Direction, IteratorMode};
use serde::Serialize;
use std::collections::BTreeMap;

impl Store {
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
        b.put(CF_META, key.as_bytes(), bytes);
        b.put_meta_u64(CALC_SEQ_KEY, revision);
        for reader in readers {
            let bytes = serde_json::to_vec(reader).expect("audience record always serialises");
            b.put(CF_AUDIENCES, reader.id.to_be_bytes(), bytes);
        }
        self.commit(b)
    }

    pub fn delete_calculated(&self, key: &str) -> StoreResult<()> {
        let key = format!("{CALC_PREFIX}{key}");
        self.db.delete_cf(self.cf(CF_META), key.as_bytes())?;
        Ok(())
    }

    pub(super) fn put_json<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).expect("records always serialise");
        self.db.put_cf(self.cf(CF_META), key.as_bytes(), bytes)?;
        Ok(())
    }

    pub(super) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> StoreResult<Option<T>> {
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

    pub(super) fn scan_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> StoreResult<Vec<T>> {
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
        let cf = CF_META;
        for key in [
            format!("connection/{id:020}"),
            format!("conncursor/{id:020}"),
            format!("connsync/{id:020}"),
            format!("fault/{id:020}"),
        ] {
            b.delete(cf, key.as_bytes());
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
        let cf = CF_META;
        let bytes = serde_json::to_vec(cursor).expect("cursors always serialise");
        b.put(cf, format!("conncursor/{id:020}").as_bytes(), bytes);
        b.delete(cf, format!("connsync/{id:020}").as_bytes());
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
        b.put(CF_AUDIENCES, record.id.to_be_bytes(), bytes);
        b.put_meta_u64(
            AUDIENCE_SEQ_KEY,
            record.id.max(self.meta_u64(AUDIENCE_SEQ_KEY)?.unwrap_or(0)),
        );
        self.commit(b)
    }

    pub fn delete_audience(&self, id: AudienceId) -> StoreResult<()> {
        let mut b = self.batch();
        b.delete(CF_AUDIENCES, id.to_be_bytes());
        self.commit(b)
    }

    /// The next free audience id (ids are never reused, even after a delete).
    pub fn next_audience_id(&self) -> StoreResult<AudienceId> {
        Ok(self.meta_u64(AUDIENCE_SEQ_KEY)?.unwrap_or(0) + 1)
    }
}
