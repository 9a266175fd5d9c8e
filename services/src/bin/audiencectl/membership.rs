//! `audiencectl subscribe`, `history`, `members`, `stats` and `connectors`: membership deltas
//! and what the engine knows of them.

use crate::client::*;
use audience_proto::v1 as pb;
use pb::membership_service_client::MembershipServiceClient;

pub async fn subscribe(
    server: &str,
    audiences: Vec<u64>,
    cursor: String,
    limit: Option<usize>,
    json: bool,
    name: String,
) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(channel(server).await?);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            audience_ids: audiences,
            cursor,
            subscriber_name: name,
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(d) = stream.message().await? {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "delta_id": d.delta_id, "audience_id": d.audience_id, "mpid": d.mpid,
                    "kind": if d.kind == pb::DeltaKind::Added as i32 { "added" } else { "dropped" },
                    "version": d.version, "event_time_ms": d.event_time_ms,
                    "processing_time_ms": d.processing_time_ms, "cursor": d.cursor,
                })
            );
        } else {
            let kind = if d.kind == pb::DeltaKind::Added as i32 {
                "+ added  "
            } else {
                "- dropped"
            };
            println!(
                "{kind} mpid {:>20}  audience {:>4}  v{}  cursor {}",
                d.mpid, d.audience_id, d.version, d.cursor
            );
        }
        n += 1;
        if limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    Ok(())
}

pub async fn history(server: &str, mpid: i64) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(channel(server).await?);
    let h = client
        .get_membership_history(pb::GetMembershipHistoryRequest { mpid })
        .await?
        .into_inner();
    for i in h.intervals {
        let left = if i.left_ms == 0 {
            "still a member".to_string()
        } else {
            format!("left {} (v{})", i.left_ms, i.left_version)
        };
        println!(
            "{:>5}  {:<32} entered {} (v{})  {left}",
            i.audience_id, i.audience_name, i.entered_ms, i.entered_version
        );
    }
    Ok(())
}

pub async fn members(server: &str, audience: u64, as_of: Option<i64>) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(channel(server).await?);
    let mut page_token = String::new();
    let mut total = 0;
    loop {
        let page = client
            .list_members(pb::ListMembersRequest {
                audience_id: audience,
                as_of_ms: as_of.unwrap_or(0),
                page_size: 10_000,
                page_token,
            })
            .await?
            .into_inner();
        total += page.mpids.len();
        for mpid in &page.mpids {
            println!("{mpid}");
        }
        if page.next_page_token.is_empty() {
            eprintln!(
                "{total} members of audience {audience} as of {}",
                page.as_of_ms
            );
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

pub async fn stats(server: &str, ids: Vec<u64>) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(channel(server).await?);
    let r = client
        .get_audience_stats(pb::GetAudienceStatsRequest { audience_ids: ids })
        .await?
        .into_inner();
    for a in r.audiences {
        let s = a.stats.unwrap_or_default();
        println!(
            "audience {:>5}  size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}",
            a.audience_id, s.size, s.adds_24h, s.drops_24h, s.volatility_24h
        );
    }
    Ok(())
}

pub async fn connectors(server: &str) -> anyhow::Result<()> {
    let mut client = MembershipServiceClient::new(channel(server).await?);
    for c in client
        .list_connectors(pb::ListConnectorsRequest {})
        .await?
        .into_inner()
        .connectors
    {
        println!(
            "connector {} '{}' audiences {:?} delivered {} cursor {}",
            c.id, c.subscriber_name, c.audience_ids, c.delivered, c.cursor
        );
        for a in c.audiences {
            let s = a.stats.unwrap_or_default();
            println!(
                "    audience {:>5}  size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}",
                a.audience_id, s.size, s.adds_24h, s.drops_24h, s.volatility_24h
            );
        }
    }
    Ok(())
}
