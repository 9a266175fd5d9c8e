//! `make bench`, the steady-state figure (issue 32, target 1): the real engine binary, through a
//! real tansu broker, at work on profiles that already exist.
//!
//! 1,000,000 profiles are loaded first, one batch each (the "new profiles" rate, printed too):
//! three occurrences of each of three event names of the profile's own. Then 500,000 batches
//! of 1 to 5 mParticle JSON events go to profiles picked with Zipf-like activity (a few hot,
//! most cold), over 1,000 active audiences of which about 10 read each event. An event names
//! one of the profile's three known names, or one time in 64 a fourth: the known ones rarely
//! change a membership, the fourth does while its counts cross thresholds, so that about 2%
//! of events change one (the workload; the figure printed is measured).
//!
//! The steady batches are measured twice: produced while the engine consumes (the producer on
//! the same two cores), then a second set produced while the engine is stopped and consumed
//! after a restart, as the bare rdkafka consumer reads the topic: the ratio to the bare
//! consumer compares those two. Each steady phase starts with no delta left to publish and
//! ends when its own deltas are on the deltas topic. Printed: events/s and batches/s, the share
//! of events that changed a membership, the engine's peak RSS, the bare consumer's rate in the
//! same run and the ratio. Sizes: `BENCH_STEADY_PROFILES`, `BENCH_STEADY_AUDIENCES`,
//! `BENCH_STEADY_BATCHES`.

use audience_e2e::bench::{
    bare_consumer_rate, bench_producer, deploy, now_ms, peak_rss_kib, produce_all, rss_line,
    BenchDeployment, RssSampler,
};
use audience_e2e::*;
use std::time::{Duration, Instant};

/// Audiences reading each event name: an event touches this many.
const AUDIENCES_PER_NAME: usize = 10;

/// Definitions in the shapes users write, ten per event name: frequencies with recency,
/// attribute conditions, combinations with a user attribute, exclusions, alternatives.
fn audience_defs(n: usize) -> Vec<serde_json::Value> {
    let tiers = ["bronze", "silver", "gold", "platinum"];
    (0..n)
        .map(|i| {
            let name = format!("event {}", i / AUDIENCES_PER_NAME);
            let criteria = match i % AUDIENCES_PER_NAME {
                k @ 0..=2 => serde_json::json!({"event": {"name": name, "count": {"at_least": 1 + k}, "time": {"within_last_days": 7}}}),
                3 => serde_json::json!({"event": {"name": name, "count": {"at_least": 3}, "time": {"within_last_days": 1}}}),
                4 => serde_json::json!({"event": {"name": name, "count": {"at_least": 50}, "time": {"within_last_days": 30}}}),
                5 => serde_json::json!({"event": {"name": name, "attributes": [{"name": "category", "op": "contains", "value": "sho"}]}}),
                6 => serde_json::json!({"and": [{"event": {"name": name}}, {"user_attribute": {"name": "tier", "op": "exact_match", "value": tiers[(i / AUDIENCES_PER_NAME) % 4]}}]}),
                7 => serde_json::json!({"and": [{"event": {"name": name, "time": {"between_days_ago": [1, 8]}}}, {"exclude": {"identity": {"type": "email"}}}]}),
                8 => serde_json::json!({"or": [{"event": {"name": name, "count": {"at_least": 2}}}, {"event": {"type": "screen_view", "name": format!("screen {}", i / AUDIENCES_PER_NAME)}}]}),
                _ => serde_json::json!({"event": {"name": name, "time": {"within_last_days": 1}}}),
            };
            serde_json::json!({"name": format!("steady audience {i:04}"), "criteria": criteria})
        })
        .collect()
}

/// splitmix64: the same pseudo-random sequence in every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A rank in 1..=n with density about 1/rank (Zipf, s = 1): rank 1 is the hottest.
    fn zipf_rank(&mut self, n: u64) -> u64 {
        ((n as f64).powf(self.unit()) as u64).clamp(1, n)
    }
}

/// The profile of a rank: ranks spread over the MPIDs (so hot profiles fall in every
/// partition) by a multiplication that permutes 1..=n.
fn mpid_of(rank: u64, n: u64) -> i64 {
    const STRIDE: u64 = 999_983; // prime
    let stride = if n.is_multiple_of(STRIDE) { 1 } else { STRIDE };
    (1 + ((rank - 1) * stride) % n) as i64
}

/// The event names a profile uses: three it is loaded with, and a fourth that steady batches
/// name one time in 64.
fn names_of(mpid: i64, names: usize) -> [usize; 4] {
    let base = (mpid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24;
    [0u64, 37, 74, 11].map(|step| ((base + step) % names as u64) as usize)
}

fn custom_event(name: usize, category: &str, now: i64) -> serde_json::Value {
    serde_json::json!({"event_type": "custom_event", "data": {
        "event_name": format!("event {name}"), "custom_event_type": "other",
        "timestamp_unixtime_ms": now, "custom_attributes": {"category": category}}})
}

/// A new profile's first batch: its attributes, identities, and three occurrences of each of
/// its three known names.
fn first_batch(mpid: i64, names: usize, now: i64) -> String {
    let tiers = ["bronze", "silver", "gold", "platinum"];
    let h = (mpid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let known = names_of(mpid, names);
    let events: Vec<serde_json::Value> = known[..3]
        .iter()
        .flat_map(|&name| {
            [
                custom_event(name, "shoes", now),
                custom_event(name, "hats", now),
                custom_event(name, "hats", now),
            ]
        })
        .collect();
    serde_json::json!({
        "mpid": mpid,
        "environment": "production",
        "timestamp_unixtime_ms": now,
        "user_identities": {"customer_id": format!("c{mpid}"), "email": if h.is_multiple_of(3) { serde_json::Value::Null } else { format!("u{mpid}@example.com").into() }},
        "user_attributes": {"tier": tiers[((h >> 16) % 4) as usize]},
        "events": events
    })
    .to_string()
}

/// A batch of `events` custom events of the profile's names: no attribute changes, so each
/// event touches the audiences of its name.
fn steady_batch(mpid: i64, events: usize, names: usize, rng: &mut Random, now: i64) -> String {
    let known = names_of(mpid, names);
    let events: Vec<serde_json::Value> = (0..events)
        .map(|_| {
            let r = rng.next();
            let name = if r.is_multiple_of(64) {
                known[3]
            } else {
                known[((r >> 8) % 3) as usize]
            };
            custom_event(name, if (r >> 32) & 1 == 0 { "shoes" } else { "hats" }, now)
        })
        .collect();
    serde_json::json!({"mpid": mpid, "environment": "production", "timestamp_unixtime_ms": now, "events": events})
        .to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let profiles = env_or("BENCH_STEADY_PROFILES", 1_000_000);
    let audiences = env_or("BENCH_STEADY_AUDIENCES", 1_000) as usize;
    let batches = env_or("BENCH_STEADY_BATCHES", 500_000);
    let names = (audiences / AUDIENCES_PER_NAME).max(1);
    println!(
        "steady bench: {profiles} profiles, {audiences} audiences ({AUDIENCES_PER_NAME} per event \
         name), {batches} batches of 1 to 5 events to Zipf-picked profiles, 4 partitions"
    );

    let BenchDeployment {
        broker,
        topics,
        mut engine,
        dir: _dir,
    } = deploy("steady", &audience_defs(audiences)).await?;
    let loading = Instant::now();
    let ch = engine.ready().await?;
    println!(
        "engine answering with {audiences} audience files loaded in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    let pid = engine.pid().expect("engine running");
    let live_sampler = RssSampler::start(pid);
    let producer = bench_producer(&broker.bootstrap)?;

    let now = now_ms();
    let started = Instant::now();
    let first = (1..=profiles as i64).map(|mpid| (mpid.to_string(), first_batch(mpid, names, now)));
    produce_all(&producer, &topics.events, first).await?;
    wait_processed(&ch, profiles, Duration::from_secs(3600)).await?;
    let preload = started.elapsed().as_secs_f64();
    let before = status(&ch).await?;
    let deltas_before = before.deltas_emitted;
    println!(
        "new profiles (one batch of 9 events each): {:.0} batches/s, {:.0} events/s end to end \
         ({profiles} in {preload:.1} s; {deltas_before} deltas)",
        profiles as f64 / preload,
        9.0 * profiles as f64 / preload
    );
    // The steady state starts with no backlog: the new profiles' deltas are on the topic.
    let draining = Instant::now();
    let backlog = wait_published(&ch, Duration::from_secs(3600)).await?;
    println!(
        "their deltas on the deltas topic {:.1} s later ({backlog} published meanwhile)",
        draining.elapsed().as_secs_f64()
    );

    let mut rng = Random(0x5EED);
    let (records, events) = steady_records(&mut rng, batches, profiles, names);
    let started = Instant::now();
    produce_all(&producer, &topics.events, records.into_iter()).await?;
    let produced = started.elapsed().as_secs_f64();
    wait_processed(&ch, profiles + batches, Duration::from_secs(3600)).await?;
    wait_published(&ch, Duration::from_secs(3600)).await?;
    let live = started.elapsed().as_secs_f64();
    let after = status(&ch).await?;
    let deltas = after.deltas_emitted - deltas_before;
    let written_live = after.state_bytes_written - before.state_bytes_written;
    println!(
        "steady state, produced meanwhile on the same cores: {events} events in {batches} \
         batches in {live:.1} s (all produced after {produced:.1} s): {:.0} events/s, {:.0} \
         batches/s end to end",
        events as f64 / live,
        batches as f64 / live
    );
    println!(
        "memberships changed: {deltas} deltas, {:.2} per 100 events",
        100.0 * deltas as f64 / events as f64
    );
    let rss_live = peak_rss_kib(pid);
    let parts_live = live_sampler.peaks_kib();
    anyhow::ensure!(engine.terminate()? == Some(0), "the engine exits cleanly");

    // The same again from a topic filled while the engine was stopped, as the bare consumer
    // reads it: the producer's work is not on the cores while the engine runs.
    let (records, events) = steady_records(&mut rng, batches, profiles, names);
    produce_all(&producer, &topics.events, records.into_iter()).await?;
    engine.restart()?;
    let ch = engine.ready().await?;
    let pid = engine.pid().expect("engine running");
    let filled_sampler = RssSampler::start(pid);
    let started = Instant::now();
    wait_processed(&ch, batches, Duration::from_secs(3600)).await?;
    wait_published(&ch, Duration::from_secs(3600)).await?;
    let filled = started.elapsed().as_secs_f64();
    let filled_status = status(&ch).await?;
    // The engine restarted: its count of bytes written is this phase's.
    let written_filled = filled_status.state_bytes_written;
    let mut per_partition: Vec<(u32, i64)> = filled_status
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition,
                p.next_offsets.get(&topics.events).copied().unwrap_or(0),
            )
        })
        .collect();
    per_partition.sort();
    println!("events topic, next offset of each partition: {per_partition:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = peak_rss_kib(pid).max(rss_live);
    let parts = filled_sampler.peaks_kib();
    let parts = (parts.0.max(parts_live.0), parts.1.max(parts_live.1));
    anyhow::ensure!(engine.terminate()? == Some(0), "the engine exits cleanly");

    let total = profiles + 2 * batches;
    let bare = bare_consumer_rate(&broker.bootstrap, &topics.events, total).await?;
    println!(
        "steady state, from a filled topic: {events} events in {batches} batches in {filled:.1} \
         s: {:.0} events/s, {:.0} batches/s end to end",
        events as f64 / filled,
        batches as f64 / filled
    );
    println!(
        "state written to the store (write batches, before compactions): {:.0} bytes per batch \
         live, {:.0} from the filled topic",
        written_live as f64 / batches as f64,
        written_filled as f64 / batches as f64
    );
    println!("{}", rss_line(rss, parts));
    println!(
        "bare rdkafka consumer on the same topic: {bare:.0} messages/s; ratio engine (filled \
         topic) / bare consumer, in batches: {:.3}",
        batches as f64 / filled / bare
    );
    Ok(())
}

/// `batches` steady batches (key, JSON) and the events they hold.
fn steady_records(
    rng: &mut Random,
    batches: u64,
    profiles: u64,
    names: usize,
) -> (Vec<(String, String)>, u64) {
    let now = now_ms();
    let mut events = 0u64;
    let records = (0..batches)
        .map(|_| {
            let mpid = mpid_of(rng.zipf_rank(profiles), profiles);
            let n = 1 + (rng.next() % 5) as usize;
            events += n as u64;
            (mpid.to_string(), steady_batch(mpid, n, names, rng, now))
        })
        .collect();
    (records, events)
}
