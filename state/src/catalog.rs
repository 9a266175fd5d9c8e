//! The audience catalog: every audience definition, the compiled form of the active ones, and
//! the index from what a change touches to the audiences that read it, so that an event costs
//! work proportional to the audiences it can affect, not to the audiences defined.
//!
//! A catalog is immutable once built; the registry builds a new one on every definition change
//! and partition actors swap it in between batches.

use crate::ab_test::AbTest;
use crate::calculated::{CalcSpec, CalculatedAttributeRecord, CalculatedDef};
use crate::criteria::{
    compile_scoped, parse_definition, CalcLookup, CompiledAudience, Criterion, DefinitionError,
    Matcher, ReadKey, Scope,
};
use crate::model::{AudienceId, TimestampMs};
use crate::profile::{ChangeSet, ProfileState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudienceStatus {
    Draft,
    Active,
}

/// Who, beyond its own workspaces, sees and uses an audience (the seed's Access column). Its
/// owners are the tokens that hold every workspace it reads (a token without workspaces owns
/// them all): only they change it. To any other token an audience is:
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudienceAccess {
    /// invisible, as if it did not exist;
    #[default]
    Private,
    /// visible (definition, figures, memberships of the profiles it sees), not usable;
    ViewOnly,
    /// visible, and usable: it subscribes to its deltas and references it in its criteria.
    Usable,
}

impl AudienceAccess {
    pub fn name(self) -> &'static str {
        match self {
            AudienceAccess::Private => "private",
            AudienceAccess::ViewOnly => "view only",
            AudienceAccess::Usable => "usable",
        }
    }
}

/// An audience as stored: its metadata and its definition in the JSON language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudienceRecord {
    pub id: AudienceId,
    pub name: String,
    #[serde(default)]
    pub external_name: String,
    pub status: AudienceStatus,
    pub criteria: serde_json::Value,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at_ms: TimestampMs,
    pub updated_at_ms: TimestampMs,
    /// The names of the tokens that created it and edited it last ("" without tokens): set
    /// from the catalog record when it is applied, never from what a caller sends.
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub updated_by: String,
    pub revision: u64,
    /// The workspaces its user based criteria read, and the inputs its event criteria read
    /// (sorted; both empty: every message). Saved complete: every input's workspace is among
    /// the workspaces (see [`crate::inputs::InputMap::complete_scope`]).
    #[serde(default)]
    pub workspaces: Vec<String>,
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Who else sees and uses it (records written before access existed are private).
    #[serde(default)]
    pub access: AudienceAccess,
    /// Its A/B test, if one runs: set and deleted by changes of its own, never by an edit of
    /// the definition (see [`crate::ab_test`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_test: Option<AbTest>,
}

pub const MAX_TAG_CHARS: usize = 18;
/// The longest name and external name of an audience, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// The largest criteria tree, as compact JSON: far above what people write, and a bound on
/// what every node compiles and keeps per audience.
pub const MAX_CRITERIA_BYTES: usize = 64 * 1024;
/// The deepest criteria tree, in levels of JSON nesting (an object in an object is 2): the
/// compiler and the evaluator recurse on it.
pub const MAX_CRITERIA_DEPTH: usize = 24;

/// The most workspaces, and the most inputs, one audience reads.
pub const MAX_SCOPE_NAMES: usize = 64;

/// Levels of nesting of a JSON value (a scalar is 1), counted without recursion.
fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            serde_json::Value::Object(fields) => {
                stack.extend(fields.values().map(|v| (v, depth + 1)))
            }
            _ => {}
        }
    }
    deepest
}

/// The bounds of a definition's size: names, and the criteria tree's depth and bytes.
fn check_bounds(record: &AudienceRecord) -> Result<(), DefinitionError> {
    for (field, name) in [
        ("name", &record.name),
        ("external_name", &record.external_name),
    ] {
        let chars = name.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(DefinitionError {
                field: field.into(),
                reason: format!("{chars} characters, above the limit of {MAX_NAME_CHARS}"),
            });
        }
    }
    for (field, names) in [
        ("workspaces", &record.workspaces),
        ("inputs", &record.inputs),
    ] {
        if names.len() > MAX_SCOPE_NAMES {
            return Err(DefinitionError {
                field: field.into(),
                reason: format!(
                    "{} names, above the limit of {MAX_SCOPE_NAMES}",
                    names.len()
                ),
            });
        }
        let what = &field[..field.len() - 1];
        for (i, name) in names.iter().enumerate() {
            crate::inputs::check_scope_name(what, name).map_err(|reason| DefinitionError {
                field: format!("{field}[{i}]"),
                reason,
            })?;
        }
    }
    let depth = json_depth(&record.criteria);
    if depth > MAX_CRITERIA_DEPTH {
        return Err(DefinitionError {
            field: "criteria".into(),
            reason: format!(
                "nested {depth} levels deep, above the limit of {MAX_CRITERIA_DEPTH} levels"
            ),
        });
    }
    let bytes = serde_json::to_vec(&record.criteria).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_CRITERIA_BYTES {
        return Err(DefinitionError {
            field: "criteria".into(),
            reason: format!("{bytes} bytes as JSON, above the limit of {MAX_CRITERIA_BYTES} bytes"),
        });
    }
    Ok(())
}

impl AudienceRecord {
    /// An active audience at revision 1, with no tags, external name or times: what tests,
    /// benchmarks and unsaved definitions (estimates, previews) build.
    pub fn active(id: AudienceId, name: impl Into<String>, criteria: serde_json::Value) -> Self {
        AudienceRecord {
            id,
            name: name.into(),
            external_name: String::new(),
            status: AudienceStatus::Active,
            criteria,
            tags: vec![],
            created_at_ms: 0,
            updated_at_ms: 0,
            created_by: String::new(),
            updated_by: String::new(),
            revision: 1,
            workspaces: vec![],
            inputs: vec![],
            access: AudienceAccess::Private,
            ab_test: None,
        }
    }

    /// A member's A/B test variation, when a test runs.
    pub fn variation_of(&self, mpid: crate::model::Mpid) -> Option<&str> {
        self.ab_test.as_ref().map(|t| t.variation_of(self.id, mpid))
    }

    /// Its name downstream: the external name when set, else the name.
    pub fn downstream_name(&self) -> String {
        match self.external_name.trim() {
            "" => self.name.clone(),
            _ => self.external_name.clone(),
        }
    }

    /// Whether every owner of this audience owns `other` too: a token limited to workspaces
    /// owns an audience all of whose workspaces it holds, so this one's (holding all of its
    /// workspaces) own `other` when `other` reads some workspaces, all among these. An
    /// unscoped audience's owners are the unlimited tokens, which own everything.
    pub fn owners_own(&self, other: &AudienceRecord) -> bool {
        self.workspaces.is_empty()
            || (!other.workspaces.is_empty()
                && other.workspaces.iter().all(|w| self.workspaces.contains(w)))
    }

    /// The data sources it reads.
    pub fn scope(&self) -> Scope {
        Scope {
            workspaces: self.workspaces.clone(),
            inputs: self.inputs.clone(),
        }
    }

    /// Checks everything but the id and the calculated attributes it reads: name, tags and
    /// criteria, and their bounds (names, the criteria's depth and size).
    pub fn validate(&self) -> Result<CompiledAudience, DefinitionError> {
        self.validate_with(&|_| None)
    }

    /// Checks everything but the id, resolving calculated attributes with `calc`.
    pub fn validate_with(&self, calc: CalcLookup<'_>) -> Result<CompiledAudience, DefinitionError> {
        if self.name.trim().is_empty() {
            return Err(DefinitionError {
                field: "name".into(),
                reason: "must not be empty".into(),
            });
        }
        check_bounds(self)?;
        for (i, tag) in self.tags.iter().enumerate() {
            let chars = tag.chars().count();
            if chars == 0 || chars > MAX_TAG_CHARS {
                return Err(DefinitionError {
                    field: format!("tags[{i}]"),
                    reason: format!(
                        "tag \"{tag}\" has {chars} characters; tags have 1 to {MAX_TAG_CHARS}"
                    ),
                });
            }
        }
        compile_scoped(&parse_definition(&self.criteria)?, calc, &self.scope())
    }
}

/// The audiences a stored definition references (none if it does not parse).
fn references_of(record: &AudienceRecord) -> Vec<AudienceId> {
    referenced_audiences(&record.criteria)
}

/// The audiences a definition references (none if it does not parse).
pub fn referenced_audiences(criteria: &serde_json::Value) -> Vec<AudienceId> {
    fn walk(c: &Criterion, out: &mut Vec<AudienceId>) {
        match c {
            Criterion::And(children) | Criterion::Or(children) => {
                children.iter().for_each(|c| walk(c, out))
            }
            Criterion::Exclude(child) => walk(child, out),
            Criterion::Audience(r) => out.push(r.id),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(c) = parse_definition(criteria) {
        walk(&c, &mut out);
    }
    out
}

/// The calculated attributes a stored definition reads, lowercased.
pub fn calculated_of(criteria: &serde_json::Value) -> Vec<String> {
    fn walk(c: &Criterion, out: &mut Vec<String>) {
        match c {
            Criterion::And(children) | Criterion::Or(children) => {
                children.iter().for_each(|c| walk(c, out))
            }
            Criterion::Exclude(child) => walk(child, out),
            Criterion::CalculatedAttribute(cond) => out.push(cond.name.trim().to_lowercase()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(c) = parse_definition(criteria) {
        walk(&c, &mut out);
    }
    out
}

/// An active audience ready to evaluate.
#[derive(Debug)]
pub struct ActiveAudience {
    pub record: AudienceRecord,
    pub compiled: CompiledAudience,
}

#[derive(Debug, Default)]
pub struct Catalog {
    /// Increases with every change of the catalog.
    pub version: u64,
    records: HashMap<AudienceId, AudienceRecord>,
    active: HashMap<AudienceId, Arc<ActiveAudience>>,
    /// Event type, then selector name ("" for criteria on the whole type), to audiences.
    /// Nested so the per-event lookups borrow `&str` instead of building owned keys.
    by_event: HashMap<String, HashMap<String, Vec<AudienceId>>>,
    by_attribute: HashMap<String, Vec<AudienceId>>,
    by_identity: HashMap<String, Vec<AudienceId>>,
    by_device: Vec<AudienceId>,
    by_consent: Vec<AudienceId>,
    by_first_seen: Vec<AudienceId>,
    /// Referenced audience to the audiences that read its membership.
    by_audience: HashMap<AudienceId, Vec<AudienceId>>,
    /// Audiences a profile with no data at all belongs to (e.g. "did not perform X"): a new
    /// profile is evaluated against them, whatever its first message touched.
    matches_empty: Vec<AudienceId>,
    matchers: HashMap<String, HashMap<String, Vec<Arc<Matcher>>>>,
    /// Data tier of events, by (event type, lowercased name); unset means Personalize.
    tiers: HashMap<(String, String), String>,
    /// Calculated attributes by lowercased name, and by the events they fold.
    calculated: HashMap<String, Arc<CalculatedDef>>,
    calculated_records: Vec<CalculatedAttributeRecord>,
    calculated_by_event: HashMap<String, HashMap<String, Vec<Arc<CalculatedDef>>>>,
    by_calculated: HashMap<String, Vec<AudienceId>>,
    by_location: Vec<AudienceId>,
    by_attribution: Vec<AudienceId>,
    /// Scoped audiences: a profile seen in a new workspace may enter them.
    by_workspaces: Vec<AudienceId>,
}

/// The one data tier whose events real-time audiences may use.
pub const PERSONALIZE_TIER: &str = "personalize";

/// Audiences as messages name them: `3 ("gold"), 5 ("vip")`.
fn named(records: &[&AudienceRecord]) -> String {
    records
        .iter()
        .map(|r| format!("{} (\"{}\")", r.id, r.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An event tier as it is stored: type, selector name and tier, trimmed and lowercased, or
/// the field that is not one.
pub fn event_tier(
    event_type: &str,
    name: &str,
    tier: &str,
) -> Result<(String, String, String), DefinitionError> {
    let tier = tier.trim().to_lowercase();
    if tier.is_empty() || tier.contains('/') {
        return Err(DefinitionError::new(
            "tier",
            format!("\"{tier}\" is not a tier name"),
        ));
    }
    let event_type = event_type.trim().to_lowercase();
    if event_type.is_empty() || event_type.contains('/') {
        return Err(DefinitionError::new(
            "event_type",
            format!("\"{event_type}\" is not an event type"),
        ));
    }
    Ok((event_type, name.trim().to_lowercase(), tier))
}

impl Catalog {
    /// Builds a catalog from stored records. Records that no longer compile (which validation
    /// at write time prevents) are kept but not activated.
    pub fn build(version: u64, records: impl IntoIterator<Item = AudienceRecord>) -> Catalog {
        Catalog::build_with_tiers(version, records, Vec::new())
    }

    /// Builds a catalog with the event tiers set by operators: (event type, name, tier).
    pub fn build_with_tiers(
        version: u64,
        records: impl IntoIterator<Item = AudienceRecord>,
        tiers: Vec<(String, String, String)>,
    ) -> Catalog {
        Catalog::build_full(version, records, tiers, Vec::new())
    }

    /// Builds a catalog with event tiers and the workspace's calculated attributes.
    pub fn build_full(
        version: u64,
        records: impl IntoIterator<Item = AudienceRecord>,
        tiers: Vec<(String, String, String)>,
        calculated: Vec<CalculatedAttributeRecord>,
    ) -> Catalog {
        let mut catalog = Catalog {
            version,
            tiers: tiers
                .into_iter()
                .map(|(t, n, tier)| ((t, n), tier.to_lowercase()))
                .collect(),
            ..Default::default()
        };
        for record in calculated {
            match record.compile() {
                Ok(def) => {
                    let def = Arc::new(def);
                    catalog
                        .calculated_by_event
                        .entry(def.matcher.event_type.clone())
                        .or_default()
                        .entry(def.matcher.name.clone())
                        .or_default()
                        .push(def.clone());
                    catalog.calculated.insert(def.key.clone(), def);
                }
                Err(e) => {
                    tracing::error!(attribute = %record.name, error = %e, "stored calculated attribute does not compile; not calculated")
                }
            }
            catalog.calculated_records.push(record);
        }
        let specs: HashMap<String, CalcSpec> = catalog
            .calculated
            .iter()
            .map(|(k, d)| (k.clone(), d.spec()))
            .collect();
        let lookup = |name: &str| specs.get(name).copied();
        let empty = ProfileState::new(0);
        let ctx = crate::criteria::EvalContext {
            now: 0,
            retention_ms: 0,
        };
        for record in records {
            let id = record.id;
            if record.status == AudienceStatus::Active {
                match record.validate_with(&lookup) {
                    Ok(compiled) => {
                        for read in &compiled.reads {
                            let slot = match read {
                                ReadKey::Event { event_type, name } => catalog
                                    .by_event
                                    .entry(event_type.clone())
                                    .or_default()
                                    .entry(name.clone())
                                    .or_default(),
                                ReadKey::Attribute(a) => {
                                    catalog.by_attribute.entry(a.clone()).or_default()
                                }
                                ReadKey::Identity(t) => {
                                    catalog.by_identity.entry(t.clone()).or_default()
                                }
                                ReadKey::Device => &mut catalog.by_device,
                                ReadKey::Consent => &mut catalog.by_consent,
                                ReadKey::FirstSeen => &mut catalog.by_first_seen,
                                ReadKey::Audience(a) => catalog.by_audience.entry(*a).or_default(),
                                ReadKey::Calculated(c) => {
                                    catalog.by_calculated.entry(c.clone()).or_default()
                                }
                                ReadKey::Location => &mut catalog.by_location,
                                ReadKey::Attribution => &mut catalog.by_attribution,
                                ReadKey::Workspaces => &mut catalog.by_workspaces,
                            };
                            slot.push(id);
                        }
                        for m in &compiled.matchers {
                            let slot = catalog
                                .matchers
                                .entry(m.event_type.clone())
                                .or_default()
                                .entry(m.name.clone())
                                .or_default();
                            if !slot.iter().any(|x| x.history_key == m.history_key) {
                                slot.push(Arc::new(m.clone()));
                            }
                        }
                        if compiled.evaluate(&empty, &ctx).matched {
                            catalog.matches_empty.push(id);
                        }
                        catalog.active.insert(
                            id,
                            Arc::new(ActiveAudience {
                                record: record.clone(),
                                compiled,
                            }),
                        );
                    }
                    Err(e) => {
                        tracing::error!(audience = id, error = %e, "stored audience does not compile; not activated")
                    }
                }
            }
            catalog.records.insert(id, record);
        }
        catalog
    }

    pub fn active(&self, id: AudienceId) -> Option<&Arc<ActiveAudience>> {
        self.active.get(&id)
    }

    pub fn record(&self, id: AudienceId) -> Option<&AudienceRecord> {
        self.records.get(&id)
    }

    pub fn records(&self) -> impl Iterator<Item = &AudienceRecord> {
        self.records.values()
    }

    pub fn active_ids(&self) -> impl Iterator<Item = AudienceId> + '_ {
        self.active.keys().copied()
    }

    /// The tier of an event, if an operator set one.
    pub fn tier(&self, event_type: &str, name: &str) -> Option<&str> {
        self.tiers
            .get(&(event_type.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// Events outside the Personalize tier are not evaluated by real-time audiences.
    pub fn excluded_by_tier(&self, event_type: &str, name: &str) -> bool {
        !self.tiers.is_empty()
            && self
                .tier(event_type, name)
                .is_some_and(|t| t != PERSONALIZE_TIER)
    }

    /// Refuses a definition that uses an event outside the Personalize tier, naming it.
    pub fn check_tiers(
        &self,
        criterion: &crate::criteria::Criterion,
    ) -> Result<(), DefinitionError> {
        for (field, event_type, name) in crate::criteria::event_references(criterion) {
            if let Some(tier) = self
                .tier(&event_type, &name)
                .filter(|t| *t != PERSONALIZE_TIER)
            {
                return Err(DefinitionError {
                    field,
                    reason: format!(
                        "event {event_type} \"{name}\" is in the {tier} tier: only events in the personalize tier can be used in a real-time audience"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Active audiences that read the membership of `id`.
    pub fn dependents(&self, id: AudienceId) -> &[AudienceId] {
        self.by_audience.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The checks of a saved definition against this catalog: it compiles (with the
    /// calculated attributes defined here), the audiences it reads exist and read none
    /// themselves, and its events are in a tier that feeds audiences.
    pub fn check_audience(
        &self,
        record: &AudienceRecord,
    ) -> Result<CompiledAudience, DefinitionError> {
        let compiled = record.validate_with(&self.calculated_lookup())?;
        self.check_references(record.id, &compiled)?;
        self.check_tiers(&parse_definition(&record.criteria)?)?;
        Ok(compiled)
    }

    /// Why audience `id` cannot be deleted (other audiences read it), or `None`.
    pub fn deletion_conflict(&self, id: AudienceId) -> Option<String> {
        let referrers = self.referrers(id);
        (!referrers.is_empty()).then(|| {
            format!(
                "audience {id} is used by audience(s) {}: remove it from their criteria first",
                named(&referrers)
            )
        })
    }

    /// Why `audience` cannot be saved with its access and workspaces, or `None`: an audience
    /// of another workspace references it, which its owners may do only while it is usable
    /// (see [`AudienceRecord::owners_own`]); making it private or view only would leave them
    /// a criterion they could not save again.
    pub fn access_conflict(&self, audience: &AudienceRecord) -> Option<String> {
        if audience.access == AudienceAccess::Usable {
            return None;
        }
        let outside: Vec<&AudienceRecord> = self
            .referrers(audience.id)
            .into_iter()
            .filter(|r| !r.owners_own(audience))
            .collect();
        (!outside.is_empty()).then(|| {
            format!(
                "audience {} is used by audience(s) {} of other workspaces, as usable: remove                  it from their criteria before making it {}",
                audience.id,
                named(&outside),
                audience.access.name()
            )
        })
    }

    /// Why the calculated attribute `key` (written `name`) cannot be deleted, or `None`.
    pub fn calculated_deletion_conflict(&self, key: &str, name: &str) -> Option<String> {
        let readers = self.calculated_readers(key);
        (!readers.is_empty()).then(|| {
            format!(
                "calculated attribute \"{name}\" is used by audience(s) {}: remove it from \
                 their criteria first",
                named(&readers)
            )
        })
    }

    /// Every audience (active or draft) whose definition references `id`, by id.
    pub fn referrers(&self, id: AudienceId) -> Vec<&AudienceRecord> {
        let mut out: Vec<&AudienceRecord> = self
            .records
            .values()
            .filter(|r| r.id != id && references_of(r).contains(&id))
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// Checks the audience references of a definition about to be stored as `id`: each one
    /// exists and has no audience criteria itself; and an audience others reference may not
    /// gain references (nesting stays one level deep).
    pub fn check_references(
        &self,
        id: AudienceId,
        compiled: &CompiledAudience,
    ) -> Result<(), DefinitionError> {
        let refs = compiled.referenced_audiences();
        for r in refs {
            let Some(target) = self.records.get(r).filter(|_| *r != id) else {
                let reason = if *r == id {
                    "an audience cannot reference itself".to_string()
                } else {
                    format!("audience {r} does not exist")
                };
                return Err(DefinitionError {
                    field: "criteria.audience.id".into(),
                    reason,
                });
            };
            if !references_of(target).is_empty() {
                return Err(DefinitionError {
                    field: "criteria.audience.id".into(),
                    reason: format!(
                        "audience {r} (\"{}\") has audience criteria of its own; only an audience without nested criteria can be referenced",
                        target.name
                    ),
                });
            }
        }
        if !refs.is_empty() {
            if let Some(referrer) = self.referrers(id).first() {
                return Err(DefinitionError {
                    field: "criteria".into(),
                    reason: format!(
                        "audience {id} is referenced by audience {} (\"{}\"), so it cannot reference other audiences",
                        referrer.id, referrer.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// The calculated attributes that fold events of this type and selector name.
    pub fn calculated_for(&self, event_type: &str, name: &str) -> &[Arc<CalculatedDef>] {
        self.calculated_by_event
            .get(event_type)
            .and_then(|by_name| by_name.get(name))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A compiled calculated attribute, by lowercased name.
    pub fn calculated_def(&self, key: &str) -> Option<&Arc<CalculatedDef>> {
        self.calculated.get(key)
    }

    /// Every compiled calculated attribute.
    pub fn calculated_defs(&self) -> impl Iterator<Item = &Arc<CalculatedDef>> {
        self.calculated.values()
    }

    pub fn calculated_spec(&self, key: &str) -> Option<CalcSpec> {
        self.calculated.get(key).map(|d| d.spec())
    }

    /// Whether a calculated attribute of that (lowercased) name is stored, compiling or not.
    pub fn has_calculated_record(&self, key: &str) -> bool {
        self.calculated_record(key).is_some()
    }

    /// The calculated attributes as stored, in creation order.
    pub fn calculated_records(&self) -> &[CalculatedAttributeRecord] {
        &self.calculated_records
    }

    /// Resolves calculated attributes for definitions validated against this catalog.
    pub fn calculated_lookup(&self) -> impl Fn(&str) -> Option<CalcSpec> + '_ {
        |name| self.calculated_spec(name)
    }

    /// Whether the audience `record` may read the calculated attributes its criteria read: an
    /// audience that selects workspaces reads only those calculated over some of them (the
    /// seed's user based criteria read the audience's workspaces; an attribute's value is its
    /// workspaces' data). Checked where a definition is proposed (see [`Catalog::
    /// calculated_scope_conflict`] for the attribute's side), not when the catalog log is
    /// applied, so that definitions saved before the rule stay readable.
    pub fn check_calculated_scope(&self, record: &AudienceRecord) -> Result<(), DefinitionError> {
        if record.workspaces.is_empty() {
            return Ok(());
        }
        for key in calculated_of(&record.criteria) {
            let Some(attribute) = self.calculated_record(&key) else {
                continue; // Undefined: the criteria's own check words it.
            };
            if !reads_within(&attribute.workspaces, &record.workspaces) {
                return Err(DefinitionError {
                    field: "criteria.calculated_attribute.name".into(),
                    reason: format!(
                        "calculated attribute \"{}\" is calculated over {}: an audience of \
                         workspace {} reads only calculated attributes of its workspaces",
                        attribute.name,
                        workspaces_words(&attribute.workspaces),
                        record.workspaces.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Why `attribute` cannot be saved with its workspaces, or `None`: an audience reading it
    /// selects workspaces that do not hold all of them (see
    /// [`Catalog::check_calculated_scope`]).
    pub fn calculated_scope_conflict(
        &self,
        attribute: &CalculatedAttributeRecord,
    ) -> Option<String> {
        let key = attribute.name.trim().to_lowercase();
        let readers: Vec<&AudienceRecord> = self
            .calculated_readers(&key)
            .into_iter()
            .filter(|r| !r.workspaces.is_empty())
            .filter(|r| !reads_within(&attribute.workspaces, &r.workspaces))
            .collect();
        (!readers.is_empty()).then(|| {
            format!(
                "calculated attribute \"{}\" would be calculated over {}, outside the \
                 workspaces of audience(s) {} that read it",
                attribute.name,
                workspaces_words(&attribute.workspaces),
                named(&readers)
            )
        })
    }

    /// A calculated attribute as stored, by lowercased name.
    fn calculated_record(&self, key: &str) -> Option<&CalculatedAttributeRecord> {
        self.calculated_records
            .iter()
            .find(|r| r.name.trim().to_lowercase() == key)
    }

    /// Every audience (active or draft) that reads the calculated attribute `key`.
    pub fn calculated_readers(&self, key: &str) -> Vec<&AudienceRecord> {
        let mut out: Vec<&AudienceRecord> = self
            .records
            .values()
            .filter(|r| calculated_of(&r.criteria).iter().any(|c| c == key))
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    pub fn matchers_for(&self, event_type: &str, name: &str) -> &[Arc<Matcher>] {
        self.matchers
            .get(event_type)
            .and_then(|by_name| by_name.get(name))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The audiences a change can affect.
    pub fn affected_by(&self, changes: &ChangeSet) -> BTreeSet<AudienceId> {
        let mut out = BTreeSet::new();
        let mut add = |ids: Option<&Vec<AudienceId>>| {
            if let Some(ids) = ids {
                out.extend(ids.iter().copied());
            }
        };
        for (event_type, name) in &changes.events {
            let Some(by_name) = self.by_event.get(event_type) else {
                continue;
            };
            add(by_name.get(name));
            if !name.is_empty() {
                // Criteria on a type without a name ("any commerce event") read every event of it.
                add(by_name.get(""));
            }
        }
        for a in &changes.attributes {
            add(self.by_attribute.get(a));
        }
        for c in &changes.calculated {
            add(self.by_calculated.get(c));
        }
        for t in &changes.identities {
            add(self.by_identity.get(t));
        }
        if changes.device {
            out.extend(self.by_device.iter().copied());
        }
        if changes.consent {
            out.extend(self.by_consent.iter().copied());
        }
        if changes.location {
            out.extend(self.by_location.iter().copied());
        }
        if changes.attribution {
            out.extend(self.by_attribution.iter().copied());
        }
        if changes.workspaces {
            out.extend(self.by_workspaces.iter().copied());
        }

        if changes.created {
            out.extend(self.matches_empty.iter().copied());
            out.extend(self.by_first_seen.iter().copied());
        }
        out
    }
}

/// Whether a calculated attribute over `attribute` (empty: every workspace) reads only
/// `audience`'s workspaces.
fn reads_within(attribute: &[String], audience: &[String]) -> bool {
    !attribute.is_empty() && attribute.iter().all(|w| audience.contains(w))
}

/// "every workspace" or "workspace a, b".
fn workspaces_words(workspaces: &[String]) -> String {
    match workspaces {
        [] => "every workspace".to_string(),
        w => format!("workspace {}", w.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gold() -> serde_json::Value {
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}})
    }

    /// `gold()` inside `levels` nested `and`s of one child.
    fn nested(levels: usize) -> serde_json::Value {
        (0..levels).fold(gold(), |inner, _| json!({ "and": [inner] }))
    }

    #[test]
    fn a_definition_too_deep_too_large_or_too_long_is_refused_naming_the_limit() {
        // A tree within the depth limit compiles: the bound is the only thing refused.
        assert!(AudienceRecord::active(1, "ok", nested(9))
            .validate()
            .is_ok());
        let deep = AudienceRecord::active(1, "deep", nested(12))
            .validate()
            .unwrap_err();
        assert_eq!(deep.field, "criteria");
        assert!(
            deep.reason.contains("levels deep") && deep.reason.contains("limit of 24"),
            "{}",
            deep.reason
        );
        let values: Vec<String> = (0..8_000).map(|i| format!("value-{i}")).collect();
        let large = json!({"user_attribute": {"name": "tier", "op": "in", "values": values}});
        let large = AudienceRecord::active(1, "large", large)
            .validate()
            .unwrap_err();
        assert!(
            large.reason.contains("bytes as JSON") && large.reason.contains("65536"),
            "{}",
            large.reason
        );
        let long = AudienceRecord::active(1, "n".repeat(MAX_NAME_CHARS + 1), gold())
            .validate()
            .unwrap_err();
        assert_eq!(long.field, "name");
        assert!(long.reason.contains("limit of 256"), "{}", long.reason);
        assert!(
            AudienceRecord::active(1, "n".repeat(MAX_NAME_CHARS), gold())
                .validate()
                .is_ok()
        );
    }
}
