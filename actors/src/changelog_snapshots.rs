//! Snapshots of the partitions this node owns (cluster step 2, item 5): when a partition's
//! changelog grew `every_units` units past its newest snapshot, its state is written to the
//! snapshot repository as SST files with the changelog position they stand at, older snapshots
//! are pruned, and the changelog before the oldest snapshot kept may be trimmed. A node taking
//! the partition over then ingests the files and reads only the log past them.
//!
//! Invariants: only a partition this node may write is snapshotted, and only from a view of
//! its database in which every unit is one the topic accepted as this node's (see
//! [`audience_state::store::Store::write_partition_snapshot`]); the log is trimmed only up to
//! the oldest snapshot kept, so any restore finds a snapshot and the log past it.

use crate::engine::Engine;
use audience_state::changelog::snapshot::{SnapshotManifest, SnapshotRepository, SNAPSHOT_FORMAT};
use audience_state::store::Partition;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How many views of the database one snapshot looks at for one in which no unit waits for
/// the topic, and how long apart.
const VIEW_TRIES: u32 = 50;
const VIEW_RETRY: Duration = Duration::from_millis(10);

/// When to snapshot, and what to keep.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    /// Units of a partition's changelog since its newest snapshot that call for a new one.
    pub every_units: u64,
    /// A partition with units past its newest snapshot is snapshotted once that snapshot is
    /// this old, however few the units: the log a restore reads is bounded in time too.
    pub max_age: Duration,
    /// Snapshots kept per partition (at least one).
    pub keep: usize,
    /// How often the owned partitions are looked at.
    pub interval: Duration,
    /// Delete the changelog's records before the oldest snapshot kept (Kafka's DeleteRecords).
    pub trim_changelog: bool,
}

/// Writes the snapshots of one node's partitions.
pub struct Snapshotter {
    engine: Arc<Engine>,
    repository: SnapshotRepository,
    node_id: String,
    policy: SnapshotPolicy,
    topic: String,
    admin: Option<AdminClient<DefaultClientContext>>,
}

impl Snapshotter {
    pub fn new(
        engine: Arc<Engine>,
        repository: SnapshotRepository,
        node_id: String,
        policy: SnapshotPolicy,
        kafka: &ClientConfig,
        topic: String,
    ) -> anyhow::Result<Snapshotter> {
        let admin = if policy.trim_changelog {
            Some(kafka.create()?)
        } else {
            None
        };
        Ok(Snapshotter {
            engine,
            repository,
            node_id,
            policy,
            topic,
            admin,
        })
    }

    /// Snapshots the partition when its changelog grew `every_units` units past its newest
    /// snapshot, or has any unit past a snapshot `max_age` old; blocking. `None` when it is
    /// not due, or not possible right now (units wait for the topic).
    pub fn snapshot_if_due(
        &self,
        partition: Partition,
    ) -> anyhow::Result<Option<SnapshotManifest>> {
        let newest = self.repository.latest(partition)?;
        let (newest_seq, created_ms) =
            newest.map_or((0, 0), |s| (s.manifest.position.seq, s.manifest.created_ms));
        let (committed, _) = self.engine.store.changelog_position(partition)?;
        let age = Duration::from_millis(now_ms().saturating_sub(created_ms).max(0) as u64);
        let due = committed >= newest_seq.saturating_add(self.policy.every_units)
            || (committed > newest_seq && age >= self.policy.max_age);
        if !due {
            return Ok(None);
        }
        self.snapshot(partition)
    }

    /// Writes a snapshot of the partition now, and prunes the older ones; blocking.
    pub fn snapshot(&self, partition: Partition) -> anyhow::Result<Option<SnapshotManifest>> {
        let started = Instant::now();
        let staging = self.repository.staging(partition)?;
        let mut written = self
            .engine
            .store
            .write_partition_snapshot(partition, &staging);
        // While the partition publishes, each round of its delta publisher commits a unit, so
        // a unit waits for the topic most of the time: look again for a moment none does
        // (else snapshots starve and the log a restore reads grows).
        for _ in 1..VIEW_TRIES {
            if !matches!(written, Ok(None)) {
                break;
            }
            std::thread::sleep(VIEW_RETRY);
            written = self
                .engine
                .store
                .write_partition_snapshot(partition, &staging);
        }
        let contents = match written {
            Ok(Some(contents)) => contents,
            other => {
                let _ = std::fs::remove_dir_all(&staging);
                other?;
                return Ok(None);
            }
        };
        let manifest = SnapshotManifest {
            format: SNAPSHOT_FORMAT,
            partition,
            position: contents.position,
            node: self.node_id.clone(),
            created_ms: now_ms(),
            files: contents.files,
        };
        self.repository.publish(&staging, &manifest)?;
        let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
        metrics::counter!("audience_changelog_snapshots_total").increment(1);
        metrics::histogram!("audience_changelog_snapshot_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("audience_changelog_snapshot_bytes", "partition" => partition.to_string())
            .set(bytes as f64);
        tracing::info!(
            partition,
            offset = manifest.position.next_offset,
            unit = manifest.position.seq,
            profiles = manifest.profiles_hint(),
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partition snapshot written"
        );
        if let Some(oldest) = self.repository.prune(partition, self.policy.keep)? {
            self.trim(partition, oldest.manifest.position.next_offset);
        }
        Ok(Some(manifest))
    }

    /// Deletes the partition's changelog records before `offset`, when trimming is on. A
    /// failure is logged: the log stays longer, nothing is lost.
    fn trim(&self, partition: Partition, offset: i64) {
        let Some(admin) = &self.admin else { return };
        let mut before = TopicPartitionList::new();
        let added =
            before.add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset));
        let result = added.map_err(anyhow::Error::from).and_then(|()| {
            let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
            let done = futures::executor::block_on(admin.delete_records(&before, &options))?;
            for element in done.elements() {
                if let Err(e) = element.error() {
                    anyhow::bail!("{e}");
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                tracing::info!(
                    partition,
                    offset,
                    "changelog trimmed before the oldest snapshot kept"
                )
            }
            Err(e) => tracing::warn!(partition, offset, error = %e, "changelog not trimmed"),
        }
    }

    /// Looks at every partition this node may write, every `interval`, until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.policy.interval) => {}
            }
            for partition in self.engine.store.writable_partitions() {
                let me = self.clone();
                let done = tokio::task::spawn_blocking(move || me.snapshot_if_due(partition)).await;
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        metrics::counter!("audience_changelog_snapshot_errors_total").increment(1);
                        tracing::warn!(partition, error = %e, "partition snapshot failed")
                    }
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "partition snapshot task failed")
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
