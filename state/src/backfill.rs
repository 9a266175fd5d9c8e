//! Backfill: computing new or changed definitions over each profile's event log, so that an
//! audience or a calculated attribute defined today has the members and values it would have
//! had if it had existed before the first retained event.
//!
//! Streaming keeps incremental state only for what the catalog defines (the series of an
//! event criterion with conditions, the fold of a calculated attribute). A [`BackfillPlan`]
//! names the pieces of such state that a catalog change made incomplete, and rebuilds them
//! from a profile's log; the partition then evaluates the changed audiences as usual.
//!
//! Invariants:
//! - a plan rebuilds only state no up-to-date definition maintains already, so a rebuild never
//!   replaces complete streaming state with a log that was cut by its bounds;
//! - the events a plan reads are filtered by selector before they are decoded: a profile's
//!   unrelated events cost a varint skip each.

use crate::aggregate::CalcState;
use crate::calculated::CalculatedDef;
use crate::catalog::Catalog;
use crate::criteria::Matcher;
use crate::eventlog::{chunk_body, for_each_stamped_event, Dictionary, EventLog, NameRef};
use crate::history::EventSeries;
use crate::model::{AudienceId, Event, InputTag, TimestampMs};
use crate::profile::ProfileState;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// A logged event as a backfill reads it: when it counts from, the event, and the input its
/// message was stamped with (shared by the events of one message).
pub type StampedEvent = (TimestampMs, Event, Option<Arc<InputTag>>);

/// The pieces of a profile's state a plan rebuilds (see [`BackfillPlan::rebuilt_state`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RebuiltState {
    series: Vec<Option<EventSeries>>,
    calculated: Vec<Option<CalcState>>,
}

/// Whether a plan reads the events of each (kind, name code) of one partition's dictionary,
/// decided at the first such event and kept: names are few and densely coded, events many.
/// Valid for one dictionary only (its codes are never reused, so it stays valid as the
/// dictionary grows): a scan keeps one per partition.
#[derive(Debug, Default, Clone)]
pub struct Decisions(Vec<Option<bool>>);

/// What a catalog change asks to rebuild from the logs.
#[derive(Debug, Default, Clone)]
pub struct BackfillPlan {
    pub matchers: Vec<Arc<Matcher>>,
    pub calculated: Vec<Arc<CalculatedDef>>,
    /// (event type, selector name) of every event some matcher or calculation reads.
    wanted: HashSet<(String, String)>,
}

impl BackfillPlan {
    /// The plan for evaluating `stale` audiences and recalculating `stale_calculated`
    /// attributes (lowercased names): the matchers of the stale audiences that no up-to-date
    /// audience (`up_to_date`) maintains, and the calculated attributes.
    pub fn new(
        catalog: &Catalog,
        stale: &[AudienceId],
        stale_calculated: &[String],
        up_to_date: impl Fn(AudienceId) -> bool,
    ) -> BackfillPlan {
        let stale_set: BTreeSet<AudienceId> = stale.iter().copied().collect();
        let maintained: HashSet<&str> = catalog
            .active_ids()
            .filter(|id| !stale_set.contains(id) && up_to_date(*id))
            .filter_map(|id| catalog.active(id))
            .flat_map(|a| a.compiled.matchers.iter().map(|m| m.history_key.as_str()))
            .collect();
        let mut plan = BackfillPlan::default();
        let mut seen = HashSet::new();
        for id in stale {
            let Some(audience) = catalog.active(*id) else {
                continue;
            };
            for m in &audience.compiled.matchers {
                if maintained.contains(m.history_key.as_str()) || !seen.insert(&m.history_key) {
                    continue;
                }
                plan.wanted.insert((m.event_type.clone(), m.name.clone()));
                plan.matchers.push(Arc::new(m.clone()));
            }
        }
        for key in stale_calculated {
            if let Some(def) = catalog.calculated_def(key) {
                plan.wanted
                    .insert((def.matcher.event_type.clone(), def.matcher.name.clone()));
                plan.calculated.push(def.clone());
            }
        }
        plan
    }

    /// The plan for evaluating a definition that is not in the catalog (a draft being
    /// estimated or previewed): every series it reads, from the log.
    pub fn for_definition(compiled: &crate::criteria::CompiledAudience) -> BackfillPlan {
        let mut plan = BackfillPlan::default();
        let mut seen = HashSet::new();
        for m in &compiled.matchers {
            if seen.insert(&m.history_key) {
                plan.wanted.insert((m.event_type.clone(), m.name.clone()));
                plan.matchers.push(Arc::new(m.clone()));
            }
        }
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty() && self.calculated.is_empty()
    }

    /// Whether everything the plan rebuilds is in a profile's derived row (the series of
    /// event criteria with conditions, calculated attributes), so that a profile it changed
    /// needs only that row written: what evaluation changes (memberships, timers) is there
    /// too.
    pub fn derives_only(&self) -> bool {
        self.matchers
            .iter()
            .all(|m| crate::profile::is_derived_series(&m.history_key))
    }

    /// What the plan rebuilds of a profile, as the profile holds it now: the same before and
    /// after a rebuild, the rebuild changed nothing (and the profile need not be written).
    pub fn rebuilt_state(&self, profile: &ProfileState) -> RebuiltState {
        RebuiltState {
            series: self
                .matchers
                .iter()
                .map(|m| profile.history.get(&m.history_key).cloned())
                .collect(),
            calculated: self
                .calculated
                .iter()
                .map(|d| profile.calculated.get(&d.key).cloned())
                .collect(),
        }
    }

    /// Rebuilds the plan's state of one profile from its log: the head and the bodies of its
    /// sealed chunks as stored (oldest first); `decisions` are those of `dict` (see
    /// [`Decisions`]). A log that cannot be read is an error naming why; the profile is left
    /// as it was.
    #[allow(clippy::too_many_arguments)]
    pub fn rebuild(
        &self,
        profile: &mut ProfileState,
        log: &EventLog,
        chunks: &[&[u8]],
        dict: &Dictionary,
        decisions: &mut Decisions,
        now: TimestampMs,
        retention_ms: i64,
    ) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let events = self.selected_events(log, chunks, dict, decisions)?;
        let matchers: Vec<&Matcher> = self.matchers.iter().map(Arc::as_ref).collect();
        let calculated: Vec<&CalculatedDef> = self.calculated.iter().map(Arc::as_ref).collect();
        profile.rebuild_from_log(
            events.iter().map(|(t, e, input)| (*t, e, input.as_deref())),
            log.oldest_ms(),
            &matchers,
            &calculated,
            now,
            retention_ms,
        );
        Ok(())
    }

    /// The logged events the plan reads, decoded, in arrival order, each with the input its
    /// message was stamped with (`None` for all when no criterion of the plan is scoped).
    pub fn selected_events(
        &self,
        log: &EventLog,
        chunks: &[&[u8]],
        dict: &Dictionary,
        decisions: &mut Decisions,
    ) -> Result<Vec<StampedEvent>, String> {
        // Decisions per (kind, name code), in a table indexed by both. Inline (uncoded) names
        // are decided each time.
        let decided = &mut decisions.0;
        // Stamps matter only to scoped criteria.
        let with_inputs = (self.matchers.iter().map(|m| m.as_ref()))
            .chain(self.calculated.iter().map(|c| &c.matcher))
            .any(|m| m.source.is_some());
        let mut out = Vec::new();
        let bodies = chunks
            .iter()
            .map(|c| chunk_body(c))
            .chain(std::iter::once(Ok(log.tail.as_slice())));
        for body in bodies {
            for_each_stamped_event(body?, dict, with_inputs, |logged, input| {
                let slot = match logged.selector_key() {
                    (tag, _) if tag >= 16 => None,
                    (tag, None) => Some(tag as usize),
                    (tag, Some(NameRef::Code(c))) => Some((c as usize + 1) * 16 + tag as usize),
                    (_, Some(NameRef::Inline(_))) => None,
                };
                let known = slot.and_then(|i| decided.get(i).copied().flatten());
                let wanted = match known {
                    Some(w) => w,
                    None => {
                        let w = self.wanted.contains(&logged.selector(dict)?);
                        if let Some(i) = slot {
                            if decided.len() <= i {
                                decided.resize(i + 1, None);
                            }
                            decided[i] = Some(w);
                        }
                        w
                    }
                };
                if wanted {
                    out.push((logged.at, logged.decode(dict)?, input.cloned()));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }
}
