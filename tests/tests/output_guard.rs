//! Outputs cannot reach inside the engine's network (security baseline, REVIEW S1 to S6):
//! with `outputs.allow_private` off, a webhook or Kafka output naming a loopback, private,
//! link-local (cloud metadata) or IPv4-mapped address, or a name that resolves to one, is
//! refused with the reason; a URL with credentials is refused without repeating them. With it
//! on (receivers on 127.0.0.1), a redirect is a fault and is not followed, and a fault keeps a
//! short excerpt of a 4xx body only: an internal page answered with a 5xx is never read back.

use audience_e2e::*;
use audience_proto::v1 as pb;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Outputs = pb::output_service_client::OutputServiceClient<Channel>;

async fn create(
    outputs: &mut Outputs,
    kind: &str,
    settings: serde_json::Value,
) -> Result<pb::OutputConfig, tonic::Status> {
    outputs
        .create_output(pb::OutputConfig {
            name: format!("{kind} output"),
            kind: kind.into(),
            settings: Some(criteria(settings)),
            accepted_identities: vec!["email".into()],
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_into_the_engines_network_are_refused() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("guard");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "guard",
        &[("AUDIENCE_OUTPUTS_ALLOW_PRIVATE", "false")],
    )?;
    let ch = engine.ready().await?;
    let mut outputs = Outputs::new(ch.clone());
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.7]/hook",
        "http://10.0.0.7/hook",
        "http://192.168.1.20/hook",
    ] {
        let refused = create(&mut outputs, "webhook", json!({"url": url}))
            .await
            .expect_err(url);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}");
        assert!(
            refused.message().contains("settings.url")
                && refused.message().contains("outputs.allow_private"),
            "{url}: {}",
            refused.message()
        );
    }
    let refused = create(
        &mut outputs,
        "kafka",
        json!({"bootstrap_servers": "8.8.8.8:9092,127.0.0.1:9092", "topic": "t"}),
    )
    .await
    .expect_err("a loopback broker");
    assert!(
        refused.message().contains("settings.bootstrap_servers"),
        "{}",
        refused.message()
    );
    let refused = create(
        &mut outputs,
        "webhook",
        json!({"url": "https://admin:hunter2@hooks.example.com/x"}),
    )
    .await
    .expect_err("credentials in the url");
    assert!(
        refused.message().contains("secrets") && !refused.message().contains("hunter2"),
        "{}",
        refused.message()
    );
    assert!(
        !engine.log_text().contains("hunter2"),
        "nor does the log repeat it"
    );
    // A public address is accepted (nothing is sent until a connection exists).
    create(
        &mut outputs,
        "webhook",
        json!({"url": "https://93.184.215.14/hook"}),
    )
    .await
    .map_err(|s| anyhow::anyhow!("a public address: {s}"))?;
    assert_eq!(engine.terminate()?, Some(0));
    Ok(())
}

/// A receiver answering each request with the next of `answers`, then 200.
async fn scripted(answers: Vec<(u16, String, String)>) -> Result<(String, Arc<AtomicUsize>)> {
    let answers = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        answers,
    )));
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let answers = answers.clone();
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                match answers.lock().unwrap().pop_front() {
                    Some((status, location, body)) => (
                        StatusCode::from_u16(status).unwrap(),
                        [("location", location)],
                        body,
                    )
                        .into_response(),
                    None => StatusCode::OK.into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, requests))
}

async fn fault_of(outputs: &mut Outputs, connection_id: u64) -> Result<pb::Fault> {
    for _ in 0..150 {
        let faults = outputs
            .list_faults(pb::ListFaultsRequest::default())
            .await?
            .into_inner()
            .faults;
        if let Some(fault) = faults
            .into_iter()
            .find(|f| f.connection_id == connection_id)
        {
            return Ok(fault);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("connection {connection_id} never faulted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_faults_and_faults_read_back_only_a_4xx_excerpt() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("readback");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "readback")?;
    let ch = engine.ready().await?;
    let players = create_audience(&ch, "players", json!({"event": {"name": "play"}})).await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let mut member = sdk_batch(
        7,
        now,
        vec![custom_event("play", "navigation", now, json!({}))],
    );
    member["user_identities"] = json!({"email": "seven@example.com"});
    produce_json(&producer, &topics.events, &member).await?;
    collect_deltas(&ch, vec![players.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;

    let (elsewhere, elsewhere_requests) = scripted(vec![]).await?;
    let internal_page = "<h1>admin console</h1> db password: s3cr3t";
    let answer =
        |status: u16, location: &str, body: &str| (status, location.to_string(), body.to_string());
    let cases = vec![
        (
            vec![answer(307, &elsewhere, "")],
            "redirects are not followed",
            "",
        ),
        (vec![answer(500, "", internal_page); 2], "HTTP 500", ""),
        (
            vec![answer(422, "", "field email: not an address")],
            "HTTP 422",
            "field email: not an address",
        ),
    ];
    let mut outputs = Outputs::new(ch.clone());
    for (answers, message, excerpt) in cases {
        let (url, _) = scripted(answers).await?;
        let output = create(
            &mut outputs,
            "webhook",
            json!({"url": url, "max_attempts": 2, "backoff_ms": 20, "linger_ms": 20}),
        )
        .await?;
        let connection = connect(&ch, players.id, output.id).await?;
        let fault = fault_of(&mut outputs, connection.id).await?;
        assert!(
            fault.message.contains(message),
            "{message}: {}",
            fault.message
        );
        assert_eq!(fault.body_excerpt, excerpt, "{message}");
    }
    assert_eq!(
        elsewhere_requests.load(Ordering::SeqCst),
        0,
        "the redirect's target never heard of the members"
    );
    assert_eq!(engine.terminate()?, Some(0));
    Ok(())
}

/// A webhook URL's query values (an API key often travels there) are shown and listed
/// redacted, by the API and by `audiencectl`, never logged; an update that sends the URL back
/// as shown keeps the stored one, and the receiver still gets the real query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_key_is_shown_redacted_and_still_sent() -> Result<()> {
    const KEY: &str = "k3y-0f-the-receiver";
    let broker = Broker::start()?;
    let topics = Topics::unique("querykey");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "querykey")?;
    let ch = engine.ready().await?;
    let queries = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = queries.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |query: axum::extract::RawQuery| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(query.0.unwrap_or_default());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/hook?api_key={KEY}&region=eu",
        listener.local_addr()?
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut outputs = Outputs::new(ch.clone());
    let created = create(
        &mut outputs,
        "webhook",
        json!({"url": url, "linger_ms": 20}),
    )
    .await
    .map_err(|s| anyhow::anyhow!("create: {s}"))?;
    let shown_url = |o: &pb::OutputConfig| {
        o.settings
            .as_ref()
            .and_then(|s| s.fields.get("url"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(u)) => Some(u.clone()),
                _ => None,
            })
    };
    let shown = outputs
        .get_output(pb::OutputIdRequest { id: created.id })
        .await?
        .into_inner();
    let redacted = shown_url(&shown).expect("a url");
    assert!(
        redacted.ends_with("/hook?api_key=********&region=********"),
        "{redacted}"
    );
    for o in outputs
        .list_outputs(pb::ListOutputsRequest::default())
        .await?
        .into_inner()
        .outputs
    {
        assert!(!format!("{o:?}").contains(KEY), "{o:?}");
    }
    let listed = engine
        .ctl()
        .args(["-o", "json", "output", "list"])
        .output()?;
    assert!(listed.status.success(), "{listed:?}");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(KEY));

    // Sent back as shown, with a new name: the stored url stays.
    let renamed = outputs
        .update_output(pb::OutputConfig {
            name: "renamed".into(),
            ..shown
        })
        .await?
        .into_inner();
    assert_eq!(renamed.name, "renamed");
    assert_eq!(shown_url(&renamed), Some(redacted));

    // The receiver gets the real query.
    let players = create_audience(&ch, "players", json!({"event": {"name": "play"}})).await?;
    let now = engine_now(&ch).await?;
    let mut member = sdk_batch(
        7,
        now,
        vec![custom_event("play", "navigation", now, json!({}))],
    );
    member["user_identities"] = json!({"email": "seven@example.com"});
    produce_json(&broker.producer()?, &topics.events, &member).await?;
    connect(&ch, players.id, created.id).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while queries.lock().unwrap().is_empty() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        queries.lock().unwrap()[0],
        format!("api_key={KEY}&region=eu")
    );
    assert!(!engine.log_text().contains(KEY), "the log shows the key");
    assert_eq!(engine.terminate()?, Some(0));
    Ok(())
}
