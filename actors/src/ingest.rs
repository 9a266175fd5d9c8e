//! Kafka ingestion: one consumer group member per node, subscribed to the events and the
//! identities topics. Each poll batch is split by partition and handed to the partition actors;
//! the next poll waits until every actor has written its part, so a rebalance never finds a
//! batch in flight.
//!
//! Offsets: the authoritative position is the one stored in RocksDB with the state. On
//! assignment the consumer is positioned at the stored offsets; Kafka's group commits are only
//! advisory (for lag tooling) and made after the RocksDB write.

use crate::node::Node;
use crate::partition::{ProcessBatch, RawMessage};
use audience_state::store::{Partition, Store};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Positions the consumer at the offsets stored with the state when partitions are assigned.
pub struct IngestContext {
    store: Arc<Store>,
    node: Arc<Node>,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = Vec::new();
                for elem in tpl.elements() {
                    assigned.push((elem.topic().to_string(), elem.partition()));
                }
                for (topic, partition) in &assigned {
                    // The state is authoritative: with no stored offset this node has applied
                    // nothing of the partition, whatever the group committed, so it starts at
                    // the beginning.
                    match self.store.next_offset(topic, *partition as Partition) {
                        Ok(stored) => {
                            let offset = stored.map_or(Offset::Beginning, Offset::Offset);
                            let _ = tpl.set_partition_offset(topic, *partition, offset);
                        }
                        Err(e) => {
                            tracing::error!(topic, partition, error = %e, "cannot read stored offset")
                        }
                    }
                }
                tracing::info!(partitions = ?assigned, "partitions assigned; resuming from stored offsets");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
                for (_, partition) in &assigned {
                    if let Err(e) = self.node.partition(*partition as Partition) {
                        tracing::error!(partition, error = %e, "cannot start partition actor");
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<Partition> = tpl
                    .elements()
                    .iter()
                    .map(|e| e.partition() as Partition)
                    .collect();
                tracing::info!(partitions = ?revoked, "partitions revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
                self.node.release(&revoked);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub max_batch: usize,
    /// Extra librdkafka properties.
    pub properties: BTreeMap<String, String>,
}

pub fn consumer(
    config: &IngestConfig,
    node: Arc<Node>,
) -> Result<StreamConsumer<IngestContext>, KafkaError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    for (k, v) in &config.properties {
        cc.set(k, v);
    }
    let context = IngestContext {
        store: node.engine.store.clone(),
        node,
    };
    let consumer: StreamConsumer<IngestContext> = cc.create_with_context(context)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

fn to_raw(m: &rdkafka::message::BorrowedMessage<'_>) -> RawMessage {
    let content_type = m.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("content-type"))
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    });
    RawMessage {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        content_type,
    }
}

/// The ingestion loop; returns after `shutdown` flips, once the batch in flight is committed.
pub async fn run(
    consumer: Arc<StreamConsumer<IngestContext>>,
    node: Arc<Node>,
    max_batch: usize,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            m = consumer.recv() => m,
        };
        let mut by_partition: BTreeMap<i32, Vec<RawMessage>> = BTreeMap::new();
        match first {
            Ok(m) => by_partition
                .entry(m.partition())
                .or_default()
                .push(to_raw(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!("audience_consumer_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let mut count = 1;
        while count < max_batch {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    by_partition
                        .entry(m.partition())
                        .or_default()
                        .push(to_raw(&m));
                    count += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        let mut work = Vec::new();
        for (partition, messages) in by_partition {
            let addr = node.partition(partition as Partition)?;
            work.push(async move { (partition, addr.send(ProcessBatch(messages)).await) });
        }
        let mut commit = TopicPartitionList::new();
        for (partition, result) in futures::future::join_all(work).await {
            match result {
                Ok(Ok(outcome)) => {
                    for (topic, offset) in outcome.next_offsets {
                        let _ =
                            commit.add_partition_offset(&topic, partition, Offset::Offset(offset));
                    }
                }
                // The store refused a write: continuing would apply later messages without
                // these. Stop; the supervisor restarts the node from the stored offsets.
                Ok(Err(e)) => anyhow::bail!("partition {partition}: {e}"),
                Err(e) => anyhow::bail!("partition {partition} actor unavailable: {e}"),
            }
        }
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
                tracing::debug!(error = %e, "advisory offset commit failed");
            }
        }
    }
    tracing::info!("ingestion stopped after its last batch");
    Ok(())
}
