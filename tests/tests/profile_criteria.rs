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
