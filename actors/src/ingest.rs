//! Kafka ingestion: one consumer per node over the events and the identities topics, either a
//! consumer group member (its partitions come from the group's rebalances) or assigned by the
//! engine itself ([`crate::self_assignment`], incrementally: never subscribed). Each partition
//! has a lane ([`crate::ingest_lanes`]): its messages wait there while its actor applies the
//! batch before them, so every partition's actor works at once while the consumer polls on. A
//! full lane pauses its partition in the consumer.
//!
//! A rebalance runs inside `recv`, between two messages: a revoked partition's actor is sent
//! `Stop` behind the batch it was handed ([`Node::release`] waits for it to stop), and what
//! its lane holds is dropped by epoch. Before the consumer is positioned again at the stored
//! offsets of every partition (a group member's restored partitions), the batches in flight
//! are awaited and the lanes emptied.
//!
//! Offsets: the authoritative position is the one stored in RocksDB with the state. On
//! assignment the consumer is positioned at the stored offsets; Kafka's group commits are only
//! advisory (for lag tooling) and made after the RocksDB write.
//!
//! With the changelog on, an assigned partition is not consumed until it is restored from the
//! changelog topic ([`crate::changelog_restore`]); then the consumer is assigned it at the
//! offsets the restored state was produced up to (see `resume_restored`).
//!
//! After each positioning the first record of each partition is checked against the offset
//! asked for, and the consumer moved back when the broker skipped records
//! ([`crate::input_positions`]).

use crate::changelog_restore::Restorer;
use crate::ingest_lanes::{Lanes, Received, Resume};
use crate::input_positions::{InputPositions, Verdict};
use crate::node::Node;
use crate::partition::{BatchOutcome, BatchRefused, PartitionActor, ProcessBatch, RawMessage};
use audience_state::store::{Partition, Store};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Positions the consumer at the offsets stored with the state when partitions are assigned.
pub struct IngestContext {
    store: Arc<Store>,
    node: Arc<Node>,
    restore: Option<RestoreHook>,
    /// The offsets the consumer was last positioned at, until its first records confirm them.
    positions: Mutex<InputPositions>,
    /// Held while the consumer's assignment changes outside a rebalance (a restored partition
    /// added, a handed-over one removed), so that a partition is never added after it left.
    changing: Mutex<()>,
}

impl IngestContext {
    /// The consumer was just assigned `assignment`: its explicit offsets are checked against
    /// the first records that come.
    fn positioned(&self, assignment: &TopicPartitionList) {
        let elements = assignment.elements();
        self.positions.lock().positioned(
            elements.iter().filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.topic(), e.partition(), offset)),
                _ => None,
            }),
            std::time::Instant::now(),
        );
    }

    /// Stops consuming `partitions` (those the consumer is assigned; one still being restored
    /// is not) and disowns them on `node` ([`Node::disown`]), as one change: a restore
    /// finishing meanwhile does not add them back (see [`resume_restored`]).
    pub fn stop_consuming(
        consumer: &StreamConsumer<IngestContext>,
        partitions: &[Partition],
    ) -> anyhow::Result<()> {
        let context = consumer.context();
        let _one_change = context.changing.lock();
        context.node.disown(partitions);
        let mut leaving = TopicPartitionList::new();
        for e in consumer.assignment()?.elements() {
            if partitions.contains(&(e.partition() as Partition)) {
                leaving.add_partition(e.topic(), e.partition());
            }
        }
        if leaving.count() > 0 {
            consumer.incremental_unassign(&leaving)?;
        }
        let gone: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        context.positions.lock().forget(&gone);
        Ok(())
    }
}

/// How assigned partitions are restored from the changelog before they are consumed.
#[derive(Clone)]
pub struct RestoreHook {
    pub restorer: Arc<Restorer>,
    pub runtime: tokio::runtime::Handle,
    /// Where a finished restore is told, with its token (see [`Node::begin_restore`]).
    pub restored: mpsc::UnboundedSender<(Partition, u64)>,
}

impl RestoreHook {
    /// Restores `partition` on a blocking thread, trying again while it stays assigned.
    pub fn spawn(&self, node: Arc<Node>, partition: Partition, token: u64) {
        let (restorer, restored) = (self.restorer.clone(), self.restored.clone());
        self.runtime.spawn_blocking(move || {
            let mut backoff = Duration::from_millis(500);
            while node.is_restoring(partition, token) {
                match restorer.restore(&node, partition, token) {
                    Ok(report) => {
                        tracing::info!(partition, ?report, "partition restored from the changelog");
                        let _ = restored.send((partition, token));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "partition not restored; trying again");
                        metrics::counter!("audience_changelog_restore_errors_total").increment(1);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
    }
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
                let mut partitions: Vec<Partition> =
                    assigned.iter().map(|(_, p)| *p as Partition).collect();
                partitions.sort_unstable();
                partitions.dedup();
                if let Some(restore) = &self.restore {
                    // Nothing is consumed before the state is the changelog's: the consumer
                    // is assigned each partition once it is restored (see `resume_restored`).
                    if let Err(e) = consumer.assign(&TopicPartitionList::new()) {
                        tracing::error!(error = %e, "assign failed");
                    }
                    self.positioned(&TopicPartitionList::new());
                    let token = self.node.begin_restore(&partitions);
                    for &p in &partitions {
                        restore.spawn(self.node.clone(), p, token);
                    }
                } else {
                    if let Err(e) = consumer.assign(tpl) {
                        tracing::error!(error = %e, "assign failed");
                    }
                    self.positioned(tpl);
                    if let Err(e) = self.node.assign(&partitions) {
                        tracing::error!(?partitions, error = %e, "cannot start partition actor");
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
                self.positioned(&TopicPartitionList::new());
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
    /// The node's id: its client id in the group, which names it in the group's description.
    pub client_id: String,
    pub topics: Vec<String>,
    /// A partition's batch ends at this many messages or at `max_batch_bytes` of keys and
    /// payloads, the record that crosses it included; a partition holds one batch in flight and
    /// at most [`crate::ingest_lanes::LANE_BATCHES`] batches' messages (and `max_batch_bytes`)
    /// waiting.
    pub max_batch: usize,
    pub max_batch_bytes: usize,
    /// The engine assigns the partitions ([`crate::self_assignment`]): the consumer is never
    /// subscribed, and restored partitions are added to its assignment incrementally.
    pub self_assigned: bool,
    /// Extra librdkafka properties.
    pub properties: BTreeMap<String, String>,
}

pub fn consumer(
    config: &IngestConfig,
    node: Arc<Node>,
    restore: Option<RestoreHook>,
) -> Result<StreamConsumer<IngestContext>, KafkaError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("client.id", &config.client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // librdkafka prefetches into its queue up to 64 MiB by default, plus its per-message
        // overhead (several times the payload of a small batch): the lanes hold two batch
        // budgets already, so one more in the queue keeps the partitions fed.
        .set(
            "queued.max.messages.kbytes",
            (config.max_batch_bytes / 1024)
                .clamp(1024, 65536)
                .to_string(),
        );
    for (k, v) in &config.properties {
        cc.set(k, v);
    }
    let context = IngestContext {
        store: node.engine.store.clone(),
        node,
        restore,
        positions: Mutex::new(InputPositions::default()),
        changing: Mutex::new(()),
    };
    let consumer: StreamConsumer<IngestContext> = cc.create_with_context(context)?;
    if !config.self_assigned {
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
    }
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
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// A record received, unless the broker skipped records before it since the consumer was
/// positioned: then the consumer is moved back and the record comes again later
/// (see [`crate::input_positions`]).
fn admit(
    consumer: &StreamConsumer<IngestContext>,
    message: &rdkafka::message::BorrowedMessage<'_>,
) -> Option<RawMessage> {
    let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
    let verdict = consumer.context().positions.lock().check(
        topic,
        partition,
        offset,
        std::time::Instant::now(),
    );
    act_on(consumer, topic, partition, verdict, Some(offset)).then(|| to_raw(message))
}

/// Partitions positioned a while ago that gave no record since: moved back, as when the
/// broker skips records (see [`admit`]; the skipped batch may have been the partition's last).
fn reread_quiet_partitions(consumer: &StreamConsumer<IngestContext>) {
    let now = std::time::Instant::now();
    let quiet = consumer.context().positions.lock().quiet(now);
    for (topic, partition, verdict) in quiet {
        act_on(consumer, &topic, partition, verdict, None);
    }
}

/// Does what `verdict` says of the record at `offset` (`None`: of a quiet partition, no
/// record); returns whether the record goes to its actor.
fn act_on(
    consumer: &StreamConsumer<IngestContext>,
    topic: &str,
    partition: i32,
    verdict: Verdict,
    offset: Option<i64>,
) -> bool {
    match verdict {
        Verdict::Deliver => true,
        Verdict::Hole { expected } => {
            match offset {
                Some(offset) => tracing::info!(
                    topic,
                    partition,
                    expected,
                    offset,
                    "the topic has no records between the stored offset and the first one served"
                ),
                None => tracing::info!(
                    topic,
                    partition,
                    expected,
                    "no record came from the stored offset, read again from further back too: \
                     waiting for the next one"
                ),
            }
            true
        }
        Verdict::Reread { from } => {
            tracing::debug!(
                topic,
                partition,
                from,
                offset,
                "the broker skipped records past the stored offset; reading from further back"
            );
            metrics::counter!("audience_input_rereads_total").increment(1);
            match consumer.seek(
                topic,
                partition,
                Offset::Offset(from),
                Duration::from_secs(5),
            ) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(
                        topic, partition, from, error = %e,
                        "cannot move the consumer back: reading on from here"
                    );
                    consumer
                        .context()
                        .positions
                        .lock()
                        .give_up(topic, partition);
                    true
                }
            }
        }
    }
}

/// A restored partition is consumed from the offsets its state was produced up to.
///
/// In a consumer group (EAGER), the consumer is assigned again every partition this node
/// consumes, each at the offsets its state holds: between two batches those are exactly where
/// each one stands (what was fetched ahead is fetched again), and explicit offsets leave
/// nothing to a seek on a paused partition or to the group's advisory commits. Assigned by the
/// engine (`incremental`), only the restored partitions are added, and the others go on.
fn resume_restored(
    consumer: &StreamConsumer<IngestContext>,
    node: &Node,
    topics: &[String],
    restored: &[(Partition, u64)],
    incremental: bool,
) -> anyhow::Result<()> {
    let _one_change = consumer.context().changing.lock();
    let mut resumed = Vec::new();
    for &(partition, token) in restored {
        if node.finish_restore(partition, token)? {
            resumed.push(partition);
        }
    }
    if resumed.is_empty() {
        return Ok(());
    }
    let at_stored_offsets = |partitions: &[Partition]| -> anyhow::Result<TopicPartitionList> {
        let mut assignment = TopicPartitionList::new();
        for &p in partitions {
            for topic in topics {
                let offset = node
                    .engine
                    .store
                    .next_offset(topic, p)?
                    .map_or(Offset::Beginning, Offset::Offset);
                assignment.add_partition_offset(topic, p as i32, offset)?;
            }
        }
        Ok(assignment)
    };
    if incremental {
        let assigned = consumer.assignment()?;
        let new: Vec<Partition> = resumed
            .iter()
            .copied()
            .filter(|&p| {
                let p = p as i32;
                !assigned.elements().iter().any(|e| e.partition() == p)
            })
            .collect();
        let adding = at_stored_offsets(&new)?;
        consumer.incremental_assign(&adding)?;
        let elements = adding.elements();
        consumer.context().positions.lock().added(
            elements.iter().filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.topic(), e.partition(), offset)),
                _ => None,
            }),
            std::time::Instant::now(),
        );
    } else {
        let assignment = at_stored_offsets(&node.owned())?;
        consumer.assign(&assignment)?;
        consumer.context().positioned(&assignment);
    }
    tracing::info!(partitions = ?resumed, "restored partitions resumed");
    Ok(())
}

/// The least time between two re-assignments of restored partitions. An `assign()` stops and
/// starts every partition again; librdkafka 2.12 aborts the process (an assertion in
/// `rd_kafka_assignment_partition_stopped`) when one lands while the previous one's partitions
/// are still stopping, which six restores finishing in the same millisecond did.
const REASSIGN_GAP: Duration = Duration::from_millis(300);
/// The same for an incremental assignment (the engine's own), which stops nothing: restores
/// finishing within it still make one call, and a partition waits at most this long for it.
const INCREMENTAL_GAP: Duration = Duration::from_millis(20);

/// Ingestion stops polling while what its lanes hold (waiting and in flight) reaches this many
/// batch byte budgets (`max_batch_bytes`); a batch applied frees its part. Each lane is bounded
/// too (pausing its partition), so this binds only several partitions of large records.
const HELD_BATCHES: usize = 2;

/// The ingestion loop; returns after `shutdown` flips, once the batches in flight are applied.
/// `restored` tells of partitions restored from the changelog (see [`RestoreHook`]).
///
/// Each partition has a lane ([`Lanes`]): while a batch of it is applied by its actor the
/// consumer goes on polling, and the next batch waits in the lane (its partition paused in the
/// consumer once the lane is full). Every partition with messages has its batch in flight at
/// once; results come back in any order, and each one's offsets are committed (advisory) as it
/// comes.
pub async fn run(
    consumer: Arc<StreamConsumer<IngestContext>>,
    node: Arc<Node>,
    config: IngestConfig,
    mut restored: Option<mpsc::UnboundedReceiver<(Partition, u64)>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last_reassignment: Option<std::time::Instant> = None;
    let mut quiet = tokio::time::interval(crate::input_positions::QUIET);
    quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut lanes = Lanes::new(config.max_batch, config.max_batch_bytes);
    let held_limit = config.max_batch_bytes.saturating_mul(HELD_BATCHES);
    let mut in_flight = FuturesUnordered::new();
    // Batches the store refused, each waiting to be handed over again, and how many times in a
    // row each partition's was refused.
    let mut retries = FuturesUnordered::new();
    let mut stalls: BTreeMap<Partition, u32> = BTreeMap::new();
    let mut generation = node.generation();
    loop {
        // The assignment changed (a rebalance runs inside `recv`; the engine's own handover on
        // another task): what the lanes of partitions that left hold is dropped, read again
        // from the stored offsets by whoever owns them now.
        if node.generation() != generation {
            generation = node.generation();
            let epochs = node.epochs();
            let dropped = lanes.retain_epochs(|p| epochs.get(&p).copied());
            if dropped > 0 {
                tracing::info!(
                    dropped,
                    "partitions left while their messages waited: read again from the stored \
                     offsets by their owner"
                );
            }
        }
        let (ready, resume) = lanes.take_ready();
        resume_lanes(&consumer, &config.topics, &resume);
        for batch in ready {
            let owned_now = node.epoch(batch.partition) == Some(batch.epoch);
            match node.owned_partition(batch.partition)? {
                Some(addr) if owned_now => {
                    // Queued now, not when first polled: a `Stop` sent by a release after this
                    // comes after the batch (see `Node::release`).
                    let request = addr.send(ProcessBatch(batch.messages));
                    in_flight.push(awaiting(batch.partition, batch.epoch, request));
                }
                // Not owned any more: its messages are its new owner's.
                _ => lanes.finished(batch.partition, batch.epoch),
            }
        }
        let can_poll = lanes.held_bytes() < held_limit;
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            Some((partition, epoch, result)) = in_flight.next(), if !in_flight.is_empty() => {
                match result {
                    // The store refused it: nothing after it is applied (its lane holds the
                    // rest, and pauses the partition once full) until it is stored.
                    Ok(Err(refused)) if node.epoch(partition) == Some(epoch) => {
                        let attempt = stalls.entry(partition).or_insert(0);
                        *attempt += 1;
                        let delay = retry_delay(*attempt);
                        tracing::warn!(
                            partition, attempt = *attempt, error = %refused.error, retry_in = ?delay,
                            "the store refused a batch: the partition waits, and the batch is \
                             tried again"
                        );
                        metrics::counter!("audience_store_refusals_total").increment(1);
                        node.set_stalled(partition, true);
                        retries.push(later(partition, epoch, refused.messages, delay));
                    }
                    result => {
                        if stalls.remove(&partition).is_some() {
                            node.set_stalled(partition, false);
                            tracing::info!(partition, "the store took the batch: the partition goes on");
                        }
                        lanes.finished(partition, epoch);
                        applied(&consumer, &node, partition, epoch, result)?;
                    }
                }
                continue;
            }
            Some((partition, epoch, messages)) = retries.next(), if !retries.is_empty() => {
                match node.owned_partition(partition)? {
                    Some(addr) if node.epoch(partition) == Some(epoch) => {
                        let request = addr.send(ProcessBatch(messages));
                        in_flight.push(awaiting(partition, epoch, request));
                    }
                    // It left while it waited: its new owner reads it from the stored offsets.
                    _ => {
                        stalls.remove(&partition);
                        node.set_stalled(partition, false);
                        lanes.finished(partition, epoch);
                    }
                }
                continue;
            }
            _ = quiet.tick() => {
                reread_quiet_partitions(&consumer);
                continue;
            }
            Some(first) = async { restored.as_mut()?.recv().await } => {
                // Restores finishing together make one re-assignment, and re-assignments keep
                // their distance (see `REASSIGN_GAP`).
                let gap = if config.self_assigned {
                    INCREMENTAL_GAP
                } else {
                    REASSIGN_GAP
                };
                if let Some(at) = last_reassignment {
                    tokio::time::sleep(gap.saturating_sub(at.elapsed())).await;
                }
                let mut finished = vec![first];
                if let Some(more) = restored.as_mut() {
                    while let Ok(next) = more.try_recv() {
                        finished.push(next);
                    }
                }
                if !config.self_assigned {
                    // Every owned partition is positioned again at its stored offsets: the
                    // batches in flight are applied first (their offsets stored), and what
                    // waits is dropped (fetched again from there), refused batches too.
                    while let Some((partition, epoch, result)) = in_flight.next().await {
                        lanes.finished(partition, epoch);
                        applied(&consumer, &node, partition, epoch, result)?;
                    }
                    retries.clear();
                    for (partition, _) in std::mem::take(&mut stalls) {
                        node.set_stalled(partition, false);
                    }
                    let paused = lanes.clear();
                    set_paused(&consumer, &config.topics, &paused, false);
                }
                resume_restored(
                    &consumer,
                    &node,
                    &config.topics,
                    &finished,
                    config.self_assigned,
                )?;
                last_reassignment = Some(std::time::Instant::now());
                continue;
            }
            m = consumer.recv(), if can_poll => m,
        };
        // The rebalance callbacks run inside `recv`, before it returns a message: each message
        // is tagged with its partition's epoch when its `recv` returned.
        let mut next = Some(first);
        let (mut received, mut dropped) = (0, 0);
        while let Some(polled) = next.take() {
            let m = match polled {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    metrics::counter!("audience_consumer_errors_total").increment(1);
                    if received == 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            };
            received += 1;
            if let Some(raw) = admit(&consumer, &m) {
                let partition = m.partition() as Partition;
                match lanes.receive(partition, node.epoch(partition), raw) {
                    Received::Kept => {}
                    Received::Pause(p) => {
                        metrics::counter!("audience_ingest_pauses_total").increment(1);
                        set_paused(&consumer, &config.topics, &[p], true);
                    }
                    Received::Dropped => dropped += 1,
                    Received::Again => {}
                }
            }
            if received < config.max_batch && lanes.held_bytes() < held_limit {
                next = consumer.recv().now_or_never();
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "messages of partitions not owned when received: read again from the stored \
                 offsets by their owner"
            );
        }
    }
    // The batches handed over are applied before the loop returns (and their offsets
    // committed); what waits in the lanes is read again from the stored offsets.
    while let Some((partition, epoch, result)) = in_flight.next().await {
        lanes.finished(partition, epoch);
        applied(&consumer, &node, partition, epoch, result)?;
    }
    tracing::info!("ingestion stopped after its last batch");
    Ok(())
}

/// Resumes the partitions of lanes that have room again. The consumer reads on from the record
/// after the last one received of each topic (librdkafka's application position), and that
/// positioning is checked: a broker may serve it from the next record batch on (see
/// [`InputPositions::resumed`]); what is read again is passed over by the lane.
fn resume_lanes(consumer: &StreamConsumer<IngestContext>, topics: &[String], resume: &[Resume]) {
    if resume.is_empty() {
        return;
    }
    consumer.context().positions.lock().resumed(
        resume.iter().flat_map(|r| {
            r.from
                .iter()
                .map(move |(topic, offset)| (topic.as_str(), r.partition as i32, *offset))
        }),
        std::time::Instant::now(),
    );
    let partitions: Vec<Partition> = resume.iter().map(|r| r.partition).collect();
    set_paused(consumer, topics, &partitions, false);
}

/// Pauses (or resumes) every topic's `partitions` in the consumer. A pause drops what the
/// consumer fetched ahead of them; a resume fetches again from the record after the last one
/// received.
fn set_paused(
    consumer: &StreamConsumer<IngestContext>,
    topics: &[String],
    partitions: &[Partition],
    pause: bool,
) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        for topic in topics {
            list.add_partition(topic, p as i32);
        }
    }
    let done = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(e) = done {
        // A partition not assigned any more has nothing to pause or resume.
        tracing::debug!(?partitions, pause, error = %e, "pause or resume refused");
    }
}

/// What a partition actor answers to a batch handed over.
type BatchResult = Result<Result<BatchOutcome, BatchRefused>, actix::MailboxError>;

/// The answer to a batch of `partition` handed over under `epoch`, with its partition and epoch.
async fn awaiting(
    partition: Partition,
    epoch: u64,
    request: actix::dev::Request<PartitionActor, ProcessBatch>,
) -> (Partition, u64, BatchResult) {
    (partition, epoch, request.await)
}

/// A refused batch of `partition`, given back after `delay` to be handed over again.
async fn later(
    partition: Partition,
    epoch: u64,
    messages: Vec<RawMessage>,
    delay: Duration,
) -> (Partition, u64, Vec<RawMessage>) {
    tokio::time::sleep(delay).await;
    (partition, epoch, messages)
}

/// How long a partition waits before its refused batch is tried again: from 100 ms, doubling
/// to 5 s. RocksDB takes writes again on its own once space returns (its file manager checks
/// every few seconds), so waiting longer would only add to the pause.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6)))
        .min(Duration::from_secs(5))
}

/// A batch of `partition` handed over under `epoch` came back: its offsets are committed
/// (advisory) while the partition is still owned under that epoch.
fn applied(
    consumer: &StreamConsumer<IngestContext>,
    node: &Node,
    partition: Partition,
    epoch: u64,
    result: BatchResult,
) -> anyhow::Result<()> {
    let still_owned = node.epoch(partition) == Some(epoch);
    match result {
        Ok(Ok(outcome)) => {
            if !still_owned {
                return Ok(());
            }
            let mut commit = TopicPartitionList::new();
            for (topic, offset) in outcome.next_offsets {
                let _ =
                    commit.add_partition_offset(&topic, partition as i32, Offset::Offset(offset));
            }
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
                    tracing::debug!(error = %e, "advisory offset commit failed");
                }
            }
            Ok(())
        }
        // Refused by the store after the partition left, or while ingestion stops: nothing of
        // it was stored, so whoever reads the partition next reads it again from the stored
        // offsets. (While the partition stays, the loop tries the batch again instead.)
        Ok(Err(refused)) => {
            tracing::info!(
                partition, error = %refused.error,
                "a batch the store refused is left to be read again from the stored offsets"
            );
            Ok(())
        }
        // Released while the batch was queued: its next owner reads it from the stored offsets.
        Err(e) if !still_owned => {
            tracing::debug!(partition, error = %e, "batch of a released partition not applied");
            Ok(())
        }
        Err(e) => anyhow::bail!("partition {partition} actor unavailable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_assignment_creates_actors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), false).unwrap());
        let clock = Arc::new(crate::clock::Clock::new(true));
        let engine = crate::engine::Engine::new(store, clock, Default::default()).unwrap();
        let node = Node::start(engine, 1).unwrap();
        assert!(
            node.owned_partition(3).unwrap().is_none(),
            "never assigned: no actor"
        );
        node.assign(&[3]).unwrap();
        let epoch = node.epoch(3).expect("owned: an epoch");
        assert!(node.owned_partition(3).unwrap().is_some());
        assert_eq!(node.owned(), vec![3]);
        node.release(&[3]);
        assert_eq!(node.epoch(3), None);
        node.assign(&[3]).unwrap();
        assert!(node.epoch(3) > Some(epoch), "assigned again: a new epoch");
        node.release(&[3]);
        assert!(
            node.owned_partition(3).unwrap().is_none(),
            "revoked: messages gathered before do not bring it back"
        );
        assert!(node.owned().is_empty());
    }
}
