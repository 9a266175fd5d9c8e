//! The remaining criterion families through the real broker, asserting what a subscriber
//! receives: promotions, impressions, session counts, upgrades, crashes, installs,
//! uninstalls, screen views,
//! attribution (profile and event), user attribute lists, identities; calculated attributes
//! defined over gRPC; location from a GeoIP database (MaxMind format) and the gazetteer; and the
//! INVALID_ARGUMENT / FAILED_PRECONDITION answers that name what is wrong.

use audience_e2e::mmdb::{write_city_database, CityRecord};
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn added_for(deltas: &[pb::MembershipDelta], mpid: i64) -> BTreeSet<u64> {
    deltas
        .iter()
        .filter(|d| d.mpid == mpid && d.kind == pb::DeltaKind::Added as i32)
        .map(|d| d.audience_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commerce_sessions_upgrades_attribution_and_more() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("families");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "families")?;
    let ch = engine.ready().await?;
    let definitions = [
        (
            "banner clicks",
            json!({"event": {"type": "commerce_event", "promotion_action": "click",
            "promotion": [{"name": "creative", "op": "contains", "value": "banner"}]}}),
        ),
        (
            "saw search results",
            json!({"event": {"type": "commerce_event", "impression": true, "impression_list": "search"}}),
        ),
        (
            "two sessions",
            json!({"event": {"type": "session_start", "count": {"at_least": 2}}}),
        ),
        (
            "upgraded this week",
            json!({"event": {"type": "upgrade", "time": {"within_last_days": 7}}}),
        ),
        (
            "spring installs",
            json!({"attribution": {"kind": "install", "field": "campaign", "op": "exact_match", "value": "Spring"}}),
        ),
        (
            "re-engaged by meta",
            json!({"event": {"type": "attribution", "name": "re-engagement",
            "attributes": [{"name": "publisher", "op": "exact_match", "value": "meta"}]}}),
        ),
        ("crashed", json!({"event": {"type": "crash_report"}})),
        ("installed", json!({"event": {"type": "first_run"}})),
        (
            "uninstalled via meta",
            json!({"and": [{"event": {"type": "uninstall"}},
            {"attribution": {"kind": "uninstall", "field": "publisher", "op": "exact_match", "value": "meta"}}]}),
        ),
        (
            "checkout screen",
            json!({"event": {"type": "screen_view", "name": "Checkout",
            "attributes": [{"name": "step", "op": "greater_than", "value": 1}]}}),
        ),
        (
            "jazz fans",
            json!({"user_attribute": {"name": "genres", "op": "includes", "value": "jazz"}}),
        ),
        (
            "example.com emails",
            json!({"identity": {"type": "email", "op": "pattern", "value": "*@example.com"}}),
        ),
    ];
    let mut ids = BTreeSet::new();
    for (name, criteria) in definitions {
        ids.insert(create_audience(&ch, name, criteria).await?.id);
    }

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let mut first = sdk_batch(
        31,
        now,
        vec![
            json!({"event_type": "commerce_event", "data": {
                "promotion_action": {"action": "click", "promotions": [{"id": "P1", "name": "Summer", "creative": "Top Banner", "position": "1"}]},
                "product_impressions": [{"product_impression_list": "Search", "products": [{"id": "SKU-1", "name": "Hat"}]}],
                "timestamp_unixtime_ms": now}}),
            json!({"event_type": "session_start", "data": {"timestamp_unixtime_ms": now}}),
            json!({"event_type": "session_start", "data": {"timestamp_unixtime_ms": now}}),
            json!({"event_type": "crash_report", "data": {"class_name": "NPE", "severity": "fatal", "timestamp_unixtime_ms": now}}),
            json!({"event_type": "first_run", "data": {"timestamp_unixtime_ms": now}}),
            json!({"event_type": "screen_view", "data": {"screen_name": "checkout", "custom_attributes": {"step": "2"}, "timestamp_unixtime_ms": now}}),
        ],
    );
    first["user_attributes"]["genres"] = json!(["Rock", "Jazz"]);
    produce_json(&producer, &topics.events, &first).await?;
    // An attribution partner's batch: the install attribution, a re-engagement, and the app
    // now at a higher version.
    let mut second = sdk_batch(
        31,
        now,
        vec![
            custom_event("attribution", "other", now, json!({})),
            custom_event("Re-Engagement", "other", now, json!({"publisher": "Meta"})),
            json!({"event_type": "uninstall", "data": {"timestamp_unixtime_ms": now}}),
        ],
    );
    second["attribution_info"] =
        json!({"service_provider": "Adjust", "publisher": "Meta", "campaign": "spring"});
    second["application_info"]["application_version"] = json!("2.10.0");
    produce_json(&producer, &topics.events, &second).await?;

    let deltas = collect_deltas(&ch, vec![], "", Duration::from_secs(60), |d| {
        added_for(d, 31).len() >= ids.len()
    })
    .await?;
    assert_eq!(added_for(&deltas, 31), ids, "every family admits the user");

    let p = profile(&ch, 31).await?;
    let install = p.install_attribution.expect("install attribution shown");
    assert_eq!(
        (install.publisher.as_str(), install.campaign.as_str()),
        ("Meta", "spring")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calculated_attributes_and_location() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("calcloc");
    let dir = tempfile::tempdir()?;
    let geoip = dir.path().join("city.mmdb");
    std::fs::write(
        &geoip,
        write_city_database(&[
            (
                "81.2.69.0".parse()?,
                24,
                CityRecord {
                    city: Some("London".into()),
                    subdivision_iso: Some("ENG".into()),
                    subdivision_name: Some("England".into()),
                    postal_code: Some("E1".into()),
                    country_iso: Some("GB".into()),
                    latitude: Some(51.5142),
                    longitude: Some(-0.0931),
                    metro_code: None,
                },
            ),
            (
                "216.160.83.0".parse()?,
                24,
                CityRecord {
                    city: Some("Milton".into()),
                    subdivision_iso: Some("WA".into()),
                    subdivision_name: Some("Washington".into()),
                    postal_code: Some("98354".into()),
                    country_iso: Some("US".into()),
                    latitude: Some(47.2513),
                    longitude: Some(-122.3149),
                    metro_code: Some(819),
                },
            ),
        ]),
    )?;
    let geoip_path = geoip.display().to_string();
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "calcloc",
        &[("AUDIENCE_GEOIP_DATABASE", geoip_path.as_str())],
    )?;
    let ch = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());

    // A definition reading an attribute that does not exist yet is refused, naming it.
    let refused = audiences
        .create_audience(pb::CreateAudienceRequest {
            name: "big spenders".into(),
            criteria: Some(criteria(json!({"calculated_attribute": {"name": "Spend 7d", "op": "greater_than_or_equal", "value": 100}}))),
            ..Default::default()
        })
        .await
        .expect_err("unknown calculated attribute");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("criteria.calculated_attribute.name"),
        "{}",
        refused.message()
    );
    let bad = audiences
        .put_calculated_attribute(pb::CalculatedAttribute {
            definition: Some(criteria(json!({"name": "Spend 7d", "calculation": "sum",
                "event": {"type": "commerce_event", "product_action": "purchase"}}))),
            ..Default::default()
        })
        .await
        .expect_err("a sum needs a field");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("field:"), "{}", bad.message());

    audiences
        .put_calculated_attribute(pb::CalculatedAttribute {
            definition: Some(criteria(json!({"name": "Spend 7d", "calculation": "sum", "field": "total_amount",
                "window_days": 7, "event": {"type": "commerce_event", "product_action": "purchase"}}))),
            ..Default::default()
        })
        .await?;
    let spenders = create_audience(&ch, "big spenders", json!({"calculated_attribute": {"name": "spend 7d", "op": "greater_than_or_equal", "value": 100}})).await?;
    let londoners = create_audience(
        &ch,
        "in London",
        json!({"location": {"field": "city", "op": "exact_match", "value": "london"}}),
    )
    .await?;
    let near_london = create_audience(
        &ch,
        "near London",
        json!({"location": {"within": {"distance": 30, "unit": "mi", "city": "London, GB"}}}),
    )
    .await?;
    let seattle_dma = create_audience(
        &ch,
        "Seattle DMA",
        json!({"location": {"field": "dma", "op": "exact_match", "value": "819"}}),
    )
    .await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let purchase = |amount: f64| {
        json!({"event_type": "commerce_event", "data": {"timestamp_unixtime_ms": now,
            "product_action": {"action": "purchase", "transaction_id": format!("T{amount}"), "total_amount": amount,
                "products": [{"id": "SKU-1", "price": amount, "quantity": 1}]}}})
    };
    let mut london = sdk_batch(41, now, vec![purchase(60.0)]);
    london["ip"] = json!("81.2.69.5");
    produce_json(&producer, &topics.events, &london).await?;
    let mut again = sdk_batch(41, now, vec![purchase(50.0)]);
    again["ip"] = json!("81.2.69.5");
    produce_json(&producer, &topics.events, &again).await?;
    let mut milton = sdk_batch(42, now, vec![purchase(20.0)]);
    milton["ip"] = json!("216.160.83.56");
    produce_json(&producer, &topics.events, &milton).await?;

    let deltas = collect_deltas(&ch, vec![], "", Duration::from_secs(60), |d| {
        added_for(d, 41).len() >= 3 && !added_for(d, 42).is_empty()
    })
    .await?;
    assert_eq!(
        added_for(&deltas, 41),
        BTreeSet::from([spenders.id, londoners.id, near_london.id])
    );
    assert_eq!(added_for(&deltas, 42), BTreeSet::from([seattle_dma.id]));

    let p = profile(&ch, 41).await?;
    let spend = p
        .calculated_attributes
        .get("Spend 7d")
        .expect("shown by the lookup");
    assert_eq!(
        spend.value,
        Some(pb::attribute_value::Value::NumberValue(110.0))
    );
    let location = p.location.expect("location shown");
    assert_eq!(
        (location.city.as_str(), location.country.as_str()),
        ("London", "GB")
    );

    // The attribute is in use: deleting it is refused, naming the audience.
    let in_use = audiences
        .delete_calculated_attribute(pb::DeleteCalculatedAttributeRequest {
            name: "spend 7d".into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(in_use.code(), tonic::Code::FailedPrecondition);
    assert!(
        in_use.message().contains("big spenders"),
        "{}",
        in_use.message()
    );

    // A week later the purchases leave the window: the user leaves with no new event.
    advance_clock(&ch, 7 * 86_400_000 + 1_000).await?;
    let cursor = deltas.last().unwrap().cursor.clone();
    let later = collect_deltas(
        &ch,
        vec![spenders.id],
        &cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (later[0].mpid, later[0].kind),
        (41, pb::DeltaKind::Dropped as i32)
    );
    Ok(())
}
