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

    // A cursor names its deployment: another's is refused, never read as this one's.
    assert!(drops[0].cursor.starts_with("c="), "{}", drops[0].cursor);
    let foreign = drops[0].cursor.replacen("c=", "c=f", 1);
    let refused = pb::membership_service_client::MembershipServiceClient::new(ch.clone())
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![gold.id],
            cursor: foreign,
            subscriber_name: "foreign".into(),
        })
        .await
        .expect_err("another deployment's cursor");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    // A cursor past what this engine holds ends the stream with OUT_OF_RANGE (start again from
    // a cursor it gave), never a code that asks to retry with the same cursor.
    let ahead: Vec<String> = drops[0]
        .cursor
        .split(',')
        .map(|part| match part.split_once('=') {
            Some((p, _)) if p.starts_with('p') => format!("{p}=999999"),
            _ => part.to_string(),
        })
        .collect();
    let mut stream = pb::membership_service_client::MembershipServiceClient::new(ch.clone())
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![gold.id],
            cursor: ahead.join(","),
            subscriber_name: "ahead".into(),
        })
        .await?
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await?
        .expect_err("a cursor ahead of the outbox");
    assert_eq!(ended.code(), tonic::Code::OutOfRange, "{ended:?}");
    assert!(ended.message().contains("ahead of the outbox"), "{ended:?}");

    // Sizes and figures.
    let mut ms = pb::membership_service_client::MembershipServiceClient::new(ch.clone());
    let stats = ms
        .get_audience_stats(pb::GetAudienceStatsRequest {
            audience_ids: vec![gold.id],
        })
        .await?
        .into_inner();
    let s = stats.audiences[0].stats.clone().unwrap();
    assert_eq!((s.size, s.adds_24h, s.drops_24h), (0, 2, 2));

    // The deltas topic carries the same deltas, with their stable ids.
    let topic_ids = read_delta_topic(&broker, &topics.deltas, 5).await?;
    let mut expected_ids: Vec<String> = deltas.iter().map(|d| d.delta_id.clone()).collect();
    expected_ids.push(format!("{}:1:2", gold.id));
    expected_ids.push(format!("{}:2:2", gold.id));
    expected_ids.sort();
    assert_eq!(topic_ids, expected_ids);
    // The status shows each partition's deltas acknowledged by the topic (the publisher
    // stores its position just after the acknowledgement).
    wait_published(&ch, Duration::from_secs(20)).await?;
    let s = status(&ch).await?;
    assert!(s
        .partitions
        .iter()
        .all(|p| p.deltas_published == p.outbox_head));
    assert_eq!(
        s.partitions.iter().map(|p| p.deltas_published).sum::<u64>(),
        5
    );

    // A protobuf envelope from another producer is applied like JSON.
    use prost::Message;
    let envelope = pb::Envelope {
        payload: Some(pb::envelope::Payload::Batch(pb::EventBatch {
            mpid: 4,
            user_attributes: [(
                "tier".to_string(),
                pb::AttributeValue {
                    value: Some(pb::attribute_value::Value::StringValue("gold".into())),
                },
            )]
            .into(),
            user_identities: [("email".to_string(), "p4@example.com".to_string())].into(),
            ..Default::default()
        })),
    };
    let payload = envelope.encode_to_vec();
    let record = rdkafka::producer::FutureRecord::to(&topics.events)
        .key("4")
        .payload(&payload)
        .headers(
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "content-type",
                value: Some("application/x-protobuf"),
            }),
        );
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)?;

    // A connector per subscription: figures of what it delivered.
    let mut open = ms
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![gold.id],
            cursor: String::new(),
            subscriber_name: "open-subscriber".into(),
        })
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(30), open.message())
            .await??
            .expect("stream open");
        seen.push((d.mpid, d.kind));
    }
    assert_eq!(
        seen.last(),
        Some(&(4, pb::DeltaKind::Added as i32)),
        "{seen:?}"
    );
    let connectors = ms
        .list_connectors(pb::ListConnectorsRequest {})
        .await?
        .into_inner()
        .connectors;
    let c = connectors
        .iter()
        .find(|c| c.subscriber_name == "open-subscriber")
        .expect("the open subscription has a connector");
    assert_eq!(c.delivered, 5);
    let figures = c
        .audiences
        .iter()
        .find(|a| a.audience_id == gold.id)
        .and_then(|a| a.stats.clone())
        .expect("gold figures");
    assert_eq!(
        (figures.size, figures.adds_24h, figures.drops_24h),
        (1, 3, 2)
    );
    assert!((figures.volatility_24h - 5.0).abs() < 1e-9);
    drop(open);

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

async fn read_delta_topic(broker: &Broker, topic: &str, n: usize) -> Result<Vec<String>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "delta-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut ids = Vec::new();
    while ids.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        ids.push(v["delta_id"].as_str().unwrap_or_default().to_string());
    }
    ids.sort();
    Ok(ids)
}
