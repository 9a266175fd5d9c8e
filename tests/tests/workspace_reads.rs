//! Workspaces through the real broker, beyond what workspaces.rs covers: a multi workspace
//! audience whose criteria pick their workspace, what a token limited to one workspace reads
//! of members, histories, figures, estimates and previews, and calculated attributes kept per
//! workspace.

use audience_e2e::workspaces::*;
use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// The membership reads, estimates and previews for a token limited to app-b: members and
/// histories name only the profiles it sees (those of an audience shared by app-a included),
/// figures only the audiences it sees, estimates read its own workspace unless told another it
/// holds, and previews are its own audiences'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_token_reads_members_figures_and_estimates_of_what_it_sees() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspace-reads");
    let dir = tempfile::tempdir()?;
    let mut engine = start_engine(
        &broker,
        &topics,
        dir.path(),
        "workspace-reads",
        &[("b", TOKEN_B, "read+write+workspace:app-b")],
    )?;
    let admin = engine.ready().await?;
    let b = connect_as(&engine, TOKEN_B).await?;

    let play = json!({"event": {"type": "custom_event", "name": "Play"}});
    let partner = create_scoped(&admin, "partner players", play.clone(), &["app-b"], &[]).await?;
    let ios = create_scoped(&admin, "ios players", play.clone(), &[], &["ios"]).await?;
    let shared = pb::audience_service_client::AudienceServiceClient::new(admin.clone())
        .create_audience(pb::CreateAudienceRequest {
            name: "app-a players".into(),
            criteria: Some(criteria(play.clone())),
            workspaces: vec!["app-a".into()],
            access: pb::AudienceAccess::ViewOnly as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let producer = broker.producer()?;
    let now = engine_now(&admin).await?;
    // 201 is app-a's only, 203 app-b's only, 202 both's.
    let messages = [
        batch(201, now, Some("ios"), 1, json!({})),
        batch(202, now, Some("ios"), 1, json!({})),
        batch(202, now, Some("partner"), 1, json!({})),
        batch(203, now, Some("partner"), 1, json!({})),
    ];
    for m in &messages {
        produce_json(&producer, &topics.events, m).await?;
    }
    wait_processed(&admin, messages.len() as u64, Duration::from_secs(60)).await?;
    let everyone = [201, 202, 203];
    assert_eq!(
        members_of(&admin, partner.id, &everyone).await?,
        BTreeSet::from([202, 203])
    );
    assert_eq!(
        members_of(&admin, shared.id, &everyone).await?,
        BTreeSet::from([201, 202])
    );
    members_of(&admin, ios.id, &everyone).await?;

    // Members, a page of one at a time: all of its own audience's; of app-a's shared one,
    // only 202, the one also seen in app-b.
    let mut membership = pb::membership_service_client::MembershipServiceClient::new(b.clone());
    let listed = |id: u64| {
        let mut client = membership.clone();
        async move {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_members(pb::ListMembersRequest {
                        audience_id: id,
                        page_size: 1,
                        page_token,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                all.extend(page.mpids);
                if page.next_page_token.is_empty() {
                    return Ok::<_, tonic::Status>(all);
                }
                page_token = page.next_page_token;
            }
        }
    };
    assert_eq!(listed(partner.id).await?, vec![202, 203]);
    assert_eq!(listed(shared.id).await?, vec![202]);
    let hidden = listed(ios.id).await.unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
    let as_admin = pb::membership_service_client::MembershipServiceClient::new(admin.clone())
        .list_members(pb::ListMembersRequest {
            audience_id: shared.id,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(as_admin.mpids, vec![201, 202]);

    // Histories: of a profile it sees, in the audiences it sees; none of one it does not.
    let history = |mpid: i64| {
        let mut client = membership.clone();
        async move {
            let intervals = client
                .get_membership_history(pb::GetMembershipHistoryRequest { mpid })
                .await?
                .into_inner()
                .intervals;
            let ids: BTreeSet<u64> = intervals.iter().map(|i| i.audience_id).collect();
            Ok::<_, tonic::Status>(ids)
        }
    };
    assert_eq!(history(202).await?, BTreeSet::from([partner.id, shared.id]));
    assert!(history(201).await?.is_empty());
    let all_of_202 = pb::membership_service_client::MembershipServiceClient::new(admin.clone())
        .get_membership_history(pb::GetMembershipHistoryRequest { mpid: 202 })
        .await?
        .into_inner()
        .intervals;
    assert_eq!(
        all_of_202.len(),
        3,
        "the admin token sees all: {all_of_202:?}"
    );

    // Figures: of the audiences it sees.
    let figures = membership
        .get_audience_stats(pb::GetAudienceStatsRequest {
            audience_ids: vec![],
        })
        .await?
        .into_inner()
        .audiences;
    let sizes: Vec<(u64, u64)> = figures
        .iter()
        .map(|a| (a.audience_id, a.stats.as_ref().map_or(0, |s| s.size)))
        .collect();
    assert_eq!(sizes, vec![(partner.id, 2), (shared.id, 2)]);
    let hidden = membership
        .get_audience_stats(pb::GetAudienceStatsRequest {
            audience_ids: vec![ios.id],
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");

    // Estimates: of its own workspace's profiles unless it names another it holds.
    let estimate = |ch: &Channel, workspaces: Vec<String>| {
        let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
        let criteria = criteria(play.clone());
        async move {
            client
                .estimate_audience(pb::EstimateAudienceRequest {
                    criteria: Some(criteria),
                    workspaces,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(estimate(&b, vec![]).await?.sampled_members, 2);
    assert_eq!(estimate(&b, vec!["app-b".into()]).await?.sampled_members, 2);
    assert_eq!(estimate(&admin, vec![]).await?.sampled_members, 3);
    // The population: to app-b's token, the profiles seen in app-b (202 and 203; the sample
    // is every profile, so the count is exact); to the admin, every profile.
    let of_b = estimate(&b, vec![]).await?;
    assert_eq!(
        (of_b.profiles_total, of_b.sampled_in_scope),
        (2, 2),
        "{of_b:?}"
    );
    assert_eq!(estimate(&admin, vec![]).await?.profiles_total, 3);
    let refused = estimate(&b, vec!["app-a".into()]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("\"app-a\""), "{refused:?}");

    // Previews: of its own audiences; a shared one is its owners' to edit.
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(b.clone());
    let preview = |id: u64| pb::PreviewUpdateRequest {
        audience_id: id,
        criteria: Some(criteria(
            json!({"event": {"type": "custom_event", "name": "Stop"}}),
        )),
        sample_size: 0,
    };
    let own = audiences
        .preview_update(preview(partner.id))
        .await?
        .into_inner();
    assert_eq!((own.members_now, own.would_leave), (2, 2));
    let refused = audiences
        .preview_update(preview(shared.id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let hidden = audiences.preview_update(preview(ios.id)).await.unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");
    Ok(())
}

/// The seed: "all user profile data is scoped and maintained within a single workspace; in
/// multiworkspace audiences, you can select which workspace to use". A criterion of an
/// audience of app-a and app-b picks app-b: it reads the tier (or the email, or the device)
/// app-b's input brought, not the latest of every source; a token of app-b reads app-b's on
/// the profile (its events too), and Explain withholds what another workspace set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_workspace_audience_reads_the_workspace_each_criterion_picks() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspace-picks");
    let dir = tempfile::tempdir()?;
    let mut engine = start_engine(
        &broker,
        &topics,
        dir.path(),
        "workspace-picks",
        &[("b", TOKEN_B, "read+workspace:app-b")],
    )?;
    let admin = engine.ready().await?;
    let both = ["app-a", "app-b"];
    let gold = |workspace: Option<&str>| {
        let mut c = json!({"name": "tier", "op": "exact_match", "value": "gold"});
        if let Some(w) = workspace {
            c["workspace"] = json!(w);
        }
        json!({"user_attribute": c})
    };
    let picked = create_scoped(&admin, "gold in app-b", gold(Some("app-b")), &both, &[]).await?;
    let android = |workspace: Option<&str>| {
        let mut c = json!({"field": "platform", "op": "exact_match", "value": "Android"});
        if let Some(w) = workspace {
            c["workspace"] = json!(w);
        }
        json!({"device": c})
    };
    let android_in_b = create_scoped(
        &admin,
        "android in app-b",
        android(Some("app-b")),
        &both,
        &[],
    )
    .await?;
    let android_now = create_scoped(&admin, "android now", android(None), &both, &[]).await?;
    // app-b's own audience, reading the latest tier from any source: app-b's token owns it.
    let gold_of_b = create_scoped(&admin, "gold, of app-b", gold(None), &["app-b"], &[]).await?;
    let latest = create_scoped(&admin, "gold anywhere", gold(None), &both, &[]).await?;
    let email_in_b = json!({"identity": {"type": "email", "op": "exists", "workspace": "app-b"}});
    let emailed = create_scoped(&admin, "email in app-b", email_in_b, &both, &[]).await?;
    let refused = create_scoped(&admin, "gold in c", gold(Some("app-c")), &both, &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("criteria.user_attribute.workspace: \"app-c\" is not one of"),
        "{refused:?}"
    );

    let producer = broker.producer()?;
    let now = engine_now(&admin).await?;
    let tier = |t: &str| json!({"user_attributes": {"tier": t}});
    let with_email = |t: &str, mpid: i64| {
        let mut b = tier(t);
        b["user_identities"] = json!({"email": format!("u{mpid}@example.com")});
        b
    };
    let on = |mut b: serde_json::Value, platform: &str| {
        b["device_info"] = json!({"platform": platform});
        b
    };
    // 401: gold in app-a only. 402: gold in app-b. 403: silver in app-b, then gold in app-a.
    // 401 and 402 give their email there. 402 and 403 use Android in app-b; 403 then iOS in
    // app-a, where it plays twice (once in app-b).
    let messages = [
        batch(401, now, Some("ios"), 0, with_email("gold", 401)),
        batch(
            402,
            now,
            Some("partner"),
            0,
            on(with_email("gold", 402), "Android"),
        ),
        batch(403, now, Some("partner"), 1, on(tier("silver"), "Android")),
        batch(403, now + 1, Some("web"), 2, on(tier("gold"), "iOS")),
    ];
    for m in &messages {
        produce_json(&producer, &topics.events, m).await?;
    }
    wait_processed(&admin, messages.len() as u64, Duration::from_secs(60)).await?;
    let everyone = [401, 402, 403];
    assert_eq!(
        members_of(&admin, picked.id, &everyone).await?,
        BTreeSet::from([402])
    );
    assert_eq!(
        members_of(&admin, latest.id, &everyone).await?,
        BTreeSet::from([401, 402, 403])
    );
    assert_eq!(
        members_of(&admin, emailed.id, &everyone).await?,
        BTreeSet::from([402])
    );
    assert_eq!(
        members_of(&admin, android_in_b.id, &everyone).await?,
        BTreeSet::from([402, 403]),
        "app-b keeps the platform its input reported"
    );
    assert_eq!(
        members_of(&admin, android_now.id, &everyone).await?,
        BTreeSet::from([402]),
        "403's latest platform is iOS"
    );
    assert_eq!(
        members_of(&admin, gold_of_b.id, &everyone).await?,
        BTreeSet::from([402, 403])
    );
    // Computed again over the event log, which keeps each message's input: the same.
    let later = create_scoped(
        &admin,
        "gold in app-b, later",
        gold(Some("app-b")),
        &both,
        &[],
    )
    .await?;
    assert_eq!(
        members_of(&admin, later.id, &everyone).await?,
        BTreeSet::from([402])
    );

    // The profile as each token reads it.
    let tier_of =
        |p: &pb::Profile| match p.user_attributes.get("tier").and_then(|v| v.value.clone()) {
            Some(pb::attribute_value::Value::StringValue(s)) => s,
            other => format!("{other:?}"),
        };
    let b = connect_as(&engine, TOKEN_B).await?;
    assert_eq!(tier_of(&profile(&admin, 403).await?), "gold");
    assert_eq!(tier_of(&profile(&b, 403).await?), "silver");
    // Device, events and workspaces as app-b's inputs brought them.
    let plays = |p: &pb::Profile| -> u64 {
        p.events
            .iter()
            .filter(|e| e.event_key.contains("Play") || e.event_key.contains("play"))
            .map(|e| e.count_in_retention)
            .sum()
    };
    let platform = |p: &pb::Profile| p.device_info.as_ref().map(|d| d.platform.clone());
    let (whole, seen) = (profile(&admin, 403).await?, profile(&b, 403).await?);
    assert_eq!(platform(&whole).as_deref(), Some("iOS"));
    assert_eq!(platform(&seen).as_deref(), Some("Android"));
    assert_eq!((plays(&whole), plays(&seen)), (3, 1), "{:?}", seen.events);
    assert_eq!(whole.workspaces, vec!["app-a", "app-b"]);
    assert_eq!(seen.workspaces, vec!["app-b"]);
    // Explain to app-b's token: the tier its own audience read came from app-a, so the value
    // is withheld; the answer stays. The admin reads it.
    let explain = |ch: &Channel| {
        let mut client = pb::profile_service_client::ProfileServiceClient::new(ch.clone());
        let asked = pb::ExplainRequest {
            mpid: 403,
            audience_id: gold_of_b.id,
        };
        async move { client.explain(asked).await.map(|r| r.into_inner()) }
    };
    let tier_detail = |e: &pb::Explanation| {
        let root = e.root.clone().unwrap_or_default();
        (root.children[1].matched, root.children[1].detail.clone())
    };
    let to_b = explain(&b).await?;
    assert!(to_b.member);
    assert_eq!(
        tier_detail(&to_b),
        (
            true,
            "withheld: it reads data of a workspace this token does not hold".to_string()
        ),
        "{to_b:?}"
    );
    let to_admin = explain(&admin).await?;
    assert_eq!(
        tier_detail(&to_admin),
        (true, "the value is \"gold\"".to_string())
    );
    let emails = |p: &pb::Profile| -> Vec<String> {
        p.identities
            .iter()
            .filter(|i| i.identity_type == "email")
            .map(|i| i.value.clone())
            .collect()
    };
    assert_eq!(emails(&profile(&b, 402).await?), vec!["u402@example.com"]);
    assert_eq!(
        emails(&profile(&admin, 401).await?),
        vec!["u401@example.com"]
    );
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");
    Ok(())
}

/// A calculated attribute is user data, kept per workspace: one defined over app-b folds the
/// events of app-b's inputs only; an unknown workspace is refused by name; an audience of
/// app-b reads its own workspace's attributes, not one of every workspace, and the attribute
/// cannot move away from the audiences reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calculated_attribute_of_a_workspace_folds_its_inputs_events() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("workspace-calculated");
    let dir = tempfile::tempdir()?;
    let mut engine = start_engine(
        &broker,
        &topics,
        dir.path(),
        "workspace-calculated",
        &[("b", TOKEN_B, "read+write+workspace:app-b")],
    )?;
    let admin = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(admin.clone());
    let plays = |name: &str, workspaces: serde_json::Value| pb::CalculatedAttribute {
        definition: Some(criteria(json!({"name": name, "calculation": "count",
            "event": {"type": "custom_event", "name": "Play"}, "workspaces": workspaces}))),
        ..Default::default()
    };
    let refused = audiences
        .put_calculated_attribute(plays("plays in c", json!(["app-c"])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("workspaces[0]: unknown workspace \"app-c\""),
        "{refused:?}"
    );
    let saved = audiences
        .put_calculated_attribute(plays("plays in b", json!(["app-b"])))
        .await?
        .into_inner();
    let definition = saved.definition.unwrap_or_default();
    assert!(
        format!("{definition:?}").contains("app-b"),
        "the workspaces read back: {definition:?}"
    );
    audiences
        .put_calculated_attribute(plays("plays", json!([])))
        .await?;
    // Listed in pages, in name order.
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audiences
            .list_calculated_attributes(pb::ListCalculatedAttributesRequest {
                page_size: 1,
                page_token,
            })
            .await?
            .into_inner();
        let names: Vec<String> = page
            .attributes
            .iter()
            .filter_map(|a| a.definition.as_ref()?.fields.get("name")?.kind.clone())
            .map(|k| format!("{k:?}"))
            .collect();
        pages.push(names);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(
        pages[0][0].contains("\"plays\"") && pages[1][0].contains("plays in b"),
        "{pages:?}"
    );

    let producer = broker.producer()?;
    let now = engine_now(&admin).await?;
    let messages = [
        batch(501, now, Some("ios"), 2, json!({})),
        batch(501, now + 1, Some("partner"), 1, json!({})),
    ];
    for m in &messages {
        produce_json(&producer, &topics.events, m).await?;
    }
    wait_processed(&admin, messages.len() as u64, Duration::from_secs(60)).await?;
    let count = |p: &pb::Profile, name: &str| match p
        .calculated_attributes
        .get(name)
        .and_then(|v| v.value.clone())
    {
        Some(pb::attribute_value::Value::NumberValue(n)) => n,
        other => panic!("{name}: {other:?}"),
    };
    let whole = profile(&admin, 501).await?;
    assert_eq!(count(&whole, "plays in b"), 1.0);
    assert_eq!(count(&whole, "plays"), 3.0);

    // The token of app-b reads its workspace's attribute in its audiences, not the other.
    let b = connect_as(&engine, TOKEN_B).await?;
    let at_least = |name: &str| json!({"calculated_attribute": {"name": name, "op": "greater_than_or_equal", "value": 1}});
    let own = create_scoped(&b, "b players", at_least("plays in b"), &["app-b"], &[]).await?;
    assert_eq!(
        members_of(&admin, own.id, &[501]).await?,
        BTreeSet::from([501])
    );
    let refused = create_scoped(&b, "all players", at_least("plays"), &["app-b"], &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(
            "criteria.calculated_attribute.name: calculated attribute \"plays\" is calculated over every workspace"
        ),
        "{refused:?}"
    );
    // The attribute cannot move outside the workspaces of the audience reading it.
    let moved = audiences
        .put_calculated_attribute(plays("plays in b", json!(["app-a"])))
        .await
        .unwrap_err();
    assert_eq!(moved.code(), tonic::Code::FailedPrecondition, "{moved:?}");
    assert!(moved.message().contains("b players"), "{moved:?}");
    assert_eq!(engine.terminate()?, Some(0), "a clean stop");
    Ok(())
}
