//! Partitions placed by the engine itself (`cluster.assignment = "engine"`): which live node
//! owns each partition, and which stand by for it, as a pure function of the live nodes, so
//! that every node computes the same answer from the members topic and no broker-side group
//! protocol is involved.
//!
//! Why not the consumer group: with the group, a rebalance stops every partition of every
//! node (EAGER), a killed member keeps its partitions until the broker expires its session
//! (tansu 0.6 gave them back to the dead member and waited 80 s), and a cooperative assignor's
//! placement cannot be predicted, so standbys could not be placed where a failover lands.
//! Here a change moves only the partitions whose owner changes; the others keep processing.
//!
//! The placement is rendezvous hashing with bounded load: every (partition, node) pair has a
//! score, pairs are taken best first, and a node takes a partition while it holds fewer than
//! `ceil(partitions / nodes)`. So the load is balanced, and a node joining or leaving moves few
//! partitions besides its own. The standby of a partition is the node it is placed on when its
//! owner is gone ([`standbys`]): a failover lands on the warm copy by construction.
//!
//! Invariants: the answer depends on the set of live node ids only (not on their order, not on
//! history); every partition has exactly one owner while one node is live.

use audience_state::store::Partition;

/// A stable 64-bit score of a (partition, node) pair: FNV-1a over the node id and the
/// partition, then a 64-bit finaliser (splitmix64) so that near inputs score far apart. Fixed
/// here, not `std`'s hasher, so that nodes of different builds agree.
fn score(partition: Partition, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain(partition.to_be_bytes()) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The owner of each partition `0..partitions` among `live` (node ids, any order, duplicates
/// ignored); `None` everywhere when no node is live.
pub fn place(partitions: u32, live: &[String]) -> Vec<Option<String>> {
    let mut nodes: Vec<&str> = live.iter().map(String::as_str).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let mut owners = vec![None; partitions as usize];
    if nodes.is_empty() {
        return owners;
    }
    let capacity = (partitions as usize).div_ceil(nodes.len());
    let mut pairs: Vec<(u64, Partition, usize)> = Vec::with_capacity(owners.len() * nodes.len());
    for p in 0..partitions {
        for (n, node) in nodes.iter().enumerate() {
            pairs.push((score(p, node), p, n));
        }
    }
    // Best score first; ties (never seen in practice) by partition, then node id.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut load = vec![0usize; nodes.len()];
    for (_, p, n) in pairs {
        let slot = &mut owners[p as usize];
        if slot.is_none() && load[n] < capacity {
            *slot = Some(nodes[n].to_string());
            load[n] += 1;
        }
    }
    owners
}

/// The nodes that stand by for `partition`, owned by `owner`, among `live`: the node it is
/// placed on if the owner is gone, then the one it goes to if that one is gone too, `k` at
/// most.
pub fn standbys(
    partition: Partition,
    partitions: u32,
    owner: &str,
    live: &[String],
    k: usize,
) -> Vec<String> {
    successors(owner, live, k, |remaining| {
        place(partitions, remaining)
            .into_iter()
            .nth(partition as usize)
            .flatten()
    })
}

/// The nodes a partition owned by `owner` goes to, in turn, as each one before is gone: the
/// owner among the nodes left (`owner_among`) after taking away the owner, then that node, and
/// so on, `k` at most. Shared by every placement's standbys.
pub fn successors(
    owner: &str,
    live: &[String],
    k: usize,
    owner_among: impl Fn(&[String]) -> Option<String>,
) -> Vec<String> {
    let mut remaining: Vec<String> = live.iter().filter(|n| *n != owner).cloned().collect();
    let mut chosen = Vec::new();
    while chosen.len() < k {
        let Some(next) = owner_among(&remaining) else {
            break;
        };
        remaining.retain(|n| *n != next);
        chosen.push(next);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn nodes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn loads(owners: &[Option<String>]) -> BTreeMap<String, usize> {
        let mut loads = BTreeMap::new();
        for o in owners.iter().flatten() {
            *loads.entry(o.clone()).or_insert(0) += 1;
        }
        loads
    }

    #[test]
    fn every_partition_has_one_owner_and_the_load_is_balanced() {
        for partitions in [1u32, 2, 6, 8, 12, 32, 100] {
            for count in 1..=7 {
                let live: Vec<String> = (0..count).map(|i| format!("node-{i}")).collect();
                let owners = place(partitions, &live);
                assert!(owners.iter().all(Option::is_some));
                let cap = (partitions as usize).div_ceil(count);
                assert!(loads(&owners).values().all(|&l| l <= cap), "{owners:?}");
            }
        }
        assert_eq!(place(4, &[]), vec![None; 4]);
    }

    #[test]
    fn the_placement_depends_on_the_set_of_live_nodes_only() {
        let a = place(12, &nodes(&["c", "a", "b"]));
        assert_eq!(a, place(12, &nodes(&["a", "b", "c", "a"])));
        assert_eq!(a, place(12, &nodes(&["b", "c", "a"])));
    }

    #[test]
    fn a_standby_is_where_the_partition_goes_when_its_owner_leaves() {
        let live = nodes(&["a", "b", "c", "d"]);
        for partitions in [4u32, 6, 8, 12] {
            let owners = place(partitions, &live);
            for p in 0..partitions {
                let owner = owners[p as usize].clone().unwrap();
                let chosen = standbys(p, partitions, &owner, &live, 2);
                assert_eq!(chosen.len(), 2);
                assert!(!chosen.contains(&owner) && chosen[0] != chosen[1]);
                let without: Vec<String> = live.iter().filter(|n| **n != owner).cloned().collect();
                assert_eq!(
                    place(partitions, &without)[p as usize],
                    Some(chosen[0].clone())
                );
            }
        }
        assert!(standbys(0, 4, "a", &nodes(&["a"]), 1).is_empty());
    }

    /// How many partitions of the nodes that stay move when one leaves, and how many besides
    /// those it takes move when one joins: few (`range` moves most of them).
    #[test]
    fn a_node_leaving_or_joining_moves_few_partitions_besides_its_own() {
        let (mut moved_on_leave, mut moved_on_join, mut cases) = (0, 0, 0);
        for partitions in [6u32, 8, 12, 16, 24] {
            for count in 2..=5 {
                let live: Vec<String> = (0..count).map(|i| format!("node-{i}")).collect();
                let before = place(partitions, &live);
                let leaving = &live[count - 1];
                let after = place(partitions, &live[..count - 1]);
                moved_on_leave += (0..partitions as usize)
                    .filter(|&p| before[p].as_ref() != Some(leaving) && before[p] != after[p])
                    .count();
                let mut more = live.clone();
                more.push("node-new".into());
                let joined = place(partitions, &more);
                let taken: BTreeSet<usize> = (0..partitions as usize)
                    .filter(|&p| joined[p].as_deref() == Some("node-new"))
                    .collect();
                moved_on_join += (0..partitions as usize)
                    .filter(|p| !taken.contains(p) && before[*p] != joined[*p])
                    .count();
                cases += partitions as usize;
            }
        }
        eprintln!(
            "partitions moved besides the leaving/joining node's: {moved_on_leave} and \
             {moved_on_join} of {cases}"
        );
        assert!(moved_on_leave * 5 < cases, "{moved_on_leave} of {cases}");
        assert!(moved_on_join * 5 < cases, "{moved_on_join} of {cases}");
    }
}
