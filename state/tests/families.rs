//! The criterion families beyond plain events: calculated attributes and cart abandonment
//! against reference evaluators written plainly from the full history, over random histories,
//! definitions and clock moves; promotions, impressions, upgrades, attribution and location
//! through the profile state machine; and the refusals of bad definitions, field by field.

use audience_state::calculated::CalculatedAttributeRecord;
use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::EvalContext;
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
    r.revision = 7;
    r
}

fn catalog_with(
    criteria: serde_json::Value,
    calculated: Vec<CalculatedAttributeRecord>,
) -> Catalog {
    let catalog = Catalog::build_full(1, vec![record(1, criteria)], vec![], calculated);
    assert!(catalog.active(1).is_some(), "audience 1 compiles");
    catalog
}

fn catalog(criteria: serde_json::Value) -> Catalog {
    catalog_with(criteria, vec![])
}

fn ctx(now: i64) -> EvalContext {
    EvalContext {
        now,
        retention_ms: RETENTION,
    }
}

fn member_at(profile: &ProfileState, catalog: &Catalog, now: i64) -> bool {
    catalog
        .active(1)
        .unwrap()
        .compiled
        .evaluate(profile, &ctx(now))
        .matched
}

fn event(at: i64, kind: EventKind, attributes: &[(&str, &str)]) -> Event {
    Event {
        timestamp_ms: at,
        kind,
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn commerce(action: &str) -> EventKind {
    EventKind::Commerce {
        product_action: Some(action.into()),
        products: vec![],
        total_amount: None,
        transaction_id: None,
    }
}

fn apply(profile: &mut ProfileState, catalog: &Catalog, now: i64, f: impl FnOnce(&mut Batch)) {
    let mut batch = Batch {
        mpid: profile.mpid,
        ..Default::default()
    };
    f(&mut batch);
    profile.apply(&Inbound::Batch(batch), now, RETENTION, catalog);
}

// ------------------------------------------------------------------ calculated attributes

const CALCULATIONS: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "average",
    "unique_count",
    "last_value",
    "first_value",
];

/// The calculated value, plainly from every (time, amount) of "purchase made" at `now`.
fn reference_value(
    calculation: &str,
    history: &[(i64, i64)],
    window_days: Option<i64>,
    now: i64,
) -> Option<f64> {
    let inside: Vec<&(i64, i64)> = history
        .iter()
        .filter(|(t, _)| *t <= now && window_days.is_none_or(|d| now <= t + d * DAY_MS))
        .collect();
    let amounts: Vec<f64> = inside.iter().map(|(_, a)| *a as f64).collect();
    match calculation {
        "count" => Some(inside.len() as f64),
        "sum" => Some(amounts.iter().sum()),
        "min" => amounts.iter().copied().reduce(f64::min),
        "max" => amounts.iter().copied().reduce(f64::max),
        "average" => {
            (!amounts.is_empty()).then(|| amounts.iter().sum::<f64>() / amounts.len() as f64)
        }
        "unique_count" => {
            let mut distinct: Vec<i64> = inside.iter().map(|(_, a)| *a).collect();
            distinct.sort();
            distinct.dedup();
            Some(distinct.len() as f64)
        }
        // Events arrive in time order here, so the first and last are by position.
        "last_value" => inside.last().map(|(_, a)| *a as f64),
        _ => inside.first().map(|(_, a)| *a as f64),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn calculated_attributes_agree_with_the_reference(
        offsets in proptest::collection::vec((0i64..10 * DAY_MS, 1i64..6), 0..20),
        calculation in 0usize..CALCULATIONS.len(),
        window in proptest::option::of(1i64..5),
        threshold in 0i64..12,
        clock_moves in proptest::collection::vec(0i64..3 * DAY_MS, 1..6),
    ) {
        let calculation = CALCULATIONS[calculation];
        let mut def = json!({
            "name": "Purchase Stat", "calculation": calculation,
            "event": {"type": "custom_event", "name": "purchase made"},
        });
        if calculation != "count" {
            def["field"] = json!("amount");
        }
        if let Some(days) = window {
            def["window_days"] = json!(days);
        }
        let catalog = catalog_with(
            json!({"calculated_attribute": {"name": "purchase stat", "op": "greater_than_or_equal", "value": threshold}}),
            vec![calc_record(def)],
        );
        let mut sorted = offsets.clone();
        sorted.sort();
        let mut profile = ProfileState::new(1);
        let mut history = Vec::new();
        let mut now = T0;
        for (offset, amount) in &sorted {
            let at = T0 + offset;
            now = now.max(at);
            let amount_text = amount.to_string();
            let e = event(at, EventKind::Custom { name: "Purchase Made".into(), custom_type: None }, &[("Amount", &amount_text)]);
            history.push((at, *amount));
            apply(&mut profile, &catalog, now, |b| b.events.push(e));
        }
        let mut t = now;
        for step in clock_moves {
            t += step;
            let expected = reference_value(calculation, &history, window, t)
                .is_some_and(|v| v >= threshold as f64);
            prop_assert_eq!(member_at(&profile, &catalog, t), expected, "{} at {}", calculation, t);
            let outcome = catalog.active(1).unwrap().compiled.evaluate(&profile, &ctx(t));
            match outcome.next_change {
                Some(next) => {
                    prop_assert!(next > t);
                    prop_assert_eq!(member_at(&profile, &catalog, next - 1), outcome.matched);
                }
                None => prop_assert_eq!(member_at(&profile, &catalog, t + 40 * DAY_MS), outcome.matched),
            }
        }
    }

    #[test]
    fn cart_abandonment_agrees_with_the_reference(
        actions in proptest::collection::vec((0i64..6 * DAY_MS, 0usize..4), 0..12),
        wait_minutes in 1u32..(3 * 24 * 60),
        any_action in any::<bool>(),
        clock_moves in proptest::collection::vec(0i64..2 * DAY_MS, 1..6),
    ) {
        let kinds = ["add_to_cart", "purchase", "view_detail", "promotion_view"];
        let without = if any_action { "product_action" } else { "purchase" };
        let catalog = catalog(json!({"cart_abandonment": {"wait_minutes": wait_minutes, "without": without}}));
        let mut sorted = actions.clone();
        sorted.sort();
        let mut profile = ProfileState::new(1);
        let mut now = T0;
        let mut history: Vec<(i64, &str)> = Vec::new();
        for (offset, kind) in &sorted {
            let at = T0 + offset;
            now = now.max(at);
            let k = match kinds[*kind] {
                "promotion_view" => EventKind::Promotion { action: "view".into(), promotions: vec![] },
                action => commerce(action),
            };
            history.push((at, kinds[*kind]));
            apply(&mut profile, &catalog, now, |b| b.events.push(event(at, k, &[])));
        }
        let wait = wait_minutes as i64 * 60_000;
        let mut t = now;
        for step in clock_moves {
            t += step;
            // Reference: the last add to cart in retention, no purchase (or other product
            // action; promotions are not product actions) after it, and the wait has passed.
            let last_add = history.iter().filter(|(at, k)| *k == "add_to_cart" && *at >= t - RETENTION && *at <= t).map(|(at, _)| *at).max();
            let expected = last_add.is_some_and(|added| {
                let followed = history.iter().any(|(at, k)| {
                    *at > added && *at <= t && match *k {
                        "purchase" => true,
                        "view_detail" => any_action,
                        _ => false,
                    }
                });
                !followed && t >= added + wait
            });
            prop_assert_eq!(member_at(&profile, &catalog, t), expected, "at {}", t);
        }
    }
}

#[test]
fn calculated_attributes_show_every_calculation_and_refuse_unknown_names() {
    let spend = calc_record(json!({
        "name": "spend", "calculation": "sum", "field": "total_amount",
        "event": {"type": "commerce_event", "product_action": "purchase"}
    }));
    let brands = calc_record(json!({
        "name": "brands", "calculation": "unique_values", "field": "product.brand",
        "event": {"type": "commerce_event", "product_action": "purchase"}
    }));
    let catalog = catalog_with(
        json!({"and": [
            {"calculated_attribute": {"name": "Spend", "op": "greater_than", "value": 100}},
            {"calculated_attribute": {"name": "brands", "op": "includes", "value": "acme"}}
        ]}),
        vec![spend, brands],
    );
    let mut profile = ProfileState::new(9);
    let purchase = |amount: f64, brand: &str| EventKind::Commerce {
        product_action: Some("purchase".into()),
        products: vec![Product {
            id: None,
            name: None,
            brand: Some(brand.into()),
            category: None,
            variant: None,
            price: None,
            quantity: None,
        }],
        total_amount: Some(amount),
        transaction_id: None,
    };
    apply(&mut profile, &catalog, T0, |b| {
        b.events.push(event(T0, purchase(60.0, "Acme"), &[]))
    });
    assert!(!member_at(&profile, &catalog, T0));
    apply(&mut profile, &catalog, T0 + 1, |b| {
        b.events.push(event(T0 + 1, purchase(50.0, "Other"), &[]))
    });
    assert!(member_at(&profile, &catalog, T0 + 1));

    // An audience reading an undefined calculated attribute is refused, naming it.
    let refused = record(
        2,
        json!({"calculated_attribute": {"name": "ltv", "op": "exists"}}),
    )
    .validate_with(&catalog.calculated_lookup())
    .unwrap_err();
    assert_eq!(refused.field, "criteria.calculated_attribute.name");
    assert!(refused.reason.contains("ltv"), "{}", refused.reason);
}

// ------------------------------------------------------------------ promotions, impressions

#[test]
fn promotions_and_impressions_are_selected_with_their_conditions() {
    let catalog = Catalog::build(
        1,
        vec![
            record(
                1,
                json!({"event": {"type": "commerce_event", "promotion_action": "click",
                "promotion": [{"name": "creative", "op": "contains", "value": "banner"}]}}),
            ),
            record(
                2,
                json!({"event": {"type": "commerce_event", "impression": true,
                "impression_list": "Search Results", "product": [{"name": "sku", "op": "exact_match", "value": "SKU-1"}]}}),
            ),
            record(
                3,
                json!({"event": {"type": "commerce_event", "promotion_action": "view", "count": {"at_least": 2}}}),
            ),
        ],
    );
    let mut profile = ProfileState::new(4);
    let promotion = |action: &str, creative: &str| EventKind::Promotion {
        action: action.into(),
        promotions: vec![Promotion {
            id: Some("p".into()),
            name: None,
            creative: Some(creative.into()),
            position: None,
        }],
    };
    let impression = |list: &str, sku: &str| EventKind::Impression {
        list: Some(list.into()),
        products: vec![Product {
            id: Some(sku.into()),
            name: None,
            brand: None,
            category: None,
            variant: None,
            price: None,
            quantity: None,
        }],
    };
    let now = T0;
    apply(&mut profile, &catalog, now, |b| {
        b.events
            .push(event(now, promotion("click", "Top Banner"), &[]));
        b.events.push(event(now, promotion("view", "x"), &[]));
        b.events
            .push(event(now, impression("search results", "sku-2"), &[]));
        b.events.push(event(now, impression("home", "sku-1"), &[]));
    });
    let deltas = profile.evaluate([1, 2, 3], &catalog, &ctx(now), now);
    let added: Vec<u64> = deltas.iter().map(|d| d.audience_id).collect();
    assert_eq!(
        added,
        vec![1],
        "a matching click; no matching impression; one view"
    );
    apply(&mut profile, &catalog, now, |b| {
        b.events.push(event(now, promotion("view", "y"), &[]));
        b.events
            .push(event(now, impression("Search Results", "SKU-1"), &[]));
    });
    let added: Vec<u64> = profile
        .evaluate([1, 2, 3], &catalog, &ctx(now), now)
        .iter()
        .map(|d| d.audience_id)
        .collect();
    assert_eq!(added, vec![2, 3]);
}

// ------------------------------------------------------------------ upgrades and sessions

#[test]
fn an_app_version_that_goes_up_is_an_upgrade() {
    let catalog = Catalog::build(
        1,
        vec![
            record(
                1,
                json!({"event": {"type": "upgrade", "time": {"within_last_days": 7}}}),
            ),
            record(
                2,
                json!({"event": {"type": "session_start", "count": {"at_least": 3}}}),
            ),
        ],
    );
    let mut profile = ProfileState::new(5);
    apply(&mut profile, &catalog, T0, |b| {
        b.app_version = Some("2.9.1".into());
        b.events.push(event(T0, EventKind::SessionStart, &[]));
    });
    // A first version is no upgrade; nor is the same one again, nor a downgrade.
    apply(&mut profile, &catalog, T0 + 1, |b| {
        b.app_version = Some("2.9.1".into())
    });
    apply(&mut profile, &catalog, T0 + 2, |b| {
        b.app_version = Some("2.8".into())
    });
    assert!(!member_at(&profile, &catalog, T0 + 2));
    apply(&mut profile, &catalog, T0 + 3, |b| {
        b.app_version = Some("2.10.0".into());
        b.events.push(event(T0 + 3, EventKind::SessionStart, &[]));
    });
    assert!(member_at(&profile, &catalog, T0 + 3));
    assert!(
        !member_at(&profile, &catalog, T0 + 3 + 7 * DAY_MS + 1),
        "the window slides"
    );
    // The app may also say so on launch.
    let mut other = ProfileState::new(6);
    apply(&mut other, &catalog, T0, |b| {
        b.events.push(event(
            T0,
            EventKind::ApplicationStateTransition {
                transition: Some("application_initialized".into()),
                is_upgrade: true,
            },
            &[],
        ))
    });
    assert!(member_at(&other, &catalog, T0));
    // Session counts: the third session start.
    let sessions = catalog.active(2).unwrap();
    assert!(!sessions.compiled.evaluate(&profile, &ctx(T0 + 3)).matched);
    apply(&mut profile, &catalog, T0 + 4, |b| {
        b.events.push(event(T0 + 4, EventKind::SessionStart, &[]))
    });
    assert!(sessions.compiled.evaluate(&profile, &ctx(T0 + 4)).matched);
}

// ------------------------------------------------------------------ attribution

#[test]
fn attribution_is_a_profile_criterion_and_an_event_criterion() {
    let catalog = Catalog::build(
        1,
        vec![
            record(
                1,
                json!({"attribution": {"kind": "install", "field": "campaign", "op": "exact_match", "value": "Spring Sale"}}),
            ),
            record(2, json!({"attribution": {"kind": "uninstall"}})),
            record(
                3,
                json!({"event": {"type": "attribution", "name": "re-engagement",
                "attributes": [{"name": "publisher", "op": "exact_match", "value": "meta"}]}}),
            ),
        ],
    );
    let evaluate = |p: &mut ProfileState, now: i64| -> Vec<(u64, DeltaKind)> {
        p.evaluate([1, 2, 3], &catalog, &ctx(now), now)
            .iter()
            .map(|d| (d.audience_id, d.kind))
            .collect()
    };
    let mut profile = ProfileState::new(7);
    let spring = Attribution {
        publisher: Some("Meta".into()),
        campaign: Some("spring sale".into()),
        service_provider: Some("Adjust".into()),
    };
    apply(&mut profile, &catalog, T0, |b| {
        b.attribution = Some(spring.clone());
        b.events.push(event(
            T0,
            EventKind::Custom {
                name: "attribution".into(),
                custom_type: Some("attribution".into()),
            },
            &[],
        ));
    });
    assert_eq!(evaluate(&mut profile, T0), vec![(1, DeltaKind::Added)]);
    apply(&mut profile, &catalog, T0 + 1, |b| {
        b.attribution = Some(spring.clone());
        b.events.push(event(T0 + 1, EventKind::Uninstall, &[]));
        b.events.push(event(
            T0 + 1,
            EventKind::Custom {
                name: "Re-Engagement".into(),
                custom_type: Some("attribution".into()),
            },
            &[("Publisher", "META")],
        ));
    });
    assert_eq!(
        evaluate(&mut profile, T0 + 1),
        vec![(2, DeltaKind::Added), (3, DeltaKind::Added)]
    );
    // Without attribution_info, the attribution event's custom attributes carry it.
    let mut other = ProfileState::new(8);
    apply(&mut other, &catalog, T0, |b| {
        b.events.push(event(
            T0,
            EventKind::Custom {
                name: "attribution".into(),
                custom_type: Some("attribution".into()),
            },
            &[("campaign", "Spring Sale"), ("publisher", "TikTok")],
        ))
    });
    assert_eq!(evaluate(&mut other, T0), vec![(1, DeltaKind::Added)]);
    assert_eq!(
        other.install_attribution.unwrap().publisher.as_deref(),
        Some("TikTok")
    );
}

// ------------------------------------------------------------------ location

#[test]
fn location_fields_prefer_reserved_attributes_and_distances_use_the_gazetteer() {
    let catalog = Catalog::build(
        1,
        vec![
            record(
                1,
                json!({"location": {"field": "city", "op": "exact_match", "value": "london"}}),
            ),
            record(
                2,
                json!({"location": {"within": {"distance": 50, "unit": "mi", "city": "Paris, FR"}}}),
            ),
            record(
                3,
                json!({"location": {"within": {"distance": 10, "unit": "km", "latitude": 51.5, "longitude": -0.12}}}),
            ),
            record(
                4,
                json!({"location": {"field": "dma", "op": "exact_match", "value": "819"}}),
            ),
        ],
    );
    let members = |p: &ProfileState, now: i64| -> Vec<u64> {
        (1..=4)
            .filter(|id| {
                catalog
                    .active(*id)
                    .unwrap()
                    .compiled
                    .evaluate(p, &ctx(now))
                    .matched
            })
            .collect()
    };
    let mut profile = ProfileState::new(11);
    apply(&mut profile, &catalog, T0, |b| {
        b.location = Some(GeoLocation {
            city: Some("London".into()),
            latitude: Some(51.51),
            longitude: Some(-0.13),
            ..Default::default()
        })
    });
    assert_eq!(members(&profile, T0), vec![1, 3]);
    // Versailles is about 17 km from Paris: within 50 miles; and $City overrides GeoIP.
    apply(&mut profile, &catalog, T0 + 1, |b| {
        b.location = Some(GeoLocation {
            latitude: Some(48.80),
            longitude: Some(2.13),
            dma: Some("819".into()),
            ..Default::default()
        });
        b.user_attributes
            .push(("$City".into(), AttrValue::String("Versailles".into())));
    });
    assert_eq!(members(&profile, T0 + 1), vec![2, 4]);
    // A newer place replaces the whole older one: no London city with a Paris zip.
    apply(&mut profile, &catalog, T0 + 2, |b| {
        b.user_attributes.push(("$City".into(), AttrValue::Null));
        b.location = Some(GeoLocation {
            country: Some("FR".into()),
            ..Default::default()
        })
    });
    assert_eq!(profile.location.dma, None);
    assert_eq!(profile.location.country.as_deref(), Some("FR"));
}

// ------------------------------------------------------------------ dates

#[test]
fn date_operators_compare_calendar_days_like_event_dates() {
    let holds = |op: &str, value: serde_json::Value, attr: AttrValue| {
        let catalog =
            catalog(json!({"user_attribute": {"name": "signup", "op": op, "value": value}}));
        let mut p = ProfileState::new(1);
        apply(&mut p, &catalog, T0, |b| {
            b.user_attributes.push(("Signup".into(), attr))
        });
        member_at(&p, &catalog, T0)
    };
    let day = |s: &str| AttrValue::String(s.into());
    // 2024-03-09 00:00:00.000 UTC and the last millisecond of that day.
    let midnight = AttrValue::Date(1_709_942_400_000);
    let last_ms = AttrValue::Date(1_709_942_400_000 + DAY_MS - 1);
    assert!(
        !holds("date_before", json!("2024-03-09"), midnight.clone()),
        "before is exclusive"
    );
    assert!(holds("date_before", json!("2024-03-10"), last_ms.clone()));
    assert!(
        holds("date_after", json!("2024-03-09"), midnight.clone()),
        "after is inclusive"
    );
    assert!(!holds("date_after", json!("2024-03-10"), last_ms.clone()));
    assert!(holds("date_on", json!("2024-03-09"), last_ms.clone()));
    assert!(holds(
        "date_on",
        json!("2024-03-09"),
        day("2024-03-09T23:59:59Z")
    ));
    assert!(!holds("date_on", json!("2024-03-09"), day("2024-03-10")));
    assert!(holds(
        "date_between",
        json!(["2024-03-07", "2024-03-09"]),
        day("2024-03-09T12:00:00")
    ));
    assert!(holds(
        "date_between",
        json!(["2024-03-07", "2024-03-09"]),
        day("2024-03-07")
    ));
    assert!(!holds(
        "date_between",
        json!(["2024-03-07", "2024-03-09"]),
        day("2024-03-06T23:59:59.999Z")
    ));
    assert!(!holds("date_after", json!("2024-03-09"), day("not a date")));
    // Event attributes take them too.
    let catalog = catalog(json!({"event": {"name": "booked", "attributes": [
        {"name": "check_in", "op": "date_between", "value": ["2024-07-01", "2024-07-31"]}]}}));
    let mut p = ProfileState::new(2);
    apply(&mut p, &catalog, T0, |b| {
        b.events.push(event(
            T0,
            EventKind::Custom {
                name: "Booked".into(),
                custom_type: None,
            },
            &[("check_in", "2024-07-31")],
        ))
    });
    assert!(member_at(&p, &catalog, T0));
}

// ------------------------------------------------------------------ refusals

#[test]
fn bad_definitions_of_the_new_families_name_their_field() {
    let refused =
        |criteria: serde_json::Value| record(1, criteria).validate().expect_err("refused");
    let cases = [
        (
            json!({"location": {"field": "planet", "value": "mars"}}),
            "criteria.location.field",
            "planet",
        ),
        (
            json!({"location": {"within": {"distance": 5, "city": "Nowhereville"}}}),
            "criteria.location.within.city",
            "Nowhereville",
        ),
        (
            json!({"location": {"within": {"distance": -1, "latitude": 1, "longitude": 2}}}),
            "criteria.location.within.distance",
            "positive",
        ),
        (
            json!({"location": {"within": {"distance": 1, "latitude": 100, "longitude": 2}}}),
            "criteria.location.within.latitude",
            "latitude",
        ),
        (
            json!({"location": {"within": {"distance": 1, "unit": "furlong", "latitude": 1, "longitude": 2}}}),
            "criteria.location.within.unit",
            "furlong",
        ),
        (
            json!({"location": {"field": "city", "op": "greater_than", "value": 3}}),
            "criteria.location.op",
            "greater_than",
        ),
        (
            json!({"attribution": {"kind": "reinstall"}}),
            "criteria.attribution.kind",
            "reinstall",
        ),
        (
            json!({"attribution": {"kind": "install", "field": "medium"}}),
            "criteria.attribution.field",
            "medium",
        ),
        (
            json!({"attribution": {"kind": "install", "op": "contains", "value": "x"}}),
            "criteria.attribution.op",
            "exists",
        ),
        (
            json!({"event": {"type": "commerce_event", "promotion_action": "hover"}}),
            "criteria.event.promotion_action",
            "hover",
        ),
        (
            json!({"event": {"type": "commerce_event", "promotion_action": "view", "product_action": "purchase"}}),
            "criteria.event.product_action",
            "one of",
        ),
        (
            json!({"event": {"type": "commerce_event", "product_action": "purchase", "promotion": [{"name": "creative", "op": "exists"}]}}),
            "criteria.event.promotion",
            "promotion_action",
        ),
        (
            json!({"event": {"type": "commerce_event", "promotion_action": "view", "promotion": [{"name": "colour", "op": "exists"}]}}),
            "criteria.event.promotion[0].name",
            "colour",
        ),
        (
            json!({"event": {"type": "screen_view", "name": "Home", "impression": true}}),
            "criteria.event.type",
            "commerce",
        ),
        (
            json!({"event": {"type": "commerce_event", "impression_list": "home", "product_action": "purchase"}}),
            "criteria.event.impression_list",
            "impression",
        ),
        (
            json!({"event": {"type": "attribution", "name": "install", "custom_event_type": "other"}}),
            "criteria.event.custom_event_type",
            "attribution",
        ),
        (
            json!({"calculated_attribute": {"name": "ltv", "op": "greater_than", "value": 1}}),
            "criteria.calculated_attribute.name",
            "ltv",
        ),
    ];
    for (criteria, field, reason) in cases {
        let e = refused(criteria.clone());
        assert_eq!(e.field, field, "{criteria}: {e}");
        assert!(e.reason.contains(reason), "{criteria}: {e}");
    }
}
