//! Copies each partition's changelog units (see `audience_state::changelog`) to the changelog
//! topic, the topic's partition being the state's, in sequence order, and acknowledges them in
//! the store once the broker holds them (`acks=all`, idempotent producer: retries neither
//! reorder nor repeat). A unit waits in the store until then, so a crash between the local
//! write and the topic sends it on restart.
//!
//! A node assigned a partition restores it from this topic ([`crate::changelog_restore`]):
//! enable both with `cluster.changelog`.

use crate::engine::Engine;
use audience_state::changelog::follow::gap_keeps_reign;
use audience_state::changelog::Record;
use audience_state::store::Partition;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Units sent per partition and round.
const PAGE: usize = 256;
/// The longest run of another writer's records read to decide whether this node's units
/// after it still follow its claim: longer ones mean another owner.
const MAX_GAP: i64 = 1_000;
/// How long a read of the changelog topic waits for the broker.
const STALL: Duration = Duration::from_secs(30);
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

/// The records of one partition of the changelog topic from offset `from` to `to` (excluded);
/// blocking.
pub fn read_records(
    kafka: &ClientConfig,
    topic: &str,
    partition: Partition,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", "audience-changelog-gap")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition as i32, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    let mut next = from;
    let deadline = std::time::Instant::now() + STALL;
    while next < to {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "partition {partition}: changelog offsets {from}..{to} not read in {STALL:?}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        if message.offset() < next {
            continue;
        }
        next = message.offset() + 1;
        records.push(
            Record::decode(message.payload().unwrap_or_default()).map_err(|why| {
                anyhow::anyhow!(
                    "partition {partition}: changelog record at offset {} is unreadable: {why}",
                    message.offset()
                )
            })?,
        );
    }
    Ok(records)
}

/// Publishes until `shutdown`, then once more so that what was committed before it goes too.
pub async fn run(
    engine: Arc<Engine>,
    producer: FutureProducer,
    kafka: ClientConfig,
    topic: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wake = engine.outbox_written.subscribe();
    loop {
        let stopping = *shutdown.borrow();
        match engine.store.partitions_with_pending_units() {
            Ok(partitions) => {
                for p in partitions {
                    if let Err(e) = publish(&engine, &producer, &kafka, &topic, p).await {
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
    kafka: &ClientConfig,
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
        let benign = benign_gaps(engine, kafka, topic, p, &acknowledged).await?;
        if !engine.store.acknowledge_units(p, &acknowledged, &benign)? {
            // Another node claimed the partition: these units are refused by every reader,
            // and their deltas never leave. The group revokes the partition soon; the
            // engine's own assignment releases it at its next look.
            tracing::error!(
                partition = p,
                seq,
                offset,
                "changelog units refused: another node claimed the partition"
            );
            metrics::counter!("audience_changelog_units_refused_total").increment(1);
            engine.fenced.lock().insert(p);
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

/// The gaps another writer left between this node's units (offset ranges) that hold no claim
/// above its epoch, read from the topic: its units after them still follow (see
/// `Store::acknowledge_units`). Stops at the first gap that ends its reign.
async fn benign_gaps(
    engine: &Engine,
    kafka: &ClientConfig,
    topic: &str,
    p: Partition,
    acknowledged: &[(u64, i64)],
) -> anyhow::Result<Vec<(i64, i64)>> {
    let position = engine.store.changelog_follow_position(p)?;
    let mut expected = position.next_offset;
    let mut benign = Vec::new();
    for &(_, offset) in acknowledged {
        if offset > expected {
            if offset - expected > MAX_GAP {
                break;
            }
            let (kafka, topic, from) = (kafka.clone(), topic.to_string(), expected);
            let records =
                tokio::task::spawn_blocking(move || read_records(&kafka, &topic, p, from, offset))
                    .await??;
            if !gap_keeps_reign(&records, position.own_epoch) {
                break;
            }
            tracing::info!(
                partition = p,
                from,
                to = offset,
                "another writer's records between this node's units leave its claim standing"
            );
            benign.push((from, offset));
        }
        expected = offset + 1;
    }
    Ok(benign)
}
