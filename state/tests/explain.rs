//! Explain speaks the definition language: criteria read like the JSON the user wrote, values
//! as JSON values, instants as RFC 3339 in UTC and durations in days, hours and minutes.

use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::{EvalContext, Explanation};
use audience_state::model::*;
use audience_state::profile::ProfileState;
use serde_json::json;
use std::collections::BTreeMap;

const RETENTION: i64 = 30 * DAY_MS;
/// 2026-12-03T09:06:00Z.
const T0: i64 = 1_796_288_760_000;

fn catalog(criteria: serde_json::Value) -> Catalog {
    Catalog::build(1, vec![AudienceRecord::active(1, "a1", criteria)])
}

fn explain(catalog: &Catalog, profile: &ProfileState, now: i64) -> Explanation {
    catalog
        .active(1)
        .expect("the audience compiles")
        .compiled
        .root
        .explain(
            profile,
            &EvalContext {
                now,
                retention_ms: RETENTION,
            },
        )
}

fn apply(profile: &mut ProfileState, catalog: &Catalog, batch: Batch, now: i64) {
    profile.apply(&Inbound::Batch(batch), now, RETENTION, catalog);
}

#[test]
fn attributes_and_events_read_as_written() {
    let catalog = catalog(json!({"and": [
        {"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}},
        {"event": {"type": "custom_event", "name": "Viewed Item", "count": {"at_least": 2},
                   "time": {"within_last_days": 7}}},
    ]}));
    let mut profile = ProfileState::new(1034);
    apply(
        &mut profile,
        &catalog,
        Batch {
            mpid: 1034,
            events: vec![Event {
                timestamp_ms: T0,
                kind: EventKind::Custom {
                    name: "Viewed Item".into(),
                    custom_type: Some("navigation".into()),
                },
                attributes: BTreeMap::new(),
            }],
            user_attributes: vec![("tier".into(), AttrValue::String("bronze".into()))],
            ..Default::default()
        },
        T0,
    );
    let root = explain(&catalog, &profile, T0 + 60_000);
    assert_eq!(root.criterion, "all of");
    assert_eq!(
        root.detail,
        "0 of 2 hold, the next change at 2026-12-10T09:06:00.001Z"
    );
    let tier = &root.children[0];
    assert_eq!(tier.criterion, r#"tier exact match "gold""#);
    assert_eq!(tier.detail, r#"the value is "bronze""#);
    let viewed = &root.children[1];
    assert_eq!(
        viewed.criterion,
        r#"custom event "Viewed Item" at least 2 times in the last 7 days"#
    );
    assert_eq!(
        viewed.detail,
        "counted 1, the next change at 2026-12-10T09:06:00.001Z when an occurrence leaves the \
         window"
    );
    for node in [&root, tier, viewed] {
        for text in [&node.criterion, &node.detail] {
            assert!(
                !text.contains("Some(") && !text.contains("AtLeast"),
                "{text}"
            );
        }
    }
}

#[test]
fn every_kind_of_test_is_in_words() {
    let catalog = catalog(json!({"and": [
        {"user_attribute": {"name": "age", "op": "greater_than_or_equal", "value": 18}},
        {"user_attribute": {"name": "movies", "op": "does_not_contain", "value": "Horror"}},
        {"user_attribute": {"name": "email", "op": "not_exists"}},
        {"user_attribute": {"name": "vip", "op": "is_true"}},
        {"user_attribute": {"name": "score", "op": "between", "value": [1, 5]}},
        {"user_attribute": {"name": "signup", "op": "date_on", "value": "2026-12-01"}},
        {"device": {"field": "os_version", "op": "version_greater_than", "value": "16.4"}},
        {"event": {"type": "commerce_event", "product_action": "add_to_cart",
                   "time": {"between_days_ago": [2, 9]}}},
        {"event": {"type": "screen_view", "name": "Cart", "count": {"exactly": 1},
                   "time": {"before": "2026-11-01"}}},
        {"first_seen": {"within_last_days": 30}},
        {"exclude": {"consent": {"regulation": "ccpa", "state": "opted_out"}}},
    ]}));
    let mut profile = ProfileState::new(7);
    apply(
        &mut profile,
        &catalog,
        Batch {
            mpid: 7,
            user_attributes: vec![
                ("age".into(), AttrValue::Number(42.0)),
                ("Movies".into(), AttrValue::List(vec!["Comedy".into()])),
                ("vip".into(), AttrValue::Bool(true)),
            ],
            ..Default::default()
        },
        T0,
    );
    let root = explain(&catalog, &profile, T0);
    let words: Vec<(&str, &str)> = root
        .children
        .iter()
        .map(|c| (c.criterion.as_str(), c.detail.as_str()))
        .collect();
    assert_eq!(
        words[0],
        ("age greater than or equal to 18", "the value is 42")
    );
    assert_eq!(
        words[1],
        (
            r#"movies does not contain "horror""#,
            r#"the value is ["Comedy"]"#
        )
    );
    assert_eq!(words[2], ("email does not exist", "no value"));
    assert_eq!(words[3], ("vip is true", "the value is true"));
    assert_eq!(words[4].0, "score between 1 and 5");
    assert_eq!(words[5].0, "signup date on 2026-12-01");
    assert_eq!(words[6].0, "device os_version version greater than 16.4");
    assert_eq!(
        words[7].0,
        r#"commerce event "add to cart" at least 1 time between 2 days and 9 days ago"#
    );
    assert_eq!(
        words[8].0,
        r#"screen view "Cart" exactly 1 time before 2026-11-01"#
    );
    assert_eq!(words[9].0, "first seen in the last 30 days");
    assert!(
        words[9].1.starts_with("first seen at 2026-12-03T09:06:00Z"),
        "{}",
        words[9].1
    );
    assert_eq!(words[10].0, "exclude");
    assert_eq!(
        root.children[10].children[0].criterion,
        "CCPA data sale opt-out is opted out"
    );
    assert_eq!(root.children[10].children[0].detail, "no consent state");
    for c in &root.children {
        for text in [&c.criterion, &c.detail] {
            assert!(
                !text.contains("Some(") && !text.contains("None") && !text.contains(" ms"),
                "{text}"
            );
        }
    }
}
