//! The partition actor: owns one partition number (the same partition of every input topic:
//! events, identities and the topics inputs claim, co-partitioned by MPID) and hosts the virtual per-MPID state
//! machines of the profiles that hash to it.
//!
//! Invariants:
//! - one poll batch is one RocksDB write: profiles, deltas, timers, sizes, dead letters and
//!   the next offsets together;
//! - a message at an offset below the stored next offset has been applied already and is
//!   skipped, so replays after a crash change nothing;
//! - messages of one MPID are applied in offset order by this actor alone;
//! - a profile in memory is only a cache of the stored one: passivating it loses nothing;
//! - a profile's event log is written in the same batch as its state, with the dictionary
//!   names it newly uses, so a stored log never refers to a name the store lacks;
//! - while a changed definition is backfilled, streaming evaluates it only for profiles the
//!   scan has passed: the others are evaluated once, by the scan, over their whole log;
//! - every message that changes a profile is logged in the batch of its state, and what
//!   leaves the log is folded into the profile's base (facts record) in the batch that drops
//!   it, so the logs alone rebuild the profile (replay); while a replay that wiped the states
//!   runs, a profile the scan has not reached is rebuilt from its logs when a message
//!   activates it.
//!
//! Ingest, timers and commits are here; the background scans of stored profiles (backfill of
//! changed definitions, replay from the logs) are in `background`.

mod activation;
mod background;

use crate::engine::Engine;
use actix::prelude::*;
use audience_state::backfill::BackfillPlan;
use audience_state::batch::decode_sourced;
use audience_state::catalog::Catalog;
use audience_state::criteria::EvalContext;
use audience_state::eventlog::{Dictionary, EventLog};
use audience_state::facts::ProfileFacts;
use audience_state::model::{AudienceId, Delta, DeltaKind, Inbound, Mpid, TimestampMs};
use audience_state::profile::ProfileState;
use audience_state::replay::{audiences_to_evaluate, base_after};
use audience_state::store::{
    DeadLetter, Partition, ReplayCursor, StoreError, UnreadableRow, WriteBatch,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message as consumed from Kafka.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// The record's Kafka timestamp (producer's or broker's), in ms: what produce-to-delta
    /// latency is measured from.
    pub timestamp_ms: Option<i64>,
}

/// Apply one poll batch of this partition.
#[derive(Message)]
#[rtype(result = "Result<BatchOutcome, BatchRefused>")]
pub struct ProcessBatch(pub Vec<RawMessage>);

/// A batch the store refused to write (a full disk, an I/O error): nothing of it was applied,
/// the actor is back at what the store holds, and the messages come back to be tried again.
#[derive(Debug)]
pub struct BatchRefused {
    pub error: String,
    pub messages: Vec<RawMessage>,
}

#[derive(Debug, Default, Clone)]
pub struct BatchOutcome {
    pub applied: usize,
    pub skipped: usize,
    pub dead_lettered: usize,
    pub deltas: usize,
    /// Next offset per topic after this batch.
    pub next_offsets: Vec<(String, i64)>,
}

/// Fire the timers that are due.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

/// The catalog changed: evaluate the changed audiences over every stored profile.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatalogChanged;

#[derive(Message)]
#[rtype(result = "()")]
struct BackfillStep {
    /// Each audience with the revision evaluated (`None`: no longer active: members leave).
    audiences: Vec<(AudienceId, Option<u64>)>,
    /// Each calculated attribute recalculated, with its revision (`None`: deleted).
    calculated: Vec<(String, Option<u64>)>,
    /// The state rebuilt from each profile's log, and the audiences evaluated after it.
    plan: Arc<BackfillPlan>,
    evaluate: Arc<Vec<AudienceId>>,
    after: Option<Mpid>,
    /// Steps of an abandoned backfill (after a failure) are ignored.
    generation: u64,
}

/// Rebuild every profile of the partition from its logs (base, event log, membership
/// history): profiles whose fold equals their stored state are not written. Started after a
/// running backfill ends; a replay already running is left to finish. Returns the profiles to
/// scan.
#[derive(Message)]
#[rtype(result = "Result<u64, String>")]
pub struct StartReplay {
    pub mode: ReplayMode,
}

/// What a replay does with each profile's fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Writes the folds that differ from the stored states, with their deltas.
    Rebuild,
    /// Deletes the profile states and timers first, then writes every fold.
    RebuildWiped,
    /// Compares each fold with the stored state and reports the differences; writes nothing
    /// (not even its position: a restart ends it).
    Verify,
}

#[derive(Message)]
#[rtype(result = "()")]
struct ReplayStep {
    generation: u64,
}

/// Stop the actor after the messages already queued (the partition was revoked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

#[derive(Message)]
#[rtype(result = "PartitionSnapshot")]
pub struct Snapshot;

#[derive(Debug, Clone, Default)]
pub struct PartitionSnapshot {
    pub partition: Partition,
    pub next_offsets: Vec<(String, i64)>,
    pub outbox_head: u64,
    pub profiles_active: u64,
}

struct Cached {
    state: ProfileState,
    log: EventLog,
    /// Rebuilt from its logs: its first evaluation covers every audience, to set its timers.
    rebuilt: bool,
    /// Not stored yet: its first write also lists it in the sample index and the count.
    is_new: bool,
    /// The timer instant stored for this profile, to move it when it changes.
    stored_due: Option<TimestampMs>,
    last_used: Instant,
}

impl Cached {
    /// A profile never stored.
    fn new(mpid: Mpid) -> Cached {
        Cached {
            state: ProfileState::new(mpid),
            log: EventLog::default(),
            rebuilt: false,
            is_new: true,
            stored_due: None,
            last_used: Instant::now(),
        }
    }

    /// A profile as stored, with its log head.
    fn stored(state: ProfileState, log: EventLog) -> Cached {
        Cached {
            stored_due: state.next_due(),
            state,
            log,
            rebuilt: false,
            is_new: false,
            last_used: Instant::now(),
        }
    }
}

pub struct PartitionActor {
    partition: Partition,
    engine: Arc<Engine>,
    catalog: Arc<Catalog>,
    /// Revision of each active audience this partition's profiles were evaluated against.
    evaluated: HashMap<AudienceId, u64>,
    /// Revision of each calculated attribute this partition's profiles were calculated for.
    calc_evaluated: HashMap<String, u64>,
    /// Codes of the names in this partition's event logs.
    dict: Dictionary,
    /// Profiles stored in this partition.
    profile_count: u64,
    backfilling: bool,
    /// The audiences being backfilled, and the last profile the scan evaluated.
    backfill_cursor: Option<(Arc<Vec<AudienceId>>, Option<Mpid>)>,
    /// Bumped when in-memory state is rebuilt from the store or a backfill starts.
    generation: u64,
    /// The running replay (a rebuild's is stored, so a restart resumes it), and one asked for
    /// while a backfill ran.
    replay: Option<ReplayCursor>,
    /// The running replay is a check ([`ReplayMode::Verify`]).
    replay_check_only: bool,
    replay_requested: Option<ReplayMode>,
    /// A replay step is queued in the mailbox.
    replay_driving: bool,
    /// The catalog or `evaluated` changed since the last look for stale audiences: only then
    /// is the whole catalog scanned, so a batch costs nothing per audience defined.
    catalog_dirty: bool,
    cache: HashMap<Mpid, Cached>,
    next_offsets: HashMap<String, i64>,
    outbox_head: u64,
    deadletter_head: u64,
    sizes: HashMap<AudienceId, u64>,
}

/// What one unit of work accumulates before its single write.
#[derive(Default)]
struct Pending {
    dirty: BTreeSet<Mpid>,
    /// Dirty profiles whose core row is stored as it is (a backfill changed only what their
    /// derived row holds): only that row is written.
    core_unchanged: BTreeSet<Mpid>,
    deltas: Vec<Delta>,
    dead_letters: Vec<DeadLetter>,
    /// Rows found unreadable, set aside by the unit's write.
    quarantine: Vec<UnreadableRow>,
    /// Profiles whose log starts again (its head was unreadable): the base it starts over.
    reset_logs: HashMap<Mpid, Vec<u8>>,
    sizes_changed: BTreeSet<AudienceId>,
    /// The deltas messages caused, timed once committed ([`crate::latency`]).
    caused: crate::latency::Caused,
    /// A replay's position after this unit of work (`Some(None)`: the replay is done).
    replay_cursor: Option<Option<ReplayCursor>>,
}

impl PartitionActor {
    pub fn new(partition: Partition, engine: Arc<Engine>) -> Result<Self, StoreError> {
        engine.partitions.lock().insert(partition);
        let mut actor = PartitionActor {
            partition,
            catalog: engine.catalog.load_full(),
            outbox_head: 0,
            deadletter_head: 0,
            engine,
            evaluated: HashMap::new(),
            calc_evaluated: HashMap::new(),
            dict: Dictionary::default(),
            profile_count: 0,
            backfilling: false,
            backfill_cursor: None,
            generation: 0,
            replay: None,
            replay_check_only: false,
            replay_requested: None,
            replay_driving: false,
            catalog_dirty: true,
            cache: HashMap::new(),
            next_offsets: HashMap::new(),
            sizes: HashMap::new(),
        };
        actor.load_positions()?;
        Ok(actor)
    }

    /// Reads everything the actor keeps in memory besides profiles from the store.
    fn load_positions(&mut self) -> Result<(), StoreError> {
        let store = self.engine.store.clone();
        let p = self.partition;
        self.next_offsets.clear();
        for topic in &self.engine.settings.input_topics {
            if let Some(o) = store.next_offset(topic, p)? {
                self.next_offsets.insert(topic.clone(), o);
            }
        }
        self.sizes = store
            .audience_sizes()?
            .into_iter()
            .filter(|(_, partition, _)| *partition == p)
            .map(|(a, _, s)| (a, s))
            .collect();
        self.evaluated = store.evaluated_revisions(p)?.into_iter().collect();
        self.dict = store.load_dictionary(p)?;
        self.profile_count = match store.profile_count(p)? {
            Some(n) => n,
            None => store.index_sample(p)?,
        };
        self.calc_evaluated = store.calculated_evaluated(p)?.into_iter().collect();
        // Read before anything below writes: after a refused write (a full disk) `recover`
        // must still find the heads the store holds, even when these writes fail too.
        self.replay = store.replay_cursor(p)?;
        self.outbox_head = store.outbox_head(p)?;
        self.deadletter_head = store.deadletter_head(p)?;
        if self.calc_evaluated.is_empty() && self.dict.is_empty() {
            // No profile of this partition has logged an event (new partition, or a store
            // from before the log): there is nothing to recalculate from, and the streaming
            // state of the attributes already defined is all there is.
            let mut b = store.partition_batch();
            for def in self.catalog.calculated_defs() {
                let revision = def.spec().revision;
                self.calc_evaluated.insert(def.key.clone(), revision);
                b.set_calculated_evaluated(p, &def.key, Some(revision));
            }
            store.commit_partition(b, p)?;
        }
        if !store.facts_indexed(p)? {
            let n = store.index_facts(p)?;
            tracing::info!(
                partition = p,
                profiles = n,
                "facts records written for a store from before them"
            );
        }
        Ok(())
    }

    /// After a failed unit of work, memory may be ahead of the store: forget it and start
    /// again from what the store holds, so nothing half-applied is ever written later.
    fn recover(&mut self) {
        if std::mem::take(&mut self.replay_check_only) {
            // A verify keeps no position: it ends here, as far as it got.
            let now = self.engine.clock.now();
            if let Some(progress) = self.engine.replays.lock().get_mut(&self.partition) {
                progress.finished_at_ms.get_or_insert(now);
            }
        }
        self.cache.clear();
        self.replay_driving = false;
        self.backfilling = false;
        self.backfill_cursor = None;
        self.engine.backfills.lock().remove(&self.partition);
        self.catalog_dirty = true;
        self.generation += 1;
        if let Err(e) = self.load_positions() {
            tracing::error!(partition = self.partition, error = %e, "cannot reload partition state");
        }
    }

    fn ctx(&self) -> EvalContext {
        EvalContext {
            now: self.engine.clock.now(),
            retention_ms: self.engine.settings.retention_ms,
        }
    }

    fn account(&mut self, deltas: &[Delta], pending: &mut Pending) {
        for d in deltas {
            let size = self.sizes.entry(d.audience_id).or_default();
            match d.kind {
                DeltaKind::Added => *size += 1,
                DeltaKind::Dropped => *size = size.saturating_sub(1),
            }
            pending.sizes_changed.insert(d.audience_id);
        }
        pending.deltas.extend_from_slice(deltas);
    }

    /// Evaluates `audiences` for one profile, recording deltas and marking it dirty.
    fn evaluate_profile(
        &mut self,
        mpid: Mpid,
        audiences: Vec<AudienceId>,
        event_time: TimestampMs,
        ctx: &EvalContext,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        self.evaluate_profile_if_changed(mpid, audiences, event_time, ctx, pending, true)?;
        Ok(())
    }

    /// [`Self::evaluate_profile`] for a profile that may be as stored (`changed` false): it is
    /// marked dirty only if its evaluation emitted a delta or moved a timer. Whether it is.
    fn evaluate_profile_if_changed(
        &mut self,
        mpid: Mpid,
        audiences: Vec<AudienceId>,
        event_time: TimestampMs,
        ctx: &EvalContext,
        pending: &mut Pending,
        changed: bool,
    ) -> Result<bool, StoreError> {
        let catalog = self.catalog.clone();
        let cached = self.activate(mpid)?;
        let audiences = match std::mem::take(&mut cached.rebuilt) {
            true => audiences_to_evaluate(&catalog, &cached.state),
            false => audiences,
        };
        let due_before = (!changed).then(|| cached.state.due.clone());
        let deltas = cached.state.evaluate(audiences, &catalog, ctx, event_time);
        let changed = changed
            || !deltas.is_empty()
            || due_before.is_some_and(|before| before != cached.state.due);
        if changed {
            pending.dirty.insert(mpid);
        }
        self.account(&deltas, pending);
        Ok(changed)
    }

    /// A message's payload decoded, with its input and (by GeoIP) its location; or the dead
    /// letter that says why it cannot be.
    fn decode(&self, message: &RawMessage, max_bytes: usize) -> Result<Inbound, Box<DeadLetter>> {
        let payload = message.payload.as_deref().unwrap_or(&[]);
        let settings = &self.engine.settings;
        let content_type = message.content_type.as_deref();
        let (mut inbound, source) =
            decode_sourced(payload, content_type, max_bytes, &settings.source_field)
                .map_err(|e| Box::new(self.dead_letter(message, e.reason_code(), e.to_string())))?;
        if let Some(key_mpid) = key_mpid(message.key.as_deref()) {
            if key_mpid != inbound.mpid() {
                // The profile lives on the partition of its key: applying a message of
                // another MPID here would give that user a second, partial profile.
                let reason = format!(
                    "the message key names MPID {key_mpid} but the message is of MPID {}: \
                     a profile's messages are keyed by its MPID",
                    inbound.mpid()
                );
                return Err(Box::new(self.dead_letter(message, "key_mismatch", reason)));
            }
        }
        inbound.set_input(settings.inputs.resolve(&message.topic, source.as_deref()));
        if let (Inbound::Batch(batch), Some(geoip)) = (&mut inbound, &settings.geoip) {
            locate(batch, geoip);
        }
        Ok(inbound)
    }

    /// The dead letter of a message that could not be applied, counted by `reason_code`.
    fn dead_letter(&self, message: &RawMessage, reason_code: &str, reason: String) -> DeadLetter {
        tracing::warn!(
            topic = %message.topic, partition = message.partition,
            offset = message.offset, %reason, "dead-lettering message"
        );
        metrics::counter!("audience_messages_dead_lettered_total", "reason" => reason_code.to_string())
            .increment(1);
        DeadLetter::new(
            message.topic.clone(),
            message.partition,
            message.offset,
            reason_code.to_string(),
            reason,
            message.key.clone(),
            message.payload.as_deref().unwrap_or(&[]),
            self.engine.clock.now(),
            self.engine.settings.dead_letter_limits,
        )
    }

    fn process(&mut self, messages: &[RawMessage]) -> Result<BatchOutcome, StoreError> {
        self.adopt_catalog();
        let ctx = self.ctx();
        let mut outcome = BatchOutcome::default();
        let mut pending = Pending::default();
        let max_bytes = self.engine.settings.max_message_bytes;
        let mut processed_by_topic: Vec<(String, u64)> = Vec::new();
        // Decoded first, so that the profiles the batch needs are read from the store together;
        // each message keeps its place, and its dead letter its place among the letters.
        let mut decoded = Vec::with_capacity(messages.len());
        for message in messages {
            let known = self.next_offsets.get(&message.topic).copied();
            let next = known.unwrap_or(0);
            if message.offset < next {
                outcome.skipped += 1;
                continue;
            }
            if known.is_some() && message.offset > next {
                // Offsets skip over records only with transactional producers (their markers)
                // or compaction; otherwise the consumer did not deliver the records between,
                // which would leave them unapplied. Shown so that it is seen.
                tracing::warn!(
                    topic = %message.topic, partition = message.partition, expected = next,
                    offset = message.offset,
                    "input offsets jump: the records between were not delivered to this partition"
                );
                metrics::counter!("audience_input_offset_jumps_total", "topic" => message.topic.clone())
                    .increment(1);
            }
            match self.next_offsets.get_mut(&message.topic) {
                Some(next) => *next = message.offset + 1,
                None => {
                    self.next_offsets
                        .insert(message.topic.clone(), message.offset + 1);
                }
            }
            let inbound = self.decode(message, max_bytes);
            decoded.push((message, inbound));
        }
        let decodable = decoded
            .iter()
            .filter_map(|(_, inbound)| inbound.as_ref().ok());
        self.prefetch(decodable.map(Inbound::mpid))?;
        for (message, inbound) in decoded {
            let inbound = match inbound {
                Ok(inbound) => inbound,
                Err(letter) => {
                    pending.dead_letters.push(*letter);
                    continue;
                }
            };
            let mpid = inbound.mpid();
            let catalog = self.catalog.clone();
            let retention = self.engine.settings.retention_ms;
            if let Err(why) = self.activate_or_repair(mpid, &mut pending)? {
                let letter = self.dead_letter(message, "state_unreadable", why);
                pending.dead_letters.push(letter);
                continue;
            }
            let Cached { state, log, .. } = self.cache.get_mut(&mpid).expect("activated");
            let dict = &mut self.dict;
            let changes = state.apply_logged(&inbound, ctx.now, retention, &catalog, &mut |m| {
                log.append_message(dict, m)
            });
            let mut affected: Vec<AudienceId> = catalog.affected_by(&changes).into_iter().collect();
            if let Some((backfilling, cursor)) = &self.backfill_cursor {
                // The scan has yet to reach this profile: it evaluates these over the log.
                if cursor.is_none_or(|c| mpid > c) {
                    affected.retain(|id| !backfilling.contains(id));
                }
            }
            let first_delta = pending.deltas.len();
            self.evaluate_profile(mpid, affected, changes.event_time_ms, &ctx, &mut pending)?;
            if pending.deltas.len() > first_delta {
                let caused = first_delta..pending.deltas.len();
                pending.caused.push((caused, message.timestamp_ms));
            }
            outcome.applied += 1;
            match processed_by_topic.last_mut() {
                Some((topic, n)) if *topic == message.topic => *n += 1,
                _ => processed_by_topic.push((message.topic.clone(), 1)),
            }
        }
        // Counted once per run of a topic, not per message: a labelled counter is looked up
        // in the registry at every call.
        for (topic, n) in processed_by_topic {
            metrics::counter!("audience_messages_processed_total", "topic" => topic).increment(n);
        }
        outcome.deltas = pending.deltas.len();
        outcome.dead_lettered = pending.dead_letters.len();
        self.commit(pending, true)?;
        if self.cache.len() > self.engine.settings.max_cached_profiles {
            self.passivate();
        }
        outcome.next_offsets = self
            .next_offsets
            .iter()
            .map(|(t, o)| (t.clone(), *o))
            .collect();
        let counters = &self.engine.counters;
        counters
            .messages_processed
            .fetch_add(outcome.applied as u64, Ordering::Relaxed);
        counters
            .messages_dead_lettered
            .fetch_add(outcome.dead_lettered as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Writes everything a unit of work produced in one batch, then publishes its effects.
    fn commit(&mut self, mut pending: Pending, with_offsets: bool) -> Result<(), StoreError> {
        let store = self.engine.store.clone();
        let mut batch: WriteBatch<'_> = store.partition_batch();
        let p = self.partition;
        let log_cutoff = self.engine.clock.now() - self.engine.settings.retention_ms;
        let limits = self.engine.settings.log_limits;
        let mut dropped_by_bounds = 0;
        let mut profile_count = self.profile_count;
        for mpid in &pending.dirty {
            if let Some(cached) = self.cache.get_mut(mpid) {
                if cached.is_new {
                    batch.add_to_sample(p, *mpid);
                    // Its base: nothing yet, every message it applied is in its log.
                    batch.put_facts(p, *mpid, &ProfileFacts::default().encode());
                    profile_count += 1;
                }
                if let Some(base) = pending.reset_logs.remove(mpid) {
                    // Before the new log's writes: they replace what is deleted here.
                    batch.delete_log(p, *mpid);
                    batch.put_facts(p, *mpid, &base);
                }
                cached.log.enforce(log_cutoff, limits);
                if cached.log.has_writes() {
                    let writes = cached.log.take_writes();
                    dropped_by_bounds += writes.dropped_by_bounds;
                    if writes.dropped_any() {
                        let base = rebase(
                            &store,
                            p,
                            &cached.state,
                            &writes,
                            &self.dict,
                            &mut pending.quarantine,
                        )?;
                        batch.put_facts(p, *mpid, &base.encode());
                    }
                    batch.put_log(p, *mpid, &cached.log, &writes);
                }
                let due = cached.state.next_due();
                if due != cached.stored_due {
                    if let Some(old) = cached.stored_due {
                        batch.clear_timer(p, old, *mpid);
                    }
                    if let Some(new) = due {
                        batch.set_timer(p, new, *mpid);
                    }
                    cached.stored_due = due;
                }
                if pending.core_unchanged.contains(mpid) {
                    batch.put_profile_derived(p, &cached.state);
                } else {
                    batch.put_profile(p, &cached.state);
                }
            }
        }
        if let Some(cursor) = pending.replay_cursor {
            batch.set_replay_cursor(p, cursor);
        }
        if profile_count != self.profile_count {
            batch.set_profile_count(p, profile_count);
        }
        let new_names = self.dict.take_new();
        if !new_names.is_empty() {
            batch.put_dictionary(p, &new_names);
        }
        for delta in &pending.deltas {
            self.outbox_head += 1;
            batch.put_delta(p, self.outbox_head, delta);
            batch.record_membership(p, delta);
        }
        if !pending.deltas.is_empty() {
            batch.set_outbox_head(p, self.outbox_head);
        }
        for letter in &pending.dead_letters {
            self.deadletter_head += 1;
            batch.put_dead_letter(p, self.deadletter_head, letter);
        }
        let now = self.engine.clock.now();
        for row in &pending.quarantine {
            batch.quarantine(row, now)?;
        }
        for audience in &pending.sizes_changed {
            batch.set_audience_size(*audience, p, self.sizes.get(audience).copied().unwrap_or(0));
        }
        if with_offsets {
            for (topic, offset) in &self.next_offsets {
                batch.set_next_offset(topic, p, *offset);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        store.commit_partition(batch, p)?;
        self.profile_count = profile_count;
        for mpid in &pending.dirty {
            if let Some(cached) = self.cache.get_mut(mpid) {
                cached.is_new = false;
            }
        }
        if dropped_by_bounds > 0 {
            metrics::counter!("audience_eventlog_events_dropped_total", "reason" => "bounds")
                .increment(dropped_by_bounds);
        }
        self.engine.note_deltas(p, &pending.deltas);
        self.engine.note_latencies(&pending.deltas, &pending.caused);
        if !pending.dead_letters.is_empty() {
            self.engine.wake_outbox_readers();
        }
        Ok(())
    }

    fn fire_timers(&mut self) -> Result<(), StoreError> {
        self.adopt_catalog();
        let ctx = self.ctx();
        let due = self
            .engine
            .store
            .due_timers(self.partition, ctx.now, 1000)?;
        if due.is_empty() {
            return Ok(());
        }
        self.prefetch(due.iter().map(|(_, mpid)| *mpid))?;
        let mut pending = Pending::default();
        for (at, mpid) in due {
            let repaired = match self.activate_or_repair(mpid, &mut pending)? {
                Ok(repaired) => repaired,
                Err(why) => {
                    // Its timer goes with its unreadable state (set aside): timers go on.
                    tracing::warn!(partition = self.partition, mpid, %why, "timer dropped");
                    let mut b = self.engine.store.partition_batch();
                    b.clear_timer(self.partition, at, mpid);
                    self.engine.store.commit_partition(b, self.partition)?;
                    continue;
                }
            };
            let cached = self.cache.get_mut(&mpid).expect("activated");
            if repaired {
                // The timer was the unreadable row's: the rebuilt profile takes it over.
                cached.stored_due = Some(at);
            }
            if cached.stored_due != Some(at) {
                // A timer left by a crash between two versions of the profile: drop it.
                let mut b = self.engine.store.partition_batch();
                b.clear_timer(self.partition, at, mpid);
                self.engine.store.commit_partition(b, self.partition)?;
                continue;
            }
            let audiences = cached.state.due_audiences(ctx.now);
            self.evaluate_profile(mpid, audiences, at, &ctx, &mut pending)?;
        }
        self.commit(pending, false)
    }

    /// Passivates profiles idle for too long, or the least recently used over capacity.
    fn passivate(&mut self) {
        let idle = Duration::from_millis(self.engine.settings.idle_passivation_ms.max(0) as u64);
        let now = Instant::now();
        self.cache
            .retain(|_, c| now.saturating_duration_since(c.last_used) < idle);
        let max = self.engine.settings.max_cached_profiles;
        if self.cache.len() > max {
            let mut by_age: Vec<(Instant, Mpid)> =
                self.cache.iter().map(|(m, c)| (c.last_used, *m)).collect();
            by_age.sort();
            for (_, mpid) in by_age.into_iter().take(self.cache.len() - max / 2) {
                self.cache.remove(&mpid);
            }
        }
    }
}

impl Actor for PartitionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        let tick = Duration::from_millis(self.engine.settings.timer_tick_ms.max(10));
        ctx.run_interval(tick, |actor, ctx| {
            if let Err(e) = actor.fire_timers() {
                tracing::error!(partition = actor.partition, error = %e, "timer processing failed");
                actor.recover();
            }
            actor.continue_background(ctx);
        });
        ctx.run_interval(Duration::from_secs(5), |actor, _| actor.passivate());
        // Membership intervals that closed before retention: an hourly sweep of the history.
        ctx.run_interval(Duration::from_secs(3600), |actor, _| {
            let cutoff = actor.engine.clock.now() - actor.engine.settings.retention_ms;
            match actor.engine.store.prune_membership_history(actor.partition, cutoff) {
                Ok(n) if n > 0 => {
                    tracing::info!(partition = actor.partition, intervals = n, "membership history pruned")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition = actor.partition, error = %e, "membership history pruning failed")
                }
            }
        });
        self.continue_background(ctx);
        tracing::info!(partition = self.partition, "partition actor started");
    }
}

impl Handler<ProcessBatch> for PartitionActor {
    type Result = Result<BatchOutcome, BatchRefused>;

    fn handle(&mut self, msg: ProcessBatch, _: &mut Context<Self>) -> Self::Result {
        let span =
            tracing::debug_span!("batch", partition = self.partition, messages = msg.0.len());
        let _guard = span.enter();
        self.process(&msg.0).map_err(|e| {
            tracing::error!(partition = self.partition, error = %e, "batch failed");
            self.recover();
            BatchRefused {
                error: e.to_string(),
                messages: msg.0,
            }
        })
    }
}

impl Handler<Tick> for PartitionActor {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        if let Err(e) = self.fire_timers() {
            tracing::error!(partition = self.partition, error = %e, "timer processing failed");
            self.recover();
        }
        self.continue_background(ctx);
    }
}

impl Handler<Stop> for PartitionActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        tracing::info!(partition = self.partition, "partition actor stopping");
        ctx.stop();
    }
}

impl Handler<Snapshot> for PartitionActor {
    type Result = MessageResult<Snapshot>;
    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(PartitionSnapshot {
            partition: self.partition,
            next_offsets: self
                .next_offsets
                .iter()
                .map(|(t, o)| (t.clone(), *o))
                .collect(),
            outbox_head: self.outbox_head,
            profiles_active: self.cache.len() as u64,
        })
    }
}

/// The MPID a message's key names: a decimal integer, as producers key by MPID. A message
/// without a key, or with a key that is no integer, is taken by its payload alone.
fn key_mpid(key: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(key?).ok()?.trim().parse().ok()
}

/// Adds where GeoIP places the batch's client IP. A device position the batch carries is
/// more precise than GeoIP's, so its coordinates win.
fn locate(batch: &mut audience_state::model::Batch, geoip: &crate::geoip::GeoIp) {
    let Some(found) = batch.ip.as_deref().and_then(|ip| geoip.locate(ip)) else {
        return;
    };
    let mut location = found;
    if let Some(device) = &batch.location {
        location.merge_from(device);
    }
    batch.location = Some(location);
}

/// A profile's base once the messages `writes` drop from its log are folded into it: its
/// stored base, then the dropped chunks (read from the store, or from `writes` when sealed
/// by the same write) and the dropped part of its tail. A base or chunks that are missing or
/// cannot be read leave the base as the profile's current facts: facts are latest-wins, so folding the
/// messages still logged over them again gives the same facts.
fn rebase(
    store: &audience_state::store::Store,
    p: Partition,
    profile: &ProfileState,
    writes: &audience_state::eventlog::LogWrites,
    dict: &Dictionary,
    quarantine: &mut Vec<UnreadableRow>,
) -> Result<ProfileFacts, StoreError> {
    let mpid = profile.mpid;
    let base = match store.load_facts(p, mpid) {
        Ok(base) => base.unwrap_or_default(),
        Err(StoreError::Unreadable(row)) => {
            // Set aside; the base starts again from the current facts, as below.
            quarantine.push(*row);
            return Ok(ProfileFacts::of(profile));
        }
        Err(e) => return Err(e),
    };
    // Oldest first, each from this write (sealed and dropped at once) or from the store.
    let mut chunks = Vec::with_capacity(writes.delete_chunks.len());
    for seq in &writes.delete_chunks {
        let sealed_now = writes.put_chunks.iter().find(|(s, _)| s == seq);
        chunks.push(match sealed_now {
            Some((_, record)) => Some(record.clone()),
            None => store.load_log_chunk(p, mpid, *seq)?,
        });
    }
    let records: Option<Vec<&[u8]>> = chunks.iter().map(Option::as_deref).collect();
    let folded = match records {
        Some(records) => base_after(mpid, base, &records, &writes.dropped_tail, dict),
        None => Err("a chunk that leaves the log is missing".to_string()),
    };
    match folded {
        Ok(base) => Ok(base),
        Err(reason) => {
            tracing::warn!(partition = p, mpid, %reason,
                "event log leaving retention unreadable; the base takes the current facts");
            metrics::counter!("audience_eventlog_unreadable_total").increment(1);
            Ok(ProfileFacts::of(profile))
        }
    }
}
