//! The catalog topic: the Kafka half of cluster step 1. Definition changes are proposed by
//! producing a [`CatalogRecord`] to a compacted topic of one partition, and every node reads
//! the topic in offset order and applies each record to its [`CatalogState`]: the topic is the
//! source of truth, and the order of its one partition decides every conflict the same way on
//! every node.
//!
//! Invariants:
//! - the topic has exactly one partition (one order); [`ensure_catalog_topic`] creates it
//!   compacted and refuses a topic with more;
//! - a proposal is produced idempotently with `acks=all`, so the offset it returns is durable;
//! - a reader applies every offset once, in order, from where its state stopped, and a record
//!   it cannot decode is counted and passed over, never stopping it (its offset is consumed
//!   like any other, so the ids of later records stay the same on every node).
//!
//! [`crate::catalog_applier`] runs these for a node: its reader follows the topic, and the
//! registries' writes are its proposals.

use audience_state::catalog_log::{
    Applied, CatalogRecord, CatalogState, Change, ProposalId, Refusal,
};
use audience_state::model::TimestampMs;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The catalog topic's one partition.
const PARTITION: i32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum CatalogTopicError {
    #[error("catalog topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("catalog topic: {0}")]
    Kafka(#[from] KafkaError),
}

/// The client configuration every catalog client starts from: the brokers and the operator's
/// extra properties (security, timeouts), as the node's other clients have them.
pub fn client_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

/// Where a reader of a log without holes that skipped past `expected` reads from on its
/// `attempt`th try (from 1). The first try reads from `expected` again (librdkafka may have
/// skipped records); then 1, 2, 4, ... records further back, never before `low`, the reader
/// passing over what it had: a broker that serves a batch only to a fetch from its first
/// offset (tansu 0.6's storage does) skips the rest of a batch a read starts inside of (a
/// changelog follower that stopped mid-batch, a subscription resumed mid-batch).
pub fn reread_from(expected: i64, low: i64, attempt: u32) -> i64 {
    let back = match attempt {
        0 | 1 => 0,
        n => 1i64 << (n - 2).min(40),
    };
    (expected - back).max(low)
}

/// The partition count of `topic` (0 while the broker does not know it). Blocking.
pub fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Creates the catalog topic (one partition, compacted so that retention never deletes a
/// definition, `replication` copies) if it does not exist, and checks that an existing one
/// has one partition.
pub async fn ensure_catalog_topic(
    kafka: &ClientConfig,
    topic: &str,
    replication: i32,
) -> Result<(), CatalogTopicError> {
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(CatalogTopicError::Topic {
                    topic: topic.to_string(),
                    reason: format!("not created: {code}"),
                })
            }
        }
    }
    // A topic just created may take a moment to show its partition in the metadata.
    let mut partitions = 0;
    for _ in 0..50 {
        partitions = partition_count(admin.inner(), topic)?;
        if partitions > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if partitions != 1 {
        return Err(CatalogTopicError::Topic {
            topic: topic.to_string(),
            reason: format!(
                "has {partitions} partitions; the catalog needs exactly one (one order for \
                 every node)"
            ),
        });
    }
    // Retention would delete definitions: the topic must be compacted.
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await?;
    let policy = match described.first() {
        Some(Ok(config)) => config
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone()),
        _ => None,
    };
    match policy {
        // Some brokers (tansu, the tests' broker) report no topic configuration.
        None => tracing::warn!(
            topic,
            "the broker did not report the catalog topic's cleanup.policy: make sure it is \
             compact, or retention will delete definitions"
        ),
        Some(policy) if !policy.contains("compact") => {
            return Err(CatalogTopicError::Topic {
                topic: topic.to_string(),
                reason: format!(
                    "has cleanup.policy={policy}: retention would delete definitions; set \
                     cleanup.policy=compact"
                ),
            });
        }
        Some(_) => {}
    }
    Ok(())
}

/// The offset after the last one a state applied.
fn next_offset(state: &CatalogState) -> i64 {
    state.applied_offset.map_or(0, |o| o + 1)
}

/// Proposes changes: produces them to the catalog topic.
pub struct CatalogProposer {
    topic: String,
    producer: FutureProducer,
    /// This node's name and incarnation: unique across nodes and restarts.
    node: String,
    seq: AtomicU64,
}

impl CatalogProposer {
    /// `node` names the proposer; its start time is added so that a restarted node's
    /// proposals never reuse an earlier incarnation's ids.
    pub fn new(
        kafka: &ClientConfig,
        topic: &str,
        node: &str,
        started_at_ms: TimestampMs,
    ) -> Result<CatalogProposer, CatalogTopicError> {
        let producer = kafka
            .clone()
            .set("enable.idempotence", "true")
            // One record per produce batch: catalog writes are rare, so this costs nothing.
            // With concurrent proposals batched together, tansu (the broker of the tests)
            // reported the partition's end short of the batch's later records, hiding them
            // from a reader catching up to that end.
            .set("batch.num.messages", "1")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(CatalogProposer {
            topic: topic.to_string(),
            producer,
            node: format!("{node}-{started_at_ms}"),
            seq: AtomicU64::new(0),
        })
    }

    /// The record of a change `by` a caller (its token's name, "" for none), with a proposal
    /// id of its own (to wait for its outcome before producing it).
    pub fn record(&self, at_ms: TimestampMs, by: &str, change: Change) -> CatalogRecord {
        CatalogRecord {
            proposal: ProposalId {
                node: self.node.clone(),
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            },
            at_ms,
            by: by.to_string(),
            change,
        }
    }

    /// This proposer's name in proposal ids.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Produces a change; returns its record and the offset it was written at, once durable.
    pub async fn propose(
        &self,
        at_ms: TimestampMs,
        by: &str,
        change: Change,
    ) -> Result<(CatalogRecord, i64), CatalogTopicError> {
        let record = self.record(at_ms, by, change);
        let offset = self.produce(&record).await?;
        Ok((record, offset))
    }

    /// Produces a record; returns the offset it was written at, once durable.
    pub async fn produce(&self, record: &CatalogRecord) -> Result<i64, CatalogTopicError> {
        let key = record.key();
        let payload = record.encode();
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.topic)
                    .partition(PARTITION)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(delivery.offset)
    }
}

/// One offset as a reader met it.
#[derive(Debug)]
pub enum ReadRecord<'a> {
    /// A record, and what applying it did.
    Record(&'a CatalogRecord, &'a Result<Applied, Refusal>),
    /// Bytes that are not a record, and why.
    Undecodable(&'a str),
}

/// What a reader applied in one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Records applied and accepted.
    pub accepted: u64,
    /// Records applied and refused (they change nothing, on every node alike).
    pub refused: u64,
    /// Records that could not be decoded: counted, reported and passed over.
    pub undecodable: u64,
}

/// Reads the catalog topic in order from where a state stopped.
pub struct CatalogReader {
    topic: String,
    consumer: Arc<StreamConsumer>,
    /// The offset the consumer reads next.
    position: i64,
}

impl CatalogReader {
    /// A reader of `topic` from the offset after `state`'s last applied one.
    pub fn new(
        kafka: &ClientConfig,
        topic: &str,
        state: &CatalogState,
    ) -> Result<CatalogReader, CatalogTopicError> {
        let consumer: StreamConsumer = kafka
            .clone()
            // Required by librdkafka; the reader assigns its partition and joins no group.
            .set("group.id", "audience-catalog-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset the topic no longer holds is an error, never a silent jump to the
            // end: a catalog that skipped records would differ from every other node's.
            .set("auto.offset.reset", "error")
            // A write through the API waits until this reader brings its record back: with
            // librdkafka's default (500 ms), a broker that holds a fetch for its whole wait
            // (tansu does) made every audience write take half a second (100 audience files
            // loaded at start: 50 s).
            .set("fetch.wait.max.ms", "20")
            .create()?;
        let mut reader = CatalogReader {
            topic: topic.to_string(),
            consumer: Arc::new(consumer),
            position: -1,
        };
        reader.seek(next_offset(state))?;
        Ok(reader)
    }

    fn seek(&mut self, offset: i64) -> Result<(), CatalogTopicError> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, PARTITION, Offset::Offset(offset))?;
        self.consumer.assign(&assignment)?;
        self.position = offset;
        Ok(())
    }

    /// The offset the topic will write next: a state that applied every offset below it is
    /// caught up. (A blocking request to the broker: run off the async threads.)
    pub async fn end(&self) -> Result<i64, CatalogTopicError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let (_, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, PARTITION, Duration::from_secs(10))
        })
        .await
        .map_err(|e| CatalogTopicError::Topic {
            topic: self.topic.clone(),
            reason: format!("reading its end: {e}"),
        })??;
        Ok(high)
    }

    /// The first decodable record of the topic (a store that applied the topic before
    /// cluster ids existed learns its id from it). The next [`CatalogReader::read_one`] seeks
    /// back to where its state stands.
    pub async fn first_record(&mut self) -> Result<Option<CatalogRecord>, CatalogTopicError> {
        let end = self.end().await?;
        self.seek(0)?;
        let mut found = None;
        while self.position < end {
            let message = self.consumer.recv().await?;
            self.position = message.offset() + 1;
            if let Ok(record) = CatalogRecord::decode(message.payload().unwrap_or_default()) {
                found = Some(record);
                break;
            }
        }
        // Not a position of any state: read_one seeks.
        self.position = -1;
        Ok(found)
    }

    /// Reads the next offset and applies it to `state` (waiting for one to be written).
    pub async fn read_one(&mut self, state: &mut CatalogState) -> Result<Step, CatalogTopicError> {
        // Read from where this state stopped, whichever state the reader was made with.
        if next_offset(state) != self.position {
            self.seek(next_offset(state))?;
        }
        loop {
            let message = self.consumer.recv().await?;
            let offset = message.offset();
            self.position = offset + 1;
            if state.applied_offset.is_some_and(|a| offset <= a) {
                continue;
            }
            let read = match CatalogRecord::decode(message.payload().unwrap_or_default()) {
                Ok(record) => {
                    let outcome = state.apply(offset, &record);
                    Read::Record(record, outcome)
                }
                Err(reason) => {
                    // Consumed like any offset, so later ids are the same on every node.
                    state.applied_offset = Some(offset);
                    metrics::counter!("audience_catalog_records_undecodable_total").increment(1);
                    tracing::error!(topic = %self.topic, offset, %reason, "catalog record passed over");
                    Read::Undecodable(reason)
                }
            };
            return Ok(Step { offset, read });
        }
    }

    /// Applies every record up to the topic's end as of this call. `on_record` sees each
    /// outcome (to answer the proposing call, to swap the catalog in, to count).
    pub async fn catch_up(
        &mut self,
        state: &mut CatalogState,
        timeout: Duration,
        mut on_record: impl FnMut(i64, ReadRecord<'_>),
    ) -> Result<CatchUp, CatalogTopicError> {
        let end = self.end().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut applied = CatchUp::default();
        while next_offset(state) < end {
            let step = tokio::time::timeout_at(deadline, self.read_one(state))
                .await
                .map_err(|_| CatalogTopicError::Topic {
                    topic: self.topic.clone(),
                    reason: format!(
                        "not read to its end ({end}) within {timeout:?}: stopped after offset \
                         {:?}",
                        state.applied_offset
                    ),
                })??;
            match &step.read {
                Read::Record(_, Ok(_)) => applied.accepted += 1,
                Read::Record(_, Err(_)) => applied.refused += 1,
                Read::Undecodable(_) => applied.undecodable += 1,
            }
            on_record(step.offset, step.view());
        }
        Ok(applied)
    }
}

/// One offset read and applied by [`CatalogReader::read_one`].
#[derive(Debug)]
pub struct Step {
    pub offset: i64,
    pub read: Read,
}

/// What an offset held, and what applying it did.
#[allow(clippy::large_enum_variant)] // one per record read, as `Change`
#[derive(Debug)]
pub enum Read {
    Record(CatalogRecord, Result<Applied, Refusal>),
    Undecodable(String),
}

impl Step {
    pub fn view(&self) -> ReadRecord<'_> {
        match &self.read {
            Read::Record(record, outcome) => ReadRecord::Record(record, outcome),
            Read::Undecodable(reason) => ReadRecord::Undecodable(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_keeps_skipping_reads_from_further_back_each_time() {
        let tries: Vec<i64> = (1..=6).map(|n| reread_from(100, 0, n)).collect();
        assert_eq!(tries, [100, 99, 98, 96, 92, 84]);
        // Never before the log's start.
        assert_eq!(reread_from(10, 7, 6), 7);
        assert_eq!(reread_from(10, 0, 20), 0);
    }
}
