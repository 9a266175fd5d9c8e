//! The chaos matrix: scenarios that break what the engine stands on (the process, the broker,
//! the output, the input, the disk) while a seeded workload streams, each checked against a
//! reference model. `make chaos` runs them all and prints one row each (`audience-chaos`);
//! `tests/tests/chaos.rs` runs the short version of each in `make test`.
//!
//! Every scenario passes only when nothing acknowledged is lost, nothing is applied twice, the
//! receiver's deduplicated view equals the engine's and the model's, and enough was applied
//! that the run cannot pass by doing nothing. Layout: `workload` (the generator and the
//! model), `check` (reading the topics, the receiver and the engine back), `scenarios` (the
//! runs), `disk` (the disk-full run and its tmpfs), `security` (the calls that must be
//! refused); this file holds the figures and the verdict they all share.

pub mod check;
pub mod disk;
pub mod scenarios;
pub mod security;
pub mod workload;

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How big a run is: the short version for `make test`, the long one for `make chaos`
/// with `CHAOS_SOAK=1`.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub users: i64,
    pub messages: u64,
    /// Messages per second the producer keeps to (0: as fast as the broker takes them).
    pub rate: u64,
    /// Kills of the random SIGKILL loop.
    pub kills: u32,
    /// Seconds the output is down, then as many seconds slow.
    pub outage_s: u64,
    pub seed: u64,
}

impl Scale {
    /// Minutes in all, for every test run.
    pub fn short(seed: u64) -> Scale {
        Scale {
            users: 200,
            messages: 3_000,
            rate: 600,
            kills: 3,
            outage_s: 5,
            seed,
        }
    }

    /// The sizes (100k users; 30 kills; a minute of outage).
    pub fn soak(seed: u64) -> Scale {
        Scale {
            users: 100_000,
            messages: 400_000,
            rate: 2_000,
            kills: 30,
            outage_s: 30,
            seed,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Messages the broker acknowledged to the producer.
    pub acknowledged: u64,
    /// Messages the events topic holds after the run (what the model folds).
    pub on_topic: u64,
    /// Steps the engine counts, over all users.
    pub applied: u64,
    /// Acknowledged steps that never reached the engine's state.
    pub lost: u64,
    /// Steps counted more than once.
    pub duplicated_applied: u64,
    /// Delta items the receiver got more than once (before it deduplicates).
    pub duplicate_deltas: u64,
    pub dead_lettered: u64,
    pub poison_injected: u64,
    pub order_violations: u64,
    /// User memberships where the receiver, or the engine, differs from the model.
    pub receiver_differs: u64,
    pub engine_differs: u64,
    /// The longest time from a fault's end to the engine serving and caught up.
    pub recovery_s: f64,
    pub p99_latency_ms: f64,
    pub max_lag: i64,
    pub reopens: u64,
    /// The engine's memberships at the end, and a hash of every (audience, MPID, version).
    pub memberships: u64,
    pub state_hash: u64,
    /// Figures of one scenario only (max unsent deltas, resumes...).
    pub extra: BTreeMap<String, f64>,
}

/// One row of the matrix: a scenario, its figures, and why it failed if it did.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub figures: Figures,
    /// Empty: PASS.
    pub failures: Vec<String>,
    pub seconds: f64,
}

impl Row {
    /// Checks what every scenario must hold; a scenario adds its own failures after.
    pub fn judge(scenario: &'static str, figures: Figures, min_applied: u64) -> Row {
        let f = &figures;
        let mut failures = Vec::new();
        let mut must = |ok: bool, what: String| {
            if !ok {
                failures.push(what);
            }
        };
        must(f.lost == 0, format!("{} acknowledged steps lost", f.lost));
        must(
            f.duplicated_applied == 0,
            format!("{} steps applied twice", f.duplicated_applied),
        );
        must(
            f.order_violations == 0,
            format!("{} deltas out of order", f.order_violations),
        );
        must(
            f.receiver_differs == 0,
            format!(
                "the receiver differs from the model in {}",
                f.receiver_differs
            ),
        );
        must(
            f.engine_differs == 0,
            format!("the engine differs from the model in {}", f.engine_differs),
        );
        must(
            f.applied >= min_applied,
            format!("only {} steps applied (at least {min_applied})", f.applied),
        );
        Row {
            scenario,
            figures,
            failures,
            seconds: 0.0,
        }
    }

    /// A scenario that could not run to its end (the harness or the engine failed it).
    pub fn errored(scenario: &'static str, error: String) -> Row {
        Row {
            scenario,
            figures: Figures::default(),
            failures: vec![format!("did not complete: {error}")],
            seconds: 0.0,
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// A row of the printed matrix.
    pub fn line(&self) -> String {
        let f = &self.figures;
        let mut extra: Vec<String> = f.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        extra.extend(self.failures.iter().map(|why| format!("FAIL: {why}")));
        format!(
            "{:<16} {:<4} {:>8} {:>8} {:>4} {:>4} {:>6} {:>5} {:>5} {:>7.1} {:>8.1} {:>7} {:>3}  {}",
            self.scenario,
            if self.passed() { "PASS" } else { "FAIL" },
            f.acknowledged,
            f.applied,
            f.lost,
            f.duplicated_applied,
            f.duplicate_deltas,
            f.dead_lettered,
            f.order_violations,
            f.recovery_s,
            f.p99_latency_ms,
            f.max_lag,
            f.reopens,
            extra.join(" ")
        )
    }

    pub fn header() -> String {
        format!(
            "{:<16} {:<4} {:>8} {:>8} {:>4} {:>4} {:>6} {:>5} {:>5} {:>7} {:>8} {:>7} {:>3}  {}",
            "scenario",
            "",
            "acked",
            "applied",
            "lost",
            "dup",
            "dupdlt",
            "dlq",
            "order",
            "recov_s",
            "p99_ms",
            "max_lag",
            "reo",
            "notes"
        )
    }

    pub fn json(&self) -> Value {
        let f = &self.figures;
        json!({
            "scenario": self.scenario,
            "verdict": if self.passed() { "PASS" } else { "FAIL" },
            "failures": self.failures,
            "seconds": self.seconds,
            "acknowledged": f.acknowledged,
            "on_topic": f.on_topic,
            "applied": f.applied,
            "lost": f.lost,
            "duplicated_applied": f.duplicated_applied,
            "duplicate_deltas": f.duplicate_deltas,
            "dead_lettered": f.dead_lettered,
            "poison_injected": f.poison_injected,
            "order_violations": f.order_violations,
            "receiver_differs": f.receiver_differs,
            "engine_differs": f.engine_differs,
            "recovery_s": f.recovery_s,
            "p99_latency_ms": f.p99_latency_ms,
            "max_lag": f.max_lag,
            "reopens": f.reopens,
            "memberships": f.memberships,
            "state_hash": format!("{:016x}", f.state_hash),
            "extra": f.extra,
        })
    }
}
