//! Copies each partition's changelog units (see `audience_state::changelog`) to the changelog
//! topic, the topic's partition being the state's, in sequence order, and acknowledges them in
//! the store once the broker holds them (`acks=all`, idempotent producer: retries neither
//! reorder nor repeat). A unit waits in the store until then, so a crash between the local
//! write and the topic sends it on restart.
//!
//! A node assigned a partition restores it from this topic ([`crate::changelog_restore`]):
//! enable both with `cluster.changelog`.

use crate::engine::Engine;
use audience_state::store::Partition;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Units sent per partition and round.
const PAGE: usize = 256;
/// The largest unit the producer and the topic take: a poll batch's unit holds the states it
/// wrote.
pub const MAX_UNIT_BYTES: usize = 64 << 20;

/// Creates the changelog topic (one partition per input partition, nothing deleted by
/// retention: the log is the partitions' state) if it does not exist.
pub async fn ensure_changelog_topic(
    kafka: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let max_bytes = MAX_UNIT_BYTES.to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        .set("retention.ms", "-1")
        .set("max.message.bytes", &max_bytes);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => anyhow::bail!("changelog topic {topic} not created: {code}"),
        }
    }
    Ok(())
}

/// The producer of units: idempotent, every replica acknowledging.
pub fn producer(kafka: &ClientConfig) -> anyhow::Result<FutureProducer> {
    Ok(kafka
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.max.bytes", MAX_UNIT_BYTES.to_string())
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Publishes until `shutdown`, then once more so that what was committed before it goes too.
pub async fn run(
    engine: Arc<Engine>,
    producer: FutureProducer,
    topic: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wake = engine.outbox_written.subscribe();
    loop {
        let stopping = *shutdown.borrow();
        match engine.store.partitions_with_pending_units() {
            Ok(partitions) => {
                for p in partitions {
                    if let Err(e) = publish(&engine, &producer, &topic, p).await {
                        tracing::warn!(partition = p, error = %e, "changelog units not published; retrying");
                        metrics::counter!("audience_changelog_publish_errors_total").increment(1);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "changelog units not read"),
        }
        if stopping {
            return;
        }
        // Commits that wrote deltas wake it; the others wait for the next round.
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = wake.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Sends the partition's waiting units in order and acknowledges the prefix the broker took.
async fn publish(
    engine: &Engine,
    producer: &FutureProducer,
    topic: &str,
    p: Partition,
) -> anyhow::Result<()> {
    let units = engine.store.pending_units(p, PAGE)?;
    if units.is_empty() {
        return Ok(());
    }
    // A unit on the topic must survive a power cut here: else the node would write another
    // unit under the same sequence after it.
    engine.make_durable().await?;
    let key = p.to_be_bytes();
    // Enqueued at once, in order (the idempotent producer keeps it), awaited in order.
    let mut deliveries = Vec::with_capacity(units.len());
    for (seq, bytes) in &units {
        let record = FutureRecord::to(topic)
            .partition(p as i32)
            .key(&key[..])
            .payload(&bytes[..]);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push((*seq, delivery)),
            Err((e, _)) => {
                tracing::warn!(partition = p, seq, error = %e, "changelog unit not enqueued");
                break;
            }
        }
    }
    let mut acknowledged = Vec::new();
    let mut failure = None;
    for (seq, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(delivered)) if failure.is_none() => acknowledged.push((seq, delivered.offset)),
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => failure = failure.or(Some(e.to_string())),
            Err(_) => failure = failure.or(Some("delivery canceled".to_string())),
        }
    }
    if let Some(&(seq, offset)) = acknowledged.last() {
        if !engine.store.acknowledge_units(p, &acknowledged)? {
            // Another node claimed the partition: these units are refused by every reader,
            // and their deltas never leave. The group revokes the partition soon.
            tracing::error!(
                partition = p,
                seq,
                offset,
                "changelog units refused: another node claimed the partition"
            );
            metrics::counter!("audience_changelog_units_refused_total").increment(1);
        }
        // What these units wrote to the outbox may leave now.
        engine.wake_outbox_readers();
        metrics::gauge!("audience_changelog_acknowledged", "partition" => p.to_string())
            .set(seq as f64);
    }
    match failure {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}
