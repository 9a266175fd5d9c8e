//! Replay through the real broker: profiles streamed under a catalog, then rebuilt from their
//! logs alone, with the profile states wiped first and the engine killed (-9) in the middle of
//! the rebuild. Every profile ends as it was (memberships, versions, attributes, identities,
//! calculated attributes, event counts), no delta is emitted, and the next change continues
//! the versions.
//!
//! Then `audiencectl verify` and `rebuild` over 2,000 users with attributes, identities and
//! consent: a healthy store verifies clean and a rebuild writes nothing and sends nothing; a
//! profile row damaged while the engine was stopped is found by verify (its MPID and what
//! differs) and repaired by rebuild. The same, offline, with `audience-engine verify` and
//! `rebuild` on the data directory of a stopped engine.

use audience_e2e::*;
use audience_proto::v1 as pb;
use audience_state::store::Store;
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

/// With the engine stopped: `damaged`'s stored row loses its `tier` attribute and `email`
/// identity (its logs still hold them), and `unreadable`'s row no longer decodes at all.
fn damage_rows(data: &std::path::Path, damaged: i64, unreadable: i64) -> Result<()> {
    let store = Store::open(data, true)?;
    let (p, mut state) = store
        .find_profile(damaged, 0..2)?
        .expect("the damaged profile is stored");
    assert!(state.attributes.remove("tier").is_some());
    assert!(state.identities.remove("email").is_some());
    let mut b = store.partition_batch();
    b.put_profile(p, &state);
    store.commit_partition(b, p)?;
    let (p, _) = store.find_profile(unreadable, 0..2)?.expect("stored");
    let key = audience_state::store::profile_key(p, unreadable);
    store.write_raw("profiles", &key, b"\x09not a profile")?;
    Ok(())
}

/// The report line of `mpid` in a replay's text report.
fn line_of(report: &str, mpid: i64) -> &str {
    report
        .lines()
        .find(|l| l.starts_with(&mpid.to_string()))
        .unwrap_or_else(|| panic!("the report names {mpid}: {report}"))
}

fn audiencectl_status(engine: &Engine, args: &[&str]) -> Result<(bool, String)> {
    let out = engine.ctl().args(args).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

async fn sizes(ch: &Channel, ids: &[u64]) -> Result<Vec<u64>> {
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let mut out = Vec::new();
    for &id in ids {
        let a = audiences
            .get_audience(pb::GetAudienceRequest { id })
            .await?
            .into_inner();
        out.push(a.stats.map_or(0, |s| s.size));
    }
    Ok(out)
}

/// Creates `gold` (tier gold), `with email` and, with `consent`, `marketing consent`; returns
/// their ids once each is ready.
async fn rebuild_audiences(engine: &Engine, ch: &Channel, consent: bool) -> Result<Vec<u64>> {
    let mut criteria = vec![
        (
            "gold",
            json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
        ),
        (
            "with email",
            json!({"identity": {"type": "email", "op": "exists"}}),
        ),
    ];
    if consent {
        criteria.push((
            "marketing consent",
            json!({"consent": {"regulation": "gdpr", "purpose": "marketing", "state": "consented"}}),
        ));
    }
    let mut ids = Vec::new();
    for (name, criterion) in criteria {
        let id = create_audience(ch, name, criterion).await?.id;
        audiencectl(engine, &["audience", "wait", &id.to_string()])?;
        ids.push(id);
    }
    Ok(ids)
}

/// Streams `users` users from MPID `first`, a search each and a tier (gold, silver, bronze in
/// turn); with `variety`, every seventh has no email and every fourth refused marketing
/// consent. Waits until all are processed; returns the cursor after the deltas they caused.
async fn stream_users(
    broker: &Broker,
    topics: &Topics,
    ch: &Channel,
    first: i64,
    users: i64,
    variety: bool,
) -> Result<String> {
    let producer = broker.producer()?;
    let now = engine_now(ch).await?;
    for i in 0..users {
        let search = custom_event("Search", "search", now - 60_000, json!({"query": "shoes"}));
        let mut batch = sdk_batch(first + i, now, vec![search]);
        batch["user_attributes"]["tier"] = json!(["gold", "silver", "bronze"][(i % 3) as usize]);
        if variety {
            if i % 7 == 0 {
                batch["user_identities"]["email"] = json!(null);
            }
            batch["consent_state"] = json!({"gdpr": {"marketing": {
                "consented": i % 4 != 0, "timestamp_unixtime_ms": now - 1_000, "document": "v2"}}});
        }
        produce_json(&producer, &topics.events, &batch).await?;
    }
    wait_processed(ch, users as u64, Duration::from_secs(180)).await?;
    let sent = drain(ch, "", Duration::from_secs(2)).await?;
    Ok(sent.last().map(|d| d.cursor.clone()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_rebuild_leave_a_healthy_store_alone_and_repair_a_damaged_row() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("rebuild");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("engine");
    let mut engine = Engine::start(&broker, &topics, &data, "rebuild")?;
    let ch = engine.ready().await?;
    let ids = rebuild_audiences(&engine, &ch, true).await?;
    // 2,000 users: tiers, identities (some without an email) and consent (some refused).
    let users = 2_000i64;
    let cursor = stream_users(&broker, &topics, &ch, 200_000, users, true).await?;
    let sizes_before = sizes(&ch, &ids).await?;
    assert_eq!(sizes_before[0], 667, "gold: every third user");
    let mut before: BTreeMap<i64, pb::Profile> = BTreeMap::new();
    let damaged = 200_000 + 3;
    let unreadable = 200_000 + 5;
    for mpid in (0..users)
        .step_by(50)
        .map(|i| 200_000 + i)
        .chain([damaged, unreadable])
    {
        before.insert(mpid, profile(&ch, mpid).await?);
    }

    // A healthy store: verify finds nothing, a rebuild writes nothing and sends nothing.
    let (clean, report) = audiencectl_status(&engine, &["verify"])?;
    assert!(clean, "a healthy store verifies clean: {report}");
    assert!(report.contains("0 differ"), "{report}");
    let (rebuilt, report) = audiencectl_status(&engine, &["rebuild"])?;
    assert!(rebuilt, "{report}");
    let status = replay_status(&ch).await?;
    assert_eq!(
        status
            .partitions
            .iter()
            .map(|p| (p.profiles_scanned, p.profiles_changed, p.deltas))
            .fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2)),
        (users as u64, 0, 0),
        "every profile folded, none rewritten, no delta: {status:?}"
    );

    // Damage one gold member's row while the engine is stopped: its tier and email are gone
    // from the stored state (its logs still hold them).
    engine.terminate()?;
    damage_rows(&data, damaged, unreadable)?;
    engine.restart()?;
    let ch = engine.ready().await?;

    let (clean, report) = audiencectl_status(&engine, &["verify"])?;
    assert!(!clean, "verify fails on a damaged row: {report}");
    let line = report
        .lines()
        .find(|l| l.starts_with(&damaged.to_string()))
        .unwrap_or_else(|| panic!("verify names the damaged MPID: {report}"));
    assert!(
        line.contains("attributes: tier") && line.contains("identities: email"),
        "verify says what differs: {line}"
    );
    let line = report
        .lines()
        .find(|l| l.starts_with(&unreadable.to_string()))
        .unwrap_or_else(|| panic!("verify names the unreadable MPID: {report}"));
    assert!(line.contains("profile: unreadable"), "{line}");
    assert!(
        report.contains("set aside") && report.contains(&format!("/{unreadable} ")),
        "verify lists the row it set aside: {report}"
    );
    let changed = |status: &pb::ReplayStatus| -> u64 {
        status.partitions.iter().map(|p| p.profiles_changed).sum()
    };
    assert_eq!(changed(&replay_status(&ch).await?), 2, "{report}");
    assert_eq!(
        profile(&ch, damaged).await?.user_attributes.len() + 1,
        before[&damaged].user_attributes.len()
    );

    let (rebuilt, report) = audiencectl_status(&engine, &["rebuild"])?;
    assert!(rebuilt, "{report}");
    assert_eq!(changed(&replay_status(&ch).await?), 2, "{report}");
    let (clean, report) = audiencectl_status(&engine, &["verify"])?;
    assert!(clean, "the rebuild repaired the row: {report}");

    for (mpid, was) in &before {
        assert_eq!(&profile(&ch, *mpid).await?, was, "profile {mpid}");
    }
    assert_eq!(sizes(&ch, &ids).await?, sizes_before);
    let after = drain(&ch, &cursor, Duration::from_secs(2)).await?;
    assert!(
        after.is_empty(),
        "verify and rebuild sent nothing: {after:?}"
    );
    Ok(())
}

/// `audience-engine verify|rebuild ...` offline on the stopped engine's data directory:
/// success, standard output and standard error.
fn offline(engine: &Engine, args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let out = engine
        .offline()
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Sums a figure of every partition of an offline command's `--json` report.
fn total(report: &str, figure: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(report.trim())
        .map_err(|e| anyhow::anyhow!("not one JSON object ({e}): {report}"))?;
    Ok(v["partitions"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no partitions: {report}"))?
        .iter()
        .map(|p| p[figure].as_u64().unwrap_or(0))
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_binary_verifies_and_rebuilds_a_stopped_engines_directory() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("offline");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("engine");
    let mut engine = Engine::start(&broker, &topics, &data, "offline")?;
    let ch = engine.ready().await?;
    let ids = rebuild_audiences(&engine, &ch, false).await?;
    let users = 300i64;
    let cursor = stream_users(&broker, &topics, &ch, 300_000, users, false).await?;
    let sizes_before = sizes(&ch, &ids).await?;
    assert_eq!(sizes_before, vec![100, 300]);
    let damaged = 300_000 + 3;
    let unreadable = 300_000 + 6;
    let mut before: BTreeMap<i64, pb::Profile> = BTreeMap::new();
    for mpid in [300_000, 300_001, damaged, unreadable] {
        before.insert(mpid, profile(&ch, mpid).await?);
    }

    // The directory belongs to the running engine: the command says so and touches nothing.
    let (ok, _, err) = offline(&engine, &["verify"], &[])?;
    assert!(!ok && err.contains("is an engine running on it?"), "{err}");

    engine.terminate()?;
    let (ok, report, err) = offline(&engine, &["verify"], &[])?;
    assert!(ok, "a healthy directory verifies clean: {report}{err}");
    assert!(report.contains(" 0 differ "), "{report}");
    // A cluster node's directory is rebuilt by its owners, never offline.
    let (ok, _, err) = offline(&engine, &["rebuild"], &[("AUDIENCE_CHANGELOG", "true")])?;
    assert!(!ok && err.contains("audiencectl rebuild"), "{err}");

    damage_rows(&data, damaged, unreadable)?;
    let (ok, report, err) = offline(&engine, &["rebuild", "--check"], &[])?;
    assert!(!ok, "verify fails on damaged rows: {report}");
    assert!(err.contains("2 profile(s) differ"), "{err}");
    let line = line_of(&report, damaged);
    assert!(
        line.contains("attributes: tier") && line.contains("identities: email"),
        "{line}"
    );
    assert!(line_of(&report, unreadable).contains("profile: unreadable"));
    assert!(report.contains("set aside"), "{report}");

    let (ok, report, err) = offline(&engine, &["rebuild", "--json"], &[])?;
    assert!(ok, "{report}{err}");
    assert_eq!(
        total(&report, "profiles_scanned")?,
        users as u64,
        "{report}"
    );
    assert_eq!(total(&report, "profiles_changed")?, 2, "{report}");
    assert_eq!(
        total(&report, "deltas")?,
        0,
        "memberships were right: {report}"
    );
    let (ok, report, err) = offline(&engine, &["verify", "--json"], &[])?;
    assert!(ok, "the rebuild repaired both rows: {report}{err}");
    assert_eq!(total(&report, "profiles_changed")?, 0, "{report}");

    engine.restart()?;
    let ch = engine.ready().await?;
    for (mpid, was) in &before {
        assert_eq!(&profile(&ch, *mpid).await?, was, "profile {mpid}");
    }
    assert_eq!(sizes(&ch, &ids).await?, sizes_before);
    let after = drain(&ch, &cursor, Duration::from_secs(2)).await?;
    assert!(
        after.is_empty(),
        "the offline rebuild sent nothing: {after:?}"
    );
    Ok(())
}
