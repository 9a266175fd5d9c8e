//! The evaluator against a reference written plainly from a profile's full history, over random
//! histories, definitions and clock moves; and the string operators of the seed, one by one.

use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::{compile, glob_match, parse_definition, EvalContext};
use audience_state::model::*;
use audience_state::profile::ProfileState;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

const RETENTION: i64 = 30 * DAY_MS;
const T0: i64 = 1_700_000_000_000;

fn catalog(criteria: serde_json::Value) -> Catalog {
    Catalog::build(1, vec![record(1, criteria)])
}

fn custom(name: &str, kind: &str, at: i64, color: &str) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Custom {
            name: name.into(),
            custom_type: Some(kind.into()),
        },
        attributes: BTreeMap::from([("Color".to_string(), color.to_string())]),
    }
}

fn batch_of(mpid: Mpid, events: Vec<Event>, attrs: Vec<(String, AttrValue)>) -> Inbound {
    Inbound::Batch(Batch {
        mpid,
        events,
        user_attributes: attrs,
        ..Default::default()
    })
}

fn member_at(profile: &ProfileState, catalog: &Catalog, now: i64) -> bool {
    let a = catalog.active(1).unwrap();
    a.compiled
        .evaluate(
            profile,
            &EvalContext {
                now,
                retention_ms: RETENTION,
            },
        )
        .matched
}

// ------------------------------------------------------------------ reference evaluator

#[derive(Debug, Clone)]
struct Window {
    kind: u8,
    n: i64,
    m: i64,
}

/// Count of events named `name` (any custom type), color containing `color` when given, at `now`.
fn reference_count(
    history: &[(i64, String, String)],
    name: &str,
    color: Option<&str>,
    w: &Window,
    now: i64,
) -> u64 {
    history
        .iter()
        .filter(|(t, n, c)| {
            n.eq_ignore_ascii_case(name)
                && color.is_none_or(|want| c.to_lowercase().contains(want))
                && *t <= now
                && *t >= now - RETENTION
                && match w.kind {
                    0 => true,
                    1 => *t >= now - w.n * DAY_MS,
                    2 => *t >= now - w.m * DAY_MS && *t <= now - w.n * DAY_MS,
                    3 => *t < day_start(T0) + w.n * DAY_MS,
                    4 => *t >= day_start(T0) + w.n * DAY_MS,
                    _ => {
                        *t >= day_start(T0) + w.n * DAY_MS
                            && *t < day_start(T0) + (w.m + 1) * DAY_MS
                    }
                }
        })
        .count() as u64
}

fn day_start(t: i64) -> i64 {
    t.div_euclid(DAY_MS) * DAY_MS
}

fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

fn window_json(w: &Window) -> Option<serde_json::Value> {
    let base = day_start(T0);
    match w.kind {
        0 => None,
        1 => Some(json!({"within_last_days": w.n})),
        2 => Some(json!({"between_days_ago": [w.n, w.m]})),
        3 => Some(json!({"before": date(base + w.n * DAY_MS)})),
        4 => Some(json!({"after": date(base + w.n * DAY_MS)})),
        _ => Some(json!({"between": [date(base + w.n * DAY_MS), date(base + w.m * DAY_MS)]})),
    }
}

fn arb_window() -> impl Strategy<Value = Window> {
    (0u8..6, 1i64..10, 0i64..10).prop_map(|(kind, n, extra)| Window {
        kind,
        n,
        m: n + extra + 1,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn incremental_engine_agrees_with_the_reference(
        events in proptest::collection::vec((0i64..20 * DAY_MS, 0usize..2, 0usize..3), 0..25),
        window in arb_window(),
        op in 0u8..3,
        k in 0u64..4,
        with_color in any::<bool>(),
        clock_moves in proptest::collection::vec(0i64..4 * DAY_MS, 1..6),
    ) {
        let names = ["Viewed Item", "viewed item"];
        let colors = ["Blue shirt", "RED", "navy BLUE"];
        let count = match op { 0 => json!({"at_least": k}), 1 => json!({"at_most": k}), _ => json!({"exactly": k}) };
        let mut ev = json!({"type": "custom_event", "name": "VIEWED ITEM", "count": count});
        if let Some(w) = window_json(&window) { ev["time"] = w; }
        if with_color { ev["attributes"] = json!([{"name": "color", "op": "contains", "value": "Blue"}]); }
        let catalog = catalog(json!({"event": ev}));

        let mut sorted = events.clone();
        sorted.sort();
        let mut profile = ProfileState::new(1);
        let mut history = Vec::new();
        let mut now = T0;
        for (offset, name, color) in &sorted {
            let at = T0 + offset;
            now = now.max(at);
            let e = custom(names[*name], "navigation", at, colors[*color]);
            history.push((at, names[*name].to_string(), colors[*color].to_string()));
            profile.apply(&batch_of(1, vec![e], vec![]), now, RETENTION, &catalog);
        }
        let color = with_color.then_some("blue");
        let mut deltas_membership = false;
        let mut ctx_now = now;
        let mut evaluated = profile.clone();
        for step in clock_moves {
            ctx_now += step;
            let expected_count = reference_count(&history, "viewed item", color, &window, ctx_now);
            let expected = match op { 0 => expected_count >= k, 1 => expected_count <= k, _ => expected_count == k };
            prop_assert_eq!(member_at(&profile, &catalog, ctx_now), expected, "count {} at {}", expected_count, ctx_now);

            // The next change time is honest: nothing changes before it.
            let ctx = EvalContext { now: ctx_now, retention_ms: RETENTION };
            let outcome = catalog.active(1).unwrap().compiled.evaluate(&profile, &ctx);
            if let Some(next) = outcome.next_change {
                prop_assert!(next > ctx_now);
                prop_assert_eq!(member_at(&profile, &catalog, next - 1), outcome.matched);
            } else {
                prop_assert_eq!(member_at(&profile, &catalog, ctx_now + 40 * DAY_MS), outcome.matched);
            }
            // The profile's own bookkeeping emits a delta exactly when membership flips.
            let deltas = evaluated.evaluate([1], &catalog, &ctx, ctx_now);
            if expected != deltas_membership {
                prop_assert_eq!(deltas.len(), 1);
                prop_assert_eq!(deltas[0].kind, if expected { DeltaKind::Added } else { DeltaKind::Dropped });
                deltas_membership = expected;
            } else {
                prop_assert!(deltas.is_empty());
            }
        }
    }

    #[test]
    fn pattern_matches_like_a_regex(text in "[abc]{0,8}", pattern in "[abc?*]{0,6}") {
        let regex_src = format!("^{}$", pattern.chars().map(|c| match c { '*' => ".*".to_string(), '?' => ".".to_string(), c => c.to_string() }).collect::<String>());
        let expected = regex_lite_match(&regex_src, &text);
        prop_assert_eq!(glob_match(&pattern, &text), expected);
    }
}

/// A tiny backtracking matcher for `^[abc.*]*$` regexes (".*" and "."), as the oracle.
fn regex_lite_match(re: &str, text: &str) -> bool {
    let re: Vec<char> = re
        .trim_start_matches('^')
        .trim_end_matches('$')
        .chars()
        .collect();
    fn go(re: &[char], t: &[char]) -> bool {
        if re.is_empty() {
            return t.is_empty();
        }
        if re.len() >= 2 && re[1] == '*' {
            return (0..=t.len()).any(|i| {
                t[..i].iter().all(|&c| re[0] == '.' || c == re[0]) && go(&re[2..], &t[i..])
            });
        }
        !t.is_empty() && (re[0] == '.' || re[0] == t[0]) && go(&re[1..], &t[1..])
    }
    let t: Vec<char> = text.chars().collect();
    go(&re, &t)
}

fn attr_member(op: &str, value: serde_json::Value, attr: Option<AttrValue>) -> bool {
    let catalog = catalog(json!({"user_attribute": {"name": "Movies", "op": op, "value": value}}));
    let mut p = ProfileState::new(1);
    let attrs = attr
        .map(|a| vec![("movies".to_string(), a)])
        .unwrap_or_default();
    p.apply(&batch_of(1, vec![], attrs), T0, RETENTION, &catalog);
    member_at(&p, &catalog, T0)
}

#[test]
fn string_operators_follow_the_seed() {
    let s = |v: &str| Some(AttrValue::String(v.into()));
    let list = |v: &[&str]| Some(AttrValue::List(v.iter().map(|x| x.to_string()).collect()));
    // Contains / does not contain: substrings, case-insensitive.
    assert!(attr_member("contains", json!("blue"), s("Blue Shirt")));
    assert!(!attr_member("does_not_contain", json!("BLUE"), s("blue")));
    assert!(attr_member("does_not_contain", json!("blue"), s("red")));
    assert!(
        attr_member("does_not_contain", json!("blue"), None),
        "absent does not contain"
    );
    // Exact match / does not match: whole string.
    assert!(attr_member("exact_match", json!("blue"), s("BLUE")));
    assert!(!attr_member("exact_match", json!("blue"), s("blue shirt")));
    assert!(attr_member(
        "does_not_match",
        json!("blue"),
        s("blue shirt")
    ));
    // Pattern: * and ?.
    assert!(attr_member("pattern", json!("bl?e"), s("Blue")));
    assert!(attr_member("pattern", json!("b*e"), s("blue")));
    assert!(!attr_member("pattern", json!("b?e"), s("blue")));
    // Includes / does not include: a whole list item.
    let movies = list(&["Chicago", "Chicago Cubs Story"]);
    assert!(attr_member("includes", json!("chicago"), movies.clone()));
    assert!(!attr_member(
        "includes",
        json!("Chicago Cubs"),
        movies.clone()
    ));
    assert!(attr_member(
        "does_not_include",
        json!("Chicago Cubs"),
        movies.clone()
    ));
    // Partial match: a substring of an item.
    assert!(attr_member("partial_match", json!("cubs"), movies.clone()));
    assert!(!attr_member("partial_match", json!("bears"), movies));
    // Exists: present with no value exists.
    assert!(attr_member("exists", json!(null), Some(AttrValue::Null)));
    assert!(!attr_member("exists", json!(null), None));
    assert!(attr_member("not_exists", json!(null), None));
    // Numbers.
    assert!(attr_member(
        "greater_than",
        json!(5),
        Some(AttrValue::Number(6.0))
    ));
    assert!(attr_member("greater_than", json!(5), s("7")));
    assert!(!attr_member(
        "greater_than",
        json!(5),
        Some(AttrValue::Number(5.0))
    ));
    assert!(attr_member(
        "greater_than_or_equal",
        json!(5),
        Some(AttrValue::Number(5.0))
    ));
    assert!(attr_member(
        "less_than",
        json!(5),
        Some(AttrValue::Number(-1.0))
    ));
    assert!(attr_member(
        "equals",
        json!(5),
        Some(AttrValue::Number(5.0))
    ));
    assert!(attr_member(
        "between",
        json!([1, 3]),
        Some(AttrValue::Number(3.0))
    ));
    assert!(attr_member(
        "equals",
        json!(true),
        Some(AttrValue::Bool(true))
    ));
}

#[test]
fn date_windows_follow_the_seed() {
    // Before is exclusive, after inclusive, between inclusive of both days.
    let sept9 = chrono::NaiveDate::from_ymd_opt(2018, 9, 9)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let now = sept9 + 5 * DAY_MS;
    let cases = [
        (json!({"before": "2018-09-09"}), sept9 - 1, true),
        (json!({"before": "2018-09-09"}), sept9, false),
        (json!({"after": "2018-09-09"}), sept9, true),
        (json!({"after": "2018-09-09"}), sept9 - 1, false),
        (json!({"on": "2018-09-09"}), sept9 + DAY_MS - 1, true),
        (json!({"on": "2018-09-09"}), sept9 + DAY_MS, false),
        (
            json!({"between": ["2018-09-07", "2018-09-09"]}),
            sept9 - 2 * DAY_MS,
            true,
        ),
        (
            json!({"between": ["2018-09-07", "2018-09-09"]}),
            sept9 + DAY_MS - 1,
            true,
        ),
        (
            json!({"between": ["2018-09-07", "2018-09-09"]}),
            sept9 + DAY_MS,
            false,
        ),
    ];
    for (time, at, expected) in cases {
        let catalog = catalog(json!({"event": {"name": "x", "time": time}}));
        let mut p = ProfileState::new(1);
        p.apply(
            &batch_of(1, vec![custom("x", "other", at, "")], vec![]),
            now,
            RETENTION,
            &catalog,
        );
        assert_eq!(member_at(&p, &catalog, now), expected, "{time} at {at}");
    }
    // Recency: a day is 24 hours before now; the seed's example (calculated 1pm Sept 9,
    // between 4 and 6 days ago: earliest 1pm Sept 3, latest 1pm Sept 5).
    let one_pm = sept9 + 13 * 3_600_000;
    let catalog = catalog(json!({"event": {"name": "x", "time": {"between_days_ago": [4, 6]}}}));
    for (at, expected) in [
        (one_pm - 6 * DAY_MS, true),
        (one_pm - 6 * DAY_MS - 1, false),
        (one_pm - 4 * DAY_MS, true),
        (one_pm - 4 * DAY_MS + 1, false),
    ] {
        let mut p = ProfileState::new(1);
        p.apply(
            &batch_of(1, vec![custom("x", "other", at, "")], vec![]),
            one_pm,
            RETENTION,
            &catalog,
        );
        assert_eq!(member_at(&p, &catalog, one_pm), expected, "event at {at}");
    }
}

#[test]
fn exclude_and_or_compose() {
    let c = json!({"and": [
        {"or": [{"identity": {"type": "email"}}, {"identity": {"type": "customer_id", "op": "pattern", "value": "vip-*"}}]},
        {"exclude": {"user_attribute": {"name": "banned", "op": "is_true"}}}
    ]});
    let catalog = catalog(c);
    let mut p = ProfileState::new(1);
    let mut b = Batch {
        mpid: 1,
        ..Default::default()
    };
    b.user_identities = vec![("customer_id".into(), "VIP-7".into())];
    p.apply(&Inbound::Batch(b), T0, RETENTION, &catalog);
    assert!(member_at(&p, &catalog, T0));
    p.apply(
        &batch_of(1, vec![], vec![("Banned".into(), AttrValue::Bool(true))]),
        T0,
        RETENTION,
        &catalog,
    );
    assert!(!member_at(&p, &catalog, T0));
}

#[test]
fn definitions_are_refused_with_the_field_named() {
    let bad = [
        (
            json!({"and": [{"event": {"name": "x", "count": {"at_least": -1}}}]}),
            "criteria.and[0].event.count.at_least",
        ),
        (
            json!({"event": {"type": "commerce_event", "product_action": "steal"}}),
            "criteria.event.product_action",
        ),
        (
            json!({"event": {"name": "x", "time": {"between_days_ago": [5, 2]}}}),
            "criteria.event.time.between_days_ago",
        ),
        (
            json!({"user_attribute": {"name": "", "op": "exists"}}),
            "criteria.user_attribute.name",
        ),
        (
            json!({"identity": {"type": "email", "op": "greater_than", "value": 3}}),
            "criteria.identity.op",
        ),
    ];
    for (c, field) in bad {
        let err = parse_definition(&c).and_then(|d| compile(&d)).unwrap_err();
        assert_eq!(err.field, field, "{c}: {err}");
        assert!(!err.reason.is_empty());
    }
}

#[test]
fn the_index_only_picks_audiences_a_change_can_affect() {
    let records = (1..=3).map(|id| {
        record(
            id,
            match id {
                1 => json!({"event": {"name": "Purchase"}}),
                2 => json!({"user_attribute": {"name": "Tier", "op": "exists"}}),
                _ => json!({"identity": {"type": "email", "op": "not_exists"}}),
            },
        )
    });
    let catalog = Catalog::build(1, records);
    let mut p = ProfileState::new(9);
    let changes = p.apply(
        &batch_of(9, vec![custom("purchase", "transaction", T0, "")], vec![]),
        T0,
        RETENTION,
        &catalog,
    );
    // A new profile: what it touched, plus what matches an empty profile (no email).
    assert_eq!(
        catalog
            .affected_by(&changes)
            .into_iter()
            .collect::<Vec<_>>(),
        vec![1, 3]
    );
    let changes = p.apply(
        &batch_of(
            9,
            vec![],
            vec![("tier".into(), AttrValue::String("x".into()))],
        ),
        T0,
        RETENTION,
        &catalog,
    );
    assert_eq!(
        catalog
            .affected_by(&changes)
            .into_iter()
            .collect::<Vec<_>>(),
        vec![2]
    );
    let changes = p.apply(
        &batch_of(
            9,
            vec![],
            vec![("tier".into(), AttrValue::String("x".into()))],
        ),
        T0,
        RETENTION,
        &catalog,
    );
    assert!(
        catalog.affected_by(&changes).is_empty(),
        "an unchanged value touches nothing"
    );
}

fn batch_with(mpid: Mpid, f: impl FnOnce(&mut Batch)) -> Inbound {
    let mut b = Batch {
        mpid,
        ..Default::default()
    };
    f(&mut b);
    Inbound::Batch(b)
}

#[test]
fn consent_criteria_read_gdpr_purposes_and_the_ccpa_opt_out() {
    let consented = catalog(
        json!({"consent": {"regulation": "gdpr", "purpose": "Marketing", "state": "consented"}}),
    );
    let no_state = catalog(
        json!({"consent": {"regulation": "GDPR", "purpose": "marketing", "state": "no_state"}}),
    );
    let opted_out = catalog(json!({"consent": {"regulation": "ccpa", "state": "opted_out"}}));
    let mut p = ProfileState::new(1);
    p.apply(&batch_of(1, vec![], vec![]), T0, RETENTION, &consented);
    assert!(!member_at(&p, &consented, T0));
    assert!(member_at(&p, &no_state, T0));
    assert!(!member_at(&p, &opted_out, T0));
    let changes = p.apply(
        &batch_with(1, |b| {
            let mut c = ConsentState::default();
            c.gdpr.insert(
                "marketing".into(),
                GdprConsent {
                    consented: true,
                    timestamp_ms: Some(T0),
                    document: None,
                },
            );
            c.ccpa_data_sale_opt_out = Some(true);
            b.consent = Some(c);
        }),
        T0,
        RETENTION,
        &consented,
    );
    assert!(changes.consent);
    assert_eq!(
        consented
            .affected_by(&changes)
            .into_iter()
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert!(member_at(&p, &consented, T0));
    assert!(!member_at(&p, &no_state, T0));
    assert!(member_at(&p, &opted_out, T0));
    for (bad, field) in [
        (
            json!({"consent": {"regulation": "gdpr", "state": "consented"}}),
            "criteria.consent.purpose",
        ),
        (
            json!({"consent": {"regulation": "ccpa", "state": "consented"}}),
            "criteria.consent.state",
        ),
        (
            json!({"consent": {"regulation": "lgpd", "state": "no_state"}}),
            "criteria.consent.regulation",
        ),
    ] {
        let err = parse_definition(&bad)
            .and_then(|d| compile(&d))
            .unwrap_err();
        assert_eq!(err.field, field, "{bad}");
    }
}

#[test]
fn device_criteria_compare_versions_part_by_part() {
    let newer = catalog(
        json!({"device": {"field": "os_version", "op": "version_greater_than_or_equal", "value": "16.4"}}),
    );
    let carrier = catalog(
        json!({"device": {"field": "network_carrier", "op": "contains", "value": "mobile"}}),
    );
    let app = catalog(
        json!({"device": {"field": "app_version", "op": "version_less_than", "value": "2.10"}}),
    );
    let with_device = |os: &str, carrier_name: &str, app_version: &str| {
        let mut p = ProfileState::new(1);
        let changes = p.apply(
            &batch_with(1, |b| {
                b.device_info = Some(DeviceInfo {
                    os_version: Some(os.into()),
                    network_carrier: Some(carrier_name.into()),
                    ..Default::default()
                });
                b.app_version = Some(app_version.into());
            }),
            T0,
            RETENTION,
            &newer,
        );
        assert!(changes.device);
        p
    };
    let p = with_device("16.10", "T-Mobile", "2.9.1");
    assert!(member_at(&p, &newer, T0), "16.10 >= 16.4");
    assert!(member_at(&p, &carrier, T0));
    assert!(member_at(&p, &app, T0), "2.9.1 < 2.10");
    let p = with_device("16.3.9", "Verizon", "2.10");
    assert!(!member_at(&p, &newer, T0));
    assert!(!member_at(&p, &carrier, T0));
    assert!(!member_at(&p, &app, T0));
    let err = parse_definition(&json!({"device": {"field": "cpu", "op": "exists"}}))
        .and_then(|d| compile(&d))
        .unwrap_err();
    assert_eq!(err.field, "criteria.device.field");
    let err = parse_definition(&json!({"device": {"field": "os_version", "op": "version_greater_than", "value": "latest"}}))
        .and_then(|d| compile(&d))
        .unwrap_err();
    assert_eq!(err.field, "criteria.device.value");
}

#[test]
fn first_seen_by_recency_leaves_when_time_passes() {
    let recent = catalog(json!({"first_seen": {"within_last_days": 3}}));
    let mut p = ProfileState::new(1);
    let changes = p.apply(&batch_of(1, vec![], vec![]), T0, RETENTION, &recent);
    assert_eq!(
        recent.affected_by(&changes).into_iter().collect::<Vec<_>>(),
        vec![1]
    );
    let ctx = EvalContext {
        now: T0,
        retention_ms: RETENTION,
    };
    let outcome = recent.active(1).unwrap().compiled.evaluate(&p, &ctx);
    assert!(outcome.matched);
    assert_eq!(outcome.next_change, Some(T0 + 3 * DAY_MS + 1));
    assert!(member_at(&p, &recent, T0 + 3 * DAY_MS));
    assert!(!member_at(&p, &recent, T0 + 3 * DAY_MS + 1));
    // By date: first seen on or after the day of T0, for ever (no retention on profile data).
    let since = catalog(json!({"first_seen": {"after": date(T0)}}));
    assert!(member_at(&p, &since, T0 + 400 * DAY_MS));
}

fn record(id: u64, criteria: serde_json::Value) -> AudienceRecord {
    AudienceRecord::active(id, format!("a{id}"), criteria)
}

#[test]
fn audience_membership_criteria_follow_the_referenced_audience() {
    let catalog = Catalog::build(
        1,
        vec![
            // Referrers first in the list: evaluation order must not depend on it.
            record(1, json!({"audience": {"id": 3, "member": false}})),
            record(
                2,
                json!({"and": [{"audience": {"id": 3}}, {"identity": {"type": "email"}}]}),
            ),
            record(
                3,
                json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
            ),
        ],
    );
    let ctx = EvalContext {
        now: T0,
        retention_ms: RETENTION,
    };
    let mut p = ProfileState::new(5);
    let changes = p.apply(
        &batch_with(5, |b| {
            b.user_attributes = vec![("tier".into(), AttrValue::String("gold".into()))];
            b.user_identities = vec![("email".into(), "a@b.c".into())];
        }),
        T0,
        RETENTION,
        &catalog,
    );
    let affected: Vec<u64> = catalog.affected_by(&changes).into_iter().collect();
    let mut added: Vec<u64> = p
        .evaluate(affected, &catalog, &ctx, T0)
        .iter()
        .map(|d| d.audience_id)
        .collect();
    added.sort();
    assert_eq!(
        added,
        vec![2, 3],
        "1 (not in 3) was matched by the empty profile, then not"
    );
    // Leaving 3 re-evaluates its dependents in the same evaluation.
    let changes = p.apply(
        &batch_with(5, |b| {
            b.user_attributes = vec![("tier".into(), AttrValue::String("silver".into()))]
        }),
        T0,
        RETENTION,
        &catalog,
    );
    let affected: Vec<u64> = catalog.affected_by(&changes).into_iter().collect();
    assert_eq!(affected, vec![3]);
    let deltas: Vec<(u64, DeltaKind)> = p
        .evaluate(affected, &catalog, &ctx, T0)
        .iter()
        .map(|d| (d.audience_id, d.kind))
        .collect();
    assert_eq!(
        deltas,
        vec![
            (3, DeltaKind::Dropped),
            (1, DeltaKind::Added),
            (2, DeltaKind::Dropped)
        ]
    );
}

#[test]
fn audience_references_are_checked() {
    let catalog = Catalog::build(
        1,
        vec![
            record(1, json!({"user_attribute": {"name": "x", "op": "exists"}})),
            record(2, json!({"audience": {"id": 1}})),
        ],
    );
    let compiled = |c: serde_json::Value| compile(&parse_definition(&c).unwrap()).unwrap();
    assert!(catalog
        .check_references(9, &compiled(json!({"audience": {"id": 1}})))
        .is_ok());
    let missing = catalog
        .check_references(9, &compiled(json!({"audience": {"id": 7}})))
        .unwrap_err();
    assert!(
        missing.reason.contains("audience 7 does not exist"),
        "{missing}"
    );
    let nested = catalog
        .check_references(9, &compiled(json!({"audience": {"id": 2}})))
        .unwrap_err();
    assert!(
        nested
            .reason
            .contains("only an audience without nested criteria"),
        "{nested}"
    );
    let referenced = catalog
        .check_references(1, &compiled(json!({"audience": {"id": 2}})))
        .unwrap_err();
    assert!(
        referenced.reason.contains("nested") || referenced.reason.contains("referenced"),
        "{referenced}"
    );
    assert_eq!(
        catalog
            .referrers(1)
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn explain_shows_each_node_with_its_values_and_next_change() {
    let catalog = catalog(json!({"and": [
        {"event": {"name": "Search", "count": {"at_least": 2}, "time": {"within_last_days": 7}}},
        {"exclude": {"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}}
    ]}));
    let mut p = ProfileState::new(1);
    p.apply(
        &batch_of(
            1,
            vec![
                custom("search", "search", T0 - DAY_MS, ""),
                custom("Search", "search", T0, ""),
            ],
            vec![("tier".into(), AttrValue::String("silver".into()))],
        ),
        T0,
        RETENTION,
        &catalog,
    );
    let ctx = EvalContext {
        now: T0,
        retention_ms: RETENTION,
    };
    let e = catalog.active(1).unwrap().compiled.root.explain(&p, &ctx);
    assert!(e.matched);
    // T0 + 6 days + 1 ms, when the older search leaves the 7-day window.
    let leaves = audience_state::time::format_instant(T0 + 6 * DAY_MS + 1);
    assert_eq!(
        e.detail,
        format!("2 of 2 hold, the next change at {leaves}")
    );
    assert_eq!(
        e.children[0].detail,
        format!("counted 2, the next change at {leaves} when an occurrence leaves the window")
    );
    assert_eq!(
        e.children[0].next_change,
        Some(T0 + 6 * DAY_MS + 1),
        "the older search leaves first"
    );
    assert_eq!(e.next_change, Some(T0 + 6 * DAY_MS + 1));
    assert!(!e.children[1].children[0].matched);
    assert!(e.children[1].children[0].detail.contains("silver"));
}

fn commerce(action: &str, at: i64) -> Event {
    Event {
        timestamp_ms: at,
        kind: EventKind::Commerce {
            product_action: Some(action.into()),
            products: vec![],
            total_amount: None,
            transaction_id: None,
        },
        attributes: BTreeMap::new(),
    }
}

#[test]
fn cart_abandonment_enters_after_the_wait_and_leaves_on_purchase() {
    const MIN: i64 = 60_000;
    let abandoned = catalog(json!({"cart_abandonment": {"wait_minutes": 60}}));
    let idle =
        catalog(json!({"cart_abandonment": {"wait_minutes": 60, "without": "product_action"}}));
    let mut p = ProfileState::new(1);
    let changes = p.apply(
        &batch_of(1, vec![commerce("add_to_cart", T0)], vec![]),
        T0,
        RETENTION,
        &abandoned,
    );
    assert_eq!(
        abandoned
            .affected_by(&changes)
            .into_iter()
            .collect::<Vec<_>>(),
        vec![1]
    );
    let ctx = |now| EvalContext {
        now,
        retention_ms: RETENTION,
    };
    let before = abandoned
        .active(1)
        .unwrap()
        .compiled
        .evaluate(&p, &ctx(T0 + 59 * MIN));
    assert!(!before.matched);
    assert_eq!(
        before.next_change,
        Some(T0 + 60 * MIN),
        "the timer fires when the wait is over"
    );
    assert!(member_at(&p, &abandoned, T0 + 60 * MIN));
    // Viewing a product is a product action but not a purchase.
    p.apply(
        &batch_of(1, vec![commerce("view_detail", T0 + 61 * MIN)], vec![]),
        T0 + 61 * MIN,
        RETENTION,
        &abandoned,
    );
    assert!(member_at(&p, &abandoned, T0 + 62 * MIN));
    assert!(!member_at(&p, &idle, T0 + 62 * MIN));
    // A purchase ends it; a new add to cart starts the wait again.
    p.apply(
        &batch_of(1, vec![commerce("purchase", T0 + 70 * MIN)], vec![]),
        T0 + 70 * MIN,
        RETENTION,
        &abandoned,
    );
    assert!(!member_at(&p, &abandoned, T0 + 71 * MIN));
    p.apply(
        &batch_of(1, vec![commerce("add_to_cart", T0 + 80 * MIN)], vec![]),
        T0 + 80 * MIN,
        RETENTION,
        &abandoned,
    );
    assert!(!member_at(&p, &abandoned, T0 + 139 * MIN));
    assert!(member_at(&p, &abandoned, T0 + 140 * MIN));
    let err =
        parse_definition(&json!({"cart_abandonment": {"wait_minutes": 5, "without": "refund"}}))
            .and_then(|d| compile(&d))
            .unwrap_err();
    assert_eq!(err.field, "criteria.cart_abandonment.without");
}

#[test]
fn product_and_transaction_conditions_pick_commerce_events() {
    let big_acme = catalog(
        json!({"event": {"type": "commerce_event", "product_action": "purchase",
        "product": [{"name": "brand", "op": "exact_match", "value": "ACME"}, {"name": "price", "op": "greater_than", "value": 100}],
        "transaction": [{"name": "total_amount", "op": "greater_than_or_equal", "value": 100}],
        "count": {"at_least": 2}}}),
    );
    let purchase = |at: i64, brand: &str, price: f64, total: f64| Event {
        timestamp_ms: at,
        kind: EventKind::Commerce {
            product_action: Some("purchase".into()),
            products: vec![
                Product {
                    id: Some("sku-0".into()),
                    name: None,
                    brand: Some("other".into()),
                    category: None,
                    variant: None,
                    price: Some(500.0),
                    quantity: Some(1.0),
                },
                Product {
                    id: Some("sku-1".into()),
                    name: None,
                    brand: Some(brand.into()),
                    category: None,
                    variant: None,
                    price: Some(price),
                    quantity: Some(1.0),
                },
            ],
            total_amount: Some(total),
            transaction_id: None,
        },
        attributes: BTreeMap::new(),
    };
    let mut p = ProfileState::new(1);
    p.apply(
        &batch_of(
            1,
            vec![
                purchase(T0, "Acme", 120.0, 620.0),
                purchase(T0 + 1, "Acme", 50.0, 550.0),
            ],
            vec![],
        ),
        T0 + 1,
        RETENTION,
        &big_acme,
    );
    assert!(
        !member_at(&p, &big_acme, T0 + 2),
        "one product must meet every product condition"
    );
    p.apply(
        &batch_of(1, vec![purchase(T0 + 2, "acme", 101.0, 601.0)], vec![]),
        T0 + 2,
        RETENTION,
        &big_acme,
    );
    assert!(member_at(&p, &big_acme, T0 + 3));
    for (bad, field) in [
        (
            json!({"event": {"name": "x", "product": [{"name": "brand", "op": "exists"}]}}),
            "criteria.event.product[0]",
        ),
        (
            json!({"event": {"type": "commerce_event", "product_action": "purchase", "product": [{"name": "colour", "op": "exists"}]}}),
            "criteria.event.product[0].name",
        ),
    ] {
        let err = parse_definition(&bad)
            .and_then(|d| compile(&d))
            .unwrap_err();
        assert_eq!(err.field, field, "{bad}: {err}");
    }
}

#[test]
fn events_outside_the_personalize_tier_are_refused_and_not_evaluated() {
    let tiers = vec![(
        "custom_event".to_string(),
        "search".to_string(),
        "analyze".to_string(),
    )];
    let catalog = Catalog::build_with_tiers(
        1,
        vec![record(1, json!({"event": {"name": "Search"}}))],
        tiers,
    );
    let err = catalog
        .check_tiers(
            &parse_definition(
                &json!({"and": [{"event": {"name": "Login"}}, {"event": {"name": "SEARCH"}}]}),
            )
            .unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.field, "criteria.and[1].event.name");
    assert!(
        err.reason.contains("\"search\"") && err.reason.contains("analyze"),
        "{err}"
    );
    assert!(catalog
        .check_tiers(&parse_definition(&json!({"event": {"name": "Login"}})).unwrap())
        .is_ok());
    let mut p = ProfileState::new(1);
    let changes = p.apply(
        &batch_of(1, vec![custom("Search", "search", T0, "")], vec![]),
        T0,
        RETENTION,
        &catalog,
    );
    assert!(
        changes.events.is_empty(),
        "an analyze-tier event is not evaluated"
    );
    assert!(!member_at(&p, &catalog, T0));
}
