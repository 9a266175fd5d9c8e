//! How every command prints: human text, or JSON with `--output json` (one object, or one
//! object per line for lists), to standard output. Instants print as RFC 3339 in UTC and
//! attribute values as JSON values.
//!
//! Invariant: nothing writes to standard output but through [`line`], so a closed pipe
//! (`audiencectl members 2 | head -4`) ends the command quietly, with status 0 and nothing on
//! standard error, instead of a panic.

use audience_proto::v1 as pb;
use audience_state::time::format_instant;
use serde_json::{json, Value};
use std::io::Write;

/// What `--output` selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// JSON for scripts: one object per command, or one object per line for lists.
    Json,
}

/// What every command gets: where the engine is, and how to print.
pub struct Ctx {
    pub server: String,
    pub format: Format,
    /// The token (AUDIENCE_TOKEN) and, for https://, the CA file.
    pub client: audience_services::auth::ClientOptions,
}

impl Ctx {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Writes one line to standard output. A closed pipe ends the process quietly (status 0); any
/// other failure to write ends it with a one-line error.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("audiencectl: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::print::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// One JSON value on one line.
pub fn say_json(value: &Value) {
    line(format_args!("{value}"));
}

/// An instant for people: RFC 3339 in UTC, or `never` for 0 (unset).
pub fn when(ms: i64) -> String {
    if ms == 0 {
        "never".to_string()
    } else {
        format_instant(ms)
    }
}

/// A count of bytes for people, in the binary unit that keeps it short: `512 B`, `3.4 MiB`.
pub fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An instant for scripts: RFC 3339 in UTC, or null for 0 (unset).
pub fn when_json(ms: i64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        Value::String(format_instant(ms))
    }
}

/// A gRPC attribute value as the JSON value it is.
pub fn value_json(v: &pb::AttributeValue) -> Value {
    use pb::attribute_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => json!(s),
        Some(V::NumberValue(n)) => number_json(*n),
        Some(V::BoolValue(b)) => json!(b),
        Some(V::DateUnixtimeMs(ms)) => Value::String(format_instant(*ms)),
        Some(V::ListValue(l)) => json!(l.values),
        Some(V::NullValue(_)) | None => Value::Null,
    }
}

/// Whole numbers as integers (`52`, not `52.0`).
pub fn number_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

/// One node of an explanation per line, indented by depth.
pub fn explain_text(node: &pb::ExplainNode, depth: usize) {
    let mark = if node.matched { "yes" } else { "no " };
    say!(
        "{}[{mark}] {}: {}",
        "    ".repeat(depth),
        node.criterion,
        node.detail
    );
    for child in &node.children {
        explain_text(child, depth + 1);
    }
}

/// An explanation as a JSON tree.
pub fn explain_json(node: &pb::ExplainNode) -> Value {
    json!({
        "criterion": node.criterion,
        "matched": node.matched,
        "detail": node.detail,
        "next_change": when_json(node.next_change_ms),
        "children": node.children.iter().map(explain_json).collect::<Vec<_>>(),
    })
}

/// The status alone: active, draft or calculating.
fn status_name(a: &pb::Audience) -> &'static str {
    match pb::AudienceStatus::try_from(a.status) {
        Ok(pb::AudienceStatus::Draft) => "draft",
        Ok(pb::AudienceStatus::Calculating) => "calculating",
        _ => "active",
    }
}

/// The status for people: the calculation's progress with it.
fn status_words(a: &pb::Audience) -> String {
    match status_name(a) {
        "calculating" => format!(
            "calculating {:.0}%",
            a.calculation.map(|c| c.percent).unwrap_or_default()
        ),
        name => name.to_string(),
    }
}

pub fn audience_json(a: &pb::Audience) -> Value {
    let s = a.stats.clone().unwrap_or_default();
    json!({
        "id": a.id,
        "name": a.name,
        "external_name": a.external_name,
        "status": status_name(a),
        "calculation": a.calculation.filter(|_| status_name(a) == "calculating").map(|c| json!({
            "percent": c.percent,
            "profiles_scanned": c.profiles_scanned,
            "profiles_total": c.profiles_total,
        })),
        "revision": a.revision,
        "created_at": when_json(a.created_at_ms),
        "updated_at": when_json(a.updated_at_ms),
        "created_by": a.created_by,
        "updated_by": a.updated_by,
        "tags": a.tags,
        "workspaces": a.workspaces,
        "inputs": a.inputs,
        "access": access_name(a).replace(' ', "_"),
        "size": s.size,
        "adds_24h": s.adds_24h,
        "drops_24h": s.drops_24h,
        "volatility_24h": s.volatility_24h,
        "connected_outputs": a.connected_outputs,
        "faulted_connections": a.faulted_connections,
        "ab_test": a.ab_test.as_ref().map(ab_test_json),
        "criteria": a.criteria.as_ref().map(audience_services::convert::struct_to_json),
    })
}

/// An A/B test: its id and variations, Control last.
pub fn ab_test_json(test: &pb::AbTest) -> Value {
    json!({
        "id": test.id,
        "variations": test.variations.iter().map(|v| json!({
            "name": v.name,
            "percent": v.percent,
        })).collect::<Vec<_>>(),
    })
}

/// An audience: one line of text, or one JSON object.
pub fn audience(ctx: &Ctx, a: &pb::Audience) {
    if ctx.json() {
        return say_json(&audience_json(a));
    }
    let s = a.stats.clone().unwrap_or_default();
    let by = match a.created_by.as_str() {
        "" => String::new(),
        name => format!("  by {name}"),
    };
    let scope = match (a.workspaces.as_slice(), a.inputs.as_slice()) {
        ([], _) => String::new(),
        (workspaces, []) => format!("  workspaces [{}]", workspaces.join(", ")),
        (workspaces, inputs) => format!(
            "  workspaces [{}] inputs [{}]",
            workspaces.join(", "),
            inputs.join(", ")
        ),
    };
    let shared = match access_name(a) {
        "private" => String::new(),
        access => format!("  shared {access}"),
    };
    // The seed's mark of an audience with an A/B test.
    let name = match a.ab_test {
        Some(_) => format!("{} %", a.name),
        None => a.name.clone(),
    };
    say!(
        "{:>5}  {:<32} {:<7} size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}  tags [{}]{scope}{shared}{by}",
        a.id,
        name,
        status_words(a),
        s.size,
        s.adds_24h,
        s.drops_24h,
        s.volatility_24h,
        a.tags.join(", ")
    );
}

/// The audience's access in words: "private", "view only" or "usable".
fn access_name(a: &pb::Audience) -> &'static str {
    match a.access() {
        pb::AudienceAccess::ViewOnly => "view only",
        pb::AudienceAccess::Usable => "usable",
        pb::AudienceAccess::Private | pb::AudienceAccess::Unspecified => "private",
    }
}

pub fn stats_json(audience_id: u64, s: &pb::AudienceStats) -> Value {
    json!({
        "audience_id": audience_id,
        "size": s.size,
        "adds_24h": s.adds_24h,
        "drops_24h": s.drops_24h,
        "volatility_24h": s.volatility_24h,
        "event_to_delta": s.event_to_delta.as_ref().map(latency_json),
        "produce_to_delta": s.produce_to_delta.as_ref().map(latency_json),
    })
}

fn latency_json(l: &pb::DeltaLatency) -> Value {
    json!({"count": l.count, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "p999_ms": l.p999_ms})
}

/// "p50 12ms p99 30ms", or "-" when nothing was timed.
pub fn latency_text(l: Option<&pb::DeltaLatency>) -> String {
    match l.filter(|l| l.count > 0) {
        Some(l) => format!("p50 {}ms p99 {}ms", l.p50_ms.round(), l.p99_ms.round()),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_json_values() {
        use pb::attribute_value::Value as V;
        let v = |value| pb::AttributeValue { value: Some(value) };
        assert_eq!(value_json(&v(V::NumberValue(52.0))), json!(52));
        assert_eq!(value_json(&v(V::NumberValue(1.5))), json!(1.5));
        assert_eq!(
            value_json(&v(V::StringValue("bronze".into()))),
            json!("bronze")
        );
        assert_eq!(
            value_json(&v(V::DateUnixtimeMs(1_796_374_800_000))),
            json!("2026-12-04T09:00:00Z")
        );
        assert_eq!(value_json(&pb::AttributeValue { value: None }), Value::Null);
        assert_eq!(when(0), "never");
        assert_eq!(when_json(0), Value::Null);
    }

    #[test]
    fn byte_counts_print_in_the_unit_that_keeps_them_short() {
        assert_eq!(bytes_text(0), "0 B");
        assert_eq!(bytes_text(1023), "1023 B");
        assert_eq!(bytes_text(1024), "1.0 KiB");
        assert_eq!(bytes_text(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
        assert_eq!(bytes_text(5 << 40), "5.0 TiB");
        assert_eq!(bytes_text(u64::MAX), "16384.0 PiB");
    }
}
