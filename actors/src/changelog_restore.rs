//! Restoring a partition from its changelog topic when this node is assigned it, before it
//! consumes (cluster step 2): the state, the input offsets it was produced up to, the outbox
//! and its sequences, membership versions, timers, all come from the log its previous owners
//! wrote, never from the input topic again.
//!
//! The steps, on a blocking thread per partition:
//! 1. wait until this node's own units of the partition are on the topic (a unit committed
//!    before a revoke is sent by the changelog publisher even after it);
//! 2. read the partition's changelog from this node's position to the end the broker reports,
//!    applying what the log has and this node does not (a node that owned the partition before
//!    reads only the tail), to learn the newest epoch;
//! 3. write a claim with the next epoch, and read through it: the claim's own offset is the end
//!    that counts (a broker's reported end may lag what it acknowledged). Once the claim is
//!    read back as accepted, the units of older epochs after it are ignored by every reader
//!    (the fencing of a zombie), and the units this node writes carry the new epoch;
//! 4. when a snapshot of the partition is far ahead of this node's position (a node new to it,
//!    or the log no longer holds where this node stood), ingest the snapshot first and read
//!    only the log past it (see [`audience_state::changelog::snapshot::restore_start`]);
//! 5. when this node's state went another way than the log's (its last units never reached
//!    the topic, or came after another node's claim: it was a zombie), wipe the partition and
//!    read the log from its start.
//!
//! Invariant: a node writes a partition only after its claim is accepted, and only while the
//! partition is assigned to it (a revoke waits for a claim being written: see
//! [`Node::claim_while_restoring`]).

use crate::engine::Engine;
use crate::node::Node;
use audience_state::changelog::follow::{Broken, Follower, Position, Step};
use audience_state::changelog::snapshot::{
    restore_start, RestoreStart, SnapshotRepository, StoredSnapshot,
};
use audience_state::changelog::{Claim, Record, Unit};
use audience_state::store::{Partition, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a read waits for the broker without progress before the restore fails (and is
/// tried again).
const STALL: Duration = Duration::from_secs(30);
/// Records read between two stores of the position when nothing was applied.
const POSITION_EVERY: u64 = 1_000;
/// Units applied in one write at most, and their encoded bytes: a reader applies what the
/// consumer has ready in one write, up to these.
const APPLY_UNITS: usize = 256;
const APPLY_BYTES: usize = 16 << 20;

/// Units read from the log and not written yet, and their encoded bytes.
#[derive(Default)]
struct ReadyUnits {
    units: Vec<Unit>,
    bytes: usize,
}

impl ReadyUnits {
    fn push(&mut self, unit: Unit, bytes: usize) {
        self.units.push(unit);
        self.bytes += bytes;
    }

    fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    fn full(&self) -> bool {
        self.units.len() >= APPLY_UNITS || self.bytes >= APPLY_BYTES
    }

    /// Writes them in one write with `position`, the position past the last record read.
    fn apply(
        &mut self,
        store: &Store,
        partition: Partition,
        position: &Position,
    ) -> anyhow::Result<()> {
        if !self.is_empty() {
            store.apply_units_at(partition, &self.units, position)?;
            self.units.clear();
            self.bytes = 0;
        }
        Ok(())
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Units applied from the log.
    pub applied: u64,
    /// Units this node held already, checked against the log.
    pub verified: u64,
    /// Stale claims, repeated units and a zombie's units.
    pub ignored: u64,
    /// The local state was wiped and rebuilt from the log's start.
    pub rebuilt: bool,
    /// The epoch of this node's accepted claim.
    pub epoch: u64,
    /// The partition's last unit after the restore.
    pub seq: u64,
    /// The changelog offset of the snapshot the restore started from, if it loaded one.
    pub snapshot: Option<i64>,
    /// Profiles in that snapshot.
    pub snapshot_profiles: u64,
    /// How long the restore took, claim included.
    pub elapsed_ms: u64,
    /// Of which: writing the claim (until the broker acknowledged it).
    pub claim_ms: u64,
    /// Of which: loading the snapshot (linking and ingesting its files).
    pub snapshot_ms: u64,
    /// Of which: waiting for this node's own units to reach the topic.
    pub own_units_ms: u64,
    /// Of which: reading and applying the log (units, claims).
    pub log_ms: u64,
    /// Times the reader was moved back because the broker skipped records (see
    /// [`crate::catalog_topic::reread_from`]).
    pub rereads: u64,
}

/// A consumer of one partition of the changelog topic, and the offset it reads next.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    partition: Partition,
    /// Where the consumer was assigned or last read: no assignment again when it reads on
    /// from there (a new assignment drops what it fetched ahead).
    position: Option<i64>,
}

impl Reader {
    fn position_at(&mut self, offset: i64) -> anyhow::Result<()> {
        if self.position == Some(offset) {
            return Ok(());
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(
            &self.topic,
            self.partition as i32,
            Offset::Offset(offset),
        )?;
        self.consumer.assign(&assignment)?;
        self.position = Some(offset);
        Ok(())
    }
}

/// How many times one catch-up re-reads from further back before it gives up.
const MAX_REPOSITIONS: u32 = 20;

/// Restores partitions of one changelog topic for one node.
pub struct Restorer {
    engine: Arc<Engine>,
    kafka: ClientConfig,
    topic: String,
    node_id: String,
    claims: FutureProducer,
    snapshots: Option<SnapshotRepository>,
}

impl Restorer {
    pub fn new(
        engine: Arc<Engine>,
        kafka: ClientConfig,
        topic: String,
        node_id: String,
        snapshots: Option<SnapshotRepository>,
    ) -> anyhow::Result<Restorer> {
        // Not idempotent: an idempotent producer's first record waits about a second for its
        // producer id, which every restore of a starting node paid. A claim written twice is
        // harmless: the second copy has no higher epoch and every reader ignores it (and a
        // restore that sees its claim's offset land after an equal one claims again).
        let claims = kafka
            .clone()
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Restorer {
            engine,
            kafka,
            topic,
            node_id,
            claims,
            snapshots,
        })
    }

    /// Brings `partition` to the end of its changelog and claims it for this node; blocking.
    /// Fails if the partition is revoked meanwhile (the restore under `token` is no longer
    /// wanted), or the broker does not answer.
    pub fn restore(
        &self,
        node: &Node,
        partition: Partition,
        token: u64,
    ) -> anyhow::Result<RestoreReport> {
        let one_at_a_time = node.restore_lock(partition);
        let _restoring = one_at_a_time.lock();
        anyhow::ensure!(
            node.is_restoring(partition, token),
            "partition {partition} was revoked before its restore began"
        );
        let started = Instant::now();
        let restoring = || node.is_restoring(partition, token);
        let mut report = RestoreReport::default();
        self.wait_for_own_units(node, partition, token)?;
        report.own_units_ms = started.elapsed().as_millis() as u64;
        let mut reader = self.reader(partition)?;
        let store = &self.engine.store;
        // The end the broker reports may lag what it acknowledged: it serves only to learn the
        // newest epoch before claiming; the claim's own offset is the end that counts.
        let mut follower =
            self.read_to_reported_end(&mut reader, &restoring, partition, &mut report)?;
        for _attempt in 0..5 {
            let epoch = follower.position.epoch + 1;
            let claiming = Instant::now();
            let claim_offset =
                node.claim_while_restoring(partition, token, || self.claim(partition, epoch))?;
            report.claim_ms += claiming.elapsed().as_millis() as u64;
            let mut accepted = self.catch_up(
                &mut reader,
                &restoring,
                partition,
                &mut follower,
                claim_offset + 1,
                &mut report,
            )?;
            // Everything before the claim is read: this node holds no unit the log refused.
            if let Err(Broken::Diverged(why)) = follower.caught_up() {
                anyhow::ensure!(
                    !report.rebuilt,
                    "partition {partition}: rebuilt from the changelog and still {why}"
                );
                self.rebuild(partition, &mut follower, &why, &mut report)?;
                accepted = self.catch_up(
                    &mut reader,
                    &restoring,
                    partition,
                    &mut follower,
                    claim_offset + 1,
                    &mut report,
                )?;
                follower
                    .caught_up()
                    .map_err(|broken| anyhow::anyhow!("partition {partition}: {broken}"))?;
            }
            if accepted != Some(claim_offset) {
                tracing::info!(
                    partition,
                    epoch,
                    "another claim came first; claiming with the next epoch"
                );
                continue;
            }
            follower.position.own_epoch = epoch;
            // Nothing else wrote the partition meanwhile (its writes are refused until now):
            // this node holds exactly the log's units.
            let local = store.changelog_position(partition)?.0;
            anyhow::ensure!(
                local == follower.local_seq,
                "partition {partition}: the store holds unit {local}, the restore read {}",
                follower.local_seq
            );
            // Under the claim lock: a revoke meanwhile leaves the partition unwritable.
            node.claim_while_restoring(partition, token, || {
                store.mark_restored(partition, &follower.position)?;
                store.set_partition_epoch(partition, epoch);
                Ok(())
            })?;
            report.epoch = epoch;
            report.seq = follower.position.seq;
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            metrics::counter!("audience_changelog_units_restored_total").increment(report.applied);
            metrics::histogram!("audience_changelog_restore_seconds")
                .record(started.elapsed().as_secs_f64());
            return Ok(report);
        }
        anyhow::bail!("partition {partition}: five claims in a row came after another node's")
    }

    /// Follows a partition this node stands by for (`standing_by` says while it does): applies
    /// its changelog from this node's position to the end as it grows, and keeps the position,
    /// so that the restore when the partition comes here reads only what was written since;
    /// blocking, until `standing_by` turns false. It never claims and never wipes: a state that
    /// went another way than the log is left to that restore.
    pub fn follow(&self, node: &Node, partition: Partition, standing_by: &dyn Fn() -> bool) {
        let mut reader = None;
        let mut backoff = Duration::from_millis(500);
        while standing_by() {
            let round = self.follow_round(node, partition, standing_by, &mut reader);
            let pause = match round {
                Ok(applied) => {
                    metrics::counter!("audience_standby_units_applied_total").increment(applied);
                    backoff = Duration::from_millis(500);
                    Duration::from_millis(if applied > 0 { 20 } else { 200 })
                }
                Err(e) => {
                    tracing::debug!(partition, error = %e, "standby: changelog not followed");
                    reader = None;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                }
            };
            std::thread::sleep(pause);
        }
    }

    /// One round of [`Restorer::follow`]: up to the end the broker reports now.
    fn follow_round(
        &self,
        node: &Node,
        partition: Partition,
        standing_by: &dyn Fn() -> bool,
        reader: &mut Option<Reader>,
    ) -> anyhow::Result<u64> {
        // A restore of the partition (it came here) goes first, and this node's own units
        // still on their way to the topic are the restore's to check.
        let one_at_a_time = node.restore_lock(partition);
        let _following = one_at_a_time.lock();
        let store = &self.engine.store;
        if !standing_by() || !store.pending_units(partition, 1)?.is_empty() {
            return Ok(0);
        }
        let reader = match reader {
            Some(reader) => reader,
            None => reader.insert(self.reader(partition)?),
        };
        let mut report = RestoreReport {
            // Never wiped here: the restore does it, under its claim.
            rebuilt: true,
            ..RestoreReport::default()
        };
        self.read_to_reported_end(reader, standing_by, partition, &mut report)?;
        Ok(report.applied)
    }

    /// This node's follower of `partition` (its stored position), brought to the end the broker
    /// reports now: from that position, or from the newest snapshot when it is further on.
    fn read_to_reported_end(
        &self,
        reader: &mut Reader,
        wanted: &dyn Fn() -> bool,
        partition: Partition,
        report: &mut RestoreReport,
    ) -> anyhow::Result<Follower> {
        let store = &self.engine.store;
        let mut follower = Follower::new(
            store.changelog_follow_position(partition)?,
            store.changelog_position(partition)?.0,
        );
        let (low, high) = reader
            .consumer
            .fetch_watermarks(&self.topic, partition as i32, STALL)?;
        // At the end already (a follower between units): no snapshot is further on.
        if follower.position.next_offset >= high {
            return Ok(follower);
        }
        let latest = self.latest_snapshot(partition)?;
        let start = restore_start(
            &follower.position,
            low,
            latest.as_ref().map(|s| &s.manifest),
        )
        .map_err(|why| anyhow::anyhow!("partition {partition}: {why}"))?;
        if let (RestoreStart::Snapshot, Some(snapshot)) = (start, &latest) {
            self.load_snapshot(partition, &mut follower, snapshot, report)?;
        }
        self.catch_up(reader, wanted, partition, &mut follower, high, report)?;
        Ok(follower)
    }

    /// Waits until the changelog topic holds every unit this node committed of the partition.
    fn wait_for_own_units(
        &self,
        node: &Node,
        partition: Partition,
        token: u64,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + STALL;
        while !self.engine.store.pending_units(partition, 1)?.is_empty() {
            anyhow::ensure!(
                node.is_restoring(partition, token),
                "partition {partition} was revoked while it was restored"
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "partition {partition}: this node's own units did not reach the changelog topic \
                 in {STALL:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn reader(&self, partition: Partition) -> anyhow::Result<Reader> {
        let consumer = self
            .kafka
            .clone()
            // No group: the reader is assigned its partition and commits nothing.
            .set("group.id", format!("{}-restore", self.node_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // A position past the log's end (a topic made anew) is an error, never a silent
            // jump to the end.
            .set("auto.offset.reset", "error")
            // The reader reads to a known end: a broker holding each fetch for its wait (tansu
            // waits it out even when it has records) would add that to every round trip.
            .set("fetch.wait.max.ms", "1")
            .create()?;
        Ok(Reader {
            consumer,
            topic: self.topic.clone(),
            partition,
            position: None,
        })
    }

    /// Reads the partition's changelog from the follower's position to `end` (exclusive),
    /// applying what it says; when this node's state went another way than the log's, it is
    /// rebuilt (once). Returns the offset of the last claim it accepted.
    fn catch_up(
        &self,
        reader: &mut Reader,
        wanted: &dyn Fn() -> bool,
        partition: Partition,
        follower: &mut Follower,
        end: i64,
        report: &mut RestoreReport,
    ) -> anyhow::Result<Option<i64>> {
        let store = &self.engine.store;
        let reading = Instant::now();
        let (low, _) = reader
            .consumer
            .fetch_watermarks(&self.topic, partition as i32, STALL)?;
        let mut last_claim = None;
        'read: loop {
            let start = follower.position.next_offset.max(low);
            if start < end {
                let mut unsaved = 0u64;
                let mut progress = Instant::now();
                let mut repositioned = 0;
                let mut ready = ReadyUnits::default();
                reader.position_at(start)?;
                while follower.position.next_offset < end {
                    anyhow::ensure!(
                        wanted(),
                        "partition {partition} is no longer wanted here (revoked, or no longer \
                         stood by for)"
                    );
                    // Units read are applied when the consumer has nothing more ready.
                    let wait = if ready.is_empty() {
                        Duration::from_millis(100)
                    } else {
                        Duration::ZERO
                    };
                    let Some(message) = reader.consumer.poll(wait) else {
                        if !ready.is_empty() {
                            ready.apply(store, partition, &follower.position)?;
                            unsaved = 0;
                            continue;
                        }
                        anyhow::ensure!(
                            progress.elapsed() < STALL,
                            "partition {partition}: the changelog topic gave nothing past \
                             offset {} in {STALL:?} (its end is {end})",
                            follower.position.next_offset
                        );
                        continue;
                    };
                    let message = message?;
                    progress = Instant::now();
                    let offset = message.offset();
                    if offset < follower.position.next_offset {
                        continue;
                    }
                    // The log has no holes (nothing compacts or aborts it): a record further on
                    // means the reader skipped some, and every record counts.
                    let expected = follower.position.next_offset.max(low);
                    if offset > expected {
                        repositioned += 1;
                        report.rereads += 1;
                        anyhow::ensure!(
                            repositioned <= MAX_REPOSITIONS,
                            "partition {partition}: the changelog reader keeps skipping from \
                             offset {expected} to {offset}"
                        );
                        let from = crate::catalog_topic::reread_from(expected, low, repositioned);
                        tracing::warn!(
                            partition,
                            expected,
                            offset,
                            from,
                            "changelog reader skipped records; reading them again"
                        );
                        reader.position = None;
                        reader.position_at(from)?;
                        continue;
                    }
                    reader.position = Some(offset + 1);
                    let payload = message.payload().unwrap_or_default();
                    let record = Record::decode(payload).map_err(|why| {
                        anyhow::anyhow!(
                            "partition {partition}: changelog record at offset {offset} \
                                 is unreadable: {why}"
                        )
                    })?;
                    match follower.read(offset, &record) {
                        Ok(Step::Apply) => {
                            let Record::Unit(unit) = record else {
                                unreachable!("only units are applied")
                            };
                            ready.push(unit, payload.len());
                            report.applied += 1;
                            if ready.full() {
                                ready.apply(store, partition, &follower.position)?;
                                unsaved = 0;
                            }
                        }
                        Ok(step) => {
                            match step {
                                Step::Verified => report.verified += 1,
                                Step::Claimed { .. } => last_claim = Some(offset),
                                _ => report.ignored += 1,
                            }
                            unsaved += 1;
                            if unsaved >= POSITION_EVERY && ready.is_empty() {
                                store.save_changelog_follow_position(
                                    partition,
                                    &follower.position,
                                )?;
                                unsaved = 0;
                            }
                        }
                        Err(Broken::Diverged(why)) if !report.rebuilt => {
                            // What was read is read again over the rebuilt state.
                            drop(ready);
                            self.rebuild(partition, follower, &why, report)?;
                            continue 'read;
                        }
                        Err(broken) => anyhow::bail!("partition {partition}: {broken}"),
                    }
                }
                ready.apply(store, partition, &follower.position)?;
                store.save_changelog_follow_position(partition, &follower.position)?;
            }
            report.log_ms += reading.elapsed().as_millis() as u64;
            return Ok(last_claim);
        }
    }

    /// This node's state of the partition went another way than the log: it goes, and the log
    /// is read again from its newest snapshot, or from its start.
    fn rebuild(
        &self,
        partition: Partition,
        follower: &mut Follower,
        why: &str,
        report: &mut RestoreReport,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            partition,
            why,
            "this node's state of the partition is not the changelog's: rebuilding it from the \
             changelog"
        );
        metrics::counter!("audience_changelog_rebuilds_total").increment(1);
        report.rebuilt = true;
        self.engine.store.wipe_partition(partition)?;
        *follower = Follower::new(Position::default(), 0);
        let latest = self.latest_snapshot(partition)?;
        if let Some(snapshot) = &latest {
            self.load_snapshot(partition, follower, snapshot, report)?;
        }
        Ok(())
    }

    fn latest_snapshot(&self, partition: Partition) -> anyhow::Result<Option<StoredSnapshot>> {
        let Some(repository) = &self.snapshots else {
            return Ok(None);
        };
        repository.latest(partition).map_err(|e| {
            anyhow::anyhow!(
                "partition {partition}: the snapshots in {} are unreadable: {e}",
                repository.root().display()
            )
        })
    }

    /// Replaces this node's state of the partition by the snapshot's: the log is then read
    /// from the snapshot's position.
    fn load_snapshot(
        &self,
        partition: Partition,
        follower: &mut Follower,
        snapshot: &StoredSnapshot,
        report: &mut RestoreReport,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let position = snapshot.manifest.position;
        self.engine.store.load_partition_snapshot(
            partition,
            &snapshot.dir,
            &position,
            &snapshot.manifest.files,
            snapshot.manifest.format,
        )?;
        *follower = Follower::new(position, position.seq);
        report.snapshot = Some(position.next_offset);
        report.snapshot_profiles = snapshot.manifest.profiles_hint();
        report.snapshot_ms += started.elapsed().as_millis() as u64;
        metrics::counter!("audience_changelog_snapshots_loaded_total").increment(1);
        tracing::info!(
            partition,
            offset = position.next_offset,
            unit = position.seq,
            profiles = report.snapshot_profiles,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot loaded; reading the changelog past it"
        );
        Ok(())
    }

    /// Writes this node's claim on the partition; returns its offset.
    fn claim(&self, partition: Partition, epoch: u64) -> anyhow::Result<i64> {
        let claim = Claim {
            partition,
            epoch,
            node: self.node_id.clone(),
        }
        .encode();
        let key = partition.to_be_bytes();
        let record = FutureRecord::to(&self.topic)
            .partition(partition as i32)
            .key(&key[..])
            .payload(&claim[..]);
        let delivery = self
            .claims
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("claim not enqueued: {e}"))?;
        match futures::executor::block_on(delivery) {
            Ok(Ok(delivered)) => Ok(delivered.offset),
            Ok(Err((e, _))) => anyhow::bail!("claim not written: {e}"),
            Err(_) => anyhow::bail!("claim not written: the producer went away"),
        }
    }
}
