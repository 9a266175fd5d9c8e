//! Delivery of audiences to outputs: one delivery loop per connection on every node, each
//! delivering the partitions its node owns. It reads each partition's durable outbox from the
//! connection's position there, turns deltas into the items its output accepts, and sends them
//! in batches with retries, exponential backoff with jitter and `Retry-After`.
//!
//! Invariants:
//! - a connection's position in a partition is the partition's state (`delivered/{p}/{id}`,
//!   see `audience_state::store::DeliveryPosition`), written by its owner as a changelog unit:
//!   a node that takes a partition over goes on from where the last owner stopped, and a node
//!   that lost it can neither store a position nor send (two nodes never both deliver a
//!   partition);
//! - a position moves only after the output accepted everything up to it, so a crash, a fault
//!   or a move re-sends, never skips: delivery is at least once, in outbox order, which is
//!   per-(audience, MPID) order;
//! - a new (or re-created) connection first sends the audience's current members of each
//!   partition (with their membership versions), then the deltas after the outbox head it read
//!   before scanning;
//! - when retries run out the connection is faulted on the node that met the fault: it keeps
//!   the error, sends nothing more, and its positions hold the outbox (pruning stops there)
//!   until `resume`;
//! - every loop runs on its own task: a slow or faulted output never slows ingestion nor
//!   another connection.
//!
//! Output kinds implement [`Output`] (`crate::output_kinds`); a new kind is one more
//! implementation.

use crate::engine::Engine;
use crate::network_guard::NetworkGuard;
use crate::output_kinds::{build_output, AudienceInfo, Output, SendFailure};
use crate::stats::{ChangeWindow, Figures};
use audience_state::ab_test::{downstream_name, AbTest};
use audience_state::model::{AudienceId, Delta, DeltaKind, Mpid};
use audience_state::outputs::{
    backoff_ms, delivery_item, Connection, ConnectionId, ConnectionStatus, DeliveryItem, Fault,
    OutputConfig,
};
use audience_state::secrets::{open_output, SecretKey};
use audience_state::store::{DeliveryPosition, Partition, StoreError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

// ------------------------------------------------------------------ the loops

/// A connection's 24-hour adds and drops, per partition this node delivers.
type Windows = HashMap<Partition, ChangeWindow>;

/// What a connection's loop reports, for the API and metrics.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFigures {
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    /// Members or deltas not sent because the profile has no identity the output accepts.
    pub unsendable: u64,
    pub faulted: bool,
    /// The current members were sent; deltas follow.
    pub initial_sync_done: bool,
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
    resume: Arc<Notify>,
    figures: Arc<Mutex<ConnectionFigures>>,
    windows: Arc<Mutex<Windows>>,
    audience_id: AudienceId,
    /// The A/B test variation it sends; empty: the whole audience.
    variation: String,
}

/// The delivery loops of a node, by connection.
pub struct Deliveries {
    running: Mutex<HashMap<ConnectionId, Running>>,
    /// Opens the outputs' secrets, sealed in the catalog (see `audience_state::secrets`).
    secret_key: SecretKey,
    guard: NetworkGuard,
}

/// The retry policy of a connection, from its output's settings.
#[derive(Debug, Clone, Copy)]
struct Policy {
    batch_size: usize,
    linger: Duration,
    max_attempts: u32,
    base_backoff_ms: u64,
    max_backoff_ms: u64,
}

impl Policy {
    fn of(config: &OutputConfig) -> Policy {
        Policy {
            batch_size: config.setting_u64("batch_size", 100) as usize,
            linger: Duration::from_millis(config.setting_u64("linger_ms", 200)),
            max_attempts: config.setting_u64("max_attempts", 5) as u32,
            base_backoff_ms: config.setting_u64("backoff_ms", 200),
            max_backoff_ms: config.setting_u64("max_backoff_ms", 30_000),
        }
    }
}

impl Deliveries {
    pub fn new(secret_key: SecretKey, guard: NetworkGuard) -> Deliveries {
        Deliveries {
            running: Mutex::new(HashMap::new()),
            secret_key,
            guard,
        }
    }

    /// What outputs may reach.
    pub fn guard(&self) -> NetworkGuard {
        self.guard
    }

    /// The output as it is used: its secrets opened.
    pub fn open(&self, output: &OutputConfig) -> Result<OutputConfig, String> {
        open_output(&self.secret_key, output)
    }

    /// The output of a configuration as stored (secrets sealed), ready to send.
    pub fn build(&self, output: &OutputConfig) -> Result<Arc<dyn Output>, String> {
        build_output(&self.open(output)?, self.guard)
    }

    /// Starts the loops of every sending connection (at startup).
    pub fn start_all(self: &Arc<Self>, engine: &Arc<Engine>) -> anyhow::Result<()> {
        let outputs: HashMap<_, _> = engine
            .store
            .load_outputs()?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        for connection in engine.store.load_connections()? {
            if let Some(output) = outputs.get(&connection.output_id) {
                self.start(engine, connection, output.clone());
            }
        }
        Ok(())
    }

    /// (Re)starts the loop of a connection; an inactive connection has none.
    pub fn start(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        connection: Connection,
        output: OutputConfig,
    ) {
        self.stop(connection.id);
        if connection.status != ConnectionStatus::Sending {
            return;
        }
        let sink = match self.build(&output) {
            Ok(sink) => sink,
            Err(e) => {
                tracing::error!(connection = connection.id, error = %e, "output cannot be built");
                // Shown where operators look for a connection that does not send.
                let fault = Fault {
                    connection_id: connection.id,
                    status: None,
                    body_excerpt: String::new(),
                    message: format!("output {} cannot be built: {e}", output.id),
                    at_ms: engine.clock.now(),
                    attempts: 0,
                };
                if let Err(e) = engine.store.put_fault(&fault) {
                    tracing::warn!(connection = connection.id, error = %e, "fault not stored");
                }
                return;
            }
        };
        let stop = Arc::new(Notify::new());
        let resume = Arc::new(Notify::new());
        let figures = Arc::new(Mutex::new(ConnectionFigures::default()));
        let windows = Arc::new(Mutex::new(Windows::new()));
        let audience_id = connection.audience_id;
        let variation = connection.variation.clone();
        let id = connection.id;
        let delivery = DeliveryLoop {
            engine: engine.clone(),
            policy: Policy::of(&output),
            accepted: output.accepted_identities.clone(),
            connection,
            sink,
            stop: stop.clone(),
            resume: resume.clone(),
            figures: figures.clone(),
            windows: windows.clone(),
            unsaved: Mutex::new(HashMap::new()),
        };
        let task = tokio::spawn(async move { delivery.run().await });
        let replaced = self.running.lock().insert(
            id,
            Running {
                task,
                stop,
                resume,
                figures,
                windows,
                audience_id,
                variation,
            },
        );
        // Two starts at once (the catalog follower and a restart): one loop per connection.
        if let Some(old) = replaced {
            old.stop.notify_one();
            old.task.abort();
        }
    }

    /// Stops a connection's loop: it is aborted at its next await, so it sends nothing more
    /// and moves no cursor (what it was sending is sent again by its successor: at least
    /// once).
    pub fn stop(&self, id: ConnectionId) {
        if let Some(r) = self.running.lock().remove(&id) {
            r.stop.notify_one();
            r.task.abort();
        }
    }

    /// Clears a connection's fault and lets it send everything owed since.
    pub fn resume(&self, engine: &Engine, id: ConnectionId) -> anyhow::Result<bool> {
        engine.store.clear_fault(id)?;
        let running = self.running.lock();
        match running.get(&id) {
            Some(r) => {
                r.figures.lock().faulted = false;
                r.resume.notify_one();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn figures(&self, id: ConnectionId) -> Option<ConnectionFigures> {
        self.running
            .lock()
            .get(&id)
            .map(|r| r.figures.lock().clone())
    }

    /// Size, adds and drops in the last 24 hours and volatility, as this connection sent them.
    /// The size of a variation's connection is counted from the members (the audience's size
    /// is a stored counter).
    pub fn change_figures(&self, engine: &Engine, id: ConnectionId) -> Option<Figures> {
        let (audience, variation, windows) = {
            let running = self.running.lock();
            let r = running.get(&id)?;
            (r.audience_id, r.variation.clone(), r.windows.clone())
        };
        let size = match variation.as_str() {
            "" => engine
                .figures(&[audience])
                .ok()?
                .first()
                .map(|(_, f)| f.size)
                .unwrap_or(0),
            variation => variation_size(engine, audience, variation).ok()?,
        };
        let now = engine.clock.now();
        let owned = engine.partitions.lock().clone();
        let (adds, drops) = windows
            .lock()
            .iter_mut()
            .filter(|(p, _)| owned.contains(p))
            .map(|(_, w)| w.adds_drops(audience, now))
            .fold((0, 0), |(a, d), (adds, drops)| (a + adds, d + drops));
        Some(Figures::new(size, adds, drops))
    }
}

/// The members of an audience's variation in the partitions this node owns.
fn variation_size(
    engine: &Engine,
    audience: AudienceId,
    variation: &str,
) -> Result<u64, StoreError> {
    let members = MemberFilter::of(engine, audience, variation);
    let partitions: Vec<Partition> = engine.partitions.lock().iter().copied().collect();
    let mut size = 0;
    for p in partitions {
        let mut after = None;
        loop {
            let page = engine
                .store
                .members_at(p, audience, i64::MAX, after, 10_000)?;
            let Some(&last) = page.last() else {
                break;
            };
            size += page.iter().filter(|&&mpid| members.sends(mpid)).count() as u64;
            after = Some(last);
        }
    }
    Ok(size)
}

/// Which of an audience's members a connection sends.
enum MemberFilter {
    /// The whole audience's.
    All,
    /// One variation's of its A/B test.
    Variation {
        audience: AudienceId,
        test: AbTest,
        name: String,
    },
    /// None: the variation's test is gone (its connections go with it).
    Nobody,
}

impl MemberFilter {
    /// The members of `variation` (empty: the whole audience), as the catalog has the
    /// audience's test now.
    fn of(engine: &Engine, audience: AudienceId, variation: &str) -> MemberFilter {
        if variation.is_empty() {
            return MemberFilter::All;
        }
        let catalog = engine.catalog.load();
        match catalog.record(audience).and_then(|r| r.ab_test.clone()) {
            Some(test) => MemberFilter::Variation {
                audience,
                test,
                name: variation.to_string(),
            },
            None => MemberFilter::Nobody,
        }
    }

    fn sends(&self, mpid: Mpid) -> bool {
        match self {
            MemberFilter::All => true,
            MemberFilter::Variation {
                audience,
                test,
                name,
            } => test.variation_of(*audience, mpid) == name,
            MemberFilter::Nobody => false,
        }
    }
}

struct DeliveryLoop {
    engine: Arc<Engine>,
    policy: Policy,
    accepted: Vec<String>,
    connection: Connection,
    sink: Arc<dyn Output>,
    stop: Arc<Notify>,
    resume: Arc<Notify>,
    figures: Arc<Mutex<ConnectionFigures>>,
    windows: Arc<Mutex<Windows>>,
    /// Per partition: how far this loop read, and when it last stored its position there.
    unsaved: Mutex<HashMap<Partition, (u64, Instant)>>,
}

/// Why a loop step ended without finishing.
enum Halt {
    Stopped,
    Faulted,
    /// The partition is no longer this node's.
    Moved,
}

/// How often a connection's position in a partition is stored when it only passes over other
/// audiences' deltas.
const POSITION_SAVE_INTERVAL: Duration = Duration::from_secs(1);

impl DeliveryLoop {
    fn label(&self) -> String {
        self.connection.id.to_string()
    }

    fn audience(&self) -> Option<AudienceInfo> {
        let catalog = self.engine.catalog.load();
        let record = catalog.record(self.connection.audience_id)?;
        Some(AudienceInfo {
            id: record.id,
            name: downstream_name(&record.downstream_name(), &self.connection.variation),
            variation: self.connection.variation.clone(),
            connection_id: self.connection.id,
            connection_settings: self.connection.settings.clone(),
        })
    }

    /// The members this connection sends, as the catalog has the audience's test now.
    fn member_filter(&self) -> MemberFilter {
        MemberFilter::of(
            &self.engine,
            self.connection.audience_id,
            &self.connection.variation,
        )
    }

    async fn run(self) {
        let id = self.connection.id;
        loop {
            if let Ok(Some(_)) = self.engine.store.fault(id) {
                self.figures.lock().faulted = true;
                metrics::gauge!("audience_connection_faulted", "connection" => self.label())
                    .set(1.0);
                tokio::select! {
                    _ = self.resume.notified() => {
                        metrics::gauge!("audience_connection_faulted", "connection" => self.label()).set(0.0);
                        continue;
                    }
                    _ = self.stop.notified() => return,
                }
            }
            match self.step().await {
                Ok(progressed) => {
                    if !progressed {
                        let mut wake = self.engine.outbox_written.subscribe();
                        tokio::select! {
                            _ = wake.changed() => {}
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = self.stop.notified() => return,
                        }
                    }
                }
                Err(Halt::Stopped) => return,
                Err(Halt::Faulted | Halt::Moved) => {
                    // A stored fault is found at the top of the loop; a store error is not
                    // one: wait a little instead of spinning.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.stop.notified() => return,
                    }
                }
            }
        }
    }

    /// Keeps the connection's 24-hour adds and drops per partition this node owns: a partition
    /// new here (at start, or moved here) starts from its outbox through the connection's
    /// stored position there (what was delivered, by this node or its last owner), and one
    /// that left is forgotten (its new owner counts it). Without this, a restart or a move
    /// would show zero until a day of deltas had been sent again, and a partition that moved
    /// would count on two nodes.
    async fn follow_partitions(&self, owned: &[Partition]) {
        let new: Vec<Partition> = {
            let mut windows = self.windows.lock();
            windows.retain(|p, _| owned.contains(p));
            owned
                .iter()
                .copied()
                .filter(|p| !windows.contains_key(p))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        let (id, audience) = (self.connection.id, self.connection.audience_id);
        // Changes since the connection was made: what its first sync sent is no change.
        let since = self.connection.created_at_ms;
        let members = self.member_filter();
        let partitions = new.clone();
        let seeded = tokio::task::spawn_blocking(move || {
            let now = engine.clock.now();
            let mut seeded = Vec::with_capacity(partitions.len());
            for p in partitions {
                let mut window = ChangeWindow::default();
                if let Some(DeliveryPosition::Delivered(through)) =
                    engine.store.delivery_position(p, id)?
                {
                    let ours = |d: &Delta| {
                        d.audience_id == audience
                            && d.processing_time_ms >= since
                            && members.sends(d.mpid)
                    };
                    window.record_outbox(&engine.store, p, through, now, ours)?;
                }
                seeded.push((p, window));
            }
            Ok::<_, StoreError>(seeded)
        })
        .await;
        let seeded = match seeded {
            Ok(Ok(seeded)) => seeded,
            Ok(Err(e)) => {
                tracing::warn!(connection = id, error = %e,
                    "the connection's 24-hour figures start from zero: its positions or outbox are unreadable");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(connection = id, error = %e, "24-hour figures not read");
                Vec::new()
            }
        };
        let mut windows = self.windows.lock();
        // A partition not read starts from zero, counting what is sent (not read again at
        // every step).
        windows.extend(new.into_iter().map(|p| (p, ChangeWindow::default())));
        windows.extend(seeded);
    }

    /// One pass over the partitions this node owns: for each, the audience's current members
    /// if the connection's first sync of it is not done, else what its outbox holds after the
    /// connection's position. Whether anything was read.
    async fn step(&self) -> Result<bool, Halt> {
        let store = &self.engine.store;
        let id = self.connection.id;
        let partitions: Vec<Partition> = self.engine.partitions.lock().iter().copied().collect();
        self.follow_partitions(&partitions).await;
        let mut positions = Vec::with_capacity(partitions.len());
        let mut queued = 0u64;
        for &p in &partitions {
            let position = store.delivery_position(p, id).map_err(|e| {
                tracing::warn!(connection = id, partition = p, error = %e, "position unreadable");
                Halt::Faulted
            })?;
            let head = store.outbox_head(p).map_err(|_| Halt::Faulted)?;
            if let Some(DeliveryPosition::Delivered(after)) = position {
                queued += head.saturating_sub(after.max(self.read_to(p)));
            }
            let lost = match &position {
                Some(position) => self.lost_after(p, position.needs_after(), head)?,
                None => false,
            };
            positions.push((p, position, lost));
        }
        // Outbox entries (of every audience) this connection has not read yet.
        metrics::gauge!("audience_connection_queued", "connection" => self.label())
            .set(queued as f64);
        // Done when every partition this node owns is (a node owning none owes no sync: in a
        // cluster the figure is the AND of every node's).
        self.figures.lock().initial_sync_done = positions
            .iter()
            .all(|(_, position, _)| matches!(position, Some(DeliveryPosition::Delivered(_))));
        let mut progressed = false;
        for (p, position, lost) in positions {
            let outcome = match position {
                // Inactive while pruning passed it: what it missed is gone, so it syncs again
                // from the members as they are, with the drops of those who left.
                _ if lost => self.initial_sync(p, None, true).await.map(|()| true),
                Some(DeliveryPosition::Delivered(after)) => {
                    self.deliver(p, after.max(self.read_to(p))).await
                }
                // A sync started before: the receiver may hold what it sent, and drops of
                // members who left since it started are sent with it.
                started => {
                    let started = started.map(|s| s.needs_after());
                    let with_drops = started.is_some();
                    self.initial_sync(p, started, with_drops)
                        .await
                        .map(|()| true)
                }
            };
            match outcome {
                Ok(read) => progressed |= read,
                // Another node's now: it goes on from the position the partition carries.
                Err(Halt::Moved) => continue,
                Err(halt) => return Err(halt),
            }
        }
        Ok(progressed)
    }

    /// Whether deltas after `after` in a partition's outbox (whose head is `head`) were pruned
    /// before this connection read them: pruning passes the positions of inactive connections.
    fn lost_after(&self, p: Partition, after: u64, head: u64) -> Result<bool, Halt> {
        if head <= after {
            return Ok(false);
        }
        let next = self
            .engine
            .store
            .read_outbox(p, after, 1)
            .map_err(|_| Halt::Faulted)?;
        Ok(next.first().is_none_or(|(seq, _)| *seq > after + 1))
    }

    /// How far this loop read a partition's outbox without storing it (no delta of its
    /// audience there).
    fn read_to(&self, partition: Partition) -> u64 {
        self.unsaved
            .lock()
            .get(&partition)
            .map_or(0, |(seq, _)| *seq)
    }

    /// Sends a partition's deltas of the audience after `after`; whether anything was read.
    async fn deliver(&self, p: Partition, after: u64) -> Result<bool, Halt> {
        let store = &self.engine.store;
        let chunk = store
            .read_readable_outbox(p, after, self.policy.batch_size * 4)
            .map_err(|_| Halt::Faulted)?;
        let Some(&(last, _)) = chunk.last() else {
            return Ok(false);
        };
        let members = self.member_filter();
        let deltas: Vec<(u64, Delta)> = chunk
            .into_iter()
            .filter(|(_, d)| d.audience_id == self.connection.audience_id && members.sends(d.mpid))
            .collect();
        if deltas.is_empty() {
            // Nothing of this audience: the position is stored now and then only, not as a
            // changelog unit per page of other audiences' deltas (read again after a restart
            // or a move, it sends nothing).
            let stored_recently = self
                .unsaved
                .lock()
                .get(&p)
                .is_some_and(|(_, since)| since.elapsed() < POSITION_SAVE_INTERVAL);
            if stored_recently {
                self.unsaved
                    .lock()
                    .entry(p)
                    .and_modify(|(seq, _)| *seq = last);
                return Ok(true);
            }
            self.set_position(p, DeliveryPosition::Delivered(last))?;
            return Ok(true);
        }
        // Nothing leaves before it is durable.
        if let Err(e) = self.engine.make_durable().await {
            tracing::error!(connection = self.connection.id, error = %e, "outbox not made durable");
            return Err(Halt::Faulted);
        }
        if deltas.len() < self.policy.batch_size {
            // Linger so that a trickle of deltas still goes out in batches.
            let oldest = deltas[0].1.processing_time_ms;
            let age = (self.engine.clock.now() - oldest).max(0) as u64;
            if let Some(wait) = self.policy.linger.checked_sub(Duration::from_millis(age)) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stop.notified() => return Err(Halt::Stopped),
                }
            }
        }
        let mut items = Vec::with_capacity(deltas.len());
        for (_, d) in &deltas {
            let profile = match store.load_profile(p, d.mpid) {
                Ok(profile) => profile,
                // Set aside; the change goes without the profile's identities (counted as
                // unsendable where the output needs them) rather than holding up the rest.
                Err(StoreError::Unreadable(row)) => {
                    store
                        .set_aside(std::slice::from_ref(&row))
                        .map_err(|_| Halt::Faulted)?;
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, mpid = d.mpid, "profile not read; retrying");
                    return Err(Halt::Faulted);
                }
            };
            items.extend(self.item(d, profile.as_ref()));
        }
        self.ensure_owner(p)?;
        self.send_all(&items).await?;
        {
            let mut windows = self.windows.lock();
            let window = windows.entry(p).or_default();
            for (_, d) in &deltas {
                window.record(d);
            }
        }
        self.set_position(p, DeliveryPosition::Delivered(last))?;
        Ok(true)
    }

    /// Stores a position as the partition's state; `Moved` when this node no longer owns it.
    fn set_position(&self, p: Partition, position: DeliveryPosition) -> Result<(), Halt> {
        let id = self.connection.id;
        match self.engine.store.set_delivery_position(p, id, position) {
            Ok(()) => {
                if let DeliveryPosition::Delivered(seq) = position {
                    self.unsaved.lock().insert(p, (seq, Instant::now()));
                }
                Ok(())
            }
            Err(StoreError::NotWritable { .. }) => Err(Halt::Moved),
            Err(e) => {
                tracing::warn!(connection = id, partition = p, error = %e, "position not stored");
                Err(Halt::Faulted)
            }
        }
    }

    /// Two nodes never both deliver a partition: a node that lost it sends nothing more of it
    /// (what it was about to send is sent by the new owner, from the position it restored).
    fn ensure_owner(&self, p: Partition) -> Result<(), Halt> {
        let owned = self.engine.partitions.lock().contains(&p) && self.engine.store.may_write(p);
        if owned {
            Ok(())
        } else {
            Err(Halt::Moved)
        }
    }

    /// What a change becomes for this connection's output; counted when it cannot be sent.
    fn item(
        &self,
        change: &Delta,
        profile: Option<&audience_state::profile::ProfileState>,
    ) -> Option<DeliveryItem> {
        let item = delivery_item(
            change,
            profile,
            &self.accepted,
            &self.connection.shared_attributes,
        );
        if item.is_none() {
            self.count_unsendable(1);
        }
        item.map(|item| DeliveryItem {
            variation: self.connection.variation.clone(),
            ..item
        })
    }

    async fn send_all(&self, items: &[DeliveryItem]) -> Result<(), Halt> {
        for batch in items.chunks(self.policy.batch_size) {
            self.send_with_retries(batch).await?;
        }
        Ok(())
    }

    fn count_unsendable(&self, n: u64) {
        self.figures.lock().unsendable += n;
        metrics::counter!("audience_connection_unsendable_total", "connection" => self.label())
            .increment(n);
    }

    /// Sends the audience's current members in a partition, then stores the outbox head read
    /// before the scan as the position: deltas after it follow; those before are already in
    /// the members' versions (a receiver keeps the highest version, so an overlap is harmless).
    /// A sync interrupted and started again (`started`) keeps the head it started from, so the
    /// deltas between it and now (drops of members already sent) follow. With `drops`, the
    /// profiles that were members and left are sent as drops at their versions, for a
    /// receiver that may hold them from before (a receiver of nothing ignores them).
    async fn initial_sync(
        &self,
        p: Partition,
        started: Option<u64>,
        drops: bool,
    ) -> Result<(), Halt> {
        let store = &self.engine.store;
        let audience = self.connection.audience_id;
        let mut head = started;
        let mut after = None;
        let members = self.member_filter();
        loop {
            let head_before_scan = store.outbox_head(p).map_err(|_| Halt::Faulted)?;
            let page = store
                .scan_profiles(p, after, 500)
                .map_err(|_| Halt::Faulted)?;
            // An unreadable profile is set aside and not sent: its membership is unknown.
            store
                .set_aside(&page.unreadable)
                .map_err(|_| Halt::Faulted)?;
            let Some(last) = page.last else {
                break;
            };
            after = Some(last);
            let profiles = page.items;
            if head.is_none() {
                // Kept before anything is sent: pruning keeps the deltas after it.
                self.set_position(
                    p,
                    DeliveryPosition::Syncing {
                        head: head_before_scan,
                    },
                )?;
                head = Some(head_before_scan);
            }
            let mut items = Vec::new();
            for profile in profiles.iter().filter(|p| members.sends(p.mpid)) {
                let Some(record) = profile.memberships.get(&audience) else {
                    continue;
                };
                if !record.member && !drops {
                    continue;
                }
                let member = Delta {
                    audience_id: audience,
                    mpid: profile.mpid,
                    kind: match record.member {
                        true => DeltaKind::Added,
                        false => DeltaKind::Dropped,
                    },
                    event_time_ms: record.changed_at_ms,
                    processing_time_ms: record.changed_at_ms,
                    version: record.version,
                };
                items.extend(self.item(&member, Some(profile)));
            }
            if items.is_empty() {
                continue;
            }
            // The memberships read are those of deltas up to the head after the scan: they
            // leave once those are in the changelog and on disk, as the deltas would.
            let head_after_scan = store.outbox_head(p).map_err(|_| Halt::Faulted)?;
            self.wait_readable(p, head_after_scan).await?;
            if let Err(e) = self.engine.make_durable().await {
                tracing::error!(connection = self.connection.id, error = %e, "state not made durable");
                return Err(Halt::Faulted);
            }
            self.ensure_owner(p)?;
            self.send_all(&items).await?;
        }
        let head = match head {
            Some(head) => head,
            // No profile yet: the partition's deltas from now on.
            None => store.outbox_head(p).map_err(|_| Halt::Faulted)?,
        };
        self.set_position(p, DeliveryPosition::Delivered(head))
    }

    /// Waits until outbox readers may read up to `head` of a partition (its units are in the
    /// changelog topic).
    async fn wait_readable(&self, p: Partition, head: u64) -> Result<(), Halt> {
        loop {
            let readable = self
                .engine
                .store
                .readable_outbox_head(p)
                .map_err(|_| Halt::Faulted)?;
            if readable >= head {
                return Ok(());
            }
            self.ensure_owner(p)?;
            let mut wake = self.engine.outbox_written.subscribe();
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.stop.notified() => return Err(Halt::Stopped),
            }
        }
    }

    async fn send_with_retries(&self, batch: &[DeliveryItem]) -> Result<(), Halt> {
        let Some(audience) = self.audience() else {
            // The audience is gone: nothing is owed any more.
            return Ok(());
        };
        let label = self.label();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.sink.send(&audience, batch).await {
                Err(failure) if failure.waiting => {
                    // No receiver yet: not a failure, nothing is spent.
                    attempt -= 1;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = self.stop.notified() => return Err(Halt::Stopped),
                    }
                }
                Ok(()) => {
                    self.figures.lock().sent += batch.len() as u64;
                    metrics::counter!("audience_connection_sent_total", "connection" => label.clone())
                        .increment(batch.len() as u64);
                    return Ok(());
                }
                Err(failure) => {
                    self.figures.lock().failed += 1;
                    metrics::counter!("audience_connection_failed_total", "connection" => label.clone())
                        .increment(1);
                    if !failure.retryable || attempt >= self.policy.max_attempts {
                        self.fault(&failure, attempt);
                        return Err(Halt::Faulted);
                    }
                    let wait = backoff_ms(
                        attempt,
                        self.policy.base_backoff_ms,
                        self.policy.max_backoff_ms,
                        rand::random::<f64>(),
                        // Honoured, up to an hour: an output cannot park a connection for ever.
                        failure
                            .retry_after
                            .map(|d| d.as_millis().min(3_600_000) as u64),
                    );
                    tracing::warn!(
                        connection = self.connection.id, attempt, wait_ms = wait,
                        error = %failure.message, "send failed; retrying"
                    );
                    self.figures.lock().retried += 1;
                    metrics::counter!("audience_connection_retried_total", "connection" => label.clone())
                        .increment(1);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        _ = self.stop.notified() => return Err(Halt::Stopped),
                    }
                }
            }
        }
    }

    fn fault(&self, failure: &SendFailure, attempts: u32) {
        let fault = Fault {
            connection_id: self.connection.id,
            status: failure.status,
            body_excerpt: failure.body_excerpt.clone(),
            message: failure.message.clone(),
            at_ms: self.engine.clock.now(),
            attempts,
        };
        tracing::error!(
            connection = self.connection.id, attempts, status = ?failure.status,
            error = %failure.message, "connection faulted: sending stops until resumed"
        );
        if let Err(e) = self.engine.store.put_fault(&fault) {
            tracing::error!(error = %e, "fault could not be stored");
        }
        self.figures.lock().faulted = true;
    }
}
