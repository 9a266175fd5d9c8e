//! The cluster as any node sees it (cluster step 3, operations): every node announces itself
//! on the members topic every [`ANNOUNCE_EVERY`] (its id, the gRPC address it serves, the
//! partitions it owns and restores, how far it has read each, its catalog position), keyed by
//! its id, and writes a tombstone when it stops. Any node reads the topic's recent records to
//! answer `audiencectl cluster`: the nodes, who owns each partition, and its lag.
//!
//! Why a topic and not the consumer group's description: a group's members and assignments
//! come from DescribeGroups, which not every broker answers (tansu 0.6 lists no group), and it
//! knows nothing of restores or gRPC addresses.
//!
//! Invariants: the newest announcement of a node wins, a tombstone removes it; an
//! announcement older than [`SILENT_AFTER`] marks its node silent (killed, or cut off), and its
//! partitions are not credited to it once another node announces them.

use crate::node::Node;
use audience_state::store::Partition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a node announces itself by default (`cluster.heartbeat_ms`).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// An announcement older than this: its node is silent.
pub const SILENT_AFTER: Duration = Duration::from_secs(10);
/// Records read back from the topic's end: a few minutes of announcements of a large cluster.
const RECENT_RECORDS: i64 = 2_000;

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub node_id: String,
    /// The gRPC address it serves.
    pub grpc: String,
    /// Partitions it owns (restored and consuming), and those it is restoring.
    pub partitions: Vec<Partition>,
    pub restoring: Vec<Partition>,
    /// Per owned partition, the next input offset it will read, summed over the input topics.
    pub next_offsets: BTreeMap<Partition, i64>,
    pub catalog_applied_offset: i64,
    /// When it was made (the node's wall clock).
    pub at_ms: i64,
    /// Partitions it keeps a warm copy of (`crate::standby`).
    #[serde(default)]
    pub standby: Vec<Partition>,
}

/// The newest announcement of each node among `records` (key, value; `None` a tombstone),
/// in the topic's order.
pub fn latest(
    records: impl IntoIterator<Item = (String, Option<Announcement>)>,
) -> BTreeMap<String, Announcement> {
    let mut nodes = BTreeMap::new();
    for (key, value) in records {
        match value {
            Some(a) => {
                nodes.insert(key, a);
            }
            None => {
                nodes.remove(&key);
            }
        }
    }
    nodes
}

/// Each partition's owner among `nodes`: the node whose newest announcement lists it, the
/// most recent announcement winning while a partition moves; silent nodes only when no one
/// else claims it.
pub fn owners(nodes: &BTreeMap<String, Announcement>, now_ms: i64) -> BTreeMap<Partition, String> {
    let mut owners: BTreeMap<Partition, (bool, i64, String)> = BTreeMap::new();
    for a in nodes.values() {
        let live = now_ms - a.at_ms <= SILENT_AFTER.as_millis() as i64;
        for p in &a.partitions {
            let claim = (live, a.at_ms, a.node_id.clone());
            let better = owners
                .get(p)
                .is_none_or(|held| (claim.0, claim.1) > (held.0, held.1));
            if better {
                owners.insert(*p, claim);
            }
        }
    }
    owners
        .into_iter()
        .map(|(p, (_, _, node))| (p, node))
        .collect()
}

/// A partition as the cluster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: Partition,
    /// The node that owns it ("" when no node announces it).
    pub owner: String,
    /// A node restoring it ("" when none).
    pub restoring_on: String,
    /// Input records its owner has not read, over the input topics; -1 when unknown.
    pub lag: i64,
    /// Nodes keeping a warm copy of it.
    pub standbys: Vec<String>,
}

/// Every partition of the input topics (`ends`: their ends per partition, summed over the
/// topics) as the nodes' announcements show it.
pub fn partitions(
    nodes: &BTreeMap<String, Announcement>,
    ends: &BTreeMap<Partition, i64>,
    now_ms: i64,
) -> Vec<PartitionView> {
    let owners = owners(nodes, now_ms);
    ends.iter()
        .map(|(&partition, &end)| {
            let owner = owners.get(&partition).cloned().unwrap_or_default();
            let lag = nodes
                .get(&owner)
                .and_then(|a| a.next_offsets.get(&partition))
                .map_or(-1, |next| (end - next).max(0));
            let restoring_on = nodes
                .values()
                .find(|a| a.restoring.contains(&partition))
                .map(|a| a.node_id.clone())
                .unwrap_or_default();
            let standbys = nodes
                .values()
                .filter(|a| a.standby.contains(&partition) && !is_silent(a, now_ms))
                .map(|a| a.node_id.clone())
                .collect();
            PartitionView {
                partition,
                owner,
                restoring_on,
                lag,
                standbys,
            }
        })
        .collect()
}

/// Whether a node's newest announcement is older than [`SILENT_AFTER`].
pub fn is_silent(announcement: &Announcement, now_ms: i64) -> bool {
    is_silent_after(announcement, now_ms, SILENT_AFTER)
}

/// Whether a node's newest announcement is older than `silent_after` (`cluster.silent_after_ms`).
pub fn is_silent_after(announcement: &Announcement, now_ms: i64, silent_after: Duration) -> bool {
    now_ms - announcement.at_ms > silent_after.as_millis() as i64
}

/// The cluster's figures as gauges, the same on every node: live and silent nodes, and per
/// partition whether a node owns it, whether one restores it, and its lag.
pub fn export_metrics(
    nodes: &BTreeMap<String, Announcement>,
    partitions: &[PartitionView],
    now_ms: i64,
) {
    let silent = nodes.values().filter(|a| is_silent(a, now_ms)).count();
    metrics::gauge!("audience_cluster_nodes", "state" => "live").set((nodes.len() - silent) as f64);
    metrics::gauge!("audience_cluster_nodes", "state" => "silent").set(silent as f64);
    for p in partitions {
        let partition = p.partition.to_string();
        let flag = |set: bool| if set { 1.0 } else { 0.0 };
        metrics::gauge!("audience_cluster_partition_owned", "partition" => partition.clone())
            .set(flag(!p.owner.is_empty()));
        metrics::gauge!("audience_cluster_partition_restoring", "partition" => partition.clone())
            .set(flag(!p.restoring_on.is_empty()));
        metrics::gauge!("audience_cluster_partition_standbys", "partition" => partition.clone())
            .set(p.standbys.len() as f64);
        metrics::gauge!("audience_cluster_partition_lag", "partition" => partition)
            .set(p.lag as f64);
    }
}

/// How often a node reads the members topic to export the cluster's figures.
const EXPORT_EVERY: Duration = Duration::from_secs(10);

/// The wall clock in milliseconds, as announcements are dated.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a node says of itself that does not change while it runs.
pub struct NodeFacts {
    pub node_id: String,
    /// The gRPC address the other nodes reach it at.
    pub grpc: String,
    /// The input topics, whose positions it announces.
    pub input_topics: Vec<String>,
}

/// The members topic of a deployment.
#[derive(Clone)]
pub struct MembersTopic {
    /// Bootstrap servers and the deployment's Kafka properties.
    pub kafka: ClientConfig,
    pub topic: String,
}

impl MembersTopic {
    /// Creates the topic (one partition, compacted) when missing.
    pub async fn ensure(&self) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        use rdkafka::types::RDKafkaErrorCode;
        let admin: AdminClient<DefaultClientContext> = self.kafka.create()?;
        let new = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&new], &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => anyhow::bail!("members topic {} not created: {code}", self.topic),
            }
        }
        Ok(())
    }

    /// Announces `node` every `every` (and at once when `wake` is notified: its partitions
    /// changed) until shutdown, then writes its tombstone; `catalog_offset` and `standby` say
    /// where its catalog stands and what it stands by for.
    pub async fn announce(
        self,
        node: Arc<Node>,
        facts: NodeFacts,
        catalog_offset: impl Fn() -> i64 + Send + 'static,
        standby: impl Fn() -> Vec<Partition> + Send + 'static,
        (every, wake): (Duration, Arc<tokio::sync::Notify>),
        mut shutdown: watch::Receiver<bool>,
    ) {
        let NodeFacts {
            node_id,
            grpc,
            input_topics,
        } = facts;
        let producer: FutureProducer = match self.kafka.clone().set("linger.ms", "0").create() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "members topic producer not created: no announcements");
                return;
            }
        };
        loop {
            let stopping = *shutdown.borrow();
            let payload = if stopping {
                None
            } else {
                let partitions: Vec<Partition> =
                    node.engine.partitions.lock().iter().copied().collect();
                let mut next_offsets = BTreeMap::new();
                for &p in &partitions {
                    let mut sum = 0;
                    for topic in &input_topics {
                        sum += node
                            .engine
                            .store
                            .next_offset(topic, p)
                            .ok()
                            .flatten()
                            .unwrap_or(0);
                    }
                    next_offsets.insert(p, sum);
                }
                let announcement = Announcement {
                    node_id: node_id.clone(),
                    grpc: grpc.clone(),
                    partitions,
                    restoring: node.restoring(),
                    next_offsets,
                    catalog_applied_offset: catalog_offset(),
                    at_ms: now_ms(),
                    standby: standby(),
                };
                Some(serde_json::to_vec(&announcement).expect("announcements serialise"))
            };
            let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic).key(&node_id);
            if let Some(payload) = &payload {
                record = record.payload(payload);
            }
            if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                tracing::debug!(error = %e, "announcement not written");
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Reads the cluster as `audiencectl cluster` shows it every [`EXPORT_EVERY`] and exports
    /// its figures ([`export_metrics`]) until shutdown.
    pub async fn export(self, input_topics: Vec<String>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let members = self.clone();
            let topics = input_topics.clone();
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, String>((members.read()?, members.input_ends(&topics)?))
            })
            .await;
            match read {
                Ok(Ok((nodes, ends))) => {
                    let now = now_ms();
                    export_metrics(&nodes, &partitions(&nodes, &ends, now), now);
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster figures not read"),
                Err(e) => tracing::debug!(error = %e, "cluster figures not read"),
            }
            tokio::select! {
                _ = tokio::time::sleep(EXPORT_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The newest announcement of each node, from the topic's recent records (blocking).
    pub fn read(&self) -> Result<BTreeMap<String, Announcement>, String> {
        self.tail()?.refresh()
    }

    /// A reader of the topic that keeps its place: each [`MembersTail::refresh`] reads only
    /// what came since (blocking).
    pub fn tail(&self) -> Result<MembersTail, String> {
        let consumer: BaseConsumer = self
            .kafka
            .clone()
            .set("group.id", "audience-members-reader")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("members topic reader: {e}"))?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .map_err(|e| format!("members topic {}: {e}", self.topic))?;
        let from = low.max(high - RECENT_RECORDS);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(from))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        Ok(MembersTail {
            consumer,
            topic: self.topic.clone(),
            position: from,
            nodes: BTreeMap::new(),
        })
    }

    /// The input topics' ends per partition, summed over the topics (blocking).
    pub fn input_ends(&self, topics: &[String]) -> Result<BTreeMap<Partition, i64>, String> {
        let consumer: BaseConsumer = self
            .kafka
            .clone()
            .create()
            .map_err(|e| format!("a client for the input topics: {e}"))?;
        let mut ends = BTreeMap::new();
        for topic in topics {
            let count = crate::catalog_topic::partition_count(consumer.client(), topic)
                .map_err(|e| format!("topic {topic}: {e}"))?;
            for p in 0..count {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map_err(|e| format!("topic {topic} partition {p}: {e}"))?;
                *ends.entry(p as Partition).or_insert(0) += high;
            }
        }
        Ok(ends)
    }
}

/// A reader of the members topic that keeps its place and the newest announcement of each
/// node (see [`MembersTopic::tail`]).
pub struct MembersTail {
    consumer: BaseConsumer,
    topic: String,
    /// The next offset to read.
    position: i64,
    nodes: BTreeMap<String, Announcement>,
}

impl MembersTail {
    /// Reads up to the topic's end (10 s at most) and returns the newest announcement of each
    /// node (blocking).
    pub fn refresh(&mut self) -> Result<BTreeMap<String, Announcement>, String> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .map_err(|e| format!("members topic {}: {e}", self.topic))?;
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.position < high && std::time::Instant::now() < deadline {
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.map_err(|e| format!("members topic: {e}"))?;
            self.position = message.offset() + 1;
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value = match message.payload() {
                None => None,
                Some(bytes) => match serde_json::from_slice::<Announcement>(bytes) {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            records.push((key, value));
        }
        let nodes = std::mem::take(&mut self.nodes);
        self.nodes = latest(nodes.into_iter().map(|(k, a)| (k, Some(a))).chain(records));
        Ok(self.nodes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(node: &str, partitions: &[Partition], at_ms: i64) -> Announcement {
        Announcement {
            node_id: node.into(),
            grpc: format!("{node}:50051"),
            partitions: partitions.to_vec(),
            restoring: vec![],
            next_offsets: BTreeMap::new(),
            catalog_applied_offset: 3,
            at_ms,
            standby: vec![],
        }
    }

    #[test]
    fn the_newest_announcement_wins_and_a_tombstone_removes_its_node() {
        let nodes = latest([
            ("a".to_string(), Some(announcement("a", &[0, 1], 1_000))),
            ("b".to_string(), Some(announcement("b", &[], 1_000))),
            ("a".to_string(), Some(announcement("a", &[0], 3_000))),
            ("b".to_string(), Some(announcement("b", &[1], 3_000))),
            ("c".to_string(), Some(announcement("c", &[], 3_000))),
            ("c".to_string(), None),
        ]);
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(nodes["a"].partitions, [0]);
        let owners = owners(&nodes, 4_000);
        assert_eq!(owners[&0], "a");
        assert_eq!(owners[&1], "b");
    }

    #[test]
    fn a_silent_node_keeps_a_partition_only_while_no_live_one_claims_it() {
        let silent_at = 1_000;
        let now = silent_at + SILENT_AFTER.as_millis() as i64 + 1;
        let nodes = latest([
            ("a".to_string(), Some(announcement("a", &[0, 1], silent_at))),
            ("b".to_string(), Some(announcement("b", &[1], now - 500))),
        ]);
        let owners = owners(&nodes, now);
        assert_eq!(owners[&0], "a", "nobody else claims it");
        assert_eq!(owners[&1], "b", "the live node's claim wins");
        assert!(is_silent(&nodes["a"], now) && !is_silent(&nodes["b"], now));
    }

    #[test]
    fn each_partition_shows_its_owner_restorer_and_lag() {
        let mut a = announcement("a", &[0], 5_000);
        a.next_offsets.insert(0, 90);
        let mut b = announcement("b", &[], 5_000);
        b.restoring = vec![1];
        b.standby = vec![0];
        let nodes = latest([("a".to_string(), Some(a)), ("b".to_string(), Some(b))]);
        let ends = BTreeMap::from([(0, 100), (1, 40), (2, 0)]);
        let shown = partitions(&nodes, &ends, 6_000);
        let view = |partition, owner: &str, restoring_on: &str, lag| PartitionView {
            partition,
            owner: owner.into(),
            restoring_on: restoring_on.into(),
            lag,
            standbys: vec![],
        };
        let mut warm = view(0, "a", "", 10);
        warm.standbys = vec!["b".into()];
        assert_eq!(shown, [warm, view(1, "", "b", -1), view(2, "", "", -1)]);
    }
}
