//! The partition's background scans over its stored profiles, a page per message so ingest
//! interleaves with them: backfill of new and changed definitions (audiences and calculated
//! attributes) over each profile's log, and replay, which folds every profile from its logs
//! and writes the folds that differ from the stored states (rebuild), or only reports them
//! (verify). A rebuild page is one write with the replay's cursor, so a rebuild resumes where
//! it stopped; a verify writes nothing, and ends with a restart. A backfill records the
//! definition's revision when its scan ends, so an interrupted backfill starts again.

use super::*;
use crate::engine::{BackfillProgress, ReplayProgress, MAX_REPORTED_DIFFERENCES};
use actix::prelude::*;
use audience_state::backfill::{BackfillPlan, Decisions};
use audience_state::model::{AudienceId, Mpid};
use audience_state::profile::ChangeSet;
use audience_state::replay::{differences, log_units, rebuild_profile};
use audience_state::store::{ProfileLogs, ReplayCursor, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl PartitionActor {
    /// Swaps in the newest catalog (cheap: one atomic load when nothing changed).
    pub(super) fn adopt_catalog(&mut self) {
        let latest = self.engine.catalog.load_full();
        if latest.version != self.catalog.version {
            self.catalog = latest;
            self.catalog_dirty = true;
        }
    }

    /// The calculated attributes whose values must be calculated again over every stored
    /// log: defined or redefined since this partition last did. Records of deleted ones go.
    pub(super) fn stale_calculated(&mut self) -> Vec<String> {
        let catalog = self.catalog.clone();
        let mut stale: Vec<String> = catalog
            .calculated_defs()
            .filter(|def| self.calc_evaluated.get(&def.key) != Some(&def.spec().revision))
            .map(|def| def.key.clone())
            .collect();
        stale.sort();
        let deleted: Vec<String> = self
            .calc_evaluated
            .keys()
            .filter(|key| catalog.calculated_def(key).is_none())
            .cloned()
            .collect();
        if !deleted.is_empty() {
            let store = self.engine.store.clone();
            let mut b = store.partition_batch();
            for key in deleted {
                self.calc_evaluated.remove(&key);
                b.set_calculated_evaluated(self.partition, &key, None);
            }
            if let Err(e) = store.commit_partition(b, self.partition) {
                tracing::error!(partition = self.partition, error = %e, "could not forget calculated attributes");
            }
        }
        stale
    }

    /// The audiences and calculated attributes whose state must be rebuilt or evaluated
    /// again over every stored profile.
    pub(super) fn stale_definitions(&mut self) -> (Vec<AudienceId>, Vec<String>) {
        self.adopt_catalog();
        if !self.catalog_dirty {
            return (Vec::new(), Vec::new());
        }
        let calculated = self.stale_calculated();
        let audiences = self.stale_audiences();
        self.catalog_dirty = !audiences.is_empty() || !calculated.is_empty();
        (audiences, calculated)
    }

    /// Returns the audiences whose members must be evaluated
    /// again over every stored profile: active ones not evaluated at their current revision,
    /// and ones evaluated here before that are no longer active (drafts drop their members,
    /// deleted ones lose their records). Deleted audiences lose their size counters at once.
    pub(super) fn stale_audiences(&mut self) -> Vec<AudienceId> {
        let catalog = self.catalog.clone();
        let mut stale: Vec<AudienceId> = catalog
            .active_ids()
            .filter(|id| {
                let revision = catalog.active(*id).map(|a| a.record.revision);
                self.evaluated.get(id).copied() != revision
            })
            .collect();
        stale.extend(
            self.evaluated
                .keys()
                .copied()
                .filter(|id| catalog.active(*id).is_none()),
        );
        stale.sort();
        stale.dedup();
        // Audiences this partition has never seen are marked at once (revision 0: being
        // evaluated), so that a draft or delete before their backfill still cleans them up.
        let unseen: Vec<AudienceId> = catalog
            .active_ids()
            .filter(|id| !self.evaluated.contains_key(id))
            .collect();
        if !unseen.is_empty() {
            let store = self.engine.store.clone();
            let mut b = store.partition_batch();
            for id in unseen {
                self.evaluated.insert(id, 0);
                b.set_evaluated_revision(id, self.partition, Some(0));
            }
            if let Err(e) = store.commit_partition(b, self.partition) {
                tracing::error!(partition = self.partition, error = %e, "could not record new audiences");
            }
        }
        let deleted: Vec<AudienceId> = self
            .sizes
            .keys()
            .copied()
            .filter(|id| catalog.record(*id).is_none())
            .collect();
        if !deleted.is_empty() {
            let store = self.engine.store.clone();
            let mut b = store.partition_batch();
            for id in deleted {
                self.sizes.remove(&id);
                b.set_audience_size(id, self.partition, 0);
            }
            if let Err(e) = store.commit_partition(b, self.partition) {
                tracing::error!(partition = self.partition, error = %e, "could not reset sizes");
            }
        }
        stale
    }

    /// One page of a backfill: rebuilds the plan's state of each profile from its log, then
    /// evaluates the changed audiences; only the profiles this changed are written (and kept
    /// in memory). Returns the last profile visited (`None`: done).
    pub(super) fn backfill_step(
        &mut self,
        step: &BackfillStep,
    ) -> Result<Option<Mpid>, StoreError> {
        let ctx = self.ctx();
        let retention = self.engine.settings.retention_ms;
        let chunk = self.engine.settings.backfill_chunk;
        let page = self
            .engine
            .store
            .scan_profiles_with_logs(self.partition, step.after, chunk)?;
        let last = page.last;
        let scanned = (page.items.len() + page.unreadable.len()) as u64;
        // An unreadable profile keeps its row, set aside: the scan goes on without it
        // (streaming repairs it from its log when a message comes, `rebuild` at once).
        let mut pending = Pending {
            quarantine: page.unreadable,
            ..Pending::default()
        };
        let mut decisions = Decisions::default();
        let derives_only = step.plan.derives_only();
        // Profiles this page wrote that were not in memory before it: as stored once the
        // page commits, they leave the cache then. A backfill visits every profile, and
        // keeping them would grow the cache by the partition's size until passivation (its
        // rehashing and page faults were a tenth of a backfill's CPU).
        let mut brought_in = Vec::new();
        for item in page.items {
            let mpid = item.profile.mpid;
            // A cached profile is the stored one (every unit of work commits): keep it, its
            // log head is the one these chunks belong to.
            let was_cached = self.cache.contains_key(&mpid);
            let cached = self.cache.entry(mpid).or_insert_with(|| Cached {
                stored_due: item.profile.next_due(),
                state: item.profile,
                log: item.log,
                rebuilt: false,
                is_new: false,
                last_used: Instant::now(),
            });
            let chunks: Vec<&[u8]> = item.chunks.iter().map(Vec::as_slice).collect();
            let before = step.plan.rebuilt_state(&cached.state);
            if let Err(reason) = step.plan.rebuild(
                &mut cached.state,
                &cached.log,
                &chunks,
                &self.dict,
                &mut decisions,
                ctx.now,
                retention,
            ) {
                // The profile keeps its streaming state: an unreadable log costs the history
                // it held, never the partition.
                tracing::warn!(partition = self.partition, mpid, %reason, "event log unreadable; backfill skips it");
                metrics::counter!("audience_eventlog_unreadable_total").increment(1);
            }
            let changed = step.plan.rebuilt_state(&cached.state) != before;
            let audiences = step.evaluate.to_vec();
            let written = self.evaluate_profile_if_changed(
                mpid,
                audiences,
                ctx.now,
                &ctx,
                &mut pending,
                changed,
            )?;
            if written && derives_only {
                pending.core_unchanged.insert(mpid);
            }
            if !was_cached {
                if written {
                    brought_in.push(mpid);
                } else {
                    // As stored: neither written nor kept in memory.
                    self.cache.remove(&mpid);
                }
            }
            if let Some((_, cursor)) = &mut self.backfill_cursor {
                *cursor = Some(mpid);
            }
        }
        if let (Some((_, cursor)), Some(last)) = (&mut self.backfill_cursor, last) {
            *cursor = Some(last);
        }
        self.commit(pending, false)?;
        for mpid in brought_in {
            self.cache.remove(&mpid);
        }
        metrics::counter!("audience_backfill_profiles_scanned_total").increment(scanned);
        if let Some(progress) = self.engine.backfills.lock().get_mut(&self.partition) {
            progress.scanned += scanned;
            let partition = self.partition.to_string();
            metrics::gauge!("audience_backfill_profiles_scanned", "partition" => partition.clone())
                .set(progress.scanned as f64);
            metrics::gauge!("audience_backfill_profiles", "partition" => partition)
                .set(progress.total.max(progress.scanned) as f64);
        }
        if last.is_none() || last == Some(Mpid::MAX) {
            Ok(None)
        } else {
            Ok(last)
        }
    }

    /// Drives the partition's background work: a running replay first, then a replay asked
    /// for while a backfill ran, then the backfill of changed definitions.
    pub(super) fn continue_background(&mut self, ctx: &mut Context<Self>) {
        if let Some(cursor) = self.replay {
            if !self.replay_driving {
                self.replay_driving = true;
                // A replay resumed after a restart: its progress counts from here.
                let progress = self.new_replay_progress(cursor.wiped);
                self.engine
                    .replays
                    .lock()
                    .entry(self.partition)
                    .or_insert(progress);
                ctx.notify(ReplayStep {
                    generation: self.generation,
                });
            }
            return;
        }
        if !self.backfilling {
            if let Some(mode) = self.replay_requested.take() {
                if let Err(e) = self.start_replay(mode, ctx) {
                    tracing::error!(partition = self.partition, error = %e, "replay could not start");
                    self.recover();
                }
                return;
            }
        }
        self.start_backfill_if_needed(ctx);
    }

    fn new_replay_progress(&self, wiped: bool) -> ReplayProgress {
        ReplayProgress {
            wiped,
            check_only: self.replay_check_only,
            scanned: 0,
            total: self.profile_count,
            deltas: 0,
            changed: 0,
            differences: Vec::new(),
            unreadable: 0,
            quarantined_rows: 0,
            quarantined: Vec::new(),
            started_at_ms: self.engine.clock.now(),
            finished_at_ms: None,
        }
    }

    /// Starts rebuilding (or checking) every profile from its logs (see [`StartReplay`]);
    /// returns the profiles to scan.
    pub(super) fn start_replay(
        &mut self,
        mode: ReplayMode,
        ctx: &mut Context<Self>,
    ) -> Result<u64, StoreError> {
        if self.replay.is_some() {
            return Ok(self.profile_count);
        }
        if self.backfilling {
            // Asked twice while a calculation runs: the one that does the most.
            let rank = |m: ReplayMode| match m {
                ReplayMode::Verify => 0,
                ReplayMode::Rebuild => 1,
                ReplayMode::RebuildWiped => 2,
            };
            let asked = match self.replay_requested {
                Some(before) if rank(before) > rank(mode) => before,
                _ => mode,
            };
            self.replay_requested = Some(asked);
            return Ok(self.profile_count);
        }
        let store = self.engine.store.clone();
        let wipe = mode == ReplayMode::RebuildWiped;
        let check_only = mode == ReplayMode::Verify;
        let cursor = ReplayCursor {
            wiped: wipe,
            after: None,
        };
        if !check_only {
            let mut b = store.partition_batch();
            if wipe {
                b.wipe_profile_states(self.partition);
            }
            b.set_replay_cursor(self.partition, Some(cursor));
            store.commit_partition(b, self.partition)?;
        }
        if wipe {
            // Nothing of the old states is used again: every profile comes from its logs.
            self.cache.clear();
        }
        self.replay = Some(cursor);
        self.replay_check_only = check_only;
        let progress = self.new_replay_progress(wipe);
        self.engine.replays.lock().insert(self.partition, progress);
        tracing::info!(
            partition = self.partition,
            ?mode,
            profiles = self.profile_count,
            "replaying profiles from their logs"
        );
        self.continue_background(ctx);
        Ok(self.profile_count)
    }

    /// A profile rebuilt from its logs, to be evaluated over every audience; and whether its
    /// event log could not be read (it is then rebuilt from its base and memberships).
    pub(super) fn rebuild_from_logs(&self, logs: ProfileLogs) -> (Cached, bool) {
        let ctx = self.ctx();
        let chunks: Vec<&[u8]> = logs.chunks.iter().map(Vec::as_slice).collect();
        let (units, unreadable) = match log_units(&logs.log, &chunks, &self.dict) {
            Ok(units) => (units, false),
            Err(reason) => {
                tracing::warn!(partition = self.partition, mpid = logs.mpid, %reason,
                    "event log unreadable; the profile is rebuilt from its base and memberships");
                metrics::counter!("audience_eventlog_unreadable_total").increment(1);
                (Vec::new(), true)
            }
        };
        let state = rebuild_profile(
            logs.mpid,
            logs.facts,
            units,
            &logs.memberships,
            &self.catalog,
            ctx.now,
            ctx.retention_ms,
        );
        let cached = Cached {
            state,
            log: logs.log,
            rebuilt: true,
            is_new: false,
            stored_due: None,
            last_used: Instant::now(),
        };
        (cached, unreadable)
    }

    /// One page of a replay: rebuilds the next profiles from their logs and evaluates them
    /// over every audience, in one write with the replay's new position. Returns whether the
    /// replay is done.
    pub(super) fn replay_step(&mut self) -> Result<bool, StoreError> {
        let Some(cursor) = self.replay else {
            return Ok(true);
        };
        self.adopt_catalog();
        let ctx = self.ctx();
        let limit = self.engine.settings.backfill_chunk.max(1);
        let page = self
            .engine
            .store
            .scan_profile_logs(self.partition, cursor.after, limit)?;
        let scanned = (page.items.len() + page.unreadable.len()) as u64;
        let check_only = self.replay_check_only;
        let mut pending = Pending::default();
        let mut unreadable = page.unreadable.len() as u64;
        let last = page.last.or(cursor.after);
        let mut found: Vec<(Mpid, Vec<String>)> = page
            .unreadable
            .iter()
            .filter_map(|row| {
                let what = format!(
                    "{} {}: unreadable ({})",
                    row.cf, row.display_key, row.reason
                );
                Some((row.mpid()?, vec![what]))
            })
            .collect();
        // A verify counts what it could not read among what differs.
        let mut changed = if check_only { found.len() as u64 } else { 0 };
        if check_only {
            // A verify writes nothing else, but what it could not read is set aside.
            self.engine.store.set_aside(&page.unreadable)?;
        } else {
            pending.quarantine = page.unreadable;
        }
        let mut would_emit = 0;
        for logs in page.items {
            let mpid = logs.mpid;
            // The timer row a cached profile stored is known; one of a profile not in memory
            // is dropped when it fires for a state that no longer wants it.
            let stored_due = self.cache.get(&mpid).and_then(|c| c.stored_due);
            let (mut cached, bad) = self.rebuild_from_logs(logs);
            unreadable += u64::from(bad);
            if !cursor.wiped {
                let (differs, emitted) = self.compare_with_stored(&cached.state, &ctx)?;
                if differs.is_empty() {
                    // The stored state is what its logs imply: nothing to write or send.
                    continue;
                }
                changed += 1;
                found.push((mpid, differs));
                if check_only {
                    would_emit += emitted;
                    continue;
                }
            }
            if cursor.wiped {
                changed += 1;
            }
            cached.stored_due = stored_due;
            self.cache.insert(mpid, cached);
            self.evaluate_profile(mpid, Vec::new(), ctx.now, &ctx, &mut pending)?;
        }
        let done = (scanned as usize) < limit || last == Some(Mpid::MAX);
        let next = ReplayCursor {
            after: last,
            ..cursor
        };
        let deltas = pending.deltas.len() as u64 + would_emit;
        if !check_only {
            pending.replay_cursor = Some((!done).then_some(next));
            self.commit(pending, false)?;
        }
        self.replay = (!done).then_some(next);
        if done {
            self.replay_check_only = false;
        }
        let quarantine = match done {
            true => self
                .engine
                .store
                .quarantined(self.partition, MAX_REPORTED_DIFFERENCES)?,
            false => Default::default(),
        };
        if let Some(progress) = self.engine.replays.lock().get_mut(&self.partition) {
            progress.scanned += scanned;
            progress.deltas += deltas;
            progress.changed += changed;
            let room = MAX_REPORTED_DIFFERENCES.saturating_sub(progress.differences.len());
            progress.differences.extend(found.into_iter().take(room));
            progress.unreadable += unreadable;
            progress.total = progress.total.max(progress.scanned);
            if done {
                progress.finished_at_ms = Some(self.engine.clock.now());
                (progress.quarantined, progress.quarantined_rows) = quarantine;
            }
        }
        if self.cache.len() > self.engine.settings.max_cached_profiles {
            self.passivate();
        }
        Ok(done)
    }

    /// What differs between a profile's stored state and its fold (`rebuilt`), both pruned
    /// and evaluated over every audience now; and the deltas the fold's evaluation emits
    /// (what a rebuild would send). A stored row that is missing or unreadable differs.
    fn compare_with_stored(
        &self,
        rebuilt: &ProfileState,
        ctx: &EvalContext,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let catalog = &self.catalog;
        let mut folded = rebuilt.clone();
        let all = audiences_to_evaluate(catalog, &folded);
        let emitted = folded.evaluate(all, catalog, ctx, ctx.now).len() as u64;
        let mut stored = match self.engine.store.load_profile(self.partition, rebuilt.mpid) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok((vec!["profile: missing".to_string()], emitted)),
            Err(StoreError::Unreadable(row)) => {
                // Set aside (a rebuild then rewrites it from the fold).
                self.engine.store.set_aside(std::slice::from_ref(&row))?;
                return Ok((
                    vec![format!("profile: unreadable ({})", row.reason)],
                    emitted,
                ));
            }
            Err(e) => return Err(e),
        };
        stored.prune(ctx.now, ctx.retention_ms, catalog);
        let all = audiences_to_evaluate(catalog, &stored);
        stored.evaluate(all, catalog, ctx, ctx.now);
        Ok((differences(&stored, &folded), emitted))
    }

    pub(super) fn start_backfill_if_needed(&mut self, ctx: &mut Context<Self>) {
        if self.backfilling || self.replay.is_some() {
            return;
        }
        let (stale, stale_calculated) = self.stale_definitions();
        if stale.is_empty() && stale_calculated.is_empty() {
            return;
        }
        self.backfilling = true;
        self.generation += 1;
        let catalog = self.catalog.clone();
        let audiences: Vec<(AudienceId, Option<u64>)> = stale
            .iter()
            .map(|id| (*id, catalog.active(*id).map(|a| a.record.revision)))
            .collect();
        let calculated: Vec<(String, Option<u64>)> = stale_calculated
            .iter()
            .map(|key| {
                (
                    key.clone(),
                    catalog.calculated_spec(key).map(|s| s.revision),
                )
            })
            .collect();
        let evaluated = &self.evaluated;
        let plan = BackfillPlan::new(&catalog, &stale, &stale_calculated, |id| {
            evaluated.get(&id).copied() == catalog.active(id).map(|a| a.record.revision)
        });
        // The changed audiences, and those reading a recalculated attribute.
        let recalculated = ChangeSet {
            calculated: stale_calculated.iter().cloned().collect(),
            ..Default::default()
        };
        let mut evaluate: BTreeSet<AudienceId> = catalog.affected_by(&recalculated);
        evaluate.extend(stale.iter().copied());
        let evaluate = Arc::new(evaluate.into_iter().collect::<Vec<_>>());
        self.backfill_cursor = Some((evaluate.clone(), None));
        let total = self.profile_count;
        self.engine
            .profile_counts
            .lock()
            .insert(self.partition, total);
        self.engine.backfills.lock().insert(
            self.partition,
            BackfillProgress {
                audiences: evaluate.clone(),
                scanned: 0,
                total,
                started: Instant::now(),
                started_at_ms: self.engine.clock.now(),
            },
        );
        tracing::info!(
            partition = self.partition, audiences = ?audiences, calculated = ?calculated,
            rebuilt_series = plan.matchers.len(), "evaluating stored profiles for changed definitions"
        );
        ctx.notify(BackfillStep {
            audiences,
            calculated,
            plan: Arc::new(plan),
            evaluate,
            after: None,
            generation: self.generation,
        });
    }
}

impl Handler<CatalogChanged> for PartitionActor {
    type Result = ();
    fn handle(&mut self, _: CatalogChanged, ctx: &mut Context<Self>) {
        self.continue_background(ctx);
    }
}

impl Handler<BackfillStep> for PartitionActor {
    type Result = ();
    fn handle(&mut self, step: BackfillStep, ctx: &mut Context<Self>) {
        if step.generation != self.generation {
            return;
        }
        match self.backfill_step(&step) {
            Ok(Some(last)) => {
                let next = BackfillStep {
                    after: Some(last),
                    ..step
                };
                match self.engine.settings.backfill_pause_ms {
                    0 => ctx.notify(next),
                    ms => {
                        ctx.notify_later(next, Duration::from_millis(ms));
                    }
                }
            }
            Ok(None) => {
                // Record the revisions evaluated, not the current ones: an audience changed
                // during the backfill is found stale again and evaluated afresh.
                let store = self.engine.store.clone();
                let mut b = store.partition_batch();
                for (id, revision) in &step.audiences {
                    match revision {
                        Some(r) => {
                            self.evaluated.insert(*id, *r);
                            b.set_evaluated_revision(*id, self.partition, Some(*r));
                        }
                        None => {
                            self.evaluated.remove(id);
                            b.set_evaluated_revision(*id, self.partition, None);
                        }
                    }
                }
                for (key, revision) in &step.calculated {
                    match revision {
                        Some(r) => self.calc_evaluated.insert(key.clone(), *r),
                        None => self.calc_evaluated.remove(key),
                    };
                    b.set_calculated_evaluated(self.partition, key, *revision);
                }
                if let Err(e) = store.commit_partition(b, self.partition) {
                    tracing::error!(partition = self.partition, error = %e, "could not record backfill");
                    self.recover();
                    return;
                }
                self.backfilling = false;
                self.backfill_cursor = None;
                self.engine.backfills.lock().remove(&self.partition);
                let partition = self.partition.to_string();
                metrics::gauge!("audience_backfill_profiles_scanned", "partition" => partition.clone())
                    .set(0.0);
                metrics::gauge!("audience_backfill_profiles", "partition" => partition).set(0.0);
                self.catalog_dirty = true;
                tracing::info!(partition = self.partition, audiences = ?step.audiences, "stored profiles evaluated");
                self.continue_background(ctx);
            }
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "backfill failed; starting over");
                self.recover();
            }
        }
    }
}

impl Handler<StartReplay> for PartitionActor {
    type Result = Result<u64, String>;
    fn handle(&mut self, msg: StartReplay, ctx: &mut Context<Self>) -> Self::Result {
        if self.replay.is_some() && self.replay_check_only != (msg.mode == ReplayMode::Verify) {
            let running = if self.replay_check_only {
                "a verify"
            } else {
                "a rebuild"
            };
            return Err(format!(
                "{running} is running on partition {}: wait for it to finish",
                self.partition
            ));
        }
        self.start_replay(msg.mode, ctx).map_err(|e| {
            tracing::error!(partition = self.partition, error = %e, "replay could not start");
            self.recover();
            e.to_string()
        })
    }
}

impl Handler<ReplayStep> for PartitionActor {
    type Result = ();
    fn handle(&mut self, step: ReplayStep, ctx: &mut Context<Self>) {
        if step.generation != self.generation {
            return;
        }
        match self.replay_step() {
            Ok(false) => {
                let next = ReplayStep {
                    generation: self.generation,
                };
                match self.engine.settings.backfill_pause_ms {
                    0 => ctx.notify(next),
                    ms => {
                        ctx.notify_later(next, Duration::from_millis(ms));
                    }
                }
            }
            Ok(true) => {
                self.replay_driving = false;
                let progress = self.engine.replays.lock().get(&self.partition).cloned();
                tracing::info!(
                    partition = self.partition,
                    ?progress,
                    "profiles replayed from their logs"
                );
                self.continue_background(ctx);
            }
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "replay step failed; resuming from its stored position");
                self.recover();
            }
        }
    }
}
