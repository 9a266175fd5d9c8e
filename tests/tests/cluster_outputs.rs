//! Outputs across nodes (cluster step 3, item 2): a connection's delivery of a partition runs on
//! the partition's owner, from a position that is the partition's state. A webhook connection
//! keeps delivering across a kill -9 of a node: the receiver ends with exactly the content a
//! single node would give it (per MPID the item of the highest version), and the node that
//! took the dead node's partition over goes on from the dead node's position: it neither sends
//! the members again nor repeats a delta. The cluster's figures (nodes live and silent, each
//! partition owned, restoring, its lag) are metrics on any node. A fault met by one node is
//! listed and shown by any node, and a resume through any node clears it.

use audience_e2e::webhook::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_keeps_delivering_across_a_failover_without_repeating() -> Result<()> {
    let mut cluster = TwoNodes::start("outs").await?;
    let (ch_a, ch_b, topics) = (
        cluster.ch_a.clone(),
        cluster.ch_b.clone(),
        cluster.topics.clone(),
    );
    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = cluster.broker.producer()?;
    let now = engine_now(&ch_a).await?;
    produce_tier(&producer, &topics.events, now, 1..=24, "gold").await?;
    wait_processed(&ch_a, 12, Duration::from_secs(60)).await?;
    wait_processed(&ch_b, 12, Duration::from_secs(60)).await?;

    // Connected once every user is a member: each node sends the members of its partition.
    let (hook, url) = start_hook().await?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch_b.clone());
    let output = webhook(&mut outputs, "crm", &url, &["customer_id"], json!({})).await?;
    outputs
        .create_connection(pb::Connection {
            audience_id: gold.id,
            output_id: output.id,
            status: pb::ConnectionStatus::Sending as i32,
            ..Default::default()
        })
        .await?;
    let members_are = |expected: Vec<i64>| {
        let hook = hook.clone();
        move || members(&receiver_view(&hook)) == expected
    };
    if let Err(e) = wait_for(
        "the members, from both nodes",
        Duration::from_secs(60),
        members_are((1..=24).collect()),
    )
    .await
    {
        anyhow::bail!(
            "{e}: the receiver has {:?}\nA's log:\n{}\nB's log:\n{}",
            members(&receiver_view(&hook)),
            cluster.a.log_text(),
            cluster.b.log_text()
        );
    }
    produce_tier(&producer, &topics.events, now + 1, 1..=6, "silver").await?;
    wait_for(
        "the first drops",
        Duration::from_secs(60),
        members_are((7..=24).collect()),
    )
    .await?;
    // The positions that sent them reach the changelog topic (it is written every 20 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A dies mid-stream; C joins (tansu 0.6 rebalances late after a death otherwise) and the
    // dead node's partition restores, its position with it, on B or C.
    cluster.a.kill9();
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut c =
        cluster.start_node_with("node-c", &[("AUDIENCE_METRICS_LISTEN", &metrics_listen)])?;
    let ch_c = c.ready().await?;
    wait_owned_between(&[&ch_b, &ch_c], PARTITIONS as usize).await?;
    produce_tier(&producer, &topics.events, now + 2, 7..=12, "silver").await?;
    produce_tier(&producer, &topics.events, now + 2, 25..=30, "gold").await?;
    wait_for(
        "the deltas after the failover",
        Duration::from_secs(60),
        members_are((13..=30).collect()),
    )
    .await?;
    // Anything late (a repeat) would arrive within the linger and a retry.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // What a single node gives a receiver: per MPID its membership's latest version.
    let view: BTreeMap<i64, (u64, String)> = receiver_view(&hook)
        .into_iter()
        .map(|(mpid, (version, action, _))| (mpid, (version, action)))
        .collect();
    let single_node: BTreeMap<i64, (u64, String)> = (1..=30)
        .map(|mpid| match mpid {
            1..=12 => (mpid, (2, "drop".to_string())),
            _ => (mpid, (1, "add".to_string())),
        })
        .collect();
    assert_eq!(view, single_node);
    // Every item once: the new owner went on from the restored position.
    let mut sent: BTreeMap<(i64, u64), usize> = BTreeMap::new();
    for body in hook.accepted.lock().unwrap().iter() {
        for item in body["items"].as_array().into_iter().flatten() {
            let key = (
                item["mpid"].as_i64().unwrap(),
                item["version"].as_u64().unwrap(),
            );
            *sent.entry(key).or_default() += 1;
        }
    }
    let repeated: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "items sent more than once: {repeated:?}; B's log:\n{}",
        cluster.b.log_text()
    );
    assert_eq!(sent.len(), 24 + 12 + 6, "members, drops, new members");
    // The connection's 24-hour figures over the cluster count each partition once, where it
    // is now: the dead node's drops were counted again by the node that took its partition
    // over, from the outbox through the position it restored (the first sync is no change).
    let connection = outputs
        .list_connections(pb::ListConnectionsRequest::default())
        .await?
        .into_inner()
        .connections[0]
        .id;
    let mut figures = pb::ConnectionFigures::default();
    for _ in 0..100 {
        figures = get_connection(&ch_b, connection)
            .await?
            .figures
            .unwrap_or_default();
        if (figures.size, figures.adds_24h, figures.drops_24h) == (18, 6, 12) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        (figures.size, figures.adds_24h, figures.drops_24h),
        (18, 6, 12),
        "{figures:?}"
    );
    let first_item = hook.accepted.lock().unwrap()[0]["items"][0].clone();
    let cust = format!("cust-{}", first_item["mpid"]);
    assert_eq!(first_item["identities"], json!({"customer_id": [cust]}));
    // The cluster's figures are metrics on any node: A silent, B and C live, each partition
    // owned and restored.
    wait_metrics(
        metrics_port,
        &[
            "audience_cluster_nodes{state=\"live\"} 2",
            "audience_cluster_nodes{state=\"silent\"} 1",
            "audience_cluster_partition_owned{partition=\"0\"} 1",
            "audience_cluster_partition_owned{partition=\"1\"} 1",
            "audience_cluster_partition_restoring{partition=\"0\"} 0",
            "audience_cluster_partition_restoring{partition=\"1\"} 0",
        ],
    )
    .await?;
    drop(c);
    Ok(())
}

/// Waits until the node's Prometheus endpoint shows every line of `lines`.
async fn wait_metrics(port: u16, lines: &[&str]) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = http_get(port, "/metrics").unwrap_or_default();
        if lines.iter().all(|l| text.lines().any(|shown| shown == *l)) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "metrics lack one of {lines:?}:\n{}",
            text.lines()
                .filter(|l| l.starts_with("audience_cluster"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn list_faults(ch: &Channel) -> Result<Vec<pb::Fault>> {
    Ok(
        pb::output_service_client::OutputServiceClient::new(ch.clone())
            .list_faults(pb::ListFaultsRequest::default())
            .await?
            .into_inner()
            .faults,
    )
}

async fn get_connection(ch: &Channel, id: u64) -> Result<pb::Connection> {
    Ok(
        pb::output_service_client::OutputServiceClient::new(ch.clone())
            .get_connection(pb::ConnectionIdRequest { id })
            .await?
            .into_inner(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_met_by_one_node_shows_and_resumes_from_any_node() -> Result<()> {
    let cluster = TwoNodes::start("faults").await?;
    let (ch_a, ch_b) = (cluster.ch_a.clone(), cluster.ch_b.clone());
    let gold = create_tier_audience(&ch_a, "gold").await?;
    let producer = cluster.broker.producer()?;
    let now = engine_now(&ch_a).await?;
    produce_tier(&producer, &cluster.topics.events, now, 1..=24, "gold").await?;
    wait_processed(&ch_a, 12, Duration::from_secs(60)).await?;
    wait_processed(&ch_b, 12, Duration::from_secs(60)).await?;

    // The receiver refuses the first request (400: no retry), so the node that sent it faults
    // and the other delivers its partition.
    let (hook, url) = start_hook().await?;
    hook.script.lock().unwrap().push_back(Answer::Status(400));
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch_a.clone());
    let output = webhook(&mut outputs, "crm", &url, &["customer_id"], json!({})).await?;
    let connection = outputs
        .create_connection(pb::Connection {
            audience_id: gold.id,
            output_id: output.id,
            status: pb::ConnectionStatus::Sending as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let fault = loop {
        let faults = list_faults(&ch_a).await?;
        if let Some(f) = faults.first() {
            break f.clone();
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no fault listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(fault.status, 400, "{fault:?}");
    assert_eq!(fault.connection_id, connection.id);
    // Every node lists it and shows the connection faulted, with the node that met it.
    assert!(
        ["node-a", "node-b"].contains(&fault.node_id.as_str()),
        "{fault:?}"
    );
    assert_eq!(list_faults(&ch_b).await?, vec![fault.clone()]);
    let shown = cluster.b.ctl().args(["connection", "faults"]).output()?;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(&format!("on node {}:", fault.node_id)),
        "{text}"
    );
    for ch in [&ch_a, &ch_b] {
        let shown = get_connection(ch, connection.id).await?;
        assert!(shown.faulted, "{shown:?}");
        assert_eq!(shown.fault.as_ref(), Some(&fault));
    }
    let shown_output = outputs
        .get_output(pb::OutputIdRequest { id: output.id })
        .await?
        .into_inner();
    assert_eq!(shown_output.faulted_connections, 1);

    // Resumed through the node that did not meet it: the faulted node sends what it owes.
    let other = if fault.node_id == "node-a" {
        &ch_b
    } else {
        &ch_a
    };
    pb::output_service_client::OutputServiceClient::new(other.clone())
        .resume(pb::ConnectionIdRequest { id: connection.id })
        .await?;
    let everyone: Vec<i64> = (1..=24).collect();
    wait_for(
        "every member after the resume",
        Duration::from_secs(60),
        || members(&receiver_view(&hook)) == everyone,
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = get_connection(&ch_a, connection.id).await?;
        let figures = shown.figures.unwrap_or_default();
        let settled = !shown.faulted && figures.sent == 24 && figures.initial_sync_done;
        if settled && list_faults(&ch_b).await?.is_empty() {
            assert_eq!(figures.size, 24, "{figures:?}");
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the connection as the cluster shows it: {figures:?}, faulted {}",
            shown.faulted
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
