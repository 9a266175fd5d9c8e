//! The catalog as a log: every definition change (audiences, event tiers, calculated
//! attributes, outputs, connections, API tokens) is a [`CatalogRecord`], and the catalog is what applying
//! the records in log order gives ([`CatalogState::apply`]). It is the pure half of cluster
//! step 1: on a single-partition catalog topic, every node applies the same records in the
//! same order and so holds the same catalog, whichever node proposed a change.
//!
//! Invariants:
//! - application is deterministic: the outcome of a record depends only on the state and the
//!   record, never on the node, its clock or its configuration;
//! - ids are allocated at apply time from the record's offset (offset + 1, so that 0 stays
//!   "none"): two nodes creating at once get distinct ids, the same on every node; a
//!   calculated attribute's revision is its record's too, so no two definitions share one;
//! - a change that the catalog as it stands at its offset does not allow (a reference to an
//!   audience that does not exist, deleting an audience others read, an edit made against a
//!   revision that is no longer current) is refused at apply time, identically everywhere,
//!   and changes nothing;
//! - every record has a key of its own (its proposal), so a compacted topic never removes a
//!   record: compaction is there so that retention never deletes a definition. Keying records
//!   by entity instead would let compaction keep a refused edit in place of the accepted one
//!   before it, and a node reading the compacted topic would end elsewhere.

use crate::ab_test::AbTest;
use crate::api_tokens::ApiTokenRecord;
use crate::calculated::CalculatedAttributeRecord;
use crate::catalog::{event_tier, AudienceRecord, Catalog};
use crate::criteria::DefinitionError;
use crate::model::{AudienceId, TimestampMs};
use crate::outputs::{Connection, ConnectionId, OutputConfig, OutputId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Version byte of a catalog record's value (then JSON: readable with any Kafka tool).
pub const CATALOG_RECORD_FORMAT: u8 = 1;

/// Who proposed a record, so the proposing node can find the outcome of its own call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: String,
    pub seq: u64,
}

/// One definition change. Edits carry the whole entity as it is to be, with the revision it
/// was edited from: applied only while that revision is current.
// Changes are few and short-lived (one per API call): boxing the large variants would only add
// noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A new audience; its id and revision are set at apply time.
    CreateAudience {
        audience: AudienceRecord,
    },
    /// An audience's definition, name, tags or status, edited from `expected_revision`.
    PutAudience {
        audience: AudienceRecord,
        expected_revision: u64,
    },
    DeleteAudience {
        id: AudienceId,
    },
    /// Starts an A/B test on an audience that has none (its definition and revision stay).
    CreateAbTest {
        audience: AudienceId,
        test: AbTest,
    },
    /// Ends an audience's test: its variations go, and every connection of one.
    DeleteAbTest {
        audience: AudienceId,
    },
    /// The data tier of an event (type and selector name, lowercased at apply time).
    SetEventTier {
        event_type: String,
        name: String,
        tier: String,
    },
    /// Defines or redefines a calculated attribute.
    PutCalculated {
        attribute: CalculatedAttributeRecord,
    },
    DeleteCalculated {
        name: String,
    },
    /// A new output; its id is set at apply time.
    CreateOutput {
        output: OutputConfig,
    },
    PutOutput {
        output: OutputConfig,
    },
    DeleteOutput {
        id: OutputId,
    },
    /// A new connection; its id is set at apply time.
    Connect {
        connection: Connection,
    },
    PutConnection {
        connection: Connection,
    },
    Disconnect {
        id: ConnectionId,
    },
    /// Clears a faulted connection's fault on every node (each met its own, delivering its
    /// partitions), so that each sends what it owes since. Changes no definition.
    Resume {
        id: ConnectionId,
    },
    /// A new API token (its digest only; see [`crate::api_tokens`]); refused when the name
    /// is taken.
    CreateToken {
        token: ApiTokenRecord,
    },
    RevokeToken {
        name: String,
    },
    /// A catalog that existed before the topic (a node of an earlier version, with its own
    /// ids), brought in whole with its ids kept: applied only to an empty catalog, and every
    /// id allocated afterwards is above the largest it holds.
    Import {
        catalog: ImportedCatalog,
    },
}

/// What [`Change::Import`] brings: every definition of a node's own store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportedCatalog {
    pub audiences: Vec<AudienceRecord>,
    /// (event type, name, tier).
    pub tiers: Vec<(String, String, String)>,
    pub calculated: Vec<CalculatedAttributeRecord>,
    pub outputs: Vec<OutputConfig>,
    pub connections: Vec<Connection>,
}

impl ImportedCatalog {
    pub fn is_empty(&self) -> bool {
        self.audiences.is_empty()
            && self.tiers.is_empty()
            && self.calculated.is_empty()
            && self.outputs.is_empty()
            && self.connections.is_empty()
    }

    /// The largest id or calculated revision it holds: ids allocated after it start above.
    fn largest_id(&self) -> u64 {
        let ids = self.audiences.iter().map(|a| a.id);
        let ids = ids.chain(self.calculated.iter().map(|c| c.revision));
        let ids = ids.chain(self.outputs.iter().map(|o| o.id));
        let ids = ids.chain(self.connections.iter().map(|c| c.id));
        ids.max().unwrap_or(0)
    }
}

/// A record of the catalog topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogRecord {
    pub proposal: ProposalId,
    /// The proposer's clock when it proposed: creation and update times of what it sets.
    pub at_ms: TimestampMs,
    /// The name of the token of the call that proposed it (the audit log's "who"); "" on an
    /// engine without tokens and for changes the engine makes itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    pub change: Change,
}

impl CatalogRecord {
    /// The record's key on the topic: its proposal, unique (see the module's invariants).
    pub fn key(&self) -> String {
        format!("{}/{}", self.proposal.node, self.proposal.seq)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CATALOG_RECORD_FORMAT];
        out.extend(serde_json::to_vec(self).expect("catalog records always serialise"));
        out
    }

    /// Reads a record; the error says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<CatalogRecord, String> {
        match bytes.split_first() {
            Some((&CATALOG_RECORD_FORMAT, json)) => serde_json::from_slice(json)
                .map_err(|e| format!("catalog record of format 1 does not parse: {e}")),
            Some((other, _)) => Err(format!(
                "unknown catalog record format {other} (this node reads format \
                 {CATALOG_RECORD_FORMAT}): is a newer node writing the topic?"
            )),
            None => Err("empty catalog record".to_string()),
        }
    }
}

/// What an applied record did.
#[allow(clippy::large_enum_variant)] // one per applied change, as `Change`
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Audience(AudienceRecord),
    /// The audience's test ended, and with it these connections of its variations (their
    /// deliveries stop, and their outputs are told as of a deleted audience).
    AbTestDeleted {
        audience: AudienceRecord,
        test: AbTest,
        connections: Vec<Connection>,
    },
    /// The audience is gone, and with it these connections (their deliveries stop, and
    /// their outputs are told).
    AudienceDeleted {
        id: AudienceId,
        connections: Vec<Connection>,
    },
    EventTier,
    Calculated(CalculatedAttributeRecord),
    CalculatedDeleted(String),
    Output(OutputConfig),
    OutputDeleted(OutputId),
    Connection(Connection),
    Disconnected(ConnectionId),
    Resumed(Connection),
    Imported,
    Token(ApiTokenRecord),
    TokenRevoked(String),
}

/// Why a record was refused at apply time (the proposing call answers FAILED_PRECONDITION
/// with it, or INVALID_ARGUMENT for a definition error).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Invalid(DefinitionError),
    Conflict(String),
    NotFound(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(e) => write!(f, "{e}"),
            Refusal::Conflict(why) | Refusal::NotFound(why) => f.write_str(why),
        }
    }
}

impl From<DefinitionError> for Refusal {
    fn from(e: DefinitionError) -> Self {
        Refusal::Invalid(e)
    }
}

/// The catalog materialised from the log, with the offset applied last.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// The offset of the last record applied (refused ones included); `None` before any.
    pub applied_offset: Option<i64>,
    /// Added to every id allocated from an offset: the largest id an import brought (0
    /// without one), so that later ids never meet an imported one.
    pub id_base: u64,
    pub audiences: BTreeMap<AudienceId, AudienceRecord>,
    /// (event type, name) to tier.
    pub tiers: BTreeMap<(String, String), String>,
    /// By lowercased name.
    pub calculated: BTreeMap<String, CalculatedAttributeRecord>,
    pub outputs: BTreeMap<OutputId, OutputConfig>,
    pub connections: BTreeMap<ConnectionId, Connection>,
    /// API tokens by name.
    pub tokens: BTreeMap<String, ApiTokenRecord>,
    /// The deployment's identity: derived from the first record of the topic, so every node
    /// of one deployment has the same, and another deployment (another topic, or this one
    /// recreated) another. Subscription cursors carry it.
    pub cluster_id: Option<String>,
    /// What applying changed since [`CatalogState::take_touched`] last ran: what a node
    /// writes to its materialised copy. Not part of the catalog (equality ignores it).
    touched: Touched,
}

impl PartialEq for CatalogState {
    fn eq(&self, other: &Self) -> bool {
        self.applied_offset == other.applied_offset
            && self.id_base == other.id_base
            && self.audiences == other.audiences
            && self.tiers == other.tiers
            && self.calculated == other.calculated
            && self.outputs == other.outputs
            && self.connections == other.connections
            && self.tokens == other.tokens
            && self.cluster_id == other.cluster_id
    }
}

/// The cluster id a first record gives: 16 hex digits of an FNV-1a hash of its proposal (node
/// and sequence) and time. Not a secret; only different between deployments.
pub fn cluster_id_of(record: &CatalogRecord) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{}@{}", record.key(), record.at_ms).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The keys of the entities that applying records changed (created, edited or deleted): their
/// current value in the state is what to store, their absence a deletion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Touched {
    pub audiences: BTreeSet<AudienceId>,
    pub tiers: BTreeSet<(String, String)>,
    pub calculated: BTreeSet<String>,
    pub outputs: BTreeSet<OutputId>,
    pub connections: BTreeSet<ConnectionId>,
    pub tokens: BTreeSet<String>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.audiences.is_empty()
            && self.tiers.is_empty()
            && self.calculated.is_empty()
            && self.outputs.is_empty()
            && self.connections.is_empty()
            && self.tokens.is_empty()
    }

    /// Every entity of `state`: to store a whole state, or to delete one.
    pub fn everything_in(state: &CatalogState) -> Touched {
        Touched {
            audiences: state.audiences.keys().copied().collect(),
            tiers: state.tiers.keys().cloned().collect(),
            calculated: state.calculated.keys().cloned().collect(),
            outputs: state.outputs.keys().copied().collect(),
            connections: state.connections.keys().copied().collect(),
            tokens: state.tokens.keys().cloned().collect(),
        }
    }

    pub fn extend(&mut self, other: Touched) {
        self.audiences.extend(other.audiences);
        self.tiers.extend(other.tiers);
        self.calculated.extend(other.calculated);
        self.outputs.extend(other.outputs);
        self.connections.extend(other.connections);
        self.tokens.extend(other.tokens);
    }
}

/// The id a creation at `offset` gets in a catalog without an import.
pub fn id_at(offset: i64) -> u64 {
    offset as u64 + 1
}

impl CatalogState {
    /// The id a creation at `offset` gets: distinct for every offset, above every imported id.
    pub fn id_at(&self, offset: i64) -> u64 {
        self.id_base + id_at(offset)
    }

    /// Whether it holds no definition at all.
    pub fn is_empty(&self) -> bool {
        self.audiences.is_empty()
            && self.tiers.is_empty()
            && self.calculated.is_empty()
            && self.outputs.is_empty()
            && self.connections.is_empty()
            && self.tokens.is_empty()
    }

    /// What applying changed since the last call (and forgets it).
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// Gives back what [`CatalogState::take_touched`] took, when it could not be stored: the
    /// next store writes it with the offset it comes with.
    pub fn touch_again(&mut self, touched: Touched) {
        self.touched.extend(touched);
    }

    /// The compiled catalog of this state, at catalog version `version`.
    pub fn catalog(&self, version: u64) -> Catalog {
        Catalog::build_full(
            version,
            self.audiences.values().cloned(),
            self.tiers
                .iter()
                .map(|((t, n), tier)| (t.clone(), n.clone(), tier.clone()))
                .collect(),
            self.calculated.values().cloned().collect(),
        )
    }

    /// Applies the record at `offset`. A record at or below the applied offset was applied
    /// already: it is refused as a replay and changes nothing.
    pub fn apply(&mut self, offset: i64, record: &CatalogRecord) -> Result<Applied, Refusal> {
        if self.applied_offset.is_some_and(|applied| offset <= applied) {
            return Err(Refusal::Conflict(format!(
                "catalog record at offset {offset} was applied already"
            )));
        }
        // Only a state that applied nothing before reads the topic's first record here; a
        // store from before cluster ids learns its id from the topic (`first_record`).
        if self.applied_offset.is_none() && self.cluster_id.is_none() {
            self.cluster_id = Some(cluster_id_of(record));
        }
        let outcome = self.change(offset, record);
        self.applied_offset = Some(offset);
        outcome
    }

    fn change(&mut self, offset: i64, record: &CatalogRecord) -> Result<Applied, Refusal> {
        let at = record.at_ms;
        match &record.change {
            Change::CreateAudience { audience } => {
                let mut audience = audience.clone();
                audience.id = self.id_at(offset);
                audience.revision = 1;
                audience.created_at_ms = at;
                audience.updated_at_ms = at;
                audience.created_by = record.by.clone();
                audience.updated_by = record.by.clone();
                self.check_audience(&audience)?;
                // A clone carries its original's test.
                if let Some(test) = &mut audience.ab_test {
                    test.validate()?;
                    test.created_at_ms = at;
                }
                self.touched.audiences.insert(audience.id);
                self.audiences.insert(audience.id, audience.clone());
                Ok(Applied::Audience(audience))
            }
            Change::PutAudience {
                audience,
                expected_revision,
            } => {
                let current = self.audience(audience.id)?;
                if current.revision != *expected_revision {
                    return Err(Refusal::Conflict(format!(
                        "audience {} changed meanwhile (revision {}, edited from {}): read it \
                         again and retry",
                        audience.id, current.revision, expected_revision
                    )));
                }
                let mut audience = audience.clone();
                audience.revision = current.revision + 1;
                audience.created_at_ms = current.created_at_ms;
                audience.updated_at_ms = at;
                audience.created_by = current.created_by.clone();
                audience.updated_by = record.by.clone();
                // The test is changed by its own records only: an edit read before a test
                // was created or deleted does not undo that.
                audience.ab_test = current.ab_test.clone();
                // Drafts are checked too, as the registry checks every save.
                self.check_audience(&audience)?;
                if let Some(conflict) = self.catalog(0).access_conflict(&audience) {
                    return Err(Refusal::Conflict(conflict));
                }
                self.touched.audiences.insert(audience.id);
                self.audiences.insert(audience.id, audience.clone());
                Ok(Applied::Audience(audience))
            }
            Change::DeleteAudience { id } => {
                self.audience(*id)?;
                if let Some(conflict) = self.catalog(0).deletion_conflict(*id) {
                    return Err(Refusal::Conflict(conflict));
                }
                // Its connections go with it (the node's deliveries stop them and tell the
                // outputs).
                let connections: Vec<Connection> = self
                    .connections
                    .values()
                    .filter(|c| c.audience_id == *id)
                    .cloned()
                    .collect();
                self.connections.retain(|_, c| c.audience_id != *id);
                self.audiences.remove(id);
                self.touched.audiences.insert(*id);
                let gone = connections.iter().map(|c| c.id);
                self.touched.connections.extend(gone);
                Ok(Applied::AudienceDeleted {
                    id: *id,
                    connections,
                })
            }
            Change::CreateAbTest { audience, test } => {
                let current = self.audience(*audience)?;
                if current.ab_test.is_some() {
                    return Err(Refusal::Conflict(format!(
                        "audience {audience} has an A/B test already: delete it first"
                    )));
                }
                test.validate()?;
                let mut changed = current.clone();
                changed.ab_test = Some(AbTest {
                    created_at_ms: at,
                    ..test.clone()
                });
                changed.updated_at_ms = at;
                changed.updated_by = record.by.clone();
                self.touched.audiences.insert(changed.id);
                self.audiences.insert(changed.id, changed.clone());
                Ok(Applied::Audience(changed))
            }
            Change::DeleteAbTest { audience } => {
                let current = self.audience(*audience)?;
                let Some(test) = current.ab_test.clone() else {
                    return Err(Refusal::NotFound(format!(
                        "audience {audience} has no A/B test"
                    )));
                };
                let mut changed = current.clone();
                changed.ab_test = None;
                changed.updated_at_ms = at;
                changed.updated_by = record.by.clone();
                let of_variations =
                    |c: &Connection| c.audience_id == *audience && !c.variation.is_empty();
                let connections: Vec<Connection> = self
                    .connections
                    .values()
                    .filter(|c| of_variations(c))
                    .cloned()
                    .collect();
                self.connections.retain(|_, c| !of_variations(c));
                self.touched
                    .connections
                    .extend(connections.iter().map(|c| c.id));
                self.touched.audiences.insert(changed.id);
                self.audiences.insert(changed.id, changed.clone());
                Ok(Applied::AbTestDeleted {
                    audience: changed,
                    test,
                    connections,
                })
            }
            Change::SetEventTier {
                event_type,
                name,
                tier,
            } => {
                let (event_type, name, tier) = event_tier(event_type, name, tier)?;
                self.touched
                    .tiers
                    .insert((event_type.clone(), name.clone()));
                self.tiers.insert((event_type, name), tier);
                Ok(Applied::EventTier)
            }
            Change::PutCalculated { attribute } => {
                attribute.compile()?;
                let key = attribute.name.trim().to_lowercase();
                let previous = self.calculated.get(&key);
                if let Some(previous) = previous.filter(|p| p.same_definition(attribute)) {
                    return Ok(Applied::Calculated(previous.clone()));
                }
                let mut attribute = attribute.clone();
                // Unique across redefinitions, deletions and re-creations: a profile's
                // aggregate of another revision is never read as this one's.
                attribute.revision = self.id_at(offset);
                attribute.created_at_ms = previous.map_or(at, |p| p.created_at_ms);
                attribute.updated_at_ms = at;
                // Audiences reading it are evaluated again, with the new definition.
                let readers: Vec<AudienceId> = self
                    .catalog(0)
                    .calculated_readers(&key)
                    .iter()
                    .map(|r| r.id)
                    .collect();
                for id in readers {
                    if let Some(a) = self.audiences.get_mut(&id) {
                        a.revision += 1;
                        self.touched.audiences.insert(id);
                    }
                }
                self.touched.calculated.insert(key.clone());
                self.calculated.insert(key, attribute.clone());
                Ok(Applied::Calculated(attribute))
            }
            Change::DeleteCalculated { name } => {
                let key = name.trim().to_lowercase();
                if !self.calculated.contains_key(&key) {
                    return Err(Refusal::NotFound(format!(
                        "calculated attribute \"{name}\" not found"
                    )));
                }
                if let Some(conflict) = self.catalog(0).calculated_deletion_conflict(&key, name) {
                    return Err(Refusal::Conflict(conflict));
                }
                self.calculated.remove(&key);
                self.touched.calculated.insert(key.clone());
                Ok(Applied::CalculatedDeleted(key))
            }
            Change::CreateToken { token } => {
                token.validate()?;
                if self.tokens.contains_key(&token.name) {
                    return Err(Refusal::Conflict(format!(
                        "a token named '{}' exists: revoke it first, or choose another name",
                        token.name
                    )));
                }
                let mut token = token.clone();
                token.created_at_ms = at;
                token.created_by = record.by.clone();
                self.touched.tokens.insert(token.name.clone());
                self.tokens.insert(token.name.clone(), token.clone());
                Ok(Applied::Token(token))
            }
            Change::RevokeToken { name } => {
                if self.tokens.remove(name).is_none() {
                    return Err(Refusal::NotFound(format!("token '{name}' not found")));
                }
                self.touched.tokens.insert(name.clone());
                Ok(Applied::TokenRevoked(name.clone()))
            }
            Change::CreateOutput { output } => {
                output.validate()?;
                let mut output = output.clone();
                output.id = self.id_at(offset);
                output.created_at_ms = at;
                output.updated_at_ms = at;
                self.touched.outputs.insert(output.id);
                self.outputs.insert(output.id, output.clone());
                Ok(Applied::Output(output))
            }
            Change::PutOutput { output } => {
                let current = self.output(output.id)?;
                let mut output = output.clone();
                output.keep_redacted_secrets(current)?;
                output.validate()?;
                output.created_at_ms = current.created_at_ms;
                output.updated_at_ms = at;
                self.touched.outputs.insert(output.id);
                self.outputs.insert(output.id, output.clone());
                Ok(Applied::Output(output))
            }
            Change::DeleteOutput { id } => {
                self.output(*id)?;
                let users: Vec<String> = self
                    .connections
                    .values()
                    .filter(|c| c.output_id == *id)
                    .map(|c| format!("connection {} (audience {})", c.id, c.audience_id))
                    .collect();
                if !users.is_empty() {
                    return Err(Refusal::Conflict(format!(
                        "output {id} is used by {}: delete them first",
                        users.join(", ")
                    )));
                }
                self.outputs.remove(id);
                self.touched.outputs.insert(*id);
                Ok(Applied::OutputDeleted(*id))
            }
            Change::Connect { connection } => {
                self.check_connection(connection)?;
                let mut connection = connection.clone();
                connection.id = self.id_at(offset);
                connection.created_at_ms = at;
                connection.updated_at_ms = at;
                self.touched.connections.insert(connection.id);
                self.connections.insert(connection.id, connection.clone());
                Ok(Applied::Connection(connection))
            }
            Change::PutConnection { connection } => {
                let current = self
                    .connections
                    .get(&connection.id)
                    .cloned()
                    .ok_or_else(|| {
                        Refusal::NotFound(format!("connection {} not found", connection.id))
                    })?;
                let mut connection = connection.clone();
                // A connection stays between the audience and the output it was made for.
                connection.audience_id = current.audience_id;
                connection.output_id = current.output_id;
                connection.variation = current.variation.clone();
                connection.created_at_ms = current.created_at_ms;
                connection.updated_at_ms = at;
                self.touched.connections.insert(connection.id);
                self.connections.insert(connection.id, connection.clone());
                Ok(Applied::Connection(connection))
            }
            Change::Disconnect { id } => match self.connections.remove(id) {
                Some(_) => {
                    self.touched.connections.insert(*id);
                    Ok(Applied::Disconnected(*id))
                }
                None => Err(Refusal::NotFound(format!("connection {id} not found"))),
            },
            Change::Resume { id } => match self.connections.get(id) {
                Some(connection) => Ok(Applied::Resumed(connection.clone())),
                None => Err(Refusal::NotFound(format!("connection {id} not found"))),
            },
            Change::Import { catalog } => self.import(offset, catalog),
        }
    }

    /// Brings a catalog in whole, ids kept: only into an empty catalog (a second import, or
    /// one after definitions were made through the topic, would mix two catalogs' ids).
    fn import(&mut self, offset: i64, catalog: &ImportedCatalog) -> Result<Applied, Refusal> {
        if !self.is_empty() {
            return Err(Refusal::Conflict(
                "a catalog is imported only into an empty catalog topic: this one holds \
                 definitions already"
                    .to_string(),
            ));
        }
        // Checked before anything changes: a refused record changes nothing.
        let tiers: Vec<_> = catalog
            .tiers
            .iter()
            .map(|(event_type, name, tier)| event_tier(event_type, name, tier))
            .collect::<Result<_, _>>()?;
        for (event_type, name, tier) in tiers {
            self.tiers.insert((event_type, name), tier);
        }
        for audience in &catalog.audiences {
            self.audiences.insert(audience.id, audience.clone());
        }
        for attribute in &catalog.calculated {
            let key = attribute.name.trim().to_lowercase();
            self.calculated.insert(key, attribute.clone());
        }
        for output in &catalog.outputs {
            self.outputs.insert(output.id, output.clone());
        }
        for connection in &catalog.connections {
            self.connections.insert(connection.id, connection.clone());
        }
        // Ids allocated from later offsets start above every imported one.
        self.id_base = catalog.largest_id().saturating_sub(id_at(offset));
        self.touched.extend(Touched::everything_in(self));
        Ok(Applied::Imported)
    }

    fn audience(&self, id: AudienceId) -> Result<&AudienceRecord, Refusal> {
        self.audiences
            .get(&id)
            .ok_or_else(|| Refusal::NotFound(format!("audience {id} not found")))
    }

    fn output(&self, id: OutputId) -> Result<&OutputConfig, Refusal> {
        self.outputs
            .get(&id)
            .ok_or_else(|| Refusal::NotFound(format!("output {id} not found")))
    }

    /// The checks of a saved definition against the catalog as it stands: it compiles, the
    /// audiences it reads exist (and read no audience themselves), its events are in a tier
    /// that feeds audiences.
    fn check_audience(&self, audience: &AudienceRecord) -> Result<(), Refusal> {
        self.catalog(0).check_audience(audience)?;
        Ok(())
    }

    fn check_connection(&self, connection: &Connection) -> Result<(), Refusal> {
        let Some(audience) = self.audiences.get(&connection.audience_id) else {
            return Err(DefinitionError::new(
                "audience_id",
                format!("audience {} does not exist", connection.audience_id),
            )
            .into());
        };
        check_variation(audience, &connection.variation)?;
        if !self.outputs.contains_key(&connection.output_id) {
            return Err(DefinitionError::new(
                "output_id",
                format!("output {} does not exist", connection.output_id),
            )
            .into());
        }
        Ok(())
    }
}

/// That a connection's variation (empty: the whole audience) is one of the audience's test,
/// spelt as the test spells it.
pub fn check_variation(audience: &AudienceRecord, variation: &str) -> Result<(), DefinitionError> {
    if variation.is_empty() {
        return Ok(());
    }
    let Some(test) = &audience.ab_test else {
        return Err(DefinitionError::new(
            "variation",
            format!(
                "audience {} has no A/B test: connect the whole audience (no variation)",
                audience.id
            ),
        ));
    };
    match test.find(variation) {
        Some(name) if name == variation => Ok(()),
        _ => Err(DefinitionError::new(
            "variation",
            format!(
                "audience {} has no variation \"{variation}\" (its variations: {})",
                audience.id,
                test.split()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
