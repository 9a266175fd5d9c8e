//! Time passing drops users from recency audiences with no new event; bad input goes to the
//! dead-letter topic with its reason and the messages after it are processed.

use audience_e2e::*;
use audience_proto::v1 as pb;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use std::time::Duration;

const DAY: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_leave_recency_audiences_when_the_window_passes() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("time");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "time")?;
    let ch = engine.ready().await?;
    let recent = create_audience(
        &ch,
        "Searched in the last 7 days",
        serde_json::json!({"event": {"name": "Search", "time": {"within_last_days": 7}}}),
    )
    .await?;
    let lapsed = create_audience(
        &ch,
        "Did not search in the last 2 days",
        serde_json::json!({"event": {"name": "Search", "count": {"exactly": 0}, "time": {"within_last_days": 2}}}),
    )
    .await?;
    let producer = broker.producer()?;
    let t0 = engine_now(&ch).await?;
    produce_json(
        &producer,
        &topics.events,
        &sdk_batch(
            7,
            t0,
            vec![custom_event("search", "search", t0, serde_json::json!({}))],
        ),
    )
    .await?;
    let first = collect_deltas(
        &ch,
        vec![recent.id, lapsed.id],
        "",
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (first[0].audience_id, first[0].kind),
        (recent.id, pb::DeltaKind::Added as i32)
    );

    // Two days and a minute later the user enters "did not search in 2 days", with no event.
    advance_clock(&ch, 2 * DAY + 60_000).await?;
    let second = collect_deltas(
        &ch,
        vec![recent.id, lapsed.id],
        &first[0].cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (second[0].audience_id, second[0].mpid, second[0].kind),
        (lapsed.id, 7, pb::DeltaKind::Added as i32)
    );

    // Still in "searched in 7 days" until the 7 days pass.
    let none = collect_deltas(
        &ch,
        vec![recent.id],
        &second[0].cursor,
        Duration::from_secs(1),
        |d| !d.is_empty(),
    )
    .await?;
    assert!(none.is_empty(), "{none:?}");
    advance_clock(&ch, 5 * DAY).await?;
    let third = collect_deltas(
        &ch,
        vec![recent.id],
        &second[0].cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (third[0].mpid, third[0].kind, third[0].version),
        (7, pb::DeltaKind::Dropped as i32, 2)
    );
    assert!(third[0].processing_time_ms >= t0 + 7 * DAY);
    let p = profile(&ch, 7).await?;
    assert_eq!(
        p.audiences
            .iter()
            .map(|m| m.audience_id)
            .collect::<Vec<_>>(),
        vec![lapsed.id]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_and_processing_goes_on() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("dlq");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "dlq")?;
    let ch = engine.ready().await?;
    let audience = create_audience(
        &ch,
        "Anyone who opened the app",
        serde_json::json!({"event": {"type": "session_start"}}),
    )
    .await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"mpid\": 5, \"events\": [".to_vec()),
        (
            "missing_mpid",
            serde_json::json!({"events": [{"event_type": "session_start", "data": {}}]})
                .to_string()
                .into_bytes(),
        ),
        (
            "unknown_event_type",
            serde_json::json!({"mpid": 5, "events": [{"event_type": "teleport", "data": {}}]})
                .to_string()
                .into_bytes(),
        ),
    ];
    // All on one key, so on one partition, before the good message.
    let mut offsets = Vec::new();
    for (_, payload) in &bad {
        offsets.push(produce(&producer, &topics.events, "5", payload).await?);
    }
    let good = sdk_batch(
        5,
        now,
        vec![
            serde_json::json!({"event_type": "session_start", "data": {"timestamp_unixtime_ms": now}}),
        ],
    );
    produce(&producer, &topics.events, "5", good.to_string().as_bytes()).await?;
    let deltas = collect_deltas(&ch, vec![audience.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!(
        (deltas[0].mpid, deltas[0].kind),
        (5, pb::DeltaKind::Added as i32)
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&topics.dead_letters])?;
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < bad.len() {
        let m = tokio::time::timeout_at(deadline, consumer.recv()).await??;
        let mut headers = std::collections::HashMap::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        letters.push((headers, m.payload().unwrap_or_default().to_vec()));
    }
    letters.sort_by_key(|(h, _)| h["dlq-offset"].parse::<i64>().unwrap());
    for (((code, payload), (partition, offset)), (headers, body)) in
        bad.iter().zip(&offsets).zip(&letters)
    {
        assert_eq!(&headers["dlq-reason-code"], code);
        assert_eq!(headers["dlq-topic"], topics.events);
        assert_eq!(headers["dlq-partition"], partition.to_string());
        assert_eq!(headers["dlq-offset"], offset.to_string());
        assert!(!headers["dlq-reason"].is_empty());
        assert_eq!(body, payload);
    }
    assert!(
        letters[2].0["dlq-reason"].contains("teleport"),
        "{:?}",
        letters[2].0
    );
    let s = status(&ch).await?;
    assert_eq!(s.messages_dead_lettered, 3);
    Ok(())
}
