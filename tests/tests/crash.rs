//! `kill -9` in the middle of a stream: after a restart the final state and the deduplicated
//! delta stream equal those of a run without the crash, and a subscriber resuming from its
//! cursor misses nothing.

use audience_e2e::*;
use audience_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const USERS: i64 = 60;
const ROUNDS: i64 = 10;

fn audiences() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "viewed 3+",
            serde_json::json!({"event": {"name": "Viewed Item", "count": {"at_least": 3}}}),
        ),
        (
            "viewed at most 4",
            serde_json::json!({"and": [{"event": {"name": "Viewed Item"}}, {"event": {"name": "Viewed Item", "count": {"at_most": 4}}}]}),
        ),
        (
            "odd level",
            serde_json::json!({"user_attribute": {"name": "level", "op": "pattern", "value": "*1"}}),
        ),
    ]
}

/// Deterministic input: every user views items and changes level, round after round.
fn batch(mpid: i64, round: i64, now: i64) -> serde_json::Value {
    let mut b = sdk_batch(
        mpid,
        now,
        vec![custom_event(
            "Viewed Item",
            "navigation",
            now - 1000 + round,
            serde_json::json!({}),
        )],
    );
    b["user_attributes"] = serde_json::json!({"level": format!("{}", (mpid + round) % 4)});
    b
}

async fn final_view(ch: &Channel) -> Result<(BTreeSet<(String, i32)>, BTreeMap<i64, Vec<u64>>)> {
    let all = collect_deltas(ch, vec![], "", Duration::from_secs(10), |_| false).await?;
    let deltas: BTreeSet<(String, i32)> =
        all.iter().map(|d| (d.delta_id.clone(), d.kind)).collect();
    let mut members = BTreeMap::new();
    for mpid in 1..=USERS {
        let mut ids: Vec<u64> = profile(ch, mpid)
            .await?
            .audiences
            .iter()
            .map(|m| m.audience_id)
            .collect();
        ids.sort();
        members.insert(mpid, ids);
    }
    Ok((deltas, members))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("crash");
    broker
        .create_topics(
            &[
                &topics.events,
                &topics.identities,
                &topics.deltas,
                &topics.dead_letters,
            ],
            2,
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let mut crashed = Engine::start(&broker, &topics, &dir.path().join("crashed"), "crashed")?;
    let ch = crashed.ready().await?;
    for (name, c) in audiences() {
        create_audience(&ch, name, c).await?;
    }
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;

    // A subscriber follows from the start and keeps its cursor.
    let mut received: Vec<pb::MembershipDelta> = Vec::new();
    let total = USERS * ROUNDS;
    let mut sent = 0;
    for round in 0..ROUNDS {
        for mpid in 1..=USERS {
            produce_json(&producer, &topics.events, &batch(mpid, round, now)).await?;
            sent += 1;
        }
        if round == ROUNDS / 2 {
            // Let the engine get some way in, read what the subscriber has, then kill -9.
            tokio::time::sleep(Duration::from_millis(300)).await;
            received =
                collect_deltas(&ch, vec![], "", Duration::from_secs(3), |d| d.len() >= 50).await?;
            crashed.kill9();
        }
    }
    assert_eq!(sent, total);
    assert!(
        !received.is_empty(),
        "the subscriber saw deltas before the crash"
    );
    crashed.restart()?;
    let ch = crashed.ready().await?;
    wait_until_caught_up(&ch, &broker, &topics).await?;

    // The subscriber resumes from its cursor: what it had plus what it gets is everything.
    let cursor = received
        .last()
        .map(|d| d.cursor.clone())
        .unwrap_or_default();
    let rest = collect_deltas(&ch, vec![], &cursor, Duration::from_secs(5), |_| false).await?;
    let mut resumed: Vec<String> = received
        .iter()
        .chain(rest.iter())
        .map(|d| d.delta_id.clone())
        .collect();
    let (crash_deltas, crash_members) = final_view(&ch).await?;
    let everything: Vec<String> =
        collect_deltas(&ch, vec![], "", Duration::from_secs(5), |_| false)
            .await?
            .iter()
            .map(|d| d.delta_id.clone())
            .collect();
    resumed.dedup();
    assert_eq!(
        resumed, everything,
        "a resumed subscriber sees exactly the outbox, in order"
    );
    let unique: BTreeSet<&String> = everything.iter().collect();
    assert_eq!(unique.len(), everything.len(), "no delta is emitted twice");

    // The reference: a second engine that never crashed, reading the same topics.
    // It loads the same definitions from files at start, before consuming anything.
    let defs = dir.path().join("audiences");
    std::fs::create_dir_all(&defs)?;
    for (i, (name, c)) in audiences().into_iter().enumerate() {
        let file = serde_json::json!({"name": name, "criteria": c});
        std::fs::write(defs.join(format!("{i:02}.json")), file.to_string())?;
    }
    let defs_dir = defs.display().to_string();
    let mut reference = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("reference"),
        "reference",
        &[("AUDIENCE_AUDIENCES_DIR", &defs_dir)],
    )?;
    let rch = reference.ready().await?;
    wait_until_caught_up(&rch, &broker, &topics).await?;
    let (ref_deltas, ref_members) = final_view(&rch).await?;
    assert_eq!(crash_members, ref_members, "final memberships");
    assert_eq!(crash_deltas, ref_deltas, "deduplicated delta streams");
    assert!(!ref_deltas.is_empty());

    // A restart finds the files' audiences in its catalog: none is created again.
    let loaded = audience_names(&rch).await?;
    assert_eq!(loaded.len(), audiences().len(), "one audience per file");
    reference.restart()?;
    let rch = reference.ready().await?;
    assert_eq!(
        audience_names(&rch).await?,
        loaded,
        "the files of a restart are the audiences already there"
    );
    Ok(())
}

/// The (id, name) of every audience, by id.
async fn audience_names(ch: &Channel) -> Result<Vec<(u64, String)>> {
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let mut names: Vec<(u64, String)> = client
        .list_audiences(pb::ListAudiencesRequest::default())
        .await?
        .into_inner()
        .audiences
        .into_iter()
        .map(|a| (a.id, a.name))
        .collect();
    names.sort();
    Ok(names)
}

/// Waits until the engine's stored offsets reach the end of the events topic.
async fn wait_until_caught_up(ch: &Channel, broker: &Broker, topics: &Topics) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut behind = false;
        let s = status(ch).await?;
        for p in 0..2 {
            let (_, high) = probe.fetch_watermarks(&topics.events, p, Duration::from_secs(5))?;
            let next = s
                .partitions
                .iter()
                .find(|x| x.partition == p as u32)
                .and_then(|x| x.next_offsets.get(&topics.events).copied())
                .unwrap_or(0);
            behind |= next < high;
        }
        if !behind {
            // Let the last backfill and timers settle.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("engine did not catch up: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node that stopped inside a producer's batch resumes inside it: the broker's answer to a
/// fetch from the middle of a batch must not cost the rest of the batch (tansu 0.6 answers it
/// with the next batch, here none: the consumer is moved back until the stored offset is
/// served, `actors/src/input_positions.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_a_producer_batch_reads_the_rest_of_the_batch() -> Result<()> {
    const BATCH: i64 = 100;
    const STOPPED_AT: i64 = 40;
    let broker = Broker::start()?;
    let topics = Topics::unique("midbatch");
    broker.create_deployment_topics(&topics, 1).await?;
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "midbatch")?;
    let ch = engine.ready().await?;
    let viewed_twice = create_audience(
        &ch,
        "viewed twice",
        serde_json::json!({"event": {"name": "Viewed Item", "count": {"at_least": 2}}}),
    )
    .await?;
    let now = engine_now(&ch).await?;
    // One produce batch of 100 records: sent together, lingering long enough to go as one.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("linger.ms", "500")
        .create()?;
    let sends = (1..=BATCH).map(|mpid| {
        let batch = batch(mpid, 0, now);
        let producer = &producer;
        let topic = &topics.events;
        async move { produce_json(producer, topic, &batch).await }
    });
    let offsets: Vec<i64> = futures::future::try_join_all(sends)
        .await?
        .into_iter()
        .map(|(_, offset)| offset)
        .collect();
    assert_eq!(offsets, (0..BATCH).collect::<Vec<_>>());
    wait_processed(&ch, BATCH as u64, Duration::from_secs(30)).await?;
    engine.terminate()?;

    // As if the node had stopped after the batch's first 40 records: its state says so.
    {
        let store = audience_state::store::Store::open(&engine.data_dir, false)?;
        let mut rewind = store.batch();
        rewind.set_next_offset(&topics.events, 0, STOPPED_AT);
        store.commit(rewind)?;
    }
    engine.restart()?;
    let ch = engine.ready().await?;
    // The batch's 60 last records come again (applied a second time, as the state asks):
    // their users viewed twice, the 40 first users once.
    wait_processed(&ch, (BATCH - STOPPED_AT) as u64, Duration::from_secs(60)).await?;
    for mpid in 1..=BATCH {
        let member = profile(&ch, mpid)
            .await?
            .audiences
            .iter()
            .any(|m| m.audience_id == viewed_twice.id);
        assert_eq!(
            member,
            mpid > STOPPED_AT,
            "user {mpid}: the record at offset {} read again",
            mpid - 1
        );
    }
    Ok(())
}
