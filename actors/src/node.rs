//! One engine node: the actix system that hosts the partition actors (spread over one arbiter
//! thread per core), and the routing of work to them.
//!
//! Invariant: a partition has an actor on this node only while the consumer's assignment
//! holds it. Only [`Node::assign`] (the assign callback) and [`Node::finish_restore`] create
//! actors; [`Node::release`] (the revoke callback, or a handoff of the engine's own
//! assignment) stops them. Each owned partition has an epoch, by which ingestion drops what it
//! gathered of a partition before it left (see [`crate::ingest`]); the partitions that stay
//! keep theirs, so a change elsewhere takes nothing from them.
//!
//! With the changelog on, an assigned partition is first restored from its changelog topic
//! ([`crate::changelog_restore`]): [`Node::begin_restore`] holds it without an actor, and
//! [`Node::finish_restore`] starts the actor once the state is the log's, unless the partition
//! was revoked meanwhile.

use crate::engine::Engine;
use crate::partition::{
    CatalogChanged, PartitionActor, PartitionSnapshot, ReplayMode, Snapshot, StartReplay, Stop,
    Tick,
};
use actix::prelude::*;
use audience_state::store::Partition;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub struct Node {
    pub engine: Arc<Engine>,
    arbiters: Vec<ArbiterHandle>,
    actors: Mutex<BTreeMap<Partition, Addr<PartitionActor>>>,
    ownership: Mutex<Ownership>,
    /// Held while a claim of a partition is written: a revoke waits for it, so that a node
    /// never claims a partition it was revoked (after the new owner's claim).
    claiming: Mutex<()>,
    /// One restore of a partition at a time: a restore begun under an older assignment
    /// finishes (or gives up) before the next one reads.
    restores: Mutex<BTreeMap<Partition, Arc<Mutex<()>>>>,
}

/// The partitions the consumer's assignment holds, and how many times it changed.
#[derive(Debug, Default)]
struct Ownership {
    owned: BTreeSet<Partition>,
    /// Each owned partition's epoch: the generation it became owned under. A message received
    /// under an older epoch of its partition was fetched before the partition left (and maybe
    /// came back): it is not processed.
    since: BTreeMap<Partition, u64>,
    /// Assigned partitions being restored, with the generation their restore began under.
    restoring: BTreeMap<Partition, u64>,
    generation: u64,
    /// Partitions placed on this node by the engine's own assignment still wait for their
    /// holder to hand them over (see [`Node::placed_partitions_waiting`]).
    waiting: bool,
    /// Owned partitions whose last batch the store refused (a full disk): ingestion tries the
    /// batch again and reads nothing after it meanwhile (see [`Node::set_stalled`]).
    stalled: BTreeSet<Partition>,
}

impl Node {
    /// Starts the actor system on its own threads.
    pub fn start(engine: Arc<Engine>, threads: usize) -> anyhow::Result<Arc<Node>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let threads = threads.max(1);
        std::thread::Builder::new()
            .name("actix-system".into())
            .spawn(move || {
                let system = actix::System::new();
                system.block_on(async move {
                    let handles: Vec<ArbiterHandle> =
                        (0..threads).map(|_| Arbiter::new().handle()).collect();
                    let _ = tx.send(handles);
                });
                let _ = system.run();
            })?;
        let arbiters = rx.recv()?;
        Ok(Arc::new(Node {
            engine,
            arbiters,
            actors: Mutex::new(BTreeMap::new()),
            ownership: Mutex::new(Ownership::default()),
            claiming: Mutex::new(()),
            restores: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The assignment gave this node `partitions`: their actors start (and recover their
    /// state).
    pub fn assign(&self, partitions: &[Partition]) -> anyhow::Result<()> {
        {
            let mut ownership = self.ownership.lock();
            ownership.owned.extend(partitions.iter().copied());
            ownership.generation += 1;
            let epoch = ownership.generation;
            for &p in partitions {
                ownership.since.insert(p, epoch);
            }
        }
        for &p in partitions {
            self.start_actor(p)?;
        }
        Ok(())
    }

    /// The assignment gave this node `partitions`, to restore before they are consumed: no
    /// actor until [`Node::finish_restore`]. Returns the token the restores carry.
    pub fn begin_restore(&self, partitions: &[Partition]) -> u64 {
        for &p in partitions {
            self.engine.store.stop_writing(p);
        }
        let mut ownership = self.ownership.lock();
        ownership.generation += 1;
        let token = ownership.generation;
        for &p in partitions {
            ownership.restoring.insert(p, token);
        }
        token
    }

    /// The lock a restore of `partition` holds from its first read to its last write.
    pub fn restore_lock(&self, partition: Partition) -> Arc<Mutex<()>> {
        self.restores.lock().entry(partition).or_default().clone()
    }

    /// Whether the restore of `partition` begun under `token` is still wanted.
    pub fn is_restoring(&self, partition: Partition, token: u64) -> bool {
        self.ownership.lock().restoring.get(&partition) == Some(&token)
    }

    /// The restore of `partition` begun under `token` is done: its actor starts, unless the
    /// partition was revoked (or assigned again) meanwhile. Returns whether it started.
    pub fn finish_restore(&self, partition: Partition, token: u64) -> anyhow::Result<bool> {
        {
            let mut ownership = self.ownership.lock();
            if ownership.restoring.get(&partition) != Some(&token) {
                return Ok(false);
            }
            ownership.restoring.remove(&partition);
            ownership.owned.insert(partition);
            ownership.generation += 1;
            let epoch = ownership.generation;
            ownership.since.insert(partition, epoch);
        }
        self.start_actor(partition)?;
        Ok(true)
    }

    /// Runs `claim` unless the restore of `partition` under `token` was revoked: a revoke
    /// waits until the claim is written.
    pub fn claim_while_restoring<T>(
        &self,
        partition: Partition,
        token: u64,
        claim: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let _no_revoke_meanwhile = self.claiming.lock();
        anyhow::ensure!(
            self.is_restoring(partition, token),
            "partition {partition} was revoked while it was restored"
        );
        claim()
    }

    /// The partitions being restored now.
    pub fn restoring(&self) -> Vec<Partition> {
        self.ownership.lock().restoring.keys().copied().collect()
    }

    /// Ready as a member of a deployment (its readiness probe): the group gave this node its
    /// partitions (none, too, counts), none of them is still being restored, and (assigned by
    /// the engine) none placed here waits for another node to hand it over.
    pub fn restored(&self) -> bool {
        let ownership = self.ownership.lock();
        ownership.generation > 0 && ownership.restoring.is_empty() && !ownership.waiting
    }

    /// Ready to serve (the health service's `ready`): [`Node::restored`], and no partition
    /// stalled on a store that refuses writes. A node that cannot store what it reads is taken
    /// out of service until the store takes writes again, rather than exiting: a restart on a
    /// full disk would only fail again, and its reads still answer.
    pub fn ready(&self) -> bool {
        self.restored() && self.ownership.lock().stalled.is_empty()
    }

    /// Marks `partition` as stalled (its batch refused by the store, waiting to be tried
    /// again) or as going on again; a partition no longer owned is never stalled.
    pub fn set_stalled(&self, partition: Partition, stalled: bool) {
        let mut ownership = self.ownership.lock();
        if stalled && ownership.owned.contains(&partition) {
            ownership.stalled.insert(partition);
        } else {
            ownership.stalled.remove(&partition);
        }
        metrics::gauge!("audience_partitions_stalled").set(ownership.stalled.len() as f64);
    }

    /// The owned partitions stalled on the store (see [`Node::set_stalled`]).
    pub fn stalled(&self) -> Vec<Partition> {
        self.ownership.lock().stalled.iter().copied().collect()
    }

    /// Whether partitions placed on this node by the engine's own assignment wait for their
    /// holder (see [`Node::restored`]).
    pub fn placed_partitions_waiting(&self, waiting: bool) {
        self.ownership.lock().waiting = waiting;
    }

    /// How many times the assignment changed.
    pub fn generation(&self) -> u64 {
        self.ownership.lock().generation
    }

    /// The epoch of an owned partition (see `Ownership::since`); `None` when not owned.
    pub fn epoch(&self, partition: Partition) -> Option<u64> {
        self.ownership.lock().since.get(&partition).copied()
    }

    /// Every owned partition's epoch, read at once (ingestion's lanes check them all).
    pub fn epochs(&self) -> BTreeMap<Partition, u64> {
        self.ownership.lock().since.clone()
    }

    /// The first assignment is known, even when it gives this node nothing (more nodes than
    /// partitions): the node is ready ([`Node::restored`]).
    pub fn assignment_known(&self) {
        let mut ownership = self.ownership.lock();
        if ownership.generation == 0 {
            ownership.generation = 1;
        }
    }

    /// The actor of a partition this node owns (restarted if it stopped); `None` for a
    /// partition it does not own: never an actor for it.
    pub fn owned_partition(
        &self,
        partition: Partition,
    ) -> anyhow::Result<Option<Addr<PartitionActor>>> {
        if !self.ownership.lock().owned.contains(&partition) {
            return Ok(None);
        }
        self.start_actor(partition).map(Some)
    }

    /// The actor of a partition, started (and its state recovered) if it is not running.
    fn start_actor(&self, partition: Partition) -> anyhow::Result<Addr<PartitionActor>> {
        let mut actors = self.actors.lock();
        if let Some(addr) = actors.get(&partition) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        let actor = PartitionActor::new(partition, self.engine.clone())?;
        let arbiter = &self.arbiters[partition as usize % self.arbiters.len()];
        let addr = PartitionActor::start_in_arbiter(arbiter, move |_| actor);
        actors.insert(partition, addr.clone());
        Ok(addr)
    }

    /// The first step of [`Node::release`], alone: `partitions` are no longer owned nor
    /// restored here (no message reaches their actors, no restore claims them), their actors
    /// still run. Waits until a claim being written is.
    pub fn disown(&self, partitions: &[Partition]) {
        let _claims_written = self.claiming.lock();
        let mut ownership = self.ownership.lock();
        for p in partitions {
            ownership.owned.remove(p);
            ownership.restoring.remove(p);
            ownership.since.remove(p);
            ownership.stalled.remove(p);
        }
        ownership.generation += 1;
    }

    /// Stops the actors of partitions this node no longer owns, and waits until they have
    /// stopped: a partition must never have two actors writing its keys.
    pub fn release(&self, partitions: &[Partition]) {
        self.disown(partitions);
        {
            // Its outbox is the new owner's to publish and deliver.
            let mut published = self.engine.partitions.lock();
            for p in partitions {
                published.remove(p);
            }
        }
        let released: Vec<(Partition, Addr<PartitionActor>)> = {
            let mut actors = self.actors.lock();
            partitions
                .iter()
                .filter_map(|p| actors.remove(p).map(|a| (*p, a)))
                .collect()
        };
        for (p, addr) in released {
            // Called from the consumer's rebalance callback, never from an arbiter thread.
            let _ = futures::executor::block_on(addr.send(Stop));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while addr.connected() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            tracing::info!(partition = p, "partition released");
        }
        for &p in partitions {
            // Nothing (a publisher's position, a late timer) writes it from here on.
            self.engine.store.stop_writing(p);
        }
        self.wait_for_changelog(partitions);
    }

    /// Waits (a bounded time) until the changelog topic holds every unit this node wrote of
    /// `partitions`: the next owner restores up to the topic's end, then claims, and a unit
    /// that reached the topic after the claim would be ignored (a zombie's), its messages
    /// applied twice. What stays pending past the bound is handled when this node restores the
    /// partition again (its state is rebuilt from the log).
    fn wait_for_changelog(&self, partitions: &[Partition]) {
        let store = &self.engine.store;
        if !store.logs_partition_writes() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for &p in partitions {
            while store.pending_units(p, 1).is_ok_and(|u| !u.is_empty()) {
                if std::time::Instant::now() > deadline {
                    tracing::warn!(
                        partition = p,
                        "released with changelog units not on the topic yet"
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// An arbiter for actors that are not partition actors (connectors).
    pub fn arbiter(&self) -> ArbiterHandle {
        self.arbiters[self.arbiters.len() - 1].clone()
    }

    pub fn owned(&self) -> Vec<Partition> {
        self.actors.lock().keys().copied().collect()
    }

    pub fn catalog_changed(&self) {
        for addr in self.actors.lock().values() {
            addr.do_send(CatalogChanged);
        }
    }

    /// Fires due timers now (after the manual clock moved).
    pub fn tick(&self) {
        for addr in self.actors.lock().values() {
            addr.do_send(Tick);
        }
    }

    /// Asks every partition of this node to rebuild (or check) its profiles from their logs.
    /// Returns each partition's profile count, or why it could not start.
    pub async fn start_replay(&self, mode: ReplayMode) -> Vec<(Partition, Result<u64, String>)> {
        let addrs: Vec<_> = self
            .actors
            .lock()
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let mut out = Vec::new();
        for (p, addr) in addrs {
            let result = match addr.send(StartReplay { mode }).await {
                Ok(r) => r,
                Err(e) => Err(format!("partition {p} is stopping: {e}")),
            };
            out.push((p, result));
        }
        out
    }

    pub async fn snapshots(&self) -> Vec<PartitionSnapshot> {
        let addrs: Vec<_> = self.actors.lock().values().cloned().collect();
        let mut out = Vec::new();
        for addr in addrs {
            if let Ok(s) = addr.send(Snapshot).await {
                out.push(s);
            }
        }
        out
    }
}
