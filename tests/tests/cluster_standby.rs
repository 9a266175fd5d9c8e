//! Standby replicas (cluster step 3, item 1): with `cluster.standby_replicas = 1` each node of
//! two keeps a warm copy of the other's partition by following its changelog, `audiencectl
//! cluster` shows who stands by, and when the owner leaves, the standby's restore applies only
//! the few units written since it last followed, not the partition's whole log.
//!
//! With three nodes in a consumer group (`cluster.assignment = "group"`), the standby of each
//! partition is the node the group gives it when its owner leaves: every partition of a node
//! that stops lands on a warm node.

use audience_e2e::*;
use audience_proto::v1 as pb;
use std::time::{Duration, Instant};

const ROUNDS: i64 = 30;

/// The units a restore applied, from the node's log line of the restore of `partition`.
fn units_applied(log: &str, partition: u32) -> Option<u64> {
    without_colours(log)
        .lines()
        .rev()
        .filter(|l| l.contains("partition restored from the changelog"))
        .filter(|l| l.contains(&format!("partition={partition} ")))
        .filter_map(|l| {
            let at = l.find("applied: ")? + "applied: ".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_follows_the_changelog_and_takes_over_warm() -> Result<()> {
    let mut two = TwoNodes::start_with("standby", &[("AUDIENCE_STANDBY_REPLICAS", "1")]).await?;
    let (ch_a, ch_b) = (two.ch_a.clone(), two.ch_b.clone());
    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = two.broker.producer()?;
    let now = engine_now(&ch_a).await?;
    // Many rounds, each its own units of work on both partitions.
    for round in 0..ROUNDS {
        let users = round * 4 + 1..=round * 4 + 4;
        produce_tier(&producer, &two.topics.events, now, users, "gold").await?;
        let total = (round as u64 + 1) * 4;
        wait_processed_between(&[&ch_a, &ch_b], total, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
    }
    // Each node stands by for the other's partition, as either node shows it.
    let a_owns = wait_owning(&ch_a, 1).await?[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cluster = pb::admin_service_client::AdminServiceClient::new(ch_b.clone())
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await?
            .into_inner();
        let warm = cluster.partitions.iter().all(|p| {
            let other = if p.owner == "node-a" {
                "node-b"
            } else {
                "node-a"
            };
            p.standbys == [other]
        });
        if warm && cluster.partitions.len() == 2 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{cluster:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = two.b.ctl().arg("cluster").output()?;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("STANDBYS") && text.contains("node-b"),
        "{text}"
    );
    // The standby reads the owner's last units, then the owner leaves (SIGTERM: it leaves the
    // group at once) and its partition comes to the standby.
    tokio::time::sleep(Duration::from_secs(2)).await;
    two.a.terminate()?;
    wait_owning(&ch_b, 2).await?;
    let log = two.b.log_text();
    let applied = units_applied(&log, a_owns)
        .unwrap_or_else(|| panic!("no restore of partition {a_owns} in B's log:\n{log}"));
    eprintln!("the standby applied {applied} units at the restore");
    assert!(
        applied <= 5,
        "the warm standby applied {applied} units at the restore; the partition's log has more \
         than {ROUNDS}"
    );
    // Every member is still there, from the partition restored warm.
    assert_eq!(
        audience_size(&ch_b, gold.id).await?,
        Some(ROUNDS as u64 * 4)
    );
    Ok(())
}

/// The audience's size as the node behind `ch` answers it (for the whole cluster).
async fn audience_size(ch: &Channel, audience: u64) -> Result<Option<u64>> {
    let stats = pb::membership_service_client::MembershipServiceClient::new(ch.clone())
        .get_audience_stats(pb::GetAudienceStatsRequest {
            audience_ids: vec![audience],
        })
        .await?
        .into_inner();
    Ok(stats
        .audiences
        .first()
        .and_then(|a| a.stats.clone())
        .map(|s| s.size))
}

/// The cluster as `ch`'s node shows it.
async fn cluster_status(ch: &Channel) -> Result<pb::ClusterStatus> {
    Ok(
        pb::admin_service_client::AdminServiceClient::new(ch.clone())
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await?
            .into_inner(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_gives_a_leaving_nodes_partitions_to_their_warm_standbys() -> Result<()> {
    const PARTITIONS: usize = 6;
    let broker = Broker::start()?;
    let topics = Topics::unique("standby3");
    broker
        .create_deployment_topics(&topics, PARTITIONS as i32)
        .await?;
    let dir = tempfile::tempdir()?;
    let partitions = PARTITIONS.to_string();
    let env = [
        ("AUDIENCE_PARTITIONS", partitions.as_str()),
        ("AUDIENCE_STANDBY_REPLICAS", "1"),
        // The consumer group's `range` placement (the engine's own has its test in
        // `cluster_assignment.rs`).
        ("AUDIENCE_ASSIGNMENT", "group"),
    ];
    let start = |id| Engine::start_node_with(&broker, &topics, dir.path(), "standby3", id, &env);
    let mut a = start("node-a")?;
    let ch_a = a.ready().await?;
    let mut b = start("node-b")?;
    let ch_b = b.ready().await?;
    let mut c = start("node-c")?;
    let ch_c = c.ready().await?;
    wait_owned_between(&[&ch_a, &ch_b, &ch_c], PARTITIONS).await?;
    for ch in [&ch_a, &ch_b, &ch_c] {
        wait_owning(ch, PARTITIONS / 3).await?;
    }
    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch_a).await?;
    let users_per_round = 12;
    for round in 0..ROUNDS {
        let users = round * users_per_round + 1..=(round + 1) * users_per_round;
        produce_tier(&producer, &topics.events, now, users, "gold").await?;
        let total = (round + 1) as u64 * users_per_round as u64;
        wait_processed_between(&[&ch_a, &ch_b, &ch_c], total, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
    }
    // Each partition has one standby, never its owner.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let cluster = cluster_status(&ch_a).await?;
        let settled = cluster.partitions.len() == PARTITIONS
            && cluster
                .partitions
                .iter()
                .all(|p| p.standbys.len() == 1 && p.standbys[0] != p.owner && !p.owner.is_empty());
        if settled {
            break cluster;
        }
        anyhow::ensure!(Instant::now() < deadline, "{cluster:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The standbys read the owners' last units; then B leaves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.terminate()?;
    wait_owned_between(&[&ch_a, &ch_c], PARTITIONS).await?;
    let on_a: Vec<u32> = status(&ch_a)
        .await?
        .partitions
        .iter()
        .map(|p| p.partition)
        .collect();
    for moved in before.partitions.iter().filter(|p| p.owner == "node-b") {
        let standby = &moved.standbys[0];
        let owner = if on_a.contains(&moved.partition) {
            "node-a"
        } else {
            "node-c"
        }
        .to_string();
        assert_eq!(
            &owner, standby,
            "partition {} went to its standby: before {before:?}, A owns {on_a:?}",
            moved.partition
        );
        let log = if owner == "node-a" {
            a.log_text()
        } else {
            c.log_text()
        };
        let applied = units_applied(&log, moved.partition).unwrap_or_else(|| {
            panic!(
                "no restore of partition {} on {owner}:\n{log}",
                moved.partition
            )
        });
        assert!(
            applied <= 5,
            "partition {} restored warm on {owner}: {applied} units applied",
            moved.partition
        );
    }
    // Every member is still counted, across the two nodes left.
    assert_eq!(
        audience_size(&ch_c, gold.id).await?,
        Some((ROUNDS * users_per_round) as u64)
    );
    Ok(())
}
