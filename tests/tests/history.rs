//! Definitions over history through the real broker: events for a few hundred users stream in
//! first, then an audience with event attribute conditions and a windowed calculated attribute
//! are defined. The backfill reads each profile's event log, and the subscriber receives
//! exactly the users who qualify over the retained events, old ones included.

use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const DAY: i64 = 86_400_000;

fn added(deltas: &[pb::MembershipDelta], audience: u64) -> BTreeSet<i64> {
    let mut members = BTreeSet::new();
    for d in deltas.iter().filter(|d| d.audience_id == audience) {
        if d.kind == pb::DeltaKind::Added as i32 {
            members.insert(d.mpid);
        } else {
            members.remove(&d.mpid);
        }
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_made_after_the_events_see_them() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("history");
    let dir = tempfile::tempdir()?;
    // Small pages with a pause between them, so the calculation is seen in progress.
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "history",
        &[
            ("AUDIENCE_BACKFILL_PAGE", "20"),
            ("AUDIENCE_BACKFILL_PAUSE_MS", "100"),
        ],
    )?;
    let ch = engine.ready().await?;
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;

    // User i searches for one of five queries, some days ago; every third buys for 40 * (i % 4).
    let queries = ["red shoes", "hats", "SHOE SALE", "boots", "scarves"];
    let users = 300i64;
    let mut searchers = BTreeSet::new();
    let mut spenders = BTreeSet::new();
    for i in 0..users {
        let mpid = 5_000 + i;
        let query = queries[(i % 5) as usize];
        let days_ago = i % 12;
        let at = now - days_ago * DAY - 60_000;
        let mut events = vec![custom_event(
            "Search",
            "search",
            at,
            json!({"query": query}),
        )];
        if query.to_lowercase().contains("shoe") && days_ago < 7 {
            searchers.insert(mpid);
        }
        if i % 3 == 0 {
            let amount = 40.0 * (i % 4) as f64;
            let bought = now - (i % 9) * DAY - 60_000;
            events.push(json!({"event_type": "commerce_event", "data": {"timestamp_unixtime_ms": bought,
                "product_action": {"action": "purchase", "transaction_id": format!("T{mpid}"), "total_amount": amount,
                    "products": [{"id": "SKU-1", "price": amount, "quantity": 1}]}}}));
            // A second purchase of the same amount a day later, when still in the week.
            let again = bought + DAY;
            events.push(json!({"event_type": "commerce_event", "data": {"timestamp_unixtime_ms": again,
                "product_action": {"action": "purchase", "transaction_id": format!("U{mpid}"), "total_amount": amount,
                    "products": [{"id": "SKU-1", "price": amount, "quantity": 1}]}}}));
            let in_week = |t: i64| now - t <= 7 * DAY;
            let spend = amount * (in_week(bought) as i32 + in_week(again) as i32) as f64;
            if spend >= 100.0 {
                spenders.insert(mpid);
            }
        }
        produce_json(&producer, &topics.events, &sdk_batch(mpid, now, events)).await?;
    }
    wait_processed(&ch, users as u64, Duration::from_secs(120)).await?;
    assert!(
        searchers.len() > 50 && spenders.len() > 20,
        "a discriminating workload"
    );

    // Defined after every event was applied.
    let shoe_searchers = create_audience(
        &ch,
        "searched shoes this week",
        json!({"event": {"type": "custom_event", "name": "Search",
            "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
            "time": {"within_last_days": 7}}}),
    )
    .await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    assert_eq!(
        shoe_searchers.status,
        pb::AudienceStatus::Calculating as i32,
        "a new audience is CALCULATING"
    );
    // Progress moves, then the audience turns ACTIVE.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = audiences
            .get_audience(pb::GetAudienceRequest {
                id: shoe_searchers.id,
            })
            .await?
            .into_inner();
        if a.status == pb::AudienceStatus::Active as i32 {
            assert!(a.calculation.is_none());
            break;
        }
        assert_eq!(a.status, pb::AudienceStatus::Calculating as i32);
        let c = a.calculation.expect("progress while CALCULATING");
        let estimate = c.estimate.as_ref().expect("an estimate while CALCULATING");
        assert_eq!(
            estimate.estimate,
            searchers.len() as u64,
            "exact over 300 profiles"
        );
        assert!(
            c.profiles_scanned <= c.profiles_total && c.percent <= 100.0,
            "{c:?}"
        );
        seen.push(c);
        assert!(
            std::time::Instant::now() < deadline,
            "still calculating: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().any(|c| c.profiles_total == users as u64),
        "{seen:?}"
    );
    let scanned: Vec<u64> = seen.iter().map(|c| c.profiles_scanned).collect();
    assert!(scanned.windows(2).all(|w| w[0] <= w[1]), "{scanned:?}");
    assert!(
        scanned.iter().any(|&n| n > 0 && n < users as u64),
        "progress seen between start and end: {scanned:?}"
    );
    audiences
        .put_calculated_attribute(pb::CalculatedAttribute {
            definition: Some(criteria(json!({"name": "Spend 7d", "calculation": "sum", "field": "total_amount",
                "window_days": 7, "event": {"type": "commerce_event", "product_action": "purchase"}}))),
            ..Default::default()
        })
        .await?;
    let big_spenders = create_audience(
        &ch,
        "big spenders",
        json!({"calculated_attribute": {"name": "spend 7d", "op": "greater_than_or_equal", "value": 100}}),
    )
    .await?;

    let deltas = collect_deltas(
        &ch,
        vec![shoe_searchers.id, big_spenders.id],
        "",
        Duration::from_secs(90),
        |d| {
            added(d, shoe_searchers.id).len() >= searchers.len()
                && added(d, big_spenders.id).len() >= spenders.len()
        },
    )
    .await?;
    // Let any extra (wrong) delta arrive before comparing.
    let cursor = deltas.last().map(|d| d.cursor.clone()).unwrap_or_default();
    let extra = collect_deltas(
        &ch,
        vec![shoe_searchers.id, big_spenders.id],
        &cursor,
        Duration::from_secs(2),
        |_| false,
    )
    .await?;
    let all: Vec<pb::MembershipDelta> = deltas.into_iter().chain(extra).collect();
    assert_eq!(added(&all, shoe_searchers.id), searchers);
    assert_eq!(added(&all, big_spenders.id), spenders);

    // The lookup shows the value calculated from the log, and the log itself.
    let sample = *spenders.iter().next().unwrap();
    let p = profile(&ch, sample).await?;
    let spend = p.calculated_attributes.get("Spend 7d").expect("calculated");
    let log = p.event_log.expect("log shown");
    assert_eq!(log.events, 3, "a search and two purchases");
    assert!(
        log.bytes > 0 && log.oldest_ms > 0 && log.dropped_events == 0,
        "{log:?}"
    );
    assert!(matches!(spend.value, Some(pb::attribute_value::Value::NumberValue(v)) if v >= 100.0));
    // Estimates: all 300 profiles fit the default sample, so the answer is exact; a sample of
    // 100 gives an interval around the true size; one user in 100 sampled is "too small".
    let shoe_definition = json!({"event": {"type": "custom_event", "name": "Search",
        "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
        "time": {"within_last_days": 7}}});
    let exact = audiences
        .estimate_audience(pb::EstimateAudienceRequest {
            criteria: Some(criteria(shoe_definition.clone())),
            sample_size: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(exact.exact && !exact.too_small, "{exact:?}");
    assert_eq!(
        (exact.estimate, exact.profiles_total),
        (searchers.len() as u64, users as u64)
    );
    let sampled = audiences
        .estimate_audience(pb::EstimateAudienceRequest {
            criteria: Some(criteria(shoe_definition)),
            sample_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!sampled.exact && !sampled.too_small, "{sampled:?}");
    assert!((99..=101).contains(&sampled.sample_size), "{sampled:?}");
    let truth = searchers.len() as u64;
    assert!(
        sampled.low <= truth && truth <= sampled.high,
        "{truth} outside {sampled:?}"
    );
    let tiny = audiences
        .estimate_audience(pb::EstimateAudienceRequest {
            criteria: Some(criteria(json!({"identity": {"type": "email", "op": "exact_match", "value": "u5001@example.com"}}))),
            sample_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(tiny.too_small, "{tiny:?}");
    let bad = audiences
        .estimate_audience(pb::EstimateAudienceRequest {
            criteria: Some(criteria(json!({"event": {"name": ""}}))),
            sample_size: 0,
            ..Default::default()
        })
        .await
        .expect_err("an invalid definition is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // A sample past the bound is refused, naming it (not a scan of every profile).
    let huge = audiences
        .estimate_audience(pb::EstimateAudienceRequest {
            criteria: Some(criteria(
                json!({"event": {"type": "custom_event", "name": "Search"}}),
            )),
            sample_size: 100_001,
            ..Default::default()
        })
        .await
        .expect_err("a sample past the bound is refused");
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    assert!(huge.message().contains("limit of 100000"), "{huge:?}");

    // Preview of narrowing the window to 3 days, then the edit itself: the same change.
    let narrower = json!({"event": {"type": "custom_event", "name": "Search",
        "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
        "time": {"within_last_days": 3}}});
    let preview = audiences
        .preview_update(pb::PreviewUpdateRequest {
            audience_id: shoe_searchers.id,
            criteria: Some(criteria(narrower.clone())),
            sample_size: 5,
        })
        .await?
        .into_inner();
    assert_eq!(preview.members_now, searchers.len() as u64);
    assert!(
        preview.would_leave > 0 && preview.would_enter == 0,
        "{preview:?}"
    );
    assert!(preview.leaving_sample.len() == 5 && preview.entering_sample.is_empty());
    let why = preview
        .leaving_reason
        .as_ref()
        .expect("a reason for leaving");
    assert!(why.member && !why.root.as_ref().unwrap().matched, "{why:?}");
    let stored = audiences
        .get_audience(pb::GetAudienceRequest {
            id: shoe_searchers.id,
        })
        .await?
        .into_inner();
    assert_eq!(stored.revision, 1, "a preview changes nothing");
    let huge = audiences
        .preview_update(pb::PreviewUpdateRequest {
            audience_id: shoe_searchers.id,
            criteria: Some(criteria(narrower.clone())),
            sample_size: 1_001,
        })
        .await
        .expect_err("a preview listing past the bound is refused");
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    assert!(huge.message().contains("limit of 1000"), "{huge:?}");
    let cursor = all.last().map(|d| d.cursor.clone()).unwrap_or_default();
    // The edit happens a minute later, so that "as of before the edit" is an instant apart.
    let before_edit = engine_now(&ch).await?;
    advance_clock(&ch, 60_000).await?;
    audiences
        .update_audience(pb::UpdateAudienceRequest {
            id: shoe_searchers.id,
            name: "searched shoes in 3 days".into(),
            criteria: Some(criteria(narrower)),
            ..Default::default()
        })
        .await?;
    let expected_changes = preview.would_leave + preview.would_enter;
    let changes = collect_deltas(
        &ch,
        vec![shoe_searchers.id],
        &cursor,
        Duration::from_secs(60),
        |d| d.len() as u64 >= expected_changes,
    )
    .await?;
    let after_changes = changes.last().map(|d| d.cursor.clone()).unwrap_or_default();
    let more = collect_deltas(
        &ch,
        vec![shoe_searchers.id],
        &after_changes,
        Duration::from_secs(2),
        |_| false,
    )
    .await?;
    let count = |kind: pb::DeltaKind| {
        changes
            .iter()
            .chain(&more)
            .filter(|d| d.kind == kind as i32)
            .count() as u64
    };
    assert_eq!(
        (count(pb::DeltaKind::Dropped), count(pb::DeltaKind::Added)),
        (preview.would_leave, preview.would_enter)
    );

    // Membership as of an instant equals what the subscriber had been told by then.
    let told: Vec<pb::MembershipDelta> = all
        .iter()
        .chain(&changes)
        .chain(&more)
        .filter(|d| d.audience_id == shoe_searchers.id)
        .cloned()
        .collect();
    let told_by = |t: i64| {
        let upto: Vec<pb::MembershipDelta> = told
            .iter()
            .filter(|d| d.processing_time_ms <= t)
            .cloned()
            .collect();
        added(&upto, shoe_searchers.id)
    };
    let mut members_client =
        pb::membership_service_client::MembershipServiceClient::new(ch.clone());
    let mut list_members = async |as_of_ms: i64| -> Result<BTreeSet<i64>> {
        let mut out = BTreeSet::new();
        let mut page_token = String::new();
        loop {
            let page = members_client
                .list_members(pb::ListMembersRequest {
                    audience_id: shoe_searchers.id,
                    as_of_ms,
                    page_size: 7,
                    page_token,
                    identity_types: Vec::new(),
                })
                .await?
                .into_inner();
            assert!(page.mpids.len() <= 7);
            out.extend(page.mpids);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    };
    let now = engine_now(&ch).await?;
    assert_eq!(list_members(before_edit).await?, told_by(before_edit));
    assert_eq!(told_by(before_edit), searchers);
    assert_eq!(list_members(0).await?, told_by(now));
    assert_eq!(
        told_by(now).len() as u64,
        searchers.len() as u64 - preview.would_leave
    );
    let outside = members_client
        .list_members(pb::ListMembersRequest {
            audience_id: shoe_searchers.id,
            as_of_ms: now - 31 * DAY,
            ..Default::default()
        })
        .await
        .expect_err("before retention");
    assert_eq!(outside.code(), tonic::Code::OutOfRange);

    // A leaver's history: entered at version 1, left at version 2 with the edit.
    let leaver = preview.leaving_sample[0];
    let history = members_client
        .get_membership_history(pb::GetMembershipHistoryRequest { mpid: leaver })
        .await?
        .into_inner();
    let stretch = history
        .intervals
        .iter()
        .find(|i| i.audience_id == shoe_searchers.id)
        .expect("the audience in the history");
    assert_eq!(
        (stretch.entered_version, stretch.left_version),
        (1, 2),
        "{history:?}"
    );
    assert!(stretch.entered_ms <= before_edit && stretch.left_ms > before_edit);
    Ok(())
}
