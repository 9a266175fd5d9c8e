//! Standby replicas (cluster step 3): with `cluster.standby_replicas = k`, each partition has
//! up to k live nodes besides its owner that keep a warm copy of it by following its
//! changelog ([`Restorer::follow`]), so that when the partition comes to one of them its
//! restore reads only the units written since, not the whole log.
//!
//! Which nodes stand by for a partition is a pure function of the partition, its owner and
//! the live nodes ([`Placement`]), so every node computes the same answer from the members
//! topic: the node the partition would go to if its owner left, then the one it would get if
//! that one left too, and so on. In a consumer group the ingest consumer's assignor is
//! librdkafka's `range` ([`range_owner`] computes it); assigned by the engine, it is
//! [`crate::assignment::place`]. Either way the assignment prefers the warm node by
//! construction, as Kafka Streams' warm-up assignor does by choice.
//!
//! Invariants: a node never follows a partition it owns or restores (the restore takes the
//! partition's restore lock, which a follow round holds too); a follow never claims, never
//! writes the partition's state but the units the log holds, and never wipes.
//!
//! Limits (a consumer group): `range` moves partitions of nodes that stay when the group
//! changes (it is not sticky): with `k` = 1 the dead node's partitions land warm, a few others may move cold;
//! with `k` = nodes - 1 every node is warm. Two node ids where one followed by '-' begins the
//! other ("node" and "node-2") sort by the broker's random member-id suffix: the standby is
//! then a guess.

use crate::changelog_restore::Restorer;
use crate::cluster_view::{is_silent_after, now_ms, owners, MembersTopic};
use crate::node::Node;
use audience_state::store::Partition;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the members topic is read to decide what to stand by for.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The member of `members` (node ids) that librdkafka's `range` assignor gives `partition`
/// of a topic of `partitions`: members in member-id order, each a contiguous range, the first
/// `partitions % members` one partition more. The broker names a member
/// `"{client.id}-{uuid}"` (tansu as Kafka) and the ingest consumer's client id is the node
/// id, so member-id order is the order of `"{node id}-"`.
pub fn range_owner(partition: Partition, partitions: u32, members: &[String]) -> Option<String> {
    if members.is_empty() || partition >= partitions {
        return None;
    }
    let mut sorted: Vec<String> = members.iter().map(|m| format!("{m}-")).collect();
    sorted.sort();
    let (count, p) = (sorted.len() as u32, partition);
    let (each, extra) = (partitions / count, partitions % count);
    // Members before `extra` hold `each + 1`, the rest `each`.
    let index = if p < extra * (each + 1) {
        p / (each + 1)
    } else {
        extra + (p - extra * (each + 1)) / each
    };
    let key = &sorted[index as usize];
    Some(key[..key.len() - 1].to_string())
}

/// The nodes that stand by for `partition` of `partitions`, owned by `owner`, among the `live`
/// nodes: the one the group gives it if the owner leaves, then the one it goes to if that one
/// leaves too, `k` of them at most.
pub fn standbys(
    partition: Partition,
    partitions: u32,
    owner: &str,
    live: &[String],
    k: usize,
) -> Vec<String> {
    crate::assignment::successors(owner, live, k, |remaining| {
        range_owner(partition, partitions, remaining)
    })
}

/// Where partitions go when their owner leaves: the standbys of a partition (its owner and the
/// live nodes given), and how long a node may be silent before it no longer counts as live.
#[derive(Clone, Copy)]
pub struct Placement {
    pub standbys: fn(Partition, u32, &str, &[String], usize) -> Vec<String>,
    pub silent_after: Duration,
}

impl Placement {
    /// A consumer group with librdkafka's `range` assignor.
    pub fn range_group(silent_after: Duration) -> Placement {
        Placement {
            standbys,
            silent_after,
        }
    }

    /// The engine's own assignment ([`crate::self_assignment`]).
    pub fn engine(silent_after: Duration) -> Placement {
        Placement {
            standbys: crate::assignment::standbys,
            silent_after,
        }
    }
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
    (k, partitions, placement): (usize, u32, Placement),
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
                    .filter(|a| !is_silent_after(a, now, placement.silent_after))
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
                            && (placement.standbys)(*p, partitions, owner, &live, k)
                                .contains(&node_id)
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

    /// librdkafka's `range` over 3 members and 8 partitions: 3, 3, 2.
    #[test]
    fn range_owner_is_librdkafkas_range() {
        let members = nodes(&["node-c", "node-a", "node-b"]);
        let owners: Vec<String> = (0..8)
            .map(|p| range_owner(p, 8, &members).unwrap())
            .collect();
        assert_eq!(
            owners,
            ["node-a", "node-a", "node-a", "node-b", "node-b", "node-b", "node-c", "node-c"]
        );
        let two: Vec<String> = (0..6)
            .map(|p| range_owner(p, 6, &nodes(&["b", "a"])).unwrap())
            .collect();
        assert_eq!(two, ["a", "a", "a", "b", "b", "b"]);
        // More members than partitions: the last members get none.
        assert_eq!(
            range_owner(1, 2, &nodes(&["a", "b", "c"])).as_deref(),
            Some("b")
        );
        assert_eq!(range_owner(0, 8, &[]), None);
        assert_eq!(range_owner(8, 8, &members), None);
        // Member ids are "{id}-{uuid}": "a-b" sorts before "a0" as "a-b-..." before "a0-...".
        assert_eq!(
            range_owner(0, 2, &nodes(&["a0", "a-b"])).as_deref(),
            Some("a-b")
        );
    }

    #[test]
    fn a_standby_is_where_the_group_puts_the_partition_when_its_owner_leaves() {
        let live = nodes(&["a", "b", "c", "d"]);
        for partitions in [4u32, 6, 8, 12] {
            for p in 0..partitions {
                let owner = range_owner(p, partitions, &live).unwrap();
                let chosen = standbys(p, partitions, &owner, &live, 2);
                assert_eq!(chosen.len(), 2);
                assert!(!chosen.contains(&owner), "never the owner");
                assert_ne!(chosen[0], chosen[1]);
                let without: Vec<String> = live.iter().filter(|n| **n != owner).cloned().collect();
                assert_eq!(
                    range_owner(p, partitions, &without),
                    Some(chosen[0].clone())
                );
                // Any order of the live list gives the same answer.
                let reversed: Vec<String> = live.iter().rev().cloned().collect();
                assert_eq!(standbys(p, partitions, &owner, &reversed, 2), chosen);
            }
        }
        assert_eq!(standbys(0, 4, "a", &nodes(&["a"]), 1), Vec::<String>::new());
        assert_eq!(standbys(0, 4, "a", &nodes(&["a", "b"]), 3), nodes(&["b"]));
    }
}
