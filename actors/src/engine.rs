//! What every actor of a node shares: the store, the current catalog, the clock, the
//! configuration, the live figures, and the wake-ups of the outbox readers.

use crate::clock::Clock;
use crate::latency::{Caused, DeltaLatency, LatencyWindow};
use crate::stats::{ChangeWindow, Figures};
use arc_swap::ArcSwap;
use audience_state::catalog::Catalog;
use audience_state::model::{AudienceId, Delta, Mpid};
use audience_state::store::{Partition, Store};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The events and identities topics unless configured otherwise.
pub const DEFAULT_EVENTS_TOPIC: &str = "audience-events";
pub const DEFAULT_IDENTITIES_TOPIC: &str = "audience-identities";

/// Engine settings the actors read.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The topics the engine consumes, co-partitioned by MPID: the events and the identities
    /// topics, then the topics inputs claim. A partition keeps its next offset in each.
    pub input_topics: Vec<String>,
    pub deltas_topic: String,
    pub dead_letter_topic: String,
    pub retention_ms: i64,
    pub max_message_bytes: usize,
    /// Profiles kept in memory per partition before the least recently used are passivated.
    pub max_cached_profiles: usize,
    /// A profile untouched this long is passivated.
    pub idle_passivation_ms: i64,
    pub timer_tick_ms: u64,
    /// Profiles re-evaluated per backfill step when audiences change.
    pub backfill_chunk: usize,
    /// Pause between two backfill steps.
    pub backfill_pause_ms: u64,
    /// Deltas stay in the outbox this long (subscribers can resume within it).
    pub outbox_retention_ms: i64,
    /// Places batches by their client IP, when a database is configured.
    pub geoip: Option<Arc<crate::geoip::GeoIp>>,
    /// Bounds of each profile's event log.
    pub log_limits: audience_state::eventlog::LogLimits,
    /// How much of a bad message its dead letter carries.
    pub dead_letter_limits: audience_state::store::DeadLetterLimits,
    /// Unpublished dead letters kept per partition: past it (the topic unreachable for long),
    /// the oldest are dropped and counted.
    pub dead_letter_max_kept: u64,
    /// The inputs messages are stamped with (see [`audience_state::inputs`]).
    pub inputs: Arc<audience_state::inputs::InputMap>,
    /// The JSON field path of a message's source value (`["context", "source"]`).
    pub source_field: Vec<String>,
    /// The most definitions of each kind the catalog holds.
    pub quotas: Quotas,
}

/// The most audiences, calculated attributes, outputs and connections the catalog holds:
/// checked when one is created, on the node that proposes it (a bound on what every node
/// compiles, keeps in memory and runs a connector for, not an exact count: two nodes
/// creating the last one at once may both pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub audiences: usize,
    pub calculated_attributes: usize,
    pub outputs: usize,
    pub connections: usize,
    /// API tokens the catalog holds (those of the configuration aside).
    pub api_tokens: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            audiences: 10_000,
            calculated_attributes: 1_000,
            outputs: 1_000,
            connections: 10_000,
            api_tokens: 1_000,
        }
    }
}

impl Quotas {
    /// Refuses one more of `what` when `held` already reach `max`, naming the setting.
    pub fn check(what: &str, setting: &str, held: usize, max: usize) -> Result<(), String> {
        if held >= max {
            Err(format!(
                "the catalog holds {held} {what}, the limit of {setting} ({max}): delete one first"
            ))
        } else {
            Ok(())
        }
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            input_topics: vec![DEFAULT_EVENTS_TOPIC.into(), DEFAULT_IDENTITIES_TOPIC.into()],
            deltas_topic: "audience-deltas".into(),
            dead_letter_topic: "audience-dead-letters".into(),
            retention_ms: 30 * audience_state::model::DAY_MS,
            max_message_bytes: audience_state::batch::DEFAULT_MAX_MESSAGE_BYTES,
            max_cached_profiles: 10_000,
            idle_passivation_ms: 60_000,
            timer_tick_ms: 200,
            backfill_chunk: 500,
            backfill_pause_ms: 0,
            outbox_retention_ms: 7 * audience_state::model::DAY_MS,
            geoip: None,
            log_limits: Default::default(),
            dead_letter_limits: Default::default(),
            dead_letter_max_kept: 10_000,
            inputs: Arc::default(),
            source_field: Vec::new(),
            quotas: Quotas::default(),
        }
    }
}

/// How far one partition's backfill has come: the audiences it evaluates and the profiles it
/// has scanned of those stored when it started.
#[derive(Debug, Clone)]
pub struct BackfillProgress {
    pub audiences: Arc<Vec<AudienceId>>,
    pub scanned: u64,
    pub total: u64,
    pub started: std::time::Instant,
    pub started_at_ms: i64,
}

/// The progress of one CALCULATING audience over this node's partitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calculation {
    pub scanned: u64,
    pub total: u64,
    pub percent: f64,
    /// Time left at the rate so far (`None` until a profile was scanned).
    pub eta_ms: Option<i64>,
    pub started_at_ms: i64,
}

/// Differences a replay keeps per partition, for its report.
pub const MAX_REPORTED_DIFFERENCES: usize = 100;

/// A partition's rebuild of its profiles from their logs (replay), or its check of them
/// (verify): running or last finished.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayProgress {
    /// The profile states were deleted before the rebuild (not only overwritten).
    pub wiped: bool,
    /// A check: the folds are compared with the stored states, nothing is written.
    pub check_only: bool,
    pub scanned: u64,
    /// Profiles stored when it started.
    pub total: u64,
    /// Deltas the rebuilt profiles emitted: where the logs and the catalog disagreed with
    /// what had been sent (none after a replay of a healthy store).
    pub deltas: u64,
    /// Profiles whose fold differs from their stored state (a rebuild rewrote them; a check
    /// found them). Equal ones are not written.
    pub changed: u64,
    /// The first [`MAX_REPORTED_DIFFERENCES`] of them: the MPID and what differs.
    pub differences: Vec<(Mpid, Vec<String>)>,
    /// Profiles whose event log could not be read (rebuilt from their base and memberships).
    pub unreadable: u64,
    /// Rows of the partition set aside (the quarantine) when the replay ended: how many, and
    /// the first [`MAX_REPORTED_DIFFERENCES`].
    pub quarantined_rows: u64,
    pub quarantined: Vec<audience_state::store::Quarantined>,
    pub started_at_ms: i64,
    /// `None`: still running.
    pub finished_at_ms: Option<i64>,
}

/// A size estimate with the sample behind it (computed by [`crate::sampling`], cached here).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledEstimate {
    pub estimate: audience_state::estimate::Estimate,
    pub sampled: u64,
    pub sampled_members: u64,
    /// Sampled profiles seen in the definition's workspaces (every one without workspaces).
    pub sampled_in_scope: u64,
    pub population: u64,
}

/// Counters of the node, for status calls (Prometheus gets the same through `metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub messages_processed: AtomicU64,
    pub messages_dead_lettered: AtomicU64,
    pub deltas_emitted: AtomicU64,
    /// Dead letters the topic acknowledged (truncated ones included).
    pub dead_letters_published: AtomicU64,
    /// Dead letters published with a prefix of their message, at write or after a refusal.
    pub dead_letters_truncated: AtomicU64,
    /// Records the broker refused for good even cut down, passed over: dead letters, deltas.
    pub dead_letters_unpublishable: AtomicU64,
    pub deltas_unpublishable: AtomicU64,
    /// Unpublished dead letters dropped past `dead_letter_max_kept`.
    pub dead_letters_dropped: AtomicU64,
}

pub struct Engine {
    pub store: Arc<Store>,
    pub catalog: ArcSwap<Catalog>,
    pub clock: Arc<Clock>,
    pub settings: EngineSettings,
    pub counters: Counters,
    /// Adds and drops of the last 24 hours, fed by partition actors after each commit.
    pub changes: Mutex<ChangeWindow>,
    /// Each audience's delta latencies of the last minutes, fed likewise.
    pub latencies: Mutex<LatencyWindow>,
    /// Partitions with an outbox on this node.
    pub partitions: Mutex<BTreeSet<Partition>>,
    /// Partitions another node claimed while this one wrote them (its changelog units were
    /// refused): the engine's own assignment releases them and restores them again
    /// ([`crate::self_assignment`]); a consumer group revokes them by itself.
    pub fenced: Mutex<BTreeSet<Partition>>,
    /// The deployment's id (its catalog's, see `CatalogState::cluster_id`), once known:
    /// subscription cursors carry it, and a cursor of another deployment is refused.
    pub cluster_id: parking_lot::RwLock<Option<String>>,
    /// Bumped after every commit that wrote deltas or dead letters: outbox readers wait on it.
    pub outbox_written: watch::Sender<u64>,
    /// Running backfills by partition, kept by the partition actors.
    pub backfills: Mutex<HashMap<Partition, BackfillProgress>>,
    /// Profiles per partition, as counted when its last backfill started.
    pub profile_counts: Mutex<HashMap<Partition, u64>>,
    /// Size estimates of CALCULATING audiences by (audience, revision), computed once.
    pub estimates: Mutex<HashMap<(AudienceId, u64), SampledEstimate>>,
    /// Replays by partition, kept by the partition actors.
    pub replays: Mutex<HashMap<Partition, ReplayProgress>>,
    /// The catalog's API tokens (digests), as applied last: the API's authenticator reads
    /// them on every call.
    pub api_tokens: ArcSwap<Vec<audience_state::api_tokens::ApiTokenRecord>>,
    /// WAL syncs started, and (under the lock) the number of the last one finished: see
    /// [`Engine::make_durable`].
    wal_syncs_started: AtomicU64,
    wal_sync: tokio::sync::Mutex<u64>,
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        clock: Arc<Clock>,
        settings: EngineSettings,
    ) -> anyhow::Result<Arc<Engine>> {
        let catalog = Catalog::build_full(
            1,
            store.load_audiences()?,
            store.event_tiers()?,
            store.load_calculated()?,
        );
        let partitions: BTreeSet<Partition> = store.known_partitions()?.into_iter().collect();
        let mut changes = ChangeWindow::default();
        let now = clock.now();
        // Rebuild the 24-hour figures from the outbox.
        for &p in &partitions {
            changes.record_outbox(&store, p, u64::MAX, now, |_| true)?;
        }
        let (outbox_written, _) = watch::channel(0);
        let api_tokens = ArcSwap::from_pointee(store.load_api_tokens()?);
        Ok(Arc::new(Engine {
            store,
            catalog: ArcSwap::from_pointee(catalog),
            clock,
            settings,
            counters: Counters::default(),
            changes: Mutex::new(changes),
            latencies: Mutex::new(LatencyWindow::new(std::time::Instant::now())),
            partitions: Mutex::new(partitions),
            fenced: Mutex::new(BTreeSet::new()),
            cluster_id: Default::default(),
            outbox_written,
            backfills: Mutex::new(HashMap::new()),
            profile_counts: Mutex::new(HashMap::new()),
            estimates: Mutex::new(HashMap::new()),
            replays: Mutex::new(HashMap::new()),
            wal_syncs_started: AtomicU64::new(0),
            wal_sync: tokio::sync::Mutex::new(0),
            api_tokens,
        }))
    }

    /// Makes every write read so far durable (its WAL synced to disk) before what was read
    /// leaves the engine: a delta sent to a topic, an output or a subscriber must survive a
    /// power cut, or the node would send another delta under the same id after it. Callers
    /// share syncs: one that started after the caller's read covers it. Nothing to do when
    /// every write is synced (`storage.sync_writes`).
    pub async fn make_durable(&self) -> anyhow::Result<()> {
        if self.store.syncs_every_write() {
            return Ok(());
        }
        // A sync numbered above this one starts after the caller's read.
        let read_before = self.wal_syncs_started.load(Ordering::SeqCst);
        let mut last_finished = self.wal_sync.lock().await;
        if *last_finished > read_before {
            return Ok(());
        }
        let number = self.wal_syncs_started.fetch_add(1, Ordering::SeqCst) + 1;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| anyhow::anyhow!("WAL sync: {e}"))??;
        *last_finished = number;
        metrics::counter!("audience_wal_syncs_total").increment(1);
        Ok(())
    }

    /// WAL syncs [`Engine::make_durable`] made.
    pub fn wal_syncs(&self) -> u64 {
        self.wal_syncs_started.load(Ordering::SeqCst)
    }

    pub fn note_deltas(&self, partition: Partition, deltas: &[Delta]) {
        if deltas.is_empty() {
            return;
        }
        self.partitions.lock().insert(partition);
        let mut changes = self.changes.lock();
        for d in deltas {
            changes.record(d);
        }
        drop(changes);
        self.counters
            .deltas_emitted
            .fetch_add(deltas.len() as u64, Ordering::Relaxed);
        metrics::counter!("audience_deltas_emitted_total").increment(deltas.len() as u64);
        self.wake_outbox_readers();
    }

    /// Times the deltas of a committed unit of work that messages `caused`, into the window
    /// and Prometheus (`audience_delta_latency_seconds{audience, from="event"|"produce"}`).
    pub fn note_latencies(&self, deltas: &[Delta], caused: &Caused) {
        if caused.is_empty() {
            return;
        }
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let now = (self.clock.now(), wall_ms);
        let mut window = self.latencies.lock();
        for timed in window.note(deltas, caused, now, std::time::Instant::now()) {
            let audience = window.label(timed.audience);
            for (from, ms) in [
                ("event", timed.from_event_ms),
                ("produce", timed.from_produce_ms),
            ] {
                if let Some(ms) = ms {
                    metrics::histogram!("audience_delta_latency_seconds",
                        "audience" => audience.clone(), "from" => from)
                    .record(ms as f64 / 1000.0);
                }
            }
        }
    }

    /// The delta latencies of audiences over this node's window (see [`crate::latency`]).
    pub fn latencies(&self, ids: &[AudienceId]) -> HashMap<AudienceId, DeltaLatency> {
        let now = std::time::Instant::now();
        let mut window = self.latencies.lock();
        ids.iter().map(|&id| (id, window.of(id, now))).collect()
    }

    /// The audiences of `active` (id, revision) being calculated in the `partitions` this
    /// node runs, with their progress: those some partition has not evaluated at that
    /// revision yet, or that a running backfill evaluates (a calculated attribute they read
    /// changed).
    pub fn calculations(
        &self,
        partitions: &[Partition],
        active: &[(AudienceId, u64)],
    ) -> anyhow::Result<HashMap<AudienceId, Calculation>> {
        let mut evaluated: HashMap<Partition, HashMap<AudienceId, u64>> = HashMap::new();
        for &p in partitions {
            evaluated.insert(p, self.store.evaluated_revisions(p)?.into_iter().collect());
        }
        let backfills = self.backfills.lock().clone();
        let counts = self.profile_counts.lock().clone();
        let mut out = HashMap::new();
        for &(id, revision) in active {
            let mut calculating = false;
            let mut c = Calculation::default();
            let mut earliest: Option<&BackfillProgress> = None;
            // Profiles of partitions that finished: scanned, while others still calculate
            // (progress never goes back when one partition ends before another).
            let mut finished = 0;
            for &p in partitions {
                let running = backfills.get(&p).filter(|b| b.audiences.contains(&id));
                let stale = evaluated[&p].get(&id) != Some(&revision);
                if !stale && running.is_none() {
                    finished += counts.get(&p).copied().unwrap_or(0);
                    continue;
                }
                calculating = true;
                match running {
                    Some(b) => {
                        c.scanned += b.scanned;
                        c.total += b.total.max(b.scanned);
                        if earliest.is_none_or(|e| b.started < e.started) {
                            earliest = Some(b);
                        }
                    }
                    None => c.total += counts.get(&p).copied().unwrap_or(0),
                }
            }
            if !calculating {
                continue;
            }
            c.scanned += finished;
            c.total += finished;
            c.percent = if c.total == 0 {
                0.0
            } else {
                100.0 * c.scanned as f64 / c.total as f64
            };
            if let Some(first) = earliest {
                c.started_at_ms = first.started_at_ms;
                let elapsed = first.started.elapsed().as_secs_f64();
                if c.scanned > 0 && elapsed > 0.0 {
                    let rate = c.scanned as f64 / elapsed;
                    c.eta_ms = Some((1000.0 * (c.total - c.scanned) as f64 / rate) as i64);
                }
            }
            out.insert(id, c);
        }
        Ok(out)
    }

    pub fn wake_outbox_readers(&self) {
        self.outbox_written.send_modify(|v| *v += 1);
    }

    /// Size, adds, drops and volatility of audiences (all when `ids` is empty), over this
    /// node's partitions.
    pub fn figures(&self, ids: &[AudienceId]) -> anyhow::Result<Vec<(AudienceId, Figures)>> {
        let mut sizes: HashMap<AudienceId, u64> = HashMap::new();
        // With the changelog on, a partition this node held before and gave away is a stale
        // copy: its owner counts it.
        let counted = |p: &Partition| {
            !self.store.logs_partition_writes() || self.partitions.lock().contains(p)
        };
        for (a, p, size) in self.store.audience_sizes()? {
            if counted(&p) {
                *sizes.entry(a).or_default() += size;
            }
        }
        let catalog = self.catalog.load();
        let wanted: Vec<AudienceId> = if ids.is_empty() {
            let mut all: Vec<_> = catalog.records().map(|r| r.id).collect();
            all.sort();
            all
        } else {
            ids.to_vec()
        };
        let now = self.clock.now();
        let mut changes = self.changes.lock();
        Ok(wanted
            .into_iter()
            .map(|id| {
                let (adds, drops) = changes.adds_drops(id, now);
                (
                    id,
                    Figures::new(sizes.get(&id).copied().unwrap_or(0), adds, drops),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(sync_writes: bool) -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), sync_writes).unwrap());
        let clock = Arc::new(Clock::new(true));
        let engine = Engine::new(store, clock, EngineSettings::default()).unwrap();
        (dir, engine)
    }

    #[tokio::test]
    async fn what_leaves_is_synced_first_and_concurrent_readers_share_syncs() {
        let (_dir, engine) = engine(false);
        engine.make_durable().await.unwrap();
        assert_eq!(engine.wal_syncs(), 1, "a read is synced before it leaves");
        engine.make_durable().await.unwrap();
        assert_eq!(engine.wal_syncs(), 2, "a later read needs a later sync");
        let together = futures::future::join_all((0..16).map(|_| engine.make_durable())).await;
        assert!(together.iter().all(Result::is_ok));
        let syncs = engine.wal_syncs() - 2;
        assert!((1..=16).contains(&syncs), "{syncs} syncs for 16 readers");
    }

    #[tokio::test]
    async fn a_store_that_syncs_every_write_needs_no_more() {
        let (_dir, engine) = engine(true);
        engine.make_durable().await.unwrap();
        assert_eq!(engine.wal_syncs(), 0);
    }
}
