//! Replay: a profile is the fold of its logs, without reading its state.
//!
//! A profile's state is a cache of three records, each written in the profile's own batch:
//! - its base ([`crate::facts`]): its facts before the first message its log holds;
//! - its event log ([`crate::eventlog`]): every message that changed it within the retention
//!   window, with its events, in arrival order;
//! - its membership history ([`crate::membership`]): every delta it caused, with versions.
//!
//! [`fold`] is the profile's data as the base and the log imply: every logged message applied
//! again, in order, at the processing time it was applied at, by the same
//! [`ProfileState::apply`] streaming uses, so the two cannot drift apart. [`rebuild_profile`]
//! adds the memberships and versions the subscribers were last told; evaluating it over
//! [`audiences_to_evaluate`] then sets its timers and emits a delta only where the logs and the
//! current catalog disagree with what was sent: after a replay of a healthy store, none.
//!
//! Invariants:
//! - nothing of the stored profile state is read: a wiped `profiles` column family loses
//!   nothing the logs hold;
//! - the fold is pure: the same base, log, catalog and instant give the same profile;
//! - versions continue from the membership history, so a delta id `audience:mpid:version` is
//!   never issued twice, whatever was wiped.

use crate::catalog::Catalog;
use crate::eventlog::{chunk_body, read_units, Dictionary, EventLog, LogUnit};
use crate::facts::ProfileFacts;
use crate::membership::Change;
use crate::model::{AudienceId, DeltaKind, Mpid, TimestampMs};
use crate::profile::{ChangeSet, MemberRecord, ProfileState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The units of a log (the head and the stored records of its sealed chunks, oldest first),
/// decoded, in arrival order.
pub fn log_units(
    log: &EventLog,
    chunks: &[&[u8]],
    dict: &Dictionary,
) -> Result<Vec<LogUnit>, String> {
    let bodies = chunks
        .iter()
        .map(|c| chunk_body(c))
        .collect::<Result<Vec<_>, _>>()?;
    read_units(bodies.into_iter().chain(Some(log.tail.as_slice())), dict)
}

/// `fold(base, log)`: the profile's data (everything but memberships and timers) as its base
/// and its logged units imply, under `catalog`, as of `now`. Messages are applied by
/// [`ProfileState::apply`] at the instant they were applied at; events of a format 1 log
/// (whose effects on the profile the base holds) feed event criteria only, as streaming fed
/// them.
pub fn fold(
    mpid: Mpid,
    base: ProfileFacts,
    units: impl IntoIterator<Item = LogUnit>,
    catalog: &Catalog,
    now: TimestampMs,
    retention_ms: i64,
) -> ProfileState {
    let mut profile = base.into_profile(mpid);
    let mut scratch = ChangeSet::default();
    for unit in units {
        match unit {
            LogUnit::Message(m) => {
                let now = m.now;
                profile.apply(&m.into_inbound(mpid), now, retention_ms, catalog);
            }
            LogUnit::BareEvent(at, event) => {
                let selector = (
                    event.kind.event_type().to_string(),
                    event.kind.selector_name(),
                );
                // A tier changed since: what real-time audiences may not read now is not folded.
                if catalog.excluded_by_tier(&selector.0, &selector.1) {
                    continue;
                }
                // Logged before inputs were: unstamped.
                profile.record_event(at, &event, selector, None, catalog, &mut scratch);
            }
        }
    }
    profile.prune(now, retention_ms, catalog);
    profile
}

/// What a profile did through the inputs of `workspaces`: [`fold`] over its logged messages
/// stamped with one of them and nothing else (no base, no unstamped message), so that its
/// event series and calculated attributes count only those workspaces' events. What a token
/// limited to workspaces reads of a profile's activity. Messages that left the log (retention,
/// bounds) are not counted.
pub fn fold_in_workspaces(
    mpid: Mpid,
    units: impl IntoIterator<Item = LogUnit>,
    workspaces: &[String],
    catalog: &Catalog,
    now: TimestampMs,
    retention_ms: i64,
) -> ProfileState {
    let theirs = units.into_iter().filter(|unit| match unit {
        LogUnit::Message(m) => m
            .input
            .as_ref()
            .is_some_and(|tag| workspaces.contains(&tag.workspace)),
        LogUnit::BareEvent(..) => false,
    });
    fold(
        mpid,
        ProfileFacts::default(),
        theirs,
        catalog,
        now,
        retention_ms,
    )
}

/// The base after the units that leave a log: the facts they leave behind. Facts do not
/// depend on the catalog (event criteria and calculated attributes are not facts).
pub fn fold_into_base(
    mpid: Mpid,
    base: ProfileFacts,
    leaving: impl IntoIterator<Item = LogUnit>,
) -> ProfileFacts {
    static NO_DEFINITIONS: OnceLock<Catalog> = OnceLock::new();
    let catalog = NO_DEFINITIONS.get_or_init(|| Catalog::build_full(0, vec![], vec![], vec![]));
    let mut profile = base.into_profile(mpid);
    for unit in leaving {
        if let LogUnit::Message(m) = unit {
            let now = m.now;
            profile.apply(&m.into_inbound(mpid), now, 0, catalog);
        }
    }
    ProfileFacts::of(&profile)
}

/// [`fold_into_base`] over the records of the chunks that leave a log (oldest first) and the
/// part of its tail that leaves with them ([`crate::eventlog::LogWrites`]).
pub fn base_after(
    mpid: Mpid,
    base: ProfileFacts,
    chunk_records: &[&[u8]],
    dropped_tail: &[u8],
    dict: &Dictionary,
) -> Result<ProfileFacts, String> {
    let bodies = chunk_records
        .iter()
        .map(|c| chunk_body(c))
        .collect::<Result<Vec<_>, _>>()?;
    let units = read_units(bodies.into_iter().chain(Some(dropped_tail)), dict)?;
    Ok(fold_into_base(mpid, base, units))
}

/// A profile from its base, its log's units (arrival order) and its membership changes (by
/// audience, in version order), as of `now`. Memberships of audiences the catalog no longer
/// knows are left out, as streaming forgets them.
pub fn rebuild_profile(
    mpid: Mpid,
    base: ProfileFacts,
    units: impl IntoIterator<Item = LogUnit>,
    memberships: &BTreeMap<AudienceId, Vec<Change>>,
    catalog: &Catalog,
    now: TimestampMs,
    retention_ms: i64,
) -> ProfileState {
    let mut profile = fold(mpid, base, units, catalog, now, retention_ms);
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

/// What differs between a stored profile and the fold of its logs, as short labels naming the
/// field and, for keyed fields, the keys (`attributes: tier`, `memberships: 4`): what
/// `audiencectl verify` reports. Empty: they are equal.
pub fn differences(stored: &ProfileState, folded: &ProfileState) -> Vec<String> {
    fn keyed<K: Ord + std::fmt::Display, V: PartialEq>(
        out: &mut Vec<String>,
        field: &str,
        a: &BTreeMap<K, V>,
        b: &BTreeMap<K, V>,
    ) {
        let keys: BTreeSet<&K> = a.keys().chain(b.keys()).collect();
        let differing: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(k) != b.get(k))
            .map(|k| k.to_string())
            .collect();
        if !differing.is_empty() {
            out.push(format!("{field}: {}", differing.join(", ")));
        }
    }
    let mut out = Vec::new();
    let mut plain = |field: &str, equal: bool| {
        if !equal {
            out.push(field.to_string());
        }
    };
    plain("first_seen", stored.first_seen_ms == folded.first_seen_ms);
    plain("last_seen", stored.last_seen_ms == folded.last_seen_ms);
    plain("device", stored.device == folded.device);
    plain("consent", stored.consent == folded.consent);
    plain("app_version", stored.app_version == folded.app_version);
    plain(
        "highest_app_version",
        stored.highest_app_version == folded.highest_app_version,
    );
    plain("opted_out", stored.opted_out == folded.opted_out);
    plain("location", stored.location == folded.location);
    plain(
        "install_attribution",
        stored.install_attribution == folded.install_attribution,
    );
    plain(
        "uninstall_attribution",
        stored.uninstall_attribution == folded.uninstall_attribution,
    );
    keyed(
        &mut out,
        "identities",
        &stored.identities,
        &folded.identities,
    );
    keyed(
        &mut out,
        "attributes",
        &stored.attributes,
        &folded.attributes,
    );
    keyed(&mut out, "events", &stored.history, &folded.history);
    keyed(
        &mut out,
        "calculated",
        &stored.calculated,
        &folded.calculated,
    );
    keyed(
        &mut out,
        "memberships",
        &stored.memberships,
        &folded.memberships,
    );
    keyed(&mut out, "timers", &stored.due, &folded.due);
    // Any difference the fields above do not name, in the rows as they are stored.
    let rows = |p: &ProfileState| (p.encode_core(), p.encode_derived());
    if out.is_empty() && rows(stored) != rows(folded) {
        out.push("encoding".to_string());
    }
    out
}
