//! Profile criteria through the real broker: consent (GDPR purpose, CCPA opt-out), device and
//! app versions, first seen by recency.

use audience_e2e::*;
use audience_proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_device_and_first_seen_criteria() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("profile");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "profile")?;
    let ch = engine.ready().await?;
    let marketing = create_audience(&ch, "gdpr marketing", serde_json::json!({"consent": {"regulation": "gdpr", "purpose": "marketing", "state": "consented"}})).await?;
    let not_sold = create_audience(
        &ch,
        "ccpa opted out",
        serde_json::json!({"consent": {"regulation": "ccpa", "state": "opted_out"}}),
    )
    .await?;
    let modern = create_audience(&ch, "iOS 17.2+ on app 2.x", serde_json::json!({"and": [
        {"device": {"field": "os_version", "op": "version_greater_than_or_equal", "value": "17.2"}},
        {"device": {"field": "app_version", "op": "version_less_than", "value": "3"}}
    ]})).await?;
    let newcomers = create_audience(
        &ch,
        "new this week",
        serde_json::json!({"first_seen": {"within_last_days": 7}}),
    )
    .await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let mut batch = sdk_batch(21, now, vec![]);
    batch["consent_state"] = serde_json::json!({
        "gdpr": {"marketing": {"consented": true, "document": "v2", "timestamp_unixtime_ms": now, "location": null, "hardware_id": null}},
        "ccpa": {"data_sale_opt_out": {"consented": true, "timestamp_unixtime_ms": now}}
    });
    produce_json(&producer, &topics.events, &batch).await?;
    let deltas = collect_deltas(&ch, vec![], "", Duration::from_secs(30), |d| d.len() >= 4).await?;
    let mut got: Vec<u64> = deltas
        .iter()
        .filter(|d| d.kind == pb::DeltaKind::Added as i32 && d.mpid == 21)
        .map(|d| d.audience_id)
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![marketing.id, not_sold.id, modern.id, newcomers.id]
    );

    // Consent withdrawn, OS downgraded in a later batch: both leave.
    let mut later = sdk_batch(21, now, vec![]);
    later["consent_state"] = serde_json::json!({"gdpr": {"marketing": {"consented": false, "timestamp_unixtime_ms": now}}});
    later["device_info"]["os_version"] = serde_json::json!("16.7");
    produce_json(&producer, &topics.events, &later).await?;
    let cursor = deltas.last().unwrap().cursor.clone();
    let drops = collect_deltas(&ch, vec![], &cursor, Duration::from_secs(30), |d| {
        d.len() >= 2
    })
    .await?;
    let mut dropped: Vec<u64> = drops
        .iter()
        .filter(|d| d.kind == pb::DeltaKind::Dropped as i32)
        .map(|d| d.audience_id)
        .collect();
    dropped.sort();
    assert_eq!(dropped, vec![marketing.id, modern.id]);

    // A week later the user is no longer new.
    advance_clock(&ch, 7 * 86_400_000 + 1_000).await?;
    let aged = collect_deltas(
        &ch,
        vec![newcomers.id],
        &drops.last().unwrap().cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (aged[0].mpid, aged[0].kind),
        (21, pb::DeltaKind::Dropped as i32)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_membership_criteria_and_protected_references() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("membership");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "membership")?;
    let ch = engine.ready().await?;
    let gold = create_audience(&ch, "gold", serde_json::json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}})).await?;
    let gold_searchers = create_audience(
        &ch,
        "gold searchers",
        serde_json::json!({"and": [
            {"audience": {"id": gold.id}}, {"event": {"name": "Search"}}
        ]}),
    )
    .await?;
    let not_gold = create_audience(
        &ch,
        "not gold",
        serde_json::json!({"audience": {"id": gold.id, "member": false}}),
    )
    .await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    produce_json(
        &producer,
        &topics.events,
        &sdk_batch(
            31,
            now,
            vec![custom_event("Search", "search", now, serde_json::json!({}))],
        ),
    )
    .await?;
    let deltas = collect_deltas(&ch, vec![], "", Duration::from_secs(30), |d| d.len() >= 2).await?;
    let mut added: Vec<u64> = deltas.iter().map(|d| d.audience_id).collect();
    added.sort();
    assert_eq!(added, vec![gold.id, gold_searchers.id]);

    let mut silver = sdk_batch(31, now, vec![]);
    silver["user_attributes"]["tier"] = serde_json::json!("silver");
    produce_json(&producer, &topics.events, &silver).await?;
    let changes = collect_deltas(
        &ch,
        vec![],
        &deltas.last().unwrap().cursor,
        Duration::from_secs(30),
        |d| d.len() >= 3,
    )
    .await?;
    let mut got: Vec<(u64, i32)> = changes.iter().map(|d| (d.audience_id, d.kind)).collect();
    got.sort();
    let (added_kind, dropped_kind) = (pb::DeltaKind::Added as i32, pb::DeltaKind::Dropped as i32);
    let mut want = vec![
        (gold.id, dropped_kind),
        (gold_searchers.id, dropped_kind),
        (not_gold.id, added_kind),
    ];
    want.sort();
    assert_eq!(got, want);

    // Explain: why user 31 is not in "gold searchers" any more.
    let mut profiles = pb::profile_service_client::ProfileServiceClient::new(ch.clone());
    let e = profiles
        .explain(pb::ExplainRequest {
            mpid: 31,
            audience_id: gold_searchers.id,
        })
        .await?
        .into_inner();
    assert!(!e.member);
    let root = e.root.expect("a tree");
    assert!(!root.matched);
    assert_eq!(root.children.len(), 2);
    assert!(!root.children[0].matched, "{:?}", root.children[0]);
    assert!(
        root.children[1].matched
            && root.children[1]
                .detail
                .starts_with("counted 1, the next change at "),
        "{:?}",
        root.children[1]
    );
    assert!(
        root.children[1].next_change_ms > now,
        "the search leaves retention at some point"
    );

    // A referenced audience cannot be deleted; the message names the referrers.
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let err = audiences
        .delete_audience(pb::DeleteAudienceRequest { id: gold.id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("gold searchers") && err.message().contains("not gold"),
        "{}",
        err.message()
    );
    // Only an audience without nested criteria may be referenced.
    let err = create_audience(
        &ch,
        "nested",
        serde_json::json!({"audience": {"id": gold_searchers.id}}),
    )
    .await
    .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("criteria.audience.id"),
        "{}",
        status.message()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_abandonment_enters_with_time_and_leaves_on_purchase() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("cart");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "cart")?;
    let ch = engine.ready().await?;
    let cart = create_audience(
        &ch,
        "abandoned carts",
        serde_json::json!({"cart_abandonment": {"wait_minutes": 30}}),
    )
    .await?;
    let sneaker_buyers = create_audience(&ch, "bought sneakers over 50", serde_json::json!({"event": {"type": "commerce_event", "product_action": "purchase",
        "product": [{"name": "name", "op": "contains", "value": "SNEAK"}, {"name": "price", "op": "greater_than_or_equal", "value": 50}]}})).await?;
    let producer = broker.producer()?;
    let commerce = |action: &str, at: i64| {
        serde_json::json!({"event_type": "commerce_event", "data": {"timestamp_unixtime_ms": at,
            "product_action": {"action": action, "products": [{"id": "sku-1", "name": "Sneaker", "price": 59.0, "quantity": 1}]}}})
    };
    let now = engine_now(&ch).await?;
    produce_json(
        &producer,
        &topics.events,
        &sdk_batch(41, now, vec![commerce("add_to_cart", now)]),
    )
    .await?;
    // Nothing before the wait is over.
    let early = collect_deltas(&ch, vec![cart.id], "", Duration::from_secs(2), |d| {
        !d.is_empty()
    })
    .await?;
    assert!(early.is_empty(), "{early:?}");
    advance_clock(&ch, 31 * 60_000).await?;
    let entered = collect_deltas(&ch, vec![cart.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!(
        (entered[0].mpid, entered[0].kind),
        (41, pb::DeltaKind::Added as i32)
    );
    let later = engine_now(&ch).await?;
    produce_json(
        &producer,
        &topics.events,
        &sdk_batch(41, later, vec![commerce("purchase", later)]),
    )
    .await?;
    let left = collect_deltas(
        &ch,
        vec![cart.id],
        &entered[0].cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (left[0].mpid, left[0].kind),
        (41, pb::DeltaKind::Dropped as i32)
    );
    // The purchase's product (a 59.0 "Sneaker") qualifies for the product criterion.
    let bought = collect_deltas(
        &ch,
        vec![sneaker_buyers.id],
        "",
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (bought[0].mpid, bought[0].kind),
        (41, pb::DeltaKind::Added as i32)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outside_the_personalize_tier_cannot_be_used() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("tiers");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "tiers")?;
    let ch = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    audiences
        .set_event_tier(pb::EventTier {
            event_type: "custom_event".into(),
            name: "Played Video".into(),
            tier: "Analyze".into(),
        })
        .await?;
    let listed = audiences
        .list_event_tiers(pb::ListEventTiersRequest::default())
        .await?
        .into_inner()
        .tiers;
    assert_eq!(
        listed,
        vec![pb::EventTier {
            event_type: "custom_event".into(),
            name: "played video".into(),
            tier: "analyze".into()
        }]
    );
    let err = create_audience(
        &ch,
        "watchers",
        serde_json::json!({"event": {"name": "Played Video"}}),
    )
    .await
    .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("criteria.event.name")
            && status.message().contains("played video"),
        "{}",
        status.message()
    );
    Ok(())
}
