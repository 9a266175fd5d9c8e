//! Cluster step 2 under faults: three nodes in one consumer group, the changelog and snapshots
//! on, a steady stream of events; one node is killed with SIGKILL, a fourth joins, another
//! stops with SIGTERM. The cluster's final memberships and its deduplicated delta stream must
//! equal those of one node reading the same input alone, and every partition's outbox
//! sequences must run without a gap.
//!
//! Each node stands by for another's partitions (`standby_replicas = 1`), and two gRPC
//! subscribers watch throughout: one on the node that stays, one on a node that stops, which
//! then resumes with its last cursor on the node that stays. Each sees every delta, in order
//! per partition and without a gap (a repeat after a failover is dropped by its id).
//!
//! The audiences count plays (at least 2, 4, ROUNDS and ROUNDS + 1 times): a message applied
//! twice puts a user in the last one, a message lost keeps one out of the third, and each
//! user's changes are the same whatever the batch boundaries, so two runs can be compared id
//! for id.

use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
const USERS: i64 = 60;
const ROUNDS: i64 = 6;

/// Every user plays once per round; a round every `pause`. Returns when all are produced.
async fn play_rounds(
    bootstrap_producer: rdkafka::producer::FutureProducer,
    topic: String,
    now: i64,
    pause: Duration,
) -> Result<()> {
    for round in 1..=ROUNDS {
        for mpid in 1..=USERS {
            let batch = sdk_batch(
                mpid,
                now + round,
                vec![custom_event("Play", "navigation", now + round, json!({}))],
            );
            produce_json(&bootstrap_producer, &topic, &batch).await?;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

type Received = Arc<Mutex<Vec<pb::MembershipDelta>>>;

/// A subscriber to every audience from `cursor`, keeping what it receives in `into`: it returns
/// once `into` holds `want` distinct deltas, or when the stream ends (its node stopped).
async fn subscribe_into(ch: Channel, cursor: String, into: Received, want: usize) -> Result<()> {
    let mut stream = pb::membership_service_client::MembershipServiceClient::new(ch)
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![],
            cursor,
            subscriber_name: "failover".into(),
        })
        .await?
        .into_inner();
    loop {
        let distinct = {
            let received = into.lock().unwrap();
            received
                .iter()
                .map(|d| &d.delta_id)
                .collect::<BTreeSet<_>>()
                .len()
        };
        if distinct >= want {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(120), stream.message()).await {
            Ok(Ok(Some(d))) => into.lock().unwrap().push(d),
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(()),
            Err(_) => anyhow::bail!("no delta for 120 s, {distinct} of {want} received"),
        }
    }
}

/// A subscriber's deltas are every expected one, and per partition in order without a gap:
/// each is the next sequence or a repeat (same id) of one received before.
fn assert_whole(name: &str, deltas: &[pb::MembershipDelta], expected: &BTreeSet<String>) {
    let ids: BTreeSet<String> = deltas.iter().map(|d| d.delta_id.clone()).collect();
    assert_eq!(&ids, expected, "{name}: every delta, after dedupe");
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut at: BTreeMap<(u32, u64), &str> = BTreeMap::new();
    for d in deltas {
        let seen = at.entry((d.partition, d.sequence)).or_insert(&d.delta_id);
        assert_eq!(
            *seen, d.delta_id,
            "{name}: one delta per partition sequence"
        );
        let last = last.entry(d.partition).or_insert(0);
        if d.sequence > *last {
            assert_eq!(
                d.sequence,
                *last + 1,
                "{name}: partition {}: a gap after sequence {last}",
                d.partition
            );
            *last = d.sequence;
        }
    }
}

/// The memberships (audience ids) of every user, read from a node that owns every partition.
async fn memberships(ch: &Channel) -> Result<BTreeMap<i64, BTreeSet<u64>>> {
    let mut out = BTreeMap::new();
    for mpid in 1..=USERS {
        let p = profile(ch, mpid).await?;
        out.insert(mpid, p.audiences.iter().map(|m| m.audience_id).collect());
    }
    Ok(out)
}

/// Waits until the node's memberships are `expected`; returns what it has at the deadline.
async fn settle(
    ch: &Channel,
    expected: &BTreeMap<i64, BTreeSet<u64>>,
) -> Result<BTreeMap<i64, BTreeSet<u64>>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = memberships(ch).await?;
        if &now == expected || Instant::now() > deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The deltas of a topic, deduplicated by id (each id must keep one meaning), and each
/// partition's outbox sequences.
fn deduplicated(deltas: &[Value]) -> (BTreeMap<String, Value>, BTreeMap<u64, Vec<u64>>) {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for d in deltas {
        let id = d["delta_id"].as_str().unwrap_or_default().to_string();
        if let Some(before) = by_id.get(&id) {
            assert_eq!(before, d, "delta id {id} sent with two meanings");
        }
        by_id.insert(id, d.clone());
    }
    let mut sequences: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for d in by_id.values() {
        sequences
            .entry(d["partition"].as_u64().unwrap())
            .or_default()
            .push(d["sequence"].as_u64().unwrap());
    }
    for seqs in sequences.values_mut() {
        seqs.sort();
    }
    (by_id, sequences)
}

/// What a delta says, without where it was sent from (partition and sequence differ between
/// the cluster and the lone node only in their numbering by unit; times differ by clock).
fn meaning(d: &Value) -> (String, String, u64) {
    (
        d["delta_id"].as_str().unwrap_or_default().to_string(),
        d["kind"].as_str().unwrap_or_default().to_string(),
        d["version"].as_u64().unwrap_or_default(),
    )
}

/// Reads the topic until every expected id is there (or 30 s passed).
async fn read_deltas(
    bootstrap: &str,
    topic: &str,
    expected: &BTreeSet<String>,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let deltas = read_topic(bootstrap, topic, PARTITIONS)?;
        let ids: BTreeSet<String> = deltas
            .iter()
            .map(|d| d["delta_id"].as_str().unwrap_or_default().to_string())
            .collect();
        if ids.is_superset(expected) || Instant::now() > deadline {
            return Ok(deltas);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_kill_a_new_node_and_a_stop_with_the_lone_nodes_result() -> Result<()>
{
    let broker = Broker::start()?;
    let topics = Topics::unique("failover");
    broker.create_deployment_topics(&topics, PARTITIONS).await?;
    let lone_deltas = format!("{}-lone", topics.deltas);
    broker.create_topics(&[&lone_deltas], PARTITIONS).await?;
    let changelog_topic = format!("{}-changelog", topics.events);
    let dir = tempfile::tempdir()?;
    let snapshots = dir.path().join("snapshots").display().to_string();
    let partitions = PARTITIONS.to_string();
    let start = |id: &str| {
        Engine::start_with(
            &broker,
            &topics,
            &dir.path().join(id),
            "failover",
            &[
                ("AUDIENCE_PARTITIONS", partitions.as_str()),
                ("AUDIENCE_CHANGELOG", "true"),
                ("AUDIENCE_CHANGELOG_TOPIC", changelog_topic.as_str()),
                ("AUDIENCE_NODE_ID", id),
                ("AUDIENCE_SNAPSHOT_DIR", snapshots.as_str()),
                ("AUDIENCE_SNAPSHOT_EVERY_UNITS", "5"),
                ("AUDIENCE_SNAPSHOT_INTERVAL_MS", "300"),
                ("AUDIENCE_STANDBY_REPLICAS", "1"),
            ],
        )
    };
    let mut a = start("node-a")?;
    let ch_a = a.ready().await?;
    let mut audiences = Vec::new();
    for times in [2, 4, ROUNDS, ROUNDS + 1] {
        let audience = create_audience(
            &ch_a,
            &format!("played {times} times"),
            json!({"event": {"type": "custom_event", "name": "Play", "count": {"at_least": times}}}),
        )
        .await?;
        audiences.push((times, audience.id));
    }
    let mut b = start("node-b")?;
    let mut c = start("node-c")?;
    let (ch_b, ch_c) = (b.ready().await?, c.ready().await?);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut owned = 0;
        for ch in [&ch_a, &ch_b, &ch_c] {
            owned += status(ch).await?.partitions.len();
        }
        if owned == PARTITIONS as usize {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "three nodes own {owned} partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every user ends in the audiences of at most ROUNDS plays: one add each.
    let want = USERS as usize * audiences.iter().filter(|(t, _)| *t <= ROUNDS).count();
    let (on_a, on_c): (Received, Received) = Default::default();
    let watch_a = tokio::spawn(subscribe_into(
        ch_a.clone(),
        String::new(),
        on_a.clone(),
        want,
    ));
    let watch_c = tokio::spawn(subscribe_into(
        ch_c.clone(),
        String::new(),
        on_c.clone(),
        want,
    ));

    // The steady stream, while the cluster changes under it.
    let now = engine_now(&ch_a).await?;
    let stream = tokio::spawn(play_rounds(
        broker.producer()?,
        topics.events.clone(),
        now,
        Duration::from_millis(1500),
    ));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    b.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut d = start("node-d")?;
    d.ready().await?;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(c.terminate()?, Some(0), "C stops cleanly");
    // C's subscriber goes on on A from the last cursor C gave it.
    tokio::time::timeout(Duration::from_secs(10), watch_c).await???;
    let cursor = on_c.lock().unwrap().last().map(|d| d.cursor.clone());
    let watch_c = tokio::spawn(subscribe_into(
        ch_a.clone(),
        cursor.unwrap_or_default(),
        on_c.clone(),
        want,
    ));
    stream.await??;
    // D stops too: A takes every partition, and its answers are the cluster's.
    assert_eq!(d.terminate()?, Some(0), "D stops cleanly");
    wait_owning(&ch_a, PARTITIONS as usize).await?;

    // The lone node: same catalog, same input, a group, changelog and deltas topic of its own.
    let mut lone = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("lone"),
        "failover-lone",
        &[
            ("AUDIENCE_PARTITIONS", partitions.as_str()),
            ("AUDIENCE_DELTAS_TOPIC", lone_deltas.as_str()),
        ],
    )?;
    let ch_lone = lone.ready().await?;
    wait_processed(&ch_lone, (USERS * ROUNDS) as u64, Duration::from_secs(90)).await?;

    let mut expected = BTreeMap::new();
    for mpid in 1..=USERS {
        let members: BTreeSet<u64> = audiences
            .iter()
            .filter(|(times, _)| *times <= ROUNDS)
            .map(|(_, id)| *id)
            .collect();
        expected.insert(mpid, members);
    }
    let lone_members = settle(&ch_lone, &expected).await?;
    assert_eq!(
        lone_members, expected,
        "the lone node: every play applied once"
    );
    let cluster_members = settle(&ch_a, &expected).await?;
    assert_eq!(
        cluster_members, lone_members,
        "the cluster's memberships are the lone node's: no play lost or applied twice"
    );

    let expected_ids: BTreeSet<String> = expected
        .iter()
        .flat_map(|(mpid, members)| members.iter().map(move |a| format!("{a}:{mpid}:1")))
        .collect();
    let (cluster, cluster_sequences) =
        deduplicated(&read_deltas(&broker.bootstrap, &topics.deltas, &expected_ids).await?);
    let (lone_view, lone_sequences) =
        deduplicated(&read_deltas(&broker.bootstrap, &lone_deltas, &expected_ids).await?);
    for (name, watch, received) in [("A's subscriber", watch_a, &on_a), ("C's", watch_c, &on_c)] {
        tokio::time::timeout(Duration::from_secs(150), watch).await???;
        assert_whole(name, &received.lock().unwrap(), &expected_ids);
    }
    let cluster_meanings: BTreeSet<_> = cluster.values().map(meaning).collect();
    let lone_meanings: BTreeSet<_> = lone_view.values().map(meaning).collect();
    assert_eq!(
        cluster_meanings, lone_meanings,
        "the cluster's deduplicated deltas are the lone node's"
    );
    assert_eq!(
        cluster.keys().cloned().collect::<BTreeSet<_>>(),
        expected_ids
    );
    for sequences in [&cluster_sequences, &lone_sequences] {
        for (partition, seqs) in sequences {
            assert_eq!(
                seqs,
                &(1..=seqs.len() as u64).collect::<Vec<_>>(),
                "partition {partition}: outbox sequences without a gap"
            );
        }
    }
    for line in a
        .log_text()
        .lines()
        .filter(|l| l.contains("RestoreReport"))
        .take(8)
    {
        eprintln!("A: {}", line.split("report").nth(1).unwrap_or(line));
    }
    let count = |e: &Engine, what: &str| e.log_text().matches(what).count();
    let restores: usize = [&a, &c, &d]
        .iter()
        .map(|e| count(e, "partition restored from the changelog"))
        .sum();
    let from_snapshots: usize = [&a, &c, &d]
        .iter()
        .map(|e| count(e, "snapshot loaded"))
        .sum();
    eprintln!(
        "restores: {restores} (from snapshots: {from_snapshots}); deltas on the topic: {} \
         ({} ids); B's log: {} lines",
        read_topic(&broker.bootstrap, &topics.deltas, PARTITIONS)?.len(),
        cluster.len(),
        b.log_text().lines().count()
    );
    assert!(
        restores > PARTITIONS as usize,
        "partitions moved and were restored ({restores})"
    );
    assert_eq!(a.terminate()?, Some(0));
    assert_eq!(lone.terminate()?, Some(0));
    Ok(())
}
