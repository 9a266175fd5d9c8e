//! The audience registry: the one writer of audience definitions. Every change is validated,
//! stored, compiled into a new catalog that partition actors swap in, and followed by the
//! evaluation of the changed audience over the stored profiles.

use crate::node::Node;
use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::{event_tier, AudienceRecord, AudienceStatus, Catalog};
use audience_state::criteria::DefinitionError;
use audience_state::model::AudienceId;
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(#[from] DefinitionError),
    #[error("audience {0} not found")]
    NotFound(AudienceId),
    #[error("calculated attribute \"{0}\" not found")]
    CalculatedNotFound(String),
    #[error("output {0} not found")]
    OutputNotFound(u64),
    #[error("connection {0} not found")]
    ConnectionNotFound(u64),
    /// The operation would break another audience (e.g. deleting one that others reference).
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] audience_state::store::StoreError),
}

/// What a caller may set on an audience.
#[derive(Debug, Clone)]
pub struct AudienceSpec {
    pub name: String,
    pub external_name: String,
    pub criteria: serde_json::Value,
    pub tags: Vec<String>,
}

pub struct Registry {
    node: Arc<Node>,
    /// Serialises writers; readers use the catalog.
    write_lock: Mutex<()>,
}

impl Registry {
    pub fn new(node: Arc<Node>) -> Self {
        Registry {
            node,
            write_lock: Mutex::new(()),
        }
    }

    fn publish(&self) -> Result<(), RegistryError> {
        let engine = &self.node.engine;
        let version = engine.catalog.load().version + 1;
        let catalog = Catalog::build_full(
            version,
            engine.store.load_audiences()?,
            engine.store.event_tiers()?,
            engine.store.load_calculated()?,
        );
        engine.catalog.store(Arc::new(catalog));
        self.node.catalog_changed();
        Ok(())
    }

    /// Compiles a definition that is not saved (for an estimate or a preview) with the checks
    /// a save would make: `id` is the audience it would replace, for its references.
    pub fn compile_unsaved(
        &self,
        criteria: serde_json::Value,
        id: Option<AudienceId>,
    ) -> Result<audience_state::criteria::CompiledAudience, RegistryError> {
        // A new definition takes an id no audience has, so no reference reads as its own.
        let record = AudienceRecord::active(
            id.unwrap_or(AudienceId::MAX),
            "unsaved definition",
            criteria,
        );
        Ok(self.node.engine.catalog.load().check_audience(&record)?)
    }

    pub fn create(&self, spec: AudienceSpec, draft: bool) -> Result<AudienceRecord, RegistryError> {
        let _guard = self.write_lock.lock();
        let engine = &self.node.engine;
        let now = engine.clock.now();
        let mut record = AudienceRecord {
            id: 0,
            name: spec.name,
            external_name: spec.external_name,
            status: if draft {
                AudienceStatus::Draft
            } else {
                AudienceStatus::Active
            },
            criteria: spec.criteria,
            tags: spec.tags,
            created_at_ms: now,
            updated_at_ms: now,
            revision: 1,
        };
        // Checked with an id no audience has, then saved under the next id.
        record.id = AudienceId::MAX;
        engine.catalog.load().check_audience(&record)?;
        record.id = engine.store.next_audience_id()?;
        engine.store.put_audience(&record)?;
        self.publish()?;
        tracing::info!(audience = record.id, name = %record.name, "audience created");
        Ok(record)
    }

    pub fn update(
        &self,
        id: AudienceId,
        spec: AudienceSpec,
    ) -> Result<AudienceRecord, RegistryError> {
        let _guard = self.write_lock.lock();
        let engine = &self.node.engine;
        let mut record = self.get(id)?;
        record.name = spec.name;
        record.external_name = spec.external_name;
        record.criteria = spec.criteria;
        record.tags = spec.tags;
        record.updated_at_ms = engine.clock.now();
        record.revision += 1;
        engine.catalog.load().check_audience(&record)?;
        engine.store.put_audience(&record)?;
        self.publish()?;
        Ok(record)
    }

    pub fn set_status(
        &self,
        id: AudienceId,
        status: AudienceStatus,
    ) -> Result<AudienceRecord, RegistryError> {
        let _guard = self.write_lock.lock();
        let engine = &self.node.engine;
        let mut record = self.get(id)?;
        if record.status != status {
            record.status = status;
            record.updated_at_ms = engine.clock.now();
            // A re-activated audience is evaluated afresh over every profile.
            record.revision += 1;
            engine.store.put_audience(&record)?;
            self.publish()?;
        }
        Ok(record)
    }

    pub fn delete(&self, id: AudienceId) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock();
        self.get(id)?;
        if let Some(conflict) = self.node.engine.catalog.load().deletion_conflict(id) {
            return Err(RegistryError::Conflict(conflict));
        }
        self.node.engine.store.delete_audience(id)?;
        self.publish()?;
        tracing::info!(audience = id, "audience deleted");
        Ok(())
    }

    /// Sets the data tier of an event (type and name as criteria select it). Events outside
    /// the Personalize tier are no longer evaluated, and new definitions using them are refused.
    pub fn set_event_tier(
        &self,
        event_type: &str,
        name: &str,
        tier: &str,
    ) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock();
        let (event_type, name, tier) = event_tier(event_type, name, tier)?;
        self.node
            .engine
            .store
            .set_event_tier(&event_type, &name, &tier)?;
        self.publish()
    }

    /// Defines (or redefines) a calculated attribute. A redefinition starts the calculation
    /// anew in every profile, and audiences reading it are evaluated again.
    pub fn put_calculated(
        &self,
        mut record: CalculatedAttributeRecord,
    ) -> Result<CalculatedAttributeRecord, RegistryError> {
        let _guard = self.write_lock.lock();
        let engine = &self.node.engine;
        record.compile()?;
        let now = engine.clock.now();
        let key = record.name.trim().to_lowercase();
        let catalog = engine.catalog.load();
        let previous = catalog
            .calculated_records()
            .iter()
            .find(|r| r.name.trim().to_lowercase() == key);
        if let Some(previous) = previous.filter(|p| p.same_definition(&record)) {
            // A retry or a re-apply of the same file: redefining would reset every profile's
            // calculation for nothing.
            return Ok(previous.clone());
        }
        record.created_at_ms = previous.map_or(now, |p| p.created_at_ms);
        record.updated_at_ms = now;
        // Audiences reading it compiled against the old revision: bump them so that they are
        // evaluated again over every profile with the new one.
        let readers: Vec<AudienceRecord> = catalog
            .calculated_readers(&key)
            .into_iter()
            .map(|r| AudienceRecord {
                revision: r.revision + 1,
                ..r.clone()
            })
            .collect();
        engine.store.put_calculated(&mut record, &readers)?;
        self.publish()?;
        tracing::info!(attribute = %record.name, "calculated attribute defined");
        Ok(record)
    }

    /// Deletes a calculated attribute; refused while an audience reads it, naming them.
    pub fn delete_calculated(&self, name: &str) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock();
        let key = name.trim().to_lowercase();
        let catalog = self.node.engine.catalog.load();
        if !catalog
            .calculated_records()
            .iter()
            .any(|r| r.name.trim().to_lowercase() == key)
        {
            return Err(RegistryError::CalculatedNotFound(name.to_string()));
        }
        if let Some(conflict) = catalog.calculated_deletion_conflict(&key, name) {
            return Err(RegistryError::Conflict(conflict));
        }
        self.node.engine.store.delete_calculated(&key)?;
        self.publish()
    }

    pub fn list_calculated(&self) -> Vec<CalculatedAttributeRecord> {
        self.node
            .engine
            .catalog
            .load()
            .calculated_records()
            .to_vec()
    }

    pub fn get(&self, id: AudienceId) -> Result<AudienceRecord, RegistryError> {
        self.node
            .engine
            .catalog
            .load()
            .record(id)
            .cloned()
            .ok_or(RegistryError::NotFound(id))
    }

    pub fn list(&self, tags: &[String]) -> Vec<AudienceRecord> {
        let catalog = self.node.engine.catalog.load();
        let mut out: Vec<AudienceRecord> = catalog
            .records()
            .filter(|r| {
                tags.iter()
                    .all(|t| r.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
            })
            .cloned()
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }
}
