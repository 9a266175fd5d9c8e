//! JSON batches produced to a real broker become deltas on a gRPC subscription, the profile
//! lookup shows the state, and definitions are validated.

use audience_e2e::*;
use audience_proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_become_deltas_and_profiles() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("e2e");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "e2e")?;
    let ch = engine.ready().await?;

    let viewers = create_audience(
        &ch,
        "Viewed shoes twice this week",
        serde_json::json!({"event": {"type": "custom_event", "name": "Viewed Item",
            "attributes": [{"name": "category", "op": "exact_match", "value": "SHOES"}],
            "count": {"at_least": 2}, "time": {"within_last_days": 7}}}),
    )
    .await?;
    let gold = create_audience(
        &ch,
        "Gold tier with email",
        serde_json::json!({"and": [
            {"user_attribute": {"name": "tier", "op": "exact_match", "value": "GOLD"}},
            {"identity": {"type": "email"}},
            {"exclude": {"user_attribute": {"name": "age", "op": "less_than", "value": 18}}}
        ]}),
    )
    .await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let shoes = serde_json::json!({"category": "shoes"});
    // User 1: views shoes twice -> both audiences. User 2: views hats -> gold only.
    for mpid in [1_i64, 2] {
        let category = if mpid == 1 {
            shoes.clone()
        } else {
            serde_json::json!({"category": "hats"})
        };
        let batch = sdk_batch(
            mpid,
            now,
            vec![
                custom_event("Viewed Item", "navigation", now - 1000, category.clone()),
                custom_event("Viewed Item", "navigation", now - 500, category),
            ],
        );
        produce_json(&producer, &topics.events, &batch).await?;
    }
    // User 3: a minor, gold, with email: excluded.
    let mut minor = sdk_batch(3, now, vec![]);
    minor["user_attributes"] = serde_json::json!({"tier": "Gold", "age": 16});
    produce_json(&producer, &topics.events, &minor).await?;

    let deltas = collect_deltas(&ch, vec![], "", Duration::from_secs(30), |d| d.len() >= 3).await?;
    let mut got: Vec<(u64, i64, i32)> = deltas
        .iter()
        .map(|d| (d.audience_id, d.mpid, d.kind))
        .collect();
    got.sort();
    let added = pb::DeltaKind::Added as i32;
    let mut want = vec![
        (viewers.id, 1, added),
        (gold.id, 1, added),
        (gold.id, 2, added),
    ];
    want.sort();
    assert_eq!(got, want, "deltas: {deltas:?}");
    for d in &deltas {
        assert_eq!(d.version, 1);
        assert_eq!(d.delta_id, format!("{}:{}:1", d.audience_id, d.mpid));
        assert!(!d.cursor.is_empty());
    }

    // Nothing more arrives for user 3.
    let more = collect_deltas(
        &ch,
        vec![],
        &deltas.last().unwrap().cursor,
        Duration::from_secs(2),
        |d| !d.is_empty(),
    )
    .await?;
    assert!(more.is_empty(), "unexpected deltas: {more:?}");

    let p = profile(&ch, 1).await?;
    assert!(p
        .identities
        .iter()
        .any(|i| i.identity_type == "email" && i.value == "u1@example.com"));
    assert!(p
        .identities
        .iter()
        .any(|i| i.identity_type == "ios_idfv" && i.value == "idfv-1"));
    assert!(p.user_attributes.contains_key("tier"));
    let mut member_of: Vec<u64> = p.audiences.iter().map(|m| m.audience_id).collect();
    member_of.sort();
    assert_eq!(member_of, vec![viewers.id, gold.id]);
    assert_eq!(p.device_info.unwrap().network_carrier, "T-Mobile");
    assert_eq!(p.app_version, "2.1.0");
    assert!(p
        .events
        .iter()
        .any(|e| e.event_key.starts_with("custom_event:viewed item") && e.count_in_retention == 2));

    // A user attribute change drops user 1 from the gold audience.
    let mut change = sdk_batch(1, now, vec![]);
    change["user_attributes"] = serde_json::json!({"tier": "silver", "age": 42});
    produce_json(&producer, &topics.events, &change).await?;
    let drops = collect_deltas(
        &ch,
        vec![gold.id],
        &deltas.last().unwrap().cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(drops.len(), 1);
    assert_eq!(
        (drops[0].mpid, drops[0].kind, drops[0].version),
        (1, pb::DeltaKind::Dropped as i32, 2)
    );

    // The identities topic removes the email of user 2: dropped from gold.
    let identity = serde_json::json!({"mpid": 2, "identity_changes": [{"identity_type": "email", "old_value": "u2@example.com", "new_value": null}]});
    produce_json(&producer, &topics.identities, &identity).await?;
    let drops = collect_deltas(
        &ch,
        vec![gold.id],
        &drops[0].cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (drops[0].mpid, drops[0].kind),
        (2, pb::DeltaKind::Dropped as i32)
    );

    // Sizes and figures.
    let mut ms = pb::membership_service_client::MembershipServiceClient::new(ch.clone());
    let stats = ms
        .get_audience_stats(pb::GetAudienceStatsRequest {
            audience_ids: vec![gold.id],
        })
        .await?
        .into_inner();
    let s = stats.audiences[0].stats.unwrap();
    assert_eq!((s.size, s.adds_24h, s.drops_24h), (0, 2, 2));

    assert_eq!(
        engine.terminate()?,
        Some(0),
        "SIGTERM exits cleanly; log:\n{}",
        engine.log_text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_definitions_name_the_field() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("defs");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "defs")?;
    let ch = engine.ready().await?;
    let cases = [
        (
            serde_json::json!({"event": {"type": "custom_event"}}),
            "criteria.event.name",
        ),
        (
            serde_json::json!({"and": [{"user_attribute": {"name": "x", "op": "contains"}}]}),
            "criteria.and[0].user_attribute.value",
        ),
        (serde_json::json!({"or": []}), "criteria.or"),
        (
            serde_json::json!({"event": {"type": "nope", "name": "x"}}),
            "criteria.event.type",
        ),
        (
            serde_json::json!({"event": {"name": "x", "time": {"before": "09/12/18"}}}),
            "criteria.event.time.before",
        ),
        (
            serde_json::json!({"user_attribute": {"name": "x", "op": "sounds_like", "value": "y"}}),
            "criteria.user_attribute.op",
        ),
        (serde_json::json!({"weird": {}}), "criteria"),
    ];
    for (criteria_json, field) in cases {
        let err = create_audience(&ch, "bad", criteria_json.clone())
            .await
            .unwrap_err();
        let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{criteria_json}"
        );
        assert!(
            status.message().starts_with(field),
            "{criteria_json}: {}",
            status.message()
        );
    }
    Ok(())
}
