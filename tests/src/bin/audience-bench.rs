//! `make bench`: drives the real engine binary through a real tansu broker and prints figures.
//!
//! 100,000 profiles, 100 audiences, batches produced as fast as the broker takes them while the
//! engine consumes. Reports end-to-end events/s, p50/p99 latency from produce to delta on a gRPC
//! subscription, the engine's peak RSS, and, in the same run on the same topic, the raw consume
//! rate of a bare rdkafka consumer as the ratio's denominator.

use audience_e2e::bench::{
    bare_consumer_rate, bench_producer, deploy, now_ms, peak_rss_kib, percentile, produce_all,
    rss_line, BenchDeployment, RssSampler, BENCH_PARTITIONS,
};
use audience_e2e::*;
use audience_proto::v1 as pb;
use std::time::{Duration, Instant};

/// 100 audience definitions over the sample workload: event frequencies and recency, attribute
/// operators, identities, combinations.
fn audience_defs(n: usize) -> Vec<serde_json::Value> {
    let events = ["Viewed Item", "Search", "Shared", "Played Video", "Login"];
    let tiers = ["bronze", "silver", "gold", "platinum"];
    (0..n)
        .map(|i| {
            let e = events[i % events.len()];
            let criteria = match i % 5 {
                0 => serde_json::json!({"event": {"name": e, "count": {"at_least": 1 + (i / 5) % 3}, "time": {"within_last_days": 1 + i % 7}}}),
                1 => serde_json::json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": tiers[i % 4]}}),
                2 => serde_json::json!({"and": [{"event": {"name": e}}, {"user_attribute": {"name": "age", "op": "greater_than", "value": 18 + i % 40}}]}),
                3 => serde_json::json!({"and": [{"event": {"name": e, "attributes": [{"name": "category", "op": "contains", "value": "sho"}]}}, {"exclude": {"identity": {"type": "email"}}}]}),
                _ => serde_json::json!({"or": [{"event": {"type": "screen_view", "name": "Cart"}}, {"user_attribute": {"name": "tier", "op": "pattern", "value": format!("*{}", &tiers[i % 4][..2])}}]}),
            };
            serde_json::json!({"name": format!("bench audience {i:03}"), "criteria": criteria})
        })
        .collect()
}

fn bench_batch(mpid: i64, round: u64, now: i64) -> String {
    let events = ["Viewed Item", "Search", "Shared", "Played Video", "Login"];
    let tiers = ["bronze", "silver", "gold", "platinum"];
    let h = (mpid as u64).wrapping_mul(0x9E3779B97F4A7C15) ^ round.wrapping_mul(0xBF58476D1CE4E5B9);
    let e1 = events[(h % 5) as usize];
    let e2 = events[((h >> 8) % 5) as usize];
    serde_json::json!({
        "mpid": mpid,
        "environment": "production",
        "timestamp_unixtime_ms": now,
        "user_identities": {"customer_id": format!("c{mpid}"), "email": if h.is_multiple_of(3) { serde_json::Value::Null } else { format!("u{mpid}@example.com").into() }},
        "user_attributes": {"tier": tiers[((h >> 16) % 4) as usize], "age": 16 + (h >> 20) % 60},
        "device_info": {"platform": "Android", "os_version": "14"},
        "events": [
            {"event_type": "custom_event", "data": {"event_name": e1, "custom_event_type": "navigation", "timestamp_unixtime_ms": now, "custom_attributes": {"category": if h.is_multiple_of(2) { "shoes" } else { "hats" }}}},
            {"event_type": "screen_view", "data": {"screen_name": if (h >> 4).is_multiple_of(4) { "Cart" } else { "Home" }, "timestamp_unixtime_ms": now}},
            {"event_type": "custom_event", "data": {"event_name": e2, "custom_event_type": "other", "timestamp_unixtime_ms": now}}
        ]
    })
    .to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let profiles = env_or("BENCH_PROFILES", 100_000) as i64;
    let rounds = env_or("BENCH_ROUNDS", 2);
    let audiences = env_or("BENCH_AUDIENCES", 100) as usize;
    println!("bench: {profiles} profiles x {rounds} batches (3 events each), {audiences} audiences, {BENCH_PARTITIONS} partitions");

    let BenchDeployment {
        broker,
        topics,
        mut engine,
        dir,
    } = deploy("bench", &audience_defs(audiences)).await?;
    let ch = engine.ready().await?;
    let pid = engine.pid().expect("engine running");
    let sampler = RssSampler::start(pid);

    // The subscriber: latency from the batch's produce time (its timestamp) to the delta.
    let sub_ch = ch.clone();
    let subscriber = tokio::spawn(async move {
        let mut client = pb::membership_service_client::MembershipServiceClient::new(sub_ch);
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                audience_ids: vec![],
                cursor: "now".into(),
                subscriber_name: "bench".into(),
            })
            .await?
            .into_inner();
        let mut latencies = Vec::new();
        while let Ok(Some(d)) = stream.message().await {
            let now = now_ms();
            latencies.push(now - d.event_time_ms);
        }
        anyhow::Ok(latencies)
    });

    let producer = bench_producer(&broker.bootstrap)?;
    let total = profiles as u64 * rounds;
    let start = Instant::now();
    let records = (0..rounds).flat_map(|round| {
        (1..=profiles).map(move |mpid| (mpid.to_string(), bench_batch(mpid, round, now_ms())))
    });
    produce_all(&producer, &topics.events, records).await?;
    let produced_in = start.elapsed();
    wait_processed(&ch, total, Duration::from_secs(1800)).await?;
    let processed_in = start.elapsed();
    let status = status(&ch).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = peak_rss_kib(pid);
    let rss_parts = sampler.peaks_kib();
    assert_eq!(engine.terminate()?, Some(0), "engine exits cleanly");
    let mut latencies = subscriber.await??;
    latencies.sort();

    // The denominator: a bare rdkafka consumer on the same topic, same machine, same run.
    let raw_rate = bare_consumer_rate(&broker.bootstrap, &topics.events, total).await?;
    let e2e_rate = total as f64 / processed_in.as_secs_f64();
    let events_rate = 3.0 * e2e_rate;

    println!(
        "produced {total} batches in {:.1} s ({:.0} batches/s)",
        produced_in.as_secs_f64(),
        total as f64 / produced_in.as_secs_f64()
    );
    println!(
        "engine processed all in {:.1} s: {:.0} batches/s = {:.0} events/s end to end",
        processed_in.as_secs_f64(),
        e2e_rate,
        events_rate
    );
    println!(
        "deltas emitted: {}  (received on the subscription: {})",
        status.deltas_emitted,
        latencies.len()
    );
    println!(
        "latency produce -> delta: p50 {} ms  p99 {} ms  max {} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    println!("{}", rss_line(rss, rss_parts));
    println!("bare rdkafka consumer on the same topic: {raw_rate:.0} messages/s");
    println!("ratio engine / bare consumer: {:.3}", e2e_rate / raw_rate);

    // The changelog's cost: two more nodes (groups of their own) each read the whole topic,
    // one without the changelog and one with it, in this run.
    // The node with the changelog also snapshots its partitions every 100 units, and any
    // unit 2 s past the newest snapshot.
    let snapshots = dir.path().join("snapshots");
    let snapshot_dir = snapshots.display().to_string();
    let snapshotting = [
        ("AUDIENCE_SNAPSHOT_DIR", snapshot_dir.as_str()),
        ("AUDIENCE_SNAPSHOT_EVERY_UNITS", "100"),
        ("AUDIENCE_SNAPSHOT_INTERVAL_MS", "1000"),
        ("AUDIENCE_SNAPSHOT_MAX_AGE_MS", "2000"),
    ];
    let off = catch_up(&broker, &topics, dir.path(), "bench-plain", &[], total).await?;
    let on = catch_up(
        &broker,
        &topics,
        dir.path(),
        "bench-changelog",
        &snapshotting,
        total,
    )
    .await?;
    println!(
        "catch-up of the whole topic: changelog off {:.0} events/s, on {:.0} events/s \
         (ratio on / off {:.2}; the changelog topic had every unit {:.1} s after the last batch)",
        3.0 * off.0,
        3.0 * on.0,
        on.0 / off.0,
        on.1.as_secs_f64()
    );
    // A node taking every partition restores it from the changelog the last node wrote:
    // once from the whole log, once from the newest snapshots and the log past them.
    // The snapshots first: a restoring node writes units of its own (publishing positions)
    // that the next one reads.
    let fast = restore_all(
        &broker,
        &topics,
        dir.path(),
        "bench-restore-snapshot",
        Some(&snapshot_dir),
    )
    .await?;
    let whole = restore_all(&broker, &topics, dir.path(), "bench-restore", None).await?;
    for (how, restore) in [
        ("the whole changelog", &whole),
        ("snapshots and the changelog past them", &fast),
    ] {
        println!(
            "restore from {how}: {} profiles ({} from snapshots, {} units read) in {:.2} s = \
             {:.0} profiles/s (partitions in parallel)",
            restore.profiles,
            restore.snapshot_profiles,
            restore.units,
            restore.seconds,
            restore.profiles as f64 / restore.seconds
        );
    }
    println!(
        "restore ratio snapshots / whole log: {:.1}",
        whole.seconds / fast.seconds
    );
    Ok(())
}

struct Restored {
    profiles: u64,
    /// Profiles in the snapshots the restores loaded.
    snapshot_profiles: u64,
    units: u64,
    /// The longest partition restore, claim included.
    seconds: f64,
}

/// A fresh node in a group of its own restores every partition from the changelog topic the
/// catch-up with the changelog on wrote (and from its snapshots, given their repository): how
/// many profiles and units, in how long.
async fn restore_all(
    broker: &Broker,
    topics: &Topics,
    dir: &std::path::Path,
    group: &str,
    snapshots: Option<&str>,
) -> Result<Restored> {
    const PARTITIONS: usize = BENCH_PARTITIONS as usize;
    let data = dir.join(group);
    let mut env = vec![
        ("AUDIENCE_MANUAL_CLOCK", "false"),
        ("AUDIENCE_PARTITIONS", "4"),
        ("AUDIENCE_CHANGELOG", "true"),
        ("AUDIENCE_CHANGELOG_TOPIC", "bench-changelog"),
    ];
    if let Some(repository) = snapshots {
        env.push(("AUDIENCE_SNAPSHOT_DIR", repository));
    }
    let mut engine = Engine::start_with(broker, topics, &data, group, &env)?;
    let ch = engine.ready().await?;
    let started = Instant::now();
    // A partition has an actor only once it is restored.
    while status(&ch).await?.partitions.len() < PARTITIONS {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "partitions not restored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.terminate()?;
    // Each restore logs its report: units applied and time taken.
    let log = engine.plain_log_text();
    let figure = |line: &str, name: &str| -> u64 {
        line.split(&format!("{name}: "))
            .nth(1)
            .and_then(|rest| rest.split([',', ' ', '}']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("partition restored from the changelog"))
        .collect();
    anyhow::ensure!(
        reports.len() >= PARTITIONS,
        "{} restore reports in the log",
        reports.len()
    );
    // Where each partition's restore went: the whole, the claim, the snapshot's files, and
    // the units read past it (what is left).
    for line in &reports {
        let (elapsed, claim, snapshot) = (
            figure(line, "elapsed_ms"),
            figure(line, "claim_ms"),
            figure(line, "snapshot_ms"),
        );
        println!(
            "  {group}: partition {} restored in {elapsed} ms: claim {claim} ms, snapshot \
             {snapshot} ms, own units {} ms, reading the log {} ms ({} units applied, {} \
             verified, {} re-reads), the rest {} ms",
            line.split("partition=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_default(),
            figure(line, "own_units_ms"),
            figure(line, "log_ms"),
            figure(line, "applied"),
            figure(line, "verified"),
            figure(line, "rereads"),
            elapsed.saturating_sub(claim + snapshot + figure(line, "log_ms")),
        );
    }
    let store = audience_state::store::Store::open(&data, false)?;
    let mut profiles = 0;
    for p in 0..PARTITIONS as u32 {
        profiles += store.profile_count(p)?.unwrap_or(0);
    }
    Ok(Restored {
        profiles,
        snapshot_profiles: reports.iter().map(|l| figure(l, "snapshot_profiles")).sum(),
        units: reports.iter().map(|l| figure(l, "applied")).sum(),
        seconds: reports
            .iter()
            .map(|l| figure(l, "elapsed_ms"))
            .max()
            .unwrap_or(0) as f64
            / 1000.0,
    })
}

/// A fresh node reading the whole events topic: its rate in batches/s, and how long after the
/// last batch its changelog units were all on the topic.
async fn catch_up(
    broker: &Broker,
    topics: &Topics,
    dir: &std::path::Path,
    group: &str,
    changelog: &[(&str, &str)],
    total: u64,
) -> Result<(f64, Duration)> {
    let start = Instant::now();
    let mut env = vec![
        ("AUDIENCE_MANUAL_CLOCK", "false"),
        ("AUDIENCE_PARTITIONS", "4"),
        ("AUDIENCE_CHANGELOG_TOPIC", "bench-changelog"),
    ];
    if !changelog.is_empty() {
        // With the changelog on, and what else is given.
        env.push(("AUDIENCE_CHANGELOG", "true"));
        env.extend_from_slice(changelog);
    }
    let mut engine = Engine::start_with(broker, topics, &dir.join(group), group, &env)?;
    let ch = engine.ready().await?;
    wait_processed(&ch, total, Duration::from_secs(1800)).await?;
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let processed = Instant::now();
    while status(&ch).await?.changelog_units_pending > 0 {
        anyhow::ensure!(
            processed.elapsed() < Duration::from_secs(600),
            "changelog units still pending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = processed.elapsed();
    if !changelog.is_empty() {
        // The snapshotter's last round, past the last units.
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    engine.terminate()?;
    Ok((rate, drained))
}
