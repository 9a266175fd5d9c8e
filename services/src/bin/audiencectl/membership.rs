//! `audiencectl subscribe`, `history`, `members`, `stats` and `connectors`: membership deltas
//! and what the engine knows of them.

use crate::print::*;
use audience_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::membership_service_client::MembershipServiceClient;
use serde_json::json;
use std::io::IsTerminal;

pub async fn subscribe(
    ctx: &Ctx,
    audiences: Vec<u64>,
    cursor: String,
    limit: Option<usize>,
    json: bool,
    name: String,
) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(ctx.channel().await?);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            audience_ids: audiences,
            cursor,
            subscriber_name: name,
        })
        .await?
        .into_inner();
    let mut n = 0;
    if limit == Some(0) {
        return Ok(());
    }
    while let Some(d) = stream.message().await? {
        if json || ctx.json() {
            say_json(&json!({
                "delta_id": d.delta_id, "audience_id": d.audience_id, "mpid": d.mpid,
                "kind": if d.kind == pb::DeltaKind::Added as i32 { "added" } else { "dropped" },
                "version": d.version, "event_time_ms": d.event_time_ms,
                "processing_time_ms": d.processing_time_ms,
                "event_time": when_json(d.event_time_ms),
                "processing_time": when_json(d.processing_time_ms), "cursor": d.cursor,
            }));
        } else {
            let kind = if d.kind == pb::DeltaKind::Added as i32 {
                "+ added  "
            } else {
                "- dropped"
            };
            say!(
                "{kind} mpid {:>20}  audience {:>4}  version {}  at {}  cursor {}",
                d.mpid,
                d.audience_id,
                d.version,
                when(d.processing_time_ms),
                d.cursor
            );
        }
        n += 1;
        if limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    Ok(())
}

pub async fn history(ctx: &Ctx, mpid: i64) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(ctx.channel().await?);
    let h = client
        .get_membership_history(pb::GetMembershipHistoryRequest { mpid })
        .await?
        .into_inner();
    for i in h.intervals {
        if ctx.json() {
            say_json(&json!({
                "mpid": mpid,
                "audience_id": i.audience_id,
                "audience_name": i.audience_name,
                "entered": when_json(i.entered_ms),
                "entered_version": i.entered_version,
                "left": when_json(i.left_ms),
                "left_version": (i.left_ms != 0).then_some(i.left_version),
            }));
            continue;
        }
        let left = if i.left_ms == 0 {
            "still a member".to_string()
        } else {
            format!("left {} (version {})", when(i.left_ms), i.left_version)
        };
        say!(
            "{:>5}  {:<32} entered {} (version {})  {left}",
            i.audience_id,
            i.audience_name,
            when(i.entered_ms),
            i.entered_version
        );
    }
    Ok(())
}

/// The members of an audience now, or as of an instant typed as people type them; relative
/// instants (`-2h`) count from the engine's clock, which a demo or a test may have moved.
pub async fn members(ctx: &Ctx, audience: u64, as_of: Option<String>) -> anyhow::Result<()> {
    let engine = ctx.channel().await?;
    let as_of = match as_of {
        Some(text) => {
            let now = AdminServiceClient::new(engine.clone())
                .get_clock(pb::GetClockRequest {})
                .await?
                .into_inner()
                .now_ms;
            let at = audience_state::time::parse_instant(&text, now)
                .map_err(|e| anyhow::anyhow!("--as-of: {e}"))?;
            Some(at)
        }
        None => None,
    };
    let mut client = MembershipServiceClient::new(engine);
    let mut page_token = String::new();
    let mut total = 0;
    // Every page at the first page's instant, so the pages are one list.
    let mut as_of_ms = as_of.unwrap_or(0);
    loop {
        let page = client
            .list_members(pb::ListMembersRequest {
                audience_id: audience,
                as_of_ms,
                page_size: 10_000,
                page_token,
                identity_types: Vec::new(),
            })
            .await?
            .into_inner();
        as_of_ms = page.as_of_ms;
        total += page.mpids.len();
        for mpid in &page.mpids {
            if ctx.json() {
                say_json(&json!({"audience_id": audience, "mpid": mpid}));
            } else {
                say!("{mpid}");
            }
        }
        if page.next_page_token.is_empty() {
            // A summary for a person at a terminal; scripts and pipes get the list alone.
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "{total} members of audience {audience} as of {}",
                    when(page.as_of_ms)
                );
            }
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

pub async fn stats(ctx: &Ctx, ids: Vec<u64>) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(ctx.channel().await?);
    let r = client
        .get_audience_stats(pb::GetAudienceStatsRequest { audience_ids: ids })
        .await?
        .into_inner();
    for a in r.audiences {
        let s = a.stats.unwrap_or_default();
        if ctx.json() {
            say_json(&stats_json(a.audience_id, &s));
            continue;
        }
        say!(
            "audience {:>5}  size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}  \
             event-to-delta {}  produce-to-delta {}",
            a.audience_id,
            s.size,
            s.adds_24h,
            s.drops_24h,
            s.volatility_24h,
            latency_text(s.event_to_delta.as_ref()),
            latency_text(s.produce_to_delta.as_ref())
        );
    }
    Ok(())
}

pub async fn connectors(ctx: &Ctx) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(ctx.channel().await?);
    for c in client
        .list_connectors(pb::ListConnectorsRequest {})
        .await?
        .into_inner()
        .connectors
    {
        if ctx.json() {
            say_json(&json!({
                "id": c.id,
                "subscriber_name": c.subscriber_name,
                "audience_ids": c.audience_ids,
                "delivered": c.delivered,
                "cursor": c.cursor,
                "audiences": c.audiences.iter()
                    .map(|a| stats_json(a.audience_id, &a.stats.clone().unwrap_or_default()))
                    .collect::<Vec<_>>(),
            }));
            continue;
        }
        say!(
            "connector {} '{}' audiences {:?} delivered {} cursor {}",
            c.id,
            c.subscriber_name,
            c.audience_ids,
            c.delivered,
            c.cursor
        );
        for a in c.audiences {
            let s = a.stats.unwrap_or_default();
            say!(
                "    audience {:>5}  size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}",
                a.audience_id,
                s.size,
                s.adds_24h,
                s.drops_24h,
                s.volatility_24h
            );
        }
    }
    Ok(())
}
