//! `make chaos`: the chaos matrix against real processes (a tansu broker, the engine binary),
//! one row per scenario with its figures and PASS or FAIL, and the same as JSON.
//!
//! Environment: `CHAOS_SOAK=1` for the long version (the sizes; an hour or more),
//! `CHAOS_SEED` (default: the time; printed, so a failing run can be repeated),
//! `CHAOS_ONLY=poison,kill_loop` to pick scenarios, `CHAOS_REPORT` for the JSON file
//! (default `chaos-report.json` in the current directory). Exits 1 when a scenario fails.

use audience_e2e::chaos::{scenarios, Row, Scale};
use audience_e2e::Result;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    let soak = std::env::var("CHAOS_SOAK").is_ok_and(|v| v == "1" || v == "true");
    let scale = if soak {
        Scale::soak(seed)
    } else {
        Scale::short(seed)
    };
    let only = std::env::var("CHAOS_ONLY").unwrap_or_default();
    let chosen = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let report = std::env::var("CHAOS_REPORT").unwrap_or_else(|_| "chaos-report.json".into());
    println!(
        "chaos matrix: seed {seed}, {} ({} users, {} messages at {}/s)",
        if soak { "soak" } else { "short" },
        scale.users,
        scale.messages,
        scale.rate
    );
    println!("{}", Row::header());
    let mut rows = Vec::new();
    for name in scenarios::NAMES {
        if !chosen(name) {
            continue;
        }
        let row = match scenarios::run(name, scale).await {
            Ok(row) => row,
            Err(e) => Row::errored(name, format!("{e:#}")),
        };
        println!("{}", row.line());
        rows.push(row);
    }
    let json = serde_json::json!({
        "seed": seed,
        "soak": soak,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    std::fs::write(&report, serde_json::to_string_pretty(&json)?)?;
    println!("report: {report}");
    let failed = rows.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        println!("{failed} of {} scenarios FAILED", rows.len());
        std::process::exit(1);
    }
    Ok(())
}
