//! Outputs through the real broker and a real HTTP server: identity filtering and attribute
//! sharing per output; a webhook that fails (500, then 429 with Retry-After, then a timeout)
//! until the connection faults, keeps what is owed, and sends it all after Resume; bulk connect
//! with a bad audience id; deleting an audience tells the webhook.

use audience_e2e::webhook::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn batch(mpid: i64, now: i64, identities: Value, device: Value, tier: &str) -> Value {
    json!({
        "mpid": mpid,
        "timestamp_unixtime_ms": now,
        "user_identities": identities,
        "device_info": device,
        "user_attributes": {"tier": tier, "secret_score": 99},
        "events": [custom_event("Play", "navigation", now, json!({}))]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_get_their_identities_and_survive_faults() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("outputs");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "outputs")?;
    let ch = engine.ready().await?;
    let players = create_audience(&ch, "players", json!({"event": {"name": "play"}})).await?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let both = batch(
        51,
        now,
        json!({"email": "a@example.com"}),
        json!({"ios_advertising_id": "IDFA-51"}),
        "gold",
    );
    let email_only = batch(
        52,
        now,
        json!({"email": "b@example.com"}),
        json!({}),
        "silver",
    );
    let idfa_only = batch(
        53,
        now,
        json!({"customer_id": "c53"}),
        json!({"ios_advertising_id": "IDFA-53"}),
        "bronze",
    );
    for b in [&both, &email_only, &idfa_only] {
        produce_json(&producer, &topics.events, b).await?;
    }
    collect_deltas(&ch, vec![players.id], "", Duration::from_secs(30), |d| {
        d.len() >= 3
    })
    .await?;

    // Two outputs accepting different identity types, connected to the same audience.
    let (ads, ads_url) = start_hook().await?;
    let (crm, crm_url) = start_hook().await?;
    let ads_output = webhook(
        &mut outputs,
        "ads",
        &ads_url,
        &["ios_advertising_id", "android_advertising_id"],
        json!({}),
    )
    .await?;
    let crm_output = webhook(&mut outputs, "crm", &crm_url, &["email"], json!({})).await?;
    assert_eq!(
        ads_output.secrets["authorization"], "********",
        "secrets are never returned"
    );
    outputs
        .create_connection(pb::Connection {
            audience_id: players.id,
            output_id: ads_output.id,
            ..Default::default()
        })
        .await?;
    let crm_connection = outputs
        .create_connection(pb::Connection {
            audience_id: players.id,
            output_id: crm_output.id,
            shared_attributes: vec!["tier".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    wait_for(
        "current members on both outputs",
        Duration::from_secs(30),
        || members(&receiver_view(&ads)).len() == 2 && members(&receiver_view(&crm)).len() == 2,
    )
    .await?;
    let ads_view = receiver_view(&ads);
    assert_eq!(members(&ads_view), vec![51, 53]);
    assert_eq!(
        ads_view[&51].2["identities"],
        json!({"ios_advertising_id": ["IDFA-51"]})
    );
    assert!(
        ads_view[&51].2.get("attributes").is_none(),
        "no attributes unless shared"
    );
    let crm_view = receiver_view(&crm);
    assert_eq!(members(&crm_view), vec![51, 52]);
    assert_eq!(
        crm_view[&52].2["identities"],
        json!({"email": ["b@example.com"]})
    );
    assert_eq!(crm_view[&52].2["attributes"], json!({"tier": "silver"}));
    assert_eq!(crm.authorization.lock().unwrap()[0], "Bearer crm-token");
    let connection = outputs
        .get_connection(pb::ConnectionIdRequest {
            id: crm_connection.id,
        })
        .await?
        .into_inner();
    let figures = connection.figures.unwrap();
    assert_eq!(
        figures.unsendable, 1,
        "user 53 has no email: counted, not sent"
    );

    // A webhook that answers 500, then 429 with Retry-After: 1, then times out: with three
    // attempts, the connection faults.
    let (flaky, flaky_url) = start_hook().await?;
    flaky.script.lock().unwrap().extend([
        Answer::Status(500),
        Answer::TooManyRequests { retry_after_s: 1 },
        Answer::Hang(Duration::from_secs(3)),
    ]);
    let flaky_output = webhook(
        &mut outputs,
        "flaky",
        &flaky_url,
        &["email", "ios_advertising_id"],
        json!({"max_attempts": 3, "backoff_ms": 50, "timeout_ms": 500}),
    )
    .await?;
    let flaky_connection = connect(&ch, players.id, flaky_output.id).await?;
    let mut faults = Vec::new();
    for _ in 0..100 {
        faults = outputs
            .list_faults(pb::ListFaultsRequest::default())
            .await?
            .into_inner()
            .faults;
        if !faults.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(faults.len(), 1, "faulted after its retries");
    let fault = &faults[0];
    assert_eq!(
        (fault.connection_id, fault.attempts),
        (flaky_connection.id, 3)
    );
    assert!(fault.message.contains("timed out"), "{}", fault.message);
    {
        let arrivals = flaky.arrivals.lock().unwrap();
        assert_eq!(arrivals.len(), 3);
        assert!(
            arrivals[2] - arrivals[1] >= Duration::from_millis(950),
            "Retry-After is honoured: {:?}",
            arrivals[2] - arrivals[1]
        );
    }
    let shown = outputs
        .get_output(pb::OutputIdRequest {
            id: flaky_output.id,
        })
        .await?
        .into_inner();
    assert_eq!(
        shown.faulted_connections, 1,
        "the fault shows on the output"
    );
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let audience = audiences
        .get_audience(pb::GetAudienceRequest { id: players.id })
        .await?
        .into_inner();
    assert_eq!(
        (audience.connected_outputs, audience.faulted_connections),
        (3, 1)
    );

    // While faulted, new members are kept, not sent.
    let newcomer = batch(
        54,
        now,
        json!({"email": "d@example.com"}),
        json!({}),
        "gold",
    );
    produce_json(&producer, &topics.events, &newcomer).await?;
    wait_for(
        "the newcomer on the healthy output",
        Duration::from_secs(30),
        || members(&receiver_view(&crm)).contains(&54),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        flaky.accepted.lock().unwrap().is_empty(),
        "nothing sent while faulted"
    );

    // Resume: everything owed arrives, and the receiver's view equals the membership.
    outputs
        .resume(pb::ConnectionIdRequest {
            id: flaky_connection.id,
        })
        .await?;
    wait_for(
        "everything owed after resume",
        Duration::from_secs(30),
        || members(&receiver_view(&flaky)) == vec![51, 52, 53, 54],
    )
    .await?;
    assert!(outputs
        .list_faults(pb::ListFaultsRequest::default())
        .await?
        .into_inner()
        .faults
        .is_empty());

    // Bulk connect with one bad audience id: the others connect, the bad one is reported.
    let second = create_audience(
        &ch,
        "gold",
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
    )
    .await?;
    let bulk = outputs
        .bulk_connect(pb::BulkConnectRequest {
            output_id: crm_output.id,
            audience_ids: vec![second.id, 999],
            ..Default::default()
        })
        .await?
        .into_inner()
        .results;
    assert!(bulk[0].ok && bulk[0].connection_id > 0, "{bulk:?}");
    assert!(
        !bulk[1].ok && bulk[1].error.contains("audience 999"),
        "{bulk:?}"
    );
    // The output's connections, a page of one at a time, in id order.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = outputs
            .list_connections(pb::ListConnectionsRequest {
                output_id: crm_output.id,
                page_size: 1,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.connections.len() <= 1, "{page:?}");
        paged.extend(page.connections.iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let whole: Vec<u64> = outputs
        .list_connections(pb::ListConnectionsRequest {
            output_id: crm_output.id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .connections
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(
        whole.len() >= 2 && whole.contains(&bulk[0].connection_id),
        "{whole:?}"
    );
    assert_eq!(paged, whole);
    let refused = outputs
        .list_connections(pb::ListConnectionsRequest {
            page_size: 1_001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("1000"), "{refused:?}");

    // An output set to leave its receiver as it is when an audience is deleted; a value it
    // does not know is refused, naming the setting.
    let (quiet, quiet_url) = start_hook().await?;
    let refused = webhook(
        &mut outputs,
        "forgetful",
        &quiet_url,
        &["email"],
        json!({"on_audience_delete": "forget"}),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("settings.on_audience_delete")
            && refused.contains("notify, delete, leave"),
        "{refused}"
    );
    let quiet_output = webhook(
        &mut outputs,
        "quiet",
        &quiet_url,
        &["email"],
        json!({"on_audience_delete": "leave"}),
    )
    .await?;
    connect(&ch, second.id, quiet_output.id).await?;
    // One that keeps audiences as resources: their deletion is an HTTP DELETE.
    let (deleting, deleting_url) = start_hook().await?;
    let deleting_output = webhook(
        &mut outputs,
        "deleting",
        &format!("{deleting_url}?list=crm"),
        &["email"],
        json!({"on_audience_delete": "delete"}),
    )
    .await?;
    let deleting_connection = connect(&ch, second.id, deleting_output.id).await?;

    // Deleting an audience tells the webhook (on_audience_delete: notify, the default), leaves
    // the quiet one alone, and removes its connections.
    audiences
        .delete_audience(pb::DeleteAudienceRequest { id: second.id })
        .await?;
    wait_for("the deletion message", Duration::from_secs(10), || {
        crm.accepted
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "audience_deleted" && b["audience"]["id"] == second.id)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !quiet
            .accepted
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "audience_deleted"),
        "an output set to leave is told nothing"
    );
    wait_for(
        "the DELETE of the audience",
        Duration::from_secs(10),
        || !deleting.deleted.lock().unwrap().is_empty(),
    )
    .await?;
    let (query, body) = deleting.deleted.lock().unwrap()[0].clone();
    assert_eq!(
        query,
        format!(
            "list=crm&audience_id={}&connection_id={}",
            second.id, deleting_connection.id
        )
    );
    assert_eq!(body["type"], "audience_deleted");
    assert_eq!(body["audience"]["id"], second.id);
    assert!(
        !deleting
            .accepted
            .lock()
            .unwrap()
            .iter()
            .any(|b| b["type"] == "audience_deleted"),
        "no POST notice beside the DELETE"
    );
    let left = outputs
        .list_connections(pb::ListConnectionsRequest {
            audience_id: second.id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .connections;
    assert!(left.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_equals_the_membership_after_a_kill_during_delivery() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("outkill");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "outkill")?;
    let ch = engine.ready().await?;
    let gold = create_audience(
        &ch,
        "gold players",
        json!({"and": [{"event": {"name": "play"}},
            {"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}]}),
    )
    .await?;
    let (hook, url) = start_hook().await?;
    *hook.delay.lock().unwrap() = Duration::from_millis(30);
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let output = webhook(
        &mut outputs,
        "slow",
        &url,
        &["email"],
        json!({"batch_size": 5, "linger_ms": 1}),
    )
    .await?;
    let connection = outputs
        .create_connection(pb::Connection {
            audience_id: gold.id,
            output_id: output.id,
            ..Default::default()
        })
        .await?
        .into_inner();

    // 200 users join; then half of them leave (tier changes) while delivery is under way.
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    for mpid in 1..=200 {
        let b = batch(
            mpid,
            now,
            json!({"email": format!("u{mpid}@example.com")}),
            json!({}),
            "gold",
        );
        produce_json(&producer, &topics.events, &b).await?;
    }
    for mpid in (1..=200).filter(|m| m % 2 == 0) {
        let b = batch(
            mpid,
            now,
            json!({"email": format!("u{mpid}@example.com")}),
            json!({}),
            "silver",
        );
        produce_json(&producer, &topics.events, &b).await?;
    }
    wait_for("delivery under way", Duration::from_secs(30), || {
        hook.accepted.lock().unwrap().len() >= 3
    })
    .await?;
    engine.kill9();
    let before_restart = hook.accepted.lock().unwrap().len();
    engine.restart()?;
    let ch = engine.ready().await?;
    *hook.delay.lock().unwrap() = Duration::ZERO;

    // The engine's membership, from its own delta stream (highest version per user).
    let deltas = collect_deltas(&ch, vec![gold.id], "", Duration::from_secs(60), |d| {
        d.len() >= 300
    })
    .await?;
    let mut engine_view: BTreeMap<i64, (u64, bool)> = BTreeMap::new();
    for d in &deltas {
        let added = d.kind == pb::DeltaKind::Added as i32;
        if engine_view.get(&d.mpid).is_none_or(|(v, _)| d.version > *v) {
            engine_view.insert(d.mpid, (d.version, added));
        }
    }
    let expected: Vec<i64> = engine_view
        .iter()
        .filter(|(_, (_, member))| *member)
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(
        expected,
        (1..=200).filter(|m| m % 2 == 1).collect::<Vec<_>>()
    );
    wait_for(
        "the receiver to catch up after the restart",
        Duration::from_secs(60),
        || members(&receiver_view(&hook)) == expected,
    )
    .await?;
    assert!(hook.accepted.lock().unwrap().len() > before_restart);

    // The connection's 24-hour figures count what it delivered before the kill too (read from
    // the outbox through its stored positions), not only what it sent after the restart.
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let figures = outputs
            .get_connection(pb::ConnectionIdRequest { id: connection.id })
            .await?
            .into_inner()
            .figures
            .unwrap_or_default();
        let counted = (figures.size, figures.adds_24h, figures.drops_24h);
        if counted == (100, 200, 100) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "figures after the restart: {figures:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_output_receives_items_and_the_deletion() -> Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let broker = Broker::start()?;
    let topics = Topics::unique("kafkaout");
    let out_topic = format!("{}-out", topics.events);
    broker.create_topics(&[&out_topic], 1).await?;
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "kafkaout")?;
    let ch = engine.ready().await?;
    let players = create_audience(&ch, "players", json!({"event": {"name": "play"}})).await?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let output = outputs
        .create_output(pb::OutputConfig {
            name: "warehouse".into(),
            kind: "kafka".into(),
            settings: Some(criteria(
                json!({"bootstrap_servers": broker.bootstrap, "topic": out_topic}),
            )),
            accepted_identities: vec!["customer_id".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    outputs
        .create_connection(pb::Connection {
            audience_id: players.id,
            output_id: output.id,
            ..Default::default()
        })
        .await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    for mpid in [61, 62] {
        let b = batch(
            mpid,
            now,
            json!({"customer_id": format!("c{mpid}")}),
            json!({}),
            "gold",
        );
        produce_json(&producer, &topics.events, &b).await?;
    }
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "output-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&out_topic])?;
    let read = |n: usize| {
        let consumer = &consumer;
        async move {
            let mut out = Vec::new();
            while out.len() < n {
                let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
                let value: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                let key = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "idempotency-key"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                out.push((value, key));
            }
            anyhow::Ok(out)
        }
    };
    let mut items = read(2).await?;
    items.sort_by_key(|(v, _)| v["item"]["mpid"].as_i64());
    assert_eq!(
        items[0].0["item"]["identities"],
        json!({"customer_id": ["c61"]})
    );
    assert_eq!(items[0].0["audience"]["name"], "players");
    assert_eq!(
        items[1].1.as_deref(),
        Some(format!("{}:62:1", players.id).as_str())
    );

    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    audiences
        .delete_audience(pb::DeleteAudienceRequest { id: players.id })
        .await?;
    let deleted = read(1).await?;
    assert_eq!(deleted[0].0["type"], "audience_deleted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_receiver_gets_batches_until_it_acknowledges_them() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("grpcout");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "grpcout")?;
    let ch = engine.ready().await?;
    let players = create_audience(&ch, "players", json!({"event": {"name": "play"}})).await?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let output = outputs
        .create_output(pb::OutputConfig {
            name: "stream".into(),
            kind: "grpc".into(),
            settings: Some(criteria(json!({"timeout_ms": 1000, "batch_size": 10}))),
            accepted_identities: vec!["customer_id".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let connection = outputs
        .create_connection(pb::Connection {
            audience_id: players.id,
            output_id: output.id,
            ..Default::default()
        })
        .await?
        .into_inner();
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    for mpid in [71, 72] {
        let b = batch(
            mpid,
            now,
            json!({"customer_id": format!("c{mpid}")}),
            json!({}),
            "gold",
        );
        produce_json(&producer, &topics.events, &b).await?;
    }
    collect_deltas(&ch, vec![players.id], "", Duration::from_secs(30), |d| {
        d.len() >= 2
    })
    .await?;

    let attach = |outputs: &mut pb::output_service_client::OutputServiceClient<Channel>| {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut outputs = outputs.clone();
        async move {
            tx.send(pb::ReceiveRequest {
                kind: Some(pb::receive_request::Kind::ConnectionId(connection.id)),
            })
            .await?;
            let stream = outputs
                .receive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            anyhow::Ok((tx, stream))
        }
    };
    let keys = |b: &pb::DeliveryBatch| -> Vec<String> {
        let mut k: Vec<String> = b.items.iter().map(|i| i.idempotency_key.clone()).collect();
        k.sort();
        k
    };

    // A first receiver takes a batch and goes away without acknowledging it.
    let (tx, mut stream) = attach(&mut outputs).await?;
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await??
        .expect("a batch");
    drop((tx, stream));

    // The next receiver gets it again, acknowledges, and has every member.
    let (tx, mut stream) = attach(&mut outputs).await?;
    let mut received = Vec::new();
    while received.len() < 2 {
        let b = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await??
            .expect("a batch");
        if received.is_empty() {
            assert_eq!(
                keys(&b),
                keys(&first),
                "the unacknowledged batch comes again"
            );
        }
        tx.send(pb::ReceiveRequest {
            kind: Some(pb::receive_request::Kind::AckBatchId(b.batch_id)),
        })
        .await?;
        assert_eq!(b.audience_name, "players");
        for item in b.items {
            assert_eq!(
                item.identities.keys().collect::<Vec<_>>(),
                vec!["customer_id"]
            );
            received.push(item.mpid);
        }
    }
    received.sort();
    assert_eq!(received, vec![71, 72]);

    // Deleting the audience tells the attached receiver (on_audience_delete: notify).
    pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .delete_audience(pb::DeleteAudienceRequest { id: players.id })
        .await?;
    let deleted = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await??
        .expect("the deletion");
    assert_eq!(deleted.r#type, "audience_deleted");
    assert_eq!(deleted.audience_id, players.id);
    assert!(deleted.items.is_empty());
    tx.send(pb::ReceiveRequest {
        kind: Some(pb::receive_request::Kind::AckBatchId(deleted.batch_id)),
    })
    .await?;
    Ok(())
}
