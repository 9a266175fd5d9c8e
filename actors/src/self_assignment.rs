//! The engine assigns the input partitions itself (`cluster.assignment = "engine"`), instead of
//! a consumer group: every node reads the members topic, places the partitions over the live
//! nodes ([`crate::assignment::place`], the same answer on every node), and moves only what
//! changed, one partition at a time, by a handoff:
//!
//! 1. the node that loses a partition stops consuming it, stops its actor, waits until the
//!    changelog topic holds its units ([`Node::release`]) and announces itself at once without
//!    it;
//! 2. the node that gains it waits until no live node announces it (owned or being restored),
//!    or its holder is silent (killed, cut off), then restores it from the changelog, claims it
//!    with the next epoch, and is assigned it at the offsets its state was produced up to
//!    (incrementally: the partitions it keeps are not stopped).
//!
//! So a node joining or leaving pauses only the partitions that move (a cooperative
//! rebalance), and a killed node's partitions move once it has been silent for
//! `silent_after`, to their standby (the warm copy) by construction.
//!
//! Invariants: the consumer is never subscribed; only this loop and a finished restore change
//! its assignment. Two nodes that briefly disagree on the live nodes (one paused longer than
//! `silent_after`) may both hold a partition: the claims' epochs fence the older (its units
//! are refused by every reader and what it wrote never leaves, `Store::acknowledge_units`), and
//! a node lets go of a partition it sees another live node hold, or that it was fenced from
//! ([`crate::engine::Engine::fenced`]), and restores it again if it is placed there.

use crate::assignment::place;
use crate::cluster_view::{is_silent_after, now_ms, Announcement, MembersTail};
use crate::ingest::{IngestContext, RestoreHook};
use crate::node::Node;
use audience_state::store::Partition;
use rdkafka::consumer::StreamConsumer;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What one look at the cluster asks of this node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Partitions it holds (owns or restores) and must hand over (or restore again: fenced).
    pub release: Vec<Partition>,
    /// Partitions placed on it that no live node holds any more: to restore now.
    pub acquire: Vec<Partition>,
    /// Partitions placed on it that another live node still holds: it hands them over soon.
    pub waiting: Vec<Partition>,
}

/// What node `me`, holding `held` (owned or being restored), does about the cluster's
/// announcements `nodes` at `now_ms`: a node is live while its newest announcement is at most
/// `silent_after` old (`me` always is). `fenced` are partitions another node claimed
/// under this node: they are released, and acquired again at a later look if still placed
/// here.
pub fn decide(
    me: &str,
    partitions: u32,
    nodes: &BTreeMap<String, Announcement>,
    (now_ms, silent_after): (i64, Duration),
    held: &BTreeSet<Partition>,
    fenced: &BTreeSet<Partition>,
) -> Moves {
    let live_nodes: Vec<&Announcement> = nodes
        .values()
        .filter(|a| a.node_id != me && !is_silent_after(a, now_ms, silent_after))
        .collect();
    let mut live: Vec<String> = live_nodes.iter().map(|a| a.node_id.clone()).collect();
    live.push(me.to_string());
    let placed = place(partitions, &live);
    let mine = |p: Partition| {
        placed
            .get(p as usize)
            .is_some_and(|o| o.as_deref() == Some(me))
    };
    let held_elsewhere = |p: Partition| {
        live_nodes
            .iter()
            .any(|a| a.partitions.contains(&p) || a.restoring.contains(&p))
    };
    // A partition held here and by another live node: one of the two was taken for gone (a
    // pause longer than `silent_after`) and the other took it over. This node lets go; if the
    // partition is placed here, it comes back through a restore, which reads what the other
    // wrote. (A handoff never makes two holders: the loser lets go before the gainer restores.)
    let release = held
        .iter()
        .copied()
        .filter(|&p| !mine(p) || fenced.contains(&p) || held_elsewhere(p))
        .collect();
    let (waiting, acquire) = (0..partitions)
        .filter(|&p| mine(p) && !held.contains(&p))
        .partition(|&p| held_elsewhere(p));
    Moves {
        release,
        acquire,
        waiting,
    }
}

/// The engine's assignment loop of one node.
pub struct SelfAssignment {
    pub node: Arc<Node>,
    pub node_id: String,
    pub consumer: Arc<StreamConsumer<IngestContext>>,
    pub restore: RestoreHook,
    /// The input topics' partition count (they are co-partitioned).
    pub partitions: u32,
    /// How often the members topic is looked at.
    pub look_every: Duration,
    /// A node whose newest announcement is older than this is gone.
    pub silent_after: Duration,
    /// Wakes this node's announcer: its holdings changed.
    pub announce_now: Arc<Notify>,
}

impl SelfAssignment {
    /// Looks at the cluster every `look_every` and moves partitions until shutdown (see
    /// [`SelfAssignment::hand_over_all`] for what follows).
    pub async fn run(self, mut tail: MembersTail, mut shutdown: watch::Receiver<bool>) {
        let mut first = true;
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let nodes = tail.refresh();
                (tail, nodes)
            })
            .await;
            let Ok((back, nodes)) = read else {
                tracing::error!("the members topic reader panicked: the assignment stops");
                return;
            };
            tail = back;
            match nodes {
                Ok(nodes) => {
                    if let Err(e) = self.look(&nodes).await {
                        tracing::warn!(error = %e, "partitions not moved; trying again");
                    }
                    if first {
                        self.node.assignment_known();
                        first = false;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the members topic not read"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.look_every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Hands over everything this node holds, at shutdown (after ingestion stopped): the
    /// other nodes take it over as soon as the tombstone that follows is read, not once this
    /// node is silent, and its last units are on the changelog topic before they restore.
    pub fn hand_over_all(consumer: &StreamConsumer<IngestContext>, node: &Node) {
        let mut held = node.owned();
        held.extend(node.restoring());
        if held.is_empty() {
            return;
        }
        if let Err(e) = IngestContext::stop_consuming(consumer, &held) {
            tracing::warn!(error = %e, "the consumer's assignment not cleared at shutdown");
        }
        node.release(&held);
    }

    async fn look(&self, nodes: &BTreeMap<String, Announcement>) -> anyhow::Result<()> {
        let mut held: BTreeSet<Partition> = self.node.owned().into_iter().collect();
        held.extend(self.node.restoring());
        let fenced = std::mem::take(&mut *self.node.engine.fenced.lock());
        let moves = decide(
            &self.node_id,
            self.partitions,
            nodes,
            (now_ms(), self.silent_after),
            &held,
            &fenced,
        );
        if !moves.release.is_empty() {
            tracing::info!(partitions = ?moves.release, "handing partitions over");
            IngestContext::stop_consuming(&self.consumer, &moves.release)?;
            let (node, release) = (self.node.clone(), moves.release.clone());
            tokio::task::spawn_blocking(move || node.release(&release)).await?;
            self.announce_now.notify_one();
        }
        self.node
            .placed_partitions_waiting(!moves.waiting.is_empty());
        if !moves.acquire.is_empty() {
            tracing::info!(partitions = ?moves.acquire, "taking partitions over: restoring them");
            let token = self.node.begin_restore(&moves.acquire);
            for &p in &moves.acquire {
                self.restore.spawn(self.node.clone(), p, token);
            }
            self.announce_now.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(node: &str, partitions: &[Partition], at_ms: i64) -> (String, Announcement) {
        let a = Announcement {
            node_id: node.into(),
            grpc: format!("{node}:50051"),
            partitions: partitions.to_vec(),
            restoring: vec![],
            next_offsets: BTreeMap::new(),
            catalog_applied_offset: 0,
            at_ms,
            standby: vec![],
        };
        (node.to_string(), a)
    }

    fn placed_on(node: &str, partitions: u32, live: &[&str]) -> BTreeSet<Partition> {
        let live: Vec<String> = live.iter().map(|s| s.to_string()).collect();
        place(partitions, &live)
            .into_iter()
            .enumerate()
            .filter(|(_, o)| o.as_deref() == Some(node))
            .map(|(p, _)| p as Partition)
            .collect()
    }

    const SILENT: Duration = Duration::from_millis(3_000);

    fn restoring_partitions(nodes: &BTreeMap<String, Announcement>) -> Vec<Partition> {
        nodes.values().flat_map(|a| a.restoring.clone()).collect()
    }

    #[test]
    fn a_node_alone_takes_every_partition() {
        let moves = decide(
            "a",
            4,
            &BTreeMap::new(),
            (10_000, SILENT),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(
            moves,
            Moves {
                release: vec![],
                acquire: vec![0, 1, 2, 3],
                waiting: vec![],
            }
        );
    }

    #[test]
    fn a_joining_node_waits_until_the_holder_hands_over() {
        let now = 10_000;
        let all: Vec<Partition> = (0..6).collect();
        let mine_with_b = placed_on("b", 6, &["a", "b"]);
        assert!(!mine_with_b.is_empty());
        // A still announces every partition: B takes nothing yet.
        let nodes = BTreeMap::from([announced("a", &all, now - 100)]);
        let moves = decide(
            "b",
            6,
            &nodes,
            (now, SILENT),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(
            moves,
            Moves {
                waiting: mine_with_b.iter().copied().collect(),
                ..Moves::default()
            },
            "placed on B, still A's: B is not ready yet"
        );
        // A sees B (live) and hands over what is placed on B, nothing else.
        let nodes = BTreeMap::from([
            announced("a", &all, now - 100),
            announced("b", &[], now - 50),
        ]);
        let held: BTreeSet<Partition> = all.iter().copied().collect();
        let moves = decide("a", 6, &nodes, (now, SILENT), &held, &BTreeSet::new());
        assert_eq!(
            moves.release,
            mine_with_b.iter().copied().collect::<Vec<_>>()
        );
        assert!(moves.acquire.is_empty());
        // A announced without them: B restores them.
        let kept: Vec<Partition> = all
            .iter()
            .copied()
            .filter(|p| !mine_with_b.contains(p))
            .collect();
        let nodes = BTreeMap::from([announced("a", &kept, now), announced("b", &[], now - 50)]);
        let moves = decide(
            "b",
            6,
            &nodes,
            (now, SILENT),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(
            moves.acquire,
            mine_with_b.iter().copied().collect::<Vec<_>>()
        );
        // A partition being restored elsewhere counts as held there.
        let (_, mut restoring) = announced("a", &kept, now);
        restoring.restoring = vec![*mine_with_b.iter().next().unwrap()];
        let nodes = BTreeMap::from([("a".to_string(), restoring)]);
        let moves = decide(
            "b",
            6,
            &nodes,
            (now, SILENT),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(moves.acquire.len(), mine_with_b.len() - 1);
        assert_eq!(moves.waiting, restoring_partitions(&nodes));
    }

    #[test]
    fn a_silent_nodes_partitions_are_taken_at_once() {
        let now = 100_000;
        let on_b = placed_on("b", 8, &["a", "b", "c"]);
        let on_a = placed_on("a", 8, &["a", "b", "c"]);
        let b_parts: Vec<Partition> = on_b.iter().copied().collect();
        let nodes = BTreeMap::from([
            announced("b", &b_parts, now - SILENT.as_millis() as i64 - 1),
            announced(
                "c",
                &placed_on("c", 8, &["a", "b", "c"])
                    .into_iter()
                    .collect::<Vec<_>>(),
                now,
            ),
        ]);
        let moves = decide("a", 8, &nodes, (now, SILENT), &on_a, &BTreeSet::new());
        let now_on_a = placed_on("a", 8, &["a", "c"]);
        let expected: Vec<Partition> = now_on_a
            .iter()
            .copied()
            .filter(|p| !on_a.contains(p) && on_b.contains(p))
            .collect();
        assert!(!expected.is_empty());
        // What came from silent B is taken; what C still holds waits for C's handover.
        assert!(
            expected.iter().all(|p| moves.acquire.contains(p)),
            "{moves:?}"
        );
        assert!(moves.acquire.iter().all(|p| on_b.contains(p)), "{moves:?}");
    }

    #[test]
    fn a_fenced_partition_is_released_to_be_restored_again() {
        let held: BTreeSet<Partition> = [0, 1].into();
        let moves = decide("a", 2, &BTreeMap::new(), (0, SILENT), &held, &[1].into());
        assert_eq!(
            moves,
            Moves {
                release: vec![1],
                acquire: vec![],
                waiting: vec![],
            }
        );
        // Next look: nobody else holds it, so it is restored again.
        let moves = decide(
            "a",
            2,
            &BTreeMap::new(),
            (0, SILENT),
            &[0].into(),
            &BTreeSet::new(),
        );
        assert_eq!(
            moves,
            Moves {
                release: vec![],
                acquire: vec![1],
                waiting: vec![],
            }
        );
    }

    #[test]
    fn a_node_back_from_a_pause_lets_go_of_what_another_took_over() {
        // A was paused; B took its partitions over. A is heard again and still holds them.
        let now = 50_000;
        let on_a = placed_on("a", 4, &["a", "b"]);
        let nodes = BTreeMap::from([announced("b", &[0, 1, 2, 3], now - 100)]);
        let moves = decide("a", 4, &nodes, (now, SILENT), &on_a, &BTreeSet::new());
        assert_eq!(moves.release, on_a.iter().copied().collect::<Vec<_>>());
        assert!(moves.acquire.is_empty());
        // Let go: they wait for B to hand them over, then come back through a restore.
        let moves = decide(
            "a",
            4,
            &nodes,
            (now, SILENT),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(moves.waiting, on_a.iter().copied().collect::<Vec<_>>());
        assert!(moves.release.is_empty() && moves.acquire.is_empty());
    }
}
