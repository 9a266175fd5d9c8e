//! What a replay (rebuild or verify) reports, in one shape for every way of running one: the
//! node's partitions as `pb::ReplayStatus` (the API's answer, and what the offline commands of
//! the engine binary print), its progress line, and its text and JSON renderings, which
//! `audiencectl rebuild`/`verify` and `audience-engine rebuild`/`verify` share.

use audience_actors::engine::{Engine, ReplayProgress};
use audience_proto::v1 as pb;
use audience_state::store::{Partition, Quarantined, NODE_ROWS};
use audience_state::time::format_instant;
use std::collections::HashMap;

/// The replays of `engine`'s partitions, running or finished, as node `node_id` reports them;
/// with the definitions this node set aside.
pub fn local_status(engine: &Engine, node_id: &str) -> pb::ReplayStatus {
    let replays = engine.replays.lock().clone();
    let definitions_quarantined = match engine.store.quarantined(NODE_ROWS, 100) {
        Ok((rows, _)) => rows.iter().map(|q| quarantined_row(q, node_id)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "quarantine unreadable");
            Vec::new()
        }
    };
    status(replays, node_id, definitions_quarantined)
}

fn status(
    replays: HashMap<Partition, ReplayProgress>,
    node_id: &str,
    definitions_quarantined: Vec<pb::QuarantinedRow>,
) -> pb::ReplayStatus {
    let mut partitions: Vec<pb::PartitionReplay> = replays
        .into_iter()
        .map(|(partition, r)| pb::PartitionReplay {
            partition,
            wiped: r.wiped,
            check_only: r.check_only,
            profiles_changed: r.changed,
            differences: r
                .differences
                .iter()
                .map(|(mpid, fields)| pb::ProfileDifference {
                    mpid: *mpid,
                    fields: fields.clone(),
                })
                .collect(),
            running: r.finished_at_ms.is_none(),
            node_id: node_id.to_string(),
            profiles_scanned: r.scanned,
            profiles_total: r.total,
            deltas: r.deltas,
            unreadable_logs: r.unreadable,
            quarantined_rows: r.quarantined_rows,
            quarantined: r
                .quarantined
                .iter()
                .map(|q| quarantined_row(q, node_id))
                .collect(),
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms.unwrap_or(0),
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    pb::ReplayStatus {
        running: partitions.iter().any(|p| p.running),
        partitions,
        definitions_quarantined,
    }
}

/// A row set aside, as the API shows it.
pub fn quarantined_row(q: &Quarantined, node_id: &str) -> pb::QuarantinedRow {
    pb::QuarantinedRow {
        column_family: q.cf.clone(),
        key: q.display_key.clone(),
        reason: q.reason.clone(),
        at_ms: q.at_ms,
        node_id: node_id.to_string(),
    }
}

/// Profiles a finished verify found different from the fold of their logs (what makes the
/// commands fail, so a script run after an upgrade stops there).
pub fn differing(status: &pb::ReplayStatus) -> u64 {
    status
        .partitions
        .iter()
        .filter(|p| p.check_only)
        .map(|p| p.profiles_changed)
        .sum()
}

/// Profiles scanned so far and to scan, over every partition.
pub fn scanned_of_total(status: &pb::ReplayStatus) -> (u64, u64) {
    status.partitions.iter().fold((0, 0), |(s, t), p| {
        (
            s + p.profiles_scanned,
            t + p.profiles_total.max(p.profiles_scanned),
        )
    })
}

/// The progress line: the verb, percent, profiles scanned of the total and, once `rate`
/// (profiles/s since the command began) is known, the time left.
pub fn progress_line(status: &pb::ReplayStatus, rate: f64) -> String {
    let (scanned, total) = scanned_of_total(status);
    let percent = if total == 0 {
        0.0
    } else {
        100.0 * scanned as f64 / total as f64
    };
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
    format!("{verb} {percent:5.1}%  {scanned} of {total} profiles{left}")
}

/// The report as lines for people: a line per partition, the rows set aside, then the
/// profiles that differ and what differs in each.
pub fn text_lines(status: &pb::ReplayStatus) -> Vec<String> {
    let mut lines = Vec::new();
    if status.partitions.is_empty() {
        lines.push("no replay since the engine started".to_string());
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
        lines.push(format!(
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
        ));
    }
    let set_aside: Vec<&pb::QuarantinedRow> = status
        .partitions
        .iter()
        .flat_map(|p| &p.quarantined)
        .chain(&status.definitions_quarantined)
        .collect();
    if !set_aside.is_empty() {
        lines.push(format!(
            "{:<12}  {:<12}  {:<24}  {:<20}  WHY (rows that could not be read, set aside)",
            "NODE", "IN", "KEY", "SINCE"
        ));
        for q in set_aside {
            lines.push(format!(
                "{:<12}  {:<12}  {:<24}  {:<20}  {}",
                q.node_id,
                q.column_family,
                q.key,
                format_instant(q.at_ms),
                q.reason
            ));
        }
    }
    let shown: Vec<&pb::ProfileDifference> = status
        .partitions
        .iter()
        .flat_map(|p| &p.differences)
        .collect();
    if !shown.is_empty() {
        lines.push(format!("{:<20}  DIFFERS", "MPID"));
        for d in shown {
            lines.push(format!("{:<20}  {}", d.mpid, d.fields.join("; ")));
        }
    }
    lines
}

/// The report as one JSON object, for scripts.
pub fn json(status: &pb::ReplayStatus) -> serde_json::Value {
    serde_json::json!({
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
    })
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
