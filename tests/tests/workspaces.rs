//! Workspaces and inputs through the real broker (the seed's "Workspaces, inputs, and audience
//! criteria"): three inputs of two workspaces, told apart by the JSON batches'
//! `context.source`. An audience scoped to input `ios` of workspace `app-a` counts only the
//! events of `ios`, yet reads the email collected through `web` of the same workspace, and
//! never holds a profile seen only in `app-b`; its output gets the identities collected in
//! `app-b` too. Audiences created after the data are computed over the event log, which
//! keeps each message's input. Lists filter by workspace and by single or multi workspace.

use audience_e2e::webhook::*;
use audience_e2e::workspaces::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_read_their_workspaces_and_inputs() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspaces");
    let dir = tempfile::tempdir()?;
    let mut engine = start_engine(&broker, &topics, dir.path(), "workspaces", &[])?;
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
    // audiencectl filters the same way: one line per audience, naming it.
    let cli = |args: &[&str]| -> Result<Vec<String>> {
        let out = engine
            .ctl()
            .args(["audience", "list"])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    };
    let named = |lines: &[String], names: &[&str]| {
        lines.len() == names.len() && names.iter().all(|n| lines.iter().any(|l| l.contains(n)))
    };
    let multi = cli(&["--kind", "multi"])?;
    assert!(named(&multi, &["players of both apps"]), "{multi:?}");
    let single = cli(&["--kind", "single"])?;
    assert!(
        named(
            &single,
            &[
                "ios players with an email",
                "app-b non buyers",
                "ios twice",
                "web twice"
            ]
        ),
        "{single:?}"
    );
    let of_b = cli(&["--workspace", "app-b"])?;
    assert!(
        named(&of_b, &["app-b non buyers", "players of both apps"]),
        "{of_b:?}"
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

/// A token limited to workspace app-b: it sees app-b's audiences and the profiles seen in
/// app-b, and nothing of app-a's; it saves and subscribes within app-b only, and calls none of
/// what every workspace shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_token_sees_only_its_workspace() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspace-tokens");
    let dir = tempfile::tempdir()?;
    let mut engine = start_engine(
        &broker,
        &topics,
        dir.path(),
        "workspace-tokens",
        &[("b", TOKEN_B, "read+write+subscribe+workspace:app-b")],
    )?;
    let admin = engine.ready().await?;
    let b = connect_as(&engine, TOKEN_B).await?;

    let play = json!({"event": {"type": "custom_event", "name": "Play"}});
    let ios = create_scoped(&admin, "ios players", play.clone(), &[], &["ios"]).await?;
    let partner = create_scoped(&admin, "partner players", play.clone(), &["app-b"], &[]).await?;
    let everywhere = create_audience(&admin, "players", play.clone()).await?;
    let producer = broker.producer()?;
    let now = engine_now(&admin).await?;
    let messages = [
        batch(201, now, Some("ios"), 1, json!({})),
        batch(202, now, Some("ios"), 1, json!({})),
        batch(202, now, Some("partner"), 1, json!({})),
    ];
    for m in &messages {
        produce_json(&producer, &topics.events, m).await?;
    }
    wait_processed(&admin, messages.len() as u64, Duration::from_secs(60)).await?;
    assert_eq!(
        members_of(&admin, partner.id, &[201, 202]).await?,
        BTreeSet::from([202])
    );

    // Profiles: one seen only in app-a is as absent; one seen in app-b shows the memberships
    // of app-b's audiences only.
    let hidden = profile(&b, 201).await.unwrap_err();
    let hidden = hidden.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
    let seen = profile(&b, 202).await?;
    let shown: Vec<u64> = seen.audiences.iter().map(|m| m.audience_id).collect();
    assert_eq!(shown, vec![partner.id]);
    assert_eq!(
        memberships(&admin, 202).await?.len(),
        3,
        "the admin token sees all"
    );
    let explain = pb::profile_service_client::ProfileServiceClient::new(b.clone())
        .explain(pb::ExplainRequest {
            mpid: 202,
            audience_id: ios.id,
        })
        .await
        .unwrap_err();
    assert_eq!(explain.code(), tonic::Code::NotFound);

    // Audiences: app-b's only; an unscoped one reads every workspace.
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(b.clone());
    assert_eq!(
        listed(&b, "", pb::WorkspaceKind::Unspecified).await?,
        vec!["partner players"]
    );
    for id in [ios.id, everywhere.id] {
        let absent = audiences
            .get_audience(pb::GetAudienceRequest { id })
            .await
            .unwrap_err();
        assert_eq!(absent.code(), tonic::Code::NotFound);
        assert_eq!(absent.message(), format!("audience {id} not found"));
        let untouched = audiences
            .delete_audience(pb::DeleteAudienceRequest { id })
            .await
            .unwrap_err();
        assert_eq!(untouched.code(), tonic::Code::NotFound);
    }
    for (workspaces, inputs) in [
        (vec!["app-a"], vec![]),
        (vec![], vec!["ios"]),
        (vec![], vec![]),
    ] {
        let refused = create_scoped(&b, "outside", play.clone(), &workspaces, &inputs)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("limited to workspace app-b"),
            "{refused:?}"
        );
    }
    let own = create_scoped(&b, "partner twice", play.clone(), &[], &["partner"]).await?;
    assert_eq!(own.created_by, "b");
    let inputs = audiences
        .list_inputs(pb::ListInputsRequest {})
        .await?
        .into_inner();
    assert_eq!(
        inputs
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        vec!["partner"]
    );

    // Deltas: of app-b's audiences, named.
    let mut membership = pb::membership_service_client::MembershipServiceClient::new(b.clone());
    let subscribe = |ids: Vec<u64>| pb::SubscribeRequest {
        audience_ids: ids,
        cursor: String::new(),
        subscriber_name: "b".into(),
    };
    let refused = membership
        .subscribe(subscribe(vec![ios.id]))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("audience_ids[0]"), "{refused:?}");
    let refused = membership.subscribe(subscribe(vec![])).await.err().unwrap();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let deltas = collect_deltas(&b, vec![partner.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!(
        deltas
            .iter()
            .map(|d| (d.audience_id, d.mpid))
            .collect::<Vec<_>>(),
        vec![(partner.id, 202)]
    );

    // What every workspace shares is out of its reach.
    let outputs = pb::output_service_client::OutputServiceClient::new(b.clone())
        .list_outputs(pb::ListOutputsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(outputs.code(), tonic::Code::PermissionDenied);
    assert!(
        outputs
            .message()
            .contains("token 'b' is limited to workspace app-b"),
        "{outputs:?}"
    );
    Ok(())
}

/// The seed's Access column: an audience of app-a, private, view only or usable, as a token of
/// app-b finds it. Shared ones are listed ("shared with me") and read; only a usable one is
/// subscribed to and referenced; none is changed but by its owners; a private one is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_audiences_are_seen_and_used_as_their_access_says() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspace-access");
    let dir = tempfile::tempdir()?;
    let mut engine = start_engine(
        &broker,
        &topics,
        dir.path(),
        "workspace-access",
        &[
            ("a", TOKEN_A, "read+write+subscribe+workspace:app-a"),
            ("b", TOKEN_B, "read+write+subscribe+workspace:app-b"),
        ],
    )?;
    let admin = engine.ready().await?;
    let a = connect_as(&engine, TOKEN_A).await?;
    let b = connect_as(&engine, TOKEN_B).await?;
    let mut as_a = pb::audience_service_client::AudienceServiceClient::new(a.clone());
    let mut as_b = pb::audience_service_client::AudienceServiceClient::new(b.clone());

    let play = json!({"event": {"type": "custom_event", "name": "Play"}});
    let (owner_a, owner_b) = (as_a.clone(), as_b.clone());
    let create = |name: &str, workspace: &str, criteria: Value, access: pb::AudienceAccess| {
        let mut client = if workspace == "app-a" {
            owner_a.clone()
        } else {
            owner_b.clone()
        };
        let request = pb::CreateAudienceRequest {
            name: name.into(),
            criteria: Some(audience_e2e::criteria(criteria)),
            workspaces: vec![workspace.into()],
            access: access as i32,
            ..Default::default()
        };
        async move {
            client
                .create_audience(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let private = create(
        "a private",
        "app-a",
        play.clone(),
        pb::AudienceAccess::Unspecified,
    )
    .await?;
    let view = create(
        "a view",
        "app-a",
        play.clone(),
        pb::AudienceAccess::ViewOnly,
    )
    .await?;
    let usable = create(
        "a usable",
        "app-a",
        play.clone(),
        pb::AudienceAccess::Usable,
    )
    .await?;
    assert_eq!(
        private.access(),
        pb::AudienceAccess::Private,
        "private by default"
    );
    assert_eq!(view.access(), pb::AudienceAccess::ViewOnly);

    // Listed and read by app-b; the private one is absent.
    assert_eq!(
        listed(&b, "", pb::WorkspaceKind::SharedWithMe).await?,
        vec!["a view", "a usable"]
    );
    let out = engine
        .ctl()
        .env("AUDIENCE_TOKEN", TOKEN_B)
        .args(["audience", "list", "--kind", "shared"])
        .output()?;
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(
        lines.contains("a view") && lines.contains("a usable"),
        "{lines}"
    );
    assert_eq!(
        listed(&b, "", pb::WorkspaceKind::Unspecified).await?,
        vec!["a view", "a usable"]
    );
    assert!(listed(&a, "", pb::WorkspaceKind::SharedWithMe)
        .await?
        .is_empty());
    assert_eq!(
        listed(&admin, "app-b", pb::WorkspaceKind::SharedWithMe).await?,
        vec!["a view", "a usable"],
        "an admin token lists what is shared with a workspace"
    );
    let absent = as_b
        .get_audience(pb::GetAudienceRequest { id: private.id })
        .await
        .unwrap_err();
    assert_eq!(absent.code(), tonic::Code::NotFound, "{absent:?}");
    let seen = as_b
        .get_audience(pb::GetAudienceRequest { id: view.id })
        .await?
        .into_inner();
    assert_eq!(
        (seen.name.as_str(), seen.created_by.as_str()),
        ("a view", "a")
    );

    // Changed by its owners only.
    let refused = as_b
        .update_audience(pb::UpdateAudienceRequest {
            id: usable.id,
            name: "taken".into(),
            criteria: Some(audience_e2e::criteria(play.clone())),
            workspaces: vec!["app-a".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("shared usable"), "{refused:?}");
    let refused = as_b
        .delete_audience(pb::DeleteAudienceRequest { id: view.id })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Referenced and subscribed to when usable.
    let refers = |id: u64| json!({"audience": {"id": id}});
    let own = create(
        "b follows",
        "app-b",
        refers(usable.id),
        pb::AudienceAccess::Unspecified,
    )
    .await?;
    let refused = create(
        "b peeks",
        "app-b",
        refers(view.id),
        pb::AudienceAccess::Unspecified,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("view only"), "{refused:?}");
    let refused = create(
        "b guesses",
        "app-b",
        refers(private.id),
        pb::AudienceAccess::Unspecified,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("does not exist"), "{refused:?}");
    let mut membership = pb::membership_service_client::MembershipServiceClient::new(b.clone());
    let refused = membership
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![view.id],
            subscriber_name: "b".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let producer = broker.producer()?;
    let now = engine_now(&admin).await?;
    let message = batch(301, now, Some("ios"), 1, json!({}));
    produce_json(&producer, &topics.events, &message).await?;
    let deltas = collect_deltas(&b, vec![usable.id], "", Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!(
        deltas
            .iter()
            .map(|d| (d.audience_id, d.mpid))
            .collect::<Vec<_>>(),
        vec![(usable.id, 301)]
    );
    assert_eq!(own.created_by, "b");

    // Made private again by its owner: gone from app-b's sight.
    as_a.update_audience(pb::UpdateAudienceRequest {
        id: view.id,
        name: "a view".into(),
        criteria: Some(audience_e2e::criteria(play.clone())),
        workspaces: vec!["app-a".into()],
        access: pb::AudienceAccess::Private as i32,
        ..Default::default()
    })
    .await?;
    assert_eq!(
        listed(&b, "", pb::WorkspaceKind::SharedWithMe).await?,
        vec!["a usable"]
    );
    // The usable one stays usable while app-b's audience references it.
    let held = as_a
        .update_audience(pb::UpdateAudienceRequest {
            id: usable.id,
            name: "a usable".into(),
            criteria: Some(audience_e2e::criteria(play.clone())),
            workspaces: vec!["app-a".into()],
            access: pb::AudienceAccess::Private as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(held.code(), tonic::Code::FailedPrecondition, "{held:?}");
    assert!(
        held.message().contains(&format!(
            "is used by audience(s) {} (\"b follows\")",
            own.id
        )),
        "{held:?}"
    );
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");
    Ok(())
}
