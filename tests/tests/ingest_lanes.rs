//! Ingestion's lanes through the real broker (README: "How it works", Ingestion): each
//! partition's batch is applied while the consumer polls on, and a partition whose lane is full
//! is paused in the consumer, which drops what it fetched ahead and fetches again from the
//! record after the last one received (from inside a record batch, which tansu serves from the
//! next batch on: each resume is checked as a positioning). With a batch budget of a few dozen
//! records, a topic filled while the engine was stopped pauses every partition many times:
//! every record must still be applied once, none skipped, none twice.

use audience_e2e::*;
use serde_json::json;
use std::time::Duration;

const USERS: i64 = 400;
const PLAYS: u64 = 5;

/// The value of a counter in a Prometheus text body; 0 when it is absent (never incremented).
fn counter(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_partitions_apply_every_record_once() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("ingest-lanes");
    broker.create_deployment_topics(&topics, 4).await?;
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "ingest-lanes",
        &[
            // About 25 records per batch: a lane is full at one batch waiting (by bytes), so
            // every partition is paused and resumed dozens of times.
            ("AUDIENCE_MAX_BATCH_BYTES", "20000"),
            ("AUDIENCE_METRICS_LISTEN", &metrics_listen),
        ],
    )?;
    let ch = engine.ready().await?;
    let played = create_audience(
        &ch,
        "played five times",
        json!({"event": {"type": "custom_event", "name": "Play", "count": {"at_least": PLAYS}}}),
    )
    .await?;
    let too_many = create_audience(
        &ch,
        "played six times",
        json!({"event": {"type": "custom_event", "name": "Play", "count": {"at_least": PLAYS + 1}}}),
    )
    .await?;
    wait_active(&ch, played.id).await?;
    wait_active(&ch, too_many.id).await?;
    let now = engine_now(&ch).await?;
    assert_eq!(engine.terminate()?, Some(0));

    // The topic fills while the engine is stopped: the consumer meets long runs of one
    // partition, as a broker serves a backlog.
    // Sent without waiting for each, so the producer packs them into record batches of many
    // records: a resume from inside one is what a broker may serve wrongly.
    let producer = broker.producer()?;
    let records = (0..PLAYS as i64).flat_map(|round| {
        (1..=USERS).map(move |mpid| {
            let event = custom_event("Play", "other", now - 60_000 + round, json!({}));
            (
                mpid.to_string(),
                sdk_batch(mpid, now, vec![event]).to_string(),
            )
        })
    });
    audience_e2e::bench::produce_all(&producer, &topics.events, records).await?;
    engine.restart()?;
    let ch = engine.ready().await?;
    let total = USERS as u64 * PLAYS;
    if let Err(e) = wait_processed(&ch, total, Duration::from_secs(180)).await {
        let log = engine.plain_log_text();
        let last: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{e}; the engine's last lines, newest first:\n{}",
            last.join("\n")
        );
    }

    for mpid in 1..=USERS {
        let p = profile(&ch, mpid).await?;
        let plays = p
            .events
            .iter()
            .find(|e| e.event_key.starts_with("custom_event:play"))
            .map_or(0, |e| e.count_in_retention);
        assert_eq!(
            plays, PLAYS,
            "user {mpid}: every Play applied once: {:?}",
            p.events
        );
        let audiences: Vec<u64> = p.audiences.iter().map(|a| a.audience_id).collect();
        assert!(audiences.contains(&played.id), "user {mpid}: {audiences:?}");
        assert!(
            !audiences.contains(&too_many.id),
            "user {mpid}: {audiences:?}"
        );
    }
    let body = http_get(metrics_port, "/metrics")?;
    let pauses = counter(&body, "audience_ingest_pauses_total");
    eprintln!(
        "{pauses} pauses, {} re-reads",
        counter(&body, "audience_input_rereads_total")
    );
    assert!(pauses > 0.0, "the lanes paused their partitions:\n{body}");
    assert_eq!(
        counter(&body, "audience_input_offset_jumps_total"),
        0.0,
        "no record skipped"
    );
    let log = engine.plain_log_text();
    assert!(!log.contains("input offsets jump"), "{log}");
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");
    Ok(())
}
