//! What operators and tools rely on: health checking, reflection (grpcurl), Prometheus metrics,
//! and the audience lifecycle (save as draft drops the members, activate brings them back, a
//! clone is a draft calculated when activated).

use audience_e2e::*;
use audience_proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_metrics_and_lifecycle() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("ops");
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "ops",
        &[("AUDIENCE_METRICS_LISTEN", &metrics_listen)],
    )?;
    let ch = engine.ready().await?;

    // Health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "audience.v1.AudienceService".into(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists every service, as grpcurl sees them.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(ch.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await?.and_then(|r| r.message_response)
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "audience.v1.AudienceService",
        "audience.v1.MembershipService",
        "audience.v1.ProfileService",
        "audience.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }

    // Lifecycle: a member, then save as draft (dropped), then activate (back).
    let gold = create_audience(&ch, "gold", serde_json::json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}})).await?;
    wait_active(&ch, gold.id).await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    produce_json(&producer, &topics.events, &sdk_batch(11, now, vec![])).await?;
    let added = collect_deltas(&ch, vec![gold.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!((added[0].mpid, added[0].version), (11, 1));
    // The join a message caused is timed, from its event and from its record.
    let stats = pb::membership_service_client::MembershipServiceClient::new(ch.clone())
        .get_audience_stats(pb::GetAudienceStatsRequest {
            audience_ids: vec![gold.id],
        })
        .await?
        .into_inner()
        .audiences
        .remove(0)
        .stats
        .unwrap_or_default();
    for (from, latency) in [
        ("event", stats.event_to_delta.unwrap_or_default()),
        ("produce", stats.produce_to_delta.unwrap_or_default()),
    ] {
        assert_eq!(latency.count, 1, "from {from}: {latency:?}");
        assert!(
            latency.p50_ms <= latency.p99_ms
                && latency.p99_ms < 60_000.0
                && latency.buckets.len() == 1,
            "from {from}: {latency:?}"
        );
    }
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let draft = audiences
        .save_as_draft(pb::AudienceIdRequest { id: gold.id })
        .await?
        .into_inner();
    assert_eq!(draft.status, pb::AudienceStatus::Draft as i32);
    let dropped = collect_deltas(
        &ch,
        vec![gold.id],
        &added[0].cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (dropped[0].mpid, dropped[0].kind, dropped[0].version),
        (11, pb::DeltaKind::Dropped as i32, 2)
    );
    let active = audiences
        .activate_audience(pb::AudienceIdRequest { id: gold.id })
        .await?
        .into_inner();
    // Active again: CALCULATING while its members are computed anew, then ACTIVE.
    assert!(
        [pb::AudienceStatus::Calculating, pb::AudienceStatus::Active]
            .map(|s| s as i32)
            .contains(&active.status),
        "{active:?}"
    );
    let back = collect_deltas(
        &ch,
        vec![gold.id],
        &dropped[0].cursor,
        Duration::from_secs(30),
        |d| !d.is_empty(),
    )
    .await?;
    assert_eq!(
        (back[0].mpid, back[0].kind, back[0].version),
        (11, pb::DeltaKind::Added as i32, 3)
    );
    let listed = audiences
        .list_audiences(pb::ListAudiencesRequest::default())
        .await?
        .into_inner()
        .audiences;
    assert_eq!(listed[0].stats.as_ref().map(|s| s.size), Some(1));

    // A clone is a draft with no members until it is activated; then it is calculated from
    // the stored profiles, as a new audience is.
    let copy = audiences
        .clone_audience(pb::CloneAudienceRequest {
            id: gold.id,
            name: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            copy.name.as_str(),
            copy.status,
            copy.criteria == gold.criteria
        ),
        ("Copy of gold", pb::AudienceStatus::Draft as i32, true),
        "{copy:?}"
    );
    let memberships = profile(&ch, 11).await?.audiences;
    assert!(!memberships.iter().any(|m| m.audience_id == copy.id));
    audiences
        .activate_audience(pb::AudienceIdRequest { id: copy.id })
        .await?;
    let joined = collect_deltas(&ch, vec![copy.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!((joined[0].mpid, joined[0].version), (11, 1));
    let err = audiences
        .clone_audience(pb::CloneAudienceRequest {
            id: 998,
            name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("998"), "{err:?}");
    audiences
        .delete_audience(pb::DeleteAudienceRequest { id: copy.id })
        .await?;

    // Deleting an unknown audience names it; deleting a real one removes it.
    let err = audiences
        .delete_audience(pb::DeleteAudienceRequest { id: 999 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("999"));
    audiences
        .delete_audience(pb::DeleteAudienceRequest { id: gold.id })
        .await?;
    assert!(profile(&ch, 11).await?.audiences.is_empty());

    // Prometheus: throughput, errors and audience figures, with bounded labels.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let body = http_get(metrics_port, "/metrics")?;
        if body.contains("audience_consumer_lag") || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for name in [
        "audience_messages_processed_total",
        "audience_deltas_emitted_total",
        "audience_consumer_lag",
        "audience_delta_latency_seconds{",
        "from=\"produce\"",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(!metrics.contains("mpid=\""), "no per-user labels");
    Ok(())
}
