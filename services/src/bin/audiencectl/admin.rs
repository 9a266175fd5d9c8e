//! `audiencectl status`, `replay` and `clock`: the node's state and its operations.

use crate::client::*;
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

pub async fn status(server: &str) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(channel(server).await?);
    let s = admin
        .get_engine_status(pb::GetEngineStatusRequest {})
        .await?
        .into_inner();
    println!(
        "bootstrap {}  processed {}  dead-lettered {}  deltas {}",
        s.bootstrap_servers, s.messages_processed, s.messages_dead_lettered, s.deltas_emitted
    );
    println!(
        "dead letters: published {}  truncated {}  unpublishable {}  dropped {}  kept {}  (deltas unpublishable {})",
        s.dead_letters_published,
        s.dead_letters_truncated,
        s.dead_letters_unpublishable,
        s.dead_letters_dropped,
        s.dead_letters_kept,
        s.deltas_unpublishable
    );
    for p in s.partitions {
        println!(
            "  partition {:>3}  outbox head {:>8}  profiles in memory {:>6}  next offsets {:?}",
            p.partition, p.outbox_head, p.profiles_active, p.next_offsets
        );
    }
    Ok(())
}

pub async fn replay(server: &str, start: bool, wipe: bool, wait: bool) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(channel(server).await?);
    let mut status = if start {
        admin
            .replay_from_log(pb::ReplayFromLogRequest {
                wipe_profiles: wipe,
            })
            .await?
            .into_inner()
    } else {
        admin
            .get_replay(pb::GetReplayRequest {})
            .await?
            .into_inner()
    };
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
        eprint!("\r\x1b[2Kreplaying {percent:5.1}%  {scanned} of {total} profiles");
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
    if status.partitions.is_empty() {
        println!("no replay since the engine started");
    }
    for p in &status.partitions {
        println!(
            "partition {:>3}  {}{}  {} of {} profiles  {} deltas  {} unreadable logs",
            p.partition,
            if p.running { "running" } else { "done" },
            if p.wiped { " (wiped first)" } else { "" },
            p.profiles_scanned,
            p.profiles_total.max(p.profiles_scanned),
            p.deltas,
            p.unreadable_logs
        );
    }
    Ok(())
}

pub async fn clock(server: &str, cmd: ClockCmd) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(channel(server).await?);
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
    println!(
        "now {} ({}) manual {}",
        r.now_ms,
        chrono::DateTime::from_timestamp_millis(r.now_ms)
            .map(|d| d.to_rfc3339())
            .unwrap_or_default(),
        r.manual
    );
    Ok(())
}
