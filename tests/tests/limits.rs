//! Every request is bounded (workspaces and access issue, item 5), each bound tried through the
//! real engine with the error a client sees: the size of a request message
//! (RESOURCE_EXHAUSTED naming `grpc.max_message_bytes`), a definition's depth, size and name
//! (INVALID_ARGUMENT naming the limit), the delta streams one token holds open
//! (RESOURCE_EXHAUSTED naming `grpc.max_subscribers_per_token`, the slot back once a stream
//! closes), and ListAudiences in pages (a page above the limit refused); the catalog's quotas
//! of audiences, calculated attributes, outputs, connections and API tokens
//! (RESOURCE_EXHAUSTED naming the setting, the slot back once one is deleted). The sample
//! sizes of estimates and previews are tried in `history.rs`; a stream its client does not
//! read, in `slow_subscriber.rs`.

use audience_e2e::*;
use audience_proto::v1 as pb;
use audience_services::auth::ClientOptions;
use std::time::{Duration, Instant};
use tonic::Code;

const OTHER: &str = "other-token-0123456789abcdef";

fn gold() -> serde_json::Value {
    serde_json::json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}})
}

async fn create(ch: &Channel, name: &str, crit: serde_json::Value) -> tonic::Status {
    pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .create_audience(pb::CreateAudienceRequest {
            name: name.into(),
            criteria: Some(criteria(crit)),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .expect_err("a request past a limit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_bounded_and_the_error_names_the_limit() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("limits");
    let dir = tempfile::tempdir()?;
    let tokens = format!("e2e={CLUSTER_TOKEN},other={OTHER}");
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "limits",
        &[
            ("AUDIENCE_TOKENS", &tokens),
            ("AUDIENCE_GRPC_MAX_MESSAGE_BYTES", "200000"),
            ("AUDIENCE_MAX_SUBSCRIBERS_PER_TOKEN", "2"),
        ],
    )?;
    let ch = engine.ready().await?;

    // A request message above grpc.max_message_bytes.
    let huge = serde_json::json!({"user_attribute": {"name": "tier", "op": "exact_match",
        "value": "x".repeat(300_000)}});
    let refused = create(&ch, "huge", huge).await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("grpc.max_message_bytes")
            && refused.message().contains("200000"),
        "{}",
        refused.message()
    );

    // A definition too deep, too large, or with a name too long.
    let deep = (0..12).fold(gold(), |inner, _| serde_json::json!({ "and": [inner] }));
    let refused = create(&ch, "deep", deep).await;
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("levels deep") && refused.message().contains("limit of 24"),
        "{}",
        refused.message()
    );
    let values: Vec<String> = (0..8_000).map(|i| format!("value-{i}")).collect();
    let large =
        serde_json::json!({"user_attribute": {"name": "tier", "op": "in", "values": values}});
    let refused = create(&ch, "large", large).await;
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("65536 bytes"),
        "{}",
        refused.message()
    );
    let refused = create(&ch, &"n".repeat(300), gold()).await;
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("name") && refused.message().contains("limit of 256"),
        "{}",
        refused.message()
    );

    // ListAudiences in pages, in id order; a page above the limit is refused.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create_audience(&ch, &format!("page {i}"), gold()).await?.id);
    }
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let mut page_token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = audiences
            .list_audiences(pb::ListAudiencesRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        pages.push(page.audiences.iter().map(|a| a.id).collect::<Vec<_>>());
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), ids);
    let too_big = audiences
        .list_audiences(pb::ListAudiencesRequest {
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .expect_err("a page above the limit");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(too_big.message().contains("1000"), "{}", too_big.message());
    let out = engine.ctl().args(["audience", "list"]).output()?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);

    // At most two delta streams per token; another token has its own; a closed stream gives
    // its slot back.
    let subscribe = |token: &str| {
        let options = ClientOptions {
            token: Some(token.to_string()),
            ..ClientOptions::default()
        };
        let grpc = engine.grpc.clone();
        async move {
            let ch = options.connect(&grpc).await?;
            let answer = pb::membership_service_client::MembershipServiceClient::new(ch)
                .subscribe(pb::SubscribeRequest::default())
                .await;
            Ok::<_, anyhow::Error>(answer.map(|r| r.into_inner()))
        }
    };
    let first = subscribe(CLUSTER_TOKEN).await??;
    let _second = subscribe(CLUSTER_TOKEN).await??;
    let third = subscribe(CLUSTER_TOKEN)
        .await?
        .expect_err("a third stream of one token");
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert!(
        third.message().contains("max_subscribers_per_token = 2")
            && third.message().contains("'e2e'"),
        "{}",
        third.message()
    );
    let _others = subscribe(OTHER).await??;
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match subscribe(CLUSTER_TOKEN).await? {
            Ok(_again) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => anyhow::bail!("the closed stream's slot never came back: {e}"),
        }
    }
    Ok(())
}

fn spend(name: &str) -> pb::CalculatedAttribute {
    pb::CalculatedAttribute {
        definition: Some(criteria(
            serde_json::json!({"name": name, "calculation": "sum",
            "field": "total_amount", "window_days": 7,
            "event": {"type": "commerce_event", "product_action": "purchase"}}),
        )),
        ..Default::default()
    }
}

/// Refused as past a quota, naming its setting and its value.
fn past_quota<T: std::fmt::Debug>(answer: std::result::Result<T, tonic::Status>, setting: &str) {
    let refused = answer.expect_err("one past the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains(setting), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_holds_at_most_its_quotas() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("quotas");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "quotas",
        &[
            ("AUDIENCE_MAX_AUDIENCES", "2"),
            ("AUDIENCE_MAX_CALCULATED_ATTRIBUTES", "1"),
            ("AUDIENCE_MAX_OUTPUTS", "1"),
            ("AUDIENCE_MAX_CONNECTIONS", "1"),
            ("AUDIENCE_MAX_API_TOKENS", "1"),
        ],
    )?;
    let ch = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    // API tokens (the configuration's aside).
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    let token = |name: &str| pb::CreateTokenRequest {
        name: name.into(),
        scopes: vec!["read".into()],
        ..Default::default()
    };
    admin.create_token(token("ci")).await?;
    past_quota(
        admin.create_token(token("ops")).await,
        "engine.max_api_tokens (1)",
    );
    let first = create_audience(&ch, "first", gold()).await?;
    let second = create_audience(&ch, "second", gold()).await?;
    past_quota(
        create_audience(&ch, "third", gold())
            .await
            .map_err(|e| e.downcast::<tonic::Status>().expect("a status")),
        "engine.max_audiences (2)",
    );
    audiences
        .delete_audience(pb::DeleteAudienceRequest { id: second.id })
        .await?;
    create_audience(&ch, "third", gold()).await?;

    audiences.put_calculated_attribute(spend("spend")).await?;
    // Redefining one is no new one.
    audiences.put_calculated_attribute(spend("Spend")).await?;
    past_quota(
        audiences.put_calculated_attribute(spend("other")).await,
        "engine.max_calculated_attributes (1)",
    );

    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let (_hook, url) = audience_e2e::webhook::start_hook().await?;
    let output = audience_e2e::webhook::webhook(
        &mut outputs,
        "one",
        &url,
        &["email"],
        serde_json::json!({}),
    )
    .await?;
    past_quota(
        audience_e2e::webhook::webhook(
            &mut outputs,
            "two",
            &url,
            &["email"],
            serde_json::json!({}),
        )
        .await
        .map_err(|e| e.downcast::<tonic::Status>().expect("a status")),
        "engine.max_outputs (1)",
    );
    connect(&ch, first.id, output.id).await?;
    let third = audiences
        .list_audiences(pb::ListAudiencesRequest::default())
        .await?
        .into_inner()
        .audiences
        .into_iter()
        .find(|a| a.name == "third")
        .expect("the third audience");
    past_quota(
        connect(&ch, third.id, output.id)
            .await
            .map_err(|e| e.downcast::<tonic::Status>().expect("a status")),
        "engine.max_connections (1)",
    );

    // The definitions' lists come in pages.
    let too_big = outputs
        .list_outputs(pb::ListOutputsRequest {
            page_size: 1_001,
            ..Default::default()
        })
        .await
        .expect_err("a page above the limit");
    assert_eq!(too_big.code(), Code::InvalidArgument);
    assert!(too_big.message().contains("1000"), "{too_big:?}");
    for name in ["a/b", "checkout", "search"] {
        audiences
            .set_event_tier(pb::EventTier {
                event_type: "custom_event".into(),
                name: name.into(),
                tier: "personalize".into(),
            })
            .await?;
    }
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audiences
            .list_event_tiers(pb::ListEventTiersRequest {
                page_size: 2,
                page_token,
            })
            .await?
            .into_inner();
        assert!(page.tiers.len() <= 2);
        names.extend(page.tiers.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, vec!["a/b", "checkout", "search"]);
    Ok(())
}
