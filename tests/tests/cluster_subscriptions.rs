//! Subscriptions across nodes (cluster step 3, item 2): a gRPC subscriber connected to any
//! node of a cluster gets every partition's deltas, in order per partition, and resumes from
//! its cursor on another node, also after the node it was on died: no gap, and after dedupe
//! no duplicate. Partition p's deltas are on the deltas topic's partition p.

use audience_e2e::*;
use audience_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const USERS: i64 = 24;
const PARTITIONS: i32 = 2;

/// Per partition, the sequences seen, each once and consecutive from the first.
fn assert_in_order_without_gaps(deltas: &[pb::MembershipDelta]) {
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for d in deltas {
        by_partition
            .entry(d.partition)
            .or_default()
            .push(d.sequence);
    }
    for (p, seqs) in by_partition {
        for pair in seqs.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "partition {p}: {seqs:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_any_node_gets_every_partition_and_resumes_on_another() -> Result<()> {
    let mut two = TwoNodes::start("subs").await?;
    let (ch_a, ch_b, topics) = (two.ch_a.clone(), two.ch_b.clone(), two.topics.clone());
    // The cluster as either node sees it: both nodes, a partition each, nothing restoring.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cluster = loop {
        let cluster = pb::admin_service_client::AdminServiceClient::new(ch_b.clone())
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await?
            .into_inner();
        let settled = cluster.nodes.len() == 2
            && cluster.nodes.iter().all(|n| n.partitions.len() == 1)
            && cluster.partitions.iter().all(|p| !p.owner.is_empty());
        if settled {
            break cluster;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "{cluster:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b"]);
    assert_eq!(
        cluster.nodes[0].grpc,
        two.a.grpc.trim_start_matches("http://")
    );
    assert_eq!(cluster.partitions.len(), PARTITIONS as usize);
    let owners: BTreeSet<&str> = cluster
        .partitions
        .iter()
        .map(|p| p.owner.as_str())
        .collect();
    assert_eq!(owners, BTreeSet::from(["node-a", "node-b"]), "{cluster:?}");
    assert!(cluster
        .partitions
        .iter()
        .all(|p| p.lag == 0 && p.restoring_on.is_empty()));
    assert_eq!(cluster.answered_by, "node-b");
    let shown = two.a.ctl().arg("cluster").output()?;
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("2 nodes") && text.contains("node-a"),
        "{text}"
    );
    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = two.broker.producer()?;
    let now = engine_now(&ch_a).await?;

    // Every user enters: a subscriber on A sees both partitions' adds, A's and B's.
    produce_tier(&producer, &topics.events, now, 1..=USERS, "gold").await?;
    let everyone: BTreeSet<i64> = (1..=USERS).collect();
    let first = collect_deltas(&ch_a, vec![gold.id], "", Duration::from_secs(60), |d| {
        d.iter().map(|d| d.mpid).collect::<BTreeSet<_>>() == everyone
    })
    .await?;
    let partitions: BTreeSet<u32> = first.iter().map(|d| d.partition).collect();
    assert_eq!(partitions.len(), 2, "deltas of both partitions on node A");
    assert_eq!(first.len(), USERS as usize, "one add each, no repeat");
    assert_in_order_without_gaps(&first);

    // Half way, the subscriber moves to B with its cursor: B gives exactly the rest.
    let middle = &first[USERS as usize / 2 - 1];
    let rest = collect_deltas(
        &ch_b,
        vec![gold.id],
        &middle.cursor,
        Duration::from_secs(30),
        |d| d.len() >= USERS as usize / 2,
    )
    .await?;
    let seen_before: BTreeSet<String> = first[..USERS as usize / 2]
        .iter()
        .map(|d| d.delta_id.clone())
        .collect();
    let seen_after: BTreeSet<String> = rest.iter().map(|d| d.delta_id.clone()).collect();
    assert!(seen_before.is_disjoint(&seen_after), "no duplicate");
    let union: BTreeSet<String> = seen_before.union(&seen_after).cloned().collect();
    let all: BTreeSet<String> = first.iter().map(|d| d.delta_id.clone()).collect();
    let shown = |deltas: &[pb::MembershipDelta]| -> Vec<(u32, u64, String)> {
        deltas
            .iter()
            .map(|d| (d.partition, d.sequence, d.delta_id.clone()))
            .collect()
    };
    assert_eq!(
        union,
        all,
        "no gap: from {}, B gave {:?} after A gave {:?}",
        middle.cursor,
        shown(&rest),
        shown(&first)
    );

    // A dies, C joins: B and C take its partition. A subscriber resuming on B from the last
    // cursor it got on A sees the drops of every user, each once. (C joins because, seen
    // while writing this test, tansu 0.6 gave A's partition back to the killed A in the
    // rebalance its death caused, and did not rebalance again for 80 s.)
    let last_cursor = first.last().unwrap().cursor.clone();
    two.a.kill9();
    let mut c = two.start_node("node-c")?;
    let ch_c = c.ready().await?;
    wait_owned_between(&[&ch_b, &ch_c], PARTITIONS as usize).await?;
    produce_tier(&producer, &topics.events, now + 1, 1..=USERS, "silver").await?;
    let drops = collect_deltas(
        &ch_b,
        vec![gold.id],
        &last_cursor,
        Duration::from_secs(60),
        |d| d.len() >= USERS as usize,
    )
    .await?;
    let dropped: BTreeSet<i64> = drops.iter().map(|d| d.mpid).collect();
    assert_eq!(dropped, everyone);
    assert!(drops
        .iter()
        .all(|d| d.kind == pb::DeltaKind::Dropped as i32));
    let ids: BTreeSet<&str> = drops.iter().map(|d| d.delta_id.as_str()).collect();
    assert_eq!(ids.len(), drops.len(), "no duplicate after the failover");
    assert_in_order_without_gaps(&[first.clone(), drops.clone()].concat());

    // The killed node is silent once its announcements stop, and its partition is B's or C's.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cluster = pb::admin_service_client::AdminServiceClient::new(ch_c.clone())
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await?
            .into_inner();
        let a_silent = cluster
            .nodes
            .iter()
            .any(|n| n.node_id == "node-a" && n.silent);
        let owned_live = cluster
            .partitions
            .iter()
            .all(|p| p.owner == "node-b" || p.owner == "node-c");
        if a_silent && owned_live {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "{cluster:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Cursors carry the cluster; another deployment's cursor is refused, not reinterpreted.
    assert!(last_cursor.starts_with("c="), "{last_cursor}");
    let foreign = pb::membership_service_client::MembershipServiceClient::new(ch_b.clone())
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![gold.id],
            cursor: "c=0123456789abcdef,p0=1,p1=1".into(),
            subscriber_name: "foreign".into(),
        })
        .await
        .expect_err("a foreign cursor");
    assert_eq!(foreign.code(), tonic::Code::OutOfRange);
    assert!(
        foreign.message().contains("0123456789abcdef"),
        "{}",
        foreign.message()
    );

    // "now" starts at the topic's ends: nothing old comes.
    let quiet = collect_deltas(&ch_b, vec![gold.id], "now", Duration::from_secs(2), |d| {
        !d.is_empty()
    })
    .await?;
    assert!(quiet.is_empty(), "{quiet:?}");

    // Partition p's deltas are on the topic's partition p.
    let records = read_topic_partitions(&two.broker.bootstrap, &topics.deltas, PARTITIONS)?;
    assert!(records.len() >= 2 * USERS as usize);
    for (on, record) in records {
        assert_eq!(record["partition"].as_i64(), Some(on as i64), "{record}");
    }
    Ok(())
}
