//! Definitions kept beside the state: audiences, calculated attributes, event tiers, outputs,
//! connections and faults, as JSON records (where connections stand: `deliveries.rs`).

use super::db::*;
use super::keys::*;
use crate::calculated::CalculatedAttributeRecord;
use crate::catalog::AudienceRecord;
use crate::outputs::{Connection, ConnectionId, Fault, OutputConfig};
use serde::Serialize;

impl Store {
    /// Every event tier set: (event type, name, tier).
    pub fn event_tiers(&self) -> StoreResult<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for (rest, v) in self.meta_with_prefix("tier/")? {
            let rest = String::from_utf8_lossy(&rest).into_owned();
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
        self.json_rows(CF_META, CALC_PREFIX.as_bytes(), |k| {
            String::from_utf8_lossy(k).into_owned()
        })
    }

    /// The JSON definitions of a column family whose keys start with `prefix`, in key order.
    /// One that does not parse (damaged, or written by a newer version) is skipped with an
    /// error and set aside ([`super::quarantine`]): the engine starts with the others rather
    /// than not at all.
    fn json_rows<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
        display_key: impl Fn(&[u8]) -> String,
    ) -> StoreResult<Vec<T>> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for row in self.rows_with_prefix(cf, prefix) {
            let (k, v) = row?;
            match serde_json::from_slice(&v) {
                Ok(record) => out.push(record),
                Err(e) => unreadable.push(UnreadableRow::new(
                    NODE_ROWS,
                    cf,
                    &k,
                    display_key(&k),
                    e.to_string(),
                )),
            }
        }
        self.set_aside(&unreadable)?;
        Ok(out)
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
        self.json_rows(CF_META, prefix.as_bytes(), |k| {
            String::from_utf8_lossy(k).into_owned()
        })
    }

    pub fn load_outputs(&self) -> StoreResult<Vec<OutputConfig>> {
        self.scan_json("output/")
    }

    pub fn load_connections(&self) -> StoreResult<Vec<Connection>> {
        self.scan_json("connection/")
    }

    /// The API tokens of the catalog, by name order (digests only: see
    /// [`crate::api_tokens`]).
    pub fn load_api_tokens(&self) -> StoreResult<Vec<crate::api_tokens::ApiTokenRecord>> {
        self.scan_json(TOKEN_PREFIX)
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
        self.json_rows(CF_AUDIENCES, &[], |k| be_u64(k).to_string())
    }

    /// Stores an audience outside the catalog topic: what a store from before the topic holds
    /// (tests write one to check its import).
    pub fn put_audience(&self, record: &AudienceRecord) -> StoreResult<()> {
        let mut b = self.batch();
        let bytes = serde_json::to_vec(record).expect("audience record always serialises");
        b.put(CF_AUDIENCES, record.id.to_be_bytes(), bytes);
        self.commit(b)
    }
}
