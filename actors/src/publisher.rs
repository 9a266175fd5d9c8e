//! Publishers read the durable outboxes and write them to Kafka: membership deltas to the
//! deltas topic, dead letters to the dead-letter topic. At least once: the published position
//! is stored only after the broker acknowledged, so a crash republishes, never skips. Each
//! record carries a stable id for receivers to drop duplicates.

use crate::engine::Engine;
use audience_state::model::DeltaKind;
use audience_state::store::Partition;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const DELTAS_SINK: &str = "kafka-deltas";
pub const DEAD_LETTER_SINK: &str = "kafka-dead-letters";

/// The JSON form of a delta on the deltas topic.
pub fn delta_json(
    partition: Partition,
    seq: u64,
    d: &audience_state::model::Delta,
) -> serde_json::Value {
    serde_json::json!({
        "delta_id": d.delta_id(),
        "audience_id": d.audience_id,
        "mpid": d.mpid,
        "kind": match d.kind { DeltaKind::Added => "added", DeltaKind::Dropped => "dropped" },
        "event_time_ms": d.event_time_ms,
        "processing_time_ms": d.processing_time_ms,
        "version": d.version,
        "partition": partition,
        "sequence": seq,
    })
}

/// Publishes until `shutdown`, then drains what is left once.
pub async fn run(
    engine: Arc<Engine>,
    producer: FutureProducer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wake = engine.outbox_written.subscribe();
    let mut last_prune = std::time::Instant::now();
    loop {
        if last_prune.elapsed() > Duration::from_secs(60) {
            prune(&engine);
            last_prune = std::time::Instant::now();
        }
        let stopping = *shutdown.borrow();
        let partitions: Vec<Partition> = engine.partitions.lock().iter().copied().collect();
        let mut progressed = false;
        for p in partitions {
            match publish_partition(&engine, &producer, p).await {
                Ok(n) => progressed |= n > 0,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "publishing failed; will retry");
                    metrics::counter!("audience_publish_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if stopping {
            break;
        }
        if progressed {
            continue;
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Drops deltas older than the outbox retention that the deltas topic already has.
fn prune(engine: &Engine) {
    let cutoff = engine.clock.now() - engine.settings.outbox_retention_ms;
    let partitions: Vec<Partition> = engine.partitions.lock().iter().copied().collect();
    for p in partitions {
        let published = engine.store.published(DELTAS_SINK, p).unwrap_or(0);
        // Connections (even faulted ones) keep what they still owe.
        let owed = match engine.store.lowest_connection_cursor(p) {
            Ok(lowest) => lowest.unwrap_or(u64::MAX),
            Err(e) => {
                // Not knowing what connections owe, prune nothing.
                tracing::warn!(partition = p, error = %e, "connection cursors unreadable; outbox not pruned");
                continue;
            }
        };
        match engine
            .store
            .prune_outbox_before(p, cutoff, published.min(owed))
        {
            Ok(Some(seq)) => tracing::info!(partition = p, through = seq, "outbox pruned"),
            Ok(None) => {}
            Err(e) => tracing::warn!(partition = p, error = %e, "outbox pruning failed"),
        }
    }
}

async fn publish_partition(
    engine: &Engine,
    producer: &FutureProducer,
    p: Partition,
) -> anyhow::Result<usize> {
    let settings = &engine.settings;
    let mut sent = 0;
    let after = engine.store.published(DELTAS_SINK, p)?;
    let deltas = engine.store.read_outbox(p, after, 500)?;
    if let Some(&(last, _)) = deltas.last() {
        // (key, payload, id) outlive the sends, which borrow them until acknowledged.
        let encoded: Vec<(String, String, String)> = deltas
            .iter()
            .map(|(seq, d)| {
                (
                    d.mpid.to_string(),
                    delta_json(p, *seq, d).to_string(),
                    d.delta_id(),
                )
            })
            .collect();
        let mut acks = Vec::with_capacity(deltas.len());
        for (key, payload, id) in &encoded {
            let record = FutureRecord::to(&settings.deltas_topic)
                .key(key)
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "delta-id",
                    value: Some(id),
                }));
            acks.push(producer.send(record, Duration::from_secs(10)));
        }
        for ack in futures::future::join_all(acks).await {
            ack.map_err(|(e, _)| anyhow::anyhow!("deltas topic: {e}"))?;
        }
        engine.store.set_published(DELTAS_SINK, p, last)?;
        sent += deltas.len();
        metrics::counter!("audience_deltas_published_total").increment(deltas.len() as u64);
    }
    let after = engine.store.published(DEAD_LETTER_SINK, p)?;
    let letters = engine.store.read_dead_letters(p, after, 500)?;
    if let Some(&(last, _)) = letters.last() {
        for (_, letter) in &letters {
            let offset = letter.offset.to_string();
            let partition = letter.partition.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "dlq-topic",
                    value: Some(&letter.topic),
                })
                .insert(Header {
                    key: "dlq-partition",
                    value: Some(&partition),
                })
                .insert(Header {
                    key: "dlq-offset",
                    value: Some(&offset),
                })
                .insert(Header {
                    key: "dlq-reason",
                    value: Some(&letter.reason),
                })
                .insert(Header {
                    key: "dlq-reason-code",
                    value: Some(&letter.reason_code),
                });
            let mut record = FutureRecord::to(&settings.dead_letter_topic)
                .payload(&letter.payload)
                .headers(headers);
            if let Some(k) = &letter.key {
                record = record.key(k);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic: {e}"))?;
        }
        engine.store.set_published(DEAD_LETTER_SINK, p, last)?;
        sent += letters.len();
    }
    Ok(sent)
}
