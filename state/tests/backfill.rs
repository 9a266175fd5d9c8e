//! Backfill from the event log: a definition created after the events, then backfilled from
//! each profile's log, gives the members it would have had if it had existed before the first
//! event (within retention), for every family that reads events: attribute, product and
//! transaction conditions, counts, windows, dates, cart abandonment and calculated attributes.
//!
//! The reference is the same engine with the definitions in place from the start: two
//! profiles receive the same random history, one under the full catalog, one under an empty
//! one (its log written as the partition writes it: appended, sealed, pruned by retention);
//! the second is then rebuilt from its log. Both are compared at random later instants.

use audience_state::backfill::{BackfillPlan, Decisions};
use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::EvalContext;
use audience_state::eventlog::{Dictionary, EventLog, LogLimits};
use audience_state::model::*;
use audience_state::profile::ProfileState;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

const RETENTION: i64 = 30 * DAY_MS;
const T0: i64 = 1_700_000_000_000;

fn record(id: u64, criteria: serde_json::Value) -> AudienceRecord {
    AudienceRecord::active(id, format!("a{id}"), criteria)
}

fn calc_record(json: serde_json::Value) -> CalculatedAttributeRecord {
    let mut r: CalculatedAttributeRecord = serde_json::from_value(json).unwrap();
    r.revision = 3;
    r
}

fn date(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Every definition under test, one audience each, from the drawn parameters.
fn definitions(k: u32, days: i64, wait_minutes: u32) -> Vec<serde_json::Value> {
    vec![
        json!({"event": {"type": "custom_event", "name": "Search", "count": {"at_least": k},
            "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
            "time": {"within_last_days": days}}}),
        json!({"event": {"type": "custom_event", "name": "Search", "count": {"at_most": k},
            "attributes": [{"name": "query", "op": "exact_match", "value": "boots"}]}}),
        json!({"event": {"type": "commerce_event", "product_action": "purchase",
            "product": [{"name": "brand", "op": "exact_match", "value": "acme"}],
            "time": {"between_days_ago": [1, days + 2]}}}),
        json!({"event": {"type": "commerce_event", "product_action": "purchase",
            "transaction": [{"name": "total_amount", "op": "greater_than", "value": 20}],
            "count": {"exactly": k}}}),
        json!({"event": {"type": "custom_event", "name": "Search",
            "time": {"after": date(T0 + days * DAY_MS)}}}),
        json!({"cart_abandonment": {"wait_minutes": wait_minutes, "without": "purchase"}}),
        json!({"and": [
            {"event": {"type": "commerce_event", "product_action": "add_to_cart",
                "product": [{"name": "price", "op": "greater_than", "value": 10}]}},
            {"exclude": {"event": {"type": "custom_event", "name": "Search",
                "attributes": [{"name": "query", "op": "contains", "value": "sale"}],
                "time": {"within_last_days": 2}}}}
        ]}),
        json!({"calculated_attribute": {"name": "spend", "op": "greater_than_or_equal", "value": 30 * k}}),
        json!({"calculated_attribute": {"name": "searches", "op": "greater_than_or_equal", "value": k}}),
        json!({"calculated_attribute": {"name": "last query", "op": "contains", "value": "shoe"}}),
    ]
}

fn calculated(days: i64) -> Vec<CalculatedAttributeRecord> {
    vec![
        calc_record(
            json!({"name": "spend", "calculation": "sum", "field": "total_amount",
            "event": {"type": "commerce_event", "product_action": "purchase"}}),
        ),
        calc_record(
            json!({"name": "searches", "calculation": "count", "window_days": days,
            "event": {"type": "custom_event", "name": "search"}}),
        ),
        calc_record(
            json!({"name": "last query", "calculation": "last_value", "field": "query",
            "event": {"type": "custom_event", "name": "search"}}),
        ),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Search(&'static str),
    Purchase { brand: &'static str, amount: u32 },
    AddToCart { price: u32 },
    Other,
}

fn arb_step() -> impl Strategy<Value = Step> {
    let query = prop::sample::select(vec!["red shoes", "boots", "shoe sale", "hats", "SHOE"]);
    let brand = prop::sample::select(vec!["acme", "other"]);
    prop_oneof![
        query.prop_map(Step::Search),
        (brand, 1u32..60).prop_map(|(brand, amount)| Step::Purchase { brand, amount }),
        (1u32..30).prop_map(|price| Step::AddToCart { price }),
        Just(Step::Other),
    ]
}

fn event_of(step: &Step, at: i64) -> Event {
    let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let custom = |name: &str| EventKind::Custom {
        name: name.into(),
        custom_type: None,
    };
    let (kind, attributes) = match step {
        Step::Search(q) => (custom("Search"), attrs(&[("query", q)])),
        Step::Other => (custom("Open Menu"), attrs(&[("where", "home")])),
        Step::Purchase { brand, amount } => (
            EventKind::Commerce {
                product_action: Some("purchase".into()),
                products: vec![Product {
                    id: Some("p1".into()),
                    name: Some("thing".into()),
                    brand: Some(brand.to_string()),
                    category: None,
                    variant: None,
                    price: Some(*amount as f64),
                    quantity: Some(1.0),
                }],
                total_amount: Some(*amount as f64),
                transaction_id: Some(format!("t{at}")),
            },
            BTreeMap::new(),
        ),
        Step::AddToCart { price } => (
            EventKind::Commerce {
                product_action: Some("add_to_cart".into()),
                products: vec![Product {
                    id: Some("p2".into()),
                    name: None,
                    brand: None,
                    category: None,
                    variant: None,
                    price: Some(*price as f64),
                    quantity: Some(2.0),
                }],
                total_amount: None,
                transaction_id: None,
            },
            BTreeMap::new(),
        ),
    };
    Event {
        timestamp_ms: at,
        kind,
        attributes,
    }
}

/// A profile's log as the store holds it: the head in memory, the sealed chunks by number.
#[derive(Default)]
struct StoredLog {
    log: EventLog,
    chunks: BTreeMap<u32, Vec<u8>>,
    /// Something left the log (retention, bounds): the partition folds it into the profile's
    /// base, which definitions created later do not read.
    dropped: bool,
}

impl StoredLog {
    /// Rebuilds what `plan` reads of `profile` from this log, as of `now`.
    fn backfill(
        &self,
        plan: &BackfillPlan,
        profile: &mut ProfileState,
        dict: &Dictionary,
        now: i64,
    ) {
        let chunks: Vec<&[u8]> = self.chunks.values().map(Vec::as_slice).collect();
        let decisions = &mut Decisions::default();
        plan.rebuild(profile, &self.log, &chunks, dict, decisions, now, RETENTION)
            .unwrap();
    }

    /// What the partition does at commit: enforce retention and bounds, write the changes.
    fn commit(&mut self, now: i64, limits: LogLimits) {
        self.log.enforce(now - RETENTION, limits);
        let writes = self.log.take_writes();
        self.dropped |= writes.dropped_any();
        for (seq, bytes) in writes.put_chunks {
            self.chunks.insert(seq, bytes);
        }
        for seq in writes.delete_chunks {
            self.chunks.remove(&seq);
        }
    }
}

fn members(profile: &ProfileState, catalog: &Catalog, now: i64) -> Vec<u64> {
    let ctx = EvalContext {
        now,
        retention_ms: RETENTION,
    };
    let mut ids: Vec<u64> = catalog.active_ids().collect();
    ids.sort();
    ids.into_iter()
        .filter(|id| {
            catalog
                .active(*id)
                .unwrap()
                .compiled
                .evaluate(profile, &ctx)
                .matched
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn defined_after_the_events_then_backfilled_equals_defined_before(
        steps in proptest::collection::vec((0i64..45 * DAY_MS, arb_step()), 0..40),
        k in 1u32..4,
        days in 1i64..10,
        wait_minutes in 1u32..(2 * 24 * 60),
        clock_moves in proptest::collection::vec(0i64..3 * DAY_MS, 1..5),
    ) {
        let records: Vec<AudienceRecord> = definitions(k, days, wait_minutes)
            .into_iter()
            .enumerate()
            .map(|(i, c)| record(i as u64 + 1, c))
            .collect();
        let full = Catalog::build_full(1, records.clone(), vec![], calculated(days));
        for r in &records {
            prop_assert!(full.active(r.id).is_some(), "audience {} compiles", r.id);
        }
        let empty = Catalog::build_full(1, vec![], vec![], vec![]);

        let mut sorted = steps.clone();
        sorted.sort_by_key(|(t, _)| *t);
        let mut before = ProfileState::new(1);
        let mut after = ProfileState::new(1);
        let mut stored = StoredLog::default();
        let mut dict = Dictionary::default();
        let limits = LogLimits::default();
        let mut now = T0;
        for (offset, step) in &sorted {
            let at = T0 + offset;
            now = now.max(at);
            let message = Inbound::Batch(Batch {
                mpid: 1,
                events: vec![event_of(step, at)],
                ..Default::default()
            });
            before.apply(&message, now, RETENTION, &full);
            let log = &mut stored.log;
            after.apply_logged(&message, now, RETENTION, &empty, &mut |m| log.append_message(&mut dict, m));
            stored.commit(now, limits);
        }

        // The definitions arrive now: rebuild what they read from the log.
        let audiences: Vec<u64> = records.iter().map(|r| r.id).collect();
        let keys: Vec<String> = full.calculated_defs().map(|d| d.key.clone()).collect();
        let plan = BackfillPlan::new(&full, &audiences, &keys, |_| false);
        stored.backfill(&plan, &mut after, &dict, now);

        // Audiences 8 and 10 read calculated attributes over all time (spend, last query): once
        // events left the log (its oldest chunks past retention), a definition created after
        // them counts from the first retained event (README: "Backfill"). Event criteria and
        // windowed attributes look no further back than retention, and must agree.
        let lifetime = |ids: Vec<u64>| -> Vec<u64> {
            ids.into_iter()
                .filter(|id| !(stored.dropped && [8, 10].contains(id)))
                .collect()
        };
        let mut t = now;
        for step in clock_moves {
            t += step;
            prop_assert_eq!(
                lifetime(members(&after, &full, t)),
                lifetime(members(&before, &full, t)),
                "at {}",
                t
            );
        }
    }
}

/// The catalog of one audience (searched for shoes in the last 7 days), the empty one
/// streaming had before it, and the audience's backfill plan.
fn shoe_searchers() -> (Catalog, Catalog, BackfillPlan) {
    let criteria = json!({"event": {"type": "custom_event", "name": "Search",
        "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
        "time": {"within_last_days": 7}}});
    let full = Catalog::build_full(1, vec![record(1, criteria)], vec![], vec![]);
    let empty = Catalog::build_full(1, vec![], vec![], vec![]);
    let plan = BackfillPlan::new(&full, &[1], &[], |_| false);
    (full, empty, plan)
}

/// A profile that searched for each query at its instant (processed then), and its log as the
/// partition writes it.
fn streamed_searches(
    searches: &[(&'static str, i64)],
    catalog: &Catalog,
) -> (ProfileState, StoredLog, Dictionary) {
    let mut profile = ProfileState::new(1);
    let mut stored = StoredLog::default();
    let mut dict = Dictionary::default();
    for &(query, at) in searches {
        let message = Inbound::Batch(Batch {
            mpid: 1,
            events: vec![event_of(&Step::Search(query), at)],
            ..Default::default()
        });
        let log = &mut stored.log;
        profile.apply_logged(&message, at, RETENTION, catalog, &mut |m| {
            log.append_message(&mut dict, m)
        });
        stored.commit(at, LogLimits::default());
    }
    (profile, stored, dict)
}

/// A definition made after the events finds them, where streaming alone (the rule of the
/// previous engine) would have found nothing.
#[test]
fn a_new_attribute_condition_audience_sees_the_events_before_it() {
    let (full, empty, plan) = shoe_searchers();
    let searches = [
        ("hats", T0),
        ("red shoes", T0 + DAY_MS),
        ("boots", T0 + 2 * DAY_MS),
    ];
    let (mut profile, stored, dict) = streamed_searches(&searches, &empty);
    let now = T0 + 3 * DAY_MS;
    assert!(members(&profile, &full, now).is_empty(), "no series yet");
    stored.backfill(&plan, &mut profile, &dict, now);
    assert_eq!(members(&profile, &full, now), vec![1]);
    // The shoe search was a day after T0: seven days later it is out of the window.
    assert!(members(&profile, &full, T0 + 8 * DAY_MS + 1).is_empty());
}

/// A rebuild that finds none of the plan's events changes nothing the plan rebuilds (the
/// partition then leaves the profile as stored); one that finds them does.
#[test]
fn a_rebuild_without_the_plans_events_changes_nothing() {
    let (_, empty, plan) = shoe_searchers();
    for (query, changes) in [("hats", false), ("red shoes", true)] {
        let (mut profile, stored, dict) = streamed_searches(&[(query, T0)], &empty);
        let before = plan.rebuilt_state(&profile);
        stored.backfill(&plan, &mut profile, &dict, T0);
        assert_eq!(plan.rebuilt_state(&profile) != before, changes, "{query}");
    }
}
