//! Replay: a profile rebuilt from its logs alone (base, event log, membership history),
//! without its stored state, equals the profile streaming built, encoded byte for byte: the
//! same facts, event series, calculated attributes, memberships, versions and timer; and
//! evaluating it emits no delta. The clock moves past retention, so messages leave the log
//! and their facts go to the base: an attribute set before the window survives.
//!
//! The stream mixes every part of a message a profile keeps: events of several families,
//! user attributes set and removed, user and device identities, identity messages, consent,
//! app versions (upgrades), location and device info, with clock moves between messages and
//! the timers fired as the partition fires them. The log is written as the partition writes
//! it (appended, sealed, pruned by retention); the membership history gets every delta.

use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::EvalContext;
use audience_state::eventlog::{Dictionary, EventLog, LogLimits};
use audience_state::facts::{encode_facts, ProfileFacts};
use audience_state::membership::Change;
use audience_state::model::*;
use audience_state::profile::ProfileState;
use audience_state::replay::{
    audiences_to_evaluate, base_after, fold_in_workspaces, log_units, rebuild_profile,
};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

const RETENTION: i64 = 30 * DAY_MS;
const T0: i64 = 1_700_000_000_000;

fn record(id: u64, criteria: serde_json::Value) -> AudienceRecord {
    AudienceRecord::active(id, format!("a{id}"), criteria)
}

fn catalog(days: i64, k: u32) -> Catalog {
    let definitions = [
        json!({"event": {"type": "custom_event", "name": "Search", "count": {"at_least": k},
            "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
            "time": {"within_last_days": days}}}),
        json!({"event": {"type": "commerce_event", "product_action": "purchase",
            "transaction": [{"name": "total_amount", "op": "greater_than", "value": 20}]}}),
        json!({"cart_abandonment": {"wait_minutes": 90, "without": "purchase"}}),
        json!({"user_attribute": {"name": "Tier", "op": "exact_match", "value": "gold"}}),
        json!({"identity": {"type": "email", "op": "exists"}}),
        json!({"consent": {"regulation": "gdpr", "purpose": "Marketing", "state": "consented"}}),
        json!({"device": {"field": "app_version", "op": "version_less_than", "value": "2.1"}}),
        json!({"event": {"type": "upgrade", "time": {"within_last_days": days}}}),
        json!({"first_seen": {"within_last_days": days}}),
        json!({"calculated_attribute": {"name": "spend", "op": "greater_than_or_equal", "value": 30 * k}}),
        json!({"and": [{"user_attribute": {"name": "Tier", "op": "exists"}},
            {"exclude": {"event": {"type": "custom_event", "name": "Search",
                "time": {"within_last_days": 2}}}}]}),
        json!({"audience": {"id": 4, "member": true}}),
    ];
    let mut records: Vec<AudienceRecord> = definitions
        .into_iter()
        .enumerate()
        .map(|(i, c)| record(i as u64 + 1, c))
        .collect();
    // Scoped: searches through one input, the tier of profiles seen in a workspace, and a
    // workspace's profiles that did not purchase there.
    let mut scoped =
        |id: u64, criteria: serde_json::Value, workspaces: &[&str], inputs: &[&str]| {
            let mut r = record(id, criteria);
            r.workspaces = workspaces.iter().map(|w| w.to_string()).collect();
            r.inputs = inputs.iter().map(|i| i.to_string()).collect();
            records.push(r);
        };
    scoped(
        13,
        json!({"event": {"type": "custom_event", "name": "Search", "time": {"within_last_days": days}}}),
        &["app-a"],
        &["ios"],
    );
    scoped(
        14,
        json!({"user_attribute": {"name": "Tier", "op": "exact_match", "value": "gold"}}),
        &["app-b"],
        &[],
    );
    scoped(
        15,
        json!({"exclude": {"event": {"type": "commerce_event", "product_action": "purchase"}}}),
        &["app-a", "app-b"],
        &["feed"],
    );
    let mut spend: CalculatedAttributeRecord = serde_json::from_value(json!({
        "name": "spend", "calculation": "sum", "field": "total_amount", "window_days": days,
        "event": {"type": "commerce_event", "product_action": "purchase"}}))
    .unwrap();
    spend.revision = 2;
    let catalog = Catalog::build_full(1, records.clone(), vec![], vec![spend]);
    for r in &records {
        assert!(catalog.active(r.id).is_some(), "audience {} compiles", r.id);
    }
    catalog
}

#[derive(Debug, Clone)]
enum Step {
    Search(&'static str),
    Purchase(u32),
    AddToCart,
    SetTier(&'static str),
    RemoveTier,
    Email(&'static str),
    DropEmail,
    Consent(bool),
    AppVersion(&'static str),
    Device(&'static str),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        prop::sample::select(vec!["red shoes", "boots", "SHOE sale"]).prop_map(Step::Search),
        (1u32..60).prop_map(Step::Purchase),
        Just(Step::AddToCart),
        prop::sample::select(vec!["gold", "silver"]).prop_map(Step::SetTier),
        Just(Step::RemoveTier),
        prop::sample::select(vec!["a@x.io", "b@y.io"]).prop_map(Step::Email),
        Just(Step::DropEmail),
        any::<bool>().prop_map(Step::Consent),
        prop::sample::select(vec!["1.9", "2.0", "2.3", "3.0"]).prop_map(Step::AppVersion),
        prop::sample::select(vec!["Orange", "T-Mobile"]).prop_map(Step::Device),
    ]
}

fn custom(name: &str, at: i64, query: &str) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Custom {
            name: name.into(),
            custom_type: None,
        },
        attributes: [("query".to_string(), query.to_string())].into(),
    }
}

fn commerce(action: &str, at: i64, amount: Option<f64>) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Commerce {
            product_action: Some(action.into()),
            products: vec![],
            total_amount: amount,
            transaction_id: None,
        },
        attributes: BTreeMap::new(),
    }
}

/// The input of a message at `at`: none, or an input of one of two workspaces, varying with
/// the clock so that a stream mixes them.
fn input_at(at: i64) -> Option<InputTag> {
    let tag = |input: &str, workspace: &str| InputTag {
        input: input.into(),
        workspace: workspace.into(),
    };
    match (at / 1000).rem_euclid(3) {
        0 => None,
        1 => Some(tag("ios", "app-a")),
        _ => Some(tag("feed", "app-b")),
    }
}

fn message(step: &Step, at: i64) -> Inbound {
    let mut batch = Batch {
        mpid: 1,
        timestamp_ms: Some(at),
        input: input_at(at),
        ..Default::default()
    };
    match step {
        Step::Search(q) => batch.events.push(custom("Search", at, q)),
        Step::Purchase(amount) => batch
            .events
            .push(commerce("purchase", at, Some(*amount as f64))),
        Step::AddToCart => batch.events.push(commerce("add_to_cart", at, None)),
        Step::SetTier(t) => batch
            .user_attributes
            .push(("Tier".into(), AttrValue::String(t.to_string()))),
        Step::RemoveTier => batch.deleted_user_attributes.push("tier".into()),
        Step::Email(e) => batch.user_identities.push(("email".into(), e.to_string())),
        Step::DropEmail => {
            return Inbound::Identity(IdentityUpdate {
                mpid: 1,
                timestamp_ms: Some(at),
                changes: vec![
                    IdentityChange {
                        identity_type: "email".into(),
                        old_value: Some("a@x.io".into()),
                        new_value: None,
                    },
                    IdentityChange {
                        identity_type: "email".into(),
                        old_value: Some("b@y.io".into()),
                        new_value: None,
                    },
                ],
                input: input_at(at),
            })
        }
        Step::Consent(yes) => {
            let mut consent = ConsentState::default();
            consent.gdpr.insert(
                "marketing".into(),
                GdprConsent {
                    consented: *yes,
                    timestamp_ms: Some(at),
                    document: None,
                },
            );
            batch.consent = Some(consent);
        }
        Step::AppVersion(v) => {
            batch.app_version = Some(v.to_string());
            batch.events.push(Event {
                timestamp_ms: at,
                kind: EventKind::SessionStart,
                attributes: BTreeMap::new(),
            });
        }
        Step::Device(carrier) => {
            batch.device_info = Some(DeviceInfo {
                network_carrier: Some(carrier.to_string()),
                ..Default::default()
            });
            batch.location = Some(GeoLocation {
                city: Some("Lyon".into()),
                ..Default::default()
            });
        }
    }
    Inbound::Batch(batch)
}

/// What the store holds of one profile, written as the partition writes it.
#[derive(Default)]
struct Stored {
    log: EventLog,
    chunks: BTreeMap<u32, Vec<u8>>,
    base: ProfileFacts,
    members: BTreeMap<AudienceId, Vec<Change>>,
    /// Messages that left the log so far.
    rebased: usize,
}

impl Stored {
    fn commit(&mut self, deltas: &[Delta], now: i64, dict: &Dictionary) {
        self.log.enforce(now - RETENTION, LogLimits::default());
        let writes = self.log.take_writes();
        for (seq, bytes) in writes.put_chunks.iter().cloned() {
            self.chunks.insert(seq, bytes);
        }
        if writes.dropped_any() {
            let leaving: Vec<&[u8]> = writes
                .delete_chunks
                .iter()
                .map(|seq| self.chunks[seq].as_slice())
                .collect();
            self.base =
                base_after(1, self.base.clone(), &leaving, &writes.dropped_tail, dict).unwrap();
            self.rebased += 1;
        }
        for seq in writes.delete_chunks {
            self.chunks.remove(&seq);
        }
        for d in deltas {
            self.members.entry(d.audience_id).or_default().push(Change {
                version: d.version,
                kind: d.kind,
                at_ms: d.processing_time_ms,
            });
        }
    }
}

/// Later, every audience evaluated on the streamed profile (as a replay evaluates them) and
/// committed; then the profile rebuilt from the stored logs alone (the base as read back) and
/// evaluated the same way: the rebuilt profile, and the deltas its evaluation emitted.
fn settle_and_rebuild(
    streamed: &mut ProfileState,
    stored: &mut Stored,
    catalog: &Catalog,
    dict: &Dictionary,
    now: i64,
) -> (ProfileState, Vec<Delta>) {
    let all = audiences_to_evaluate(catalog, streamed);
    let deltas = streamed.evaluate(all, catalog, &ctx(now), now);
    streamed.prune(now, RETENTION, catalog);
    stored.commit(&deltas, now, dict);
    let chunks: Vec<&[u8]> = stored.chunks.values().map(Vec::as_slice).collect();
    let units = log_units(&stored.log, &chunks, dict).unwrap();
    let base = ProfileFacts::decode(&stored.base.encode()).unwrap();
    let mut rebuilt = rebuild_profile(1, base, units, &stored.members, catalog, now, RETENTION);
    let all = audiences_to_evaluate(catalog, &rebuilt);
    let deltas = rebuilt.evaluate(all, catalog, &ctx(now), now);
    (rebuilt, deltas)
}

fn ctx(now: i64) -> EvalContext {
    EvalContext {
        now,
        retention_ms: RETENTION,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_profile_rebuilt_from_its_logs_equals_the_streamed_one(
        steps in proptest::collection::vec((0i64..3 * DAY_MS, arb_step()), 1..40),
        days in 1i64..10,
        k in 1u32..3,
        settle in 0i64..40 * DAY_MS,
    ) {
        let catalog = catalog(days, k);
        let mut streamed = ProfileState::new(1);
        let mut stored = Stored::default();
        let mut dict = Dictionary::default();
        let mut now = T0;
        for (gap, step) in &steps {
            now += gap;
            // The partition's timer fires first: time alone may have changed an answer.
            let due = streamed.due_audiences(now);
            let deltas = streamed.evaluate(due, &catalog, &ctx(now), now);
            stored.commit(&deltas, now, &dict);
            let log = &mut stored.log;
            let changes = streamed.apply_logged(&message(step, now), now, RETENTION, &catalog,
                &mut |m| log.append_message(&mut dict, m));
            let affected = catalog.affected_by(&changes);
            let deltas = streamed.evaluate(affected, &catalog, &ctx(now), changes.event_time_ms);
            stored.commit(&deltas, now, &dict);
        }
        now += settle;
        let (rebuilt, replay_deltas) = settle_and_rebuild(&mut streamed, &mut stored, &catalog, &dict, now);

        prop_assert!(replay_deltas.is_empty(), "replay emitted {:?}", replay_deltas);
        prop_assert_eq!(&rebuilt.memberships, &streamed.memberships);
        prop_assert_eq!(encode_facts(&rebuilt), encode_facts(&streamed));
        prop_assert_eq!(&rebuilt.history, &streamed.history);
        prop_assert_eq!(&rebuilt.calculated, &streamed.calculated);
        prop_assert_eq!(&rebuilt.due, &streamed.due);
        prop_assert_eq!((rebuilt.encode_core(), rebuilt.encode_derived()), (streamed.encode_core(), streamed.encode_derived()), "the whole stored state");
    }
}

/// The versions continue from the membership history: a profile rebuilt after it left an
/// audience re-enters at the next version, never at one already sent.
#[test]
fn versions_continue_from_the_membership_history() {
    let catalog = catalog(7, 1);
    let mut members = BTreeMap::new();
    members.insert(
        4,
        vec![
            Change {
                version: 1,
                kind: DeltaKind::Added,
                at_ms: T0,
            },
            Change {
                version: 2,
                kind: DeltaKind::Dropped,
                at_ms: T0 + 1,
            },
        ],
    );
    // The history of a deleted audience (99) is not restored.
    members.insert(
        99,
        vec![Change {
            version: 1,
            kind: DeltaKind::Added,
            at_ms: T0,
        }],
    );
    let mut profile = ProfileState::new(1);
    let tier = Batch {
        mpid: 1,
        user_attributes: vec![("Tier".into(), AttrValue::String("gold".into()))],
        ..Default::default()
    };
    profile.apply(&Inbound::Batch(tier), T0, RETENTION, &catalog);
    let facts = ProfileFacts::decode(&encode_facts(&profile)).unwrap();
    let mut rebuilt = rebuild_profile(1, facts, [], &members, &catalog, T0 + 2, RETENTION);
    assert!(!rebuilt.memberships.contains_key(&99));
    let deltas = rebuilt.evaluate(
        audiences_to_evaluate(&catalog, &rebuilt),
        &catalog,
        &ctx(T0 + 2),
        T0 + 2,
    );
    let tier = deltas
        .iter()
        .find(|d| d.audience_id == 4)
        .expect("re-enters");
    assert_eq!((tier.kind, tier.version), (DeltaKind::Added, 3));
}

/// An attribute set before the retention window outlives the chunk that set it: the chunk
/// leaves the log, what it did goes to the base, and a rebuild still finds the attribute (and
/// the audience reading it keeps its member, with no delta).
#[test]
fn an_attribute_set_before_the_window_survives_its_chunk_and_a_rebuild() {
    let catalog = catalog(7, 1);
    let mut streamed = ProfileState::new(1);
    let mut stored = Stored::default();
    let mut dict = Dictionary::default();
    let mut now = T0;
    let mut steps = vec![Step::SetTier("gold"), Step::Email("a@x.io")];
    // Enough searches, a day apart, to seal chunks all through the next 60 days.
    steps.extend((0..600).map(|_| Step::Search("red shoes")));
    for step in &steps {
        now += DAY_MS / 10;
        let due = streamed.due_audiences(now);
        let deltas = streamed.evaluate(due, &catalog, &ctx(now), now);
        stored.commit(&deltas, now, &dict);
        let log = &mut stored.log;
        let changes =
            streamed.apply_logged(&message(step, now), now, RETENTION, &catalog, &mut |m| {
                log.append_message(&mut dict, m)
            });
        let deltas = streamed.evaluate(catalog.affected_by(&changes), &catalog, &ctx(now), now);
        stored.commit(&deltas, now, &dict);
    }
    let (rebuilt, deltas) = settle_and_rebuild(&mut streamed, &mut stored, &catalog, &dict, now);
    assert!(deltas.is_empty(), "rebuild emitted {deltas:?}");
    assert_eq!(
        (rebuilt.encode_core(), rebuilt.encode_derived()),
        (streamed.encode_core(), streamed.encode_derived())
    );
    assert_eq!(rebuilt.attribute("tier"), streamed.attribute("tier"));
    assert!(now - T0 > 2 * RETENTION, "the clock moved two windows on");
    assert!(stored.rebased > 0, "chunks left the log");
    assert_eq!(
        stored.base.attributes.get("tier").map(|a| &a.value),
        Some(&AttrValue::String("gold".into())),
        "the base holds what the chunk that left did"
    );
    let oldest = stored.log.oldest_ms().unwrap();
    assert!(
        oldest > T0 + DAY_MS,
        "the message that set the tier left the log"
    );
    assert!(rebuilt.memberships[&4].member, "still in the tier audience");
}

/// A store written by log format 1 (events alone, the facts record rewritten with every change)
/// is read and rebuilt: its facts record is the base of the format 2 messages that follow,
/// its events are bare (read by event criteria only), and the fold equals the streamed
/// profile.
#[test]
fn a_store_of_log_format_1_is_read_and_rebuilt() {
    let catalog = catalog(7, 1);
    let mut streamed = ProfileState::new(1);
    let mut stored = Stored::default();
    let mut dict = Dictionary::default();
    let mut now = T0;
    let old = [
        Step::SetTier("gold"),
        Step::Email("a@x.io"),
        Step::Search("red shoes"),
        Step::AppVersion("1.9"),
        Step::Purchase(40),
    ];
    let new = [
        Step::Search("SHOE sale"),
        Step::AppVersion("2.3"),
        Step::DropEmail,
        Step::Purchase(25),
    ];
    let mut run = |steps: &[Step], format_1: bool, stored: &mut Stored| {
        for step in steps {
            now += DAY_MS / 4;
            let log = &mut stored.log;
            let mut inbound = message(step, now);
            if format_1 {
                // Format 1 predates inputs: its messages were stamped with none.
                inbound.set_input(None);
            }
            let changes = streamed.apply_logged(&inbound, now, RETENTION, &catalog, &mut |m| {
                if format_1 {
                    // What format 1 logged: the events real-time audiences read, one by one.
                    for e in m.events.iter().filter(|e| !e.outside_tier) {
                        log.append(&mut dict, e.at, &e.event);
                    }
                } else {
                    log.append_message(&mut dict, m);
                }
            });
            let deltas = streamed.evaluate(catalog.affected_by(&changes), &catalog, &ctx(now), now);
            stored.commit(&deltas, now, &dict);
            if format_1 {
                stored.base = ProfileFacts::decode(&encode_facts(&streamed)).unwrap();
            }
        }
    };
    run(&old, true, &mut stored);
    // Written by format 1: the head's and the chunks' version bytes say so.
    let mut head = stored.log.encode();
    head[0] = 1;
    stored.log = EventLog::decode(&head).unwrap();
    for record in stored.chunks.values_mut() {
        record[0] = 1;
    }
    run(&new, false, &mut stored);
    let (rebuilt, deltas) = settle_and_rebuild(&mut streamed, &mut stored, &catalog, &dict, now);
    let chunks: Vec<&[u8]> = stored.chunks.values().map(Vec::as_slice).collect();
    let units = log_units(&stored.log, &chunks, &dict).unwrap();
    assert!(matches!(
        units[0],
        audience_state::eventlog::LogUnit::BareEvent(..)
    ));
    assert!(deltas.is_empty(), "rebuild emitted {deltas:?}");
    assert_eq!(
        rebuilt.identities, streamed.identities,
        "the email left in format 2"
    );
    assert_eq!(
        (rebuilt.encode_core(), rebuilt.encode_derived()),
        (streamed.encode_core(), streamed.encode_derived())
    );
}

/// What a token limited to a workspace reads of a profile's activity: the fold of the logged
/// messages stamped with that workspace, and nothing of the others' or of unstamped ones.
#[test]
fn a_fold_over_one_workspace_counts_only_the_events_of_its_inputs() {
    let catalog = catalog(7, 1);
    let mut streamed = ProfileState::new(1);
    let mut log = EventLog::default();
    let mut dict = Dictionary::default();
    // input_at: T0 + 0 s is unstamped, + 1 s app-a, + 2 s app-b; a 3 s cycle.
    for i in 0..9 {
        let now = T0 + i * 1000;
        let search = message(&Step::Search("shoes"), now);
        streamed.apply_logged(&search, now, RETENTION, &catalog, &mut |m| {
            log.append_message(&mut dict, m)
        });
    }
    let now = T0 + 10_000;
    let units = || log_units(&log, &[], &dict).unwrap();
    let key = |p: &ProfileState| {
        p.history
            .iter()
            .filter(|(k, _)| !k.starts_with("m:"))
            .map(|(_, s)| s.count_between(0, i64::MAX))
            .sum::<u64>()
    };
    assert_eq!(key(&streamed), 9);
    let b = fold_in_workspaces(1, units(), &["app-b".into()], &catalog, now, RETENTION);
    assert_eq!(key(&b), 3, "{:?}", b.history);
    let both = fold_in_workspaces(
        1,
        units(),
        &["app-a".into(), "app-b".into()],
        &catalog,
        now,
        RETENTION,
    );
    assert_eq!(key(&both), 6);
    let none = fold_in_workspaces(1, units(), &["app-c".into()], &catalog, now, RETENTION);
    assert!(none.history.is_empty() && none.calculated.is_empty());
}
