//! `make bench`, failover: how long each partition's deltas stop when its owner leaves, with
//! and without a standby replica (cluster step 3).
//!
//! Two engine nodes over one real tansu broker, 8 partitions. A preload of 200,000 profiles
//! (`BENCH_FAILOVER_PROFILES`) makes each partition's changelog long (what a cold takeover must
//! read); then a steady stream flips users in and out of an audience, so every partition emits
//! deltas several times a second, and a subscriber on the node that stays records when each
//! partition's deltas arrive. The other node leaves: SIGTERM (it leaves the group at once), or
//! kill -9 (the group should notice at the session timeout, 6 s here; tansu 0.6 may keep the
//! dead member's partitions far longer, and the bench then says so). A moved partition's pause
//! is its longest gap between two deltas across and after the leave (its last delta before the
//! leave to its first after, unless the leaving node still sent some); the partitions that did
//! not move are measured the same way, against their own longest gap before the leave.
//!
//! Each case runs twice: partitions assigned by the consumer group (EAGER `range`), and by the
//! engine itself (`cluster.assignment = "engine"`, heartbeats every
//! `BENCH_HEARTBEAT_MS` = 150 ms, a node silent after `BENCH_SILENT_AFTER_MS` = 600 ms is gone):
//! there a kill -9 is noticed by the silence, and only the partitions that move pause.

use audience_e2e::*;
use audience_proto::v1 as pb;
use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: usize = 8;
/// Users flipped in and out of the `flip` audience by the steady stream.
const FLIPPERS: i64 = 400;
/// Batches per second of the steady stream (over all partitions).
const FLIPS_PER_SECOND: u64 = 200;

#[derive(Clone, Copy, Debug)]
enum Assignment {
    Group,
    Engine,
}

#[derive(Clone, Copy, Debug)]
enum Leave {
    Terminate,
    Kill9,
}

struct Outcome {
    /// Deltas the subscriber received in all.
    deltas: usize,
    moved: Vec<Duration>,
    unmoved_longest: Duration,
    unmoved_baseline: Duration,
    takeover: Duration,
}

/// How long a failover waits for the group to give the partitions to the node that stays.
const TAKEOVER_BOUND: Duration = Duration::from_secs(30);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let preload = env_or("BENCH_FAILOVER_PROFILES", 200_000) as i64;
    println!(
        "failover bench: 2 nodes, {PARTITIONS} partitions, {preload} profiles preloaded, \
         {FLIPS_PER_SECOND} batches/s steady"
    );
    let heartbeat = env_or("BENCH_HEARTBEAT_MS", 150);
    let silent_after = env_or("BENCH_SILENT_AFTER_MS", 600);
    println!(
        "assigned by the engine: heartbeat {heartbeat} ms, a node silent for {silent_after} ms \
         is gone"
    );
    // `BENCH_FAILOVER_ASSIGNMENT=engine` (or `group`) runs only that half.
    let only = std::env::var("BENCH_FAILOVER_ASSIGNMENT").unwrap_or_default();
    let cases = [Assignment::Engine, Assignment::Group]
        .into_iter()
        .filter(|a| only.is_empty() || format!("{a:?}").eq_ignore_ascii_case(&only))
        .flat_map(|a| [Leave::Terminate, Leave::Kill9].map(|l| (a, l)))
        .flat_map(|(a, l)| [0, 1].map(|s| (a, l, s)));
    for (assignment, leave, standbys) in cases {
        let timing = (heartbeat, silent_after);
        let Some(run) = failover(preload, standbys, leave, assignment, timing).await? else {
            println!(
                "failover ({assignment:?}, {leave:?}, standby_replicas = {standbys}): the \
                     dead node's partitions did not come to the other within {TAKEOVER_BOUND:?} \
                     (tansu 0.6 may keep a killed member's partitions assigned past its \
                     session timeout): not measured"
            );
            continue;
        };
        let mut moved = run.moved.clone();
        moved.sort();
        println!(
            "failover ({assignment:?}, {leave:?}, standby_replicas = {standbys}): {} \
                 partitions moved, pause \
                 p50 {} ms, p99 {} ms, max {} ms; all owned again {} ms after the leave; \
                 partitions that stayed: longest gap {} ms (before the leave: {} ms); {} deltas",
            moved.len(),
            ms(percentile(&moved, 0.5)),
            ms(percentile(&moved, 0.99)),
            ms(moved.last().copied().unwrap_or_default()),
            ms(run.takeover),
            ms(run.unmoved_longest),
            ms(run.unmoved_baseline),
            run.deltas,
        );
    }
    Ok(())
}

/// One failover; `None` when the partitions did not move within [`TAKEOVER_BOUND`].
async fn failover(
    preload: i64,
    standbys: usize,
    leave: Leave,
    assignment: Assignment,
    (heartbeat, silent_after): (u64, u64),
) -> Result<Option<Outcome>> {
    let broker = Broker::start()?;
    let name = format!("failover-{standbys}-{leave:?}-{assignment:?}").to_lowercase();
    let topics = Topics::unique(&name);
    broker
        .create_deployment_topics(&topics, PARTITIONS as i32)
        .await?;
    let dir = tempfile::tempdir()?;
    let (partitions, replicas) = (PARTITIONS.to_string(), standbys.to_string());
    let (heartbeat, silent_after) = (heartbeat.to_string(), silent_after.to_string());
    let mut env = vec![
        ("AUDIENCE_PARTITIONS", partitions.as_str()),
        ("AUDIENCE_STANDBY_REPLICAS", replicas.as_str()),
    ];
    match assignment {
        Assignment::Engine => env.extend([
            ("AUDIENCE_ASSIGNMENT", "engine"),
            ("AUDIENCE_HEARTBEAT_MS", heartbeat.as_str()),
            ("AUDIENCE_SILENT_AFTER_MS", silent_after.as_str()),
        ]),
        Assignment::Group => env.push(("AUDIENCE_ASSIGNMENT", "group")),
    }
    let start = |id| Engine::start_node_with(&broker, &topics, dir.path(), &name, id, &env);
    let mut a = start("node-a")?;
    let ch_a = a.ready().await?;
    wait_owning(&ch_a, PARTITIONS).await?;
    let mut b = start("node-b")?;
    let ch_b = b.ready().await?;
    wait_owning(&ch_b, PARTITIONS / 2).await?;
    wait_owning(&ch_a, PARTITIONS / 2).await?;
    create_tier_audience(&ch_a, "gold").await?;
    let flip = create_tier_audience(&ch_a, "flip").await?;
    wait_for_audience(&ch_b, flip.id).await?;

    // The preload: every partition's changelog holds thousands of units.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000")
        .create()?;
    let now = engine_now(&ch_a).await?;
    let mut pending = futures::stream::FuturesUnordered::new();
    for mpid in 1..=preload {
        let mut batch = sdk_batch(mpid, now, vec![]);
        batch["user_attributes"]["tier"] = serde_json::json!("gold");
        let (p, topic) = (producer.clone(), topics.events.clone());
        pending.push(async move {
            p.send(
                FutureRecord::to(&topic)
                    .key(&mpid.to_string())
                    .payload(&batch.to_string()),
                Duration::from_secs(120),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
        });
        while pending.len() >= 5000 {
            pending.next().await.transpose()?;
        }
    }
    while pending.next().await.transpose()?.is_some() {}
    wait_processed_between(&[&ch_a, &ch_b], preload as u64, Duration::from_secs(600)).await?;
    if standbys > 0 {
        wait_standing_by(&ch_b).await?;
        // The followers read the preload (100,000 profiles take a few seconds here), so the
        // steady stream is measured on nodes that are not catching up.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }

    // The subscriber on the node that stays: when each partition's deltas arrive.
    let arrivals: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let mut client = pb::membership_service_client::MembershipServiceClient::new(ch_b.clone());
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![flip.id],
            cursor: "now".into(),
            subscriber_name: "failover-bench".into(),
        })
        .await?
        .into_inner();
    let seen = arrivals.clone();
    let subscriber = tokio::spawn(async move {
        while let Ok(Some(d)) = stream.message().await {
            seen.lock().unwrap().push((d.partition, Instant::now()));
        }
    });

    // The steady stream: users in and out of `flip`, every partition several times a second.
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (stop, producer, topic) = (stop.clone(), producer.clone(), topics.events.clone());
        tokio::spawn(async move {
            let every = Duration::from_micros(1_000_000 / FLIPS_PER_SECOND);
            let mut tick = tokio::time::interval(every);
            let mut n: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let mpid = 10_000_000 + n % FLIPPERS;
                let tier = if (n / FLIPPERS) % 2 == 0 {
                    "flip"
                } else {
                    "flop"
                };
                let mut batch = sdk_batch(mpid, now, vec![]);
                batch["user_attributes"]["tier"] = serde_json::json!(tier);
                produce_json(&producer, &topic, &batch).await?;
                n += 1;
            }
            anyhow::Ok(())
        })
    };
    // The subscription, from "now", reaches some partitions seconds after others on tansu:
    // the leave waits until deltas of every partition came (60 s at most), then 6 s more.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: std::collections::BTreeSet<u32> =
            arrivals.lock().unwrap().iter().map(|(p, _)| *p).collect();
        if live.len() == PARTITIONS {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the subscription gave deltas of partitions {live:?} only"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let moving = status(&ch_a)
        .await?
        .partitions
        .iter()
        .map(|p| p.partition)
        .collect::<Vec<_>>();
    let left_at = Instant::now();
    match leave {
        Leave::Terminate => {
            a.terminate()?;
        }
        Leave::Kill9 => a.kill9(),
    }
    if wait_owning_within(&ch_b, PARTITIONS, TAKEOVER_BOUND)
        .await
        .is_err()
    {
        stop.store(true, Ordering::Relaxed);
        subscriber.abort();
        return Ok(None);
    }
    let takeover = left_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    steady.await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    subscriber.abort();
    // How the partitions moved, as the nodes' logs tell it: shown when a partition misses
    // deltas on one side of the leave.
    let moves_told: Vec<String> = [("A", a.log_text()), ("B", b.log_text())]
        .iter()
        .flat_map(|(id, log)| {
            without_colours(log)
                .lines()
                .filter(|l| {
                    [
                        "partitions over",
                        "partition released",
                        "restored partitions resumed",
                    ]
                    .iter()
                    .any(|m| l.contains(m))
                })
                .map(|l| format!("{id}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    drop(b);

    let mut by_partition: BTreeMap<u32, Vec<Instant>> = BTreeMap::new();
    let deltas = arrivals.lock().unwrap().len();
    for (p, at) in arrivals.lock().unwrap().iter() {
        by_partition.entry(*p).or_default().push(*at);
    }
    // A partition's pause is its longest gap between two deltas with the second after the
    // leave (a node leaving with SIGTERM may still send a few of its deltas after it was told).
    let gaps = |times: &[Instant], after: bool| {
        times
            .windows(2)
            .filter(|w| (w[1] >= left_at) == after)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    };
    let mut moved = Vec::new();
    let (mut unmoved_longest, mut unmoved_baseline) = (Duration::ZERO, Duration::ZERO);
    for p in 0..PARTITIONS as u32 {
        let times = by_partition.get(&p).map(Vec::as_slice).unwrap_or_default();
        let sides = (
            times.iter().any(|t| *t < left_at),
            times.iter().any(|t| *t >= left_at),
        );
        anyhow::ensure!(
            sides == (true, true),
            "partition {p}: no deltas on one side of the leave ({} in all, before: {}); by \
             partition: {:?}; the moves:\n{}",
            times.len(),
            sides.0,
            by_partition
                .iter()
                .map(|(p, t)| (*p, t.iter().filter(|t| **t < left_at).count(), t.len()))
                .collect::<Vec<_>>(),
            moves_told.join("\n")
        );
        if moving.contains(&p) {
            moved.push(gaps(times, true));
        } else {
            unmoved_longest = unmoved_longest.max(gaps(times, true));
            unmoved_baseline = unmoved_baseline.max(gaps(times, false));
        }
    }
    Ok(Some(Outcome {
        deltas,
        moved,
        unmoved_longest,
        unmoved_baseline,
        takeover,
    }))
}

/// Waits until the catalog topic brought audience `id` to the node behind `ch`.
async fn wait_for_audience(ch: &Channel, id: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    while client
        .get_audience(pb::GetAudienceRequest { id })
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "audience {id} not on the node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until every partition has a standby, as the cluster status shows it.
async fn wait_standing_by(ch: &Channel) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    loop {
        let cluster = admin
            .get_cluster_status(pb::GetClusterStatusRequest {})
            .await?
            .into_inner();
        if cluster.partitions.len() == PARTITIONS
            && cluster.partitions.iter().all(|p| !p.standbys.is_empty())
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "standbys: {cluster:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`wait_owning`] with its own bound (a kill -9 waits for the group's session timeout).
async fn wait_owning_within(ch: &Channel, n: usize, bound: Duration) -> Result<()> {
    let deadline = Instant::now() + bound;
    while status(ch).await?.partitions.len() != n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not {n} partitions within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
