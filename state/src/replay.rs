//! Replay: a profile rebuilt from what the store keeps as its logs, without reading its state.
//!
//! A profile's state is a cache of three logs, each written in the profile's own batch:
//! - its facts record ([`crate::facts`]): identities, attributes, device, consent, location...;
//! - its event log ([`crate::eventlog`]): every event of the retention window, in arrival order;
//! - its membership history ([`crate::membership`]): every delta it caused, with versions.
//!
//! [`rebuild_profile`] folds them back into a [`ProfileState`] under the current catalog: facts
//! as recorded, every logged event through the same [`ProfileState::record_event`] streaming
//! uses, memberships and versions as the subscribers were last told. Evaluating the rebuilt
//! profile over [`audiences_to_evaluate`] then sets its timers and emits a delta only where the
//! logs and the current catalog disagree with what was sent: after a replay of a healthy store,
//! none.
//!
//! Invariants:
//! - nothing of the stored profile state is read: a wiped `profiles` column family loses
//!   nothing the logs hold;
//! - versions continue from the membership history, so a delta id `audience:mpid:version` is
//!   never issued twice, whatever was wiped.

use crate::catalog::Catalog;
use crate::eventlog::{chunk_body, ChunkReader, Dictionary, EventLog};
use crate::facts::ProfileFacts;
use crate::membership::Change;
use crate::model::{AudienceId, DeltaKind, Event, Mpid, TimestampMs};
use crate::profile::{ChangeSet, MemberRecord, ProfileState};
use std::collections::{BTreeMap, BTreeSet};

/// Every event of a log (the head and the bodies of its sealed chunks as stored, oldest
/// first), decoded, in arrival order, with the time each counts from.
pub fn logged_events(
    log: &EventLog,
    chunks: &[&[u8]],
    dict: &Dictionary,
) -> Result<Vec<(TimestampMs, Event)>, String> {
    let mut out = Vec::with_capacity(log.events() as usize);
    let bodies = chunks
        .iter()
        .map(|c| chunk_body(c))
        .chain(std::iter::once(Ok(log.tail.as_slice())));
    for body in bodies {
        for logged in ChunkReader::new(body?) {
            let logged = logged?;
            out.push((logged.at, logged.decode(dict)?));
        }
    }
    Ok(out)
}

/// A profile from its facts, its logged events (arrival order) and its membership changes
/// (by audience, in version order), as of `now`. Memberships of audiences the catalog no
/// longer knows are left out, as streaming forgets them.
pub fn rebuild_profile(
    mpid: Mpid,
    facts: ProfileFacts,
    events: impl IntoIterator<Item = (TimestampMs, Event)>,
    memberships: &BTreeMap<AudienceId, Vec<Change>>,
    catalog: &Catalog,
    now: TimestampMs,
    retention_ms: i64,
) -> ProfileState {
    let mut profile = facts.into_profile(mpid);
    let mut scratch = ChangeSet::default();
    for (at, event) in events {
        let selector = (
            event.kind.event_type().to_string(),
            event.kind.selector_name(),
        );
        // A tier changed since: what real-time audiences may not read now is not folded.
        if catalog.excluded_by_tier(&selector.0, &selector.1) {
            continue;
        }
        profile.record_event(at, &event, selector, catalog, &mut scratch);
    }
    profile.prune(now, retention_ms, catalog);
    for (&audience, changes) in memberships {
        if catalog.record(audience).is_none() {
            continue;
        }
        if let Some(last) = changes.last() {
            profile.memberships.insert(
                audience,
                MemberRecord {
                    member: last.kind == DeltaKind::Added,
                    version: last.version,
                    changed_at_ms: last.at_ms,
                },
            );
        }
    }
    profile
}

/// What a rebuilt profile is evaluated against: every active audience (its answer and its
/// timer), and the audiences it has a record of (a draft's members leave).
pub fn audiences_to_evaluate(catalog: &Catalog, profile: &ProfileState) -> Vec<AudienceId> {
    let mut ids: BTreeSet<AudienceId> = catalog.active_ids().collect();
    ids.extend(profile.memberships.keys().copied());
    ids.into_iter().collect()
}
