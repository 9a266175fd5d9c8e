//! Workspaces and inputs through the real broker (the seed's "Workspaces, inputs, and audience
//! criteria"): three inputs of two workspaces, told apart by the JSON batches'
//! `context.source`. An audience scoped to input `ios` of workspace `app-a` counts only the
//! events of `ios`, yet reads the email collected through `web` of the same workspace, and
//! never holds a profile seen only in `app-b`; its output gets the identities collected in
//! `app-b` too. Audiences created after the data are computed over the event log, which
//! keeps each message's input. Lists filter by workspace and by single or multi workspace.

use audience_e2e::webhook::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const INPUTS: &str = "ios@app-a:source=ios;web@app-a:source=web;partner@app-b:source=partner";

/// A batch through `source` (`None`: unstamped), with `plays` Play events.
fn batch(mpid: i64, now: i64, source: Option<&str>, plays: usize, extra: Value) -> Value {
    let mut b = json!({
        "mpid": mpid,
        "timestamp_unixtime_ms": now,
        "events": (0..plays)
            .map(|i| custom_event("Play", "navigation", now - i as i64, json!({})))
            .collect::<Vec<_>>(),
    });
    if let Some(source) = source {
        b["context"] = json!({"source": source});
    }
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

async fn create_scoped(
    ch: &Channel,
    name: &str,
    criteria_json: Value,
    workspaces: &[&str],
    inputs: &[&str],
) -> std::result::Result<pb::Audience, tonic::Status> {
    pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .create_audience(pb::CreateAudienceRequest {
            name: name.into(),
            criteria: Some(criteria(criteria_json)),
            workspaces: workspaces.iter().map(|w| w.to_string()).collect(),
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Waits until the audience is calculated (ACTIVE), then its members among `mpids`.
async fn members_of(ch: &Channel, id: u64, mpids: &[i64]) -> Result<BTreeSet<i64>> {
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = client
            .get_audience(pb::GetAudienceRequest { id })
            .await?
            .into_inner();
        if a.status == pb::AudienceStatus::Active as i32 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "audience {id} still calculating"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = BTreeSet::new();
    for &mpid in mpids {
        if memberships(ch, mpid).await?.iter().any(|(a, _)| *a == id) {
            out.insert(mpid);
        }
    }
    Ok(out)
}

async fn listed(ch: &Channel, workspace: &str, kind: pb::WorkspaceKind) -> Result<Vec<String>> {
    let page = pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .list_audiences(pb::ListAudiencesRequest {
            workspace: workspace.into(),
            workspace_kind: kind as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page.audiences.into_iter().map(|a| a.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_read_their_workspaces_and_inputs() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspaces");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "workspaces",
        &[
            ("AUDIENCE_INPUTS", INPUTS),
            ("AUDIENCE_SOURCE_FIELD", "context.source"),
        ],
    )?;
    let ch = engine.ready().await?;

    let inputs = pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .list_inputs(pb::ListInputsRequest {})
        .await?
        .into_inner();
    assert_eq!(inputs.source_field, "context.source");
    let names: Vec<(&str, &str)> = inputs
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.workspace.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("ios", "app-a"), ("web", "app-a"), ("partner", "app-b")]
    );

    // Refusals name the field and what is known.
    let unknown = create_scoped(
        &ch,
        "x",
        json!({"event": {"name": "Play"}}),
        &["app-z"],
        &[],
    )
    .await
    .expect_err("an unknown workspace is refused");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown.message().contains("workspaces[0]")
            && unknown.message().contains("unknown workspace \"app-z\""),
        "{}",
        unknown.message()
    );
    let unknown = create_scoped(&ch, "x", json!({"event": {"name": "Play"}}), &[], &["tv"])
        .await
        .expect_err("an unknown input is refused");
    assert!(
        unknown.message().contains("inputs[0]"),
        "{}",
        unknown.message()
    );

    // Defined before the data: computed as messages stream in.
    let play_once = json!({"event": {"type": "custom_event", "name": "Play"}});
    let play_twice = json!({"event": {"type": "custom_event", "name": "Play",
        "count": {"at_least": 2}}});
    let ios_players = create_scoped(
        &ch,
        "ios players with an email",
        json!({"and": [play_once, {"identity": {"type": "email", "op": "exists"}}]}),
        &[],
        &["ios"],
    )
    .await?;
    assert_eq!(ios_players.workspaces, vec!["app-a".to_string()]);
    assert_eq!(ios_players.inputs, vec!["ios".to_string()]);
    let b_non_buyers = create_scoped(
        &ch,
        "app-b non buyers",
        json!({"exclude": {"event": {"type": "commerce_event", "product_action": "purchase"}}}),
        &["app-b"],
        &[],
    )
    .await?;
    let everywhere_twice =
        create_audience(&ch, "played twice anywhere", play_twice.clone()).await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let messages = [
        // 101: plays once on iOS, gives its email on the web, and plays once with its other
        // device's IDFA through the partner feed of app-b.
        batch(101, now, Some("ios"), 1, json!({})),
        batch(
            101,
            now,
            Some("web"),
            0,
            json!({"user_identities": {"email": "a101@example.com"}}),
        ),
        batch(
            101,
            now,
            Some("partner"),
            1,
            json!({"device_info": {"ios_advertising_id": "IDFA-B-101"}}),
        ),
        // 102: plays twice on the web, with an email.
        batch(
            102,
            now,
            Some("web"),
            2,
            json!({"user_identities": {"email": "a102@example.com"}}),
        ),
        // 103: plays through the partner feed only; 104 through no input.
        batch(
            103,
            now,
            Some("partner"),
            1,
            json!({"user_identities": {"email": "a103@example.com"}}),
        ),
        batch(
            104,
            now,
            None,
            2,
            json!({"user_identities": {"email": "a104@example.com"}}),
        ),
    ];
    for m in &messages {
        produce_json(&producer, &topics.events, m).await?;
    }
    wait_processed(&ch, messages.len() as u64, Duration::from_secs(60)).await?;
    let users = [101, 102, 103, 104];

    assert_eq!(
        members_of(&ch, ios_players.id, &users).await?,
        BTreeSet::from([101]),
        "events of ios only, the email of the workspace"
    );
    assert_eq!(
        members_of(&ch, b_non_buyers.id, &users).await?,
        BTreeSet::from([101, 103]),
        "only profiles seen in app-b"
    );
    assert_eq!(
        members_of(&ch, everywhere_twice.id, &users).await?,
        BTreeSet::from([101, 102, 104]),
        "without a scope, every message counts"
    );
    let p = profile(&ch, 101).await?;
    assert_eq!(p.workspaces, vec!["app-a".to_string(), "app-b".to_string()]);
    assert!(profile(&ch, 104).await?.workspaces.is_empty());

    // Defined after the data: computed over the event log, which kept each message's input.
    let ios_twice = create_scoped(&ch, "ios twice", play_twice.clone(), &[], &["ios"]).await?;
    let web_twice = create_scoped(&ch, "web twice", play_twice.clone(), &[], &["web"]).await?;
    let both_workspaces = create_scoped(
        &ch,
        "players of both apps",
        play_once.clone(),
        &["app-a", "app-b"],
        &[],
    )
    .await?;
    assert_eq!(
        members_of(&ch, ios_twice.id, &users).await?,
        BTreeSet::new(),
        "101 played once on iOS and once through the partner feed"
    );
    assert_eq!(
        members_of(&ch, web_twice.id, &users).await?,
        BTreeSet::from([102])
    );
    assert_eq!(
        members_of(&ch, both_workspaces.id, &users).await?,
        BTreeSet::from([101, 102, 103]),
        "an unstamped message belongs to no workspace"
    );

    // Lists: by workspace, single and multi workspace.
    let single = listed(&ch, "", pb::WorkspaceKind::SingleWorkspace).await?;
    assert_eq!(
        single,
        vec![
            "ios players with an email",
            "app-b non buyers",
            "ios twice",
            "web twice"
        ]
    );
    assert_eq!(
        listed(&ch, "", pb::WorkspaceKind::MultiWorkspace).await?,
        vec!["players of both apps"]
    );
    assert_eq!(
        listed(&ch, "app-b", pb::WorkspaceKind::Unspecified).await?,
        vec!["app-b non buyers", "players of both apps"]
    );

    // Forwarding sends every accepted identity of a member, those collected in app-b too.
    let (hook, url) = start_hook().await?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let output = webhook(
        &mut outputs,
        "ads",
        &url,
        &["email", "ios_advertising_id"],
        json!({}),
    )
    .await?;
    connect(&ch, ios_players.id, output.id).await?;
    wait_for("101 on the output", Duration::from_secs(30), || {
        members(&receiver_view(&hook)) == vec![101]
    })
    .await?;
    assert_eq!(
        receiver_view(&hook)[&101].2["identities"],
        json!({"email": ["a101@example.com"], "ios_advertising_id": ["IDFA-B-101"]})
    );
    Ok(())
}
