//! The node's materialised copy of the catalog topic: the definitions in their tables (as
//! [`super::definitions`] lays them out, API tokens as `token/<name>` in meta) and, in meta, the offset applied last and the id
//! base, written in one batch so that a crash never leaves definitions and offset apart; and
//! the audit log (`audit/<offset>` in meta), written in the same batch as the changes it
//! records.

use super::db::*;
use super::keys::*;
use crate::audit::AuditEntry;
use crate::catalog_log::{CatalogState, ImportedCatalog, Touched};

/// Meta key of the catalog offset applied last, stored plus one (absent: none applied, the
/// store predates the catalog topic or is new).
const CATALOG_APPLIED_KEY: &str = "catalog/applied";
const CATALOG_ID_BASE_KEY: &str = "catalog/id_base";
const CATALOG_CLUSTER_ID_KEY: &str = "catalog/cluster_id";

impl Store {
    /// The catalog as this node applied it, with its offset (`applied_offset` is `None` when
    /// the store never applied the topic: its definitions, if any, are a catalog of its own,
    /// see [`Store::own_catalog`]).
    pub fn load_catalog_state(&self) -> StoreResult<CatalogState> {
        let mut state = CatalogState::default();
        state.applied_offset = self
            .meta_u64(CATALOG_APPLIED_KEY)?
            .map(|next| next as i64 - 1);
        state.id_base = self.meta_u64(CATALOG_ID_BASE_KEY)?.unwrap_or(0);
        state.cluster_id = self
            .db
            .get_pinned_cf(self.cf(CF_META), CATALOG_CLUSTER_ID_KEY.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let own = self.own_catalog()?;
        state.audiences = own.audiences.into_iter().map(|a| (a.id, a)).collect();
        state.tiers = own
            .tiers
            .into_iter()
            .map(|(t, n, tier)| ((t, n), tier))
            .collect();
        state.calculated = own
            .calculated
            .into_iter()
            .map(|c| (c.name.trim().to_lowercase(), c))
            .collect();
        state.outputs = own.outputs.into_iter().map(|o| (o.id, o)).collect();
        state.connections = own.connections.into_iter().map(|c| (c.id, c)).collect();
        let tokens = self.load_api_tokens()?;
        state.tokens = tokens.into_iter().map(|t| (t.name.clone(), t)).collect();
        Ok(state)
    }

    /// Every definition of this store, as an import into the catalog topic carries them.
    pub fn own_catalog(&self) -> StoreResult<ImportedCatalog> {
        Ok(ImportedCatalog {
            audiences: self.load_audiences()?,
            tiers: self.event_tiers()?,
            calculated: self.load_calculated()?,
            outputs: self.load_outputs()?,
            connections: self.load_connections()?,
        })
    }

    /// Writes what applying changed (`touched`: each entity's value in `state`, or its
    /// deletion) with the offset applied and the audit entries of the records applied since
    /// the last save (see [`crate::audit`]), in one synced batch. A deleted connection takes
    /// its delivery position and fault with it.
    pub fn save_catalog(
        &self,
        state: &CatalogState,
        touched: &Touched,
        audit: &[AuditEntry],
    ) -> StoreResult<()> {
        let mut b = self.batch();
        let meta = CF_META;
        for id in &touched.audiences {
            let key = id.to_be_bytes();
            match state.audiences.get(id) {
                Some(a) => b.put(CF_AUDIENCES, key, json(a)),
                None => b.delete(CF_AUDIENCES, key),
            }
        }
        for (event_type, name) in &touched.tiers {
            let key = format!("tier/{event_type}/{name}");
            match state.tiers.get(&(event_type.clone(), name.clone())) {
                Some(tier) => b.put(meta, key.as_bytes(), tier.as_bytes()),
                None => b.delete(meta, key.as_bytes()),
            }
        }
        for name in &touched.calculated {
            let key = format!("{CALC_PREFIX}{name}");
            match state.calculated.get(name) {
                Some(c) => b.put(meta, key.as_bytes(), json(c)),
                None => b.delete(meta, key.as_bytes()),
            }
        }
        for id in &touched.outputs {
            let key = format!("output/{id:020}");
            match state.outputs.get(id) {
                Some(o) => b.put(meta, key.as_bytes(), json(o)),
                None => b.delete(meta, key.as_bytes()),
            }
        }
        for id in &touched.connections {
            match state.connections.get(id) {
                Some(c) => {
                    let key = format!("connection/{id:020}");
                    b.put(meta, key.as_bytes(), json(c));
                }
                None => {
                    for key in [format!("connection/{id:020}"), format!("fault/{id:020}")] {
                        b.delete(meta, key.as_bytes());
                    }
                    self.delete_delivery_positions(&mut b, *id)?;
                }
            }
        }
        for name in &touched.tokens {
            let key = format!("{TOKEN_PREFIX}{name}");
            match state.tokens.get(name) {
                Some(t) => b.put(meta, key.as_bytes(), json(t)),
                None => b.delete(meta, key.as_bytes()),
            }
        }
        for entry in audit {
            b.put(meta, audit_key(entry.offset).as_bytes(), json(entry));
        }
        if let Some(offset) = state.applied_offset {
            b.put_meta_u64(CATALOG_APPLIED_KEY, offset as u64 + 1);
        }
        b.put_meta_u64(CATALOG_ID_BASE_KEY, state.id_base);
        if let Some(id) = &state.cluster_id {
            b.put(meta, CATALOG_CLUSTER_ID_KEY.as_bytes(), id.as_bytes());
        }
        // Rare, and answered to a caller once written: synced.
        self.commit_synced(b)
    }
}

impl Store {
    /// The audit log from the entry after offset `after` (from the first without), at most
    /// `limit` entries, only those of `by` when it is given; in offset order.
    pub fn audit_log(
        &self,
        after: Option<i64>,
        limit: usize,
        by: Option<&str>,
    ) -> StoreResult<Vec<AuditEntry>> {
        let from = audit_key(after.map_or(0, |a| a + 1));
        let mut entries = Vec::new();
        for row in self.db.iterator_cf(
            self.cf(CF_META),
            rocksdb::IteratorMode::From(from.as_bytes(), rocksdb::Direction::Forward),
        ) {
            let (key, value) = row?;
            if entries.len() >= limit || !key.starts_with(AUDIT_PREFIX.as_bytes()) {
                break;
            }
            let entry: AuditEntry =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    cf: CF_META,
                    key: String::from_utf8_lossy(&key).into_owned(),
                    reason: e.to_string(),
                })?;
            if by.is_none_or(|by| entry.by == by) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }
}

/// Meta keys of the audit log: the catalog offset, zero-padded so that key order is offset
/// order.
const AUDIT_PREFIX: &str = "audit/";

fn audit_key(offset: i64) -> String {
    format!("{AUDIT_PREFIX}{:020}", offset.max(0))
}

fn json<T: serde::Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("definition records always serialise")
}
