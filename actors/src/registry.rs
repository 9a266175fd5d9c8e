//! The audience registry: audiences, event tiers and calculated attributes as the API reads
//! and changes them. Reads come from the node's compiled catalog; a change is checked here
//! (a definition error answers at once, nothing proposed), then proposed to the catalog
//! topic and answered once this node applied it (see [`crate::catalog_applier`]): the
//! partition actors swap the new catalog in and evaluate the changed audience over the
//! stored profiles.

use crate::catalog_applier::{CatalogApplier, SubmitError};
use crate::engine::Quotas;
use crate::node::Node;
use audience_state::ab_test::{AbTest, Variation};
use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::{event_tier, AudienceAccess, AudienceRecord, AudienceStatus};
use audience_state::catalog_log::{Applied, Change, Refusal};
use audience_state::criteria::DefinitionError;
use audience_state::model::AudienceId;
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
    /// A name that must be unique is taken.
    #[error("{0}")]
    Exists(String),
    /// Refused when applied: the catalog had changed between the check here and the
    /// record's turn (another node's change came first), or the thing is gone.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Unavailable(String),
    /// One more would pass a quota of the engine (see [`crate::engine::Quotas`]).
    #[error("{0}")]
    Quota(String),
    #[error("store: {0}")]
    Store(#[from] audience_state::store::StoreError),
}

impl From<SubmitError> for RegistryError {
    fn from(e: SubmitError) -> Self {
        match e {
            // Every change was checked before it was proposed: a refusal at apply time is a
            // catalog that changed meanwhile, whatever the check that refused it.
            SubmitError::Refused(Refusal::NotFound(why)) => RegistryError::Gone(why),
            SubmitError::Refused(refusal) => {
                RegistryError::Refused(format!("refused: the catalog changed meanwhile: {refusal}"))
            }
            SubmitError::Unavailable(why) => RegistryError::Unavailable(why),
        }
    }
}

/// An applied change that gave another kind of record than the one proposed.
pub(crate) fn unexpected(applied: Applied) -> RegistryError {
    RegistryError::Unavailable(format!("the catalog applied something else: {applied:?}"))
}

/// What a caller may set on an audience.
#[derive(Debug, Clone)]
pub struct AudienceSpec {
    pub name: String,
    pub external_name: String,
    pub criteria: serde_json::Value,
    pub tags: Vec<String>,
    /// The workspaces and inputs it reads, as the caller named them (both empty: every
    /// message); completed against this node's inputs when proposed.
    pub workspaces: Vec<String>,
    pub inputs: Vec<String>,
    /// Who else sees and uses it; `None`: private when created, unchanged when updated.
    pub access: Option<AudienceAccess>,
    /// The A/B test it starts with (a clone's); ignored by an update: a test is created and
    /// deleted by calls of its own.
    pub ab_test: Option<AbTest>,
}

impl AudienceSpec {
    /// What a clone of `source` saves: its criteria, external name, tags ("If you clone an
    /// audience, its tags will be cloned, also"), scope and access, under `name` (empty:
    /// "Copy of " and the source's name, cut to the longest name allowed).
    pub fn clone_of(source: &AudienceRecord, name: String) -> AudienceSpec {
        let name = match name.is_empty() {
            true => format!("Copy of {}", source.name)
                .chars()
                .take(audience_state::catalog::MAX_NAME_CHARS)
                .collect(),
            false => name,
        };
        AudienceSpec {
            name,
            external_name: source.external_name.clone(),
            criteria: source.criteria.clone(),
            tags: source.tags.clone(),
            workspaces: source.workspaces.clone(),
            inputs: source.inputs.clone(),
            access: Some(source.access),
            // The same variations; the copy's members split afresh (its id is in the hash).
            ab_test: source.ab_test.clone().map(|test| AbTest {
                id: rand::random(),
                ..test
            }),
        }
    }
}

mod tokens;

pub struct Registry {
    node: Arc<Node>,
    catalog: Arc<CatalogApplier>,
}

impl Registry {
    pub fn new(node: Arc<Node>, catalog: Arc<CatalogApplier>) -> Self {
        Registry { node, catalog }
    }

    /// Compiles a definition that is not saved (for an estimate or a preview) with the checks
    /// a save would make: `id` is the audience it would replace, for its references.
    pub fn compile_unsaved(
        &self,
        criteria: serde_json::Value,
        id: Option<AudienceId>,
        workspaces: &[String],
        inputs: &[String],
    ) -> Result<audience_state::criteria::CompiledAudience, RegistryError> {
        // A new definition takes an id no audience has, so no reference reads as its own.
        let mut record = AudienceRecord::active(
            id.unwrap_or(AudienceId::MAX),
            "unsaved definition",
            criteria,
        );
        self.set_scope(&mut record, workspaces, inputs)?;
        let catalog = self.node.engine.catalog.load();
        catalog.check_calculated_scope(&record)?;
        Ok(catalog.check_audience(&record)?)
    }

    /// Sets a record's scope from the names a caller gave, completed (see
    /// [`audience_state::inputs::InputMap::complete_scope`]).
    fn set_scope(
        &self,
        record: &mut AudienceRecord,
        workspaces: &[String],
        inputs: &[String],
    ) -> Result<(), RegistryError> {
        let (workspaces, inputs) = self
            .node
            .engine
            .settings
            .inputs
            .complete_scope(workspaces, inputs)?;
        record.workspaces = workspaces;
        record.inputs = inputs;
        Ok(())
    }

    async fn audience_change(
        &self,
        by: &str,
        change: Change,
    ) -> Result<AudienceRecord, RegistryError> {
        match self.catalog.submit(by, change).await? {
            Applied::Audience(record) => Ok(record),
            other => Err(unexpected(other)),
        }
    }

    /// Creates an audience on behalf of `by` (the caller's token name, "" without one), as
    /// every change below: the audit log and the record's Created By name it.
    pub async fn create(
        &self,
        by: &str,
        spec: AudienceSpec,
        draft: bool,
    ) -> Result<AudienceRecord, RegistryError> {
        let mut record = AudienceRecord::active(AudienceId::MAX, spec.name, spec.criteria);
        record.external_name = spec.external_name;
        record.tags = spec.tags;
        self.set_scope(&mut record, &spec.workspaces, &spec.inputs)?;
        record.access = spec.access.unwrap_or_default();
        record.ab_test = spec.ab_test;
        if draft {
            record.status = AudienceStatus::Draft;
        }
        // Checked with an id no audience has; the id is the record's offset.
        let catalog = self.node.engine.catalog.load();
        catalog.check_audience(&record)?;
        catalog.check_calculated_scope(&record)?;
        let max = self.node.engine.settings.quotas.audiences;
        Quotas::check(
            "audiences",
            "engine.max_audiences",
            catalog.records().count(),
            max,
        )
        .map_err(RegistryError::Quota)?;
        record.id = 0;
        let record = self
            .audience_change(by, Change::CreateAudience { audience: record })
            .await?;
        tracing::info!(audience = record.id, name = %record.name, "audience created");
        Ok(record)
    }

    pub async fn update(
        &self,
        by: &str,
        id: AudienceId,
        spec: AudienceSpec,
    ) -> Result<AudienceRecord, RegistryError> {
        let mut record = self.get(id)?;
        let expected_revision = record.revision;
        record.name = spec.name;
        record.external_name = spec.external_name;
        record.criteria = spec.criteria;
        record.tags = spec.tags;
        self.set_scope(&mut record, &spec.workspaces, &spec.inputs)?;
        if let Some(access) = spec.access {
            record.access = access;
        }
        let catalog = self.node.engine.catalog.load();
        catalog.check_audience(&record)?;
        catalog.check_calculated_scope(&record)?;
        if let Some(conflict) = catalog.access_conflict(&record) {
            return Err(RegistryError::Conflict(conflict));
        }
        self.audience_change(
            by,
            Change::PutAudience {
                audience: record,
                expected_revision,
            },
        )
        .await
    }

    pub async fn set_status(
        &self,
        by: &str,
        id: AudienceId,
        status: AudienceStatus,
    ) -> Result<AudienceRecord, RegistryError> {
        let mut record = self.get(id)?;
        if record.status == status {
            return Ok(record);
        }
        let expected_revision = record.revision;
        // A re-activated audience is evaluated afresh over every profile (its revision moves).
        record.status = status;
        self.audience_change(
            by,
            Change::PutAudience {
                audience: record,
                expected_revision,
            },
        )
        .await
    }

    /// Starts an A/B test of `variations` on an audience that has none: its members split
    /// into them from now on, Control holding the rest. Its definition and revision stay.
    pub async fn create_ab_test(
        &self,
        by: &str,
        id: AudienceId,
        variations: Vec<Variation>,
    ) -> Result<AudienceRecord, RegistryError> {
        if self.get(id)?.ab_test.is_some() {
            return Err(RegistryError::Conflict(format!(
                "audience {id} has an A/B test already: delete it first"
            )));
        }
        let test = AbTest::new(rand::random(), variations)?;
        let record = self
            .audience_change(by, Change::CreateAbTest { audience: id, test })
            .await?;
        tracing::info!(audience = id, "A/B test created");
        Ok(record)
    }

    /// Ends an audience's A/B test, deleting its variations' connections (their outputs are
    /// told as of a deleted audience).
    pub async fn delete_ab_test(
        &self,
        by: &str,
        id: AudienceId,
    ) -> Result<AudienceRecord, RegistryError> {
        if self.get(id)?.ab_test.is_none() {
            return Err(RegistryError::Conflict(format!(
                "audience {id} has no A/B test"
            )));
        }
        match self
            .catalog
            .submit(by, Change::DeleteAbTest { audience: id })
            .await?
        {
            Applied::AbTestDeleted {
                audience,
                connections,
                ..
            } => {
                tracing::info!(
                    audience = id,
                    connections = connections.len(),
                    "A/B test deleted with its variations' connections"
                );
                Ok(audience)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Deletes an audience, and with it its connections (their outputs are told).
    pub async fn delete(&self, by: &str, id: AudienceId) -> Result<(), RegistryError> {
        self.get(id)?;
        if let Some(conflict) = self.node.engine.catalog.load().deletion_conflict(id) {
            return Err(RegistryError::Conflict(conflict));
        }
        self.catalog
            .submit(by, Change::DeleteAudience { id })
            .await?;
        tracing::info!(audience = id, "audience deleted");
        Ok(())
    }

    /// Sets the data tier of an event (type and name as criteria select it). Events outside
    /// the Personalize tier are no longer evaluated, and new definitions using them are refused.
    pub async fn set_event_tier(
        &self,
        by: &str,
        event_type: &str,
        name: &str,
        tier: &str,
    ) -> Result<(), RegistryError> {
        let (event_type, name, tier) = event_tier(event_type, name, tier)?;
        self.catalog
            .submit(
                by,
                Change::SetEventTier {
                    event_type,
                    name,
                    tier,
                },
            )
            .await?;
        Ok(())
    }

    /// Defines (or redefines) a calculated attribute. A redefinition starts the calculation
    /// anew in every profile, and audiences reading it are evaluated again.
    pub async fn put_calculated(
        &self,
        by: &str,
        mut record: CalculatedAttributeRecord,
    ) -> Result<CalculatedAttributeRecord, RegistryError> {
        let (workspaces, _) = self
            .node
            .engine
            .settings
            .inputs
            .complete_scope(&record.workspaces, &[])?;
        record.workspaces = workspaces;
        record.compile()?;
        let catalog = self.node.engine.catalog.load();
        if let Some(conflict) = catalog.calculated_scope_conflict(&record) {
            return Err(RegistryError::Conflict(conflict));
        }
        let key = record.name.trim().to_lowercase();
        let defined = catalog.calculated_records();
        if !defined.iter().any(|r| r.name.trim().to_lowercase() == key) {
            let max = self.node.engine.settings.quotas.calculated_attributes;
            Quotas::check(
                "calculated attributes",
                "engine.max_calculated_attributes",
                defined.len(),
                max,
            )
            .map_err(RegistryError::Quota)?;
        }
        let record = match self
            .catalog
            .submit(by, Change::PutCalculated { attribute: record })
            .await?
        {
            Applied::Calculated(record) => record,
            other => return Err(unexpected(other)),
        };
        tracing::info!(attribute = %record.name, "calculated attribute defined");
        Ok(record)
    }

    /// Deletes a calculated attribute; refused while an audience reads it, naming them.
    pub async fn delete_calculated(&self, by: &str, name: &str) -> Result<(), RegistryError> {
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
        self.catalog
            .submit(
                by,
                Change::DeleteCalculated {
                    name: name.to_string(),
                },
            )
            .await?;
        Ok(())
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
