//! `audiencectl status`, `replay` and `clock`: the node's state and its operations.

use crate::print::*;
use audience_proto::v1 as pb;
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
            "partitions": s.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition,
                "outbox_head": p.outbox_head,
                "profiles_active": p.profiles_active,
                "next_offsets": p.next_offsets,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    say!(
        "bootstrap {}  processed {}  dead-lettered {}  deltas {}",
        s.bootstrap_servers,
        s.messages_processed,
        s.messages_dead_lettered,
        s.deltas_emitted
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
            "  partition {:>3}  outbox head {:>8}  profiles in memory {:>6}  next offsets {:?}",
            p.partition,
            p.outbox_head,
            p.profiles_active,
            p.next_offsets
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
    let first_scanned: u64 = status.partitions.iter().map(|p| p.profiles_scanned).sum();
    while wait && status.running {
        use std::io::Write;
        let (scanned, total) = status.partitions.iter().fold((0, 0), |(s, t), p| {
            (
                s + p.profiles_scanned,
                t + p.profiles_total.max(p.profiles_scanned),
            )
        });
        let percent = if total == 0 {
            0.0
        } else {
            100.0 * scanned as f64 / total as f64
        };
        let rate = (scanned - first_scanned.min(scanned)) as f64 / began.elapsed().as_secs_f64();
        let left = if rate > 0.0 && total > scanned {
            format!(", about {:.0} s left", (total - scanned) as f64 / rate)
        } else {
            String::new()
        };
        let verb = if status.partitions.iter().any(|p| p.check_only) {
            "verifying"
        } else {
            "rebuilding"
        };
        eprint!("\r\x1b[2K{verb} {percent:5.1}%  {scanned} of {total} profiles{left}");
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
    let differing: u64 = status
        .partitions
        .iter()
        .filter(|p| p.check_only)
        .map(|p| p.profiles_changed)
        .sum();
    if ctx.json() {
        say_json(&serde_json::json!({
            "running": status.running,
            "partitions": status.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition,
                "node": p.node_id,
                "running": p.running,
                "mode": mode_name(p),
                "profiles_scanned": p.profiles_scanned,
                "profiles_total": p.profiles_total.max(p.profiles_scanned),
                "profiles_changed": p.profiles_changed,
                "deltas": p.deltas,
                "unreadable_logs": p.unreadable_logs,
                "quarantined_rows": p.quarantined_rows,
                "quarantined": p.quarantined.iter().map(quarantined_json).collect::<Vec<_>>(),
                "differences": p.differences.iter().map(|d| serde_json::json!({
                    "mpid": d.mpid, "fields": d.fields,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "definitions_quarantined": status.definitions_quarantined.iter()
                .map(quarantined_json).collect::<Vec<_>>(),
        }));
    } else {
        if status.partitions.is_empty() {
            say!("no replay since the engine started");
        }
        for p in &status.partitions {
            let (changed, deltas) = if p.check_only {
                ("differ", "deltas a rebuild would send")
            } else {
                ("rewritten", "deltas")
            };
            let node = match p.node_id.as_str() {
                "" => String::new(),
                id => format!(" on {id}"),
            };
            say!(
                "partition {:>3}{node}  {} {}  {} of {} profiles  {} {changed}  {} {deltas}  {} unreadable logs  {} rows set aside",
                p.partition,
                mode_name(p),
                if p.running { "running" } else { "done" },
                p.profiles_scanned,
                p.profiles_total.max(p.profiles_scanned),
                p.profiles_changed,
                p.deltas,
                p.unreadable_logs,
                p.quarantined_rows
            );
        }
        let set_aside: Vec<&pb::QuarantinedRow> = status
            .partitions
            .iter()
            .flat_map(|p| &p.quarantined)
            .chain(&status.definitions_quarantined)
            .collect();
        if !set_aside.is_empty() {
            say!(
                "{:<12}  {:<12}  {:<24}  {:<20}  WHY (rows that could not be read, set aside)",
                "NODE",
                "IN",
                "KEY",
                "SINCE"
            );
            for q in set_aside {
                say!(
                    "{:<12}  {:<12}  {:<24}  {:<20}  {}",
                    q.node_id,
                    q.column_family,
                    q.key,
                    audience_state::time::format_instant(q.at_ms),
                    q.reason
                );
            }
        }
        let shown: Vec<&pb::ProfileDifference> = status
            .partitions
            .iter()
            .flat_map(|p| &p.differences)
            .collect();
        if !shown.is_empty() {
            say!("{:<20}  DIFFERS", "MPID");
            for d in shown {
                say!("{:<20}  {}", d.mpid, d.fields.join("; "));
            }
        }
    }
    if !status.running && differing > 0 {
        anyhow::bail!("{differing} profile(s) differ from the fold of their logs");
    }
    Ok(())
}

fn quarantined_json(q: &pb::QuarantinedRow) -> serde_json::Value {
    serde_json::json!({
        "node": q.node_id, "column_family": q.column_family, "key": q.key,
        "reason": q.reason, "at_ms": q.at_ms,
    })
}

fn mode_name(p: &pb::PartitionReplay) -> &'static str {
    match (p.check_only, p.wiped) {
        (true, _) => "verify",
        (false, true) => "rebuild (wiped first)",
        (false, false) => "rebuild",
    }
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
