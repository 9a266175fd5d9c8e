//! A slow subscriber cannot make the server buffer without bound (workspaces and access issue,
//! item 5): a delta stream that is never read holds its own pump back at the bounded channel
//! and the HTTP/2 window, while the engine processes every message and another subscriber
//! gets every delta; read later, the slow stream still gives every delta, in order, once.

use audience_e2e::*;
use audience_proto::v1 as pb;
use futures::future::try_join_all;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

/// Profiles entering the audience: far more deltas than the stream's buffers hold (the pump's
/// channel of 1,024, the stream's of 256, and the client's HTTP/2 window of 64 KiB).
const USERS: i64 = 8_000;

async fn delivered_to(ch: &Channel, name: &str) -> Result<u64> {
    let connectors = pb::membership_service_client::MembershipServiceClient::new(ch.clone())
        .list_connectors(pb::ListConnectorsRequest {})
        .await?
        .into_inner()
        .connectors;
    connectors
        .iter()
        .find(|c| c.subscriber_name == name)
        .map(|c| c.delivered)
        .ok_or_else(|| anyhow::anyhow!("no connector named {name}: {connectors:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_holds_back_only_its_own_stream() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("slow-subscriber");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "slow")?;
    let ch = engine.ready().await?;
    let players = create_audience(
        &ch,
        "players",
        json!({"event": {"type": "custom_event", "name": "Play"}}),
    )
    .await?;
    wait_active(&ch, players.id).await?;

    // The slow subscriber opens its stream and reads nothing yet. Its connection takes
    // 64 KiB unread (HTTP/2's default window; hyper's client would take 2 MiB), so what the
    // server sends past that waits in the server's buffers, which this test bounds.
    let window = 65_535;
    let slow_channel = engine
        .client
        .endpoint(&engine.grpc)?
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await?;
    let slow_channel = InterceptedService::new(slow_channel, engine.client.interceptor()?);
    let mut slow = pb::membership_service_client::MembershipServiceClient::new(slow_channel)
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![players.id],
            cursor: String::new(),
            subscriber_name: "slow".into(),
        })
        .await?
        .into_inner();
    let fast = tokio::spawn({
        let ch = ch.clone();
        async move {
            collect_deltas(&ch, vec![players.id], "", Duration::from_secs(180), |d| {
                d.len() >= USERS as usize
            })
            .await
        }
    });

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let batches: Vec<serde_json::Value> = (1..=USERS)
        .map(|mpid| {
            sdk_batch(
                mpid,
                now,
                vec![custom_event("Play", "navigation", now, json!({}))],
            )
        })
        .collect();
    for chunk in batches.chunks(1_000) {
        try_join_all(
            chunk
                .iter()
                .map(|b| produce_json(&producer, &topics.events, b)),
        )
        .await?;
    }
    // The engine is not held back: every message is processed, the other subscriber gets
    // every delta.
    wait_processed(&ch, USERS as u64, Duration::from_secs(180)).await?;
    let fast = fast.await??;
    assert_eq!(
        fast.len(),
        USERS as usize,
        "the reading subscriber gets every delta"
    );

    // The slow stream's pump stands where the buffers filled: it has not read the rest.
    let mut held = delivered_to(&ch, "slow").await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = delivered_to(&ch, "slow").await?;
        if now == held {
            break;
        }
        held = now;
    }
    assert!(
        held < USERS as u64 / 2,
        "a stream nobody reads took {held} of {USERS} deltas off the log"
    );

    // Read now, it gives every delta, each once, in the log's order per partition.
    let mut seen = BTreeSet::new();
    let mut last_sequence = std::collections::BTreeMap::new();
    while seen.len() < USERS as usize {
        let delta = tokio::time::timeout(Duration::from_secs(60), slow.message())
            .await
            .map_err(|_| anyhow::anyhow!("the slow stream stalled at {}", seen.len()))??
            .ok_or_else(|| anyhow::anyhow!("the slow stream ended at {}", seen.len()))?;
        assert!(seen.insert(delta.mpid), "mpid {} twice", delta.mpid);
        let previous = last_sequence.insert(delta.partition, delta.sequence);
        assert!(
            previous.is_none_or(|p| p < delta.sequence),
            "partition {} went back from {previous:?} to {}",
            delta.partition,
            delta.sequence
        );
    }
    assert_eq!(seen.len(), USERS as usize);
    assert!(delivered_to(&ch, "slow").await? >= USERS as u64);
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");
    Ok(())
}
