//! `audiencectl status`, `replay` and `clock`: the node's state and its operations.

use crate::print::*;
use audience_proto::v1 as pb;
use audience_services::replay_report;
use clap::Subcommand;
use pb::admin_service_client::AdminServiceClient;

#[derive(Subcommand)]
pub enum ClockCmd {
    Get,
    /// Move a manual clock forward.
    Advance {
        #[arg(long, default_value_t = 0)]
        days: i64,
        #[arg(long, default_value_t = 0)]
        hours: i64,
        #[arg(long, default_value_t = 0)]
        millis: i64,
    },
}

/// The audit log, oldest first, in pages until `limit` entries or its end.
pub async fn audit(ctx: &Ctx, by: Option<String>, limit: usize) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    let mut page_token = String::new();
    let mut shown = 0;
    while shown < limit {
        let page = admin
            .list_audit_log(pb::ListAuditLogRequest {
                page_size: (limit - shown).min(1_000) as u32,
                page_token,
                by: by.clone().unwrap_or_default(),
            })
            .await?
            .into_inner();
        for e in &page.entries {
            shown += 1;
            if ctx.json() {
                say_json(&serde_json::json!({
                    "offset": e.offset,
                    "at": when_json(e.at_ms),
                    "by": e.by,
                    "node": e.node,
                    "op": e.op,
                    "subject": e.subject,
                    "accepted": e.accepted,
                    "refusal": e.refusal,
                }));
                continue;
            }
            let outcome = match e.accepted {
                true => String::new(),
                false => format!("  REFUSED: {}", e.refusal),
            };
            let by = if e.by.is_empty() { "-" } else { e.by.as_str() };
            say!(
                "{:>6}  {}  {:<16} {:<18} {}{outcome}",
                e.offset,
                when(e.at_ms),
                by,
                e.op,
                e.subject
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if shown == 0 && !ctx.json() {
        say!("no change recorded");
    }
    Ok(())
}

pub async fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    let s = admin
        .get_engine_status(pb::GetEngineStatusRequest {})
        .await?
        .into_inner();
    if ctx.json() {
        say_json(&serde_json::json!({
            "bootstrap_servers": s.bootstrap_servers,
            "node_id": s.node_id,
            "catalog": {
                // -1: nothing applied yet.
                "applied_offset": s.catalog_applied_offset,
                "applied_at_start": s.catalog_applied_at_start,
                "undecodable": s.catalog_records_undecodable,
                "lag": s.catalog_lag,
            },
            "messages_processed": s.messages_processed,
            "messages_dead_lettered": s.messages_dead_lettered,
            "deltas_emitted": s.deltas_emitted,
            "dead_letters": {
                "published": s.dead_letters_published,
                "truncated": s.dead_letters_truncated,
                "unpublishable": s.dead_letters_unpublishable,
                "dropped": s.dead_letters_dropped,
                "kept": s.dead_letters_kept,
            },
            "deltas_unpublishable": s.deltas_unpublishable,
            "state_bytes_written": s.state_bytes_written,
            "partitions": s.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition,
                "outbox_head": p.outbox_head,
                "deltas_published": p.deltas_published,
                "profiles_active": p.profiles_active,
                "stalled": p.stalled,
                "next_offsets": p.next_offsets,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    say!(
        "bootstrap {}  processed {}  dead-lettered {}  deltas {}  state written {}",
        s.bootstrap_servers,
        s.messages_processed,
        s.messages_dead_lettered,
        s.deltas_emitted,
        bytes_text(s.state_bytes_written)
    );
    let applied = match s.catalog_applied_offset {
        -1 => "none".to_string(),
        offset => offset.to_string(),
    };
    say!(
        "node {}  catalog: applied offset {}  lag {}  applied at start {}  undecodable {}",
        s.node_id,
        applied,
        s.catalog_lag,
        s.catalog_applied_at_start,
        s.catalog_records_undecodable
    );
    say!(
        "dead letters: published {}  truncated {}  unpublishable {}  dropped {}  kept {}  (deltas unpublishable {})",
        s.dead_letters_published,
        s.dead_letters_truncated,
        s.dead_letters_unpublishable,
        s.dead_letters_dropped,
        s.dead_letters_kept,
        s.deltas_unpublishable
    );
    for p in s.partitions {
        say!(
            "  partition {:>3}  outbox head {:>8}  published {:>8}  profiles in memory {:>6}  next offsets {:?}{}",
            p.partition,
            p.outbox_head,
            p.deltas_published,
            p.profiles_active,
            p.next_offsets,
            if p.stalled {
                "  STALLED: the store refuses writes (disk full?)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `audiencectl cluster`: the nodes (from their announcements) with their partitions, and per
/// partition its owner, a node restoring it, and its lag.
pub async fn cluster(ctx: &Ctx) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    let c = admin
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await?
        .into_inner();
    let list = |partitions: &[u32]| -> String {
        if partitions.is_empty() {
            "-".to_string()
        } else {
            partitions
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    if ctx.json() {
        say_json(&serde_json::json!({
            "cluster_id": c.cluster_id,
            "group_id": c.group_id,
            "answered_by": c.answered_by,
            "nodes": c.nodes.iter().map(|n| serde_json::json!({
                "node_id": n.node_id,
                "grpc": n.grpc,
                "partitions": n.partitions,
                "restoring": n.restoring,
                "catalog_applied_offset": n.catalog_applied_offset,
                "announced_ms_ago": n.announced_ms_ago,
                "silent": n.silent,
            })).collect::<Vec<_>>(),
            "partitions": c.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition,
                "owner": p.owner,
                "restoring_on": p.restoring_on,
                "lag": p.lag,
                "standbys": p.standbys,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    say!(
        "cluster {}  group {}  ({} nodes, answered by {})",
        c.cluster_id,
        c.group_id,
        c.nodes.len(),
        c.answered_by
    );
    say!("NODE                     GRPC                   PARTITIONS  RESTORING  CATALOG  SEEN");
    for n in &c.nodes {
        say!(
            "{:<24} {:<22} {:<11} {:<10} {:>7}  {:.1} s ago{}",
            n.node_id,
            n.grpc,
            list(&n.partitions),
            list(&n.restoring),
            n.catalog_applied_offset,
            n.announced_ms_ago as f64 / 1000.0,
            if n.silent { " (silent)" } else { "" }
        );
    }
    say!("PARTITION  OWNER                    RESTORING ON             LAG     STANDBYS");
    for p in &c.partitions {
        let or_dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        say!(
            "{:>9}  {:<24} {:<24} {:>6}  {}",
            p.partition,
            or_dash(&p.owner),
            or_dash(&p.restoring_on),
            if p.lag < 0 {
                "-".to_string()
            } else {
                p.lag.to_string()
            },
            or_dash(&p.standbys.join(","))
        );
    }
    Ok(())
}

/// What `audiencectl replay`, `rebuild` and `verify` ask of the node.
pub enum ReplayAsk {
    /// Show the replays.
    Show,
    /// Start one: a rebuild (`wipe`: from wiped states) or a verify (`check_only`).
    Start { wipe: bool, check_only: bool },
}

/// Starts or shows the node's replays; with `wait`, draws a progress line (scanned, total,
/// time left) until every partition is done. Prints each partition's figures, then the
/// profiles that differed from their logs. A verify that found differences fails (exit 1), so
/// a script run after an upgrade stops there.
pub async fn replay(ctx: &Ctx, ask: ReplayAsk, wait: bool) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    let mut status = match ask {
        ReplayAsk::Start { wipe, check_only } => admin
            .replay_from_log(pb::ReplayFromLogRequest {
                wipe_profiles: wipe,
                check_only,
            })
            .await?
            .into_inner(),
        ReplayAsk::Show => admin
            .get_replay(pb::GetReplayRequest {})
            .await?
            .into_inner(),
    };
    let began = std::time::Instant::now();
    let first_scanned = replay_report::scanned_of_total(&status).0;
    while wait && status.running {
        use std::io::Write;
        let scanned = replay_report::scanned_of_total(&status).0;
        let rate = (scanned - first_scanned.min(scanned)) as f64 / began.elapsed().as_secs_f64();
        eprint!("\r\x1b[2K{}", replay_report::progress_line(&status, rate));
        std::io::stderr().flush()?;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        status = admin
            .get_replay(pb::GetReplayRequest {})
            .await?
            .into_inner();
    }
    if wait {
        eprint!("\r\x1b[2K");
    }
    if ctx.json() {
        say_json(&replay_report::json(&status));
    } else {
        for line in replay_report::text_lines(&status) {
            say!("{line}");
        }
    }
    let differing = replay_report::differing(&status);
    if !status.running && differing > 0 {
        anyhow::bail!("{differing} profile(s) differ from the fold of their logs");
    }
    Ok(())
}

pub async fn clock(ctx: &Ctx, cmd: ClockCmd) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(ctx.channel().await?);
    let r = match cmd {
        ClockCmd::Get => admin.get_clock(pb::GetClockRequest {}).await?,
        ClockCmd::Advance {
            days,
            hours,
            millis,
        } => {
            let millis = days * 86_400_000 + hours * 3_600_000 + millis;
            admin
                .advance_clock(pb::AdvanceClockRequest { millis })
                .await?
        }
    }
    .into_inner();
    if ctx.json() {
        say_json(&serde_json::json!({
            "now": when_json(r.now_ms), "now_ms": r.now_ms, "manual": r.manual,
        }));
    } else {
        say!(
            "now {} ({} ms){}",
            when(r.now_ms),
            r.now_ms,
            if r.manual { ", a manual clock" } else { "" }
        );
    }
    Ok(())
}
