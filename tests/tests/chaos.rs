//! The short version of each chaos scenario (`tests/src/chaos`), as `make chaos` runs them
//! with `CHAOS_SOAK` unset: each must PASS (nothing lost or applied twice, the receiver, the
//! engine and the model agreeing). The seed is fixed here so that a failure repeats;
//! `make chaos` draws a new one each run.

use audience_e2e::chaos::{scenarios, Row, Scale};
use audience_e2e::Result;

async fn check(name: &'static str) -> Result<()> {
    let row = match scenarios::run(name, Scale::short(20261207)).await {
        Ok(row) => row,
        Err(e) => Row::errored(name, format!("{e:#}")),
    };
    println!("{}\n{}", Row::header(), row.line());
    assert!(row.passed(), "{}", row.line());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_with_its_reason_and_nothing_else_is_lost() -> Result<()> {
    check("poison").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kill_9_loses_and_duplicates_nothing() -> Result<()> {
    check("kill_loop").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_down_then_slow_gets_everything_in_order() -> Result<()> {
    check("output_outage").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_restores_the_same_memberships() -> Result<()> {
    check("wipe_replay").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() -> Result<()> {
    check("broker_restart").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_node_not_serving_and_loses_nothing() -> Result<()> {
    check("disk_full").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_call_gets_its_code_under_load_and_nothing_is_lost() -> Result<()> {
    check("security").await
}
