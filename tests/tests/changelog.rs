//! Cluster step 2, the changelog: with `cluster.changelog` on, every unit of a partition's
//! state reaches the changelog topic, and applying a partition's units in order on an empty
//! store gives the owner's keys of that partition, byte for byte.

use audience_e2e::*;
use audience_state::changelog::{Record, Unit};
use audience_state::store::{replicated_column_families, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 2;

/// The keys and values of a column family, in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Every unit of one partition of the changelog topic, in offset order, and the epochs of
/// its claims.
fn read_units(bootstrap: &str, topic: &str, partition: i32) -> Result<(Vec<Unit>, Vec<u64>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "changelog-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let (_, end) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let (mut units, mut claims) = (Vec::new(), Vec::new());
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < end {
        anyhow::ensure!(Instant::now() < deadline, "changelog not read to {end}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            next = message.offset() + 1;
            match Record::decode(message.payload().unwrap_or_default())
                .map_err(anyhow::Error::msg)?
            {
                Record::Unit(unit) => units.push(unit),
                Record::Claim(claim) => claims.push(claim.epoch),
            }
        }
    }
    Ok((units, claims))
}

/// The partitions' state in a store: every replicated column family but the catalog's
/// (`audiences`, and the definitions, delivery positions and faults kept in `meta`, which every
/// node has from the catalog topic or keeps for itself).
fn partition_state(store: &Store) -> Result<BTreeMap<String, Entries>> {
    const NOT_A_PARTITIONS: &[&str] = &[
        "catalog/",
        "tier/",
        "calc/",
        "output/",
        "connection/",
        "conncursor/",
        "connsync/",
        "fault/",
        "seq/",
        "audit/",
    ];
    let mut out = BTreeMap::new();
    for cf in replicated_column_families()
        .iter()
        .filter(|cf| **cf != "audiences")
    {
        let entries = store
            .entries(cf)?
            .into_iter()
            .filter(|(k, _)| {
                *cf != "meta"
                    || !NOT_A_PARTITIONS
                        .iter()
                        .any(|prefix| k.starts_with(prefix.as_bytes()))
            })
            .collect();
        out.insert(cf.to_string(), entries);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_rebuilds_each_partition_byte_for_byte() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("changelog");
    broker.create_deployment_topics(&topics, PARTITIONS).await?;
    let changelog_topic = "changelog-state";
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("engine");
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &data,
        "changelog",
        &[
            ("AUDIENCE_CHANGELOG", "true"),
            ("AUDIENCE_CHANGELOG_TOPIC", changelog_topic),
        ],
    )?;
    let ch = engine.ready().await?;
    create_audience(
        &ch,
        "gold",
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
    )
    .await?;
    create_audience(
        &ch,
        "played lately",
        json!({"event": {"type": "custom_event", "name": "Play", "time": {"within_last_days": 7}}}),
    )
    .await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let mut sent = 0;
    for round in 0..3 {
        for mpid in 1..=30_i64 {
            let mut batch = sdk_batch(
                mpid,
                now + round,
                vec![custom_event(
                    "Play",
                    "navigation",
                    now + round,
                    json!({"round": round}),
                )],
            );
            if (mpid + round) % 3 == 0 {
                batch["user_attributes"]["tier"] = json!("silver");
            }
            produce_json(&producer, &topics.events, &batch).await?;
            sent += 1;
        }
    }
    wait_processed(&ch, sent, Duration::from_secs(60)).await?;
    // Time passes: timers fire and drop members, units of their own.
    advance_clock(&ch, 8 * 24 * 3_600_000).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&ch).await?;
        if s.changelog_units_pending == 0 && s.deltas_emitted > 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "changelog units still pending: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(engine.terminate()?, Some(0));

    let owner = Store::open(&data, false)?;
    // Deltas leave once their units are on the changelog: with every unit there, the
    // publisher sent every delta to the deltas topic.
    for partition in 0..PARTITIONS as u32 {
        assert_eq!(
            owner.published(audience_actors::publisher::DELTAS_SINK, partition)?,
            owner.outbox_head(partition)?,
            "partition {partition}: every delta published"
        );
    }
    let replica_dir = tempfile::tempdir()?;
    let replica = Store::open(replica_dir.path(), false)?;
    for partition in 0..PARTITIONS {
        let (units, claims) = read_units(&broker.bootstrap, changelog_topic, partition)?;
        assert!(!units.is_empty(), "partition {partition} wrote units");
        // The only node claimed the partition once, and wrote every unit under that claim.
        assert_eq!(claims, vec![1], "partition {partition}");
        assert!(units.iter().all(|u| u.epoch == 1));
        let seqs: Vec<u64> = units.iter().map(|u| u.seq).collect();
        assert_eq!(
            seqs,
            (1..=units.len() as u64).collect::<Vec<_>>(),
            "no gap, no repeat"
        );
        for unit in &units {
            assert_eq!(unit.partition, partition as u32);
            replica.apply_unit(unit)?;
        }
    }
    let (owners, replicas) = (partition_state(&owner)?, partition_state(&replica)?);
    assert!(
        owners["profiles"].len() >= 30,
        "the partitions hold the profiles"
    );
    assert!(!owners["outbox"].is_empty(), "and deltas");
    for (cf, entries) in &owners {
        assert_eq!(entries, &replicas[cf], "column family {cf}");
    }
    Ok(())
}
