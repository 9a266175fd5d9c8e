//! Inputs that are Kafka topics of their own, through the real broker (README: "Workspaces and
//! inputs"): the engine reads every topic an input claims beside the events and the identities
//! topics, stamps each message with the input of its topic, keeps its position in each topic
//! with the partition's state (a restart reads on, never again), and refuses to start when a
//! claimed topic is not co-partitioned with the events topic.

use audience_e2e::workspaces::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// How many Play events `mpid`'s profile holds.
async fn plays(ch: &Channel, mpid: i64) -> Result<u64> {
    Ok(profile(ch, mpid)
        .await?
        .events
        .iter()
        .find(|e| e.event_key.starts_with("custom_event:play"))
        .map_or(0, |e| e.count_in_retention))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_topic_is_read_stamped_and_resumed() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("topic-inputs");
    broker.create_deployment_topics(&topics, 2).await?;
    // The partner topic is not created here: the engine creates what it reads.
    let partner = "topic-inputs-partner";
    let inputs = format!(
        "app@app-a:topic={};partner@app-b:topic={partner}",
        topics.events
    );
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "topic-inputs",
        &[("AUDIENCE_INPUTS", &inputs)],
    )?;
    let ch = engine.ready().await?;
    let listed = pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .list_inputs(pb::ListInputsRequest {})
        .await?
        .into_inner();
    let claimed: Vec<(&str, &str)> = listed
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.topic.as_str()))
        .collect();
    assert_eq!(
        claimed,
        vec![("app", topics.events.as_str()), ("partner", partner)]
    );

    let play_twice = json!({"event": {"type": "custom_event", "name": "Play",
        "count": {"at_least": 2}}});
    let partner_twice =
        create_scoped(&ch, "partner twice", play_twice.clone(), &[], &["partner"]).await?;
    let app_players = create_scoped(
        &ch,
        "app players",
        json!({"event": {"type": "custom_event", "name": "Play"}}),
        &["app-a"],
        &[],
    )
    .await?;
    let anywhere_twice = create_audience(&ch, "twice anywhere", play_twice).await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let to_partner = [
        batch(201, now, None, 2, json!({})),
        batch(202, now, None, 1, json!({})),
        batch(
            203,
            now,
            None,
            0,
            json!({"user_identities": {"email": "a203@example.com"}}),
        ),
    ];
    let to_events = [
        batch(202, now, None, 1, json!({})),
        batch(203, now, None, 2, json!({})),
    ];
    for m in &to_partner {
        produce_json(&producer, partner, m).await?;
    }
    for m in &to_events {
        produce_json(&producer, &topics.events, m).await?;
    }
    wait_processed(&ch, 5, Duration::from_secs(60)).await?;
    let users = [201, 202, 203];
    assert_eq!(
        members_of(&ch, partner_twice.id, &users).await?,
        BTreeSet::from([201]),
        "202 played once through each topic"
    );
    assert_eq!(
        members_of(&ch, app_players.id, &users).await?,
        BTreeSet::from([202, 203])
    );
    assert_eq!(
        members_of(&ch, anywhere_twice.id, &users).await?,
        BTreeSet::from([201, 202, 203])
    );
    assert_eq!(
        profile(&ch, 203).await?.workspaces,
        vec!["app-a".to_string(), "app-b".to_string()],
        "seen through both topics"
    );
    assert_eq!(plays(&ch, 201).await?, 2);

    // A restart reads the partner topic on from where the state stands, not again.
    engine.restart()?;
    let ch = engine.ready().await?;
    produce_json(&producer, partner, &batch(202, now, None, 1, json!({}))).await?;
    wait_processed(&ch, 1, Duration::from_secs(60)).await?;
    assert_eq!(
        members_of(&ch, partner_twice.id, &users).await?,
        BTreeSet::from([201, 202])
    );
    assert_eq!(plays(&ch, 201).await?, 2, "nothing read twice");
    assert_eq!(plays(&ch, 202).await?, 3);
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");

    // A claimed topic of another partition count would split profiles: refused at start.
    let odd = "topic-inputs-odd";
    broker.create_topics(&[odd], 3).await?;
    let mut refused = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("refused"),
        "topic-inputs-refused",
        &[("AUDIENCE_INPUTS", &format!("odd@app-c:topic={odd}"))],
    )?;
    assert_ne!(refused.wait_exit(Duration::from_secs(60))?, Some(0));
    let log = refused.plain_log_text();
    assert!(
        log.contains(&format!(
            "input topic {odd} has 3 partitions and the events topic {} has 2",
            topics.events
        )),
        "{log}"
    );
    Ok(())
}
