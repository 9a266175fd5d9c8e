//! `audiencectl produce`, `create-topics` and `demo`: writing to the input topics.

use crate::audience::*;
use crate::client::*;
use crate::print::*;
use anyhow::{bail, Context};
use audience_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::audience_service_client::AudienceServiceClient;
use pb::membership_service_client::MembershipServiceClient;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub async fn produce(
    ctx: &Ctx,
    bootstrap: Option<String>,
    topic: String,
    key: Option<String>,
    raw: bool,
    file: PathBuf,
) -> anyhow::Result<()> {
    let bootstrap = match bootstrap {
        Some(b) => b,
        None => ctx.engine_bootstrap().await?,
    };
    let producer = producer(&bootstrap)?;
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
    };
    let messages: Vec<Vec<u8>> = if raw {
        vec![bytes]
    } else {
        let text = String::from_utf8(bytes).context("the file is not UTF-8 JSON (use --raw)")?;
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => vec![serde_json::to_vec(&v)?],
            Err(_) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.as_bytes().to_vec())
                .collect(),
        }
    };
    for m in messages {
        let key = key
            .clone()
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&m)
                    .ok()
                    .and_then(|v| match &v["mpid"] {
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        serde_json::Value::String(s) => Some(s.clone()),
                        _ => None,
                    })
            })
            .unwrap_or_default();
        let (p, o) = send(&producer, &topic, &key, &m).await?;
        if ctx.json() {
            say_json(&serde_json::json!({
                "topic": topic, "partition": p, "offset": o, "key": key,
            }));
        } else {
            say!("produced to {topic} partition {p} offset {o} key {key}");
        }
    }
    Ok(())
}

pub async fn create_topics(
    ctx: &Ctx,
    bootstrap: String,
    partitions: i32,
    topics: Vec<String>,
) -> anyhow::Result<()> {
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let refused = audience_services::server::ensure_topics(
        &bootstrap,
        &Default::default(),
        &refs,
        partitions,
    )
    .await?;
    for (topic, reason) in &refused {
        eprintln!("topic {topic}: {reason}");
    }
    if !refused.is_empty() {
        bail!("{} topic(s) not created", refused.len());
    }
    if ctx.json() {
        say_json(&serde_json::json!({"topics_ready": topics}));
    } else {
        say!("topics ready: {}", topics.join(", "));
    }
    Ok(())
}

/// A deterministic stream of sample users doing sample things.
pub fn sample_batch(mpid: i64, step: u64, now_ms: i64) -> serde_json::Value {
    const SCREENS: &[&str] = &["Home", "Search", "Product", "Cart"];
    const EVENTS: &[(&str, &str)] = &[
        ("Viewed Item", "navigation"),
        ("Search", "search"),
        ("Shared", "social"),
        ("Played Video", "other"),
    ];
    const TIERS: &[&str] = &["bronze", "silver", "gold", "platinum"];
    let h = (mpid as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(step.wrapping_mul(1442695040888963407));
    let pick = |n: usize, salt: u64| ((h >> (salt * 8)) % n as u64) as usize;
    let mut events = vec![
        serde_json::json!({"event_type": "screen_view", "data": {"screen_name": SCREENS[pick(SCREENS.len(), 1)], "timestamp_unixtime_ms": now_ms}}),
    ];
    let (name, kind) = EVENTS[pick(EVENTS.len(), 2)];
    events.push(serde_json::json!({"event_type": "custom_event", "data": {"event_name": name, "custom_event_type": kind, "timestamp_unixtime_ms": now_ms, "custom_attributes": {"category": if pick(2, 3) == 0 { "shoes" } else { "hats" }}}}));
    if pick(5, 4) == 0 {
        events.push(serde_json::json!({"event_type": "commerce_event", "data": {"timestamp_unixtime_ms": now_ms, "product_action": {"action": if pick(3, 5) == 0 { "purchase" } else { "add_to_cart" }, "products": [{"id": "sku-1", "name": "Sneaker", "price": 59.0, "quantity": 1}], "total_amount": 59.0}}}));
    }
    serde_json::json!({
        "mpid": mpid,
        "environment": "development",
        "timestamp_unixtime_ms": now_ms,
        "user_identities": {"customer_id": format!("cust-{mpid}"), "email": if mpid % 3 == 0 { serde_json::Value::Null } else { format!("user{mpid}@example.com").into() }},
        "user_attributes": {"tier": TIERS[pick(TIERS.len(), 6)], "age": 18 + (mpid % 50)},
        "device_info": {"platform": if mpid % 2 == 0 { "iOS" } else { "Android" }, "os_version": "17.1"},
        "events": events,
    })
}

pub async fn demo(
    ctx: &Ctx,
    dir: &Path,
    users: i64,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    let engine = ctx.channel().await?;
    let mut audiences = AudienceServiceClient::new(engine.clone());
    let names = load_audiences(ctx, &mut audiences, dir).await?;
    if names.is_empty() {
        bail!("no audiences in {}", dir.display());
    }
    let bootstrap = ctx.engine_bootstrap().await?;
    let producer = producer(&bootstrap)?;
    let mut membership = MembershipServiceClient::new(engine.clone());
    let mut stream = membership
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![],
            cursor: "now".into(),
            subscriber_name: "demo".into(),
        })
        .await?
        .into_inner();
    let mut stats_client = MembershipServiceClient::new(engine.clone());
    let printer = tokio::spawn(async move {
        while let Ok(Some(d)) = stream.message().await {
            let size = stats_client
                .get_audience_stats(pb::GetAudienceStatsRequest {
                    audience_ids: vec![d.audience_id],
                })
                .await
                .ok()
                .and_then(|r| {
                    r.into_inner()
                        .audiences
                        .first()
                        .and_then(|a| a.stats.clone())
                })
                .map(|s| s.size)
                .unwrap_or_default();
            let name = names.get(&d.audience_id).cloned().unwrap_or_default();
            let verb = if d.kind == pb::DeltaKind::Added as i32 {
                "entered"
            } else {
                "left   "
            };
            say!(
                "user {:>6} {verb} '{name}' (audience {}, now {size} members)",
                d.mpid,
                d.audience_id
            );
        }
    });
    say!("feeding sample events for {users} users to {bootstrap} at {rate} batches/s (Ctrl-C to stop)");
    let mut admin = AdminServiceClient::new(engine);
    let manual_clock = admin
        .get_clock(pb::GetClockRequest {})
        .await?
        .into_inner()
        .manual;
    if manual_clock {
        say!("the engine clock is manual: every 15 s the demo moves it a day forward, so recency windows pass");
    }
    let mut last_jump = std::time::Instant::now();
    let start = std::time::Instant::now();
    let mut step = 0u64;
    // At least a millisecond apart: a zero period would panic.
    let mut interval =
        tokio::time::interval(Duration::from_micros(1_000_000 / rate.clamp(1, 1_000_000)));
    loop {
        interval.tick().await;
        if seconds > 0 && start.elapsed() > Duration::from_secs(seconds) {
            break;
        }
        if manual_clock && last_jump.elapsed() > Duration::from_secs(15) {
            admin
                .advance_clock(pb::AdvanceClockRequest { millis: 86_400_000 })
                .await?;
            say!("--- the engine clock moved one day forward ---");
            last_jump = std::time::Instant::now();
        }
        let mpid = 1000 + (step as i64 * 7919) % users.max(1);
        let now = admin
            .get_clock(pb::GetClockRequest {})
            .await?
            .into_inner()
            .now_ms;
        let batch = sample_batch(mpid, step, now);
        send(
            &producer,
            "audience-events",
            &mpid.to_string(),
            batch.to_string().as_bytes(),
        )
        .await?;
        step += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    printer.abort();
    Ok(())
}
