//! A node's catalog: the one path every definition change takes, on one node as on many.
//!
//! A write is proposed (produced to the catalog topic by [`CatalogApplier::submit`]) and takes
//! effect only when this node's follower reads it back and applies it, in topic order, as
//! every other node does: the follower stores what changed with the offset (RocksDB, one
//! write), swaps the compiled catalog in for the partition actors, starts or stops deliveries,
//! and answers the call that proposed the record.
//!
//! Invariants:
//! - the node's catalog changes only by applying the topic: the registries never write
//!   definitions themselves, so every node holds the catalog of the offset it applied;
//! - a node serves and consumes only after [`CatalogApplier::start`] read the topic to its
//!   end (only the tail past its stored offset when it restarts);
//! - a store written before the topic existed is imported whole, ids kept, into an empty
//!   topic; into a topic that holds definitions already it is replaced by the topic's;
//! - outputs' secrets are sealed before they are proposed: the topic never carries them in
//!   clear (deliveries open them with the same key).

use crate::catalog_topic::{
    client_config, ensure_catalog_topic, CatalogProposer, CatalogReader, CatalogTopicError, Read,
    ReadRecord, Step,
};
use crate::delivery::Deliveries;
use crate::node::Node;
use crate::output_kinds::AudienceInfo;
use audience_state::ab_test::downstream_name;
use audience_state::audit::{self, AuditEntry};
use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::catalog_log::{
    Applied, CatalogRecord, CatalogState, Change, ImportedCatalog, Refusal, Touched,
};
use audience_state::outputs::{Connection, OnAudienceDelete};
use audience_state::secrets::{seal_output, SecretKey};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// How a node reaches its catalog topic.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    pub bootstrap: String,
    /// The operator's extra librdkafka properties (security...), as the other clients get.
    pub properties: BTreeMap<String, String>,
    pub topic: String,
    pub replication: i32,
    /// The node's name in its proposals (with its start time, unique per incarnation).
    pub node_id: String,
    /// Seals outputs' secrets: the same on every node.
    pub secret_key: SecretKey,
    /// How long a call waits for its record to be applied here, and a start for the topic
    /// to be read to its end.
    pub apply_timeout: Duration,
    /// The topic exists already (the embedded broker creates it): do not create or check it.
    pub topic_made: bool,
}

/// Why a proposed change did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Applied and refused: the catalog at its offset did not allow it.
    #[error("{0}")]
    Refused(Refusal),
    /// Not proposed, or not applied here in time (it may still apply later).
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
}

/// What the status call shows of the catalog.
#[derive(Debug, Clone, Default)]
pub struct CatalogStatus {
    pub node_id: String,
    pub applied_offset: Option<i64>,
    /// Offsets applied at start, before serving.
    pub applied_at_start: u64,
    pub undecodable: u64,
    /// Offsets between the applied one and the topic's end, as last seen.
    pub lag: i64,
    /// The topic's end as last seen (checked every 2 s, and past every offset applied).
    end: i64,
}

impl CatalogStatus {
    /// Notes the topic's end or an applied offset: the lag is what lies between.
    fn saw(&mut self, end: i64) {
        self.end = self.end.max(end);
        let next = self.applied_offset.map_or(0, |o| o + 1);
        self.lag = (self.end - next).max(0);
        metrics::gauge!("audience_catalog_lag_records").set(self.lag as f64);
    }
}

type Outcome = Result<Applied, Refusal>;

pub struct CatalogApplier {
    node: Arc<Node>,
    deliveries: Arc<Deliveries>,
    proposer: CatalogProposer,
    /// Calls waiting for their record, by proposal sequence.
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    /// The audit entries of the records applied and not yet stored: written with the next
    /// save of the catalog, in its batch (kept for the save after a failed one).
    unsaved_audit: Mutex<Vec<AuditEntry>>,
    status: Mutex<CatalogStatus>,
    settings: CatalogSettings,
}

/// The catalog version of a state: the same number on every node that applied the same
/// offsets.
fn version_of(state: &CatalogState) -> u64 {
    state.applied_offset.map_or(0, |o| o as u64 + 1)
}

fn unavailable(e: impl std::fmt::Display) -> SubmitError {
    SubmitError::Unavailable(e.to_string())
}

impl CatalogApplier {
    /// Reads the catalog topic to its end (after importing this node's own catalog into an
    /// empty topic), stores it, swaps it in, and follows the topic until `shutdown`.
    pub async fn start(
        node: Arc<Node>,
        deliveries: Arc<Deliveries>,
        settings: CatalogSettings,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<CatalogApplier>> {
        let kafka = client_config(&settings.bootstrap, &settings.properties);
        if !settings.topic_made {
            ensure_catalog_topic(&kafka, &settings.topic, settings.replication).await?;
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let proposer = CatalogProposer::new(&kafka, &settings.topic, &settings.node_id, started)?;
        let applier = Arc::new(CatalogApplier {
            node,
            deliveries,
            proposer,
            pending: Mutex::new(HashMap::new()),
            unsaved_audit: Mutex::new(Vec::new()),
            status: Mutex::new(CatalogStatus {
                node_id: settings.node_id.clone(),
                ..Default::default()
            }),
            settings,
        });
        let store = applier.node.engine.store.clone();
        let stored = store.load_catalog_state()?;
        // A store that never applied the topic holds a catalog of its own (or none).
        let (mut state, own) = match stored.applied_offset {
            Some(_) => (stored, None),
            None => (CatalogState::default(), Some(stored)),
        };
        let mut reader = CatalogReader::new(&kafka, &applier.settings.topic, &state)?;
        if state.cluster_id.is_none() && state.applied_offset.is_some() {
            // Applied before cluster ids existed: the id is the topic's first record's.
            state.cluster_id = reader
                .first_record()
                .await?
                .map(|record| audience_state::catalog_log::cluster_id_of(&record));
        }
        let end = reader.end().await?;
        if let Some(applied) = state.applied_offset.filter(|applied| *applied >= end) {
            anyhow::bail!(
                "this node applied catalog offset {applied}, but the catalog topic {} ends at \
                 {end}: the topic was recreated or emptied (the embedded broker keeps nothing \
                 across restarts). Point the node at its topic, or move its data directory \
                 away to start afresh",
                applier.settings.topic
            );
        }
        let mut at_start = applier.catch_up(&mut reader, &mut state).await?;
        let mut touched = state.take_touched();
        if let Some(own) = own.filter(|own| !own.is_empty()) {
            if state.is_empty() && state.applied_offset.is_none() {
                tracing::warn!(
                    audiences = own.audiences.len(),
                    outputs = own.outputs.len(),
                    "importing this node's catalog into the empty catalog topic, ids kept"
                );
                let imported = applier.import_of(&own);
                // Made by the engine itself: no caller.
                let record = applier.proposer.record(
                    applier.node.engine.clock.now(),
                    "",
                    Change::Import { catalog: imported },
                );
                applier.proposer.produce(&record).await?;
                at_start += applier.catch_up(&mut reader, &mut state).await?;
                // Another node's record may have come first: the import is then refused, and
                // this node's definitions are kept, not replaced.
                let imported = own
                    .audiences
                    .keys()
                    .all(|id| state.audiences.contains_key(id))
                    && own.outputs.keys().all(|id| state.outputs.contains_key(id));
                if !imported {
                    anyhow::bail!(
                        "the catalog topic {} refused this node's catalog (another node wrote \
                         to it first); this node's definitions are kept in its store: start \
                         it on an empty catalog topic to import them, or move its data \
                         directory away to join the topic's catalog",
                        applier.settings.topic
                    );
                }
                touched.extend(state.take_touched());
            } else {
                tracing::warn!(
                    audiences = own.audiences.len(),
                    outputs = own.outputs.len(),
                    "this node's own definitions are replaced by the catalog topic's, which \
                     holds definitions already"
                );
            }
            // What the node had and the topic has not is deleted.
            touched.extend(Touched::everything_in(&own));
        }
        let audit = std::mem::take(&mut *applier.unsaved_audit.lock());
        store.save_catalog(&state, &touched, &audit)?;
        applier.swap_catalog(&state);
        applier.swap_tokens(&state);
        // Before the follower runs: it is the only one to start or stop them from then on.
        applier.deliveries.start_all(&applier.node.engine)?;
        {
            let mut status = applier.status.lock();
            status.applied_offset = state.applied_offset;
            status.applied_at_start = at_start;
            status.saw(0);
        }
        tracing::info!(
            topic = %applier.settings.topic,
            applied = at_start,
            offset = ?state.applied_offset,
            audiences = state.audiences.len(),
            "catalog caught up"
        );
        tokio::spawn(applier.clone().follow(reader, state, shutdown));
        Ok(applier)
    }

    /// The node's own catalog as an import carries it: secrets sealed.
    fn import_of(&self, own: &CatalogState) -> ImportedCatalog {
        ImportedCatalog {
            audiences: own.audiences.values().cloned().collect(),
            tiers: own
                .tiers
                .iter()
                .map(|((t, n), tier)| (t.clone(), n.clone(), tier.clone()))
                .collect(),
            calculated: own.calculated.values().cloned().collect(),
            outputs: own.outputs.values().map(|o| self.seal(o)).collect(),
            connections: own.connections.values().cloned().collect(),
        }
    }

    /// An output with its secrets sealed for the topic.
    pub fn seal(
        &self,
        output: &audience_state::outputs::OutputConfig,
    ) -> audience_state::outputs::OutputConfig {
        seal_output(&self.settings.secret_key, output)
    }

    /// Applies the topic to its end as of now; returns the offsets applied.
    async fn catch_up(
        &self,
        reader: &mut CatalogReader,
        state: &mut CatalogState,
    ) -> Result<u64, CatalogTopicError> {
        let read = reader
            .catch_up(state, self.settings.apply_timeout, |offset, read| {
                if let ReadRecord::Record(record, outcome) = read {
                    self.unsaved_audit
                        .lock()
                        .push(audit::entry(offset, record, outcome));
                }
            })
            .await?;
        self.status.lock().undecodable += read.undecodable;
        Ok(read.accepted + read.refused + read.undecodable)
    }

    /// Proposes a change `by` a caller (its token's name, "" for none) and waits until this
    /// node applied it: its outcome.
    pub async fn submit(&self, by: &str, change: Change) -> Result<Applied, SubmitError> {
        let record = self
            .proposer
            .record(self.node.engine.clock.now(), by, change);
        let seq = record.proposal.seq;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(seq, tx);
        let outcome = async {
            let offset = self.proposer.produce(&record).await.map_err(unavailable)?;
            match tokio::time::timeout(self.settings.apply_timeout, rx).await {
                Ok(Ok(Ok(applied))) => Ok(applied),
                Ok(Ok(Err(refusal))) => Err(SubmitError::Refused(refusal)),
                Ok(Err(_)) => Err(unavailable("the catalog follower stopped")),
                Err(_) => Err(unavailable(format!(
                    "written at offset {offset} of the catalog topic but not applied here \
                     within {:?}: it takes effect when this node catches up",
                    self.settings.apply_timeout
                ))),
            }
        }
        .await;
        self.pending.lock().remove(&seq);
        outcome
    }

    pub fn status(&self) -> CatalogStatus {
        self.status.lock().clone()
    }

    /// Follows the topic: applies every record as it comes, and checks the lag now and then.
    async fn follow(
        self: Arc<Self>,
        mut reader: CatalogReader,
        mut state: CatalogState,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut lag_check = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = lag_check.tick() => {
                    if let Ok(end) = reader.end().await {
                        self.status.lock().saw(end);
                    }
                }
                step = reader.read_one(&mut state) => match step {
                    Ok(step) => self.applied(&mut state, step),
                    Err(e) => {
                        // The broker away: the catalog stays as it is until it is back.
                        tracing::warn!(error = %e, "catalog topic not read; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    /// What one applied offset does on this node.
    fn applied(&self, state: &mut CatalogState, step: Step) {
        let engine = &self.node.engine;
        let previous = engine.catalog.load_full();
        if let Read::Record(_, Ok(applied)) = &step.read {
            // Loops of connections that go stop before their rows are deleted.
            for id in gone_connections(applied) {
                self.deliveries.stop(id);
            }
        }
        let touched = state.take_touched();
        if let Read::Record(record, outcome) = &step.read {
            self.unsaved_audit
                .lock()
                .push(audit::entry(step.offset, record, outcome));
        }
        let audit = std::mem::take(&mut *self.unsaved_audit.lock());
        if let Err(e) = engine.store.save_catalog(state, &touched, &audit) {
            // The node goes on with the catalog in memory, and the next store writes these
            // changes too, with the offset they come with (never an offset without its
            // changes); restarted before, it applies again from the offset it stored last.
            tracing::error!(offset = step.offset, error = %e, "catalog change not stored");
            state.touch_again(touched.clone());
            self.unsaved_audit.lock().splice(0..0, audit);
        }
        if !touched.audiences.is_empty()
            || !touched.tiers.is_empty()
            || !touched.calculated.is_empty()
            || self.node.engine.cluster_id.read().as_ref() != state.cluster_id.as_ref()
        {
            self.swap_catalog(state);
        }
        if !touched.tokens.is_empty() {
            self.swap_tokens(state);
        }
        {
            let mut status = self.status.lock();
            status.applied_offset = state.applied_offset;
            status.saw(step.offset + 1);
            if matches!(step.read, Read::Undecodable(_)) {
                status.undecodable += 1;
            }
        }
        metrics::gauge!("audience_catalog_applied_offset").set(step.offset as f64);
        let Read::Record(record, outcome) = step.read else {
            return;
        };
        match &outcome {
            Ok(applied) => {
                self.start_deliveries(state, applied);
                let proposed_here = record.proposal.node == self.proposer.node();
                match (proposed_here, applied) {
                    (true, Applied::AudienceDeleted { id, connections }) => {
                        if let Some(audience) = previous.record(*id) {
                            self.tell_outputs_of_deletion(audience, connections, state);
                        }
                    }
                    // A variation downstream is an audience of its own: its test's end
                    // deletes it there as the audience's deletion would.
                    (
                        true,
                        Applied::AbTestDeleted {
                            audience,
                            connections,
                            ..
                        },
                    ) => self.tell_outputs_of_deletion(audience, connections, state),
                    _ => {}
                }
            }
            Err(refusal) => tracing::info!(
                offset = step.offset,
                proposal = %record.key(),
                %refusal,
                "catalog change refused"
            ),
        }
        self.answer(&record, outcome);
    }

    fn answer(&self, record: &CatalogRecord, outcome: Outcome) {
        if record.proposal.node != self.proposer.node() {
            return;
        }
        if let Some(waiting) = self.pending.lock().remove(&record.proposal.seq) {
            let _ = waiting.send(outcome);
        }
    }

    fn swap_catalog(&self, state: &CatalogState) {
        if let Some(id) = &state.cluster_id {
            let mut known = self.node.engine.cluster_id.write();
            if known.as_ref() != Some(id) {
                *known = Some(id.clone());
            }
        }
        let catalog: Catalog = state.catalog(version_of(state));
        self.node.engine.catalog.store(Arc::new(catalog));
        self.node.catalog_changed();
    }

    /// The API tokens the authenticator accepts: the catalog's, from now on.
    fn swap_tokens(&self, state: &CatalogState) {
        let tokens = state.tokens.values().cloned().collect();
        self.node.engine.api_tokens.store(Arc::new(tokens));
    }

    /// Deliveries of a new or edited connection or output (re)start with it.
    fn start_deliveries(&self, state: &CatalogState, applied: &Applied) {
        let engine = &self.node.engine;
        match applied {
            Applied::Output(output) => {
                for c in state.connections.values() {
                    if c.output_id == output.id {
                        self.deliveries.start(engine, c.clone(), output.clone());
                    }
                }
            }
            Applied::Connection(c) => {
                if let Some(output) = state.outputs.get(&c.output_id) {
                    self.deliveries.start(engine, c.clone(), output.clone());
                }
            }
            Applied::Resumed(c) => {
                if let Err(e) = self.deliveries.resume(engine, c.id) {
                    tracing::error!(connection = c.id, error = %e, "connection not resumed");
                }
            }
            Applied::Imported => {
                if let Err(e) = self.deliveries.start_all(engine) {
                    tracing::error!(error = %e, "deliveries not started");
                }
            }
            _ => {}
        }
    }

    /// Each output of a deleted audience's connections is told (webhook and Kafka receive an
    /// "audience deleted" message), in the background, by the node that proposed the
    /// deletion only: once per output, not once per node.
    fn tell_outputs_of_deletion(
        &self,
        audience: &AudienceRecord,
        connections: &[Connection],
        state: &CatalogState,
    ) {
        let name = audience.downstream_name();
        let mut notices = Vec::new();
        for c in connections {
            let Some(output) = state.outputs.get(&c.output_id) else {
                continue;
            };
            if output.on_audience_delete() == OnAudienceDelete::Leave {
                tracing::info!(
                    connection = c.id,
                    output = output.id,
                    "audience deleted; the output is left as it is (on_audience_delete = leave)"
                );
                continue;
            }
            match self.deliveries.build(output) {
                Ok(sink) => notices.push((c.clone(), sink)),
                Err(e) => {
                    tracing::warn!(connection = c.id, error = %e, "output not told of the deletion")
                }
            }
        }
        let audience_id = audience.id;
        tokio::spawn(async move {
            for (c, sink) in notices {
                let info = AudienceInfo {
                    id: audience_id,
                    name: downstream_name(&name, &c.variation),
                    variation: c.variation.clone(),
                    connection_id: c.id,
                    connection_settings: c.settings.clone(),
                };
                if let Err(e) = sink.audience_deleted(&info).await {
                    tracing::warn!(connection = c.id, error = %e.message, "output not told of the deletion");
                }
            }
        });
    }
}

/// The connections an applied change removes.
fn gone_connections(applied: &Applied) -> Vec<u64> {
    match applied {
        Applied::Disconnected(id) => vec![*id],
        Applied::AudienceDeleted { connections, .. }
        | Applied::AbTestDeleted { connections, .. } => connections.iter().map(|c| c.id).collect(),
        _ => Vec::new(),
    }
}
