//! `make bench`, second figure: how fast a new audience is computed over history, and what the
//! event log costs on disk.
//!
//! It writes a store as the partition actors write it (profiles, bases, event logs,
//! dictionaries), for `BENCH_BACKFILL_PROFILES` profiles (1,000,000) with
//! `BENCH_BACKFILL_EVENTS` events each (100) spread over the retention window, over two
//! partitions, in batches of 10 events that carry what an SDK sends with each (user
//! attributes, identities, device info, consent; mostly unchanged from the batch before).
//! Then it starts the real node (one partition actor per core), defines one audience with
//! event attribute conditions and a window, and times the backfill from the definition until
//! both partitions have evaluated it, through the actors' own code: page scans of profiles and
//! logs, rebuild from the log, evaluation, one write per page. It prints profiles/s (wall),
//! CPU per profile, and the log's bytes per profile: encoded (and what log format 1, events
//! only, took for the same batches), and on disk (RocksDB SST files after a flush); then the
//! rate of a rebuild of every profile from its logs (which must find every profile equal to
//! its fold), and the time and result of `EstimateAudience` for the same definition, against
//! the exact size.

/// mimalloc: the engine allocates and frees many short-lived buffers per batch and per
/// backfill page; glibc's allocator returns and re-faults that memory page by page.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use audience_actors::clock::Clock;
use audience_actors::engine::{Engine, EngineSettings};
use audience_actors::node::Node;
use audience_e2e::env_or;
use audience_state::catalog::{AudienceRecord, Catalog};
use audience_state::eventlog::{Dictionary, EventLog, LogLimits};
use audience_state::facts::ProfileFacts;
use audience_state::model::{
    AttrValue, Batch, ConsentState, DeviceInfo, Event, EventKind, GdprConsent, Inbound, Product,
    DAY_MS,
};
use audience_state::profile::ProfileState;
use audience_state::store::{Store, StoreOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 2;
const RETENTION: i64 = 30 * DAY_MS;

/// The `i`-th event of a profile: mostly searches and views with attributes, some purchases.
fn event(h: u64, at: i64) -> Event {
    let queries = [
        "red shoes",
        "hats",
        "boots",
        "shoe sale",
        "scarves",
        "gloves",
    ];
    let names = [
        "Search",
        "View Item",
        "Add To Wishlist",
        "Open Menu",
        "Share",
        "Rate",
    ];
    let custom = |name: &str| EventKind::Custom {
        name: name.into(),
        custom_type: Some("other".into()),
    };
    let mut attributes = BTreeMap::new();
    let kind = match h % 10 {
        0 => EventKind::Commerce {
            product_action: Some("purchase".into()),
            products: vec![Product {
                id: Some(format!("SKU-{}", h % 500)),
                name: Some("Thing".into()),
                brand: Some(["acme", "globex", "initech"][(h % 3) as usize].into()),
                category: Some("apparel".into()),
                variant: None,
                price: Some((h % 90) as f64 + 9.99),
                quantity: Some(1.0),
            }],
            total_amount: Some((h % 90) as f64 + 9.99),
            transaction_id: Some(format!("T{h}")),
        },
        n => {
            let name = names[(n as usize) % names.len()];
            attributes.insert(
                "query".to_string(),
                queries[(h >> 8) as usize % queries.len()].to_string(),
            );
            attributes.insert(
                "screen".to_string(),
                ["home", "search", "detail"][(h >> 16) as usize % 3].to_string(),
            );
            custom(name)
        }
    };
    Event {
        timestamp_ms: at,
        kind,
        attributes,
    }
}

/// The `n`-th batch of a profile, as an SDK sends it: its events, with the user's attributes,
/// identities, device and consent repeated (the plan changes after the fifth batch, the
/// OS version after the eighth).
fn sdk_batch(mpid: i64, n: usize, h: u64, events: Vec<Event>) -> Inbound {
    let mut consent = ConsentState::default();
    consent.gdpr.insert(
        "marketing".into(),
        GdprConsent {
            consented: !h.is_multiple_of(3),
            timestamp_ms: Some(1_700_000_000_000),
            document: Some("v2".into()),
        },
    );
    Inbound::Batch(Batch {
        mpid,
        events,
        user_attributes: vec![
            (
                "tier".into(),
                AttrValue::String(["gold", "silver"][(h % 2) as usize].into()),
            ),
            ("age".into(), AttrValue::Number((20 + h % 50) as f64)),
            ("city".into(), AttrValue::String("Lyon".into())),
            (
                "plan".into(),
                AttrValue::String(if n < 5 { "free" } else { "pro" }.into()),
            ),
            ("newsletter".into(), AttrValue::Bool(h.is_multiple_of(5))),
        ],
        user_identities: vec![
            ("customer_id".into(), format!("cust-{mpid}")),
            ("email".into(), format!("u{mpid}@example.com")),
        ],
        device_identities: vec![("ios_idfv".into(), format!("idfv-{mpid}"))],
        device_info: Some(DeviceInfo {
            platform: Some("iOS".into()),
            os_version: Some(if n < 8 { "17.2" } else { "17.3" }.into()),
            device_model: Some("iPhone15,2".into()),
            ..Default::default()
        }),
        consent: Some(consent),
        app_version: Some("2.1.0".into()),
        ..Default::default()
    })
}

/// Puts `records` in the catalog (the last one new) and times its backfill until every
/// partition has evaluated it; prints the figures and returns its size.
fn backfill(
    engine: &Engine,
    node: &Node,
    store: &Store,
    records: &[AudienceRecord],
    profiles: i64,
    what: &str,
) -> anyhow::Result<u64> {
    let id = records.last().expect("a new audience").id;
    let cpu_before = cpu_time::ProcessTime::now();
    let started = Instant::now();
    engine.catalog.store(Arc::new(Catalog::build_full(
        id + 1,
        records.to_vec(),
        vec![],
        vec![],
    )));
    node.catalog_changed();
    loop {
        let mut done = 0;
        for p in 0..PARTITIONS {
            if store.evaluated_revisions(p)?.contains(&(id, 1)) {
                done += 1;
            }
        }
        if done == PARTITIONS {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    let cpu = cpu_before.elapsed();
    let members: u64 = (0..PARTITIONS)
        .map(|p| store.audience_size(id, p).unwrap_or(0))
        .sum();
    println!(
        "  backfill of {what}: {:.2} s, {:.0} profiles/s, {:.2} µs CPU/profile, {members} members",
        wall.as_secs_f64(),
        profiles as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / profiles as f64
    );
    Ok(members)
}

fn audience(id: u64, criteria: serde_json::Value) -> AudienceRecord {
    AudienceRecord::active(id, format!("bench {id}"), criteria)
}

fn main() -> anyhow::Result<()> {
    let profiles = env_or("BENCH_BACKFILL_PROFILES", 1_000_000) as i64;
    let events = env_or("BENCH_BACKFILL_EVENTS", 100) as i64;
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(Clock::new(true));
    let now = clock.now();
    println!(
        "backfill bench: {profiles} profiles x {events} events in the log, {PARTITIONS} partitions"
    );
    // BENCH_BACKFILL_STORE: a directory that keeps the written store between runs (for
    // profiling one change after another): a run starts from a copy of it when it holds a
    // store of the same size, and fills it otherwise. Its events age with the days.
    let kept = std::env::var_os("BENCH_BACKFILL_STORE").map(std::path::PathBuf::from);
    let kept_marker = format!("{profiles} profiles x {events} events");
    let store_dir = dir.path().join("store");
    let reused = match &kept {
        Some(kept)
            if std::fs::read_to_string(kept.join("BENCH")).ok().as_deref()
                == Some(kept_marker.as_str()) =>
        {
            Store::open(&kept.join("store"), false)?.checkpoint(&store_dir)?;
            println!("  the store written before in {}", kept.display());
            true
        }
        _ => false,
    };
    // BENCH_BACKFILL_MMAP=1: the store reads its files through memory maps
    // (`storage.mmap_reads`), for comparing scans with and without them in one session.
    let options = StoreOptions {
        mmap_reads: env_or("BENCH_BACKFILL_MMAP", 0) != 0,
        ..StoreOptions::default()
    };
    println!("  memory-mapped reads: {}", options.mmap_reads);
    let store = Arc::new(Store::open_with(&store_dir, &options)?);
    if !reused {
        write_store(&store, now, profiles, events)?;
        if let Some(kept) = &kept {
            let _ = std::fs::remove_dir_all(kept);
            std::fs::create_dir_all(kept)?;
            store.checkpoint(&kept.join("store"))?;
            std::fs::write(kept.join("BENCH"), &kept_marker)?;
        }
    }

    // The node, with the partitions recovered from the store and nothing to do yet.
    let settings = EngineSettings {
        retention_ms: RETENTION,
        ..Default::default()
    };
    let engine = Engine::new(store.clone(), clock, settings)?;
    let node = Node::start(engine.clone(), PARTITIONS as usize)?;
    node.assign(&(0..PARTITIONS).collect::<Vec<_>>())?;
    std::thread::sleep(Duration::from_millis(500));

    // The new audience: searched for shoes at least twice in the last 7 days.
    let record = audience(
        1,
        serde_json::json!({"event": {"type": "custom_event", "name": "Search", "count": {"at_least": 2},
            "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
            "time": {"within_last_days": 7}}}),
    );
    let compiled = record.validate()?;
    let mut records = vec![record];
    let members = backfill(
        &engine,
        &node,
        &store,
        &records,
        profiles,
        "one new audience",
    )?;
    if let Some(path) = std::env::var_os("BENCH_BACKFILL_ROCKSDB_STATS") {
        // What RocksDB wrote and compacted for the first backfill, per column family.
        let report: String = store
            .column_family_stats()?
            .into_iter()
            .map(|(cf, stats)| format!("== {cf}\n{stats}\n"))
            .collect();
        std::fs::write(path, report)?;
    }
    // A selective one: a purchase of one product (SKU-10: one purchase in 50, so about one
    // profile in six has one): the profiles it does not change are not written.
    records.push(audience(
        2,
        serde_json::json!({"event": {"type": "commerce_event", "product_action": "purchase",
            "product": [{"name": "id", "op": "exact_match", "value": "SKU-10"}],
            "time": {"within_last_days": 30}}}),
    ));
    backfill(
        &engine,
        &node,
        &store,
        &records,
        profiles,
        "a selective audience",
    )?;

    // A rebuild of every profile from its logs: each fold is compared with the stored state,
    // and a healthy store has no profile to rewrite.
    let started = Instant::now();
    let cpu_before = cpu_time::ProcessTime::now();
    for (p, result) in futures::executor::block_on(
        node.start_replay(audience_actors::partition::ReplayMode::Rebuild),
    ) {
        result.map_err(|e| anyhow::anyhow!("partition {p}: {e}"))?;
    }
    let (scanned, changed) = loop {
        let replays = engine.replays.lock().clone();
        if replays.len() == PARTITIONS as usize
            && replays.values().all(|r| r.finished_at_ms.is_some())
        {
            break replays
                .values()
                .fold((0, 0), |(s, c), r| (s + r.scanned, c + r.changed));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    println!(
        "  rebuild from the logs: {:.2} s, {:.0} profiles/s, {:.2} µs CPU/profile, {scanned} folded, {changed} differed",
        wall.as_secs_f64(),
        scanned as f64 / wall.as_secs_f64(),
        cpu_before.elapsed().as_secs_f64() * 1e6 / scanned.max(1) as f64
    );
    anyhow::ensure!(changed == 0, "a healthy store's profiles equal their folds");

    // The estimate of the same definition as a draft, from the default sample.
    let started = Instant::now();
    let partitions: Vec<u32> = (0..PARTITIONS).collect();
    let sampled = audience_actors::sampling::estimate_size(
        &engine,
        &partitions,
        &compiled,
        audience_state::estimate::DEFAULT_SAMPLE_SIZE,
    )?;
    println!(
        "  estimate of the same definition: {:?} from {} sampled profiles ({} match) in {:.3} s; exact size {members}",
        sampled.estimate,
        sampled.sampled,
        sampled.sampled_members,
        started.elapsed().as_secs_f64()
    );
    restore_from_snapshots(&store, dir.path(), profiles as u64)?;
    Ok(())
}

/// Writes the store as streaming leaves it: `profiles` profiles with `events` logged events
/// each, in pages like the actors' batches; prints the log's bytes per profile.
fn write_store(store: &Store, now: i64, profiles: i64, events: i64) -> anyhow::Result<()> {
    // The store as streaming leaves it, written in pages like the actors' batches.
    let empty = Catalog::build_full(1, vec![], vec![], vec![]);
    let mut dicts: Vec<Dictionary> = (0..PARTITIONS).map(|_| Dictionary::default()).collect();
    let written = Instant::now();
    let (mut encoded_log_bytes, mut logged, mut format_1_bytes) = (0u64, 0u64, 0u64);
    let base = ProfileFacts::default().encode();
    let page = 1_000;
    for first in (1..=profiles).step_by(page) {
        let mut batch = store.batch();
        for mpid in first..(first + page as i64).min(profiles + 1) {
            let partition = (mpid as u32) % PARTITIONS;
            let dict = &mut dicts[partition as usize];
            let mut profile = ProfileState::new(mpid);
            let mut log = EventLog::default();
            // The same events as format 1 logged them, for the bytes it took.
            let mut format_1 = EventLog::default();
            let h0 = (mpid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let evs: Vec<Event> = (0..events)
                .map(|i| {
                    let h = h0 ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    // Spread over the window, oldest first.
                    let at = now - RETENTION + 60_000 + i * (RETENTION - 120_000) / events.max(1);
                    event(h.rotate_left(17), at)
                })
                .collect();
            for (n, chunk) in evs.chunks(10).enumerate() {
                let message = sdk_batch(mpid, n, h0, chunk.to_vec());
                profile.apply_logged(&message, now, RETENTION, &empty, &mut |m| {
                    log.append_message(dict, m);
                    for e in &m.events {
                        format_1.append(dict, e.at, &e.event);
                    }
                });
            }
            log.enforce(now - RETENTION, LogLimits::default());
            let writes = log.take_writes();
            encoded_log_bytes += log.bytes();
            format_1_bytes += format_1.bytes();
            logged += log.events();
            batch.put_log(partition, mpid, &log, &writes);
            batch.put_profile(partition, &profile);
            batch.put_facts(partition, mpid, &base);
        }
        for (p, dict) in dicts.iter_mut().enumerate() {
            batch.put_dictionary(p as u32, &dict.take_new());
        }
        store.commit(batch)?;
    }
    store.flush()?;
    let (sst, mem) = store.event_log_bytes()?;
    println!(
        "  wrote {profiles} profiles, {logged} logged events in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    println!(
        "  event log: {:.0} bytes/profile encoded ({:.1} bytes/event; log format 1, events only: {:.0} bytes/profile), {:.0} bytes/profile on disk (SST {} MiB, memtable {} MiB)",
        encoded_log_bytes as f64 / profiles as f64,
        encoded_log_bytes as f64 / logged.max(1) as f64,
        format_1_bytes as f64 / profiles as f64,
        (sst + mem) as f64 / profiles as f64,
        sst >> 20,
        mem >> 20
    );

    Ok(())
}

/// Restoring these profiles on a node new to the partitions (cluster step 2): each partition's
/// state written as a snapshot (SST files with its changelog position) as its owner writes it,
/// then ingested by another store, as a restore does before reading the log past it. No broker
/// here: the log past the snapshots and the claim are measured by `audience-bench`.
fn restore_from_snapshots(
    store: &Store,
    dir: &std::path::Path,
    expected: u64,
) -> anyhow::Result<()> {
    use audience_state::changelog::snapshot::{
        SnapshotManifest, SnapshotRepository, SNAPSHOT_FORMAT,
    };
    // The partitions become the changelog's: one unit each, on the topic at offset 0.
    store.log_partition_writes();
    for partition in 0..PARTITIONS {
        store.set_partition_epoch(partition, 0);
        let mut unit = store.partition_batch();
        unit.set_next_offset("bench-events", partition, 0);
        store.commit_partition(unit, partition)?;
        let waiting = store.pending_units(partition, 10)?;
        let delivered: Vec<(u64, i64)> = waiting
            .iter()
            .enumerate()
            .map(|(offset, (seq, _))| (*seq, offset as i64))
            .collect();
        anyhow::ensure!(
            store.acknowledge_units(partition, &delivered, &[])?,
            "partition {partition}: the unit is not acknowledged"
        );
    }
    let repository = SnapshotRepository::new(dir.join("snapshots"));
    let written = Instant::now();
    let mut bytes = 0;
    for partition in 0..PARTITIONS {
        let staging = repository.staging(partition)?;
        let contents = store
            .write_partition_snapshot(partition, &staging)?
            .ok_or_else(|| anyhow::anyhow!("partition {partition}: no snapshot"))?;
        bytes += contents.files.iter().map(|f| f.bytes).sum::<u64>();
        let manifest = SnapshotManifest {
            format: SNAPSHOT_FORMAT,
            partition,
            position: contents.position,
            node: "bench".into(),
            created_ms: 0,
            files: contents.files,
        };
        repository.publish(&staging, &manifest)?;
    }
    let writing = written.elapsed();
    let restored = Store::open(&dir.join("restored"), false)?;
    let started = Instant::now();
    let cpu_before = cpu_time::ProcessTime::now();
    let mut profiles = 0;
    for partition in 0..PARTITIONS {
        let snapshot = repository
            .latest(partition)?
            .ok_or_else(|| anyhow::anyhow!("partition {partition}: no snapshot published"))?;
        restored.load_partition_snapshot(
            partition,
            &snapshot.dir,
            &snapshot.manifest.position,
            &snapshot.manifest.files,
            snapshot.manifest.format,
        )?;
        let count = restored.profile_count(partition)?;
        anyhow::ensure!(
            count == store.profile_count(partition)?,
            "partition {partition}: {count:?} profiles restored"
        );
        profiles += count.unwrap_or(0);
    }
    let wall = started.elapsed();
    println!(
        "  snapshots of the {PARTITIONS} partitions: {} MiB written in {:.2} s; restored by a new \
         store: {profiles} profiles in {:.3} s = {:.0} profiles/s ({:.2} µs CPU/profile, \
         partitions one after another)",
        bytes >> 20,
        writing.as_secs_f64(),
        wall.as_secs_f64(),
        profiles as f64 / wall.as_secs_f64(),
        cpu_before.elapsed().as_secs_f64() * 1e6 / profiles.max(1) as f64
    );
    anyhow::ensure!(
        profiles == expected,
        "the restored store holds {profiles} profiles, not {expected}"
    );
    Ok(())
}
