//! Cluster step 1, end to end: two engine processes in one consumer group share their
//! definitions through the catalog topic. A definition made on one node is listed and evaluated
//! on the other; concurrent conflicting edits end in the same catalog everywhere with exactly
//! one refused; ids allocated at apply time are distinct and identical on both nodes; a
//! restarted node applies only the tail of the topic and a wiped one rebuilds from all of it;
//! a record nobody can decode is counted and passed over without stopping anyone.

use audience_e2e::webhook::start_hook;
use audience_e2e::*;
use audience_proto::v1 as pb;
use rdkafka::ClientConfig;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Input partitions (the harness's AUDIENCE_PARTITIONS), split between the two nodes.
const PARTITIONS: i32 = 2;
/// Bound on every wait for the cluster to settle; generous because the machine is noisy.
const WAIT: Duration = Duration::from_secs(60);
/// The cluster's `catalog.secret_key`.
/// Two nodes of one deployment. Field order is drop order: engines first, the broker last.
struct Cluster {
    /// Node A runs for the whole test; it is only ever reached through `ca`.
    _a: Engine,
    b: Engine,
    ca: Channel,
    cb: Channel,
    topics: Topics,
    _dir: tempfile::TempDir,
    broker: Broker,
}

async fn cluster(prefix: &str) -> Result<Cluster> {
    let broker = Broker::start()?;
    let topics = Topics::unique(prefix);
    // The catalog topic is left to the engines: they create it with its single partition.
    broker.create_deployment_topics(&topics, PARTITIONS).await?;
    let dir = tempfile::tempdir()?;
    let start = |name: &str, node: &str| {
        Engine::start_with(
            &broker,
            &topics,
            &dir.path().join(name),
            prefix,
            &[
                ("AUDIENCE_NODE_ID", node),
                // One key for the cluster: what one node seals, every node opens.
                ("AUDIENCE_CATALOG_SECRET_KEY", CLUSTER_KEY),
            ],
        )
    };
    let mut a = start("a", "node-a")?;
    let mut b = start("b", "node-b")?;
    let ca = a.ready().await?;
    let cb = b.ready().await?;
    Ok(Cluster {
        _a: a,
        b,
        ca,
        cb,
        topics,
        _dir: dir,
        broker,
    })
}

impl Cluster {
    /// Waits until both nodes applied the catalog topic up to its last record, and returns
    /// that offset. Equal offsets alone could be a moment mid-stream; the topic's end is not.
    async fn settled(&self) -> Result<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.broker.bootstrap)
            .create()?;
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, end) =
                probe.fetch_watermarks(&self.topics.catalog, 0, Duration::from_secs(5))?;
            let (a, b) = (status(&self.ca).await?, status(&self.cb).await?);
            let last = end - 1;
            if a.catalog_applied_offset == last && b.catalog_applied_offset == last {
                return Ok(last);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "catalog not settled within {WAIT:?}: last record {last}, A applied {}, B {}",
                a.catalog_applied_offset,
                b.catalog_applied_offset
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the group has given each node one of the two input partitions, so that
    /// what follows is evaluated by both nodes and no rebalance moves work mid-test.
    async fn split(&self) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let owned = |s: pb::EngineStatus| -> BTreeSet<u32> {
                s.partitions.iter().map(|p| p.partition).collect()
            };
            let (on_a, on_b) = (
                owned(status(&self.ca).await?),
                owned(status(&self.cb).await?),
            );
            if on_a.len() == 1 && on_b.len() == 1 && on_a != on_b {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "partitions not split within {WAIT:?}: A owns {on_a:?}, B owns {on_b:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn gold() -> serde_json::Value {
    json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}})
}

async fn list_audiences(ch: &Channel) -> Result<Vec<pb::Audience>> {
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let mut list = client
        .list_audiences(pb::ListAudiencesRequest::default())
        .await?
        .into_inner()
        .audiences;
    list.sort_by_key(|a| a.id);
    Ok(list)
}

/// What every node must agree on: id, name and revision of each audience, by id.
async fn catalog_view(ch: &Channel) -> Result<Vec<(u64, String, u64)>> {
    Ok(list_audiences(ch)
        .await?
        .into_iter()
        .map(|a| (a.id, a.name, a.revision))
        .collect())
}

async fn delete_audience(ch: &Channel, id: u64) -> Result<()> {
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    client
        .delete_audience(pb::DeleteAudienceRequest { id })
        .await?;
    Ok(())
}

/// The gRPC code of a failed call (Unknown when the error is not a gRPC status).
fn code<T>(r: &Result<T>) -> Option<tonic::Code> {
    r.as_ref().err().map(|e| {
        e.downcast_ref::<tonic::Status>()
            .map_or(tonic::Code::Unknown, tonic::Status::code)
    })
}

/// Polls (every 10 ms, up to 30 s) until the node lists audience `id`; returns how long it took.
async fn wait_listed(ch: &Channel, id: u64) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if list_audiences(ch).await?.iter().any(|a| a.id == id) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "audience {id} not listed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn create_many(ch: &Channel, prefix: &str, n: usize) -> Vec<Result<pb::Audience>> {
    futures::future::join_all((0..n).map(|i| {
        let ch = ch.clone();
        let name = format!("{prefix}{i}");
        async move { create_audience(&ch, &name, gold()).await }
    }))
    .await
}

/// Every record of a topic, read from the beginning of each partition to its end as of now.
async fn read_topic(broker: &Broker, topic: &str, partitions: i32) -> Result<Vec<Vec<u8>>> {
    let (bootstrap, topic) = (broker.bootstrap.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &topic, partitions)).await?
}

/// Every record of the topic: read until nothing more comes for a second (tansu's reported end
/// of a partition can lag its last batch, so it is not where reading stops).
fn read_topic_blocking(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<Vec<u8>>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cluster-catalog-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(1) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic}: still reading after 30 s"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            out.push(m?.payload().unwrap_or_default().to_vec());
            last = Instant::now();
        }
    }
    Ok(out)
}

/// The MPIDs of every "added" delta of `audience` on the deltas topic (JSON records, see
/// `publisher::delta_json`), sorted, duplicates kept.
async fn added_on_topic(c: &Cluster, audience: u64) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for record in read_topic(&c.broker, &c.topics.deltas, PARTITIONS).await? {
        let d: serde_json::Value = serde_json::from_slice(&record)?;
        if d["audience_id"].as_u64() == Some(audience) && d["kind"] == "added" {
            out.push(d["mpid"].as_i64().unwrap_or_default());
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_created_on_one_node_is_listed_and_evaluated_on_the_other() -> Result<()> {
    let c = cluster("cluster-eval").await?;
    assert_eq!(status(&c.ca).await?.node_id, "node-a");
    assert_eq!(status(&c.cb).await?.node_id, "node-b");

    let gold_tier = create_audience(&c.ca, "gold tier", gold()).await?;
    // From A's answer (the record applied on A) to B listing it: the catalog lag A->B.
    let lag = wait_listed(&c.cb, gold_tier.id).await?;
    println!("catalog lag A->B: {lag:?}");
    assert_eq!(catalog_view(&c.ca).await?, catalog_view(&c.cb).await?);

    // Each node owns one partition, so each evaluates its share with the shared definition.
    c.split().await?;
    let producer = c.broker.producer()?;
    let now = engine_now(&c.ca).await?;
    let mut partitions = BTreeSet::new();
    let mut matching = Vec::new();
    let sent = 40_i64;
    for mpid in 1..=sent {
        let mut batch = sdk_batch(mpid, now, vec![]);
        if mpid % 2 == 0 {
            matching.push(mpid);
        } else {
            batch["user_attributes"]["tier"] = json!("silver");
        }
        partitions.insert(produce_json(&producer, &c.topics.events, &batch).await?.0);
    }
    assert_eq!(
        partitions.len(),
        2,
        "the MPID keys spread over both partitions"
    );

    let deadline = Instant::now() + WAIT;
    let (on_a, on_b) = loop {
        let (a, b) = (status(&c.ca).await?, status(&c.cb).await?);
        let (on_a, on_b) = (
            a.messages_processed + a.messages_dead_lettered,
            b.messages_processed + b.messages_dead_lettered,
        );
        if on_a + on_b >= sent as u64 {
            break (on_a, on_b);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "processed {on_a} on A + {on_b} on B of {sent} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(on_a + on_b, sent as u64, "each batch processed once");
    assert!(
        on_a > 0 && on_b > 0,
        "both nodes evaluated: A {on_a}, B {on_b}"
    );

    // The deltas are published after processing: wait for the adds to be on the topic, then
    // read once more so a late duplicate would show.
    let deadline = Instant::now() + WAIT;
    while added_on_topic(&c, gold_tier.id).await? != matching {
        anyhow::ensure!(Instant::now() < deadline, "adds not on the deltas topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        added_on_topic(&c, gold_tier.id).await?,
        matching,
        "exactly the matching MPIDs, each added once, as one node would compute"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_edits_on_two_nodes_end_the_same_everywhere_and_one_is_refused() -> Result<()> {
    let c = cluster("cluster-conflict").await?;
    let x = create_audience(&c.ca, "X", gold()).await?;
    wait_listed(&c.cb, x.id).await?;

    // Whichever record comes first in the topic wins: a delete first refuses the reference
    // to a deleted audience; a reference first refuses deleting an audience in use.
    let (deleted, referrer) = tokio::join!(
        delete_audience(&c.ca, x.id),
        create_audience(&c.cb, "Y reads X", json!({"audience": {"id": x.id}})),
    );
    let failed: Vec<tonic::Code> = [code(&deleted), code(&referrer)]
        .into_iter()
        .flatten()
        .collect();
    // Refused at apply time: FAILED_PRECONDITION. Only when B applied the delete before it
    // even checked Y does Y fail its check there, nothing proposed: INVALID_ARGUMENT.
    let refused_at_check = code(&referrer) == Some(tonic::Code::InvalidArgument);
    assert!(
        failed == vec![tonic::Code::FailedPrecondition] || (refused_at_check && failed.len() == 1),
        "exactly one refused: delete: {deleted:?}, create: {referrer:?}"
    );
    let why = match (&deleted, &referrer) {
        (Err(e), _) | (_, Err(e)) => e
            .downcast_ref::<tonic::Status>()
            .map(tonic::Status::message),
        _ => None,
    }
    .unwrap_or_default();
    assert!(
        why.contains(&x.id.to_string()),
        "the refusal names X: {why}"
    );

    c.settled().await?;
    let (on_a, on_b) = (catalog_view(&c.ca).await?, catalog_view(&c.cb).await?);
    assert_eq!(on_a, on_b, "both nodes end with the same catalog");
    let ids: Vec<u64> = on_a.iter().map(|a| a.0).collect();
    match referrer {
        Ok(y) => assert_eq!(ids, vec![x.id, y.id], "the delete lost: X and Y remain"),
        Err(_) => assert!(ids.is_empty(), "the delete won, Y was never made: {on_a:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_200_concurrent_creations_are_distinct_and_the_same_on_both_nodes() -> Result<()> {
    let c = cluster("cluster-ids").await?;
    let (from_a, from_b) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(create_many(&c.ca, "a", 100), create_many(&c.cb, "b", 100))
    })
    .await?;
    let created: BTreeSet<u64> = from_a
        .into_iter()
        .chain(from_b)
        .map(|r| r.map(|a| a.id))
        .collect::<Result<_>>()?;
    assert_eq!(created.len(), 200, "every creation has its own id");

    c.settled().await?;
    let (on_a, on_b) = (catalog_view(&c.ca).await?, catalog_view(&c.cb).await?);
    assert_eq!(
        on_a, on_b,
        "both nodes list the same audiences under the same ids"
    );
    let listed: BTreeSet<u64> = on_a.iter().map(|a| a.0).collect();
    assert_eq!(listed, created);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_applies_only_the_tail_and_a_wiped_one_rebuilds_everything() -> Result<()>
{
    let mut c = cluster("cluster-restart").await?;
    for i in 0..3 {
        create_audience(&c.ca, &format!("before {i}"), gold()).await?;
    }
    // B must have applied (and stored) the three before it stops.
    c.settled().await?;
    assert_eq!(c.b.terminate()?, Some(0), "log:\n{}", c.b.log_text());
    for i in 0..2 {
        create_audience(&c.ca, &format!("while B was down {i}"), gold()).await?;
    }

    // Restarted with its data dir: it reads from its stored offset, so only the two.
    c.b.restart()?;
    c.cb = c.b.ready().await?;
    assert_eq!(status(&c.cb).await?.catalog_applied_at_start, 2);
    let on_b = catalog_view(&c.cb).await?;
    assert_eq!(on_b.len(), 5);
    assert_eq!(on_b, catalog_view(&c.ca).await?);

    // Wiped: nothing stored, so it applies every record of the topic before serving.
    assert_eq!(c.b.terminate()?, Some(0), "log:\n{}", c.b.log_text());
    std::fs::remove_dir_all(&c.b.data_dir)?;
    c.b.restart()?;
    c.cb = c.b.ready().await?;
    let last = c.settled().await?;
    assert_eq!(status(&c.ca).await?.catalog_applied_offset, last);
    assert_eq!(
        status(&c.cb).await?.catalog_applied_at_start,
        (last + 1) as u64,
        "every record, from offset 0"
    );
    assert_eq!(catalog_view(&c.cb).await?, catalog_view(&c.ca).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_catalog_record_is_counted_and_passed_over() -> Result<()> {
    let c = cluster("cluster-garbage").await?;
    // Written straight to the (single-partition) catalog topic, as a foreign or broken
    // producer would.
    let producer = c.broker.producer()?;
    produce(
        &producer,
        &c.topics.catalog,
        "garbage",
        b"\x07not a catalog record",
    )
    .await?;

    let after = create_audience(&c.ca, "after the garbage", gold()).await?;
    wait_listed(&c.cb, after.id).await?;
    c.settled().await?;
    assert_eq!(catalog_view(&c.ca).await?, catalog_view(&c.cb).await?);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (status(&c.ca).await?, status(&c.cb).await?);
        let counts = (a.catalog_records_undecodable, b.catalog_records_undecodable);
        if counts == (1, 1) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "undecodable records (A, B): {counts:?}, want (1, 1)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both still serve: the bad record stopped nobody.
    for ch in [&c.ca, &c.cb] {
        assert!(!status(ch).await?.partitions.is_empty());
        assert!(list_audiences(ch).await?.iter().any(|a| a.id == after.id));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_travel_sealed_and_every_node_with_the_key_delivers() -> Result<()> {
    let c = cluster("cluster-secrets").await?;
    let (hook, url) = start_hook().await?;
    let token = "Bearer never-in-clear-7731";
    let mut outputs = pb::output_service_client::OutputServiceClient::new(c.ca.clone());
    let output = outputs
        .create_output(pb::OutputConfig {
            name: "crm".into(),
            kind: "webhook".into(),
            settings: Some(criteria(
                json!({"url": url, "batch_size": 50, "linger_ms": 50}),
            )),
            secrets: [("authorization".to_string(), token.to_string())].into(),
            accepted_identities: vec!["email".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let gold_tier = create_audience(&c.ca, "gold tier", gold()).await?;
    // Connected through the other node once it applied both (in topic order: the output
    // first): definitions are one catalog, whoever takes them.
    wait_listed(&c.cb, gold_tier.id).await?;
    let mut on_b = pb::output_service_client::OutputServiceClient::new(c.cb.clone());
    on_b.create_connection(pb::Connection {
        audience_id: gold_tier.id,
        output_id: output.id,
        status: pb::ConnectionStatus::Sending as i32,
        ..Default::default()
    })
    .await?;

    c.split().await?;
    let producer = c.broker.producer()?;
    let now = engine_now(&c.ca).await?;
    let mut partitions = BTreeSet::new();
    for mpid in 1..=20 {
        let batch = sdk_batch(mpid, now, vec![]);
        partitions.insert(produce_json(&producer, &c.topics.events, &batch).await?.0);
    }
    assert_eq!(partitions.len(), 2, "both nodes own members");
    // Each node delivers the members of its own partition: all 20 arrive only if both
    // opened the secret that A sealed.
    let deadline = Instant::now() + WAIT;
    while hook.added().len() < 20 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "members delivered: {:?}",
            hook.added()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let headers = hook.authorization.lock().unwrap().clone();
    assert!(
        headers.iter().all(|h| h == token),
        "every request carries the secret, opened: {headers:?}"
    );

    // On the topic the secret is sealed, never in clear.
    let records = read_topic(&c.broker, &c.topics.catalog, 1).await?;
    assert!(!records.is_empty());
    let text: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert!(text.iter().all(|t| !t.contains("never-in-clear")));
    assert!(text.iter().any(|t| t.contains("sealed:v1:")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_the_catalog_topic_is_imported_with_its_ids() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("cluster-import");
    broker.create_deployment_topics(&topics, PARTITIONS).await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("a");
    {
        // A node of an earlier version: its own ids, no catalog offset.
        let store = audience_state::store::Store::open(&data, false)?;
        let mut old = audience_state::catalog::AudienceRecord::active(7, "from before", gold());
        old.revision = 4;
        store.put_audience(&old)?;
    }
    let mut a = Engine::start_with(
        &broker,
        &topics,
        &data,
        "import",
        &[("AUDIENCE_CATALOG_SECRET_KEY", CLUSTER_KEY)],
    )?;
    let ca = a.ready().await?;
    let listed = list_audiences(&ca).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id, listed[0].revision),
        (7, 4),
        "id and revision kept"
    );
    let after = create_audience(&ca, "after", gold()).await?;
    assert!(
        after.id > 7,
        "later ids start above imported ones: {}",
        after.id
    );

    // A second node with a wiped directory gets both from the topic, ids and all.
    let mut b = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("b"),
        "import",
        &[("AUDIENCE_CATALOG_SECRET_KEY", CLUSTER_KEY)],
    )?;
    let cb = b.ready().await?;
    let deadline = Instant::now() + WAIT;
    while catalog_view(&cb).await? != catalog_view(&ca).await? {
        anyhow::ensure!(Instant::now() < deadline, "B never caught up with A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The code of a ListAudiences call on `grpc` with `token`.
async fn listing_with(grpc: &str, token: &str) -> Result<tonic::Code> {
    let ch = audience_services::auth::ClientOptions {
        token: Some(token.into()),
        ..Default::default()
    }
    .connect(grpc)
    .await?;
    let answer = pb::audience_service_client::AudienceServiceClient::new(ch)
        .list_audiences(pb::ListAudiencesRequest::default())
        .await;
    Ok(answer.err().map_or(tonic::Code::Ok, |s| s.code()))
}

/// Waits until a ListAudiences with `token` on `grpc` answers `want`.
async fn wait_answer(grpc: &str, token: &str, want: tonic::Code) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let got = listing_with(grpc, token).await?;
        if got == want {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < WAIT, "{grpc}: {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// API tokens: created on one node (the secret answered once, only its digest on the catalog
/// topic), accepted on both within their scopes, and refused on both once revoked on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_created_on_one_node_are_accepted_on_both_until_revoked() -> Result<()> {
    let c = cluster("api-tokens").await?;
    let mut admin_a = pb::admin_service_client::AdminServiceClient::new(c.ca.clone());
    let mut admin_b = pb::admin_service_client::AdminServiceClient::new(c.cb.clone());
    let create = |name: &str, scopes: &[&str]| pb::CreateTokenRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let created = admin_a
        .create_token(create("ci-reader", &["read"]))
        .await?
        .into_inner();
    let secret = created.secret.clone();
    let token = created.token.unwrap();
    assert_eq!(
        (
            token.name.as_str(),
            token.source.as_str(),
            token.created_by.as_str()
        ),
        ("ci-reader", "api", "e2e")
    );
    assert_eq!(token.scopes, ["read"]);
    let (grpc_a, grpc_b) = (c._a.grpc.clone(), c.b.grpc.clone());
    wait_answer(&grpc_a, &secret, tonic::Code::Ok).await?;
    let applied_in = wait_answer(&grpc_b, &secret, tonic::Code::Ok).await?;

    // Within its scopes only, on the node that did not create it.
    let reader = audience_services::auth::ClientOptions {
        token: Some(secret.clone()),
        ..Default::default()
    }
    .connect(&grpc_b)
    .await?;
    let refused = pb::audience_service_client::AudienceServiceClient::new(reader)
        .create_audience(pb::CreateAudienceRequest {
            name: "not mine to make".into(),
            criteria: Some(criteria(gold())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("'write'"), "{refused:?}");

    // Names are unique, the configuration's included; grants are checked.
    for (name, scopes, code) in [
        ("ci-reader", vec!["read"], tonic::Code::AlreadyExists),
        ("e2e", vec!["read"], tonic::Code::AlreadyExists),
        ("has space", vec!["read"], tonic::Code::InvalidArgument),
        (
            "limited",
            vec!["admin", "workspace:app-b"],
            tonic::Code::InvalidArgument,
        ),
        ("nothing", vec![], tonic::Code::InvalidArgument),
    ] {
        let refused = admin_b
            .create_token(create(name, &scopes))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{name}: {refused:?}");
    }
    let listed = admin_b
        .list_tokens(pb::ListTokensRequest {})
        .await?
        .into_inner()
        .tokens;
    let listed: Vec<(&str, &str)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.source.as_str()))
        .collect();
    assert_eq!(listed, [("e2e", "config"), ("ci-reader", "api")]);

    // Hashed at rest: the catalog topic carries the digest, never the token.
    let records = read_topic(&c.broker, &c.topics.catalog, 1).await?;
    let text: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let digest = audience_services::api_tokens::digest_hex(&secret);
    assert!(
        text.iter().any(|r| r.contains(&digest)),
        "the digest is on the topic"
    );
    assert!(
        !text.iter().any(|r| r.contains(&secret[4..])),
        "the secret is not on the topic"
    );

    // The same through audiencectl: the secret printed once, on its own line.
    let ctl = |args: &[&str]| -> Result<String> {
        let out = c.b.ctl().args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "audiencectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let printed = ctl(&["token", "create", "cli-sub", "--scope", "subscribe"])?;
    let cli_secret = printed.lines().nth(1).unwrap_or_default().to_string();
    assert!(cli_secret.starts_with("aud_"), "{printed}");
    wait_answer(&grpc_a, &cli_secret, tonic::Code::PermissionDenied).await?;
    let list = ctl(&["token", "list"])?;
    assert!(
        list.lines()
            .any(|l| l.starts_with("cli-sub") && l.contains("api") && l.contains("[subscribe]")),
        "{list}"
    );
    assert!(!list.contains(&cli_secret), "{list}");
    assert!(ctl(&["token", "revoke", "cli-sub"])?.contains("revoked"));
    wait_answer(&grpc_a, &cli_secret, tonic::Code::Unauthenticated).await?;

    // Revoked on B, refused on A too; the configuration's tokens are not the API's to revoke.
    admin_b
        .revoke_token(pb::RevokeTokenRequest {
            name: "ci-reader".into(),
        })
        .await?;
    wait_answer(&grpc_a, &secret, tonic::Code::Unauthenticated).await?;
    wait_answer(&grpc_b, &secret, tonic::Code::Unauthenticated).await?;
    let refused = admin_a
        .revoke_token(pb::RevokeTokenRequest { name: "e2e".into() })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let gone = admin_a
        .revoke_token(pb::RevokeTokenRequest {
            name: "ci-reader".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    eprintln!("a token created on A was accepted on B after {applied_in:?}");
    Ok(())
}
