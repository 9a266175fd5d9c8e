//! The engine assigns partitions itself (`cluster.assignment = "engine"`, cluster step 3): three
//! nodes place six partitions alike from the members topic; a node killed with SIGKILL has its
//! partitions taken over by their warm standbys once it is silent, while the partitions of the
//! nodes that stay are never stopped (a cooperative rebalance); when it comes back, only the
//! partitions placed on it move back.

use audience_actors::assignment::place;
use audience_e2e::*;
use audience_proto::v1 as pb;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 6;
const ROUNDS: i64 = 20;
const USERS_PER_ROUND: i64 = 12;

/// The partitions the node behind `ch` owns.
async fn owned(ch: &Channel) -> Result<Vec<u32>> {
    Ok(status(ch)
        .await?
        .partitions
        .iter()
        .map(|p| p.partition)
        .collect())
}

/// Each partition's owner as the nodes behind `nodes` (id, channel) report it, once every
/// partition has exactly one.
async fn wait_placement(nodes: &[(&str, &Channel)]) -> Result<BTreeMap<u32, String>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut owners = BTreeMap::new();
        let mut twice = false;
        for (id, ch) in nodes {
            for p in owned(ch).await? {
                twice |= owners.insert(p, id.to_string()).is_some();
            }
        }
        if !twice && owners.len() == PARTITIONS as usize {
            return Ok(owners);
        }
        anyhow::ensure!(Instant::now() < deadline, "owners {owners:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The placement every node computes for the live `nodes`.
fn placed(nodes: &[&str]) -> BTreeMap<u32, String> {
    let live: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    place(PARTITIONS, &live)
        .into_iter()
        .enumerate()
        .map(|(p, owner)| (p as u32, owner.expect("a live node")))
        .collect()
}

/// The units the last restore of `partition` applied, from the node's log.
fn units_applied(log: &str, partition: u32) -> Option<u64> {
    without_colours(log)
        .lines()
        .rev()
        .filter(|l| l.contains("partition restored from the changelog"))
        .filter(|l| l.contains(&format!("partition={partition} ")))
        .find_map(|l| {
            let at = l.find("applied: ")? + "applied: ".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// The log's errors.
fn errors(log: &str) -> Vec<String> {
    without_colours(log)
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

/// How many times the node's log says it released `partition` or began to restore it.
fn moves_of(log: &str, partition: u32) -> usize {
    let tag = format!("partition={partition} ");
    without_colours(log)
        .lines()
        .filter(|l| l.contains(&tag))
        .filter(|l| l.contains("partition released") || l.contains("partition restored"))
        .count()
}

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
        .and_then(|a| a.stats.as_ref())
        .map(|s| s.size))
}

/// Waits until the audience's size is `size`, for the whole cluster. Right after a node died,
/// a read may fail (UNAVAILABLE, naming the node that did not answer) until the members topic
/// shows it silent: such reads are tried again.
async fn wait_size(ch: &Channel, audience: u64, size: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = audience_size(ch, audience).await;
        if matches!(now, Ok(Some(n)) if n == size) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "size {now:?}, not {size}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_partitions_go_to_their_standbys_and_the_others_never_stop() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("selfassign");
    broker
        .create_deployment_topics(&topics, PARTITIONS as i32)
        .await?;
    let dir = tempfile::tempdir()?;
    let partitions = PARTITIONS.to_string();
    let env = [
        ("AUDIENCE_PARTITIONS", partitions.as_str()),
        ("AUDIENCE_STANDBY_REPLICAS", "1"),
        ("AUDIENCE_ASSIGNMENT", "engine"),
        ("AUDIENCE_HEARTBEAT_MS", "300"),
        ("AUDIENCE_SILENT_AFTER_MS", "2000"),
    ];
    let start = |id| Engine::start_node_with(&broker, &topics, dir.path(), "selfassign", id, &env);
    let mut a = start("node-a")?;
    let ch_a = a.ready().await?;
    let mut b = start("node-b")?;
    let ch_b = b.ready().await?;
    let mut c = start("node-c")?;
    let ch_c = c.ready().await?;
    let three = [("node-a", &ch_a), ("node-b", &ch_b), ("node-c", &ch_c)];
    // Every node placed the partitions alike: two each, where `place` puts them.
    let before = wait_placement(&three).await?;
    assert_eq!(before, placed(&["node-a", "node-b", "node-c"]));

    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch_a).await?;
    for round in 0..ROUNDS {
        let users = round * USERS_PER_ROUND + 1..=(round + 1) * USERS_PER_ROUND;
        produce_tier(&producer, &topics.events, now, users, "gold").await?;
    }
    wait_size(&ch_a, gold.id, (ROUNDS * USERS_PER_ROUND) as u64).await?;
    // Each partition has one standby, never its owner: where it goes if its owner is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let standbys: BTreeMap<u32, String> = loop {
        let cluster = pb::admin_service_client::AdminServiceClient::new(ch_c.clone())
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await?
            .into_inner();
        let settled = cluster.partitions.len() == PARTITIONS as usize
            && cluster
                .partitions
                .iter()
                .all(|p| p.standbys.len() == 1 && p.standbys[0] != p.owner);
        if settled {
            break cluster
                .partitions
                .iter()
                .map(|p| (p.partition, p.standbys[0].clone()))
                .collect();
        }
        anyhow::ensure!(Instant::now() < deadline, "{cluster:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after_b = placed(&["node-a", "node-c"]);
    for (p, owner) in &before {
        if owner == "node-b" {
            assert_eq!(
                &standbys[p], &after_b[p],
                "partition {p}'s standby is where it goes"
            );
        }
    }
    // The standbys read B's last units; then B is killed, and stays silent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (log_a, log_c) = (a.log_text(), c.log_text());
    b.kill9();
    let killed = Instant::now();
    let two = [("node-a", &ch_a), ("node-c", &ch_c)];
    let after = wait_placement(&two).await?;
    eprintln!(
        "every partition owned again {} ms after the kill (silent after 2,000 ms)",
        killed.elapsed().as_millis()
    );
    assert_eq!(after, after_b, "A and C placed B's partitions alike");
    for (p, owner) in &before {
        let (log_now, log_then) = if after[p] == "node-a" {
            (a.log_text(), &log_a)
        } else {
            (c.log_text(), &log_c)
        };
        if owner == "node-b" {
            assert_eq!(after[p], standbys[p], "partition {p} went to its standby");
            let applied = units_applied(&log_now, *p).expect("a restore");
            assert!(
                applied <= 5,
                "partition {p} restored warm: {applied} units applied"
            );
        } else if after[p] == *owner {
            // Never stopped: no release, no restore since the kill.
            assert_eq!(
                moves_of(&log_now, *p),
                moves_of(log_then, *p),
                "partition {p} stayed on {owner} and was moved:\n{log_now}"
            );
        }
    }
    // Nothing was lost, and the stream goes on.
    wait_size(&ch_a, gold.id, (ROUNDS * USERS_PER_ROUND) as u64).await?;
    let more = ROUNDS * USERS_PER_ROUND + 1..=(ROUNDS + 2) * USERS_PER_ROUND;
    produce_tier(&producer, &topics.events, now, more, "gold").await?;
    wait_size(&ch_c, gold.id, ((ROUNDS + 2) * USERS_PER_ROUND) as u64).await?;

    // B comes back: only what `place` puts on it moves back.
    let (log_a, log_c) = (a.log_text(), c.log_text());
    let mut b = start("node-b")?;
    let ch_b = b.ready().await?;
    let back = wait_placement(&[("node-a", &ch_a), ("node-b", &ch_b), ("node-c", &ch_c)]).await?;
    assert_eq!(back, before);
    for (p, owner) in &after {
        if back[p] == *owner {
            let (log_now, log_then) = if owner == "node-a" {
                (a.log_text(), &log_a)
            } else {
                (c.log_text(), &log_c)
            };
            assert_eq!(
                moves_of(&log_now, *p),
                moves_of(log_then, *p),
                "partition {p} moved"
            );
        }
    }
    wait_size(&ch_b, gold.id, ((ROUNDS + 2) * USERS_PER_ROUND) as u64).await?;
    b.terminate()?;
    // No node was fenced (two owners of a partition) and no assignment change failed.
    for (id, log) in [("A", a.log_text()), ("C", c.log_text())] {
        assert_eq!(errors(&log), Vec::<String>::new(), "node {id}");
    }
    Ok(())
}

/// A node paused (SIGSTOP) longer than `silent_after` is taken for gone: the other node takes
/// its partitions over and applies what comes meanwhile. When it resumes it still holds them in
/// its own eyes: it lets go of what it sees the other hold (what it wrote meanwhile is refused
/// by the log and never leaves), and gets back what is placed on it through a restore, which
/// reads what the other wrote. Every user ends in the audience once, at version 1, on both
/// nodes, and the deltas topic holds each add once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_gets_its_partitions_back_only_through_a_restore() -> Result<()> {
    const PAUSE_PARTITIONS: u32 = 4;
    let broker = Broker::start()?;
    let topics = Topics::unique("pause");
    broker
        .create_deployment_topics(&topics, PAUSE_PARTITIONS as i32)
        .await?;
    let dir = tempfile::tempdir()?;
    let partitions = PAUSE_PARTITIONS.to_string();
    let env = [
        ("AUDIENCE_PARTITIONS", partitions.as_str()),
        ("AUDIENCE_ASSIGNMENT", "engine"),
        ("AUDIENCE_HEARTBEAT_MS", "300"),
        ("AUDIENCE_SILENT_AFTER_MS", "1500"),
    ];
    let start = |id| Engine::start_node_with(&broker, &topics, dir.path(), "pause", id, &env);
    let mut a = start("node-a")?;
    let ch_a = a.ready().await?;
    let mut b = start("node-b")?;
    let ch_b = b.ready().await?;
    let live: Vec<String> = vec!["node-a".into(), "node-b".into()];
    let on_a: Vec<u32> = place(PAUSE_PARTITIONS, &live)
        .iter()
        .enumerate()
        .filter(|(_, o)| o.as_deref() == Some("node-a"))
        .map(|(p, _)| p as u32)
        .collect();
    wait_owning(&ch_a, on_a.len()).await?;
    wait_owning(&ch_b, PAUSE_PARTITIONS as usize - on_a.len()).await?;

    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch_a).await?;
    produce_tier(&producer, &topics.events, now, 1..=20, "gold").await?;
    wait_size(&ch_a, gold.id, 20).await?;

    // A pauses; B takes everything over and applies the next users alone.
    a.signal("-STOP")?;
    wait_owning(&ch_b, PAUSE_PARTITIONS as usize).await?;
    produce_tier(&producer, &topics.events, now, 21..=40, "gold").await?;
    wait_size(&ch_b, gold.id, 40).await?;

    // A resumes: its partitions come back to it, restored.
    let log_before = a.log_text();
    a.signal("-CONT")?;
    wait_owning(&ch_a, on_a.len()).await?;
    wait_owning(&ch_b, PAUSE_PARTITIONS as usize - on_a.len()).await?;
    let restores = |log: &str| {
        without_colours(log)
            .lines()
            .filter(|l| l.contains("partition restored from the changelog"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while restores(&a.log_text()) < restores(&log_before) + on_a.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "A did not restore its partitions after the pause"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce_tier(&producer, &topics.events, now, 41..=44, "gold").await?;
    wait_size(&ch_a, gold.id, 44).await?;
    wait_size(&ch_b, gold.id, 44).await?;
    for mpid in 1..=44 {
        assert_eq!(
            memberships(&ch_a, mpid).await?,
            vec![(gold.id, 1)],
            "user {mpid}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = distinct_delta_ids(&broker.bootstrap, &topics.deltas, PAUSE_PARTITIONS as i32)?;
    let mut expected: Vec<String> = (1..=44)
        .map(|mpid| format!("{}:{mpid}:1", gold.id))
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "each add once, nothing else");
    // What A wrote between its resume and letting go was refused (fenced), and so was what B
    // wrote to a partition between A's claim on its return and B letting it go: a race of
    // every hand-over, whose units no reader applies (the deltas above are each once).
    // Nothing else failed.
    for (node, log) in [("node A", a.log_text()), ("node B", b.log_text())] {
        let unexpected: Vec<String> = errors(&log)
            .into_iter()
            .filter(|l| !l.contains("changelog units refused: another node claimed the partition"))
            .collect();
        assert_eq!(unexpected, Vec::<String>::new(), "{node}");
    }
    Ok(())
}
