//! Replay through the real broker: profiles streamed under a catalog, then rebuilt from their
//! logs alone, with the profile states wiped first and the engine killed (-9) in the middle of
//! the rebuild. Every profile ends as it was (memberships, versions, attributes, identities,
//! calculated attributes, event counts), no delta is emitted, and the next change continues
//! the versions.

use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DAY: i64 = 86_400_000;

async fn replay_status(ch: &Channel) -> Result<pb::ReplayStatus> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    Ok(admin
        .get_replay(pb::GetReplayRequest {})
        .await?
        .into_inner())
}

/// Every delta from `cursor` until none arrives for `quiet`.
async fn drain(ch: &Channel, cursor: &str, quiet: Duration) -> Result<Vec<pb::MembershipDelta>> {
    let mut all = Vec::new();
    let mut cursor = cursor.to_string();
    loop {
        let got = collect_deltas(ch, vec![], &cursor, quiet, |_| false).await?;
        let Some(last) = got.last() else {
            return Ok(all);
        };
        cursor = last.cursor.clone();
        all.extend(got);
    }
}

fn audiencectl(engine: &Engine, args: &[&str]) -> Result<String> {
    let out = engine.ctl().args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "audiencectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_rebuilt_from_their_logs_end_as_they_were() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("replay");
    let dir = tempfile::tempdir()?;
    // Small pages with a pause between them, so the replay is caught running.
    let mut engine = Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        "replay",
        &[
            ("AUDIENCE_BACKFILL_PAGE", "10"),
            ("AUDIENCE_BACKFILL_PAUSE_MS", "100"),
        ],
    )?;
    let ch = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    audiences
        .put_calculated_attribute(pb::CalculatedAttribute {
            definition: Some(criteria(
                json!({"name": "Searches 7d", "calculation": "count",
                "window_days": 7, "event": {"type": "custom_event", "name": "Search"}}),
            )),
            ..Default::default()
        })
        .await?;
    let gold = create_audience(
        &ch,
        "gold",
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
    )
    .await?;
    let shoes = create_audience(
        &ch,
        "shoe searchers",
        json!({"event": {"type": "custom_event", "name": "Search",
            "attributes": [{"name": "query", "op": "contains", "value": "shoe"}],
            "time": {"within_last_days": 3}}}),
    )
    .await?;
    let searchers = create_audience(
        &ch,
        "frequent searchers",
        json!({"calculated_attribute": {"name": "searches 7d", "op": "greater_than_or_equal", "value": 2}}),
    )
    .await?;
    for id in [gold.id, shoes.id, searchers.id] {
        audiencectl(&engine, &["audience", "wait", &id.to_string()])?;
    }

    // 300 users; each searches once or twice some days ago. Tiers flip for some, so versions
    // pass 1: gold, silver, and gold again for every fifth user.
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    let queries = ["red shoes", "hats", "SHOE SALE", "boots"];
    let users = 300i64;
    let mut messages = 0u64;
    for i in 0..users {
        let mpid = 90_000 + i;
        let mut events = vec![custom_event(
            "Search",
            "search",
            now - (i % 6) * DAY - 60_000,
            json!({"query": queries[(i % 4) as usize]}),
        )];
        if i % 2 == 0 {
            events.push(custom_event(
                "Search",
                "search",
                now - (i % 9) * DAY - 120_000,
                json!({"query": "socks"}),
            ));
        }
        produce_json(&producer, &topics.events, &sdk_batch(mpid, now, events)).await?;
        messages += 1;
        if i % 3 == 0 {
            let mut batch = sdk_batch(mpid, now, vec![]);
            batch["user_attributes"]["tier"] = json!("silver");
            produce_json(&producer, &topics.events, &batch).await?;
            messages += 1;
        }
        if i % 5 == 0 {
            produce_json(&producer, &topics.events, &sdk_batch(mpid, now, vec![])).await?;
            messages += 1;
        }
    }
    wait_processed(&ch, messages, Duration::from_secs(120)).await?;
    let sent = drain(&ch, "", Duration::from_secs(2)).await?;
    let cursor = sent.last().map(|d| d.cursor.clone()).unwrap_or_default();
    assert!(
        sent.iter().any(|d| d.version >= 3),
        "some memberships changed more than twice"
    );

    let mut before: BTreeMap<i64, pb::Profile> = BTreeMap::new();
    for i in 0..users {
        before.insert(90_000 + i, profile(&ch, 90_000 + i).await?);
    }
    for id in [gold.id, shoes.id, searchers.id] {
        assert!(
            before
                .values()
                .any(|p| p.audiences.iter().any(|m| m.audience_id == id)),
            "audience {id} has members"
        );
    }

    // Wipe and replay; kill -9 while it runs; the restarted engine resumes it.
    let started = audiencectl(&engine, &["replay", "--start", "--wipe"])?;
    assert!(started.contains("wiped first"), "{started}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = replay_status(&ch).await?;
        if s.partitions
            .iter()
            .any(|p| p.running && p.profiles_scanned > 0)
        {
            break;
        }
        assert!(
            s.running,
            "the replay finished before it could be interrupted: {s:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the replay does not progress: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.kill9();
    engine.restart()?;
    let ch = engine.ready().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = replay_status(&ch).await?;
        if !s.partitions.is_empty() && !s.running {
            assert!(
                s.partitions
                    .iter()
                    .all(|p| p.wiped && p.deltas == 0 && p.unreadable_logs == 0),
                "{s:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed replay does not end: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = audiencectl(&engine, &["replay", "--wait"])?;
    assert!(
        shown.contains("done") && !shown.contains("running"),
        "{shown}"
    );

    for (mpid, was) in &before {
        let now = profile(&ch, *mpid).await?;
        assert_eq!(&now, was, "profile {mpid} rebuilt from its logs");
    }
    let after = drain(&ch, &cursor, Duration::from_secs(2)).await?;
    assert!(
        after.is_empty(),
        "a replay of a healthy store sends nothing: {after:?}"
    );

    // The next change continues the versions the subscribers know.
    let member = before
        .iter()
        .find_map(|(mpid, p)| {
            p.audiences
                .iter()
                .find(|m| m.audience_id == gold.id)
                .map(|m| (*mpid, m.version))
        })
        .expect("a gold member");
    let mut batch = sdk_batch(member.0, now, vec![]);
    batch["user_attributes"]["tier"] = json!("bronze");
    produce_json(&producer, &topics.events, &batch).await?;
    let next = collect_deltas(&ch, vec![gold.id], &cursor, Duration::from_secs(30), |d| {
        !d.is_empty()
    })
    .await?;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(
        (next[0].mpid, next[0].kind, next[0].version),
        (member.0, pb::DeltaKind::Dropped as i32, member.1 + 1)
    );
    Ok(())
}
