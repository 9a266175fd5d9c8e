//! The catalog topic on the real broker: two nodes proposing at once, readers agreeing on
//! every id and every refusal, a record nobody can read passed over without stopping anyone,
//! and a restarted reader applying only the tail.

use audience_actors::catalog_topic::*;
use audience_e2e::*;
use audience_state::catalog::AudienceRecord;
use audience_state::catalog_log::{CatalogState, Change};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn create(name: String) -> Change {
    Change::CreateAudience {
        audience: AudienceRecord::active(
            0,
            name,
            json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proposers_one_order_every_reader_the_same_catalog() -> Result<()> {
    let broker = Broker::start()?;
    let kafka = client_config(&broker.bootstrap, &Default::default());
    let topic = "audience-catalog".to_string();
    ensure_catalog_topic(&kafka, &topic, 1).await?;
    // Ensuring again finds it, with its one partition.
    ensure_catalog_topic(&kafka, &topic, 1).await?;
    let a = CatalogProposer::new(&kafka, &topic, "node-a", 1)?;
    let b = CatalogProposer::new(&kafka, &topic, "node-b", 1)?;

    // 200 audiences proposed at once through both nodes.
    let from_a =
        futures::future::join_all((0..100).map(|i| a.propose(i, "e2e", create(format!("a{i}")))));
    let from_b =
        futures::future::join_all((0..100).map(|i| b.propose(i, "e2e", create(format!("b{i}")))));
    let (from_a, from_b) = tokio::join!(from_a, from_b);
    let offsets: BTreeSet<i64> = from_a
        .into_iter()
        .chain(from_b)
        .map(|r| r.map(|(_, offset)| offset))
        .collect::<Result<_, _>>()?;
    assert_eq!(offsets.len(), 200, "every proposal has its own offset");

    // Two readers from scratch: the same 200 distinct ids, the same catalog.
    let mut on_a = CatalogState::default();
    let mut on_b = CatalogState::default();
    let mut reader_a = CatalogReader::new(&kafka, &topic, &on_a)?;
    let mut reader_b = CatalogReader::new(&kafka, &topic, &on_b)?;
    let read_a = reader_a
        .catch_up(&mut on_a, READ_TIMEOUT, |_, _| {})
        .await?;
    let read_b = reader_b
        .catch_up(&mut on_b, READ_TIMEOUT, |_, _| {})
        .await?;
    assert_eq!(read_a.accepted, 200, "{read_a:?}");
    assert_eq!(read_a, read_b);
    assert_eq!(on_a, on_b);
    let ids: BTreeSet<u64> = on_a.audiences.keys().copied().collect();
    assert_eq!(ids.len(), 200);
    let names: BTreeSet<&str> = on_a.audiences.values().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 200);

    // A delete and a reference to the same audience, proposed at once: one is refused, the
    // same one for both readers.
    let target = *ids.first().unwrap();
    let reference = Change::CreateAudience {
        audience: AudienceRecord::active(0, "referrer", json!({"audience": {"id": target}})),
    };
    let (deleted, referred) = tokio::join!(
        a.propose(300, "e2e", Change::DeleteAudience { id: target }),
        b.propose(300, "e2e", reference)
    );
    deleted?;
    referred?;

    // A record no node can read, written straight to the topic.
    let producer = broker.producer()?;
    produce(&producer, &topic, "garbage", b"\x00not a catalog record").await?;
    let (_, last) = a
        .propose(400, "e2e", create("after the garbage".into()))
        .await?;

    let mut refusals = Vec::new();
    let tail_a = reader_a
        .catch_up(&mut on_a, READ_TIMEOUT, |offset, read| {
            if let ReadRecord::Record(_, Err(refusal)) = read {
                refusals.push((offset, refusal.to_string()));
            }
        })
        .await?;
    let tail_b = reader_b
        .catch_up(&mut on_b, READ_TIMEOUT, |_, _| {})
        .await?;
    assert_eq!(
        tail_a,
        CatchUp {
            accepted: 2,
            refused: 1,
            undecodable: 1
        }
    );
    assert_eq!(tail_a, tail_b);
    assert_eq!(on_a, on_b);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(on_a.applied_offset, Some(last));
    assert!(on_a
        .audiences
        .values()
        .any(|r| r.name == "after the garbage" && r.id == last as u64 + 1));

    // A reader restarted from its stored state reads only the tail.
    let (_, newest) = b.propose(500, "e2e", create("newest".into())).await?;
    let mut restarted = on_a.clone();
    let mut reader = CatalogReader::new(&kafka, &topic, &restarted)?;
    let tail = reader
        .catch_up(&mut restarted, READ_TIMEOUT, |_, _| {})
        .await?;
    assert_eq!(
        tail,
        CatchUp {
            accepted: 1,
            refused: 0,
            undecodable: 0
        }
    );
    assert_eq!(restarted.applied_offset, Some(newest));
    assert_eq!(reader.end().await?, newest + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_topic_of_two_partitions_is_refused() -> Result<()> {
    let broker = Broker::start()?;
    let kafka = client_config(&broker.bootstrap, &Default::default());
    let topic = "catalog-with-two";
    broker.create_topics(&[topic], 2).await?;
    let error = ensure_catalog_topic(&kafka, topic, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("has 2 partitions"), "{error}");

    Ok(())
}
