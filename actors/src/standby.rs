//! Standby replicas (cluster step 3): with `cluster.standby_replicas = k`, each partition has
//! up to k live nodes besides its owner that keep a warm copy of it by following its
//! changelog ([`Restorer::follow`]), so that when the partition comes to one of them its
//! restore reads only the units written since, not the whole log.
//!
//! Which nodes stand by for a partition is a pure function of the partition, its owner and
//! the live nodes ([`standbys`]): rendezvous hashing, so every node computes the same answer
//! from the members topic, and a node joining or leaving moves only the partitions it ranks
//! highest for.
//!
//! Invariants: a node never follows a partition it owns or restores (the restore takes the
//! partition's restore lock, which a follow round holds too); a follow never claims, never
//! writes the partition's state but the units the log holds, and never wipes.
//!
//! Limit: the consumer group's assignor does not know which node is warm (librdkafka offers no
//! custom assignor to Rust), so a failover lands on a standby only when the group gives it
//! the partition; with `k` = nodes - 1 every node is warm.

use crate::changelog_restore::Restorer;
use crate::cluster_view::{is_silent, now_ms, owners, MembersTopic};
use crate::node::Node;
use audience_state::store::Partition;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the members topic is read to decide what to stand by for.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// A node's rank for a partition: the highest `k` stand by for it.
fn rank(partition: Partition, node: &str) -> u64 {
    // FNV-1a over the partition and the node id, then SplitMix64's finalizer: stable across
    // versions and platforms (not `std`'s hasher, whose output may change).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in partition.to_be_bytes().iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    audience_state::estimate::sample_rank(h as i64)
}

/// The nodes that stand by for `partition`: the `k` live nodes other than its owner that rank
/// highest for it.
pub fn standbys(partition: Partition, owner: &str, live: &[String], k: usize) -> Vec<String> {
    let mut candidates: Vec<&String> = live.iter().filter(|n| n.as_str() != owner).collect();
    candidates.sort_by_key(|n| std::cmp::Reverse((rank(partition, n), n.as_str())));
    candidates.into_iter().take(k).cloned().collect()
}

/// What this node stands by for now (announced, and shown by `audiencectl cluster`).
#[derive(Default)]
pub struct StandbySet(Mutex<BTreeSet<Partition>>);

impl StandbySet {
    pub fn partitions(&self) -> Vec<Partition> {
        self.0.lock().iter().copied().collect()
    }

    pub fn contains(&self, partition: Partition) -> bool {
        self.0.lock().contains(&partition)
    }
}

/// Keeps this node standing by for the partitions it should, until shutdown: every
/// [`LOOK_EVERY`] it reads who owns what and who is live, and starts a follower (a blocking
/// thread) for each partition it newly stands by for; a follower ends once the partition is
/// no longer in the set (it came here, or another node ranks higher now).
pub async fn stand_by(
    node: Arc<Node>,
    restorer: Arc<Restorer>,
    members: MembersTopic,
    node_id: String,
    k: usize,
    set: Arc<StandbySet>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let read = {
            let members = members.clone();
            tokio::task::spawn_blocking(move || members.read()).await
        };
        match read {
            Ok(Ok(nodes)) => {
                let now = now_ms();
                let live: Vec<String> = nodes
                    .values()
                    .filter(|a| !is_silent(a, now))
                    .map(|a| a.node_id.clone())
                    .collect();
                let mine: BTreeSet<Partition> = node.owned().into_iter().collect();
                let restoring: BTreeSet<Partition> = node.restoring().into_iter().collect();
                let wanted: BTreeSet<Partition> = owners(&nodes, now)
                    .into_iter()
                    .filter(|(p, owner)| {
                        *owner != node_id
                            && !mine.contains(p)
                            && !restoring.contains(p)
                            && standbys(*p, owner, &live, k).contains(&node_id)
                    })
                    .map(|(p, _)| p)
                    .collect();
                let started: Vec<Partition> = {
                    let mut current = set.0.lock();
                    let new = wanted.difference(&current).copied().collect();
                    *current = wanted;
                    new
                };
                metrics::gauge!("audience_standby_partitions").set(set.partitions().len() as f64);
                for p in started {
                    tracing::info!(
                        partition = p,
                        "standing by: following the partition's changelog"
                    );
                    let (node, restorer, set) = (node.clone(), restorer.clone(), set.clone());
                    tokio::task::spawn_blocking(move || {
                        let standing_by = || set.contains(p) && !node.owned().contains(&p);
                        restorer.follow(&node, p, &standing_by);
                        tracing::info!(partition = p, "no longer standing by");
                    });
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "standby: the members topic not read"),
            Err(e) => tracing::debug!(error = %e, "standby: the members topic not read"),
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = shutdown.changed() => {
                set.0.lock().clear();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn standbys_are_other_live_nodes_the_same_everywhere() {
        let live = nodes(&["a", "b", "c", "d"]);
        for p in 0..32 {
            let chosen = standbys(p, "a", &live, 2);
            assert_eq!(chosen.len(), 2);
            assert!(!chosen.contains(&"a".to_string()), "never the owner");
            assert_ne!(chosen[0], chosen[1]);
            // Any order of the live list gives the same answer.
            let reversed: Vec<String> = live.iter().rev().cloned().collect();
            assert_eq!(standbys(p, "a", &reversed, 2), chosen);
        }
        assert_eq!(standbys(0, "a", &nodes(&["a"]), 1), Vec::<String>::new());
        assert_eq!(standbys(0, "a", &nodes(&["a", "b"]), 3), nodes(&["b"]));
    }

    #[test]
    fn a_node_leaving_moves_only_the_partitions_it_stood_by_for() {
        let before = nodes(&["a", "b", "c", "d", "e"]);
        let after = nodes(&["a", "b", "c", "d"]);
        let mut moved = 0;
        for p in 0..64 {
            let was = standbys(p, "a", &before, 1);
            let is = standbys(p, "a", &after, 1);
            if was != is {
                assert_eq!(was, nodes(&["e"]), "partition {p}");
                moved += 1;
            }
        }
        assert!(moved > 0 && moved < 64, "{moved}");
    }
}
