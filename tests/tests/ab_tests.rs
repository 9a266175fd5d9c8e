//! A/B tests through the real broker and real HTTP receivers: an audience split 40/40/20,
//! each variation (Control included) and the whole audience connected to a webhook of its
//! own; each variation's receiver gets exactly its members under "[External Name] - [Variant
//! Name]", deltas carry the variation, a definition edit moves nobody between variations, and
//! deleting the test deletes its variations' connections (their receivers are told).

use audience_e2e::webhook::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const USERS: i64 = 300;

fn variation(name: &str, percent: u32) -> pb::AbVariation {
    pb::AbVariation {
        name: name.into(),
        percent,
    }
}

/// The MPIDs a receiver was ever sent, and those it holds as members now.
fn sent_and_members(hook: &Hook) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let view = receiver_view(hook);
    (
        view.keys().copied().collect(),
        members(&view).into_iter().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variation_reaches_its_own_output_and_an_edit_moves_nobody() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("abtests");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "abtests")?;
    let ch = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let lapsed = audiences
        .create_audience(pb::CreateAudienceRequest {
            name: "lapsed".into(),
            external_name: "Lapsed users".into(),
            criteria: Some(criteria(json!({"event": {"name": "play"}}))),
            ..Default::default()
        })
        .await?
        .into_inner();

    // Refusals name what is wrong: more than 100%, and a second test.
    let refused = audiences
        .create_ab_test(pb::CreateAbTestRequest {
            audience_id: lapsed.id,
            variations: vec![variation("Email", 60), variation("Push", 50)],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("variations[1].percent") && refused.message().contains("110%"),
        "{refused:?}"
    );
    let tested = audiences
        .create_ab_test(pb::CreateAbTestRequest {
            audience_id: lapsed.id,
            variations: vec![variation("Email", 40), variation("Push", 40)],
        })
        .await?
        .into_inner();
    let test = tested.ab_test.clone().expect("the audience shows its test");
    let split: Vec<(&str, u32)> = test
        .variations
        .iter()
        .map(|v| (v.name.as_str(), v.percent))
        .collect();
    assert_eq!(split, vec![("Email", 40), ("Push", 40), ("Control", 20)]);
    assert_eq!(
        tested.revision, lapsed.revision,
        "a test is no new definition"
    );
    let again = audiences
        .create_ab_test(pb::CreateAbTestRequest {
            audience_id: lapsed.id,
            variations: vec![variation("Email", 10)],
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");

    // A receiver per variation (named in any case) and one for the whole audience.
    let mut hooks = BTreeMap::new();
    let mut output_id = 0;
    for name in ["email", "PUSH", "Control", ""] {
        let (hook, url) = start_hook().await?;
        let output = webhook(
            &mut outputs,
            &format!("out {name}"),
            &url,
            &["email"],
            json!({}),
        )
        .await?;
        let connection = outputs
            .create_connection(pb::Connection {
                audience_id: lapsed.id,
                output_id: output.id,
                variation: name.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        hooks.insert(connection.variation.clone(), (hook, connection.id));
        output_id = output.id;
    }
    let names: Vec<&str> = hooks.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec!["", "Control", "Email", "Push"],
        "the test's spelling"
    );
    let unknown = outputs
        .create_connection(pb::Connection {
            audience_id: lapsed.id,
            output_id,
            variation: "SMS".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        unknown.message().contains("Email, Push, Control"),
        "{unknown:?}"
    );

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    for mpid in 1..=USERS {
        let tier = if mpid % 2 == 0 { "gold" } else { "silver" };
        let batch = json!({
            "mpid": mpid,
            "timestamp_unixtime_ms": now,
            "user_identities": {"email": format!("u{mpid}@example.com")},
            "user_attributes": {"tier": tier},
            "events": [custom_event("Play", "navigation", now, json!({}))]
        });
        produce_json(&producer, &topics.events, &batch).await?;
    }
    let whole = &hooks[""].0;
    wait_for(
        "every member at the whole audience's receiver",
        Duration::from_secs(60),
        || whole.added().len() == USERS as usize,
    )
    .await?;
    wait_for(
        "every member at its variation's receiver",
        Duration::from_secs(30),
        || {
            ["Email", "Push", "Control"]
                .iter()
                .map(|v| hooks[*v].0.added().len())
                .sum::<usize>()
                == USERS as usize
        },
    )
    .await?;

    // Each variation's receiver holds its members only, under its downstream name.
    let mut by_variation: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for v in ["Email", "Push", "Control"] {
        let hook = &hooks[v].0;
        let added = hook.added();
        for body in hook.accepted.lock().unwrap().iter() {
            assert_eq!(
                body["audience"]["name"],
                format!("Lapsed users - {v}"),
                "{body}"
            );
            assert_eq!(body["audience"]["variation"], v, "{body}");
            for item in body["items"].as_array().unwrap() {
                assert_eq!(item["variation"], v, "{item}");
            }
        }
        let share = added.len() as f64 / USERS as f64;
        let expected = if v == "Control" { 0.2 } else { 0.4 };
        assert!((share - expected).abs() < 0.1, "{v}: {share}");
        by_variation.insert(v.to_string(), added);
    }
    let all: BTreeSet<i64> = by_variation.values().flatten().copied().collect();
    assert_eq!(all.len(), USERS as usize, "the variations do not overlap");
    assert_eq!(all, whole.added());
    for body in whole.accepted.lock().unwrap().iter() {
        assert_eq!(body["audience"]["name"], "Lapsed users");
        assert!(body["audience"].get("variation").is_none(), "{body}");
    }

    // Deltas carry the member's variation.
    let deltas = collect_deltas(&ch, vec![lapsed.id], "", Duration::from_secs(20), |d| {
        d.len() >= USERS as usize
    })
    .await?;
    assert_eq!(deltas.len(), USERS as usize);
    for d in &deltas {
        assert!(by_variation[&d.variation].contains(&d.mpid), "{d:?}");
    }

    // A variation's connection counts its own members.
    let email = outputs
        .get_connection(pb::ConnectionIdRequest {
            id: hooks["Email"].1,
        })
        .await?
        .into_inner();
    assert_eq!(email.variation, "Email");
    assert_eq!(
        email.figures.unwrap_or_default().size,
        by_variation["Email"].len() as u64
    );

    // An edit keeping only gold users: silver members leave, each at the receiver of its
    // variation; nobody moves to another.
    audiences
        .update_audience(pb::UpdateAudienceRequest {
            id: lapsed.id,
            name: "lapsed".into(),
            external_name: "Lapsed users".into(),
            criteria: Some(criteria(json!({"and": [
                {"event": {"name": "play"}},
                {"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}
            ]}))),
            ..Default::default()
        })
        .await?;
    wait_active(&ch, lapsed.id).await?;
    wait_for(
        "the silver members dropped everywhere",
        Duration::from_secs(60),
        || {
            ["Email", "Push", "Control"].iter().all(|v| {
                let (_, members) = sent_and_members(&hooks[*v].0);
                members.iter().all(|m| m % 2 == 0)
            })
        },
    )
    .await?;
    for (v, before) in &by_variation {
        let (sent, members) = sent_and_members(&hooks[v.as_str()].0);
        assert_eq!(&sent, before, "{v}: the edit sent nobody new here");
        let gold: BTreeSet<i64> = before.iter().copied().filter(|m| m % 2 == 0).collect();
        assert_eq!(members, gold, "{v}");
    }
    let listed = audiences
        .get_audience(pb::GetAudienceRequest { id: lapsed.id })
        .await?
        .into_inner();
    assert_eq!(
        listed.ab_test.map(|t| t.id),
        Some(test.id),
        "the edit keeps the test"
    );

    // The CLI marks the audience and shows the test.
    let out = engine.ctl().args(["audience", "list"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("lapsed %"), "{text}");
    let out = engine
        .ctl()
        .args([
            "--output",
            "json",
            "audience",
            "test",
            "show",
            &lapsed.id.to_string(),
        ])
        .output()?;
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        shown["ab_test"]["variations"][2],
        json!({"name": "Control", "percent": 20})
    );

    // A clone copies the test's variations; its members split afresh (another test id).
    let copy = audiences
        .clone_audience(pb::CloneAudienceRequest {
            id: lapsed.id,
            name: String::new(),
        })
        .await?
        .into_inner();
    let copied = copy.ab_test.expect("the clone has the test");
    assert_eq!(copied.variations, test.variations);
    assert_ne!(copied.id, test.id);

    // Deleting the test deletes its variations' connections (their receivers are told, as of
    // a deleted audience named as the variation); the whole audience's stays.
    let ended = audiences
        .delete_ab_test(pb::AudienceIdRequest { id: lapsed.id })
        .await?
        .into_inner();
    assert!(ended.ab_test.is_none());
    let left = outputs
        .list_connections(pb::ListConnectionsRequest {
            audience_id: lapsed.id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .connections;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, hooks[""].1);
    wait_for(
        "the variations' receivers told",
        Duration::from_secs(10),
        || {
            ["Email", "Push", "Control"].iter().all(|v| {
                hooks[*v].0.accepted.lock().unwrap().iter().any(|b| {
                    b["type"] == "audience_deleted"
                        && b["audience"]["name"] == format!("Lapsed users - {v}")
                })
            })
        },
    )
    .await?;
    let out = engine.ctl().args(["audience", "list"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("{}  lapsed ", lapsed.id))
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!line.contains("lapsed %"), "{line}");
    assert!(
        text.contains("Copy of lapsed %"),
        "the clone keeps its test: {text}"
    );
    Ok(())
}
