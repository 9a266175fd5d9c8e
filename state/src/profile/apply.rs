//! Applying inbound messages and event logs to a [`ProfileState`], and evaluating the catalog's
//! audiences for it: the per-MPID state machine. The invariants are the module's (see
//! [`crate::profile`]).

use super::state::*;
use crate::aggregate::CalcState;
use crate::catalog::{ActiveAudience, Catalog};
use crate::criteria::{compare_versions, event_history_key, parse_version, EvalContext};
use crate::eventlog::{LoggedMessage, MessageEvent, MessageParts};
use crate::history::EventSeries;
use crate::model::{
    AttrValue, Attribution, AudienceId, Batch, ConsentState, Delta, DeltaKind, IdentityChange,
    Inbound, InputTag, TimestampMs,
};
use crate::model::{Event, EventKind, DEVICE_IDENTITY_TYPES};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

impl ProfileState {
    /// Applies a message at processing time `now`. Event times of 0 (unknown) become `now`.
    pub fn apply(
        &mut self,
        message: &Inbound,
        now: TimestampMs,
        retention_ms: i64,
        catalog: &Catalog,
    ) -> ChangeSet {
        self.apply_logged(message, now, retention_ms, catalog, &mut |_| {})
    }

    /// [`ProfileState::apply`], handing `log` the message as the profile applied it (what the
    /// event log keeps): the parts that changed the profile, and its events with the times
    /// they count from. A message that changed nothing is not handed over. Applying the
    /// logged message again to the state before gives the state after: that is how a
    /// profile is folded from its log ([`crate::replay::fold`]), by this same function.
    pub fn apply_logged(
        &mut self,
        message: &Inbound,
        now: TimestampMs,
        retention_ms: i64,
        catalog: &Catalog,
        log: &mut dyn FnMut(&LoggedMessage<'_>),
    ) -> ChangeSet {
        let mut changes = ChangeSet {
            created: self.is_new(),
            event_time_ms: now,
            ..Default::default()
        };
        let message_time = match message {
            Inbound::Batch(b) => b.timestamp_ms,
            Inbound::Identity(i) => i.timestamp_ms,
        }
        .filter(|&t| t > 0 && t <= now)
        .unwrap_or(now);
        let seen_before = (self.first_seen_ms, self.last_seen_ms);
        if changes.created {
            self.first_seen_ms = message_time;
        }
        self.first_seen_ms = self.first_seen_ms.min(message_time);
        self.last_seen_ms = self.last_seen_ms.max(message_time);
        changes.event_time_ms = message_time;
        let mut logged = LoggedMessage {
            now,
            message_time,
            input: message.input().map(Cow::Borrowed),
            parts: MessageParts::default(),
            events: Vec::new(),
        };
        let mut workspace_seen_changed = false;
        if let Some(tag) = message.input() {
            if !self.workspaces.contains(&tag.workspace) {
                self.workspaces.insert(tag.workspace.clone());
                changes.workspaces = true;
            }
            workspace_seen_changed =
                of_workspace(&mut self.workspace_data, &tag.workspace).seen_at(message_time);
        }
        match message {
            Inbound::Batch(batch) => {
                self.apply_batch(batch, now, catalog, &mut changes, &mut logged)
            }
            Inbound::Identity(update) => {
                logged.parts.identity_message = true;
                let workspace = update.input.as_ref().map(|tag| tag.workspace.as_str());
                for change in &update.changes {
                    if self.apply_identity_change(change, workspace, &mut changes) {
                        logged.parts.identity_changes.push(change.clone());
                    }
                }
            }
        }
        let seen_changed = seen_before != (self.first_seen_ms, self.last_seen_ms);
        if seen_changed
            || workspace_seen_changed
            || changes.workspaces
            || !logged.events.is_empty()
            || !logged.parts.is_empty()
        {
            log(&logged);
        }
        self.prune(now, retention_ms, catalog);
        changes
    }

    /// Forgets what left retention: event series by whole UTC day, calculated attributes by
    /// their windows; and the states of calculated attributes that were redefined.
    pub fn prune(&mut self, now: TimestampMs, retention_ms: i64, catalog: &Catalog) {
        let cutoff = now - retention_ms;
        self.history.retain(|_, series| {
            series.prune_before(cutoff);
            !series.is_empty()
        });
        self.calculated
            .retain(|key, state| match catalog.calculated_spec(key) {
                Some(spec) if spec.revision == state.revision => {
                    state.prune(&spec, now);
                    !state.is_empty()
                }
                // Redefined: the old state means nothing any more.
                Some(_) => false,
                // Deleted; or stored but not compiling in this build, which must not cost the
                // state a fixed definition would find again.
                None => catalog.has_calculated_record(key),
            });
    }

    /// Applies a batch, noting in `logged` each part that changed the profile (a part that
    /// changed nothing would change nothing when applied again) and every event.
    fn apply_batch<'b>(
        &mut self,
        batch: &'b Batch,
        now: TimestampMs,
        catalog: &Catalog,
        changes: &mut ChangeSet,
        logged: &mut LoggedMessage<'b>,
    ) {
        // The workspace whose copy of the profile's data the batch's parts also change.
        let workspace = batch.input.as_ref().map(|tag| tag.workspace.as_str());
        let parts = &mut logged.parts;
        for (identity_type, value) in &batch.user_identities {
            if self.set_identity(identity_type, value, workspace, changes) {
                parts
                    .user_identities
                    .push((identity_type.clone(), value.clone()));
            }
        }
        for (identity_type, value) in &batch.device_identities {
            if self.set_identity(identity_type, value, workspace, changes) {
                parts
                    .device_identities
                    .push((identity_type.clone(), value.clone()));
            }
        }
        // An upgrade: the app version went up, or the app said so on launch.
        let mut upgraded = batch.events.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::ApplicationStateTransition {
                    is_upgrade: true,
                    ..
                }
            )
        });
        // Above the highest version seen, not merely above the last one: a user with two
        // devices on different versions, or batches arriving out of order, is no upgrade.
        let highest_before = self.highest_app_version.clone();
        if let Some(after) = batch.app_version.as_deref().and_then(parse_version) {
            let highest = self
                .highest_app_version
                .as_deref()
                .or(self.app_version.as_deref())
                .and_then(parse_version);
            match highest {
                Some(h) if compare_versions(&after, &h).is_gt() => {
                    upgraded = true;
                    self.highest_app_version.clone_from(&batch.app_version);
                }
                Some(_) => {}
                None => self.highest_app_version.clone_from(&batch.app_version),
            }
        }
        // The profile's latest values, then the copy of the workspace the batch came through:
        // a part is logged when it changed either (replaying it changes both again).
        let mut merged = merge_user_data(self.user_data_mut(), batch);
        if let Some(workspace) = workspace {
            // Made when the message's workspace was noted as seen.
            let kept = of_workspace(&mut self.workspace_data, workspace);
            merged.add(merge_user_data(kept.into(), batch));
        }
        if merged.app_version || self.highest_app_version != highest_before {
            parts.app_version.clone_from(&batch.app_version);
        }
        if merged.device {
            parts.device_info.clone_from(&batch.device_info);
        }
        changes.device |= merged.device || merged.app_version;
        if upgraded {
            self.record_synthetic(
                UPGRADE_EVENT_TYPE,
                changes.event_time_ms,
                batch.input.as_ref(),
                catalog,
                changes,
                logged,
            );
        }
        let parts = &mut logged.parts;
        if merged.location {
            changes.location = true;
            parts.location.clone_from(&batch.location);
        }
        if merged.attribution {
            changes.attribution = true;
            parts.attribution.clone_from(&batch.attribution);
        }
        changes.consent |= merged.consent_answers;
        if merged.consent {
            parts.consent.clone_from(&batch.consent);
        }
        for event in &batch.events {
            self.apply_event(event, now, batch.input.as_ref(), catalog, changes, logged);
        }
        let parts = &mut logged.parts;
        for (name, value) in &batch.user_attributes {
            if self.set_attribute(name, Some(value.clone()), workspace, changes) {
                parts.user_attributes.push((name.clone(), value.clone()));
            }
        }
        for name in &batch.deleted_user_attributes {
            if self.set_attribute(name, None, workspace, changes) {
                parts.deleted_user_attributes.push(name.clone());
            }
        }
    }

    /// Records an event the engine derives rather than receives (an upgrade): into the
    /// history and the log like any event, so backfill and replay see it too.
    fn record_synthetic(
        &mut self,
        event_type: &str,
        at: TimestampMs,
        input: Option<&InputTag>,
        catalog: &Catalog,
        changes: &mut ChangeSet,
        logged: &mut LoggedMessage<'_>,
    ) {
        if catalog.excluded_by_tier(event_type, "") {
            return;
        }
        let event = Event {
            timestamp_ms: at,
            kind: EventKind::Other {
                event_type: event_type.to_string(),
            },
            attributes: BTreeMap::new(),
        };
        let selector = (event_type.to_string(), String::new());
        self.record_event(at, &event, selector, input, catalog, changes);
        logged.events.push(MessageEvent {
            at,
            event: Cow::Owned(event),
            derived: true,
            outside_tier: false,
        });
    }

    fn apply_event<'b>(
        &mut self,
        event: &'b Event,
        now: TimestampMs,
        input: Option<&InputTag>,
        catalog: &Catalog,
        changes: &mut ChangeSet,
        logged: &mut LoggedMessage<'b>,
    ) {
        // Unknown (0), pre-epoch or future timestamps (a device clock ahead of ours) count from
        // the moment the event is processed: history never holds the future.
        let at = if event.timestamp_ms > 0 && event.timestamp_ms <= now {
            event.timestamp_ms
        } else {
            now
        };
        match &event.kind {
            EventKind::UserAttributeChange {
                name,
                new_value,
                deleted,
            } => {
                let value = if *deleted {
                    None
                } else {
                    Some(new_value.clone().unwrap_or(AttrValue::Null))
                };
                let workspace = input.map(|tag| tag.workspace.as_str());
                self.set_attribute(name, value, workspace, changes);
            }
            EventKind::UserIdentityChange(change) => {
                let workspace = input.map(|tag| tag.workspace.as_str());
                self.apply_identity_change(change, workspace, changes);
            }
            EventKind::OptOut { opted_out } => self.opted_out = *opted_out,
            // An attribution event without the batch's attribution_info carries its publisher
            // and campaign as custom attributes.
            kind if is_install_attribution(kind) => {
                let read = |key: &str| {
                    event
                        .attributes
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.clone())
                };
                let found = Attribution {
                    publisher: read("publisher"),
                    campaign: read("campaign"),
                    service_provider: read("service_provider"),
                };
                changes.attribution |= merge_attribution(&mut self.install_attribution, &found);
                if let Some(tag) = input {
                    let kept = of_workspace(&mut self.workspace_data, &tag.workspace);
                    changes.attribution |= merge_attribution(&mut kept.install_attribution, &found);
                }
            }
            _ => {}
        }
        let selector = (
            event.kind.event_type().to_string(),
            event.kind.selector_name(),
        );
        let outside_tier = catalog.excluded_by_tier(&selector.0, &selector.1);
        // Logged whatever its tier, for what it did to the profile above.
        logged.events.push(MessageEvent {
            at,
            event: Cow::Borrowed(event),
            derived: false,
            outside_tier,
        });
        if outside_tier {
            // Not in the Personalize tier: real-time audiences do not evaluate it.
            return;
        }
        self.record_event(at, event, selector, input, catalog, changes);
    }

    /// Folds one event, at the time it counts from, into what the catalog derives from
    /// events: the event's series, the series of the criteria that select it, and the
    /// calculated attributes that read it. Streaming and replay share it, so a profile rebuilt
    /// from its log holds what streaming held.
    /// `selector` is the event's (event type, selector name); `input` what its message was
    /// stamped with, which scoped criteria select by.
    pub fn record_event(
        &mut self,
        at: TimestampMs,
        event: &Event,
        selector: (String, String),
        input: Option<&InputTag>,
        catalog: &Catalog,
        changes: &mut ChangeSet,
    ) {
        self.history
            .entry(event_history_key(event))
            .or_default()
            .record(at);
        for matcher in catalog.matchers_for(&selector.0, &selector.1) {
            if matcher.accepts(event, input) {
                // The key is copied only the first time: on the path of every event.
                if !self.history.contains_key(&matcher.history_key) {
                    self.history
                        .insert(matcher.history_key.clone(), Default::default());
                }
                if let Some(series) = self.history.get_mut(&matcher.history_key) {
                    series.record(at);
                }
            }
        }
        for def in catalog.calculated_for(&selector.0, &selector.1) {
            if !def.matcher.accepts(event, input) {
                continue;
            }
            let values = def.values_of(event);
            if values.is_empty() {
                continue;
            }
            let spec = def.spec();
            let state = self.calculated.entry(def.key.clone()).or_default();
            if state.revision != spec.revision {
                *state = CalcState {
                    revision: spec.revision,
                    ..Default::default()
                };
            }
            for value in values {
                state.add(&spec, at, value);
            }
            changes.calculated.insert(def.key.clone());
        }
        changes.events.insert(selector);
    }

    /// Sets (or, with `None`, removes) an attribute, in the profile and in the attributes of
    /// `workspace` (that of the input the message came through, if any); whether the profile
    /// changed.
    fn set_attribute(
        &mut self,
        name: &str,
        value: Option<AttrValue>,
        workspace: Option<&str>,
        changes: &mut ChangeSet,
    ) -> bool {
        let key = name.to_lowercase();
        let changed = match workspace {
            // Unstamped: the value moves into the profile, uncopied.
            None => set_in(&mut self.attributes, &key, name, value),
            Some(workspace) => {
                let mut changed = set_in(&mut self.attributes, &key, name, value.clone());
                if value.is_some() || self.workspace_attributes.contains_key(workspace) {
                    let kept = of_workspace(&mut self.workspace_attributes, workspace);
                    changed |= set_in(kept, &key, name, value);
                    if kept.is_empty() {
                        self.workspace_attributes.remove(workspace);
                    }
                }
                changed
            }
        };
        if changed {
            changes.attributes.insert(key);
        }
        changed
    }

    /// Sets an identity a batch carries, in the profile and in the identities of `workspace`
    /// (that of the message's input, if any); whether the profile changed.
    fn set_identity(
        &mut self,
        identity_type: &str,
        value: &str,
        workspace: Option<&str>,
        changes: &mut ChangeSet,
    ) -> bool {
        let identity_type = identity_type.to_lowercase();
        if value.is_empty() {
            return false;
        }
        let mut changed = set_identity_in(&mut self.identities, &identity_type, value);
        if let Some(workspace) = workspace {
            let kept = of_workspace(&mut self.workspace_identities, workspace);
            changed |= set_identity_in(kept, &identity_type, value);
        }
        if changed {
            changes.identities.insert(identity_type);
        }
        changed
    }

    /// Applies an identity change, in the profile and in the identities of `workspace`;
    /// whether the profile changed.
    fn apply_identity_change(
        &mut self,
        change: &IdentityChange,
        workspace: Option<&str>,
        changes: &mut ChangeSet,
    ) -> bool {
        let identity_type = change.identity_type.to_lowercase();
        let mut changed = change_identity_in(&mut self.identities, &identity_type, change);
        if let Some(workspace) = workspace {
            let kept = of_workspace(&mut self.workspace_identities, workspace);
            changed |= change_identity_in(kept, &identity_type, change);
            if kept.is_empty() {
                self.workspace_identities.remove(workspace);
            }
        }
        if changed {
            changes.identities.insert(identity_type);
        }
        changed
    }

    /// Rebuilds, from the profile's logged events (in arrival order, times as recorded), the
    /// series of `matchers` and the states of `calculated`, as if each had been defined before
    /// the first logged event: backfill. `log_oldest` is the earliest time the log holds
    /// (`None`: an empty log); occurrences a series holds from before it (the log was bounded,
    /// or predates the profile's log) are kept, so a rebuild never loses what streaming knew.
    /// `events` may leave out events no matcher or calculation selects.
    pub fn rebuild_from_log<'e>(
        &mut self,
        events: impl IntoIterator<Item = (TimestampMs, &'e Event, Option<&'e InputTag>)> + Clone,
        log_oldest: Option<TimestampMs>,
        matchers: &[&crate::criteria::Matcher],
        calculated: &[&crate::calculated::CalculatedDef],
        now: TimestampMs,
        retention_ms: i64,
    ) {
        for m in matchers {
            let mut series = EventSeries::default();
            if let Some(known) = self.history.get(&m.history_key) {
                for (t, n) in known.occurrences() {
                    if log_oldest.is_none_or(|oldest| t < oldest) {
                        (0..n).for_each(|_| series.record(t));
                    }
                }
            }
            for (at, event, input) in events.clone() {
                if m.accepts(event, input) {
                    series.record(at);
                }
            }
            series.prune_before(now - retention_ms);
            if series.is_empty() {
                self.history.remove(&m.history_key);
            } else {
                self.history.insert(m.history_key.clone(), series);
            }
        }
        for def in calculated {
            let spec = def.spec();
            let mut state = CalcState {
                revision: spec.revision,
                ..Default::default()
            };
            let mut folded = false;
            for (at, event, input) in events.clone() {
                if !def.matcher.accepts(event, input) {
                    continue;
                }
                for value in def.values_of(event) {
                    state.add(&spec, at, value);
                    folded = true;
                }
            }
            if folded {
                state.prune(&spec, now);
                self.calculated.insert(def.key.clone(), state);
            } else {
                self.calculated.remove(&def.key);
            }
        }
    }

    /// Evaluates the given audiences and returns the deltas, updating memberships and `due`.
    /// Audiences unknown to the catalog (deleted) lose their membership records silently.
    ///
    /// Audiences that read other audiences' memberships are evaluated after those, and every
    /// membership change re-evaluates its dependents (references are one level deep).
    pub fn evaluate(
        &mut self,
        audiences: impl IntoIterator<Item = AudienceId>,
        catalog: &Catalog,
        ctx: &EvalContext,
        event_time_ms: TimestampMs,
    ) -> Vec<Delta> {
        // One look-up per audience: the plain ones keep what it found for their evaluation.
        let mut plain = Vec::new();
        let mut second = BTreeSet::new();
        for id in audiences {
            match catalog.active(id) {
                Some(a) if !a.compiled.referenced_audiences().is_empty() => {
                    second.insert(id);
                }
                found => plain.push((id, found)),
            }
        }
        let mut deltas = self.evaluate_each(plain, catalog, ctx, event_time_ms);
        for d in &deltas {
            second.extend(catalog.dependents(d.audience_id).iter().copied());
        }
        if !second.is_empty() {
            let looked_up = second.into_iter().map(|id| (id, catalog.active(id)));
            deltas.extend(self.evaluate_each(looked_up, catalog, ctx, event_time_ms));
        }
        deltas
    }

    /// Evaluates each audience with what the catalog holds of it as active (`None`: a draft or
    /// deleted one).
    fn evaluate_each<'c>(
        &mut self,
        audiences: impl IntoIterator<Item = (AudienceId, Option<&'c Arc<ActiveAudience>>)>,
        catalog: &Catalog,
        ctx: &EvalContext,
        event_time_ms: TimestampMs,
    ) -> Vec<Delta> {
        let mut deltas = Vec::new();
        for (id, active) in audiences {
            let Some(audience) = active else {
                // Saved as draft: members leave (versions go on, for re-activation). Deleted:
                // the records go silently (audience ids are never reused).
                self.due.remove(&id);
                match (catalog.record(id), self.memberships.get(&id).copied()) {
                    (Some(_), Some(r)) if r.member => {
                        let version = r.version + 1;
                        self.memberships.insert(
                            id,
                            MemberRecord {
                                member: false,
                                version,
                                changed_at_ms: ctx.now,
                            },
                        );
                        deltas.push(Delta {
                            audience_id: id,
                            mpid: self.mpid,
                            kind: DeltaKind::Dropped,
                            event_time_ms,
                            processing_time_ms: ctx.now,
                            version,
                        });
                    }
                    (None, _) => {
                        self.memberships.remove(&id);
                    }
                    _ => {}
                }
                continue;
            };
            let outcome = audience.compiled.evaluate(self, ctx);
            match outcome.next_change {
                Some(t) => {
                    self.due.insert(id, t);
                }
                None => {
                    self.due.remove(&id);
                }
            }
            let record = self.memberships.get(&id).copied();
            let was_member = record.is_some_and(|r| r.member);
            if outcome.matched == was_member {
                continue;
            }
            let version = record.map_or(0, |r| r.version) + 1;
            self.memberships.insert(
                id,
                MemberRecord {
                    member: outcome.matched,
                    version,
                    changed_at_ms: ctx.now,
                },
            );
            deltas.push(Delta {
                audience_id: id,
                mpid: self.mpid,
                kind: if outcome.matched {
                    DeltaKind::Added
                } else {
                    DeltaKind::Dropped
                },
                event_time_ms,
                processing_time_ms: ctx.now,
                version,
            });
        }
        deltas
    }
}

/// An install attribution event: a custom event named `attribution` of custom event type
/// `attribution` (the decoder gives that type to the untyped custom events of a partner's
/// batch).
fn is_install_attribution(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Custom { name, custom_type }
        if name.eq_ignore_ascii_case("attribution") && custom_type.as_deref() == Some("attribution"))
}

/// Overlays the fields an attribution carries (a partial one keeps the others); whether the
/// stored attribution changed.
/// What merging a batch into one copy of the profile's user data changed.
#[derive(Debug, Default, Clone, Copy)]
struct UserDataChanged {
    device: bool,
    app_version: bool,
    location: bool,
    attribution: bool,
    /// Any of the consent state, its timestamps and documents included.
    consent: bool,
    /// A consent answer: what consent criteria read.
    consent_answers: bool,
}

impl UserDataChanged {
    fn add(&mut self, other: UserDataChanged) {
        self.device |= other.device;
        self.app_version |= other.app_version;
        self.location |= other.location;
        self.attribution |= other.attribution;
        self.consent |= other.consent;
        self.consent_answers |= other.consent_answers;
    }
}

/// Merges what a batch carries of device, app version, location, attributions and consent
/// into one copy of them (the profile's, or a workspace's).
fn merge_user_data(data: UserDataMut<'_>, batch: &Batch) -> UserDataChanged {
    let mut changed = UserDataChanged::default();
    if let Some(device) = &batch.device_info {
        changed.device = data.device.merge_from(device);
    }
    if batch.app_version.is_some() && *data.app_version != batch.app_version {
        data.app_version.clone_from(&batch.app_version);
        changed.app_version = true;
    }
    if let Some(location) = &batch.location {
        changed.location = data.location.merge_from(location);
    }
    if let Some(attribution) = &batch.attribution {
        for event in &batch.events {
            let slot = match &event.kind {
                EventKind::Uninstall => &mut *data.uninstall_attribution,
                EventKind::FirstRun => &mut *data.install_attribution,
                kind if is_install_attribution(kind) => &mut *data.install_attribution,
                _ => continue,
            };
            changed.attribution |= merge_attribution(slot, attribution);
        }
    }
    if let Some(consent) = &batch.consent {
        let before = data.consent.clone();
        for (purpose, c) in &consent.gdpr {
            data.consent.gdpr.insert(purpose.to_lowercase(), c.clone());
        }
        if consent.ccpa_data_sale_opt_out.is_some() {
            data.consent.ccpa_data_sale_opt_out = consent.ccpa_data_sale_opt_out;
        }
        // A consent refreshed with a new timestamp but the same answer changes nothing.
        let answers = |c: &ConsentState| {
            let gdpr: Vec<(String, bool)> = c
                .gdpr
                .iter()
                .map(|(k, v)| (k.clone(), v.consented))
                .collect();
            (gdpr, c.ccpa_data_sale_opt_out)
        };
        changed.consent_answers = answers(data.consent) != answers(&before);
        changed.consent = *data.consent != before;
    }
    changed
}

fn merge_attribution(slot: &mut Option<Attribution>, newer: &Attribution) -> bool {
    if *newer == Attribution::default() {
        return false;
    }
    let before = slot.clone();
    let current = slot.get_or_insert_with(Attribution::default);
    for (field, value) in [
        (&mut current.publisher, &newer.publisher),
        (&mut current.campaign, &newer.campaign),
        (&mut current.service_provider, &newer.service_provider),
    ] {
        if value.is_some() {
            field.clone_from(value);
        }
    }
    *slot != before
}

/// Sets (or, with `None`, removes) the attribute `key` (lowercased `name`) of `attributes`;
/// whether they changed.
fn set_in(
    attributes: &mut BTreeMap<String, NamedAttr>,
    key: &str,
    name: &str,
    value: Option<AttrValue>,
) -> bool {
    match value {
        Some(value) => {
            let changed = attributes.get(key).is_none_or(|a| a.value != value);
            if changed {
                attributes.insert(
                    key.to_string(),
                    NamedAttr {
                        name: name.to_string(),
                        value,
                    },
                );
            }
            changed
        }
        None => attributes.remove(key).is_some(),
    }
}

/// Sets `value` as an identity of `identity_type` (lowercased) among `identities`: added to a
/// device identity's values, in place of any other's; whether they changed.
fn set_identity_in(
    identities: &mut BTreeMap<String, Vec<String>>,
    identity_type: &str,
    value: &str,
) -> bool {
    // The common case, an SDK repeating what it sent before, allocates nothing.
    let known = identities.get(identity_type);
    if known.is_some_and(|values| values.iter().any(|v| v == value)) {
        return false;
    }
    let values = identities.entry(identity_type.to_string()).or_default();
    if DEVICE_IDENTITY_TYPES.contains(&identity_type) {
        values.push(value.to_string());
    } else {
        *values = vec![value.to_string()];
    }
    true
}

/// Applies an identity change (the old value removed, the new one added) to `identities`;
/// whether they changed.
fn change_identity_in(
    identities: &mut BTreeMap<String, Vec<String>>,
    identity_type: &str,
    change: &IdentityChange,
) -> bool {
    let values = identities.entry(identity_type.to_string()).or_default();
    let before = values.clone();
    if let Some(old) = &change.old_value {
        values.retain(|v| v != old);
    }
    if let Some(new) = &change.new_value {
        if !values.contains(new) {
            values.push(new.clone());
        }
    }
    let changed = *values != before;
    if values.is_empty() {
        identities.remove(identity_type);
    }
    changed
}

/// The copy a workspace keeps, made empty the first time (its name is allocated only then).
fn of_workspace<'m, V: Default>(kept: &'m mut BTreeMap<String, V>, workspace: &str) -> &'m mut V {
    if !kept.contains_key(workspace) {
        kept.insert(workspace.to_string(), V::default());
    }
    kept.get_mut(workspace).expect("inserted above")
}
