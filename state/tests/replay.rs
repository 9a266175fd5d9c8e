//! Replay: a profile rebuilt from its logs alone (facts record, event log, membership
//! history), without its stored state, equals the profile streaming built: the same facts,
//! event series, calculated attributes, memberships and versions; and evaluating it emits no
//! delta.
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
use audience_state::replay::{audiences_to_evaluate, logged_events, rebuild_profile};
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
    let records: Vec<AudienceRecord> = definitions
        .into_iter()
        .enumerate()
        .map(|(i, c)| record(i as u64 + 1, c))
        .collect();
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

fn message(step: &Step, at: i64) -> Inbound {
    let mut batch = Batch {
        mpid: 1,
        timestamp_ms: Some(at),
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
    facts: Vec<u8>,
    members: BTreeMap<AudienceId, Vec<Change>>,
}

impl Stored {
    fn commit(&mut self, profile: &ProfileState, deltas: &[Delta], now: i64) {
        self.log.enforce(now - RETENTION, LogLimits::default());
        let writes = self.log.take_writes();
        for (seq, bytes) in writes.put_chunks {
            self.chunks.insert(seq, bytes);
        }
        for seq in writes.delete_chunks {
            self.chunks.remove(&seq);
        }
        self.facts = encode_facts(profile);
        for d in deltas {
            self.members.entry(d.audience_id).or_default().push(Change {
                version: d.version,
                kind: d.kind,
                at_ms: d.processing_time_ms,
            });
        }
    }
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
            stored.commit(&streamed, &deltas, now);
            let log = &mut stored.log;
            let changes = streamed.apply_logged(&message(step, now), now, RETENTION, &catalog,
                &mut |t, e| log.append(&mut dict, t, e));
            let affected = catalog.affected_by(&changes);
            let deltas = streamed.evaluate(affected, &catalog, &ctx(now), changes.event_time_ms);
            stored.commit(&streamed, &deltas, now);
        }
        // Settle: later, every audience evaluated, as a replay evaluates them.
        now += settle;
        let all = audiences_to_evaluate(&catalog, &streamed);
        let deltas = streamed.evaluate(all, &catalog, &ctx(now), now);
        streamed.prune(now, RETENTION, &catalog);
        stored.commit(&streamed, &deltas, now);

        // Rebuild from the logs alone.
        let chunks: Vec<&[u8]> = stored.chunks.values().map(Vec::as_slice).collect();
        let events = logged_events(&stored.log, &chunks, &dict).unwrap();
        let facts = ProfileFacts::decode(&stored.facts).unwrap();
        let mut rebuilt = rebuild_profile(1, facts, events, &stored.members, &catalog, now, RETENTION);
        let all = audiences_to_evaluate(&catalog, &rebuilt);
        let replay_deltas = rebuilt.evaluate(all, &catalog, &ctx(now), now);

        prop_assert!(replay_deltas.is_empty(), "replay emitted {:?}", replay_deltas);
        prop_assert_eq!(&rebuilt.memberships, &streamed.memberships);
        prop_assert_eq!(encode_facts(&rebuilt), encode_facts(&streamed));
        prop_assert_eq!(&rebuilt.history, &streamed.history);
        prop_assert_eq!(&rebuilt.calculated, &streamed.calculated);
        prop_assert_eq!(&rebuilt.due, &streamed.due);
        prop_assert_eq!(rebuilt.encode(), streamed.encode(), "the whole stored state");
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
    let mut rebuilt = rebuild_profile(1, facts, vec![], &members, &catalog, T0 + 2, RETENTION);
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
