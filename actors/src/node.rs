//! One engine node: the actix system that hosts the partition actors (spread over one arbiter
//! thread per core), and the routing of work to them.
//!
//! Invariant: a partition has an actor on this node only while the consumer's assignment
//! holds it. Only [`Node::assign`] (the assign callback) creates actors; [`Node::release`]
//! (the revoke callback) stops them; each bumps the assignment generation, by which ingestion
//! drops what it gathered before a change (see [`crate::ingest`]).

use crate::engine::Engine;
use crate::partition::{
    CatalogChanged, PartitionActor, PartitionSnapshot, Snapshot, StartReplay, Stop, Tick,
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
}

/// The partitions the consumer's assignment holds, and how many times it changed.
#[derive(Debug, Default)]
struct Ownership {
    owned: BTreeSet<Partition>,
    generation: u64,
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
        }))
    }

    /// The assignment gave this node `partitions`: their actors start (and recover their
    /// state).
    pub fn assign(&self, partitions: &[Partition]) -> anyhow::Result<()> {
        {
            let mut ownership = self.ownership.lock();
            ownership.owned.extend(partitions.iter().copied());
            ownership.generation += 1;
        }
        for &p in partitions {
            self.start_actor(p)?;
        }
        Ok(())
    }

    /// How many times the assignment changed: work gathered under an older generation may
    /// belong to a partition this node no longer owns.
    pub fn generation(&self) -> u64 {
        self.ownership.lock().generation
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

    /// Stops the actors of partitions this node no longer owns, and waits until they have
    /// stopped: a partition must never have two actors writing its keys.
    pub fn release(&self, partitions: &[Partition]) {
        {
            let mut ownership = self.ownership.lock();
            for p in partitions {
                ownership.owned.remove(p);
            }
            ownership.generation += 1;
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

    /// Asks every partition of this node to rebuild its profiles from their logs (with
    /// `wipe`, after deleting their states). Returns each partition's profile count, or why it
    /// could not start.
    pub async fn start_replay(&self, wipe: bool) -> Vec<(Partition, Result<u64, String>)> {
        let addrs: Vec<_> = self
            .actors
            .lock()
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let mut out = Vec::new();
        for (p, addr) in addrs {
            let result = match addr.send(StartReplay { wipe }).await {
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
