//! `make bench`, first figure: CPU time per event on the evaluation path with 1,000 and with
//! 100,000 active audiences defined, about 10 of them read by each event.
//!
//! It drives the engine's own per-message code (decode, apply to the profile, pick the
//! affected audiences from the catalog's index, evaluate them, encode the profile for the
//! store) in this thread, with the same events against both catalogs, and reads this thread's
//! CPU clock, so other processes on the machine do not count. The ratio says whether the cost
//! of an event grows with what it touches (it should stay near 1) or with what is defined.
//! Each run also prints its split: decode, apply, evaluate (index look-up and predicates) and
//! encode, each timed by the same clock. The store's write is the end-to-end bench's.

/// mimalloc: the engine allocates and frees many short-lived buffers per batch and per
/// backfill page; glibc's allocator returns and re-faults that memory page by page.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use audience_e2e::env_or;
use audience_state::batch::{decode, DEFAULT_MAX_MESSAGE_BYTES};
use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::criteria::EvalContext;
use audience_state::model::DAY_MS;
use audience_state::profile::ProfileState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Audiences reading each event name: an event touches this many (a few more read attributes).
const AUDIENCES_PER_EVENT_NAME: usize = 10;

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which no other process's work can
/// inflate.
fn thread_cpu_time() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

/// `n` audiences, ten per event name, in the shapes users write: frequency with recency,
/// attribute conditions, exclusions, combinations with user attributes.
fn catalog_of(n: usize) -> Catalog {
    let tiers = ["bronze", "silver", "gold", "platinum"];
    let records = (0..n).map(|i| {
        let name = format!("event {}", i / AUDIENCES_PER_EVENT_NAME);
        let criteria = match i % 5 {
            0 => serde_json::json!({"event": {"name": name, "count": {"at_least": 1 + i % 3}, "time": {"within_last_days": 1 + i % 7}}}),
            1 => serde_json::json!({"event": {"name": name, "attributes": [{"name": "category", "op": "contains", "value": "sho"}]}}),
            2 => serde_json::json!({"and": [{"event": {"name": name}}, {"user_attribute": {"name": "tier", "op": "exact_match", "value": tiers[i % 4]}}]}),
            3 => serde_json::json!({"and": [{"event": {"name": name, "time": {"between_days_ago": [1, 8]}}}, {"exclude": {"identity": {"type": "email"}}}]}),
            _ => serde_json::json!({"or": [{"event": {"name": name, "count": {"exactly": 2}}}, {"event": {"type": "screen_view", "name": format!("screen {}", i / AUDIENCES_PER_EVENT_NAME)}}]}),
        };
        AudienceRecord::active(i as u64 + 1, format!("audience {i}"), criteria)
    });
    Catalog::build(1, records)
}

/// The same pseudo-random batches for every run: one custom event over the names both
/// catalogs define (the first 1,000 / 10 names), so each touches the same audiences. The
/// batches change no user attribute: an attribute that a fifth of all audiences read would
/// (rightly) touch a fifth of them, which is not what this figure is about.
fn workload(messages: usize, profiles: i64, names: usize, t0: i64) -> Vec<Vec<u8>> {
    (0..messages)
        .map(|i| {
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mpid = 1 + (h % profiles as u64) as i64;
            let name = (h >> 20) as usize % names;
            let at = t0 + (i as i64) * 5_000;
            serde_json::json!({
                "mpid": mpid,
                "timestamp_unixtime_ms": at,
                "events": [{"event_type": "custom_event", "data": {
                    "event_name": format!("event {name}"), "custom_event_type": "other", "timestamp_unixtime_ms": at,
                    "custom_attributes": {"category": if h & 1 == 0 { "shoes" } else { "hats" }}}}]
            })
            .to_string()
            .into_bytes()
        })
        .collect()
}

/// One event in this many has its steps timed.
const SPLIT_EVERY: usize = 16;

/// CPU time of each step of the per-message path, over the events timed (see [`run`]).
#[derive(Default, Clone, Copy)]
struct Split {
    decode: Duration,
    apply: Duration,
    evaluate: Duration,
    encode: Duration,
}

struct Run {
    cpu_per_event: Duration,
    split: Split,
    evaluated_per_event: f64,
    deltas: usize,
    build: Duration,
}

fn run(audiences: usize, batches: &[Vec<u8>], t0: i64) -> Run {
    let started = Instant::now();
    let catalog = catalog_of(audiences);
    let build = started.elapsed();
    let retention = 30 * DAY_MS;
    let mut profiles: HashMap<i64, ProfileState> = HashMap::new();
    let (mut evaluated, mut deltas, mut encoded) = (0usize, 0usize, 0usize);
    let mut split = Split::default();
    // A lap's time includes one read of the clock, which is not the step's: measured here and
    // taken off.
    let clock_read = {
        let reads = 10_000;
        let before = thread_cpu_time();
        for _ in 0..reads {
            std::hint::black_box(thread_cpu_time());
        }
        (thread_cpu_time() - before) / (reads + 1)
    };
    let cpu_before = thread_cpu_time();
    // The steps of one event in SPLIT_EVERY are timed by this thread's CPU clock (a system
    // call: read at every step of every event, it would cost a tenth of the total).
    let mut mark = thread_cpu_time();
    let mut lap = |timing: bool, into: &mut Duration| {
        if timing {
            let now = thread_cpu_time();
            *into += now.saturating_sub(mark).saturating_sub(clock_read);
            mark = now;
        }
    };
    for (i, payload) in batches.iter().enumerate() {
        let now = t0 + i as i64 * 5_000;
        let timing = i % SPLIT_EVERY == 0;
        // Starts this event's clock (what passed since the last timed step is not a step's).
        let mut between = Duration::ZERO;
        lap(timing, &mut between);
        let inbound =
            decode(payload, None, DEFAULT_MAX_MESSAGE_BYTES).expect("bench batches decode");
        lap(timing, &mut split.decode);
        let mpid = inbound.mpid();
        let profile = profiles
            .entry(mpid)
            .or_insert_with(|| ProfileState::new(mpid));
        let changes = profile.apply(&inbound, now, retention, &catalog);
        lap(timing, &mut split.apply);
        let affected = catalog.affected_by(&changes);
        evaluated += affected.len();
        let ctx = EvalContext {
            now,
            retention_ms: retention,
        };
        deltas += profile
            .evaluate(affected, &catalog, &ctx, changes.event_time_ms)
            .len();
        lap(timing, &mut split.evaluate);
        encoded += profile.encode_core().len() + profile.encode_derived().len();
        lap(timing, &mut split.encode);
    }
    let cpu = thread_cpu_time() - cpu_before;
    std::hint::black_box(encoded);
    Run {
        cpu_per_event: cpu / batches.len() as u32,
        split,
        evaluated_per_event: evaluated as f64 / batches.len() as f64,
        deltas,
        build,
    }
}

/// Microseconds per event.
fn per_event(d: Duration, events: usize) -> f64 {
    d.as_nanos() as f64 / 1_000.0 / events as f64
}

fn main() {
    let messages = env_or("BENCH_CPU_EVENTS", 200_000) as usize;
    let profiles = env_or("BENCH_CPU_PROFILES", 20_000) as i64;
    let small = env_or("BENCH_CPU_SMALL", 1_000) as usize;
    let large = env_or("BENCH_CPU_LARGE", 100_000) as usize;
    let t0 = 1_764_000_000_000;
    let names = small / AUDIENCES_PER_EVENT_NAME;
    let batches = workload(messages, profiles, names, t0);
    println!(
        "cpu bench: {messages} events over {profiles} profiles, each event read by ~{AUDIENCES_PER_EVENT_NAME} audiences"
    );
    // A warm-up run so that both measured runs start with the same allocator and cache state.
    run(small, &batches[..batches.len().min(20_000)], t0);
    let a = run(small, &batches, t0);
    let b = run(large, &batches, t0);
    for (n, r) in [(small, &a), (large, &b)] {
        println!(
            "  {n:>7} audiences: catalog built in {:>6.2} s; CPU {:>6.2} µs/event; {:.1} audiences evaluated/event; {} deltas",
            r.build.as_secs_f64(),
            r.cpu_per_event.as_nanos() as f64 / 1_000.0,
            r.evaluated_per_event,
            r.deltas
        );
        // The timed events run slower than the others (each clock read is a system call,
        // which leaves the caches colder): the split gives each step's share, applied to the
        // untimed total.
        let s = r.split;
        let steps = [s.decode, s.apply, s.evaluate, s.encode];
        let timed: Duration = steps.iter().sum();
        let share = |d: Duration| {
            per_event(r.cpu_per_event, 1) * d.as_secs_f64() / timed.as_secs_f64().max(1e-12)
        };
        println!(
            "           µs/event: decode {:.2}, apply {:.2}, evaluate (index and predicates) {:.2}, encode {:.2}",
            share(s.decode),
            share(s.apply),
            share(s.evaluate),
            share(s.encode)
        );
    }
    println!(
        "  ratio CPU/event {large} / {small} audiences = {:.2}",
        b.cpu_per_event.as_nanos() as f64 / a.cpu_per_event.as_nanos().max(1) as f64
    );
}
