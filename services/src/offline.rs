//! The engine binary's offline commands on a data directory, with no broker and no API:
//! `audience-engine rebuild` folds every stored profile from its base and logs and writes the
//! folds that differ from the stored states (their deltas wait in the outbox, published when
//! the engine next runs); `audience-engine verify` compares them and writes nothing. Both run
//! the partition actors' own replay, the code `audiencectl rebuild` and `verify` drive on a
//! running engine, so the two cannot disagree.
//!
//! Invariants:
//! - one process uses a data directory (RocksDB's lock): with an engine running on it, these
//!   commands stop at once and say so;
//! - a cluster node's partitions are rebuilt by their owners, through the changelog
//!   (`audiencectl rebuild`): offline, such a directory is only verified.

use crate::config::Config;
use crate::replay_report;
use audience_actors::clock::Clock;
use audience_actors::engine::Engine;
use audience_actors::node::Node;
use audience_actors::partition::ReplayMode;
use audience_proto::v1 as pb;
use audience_state::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replays every partition stored under `config.storage.path` (`mode`), calling `progress` with
/// the status about four times a second, and returns the final status. Background work the
/// store asks for (a backfill of a definition changed before the engine stopped, due timers)
/// runs too, as it would at start-up.
pub fn replay(
    config: &Config,
    mode: ReplayMode,
    progress: &mut dyn FnMut(&pb::ReplayStatus, f64),
) -> anyhow::Result<pb::ReplayStatus> {
    let path = &config.storage.path;
    if config.cluster.changelog && mode != ReplayMode::Verify {
        anyhow::bail!(
            "{} belongs to a node of a cluster (cluster.changelog): its partitions are rebuilt \
             by their owners, through the changelog; run `audiencectl rebuild` against the \
             running cluster (offline, `audience-engine verify` checks this directory)",
            path.display()
        );
    }
    if !path.join("CURRENT").exists() {
        anyhow::bail!("no engine data directory at {}", path.display());
    }
    let store = Store::open_with(path, &config.storage.store_options()).map_err(|e| {
        let hint = if e.to_string().contains("lock") {
            " (is an engine running on it?)"
        } else {
            ""
        };
        anyhow::anyhow!("opening the data directory {}: {e}{hint}", path.display())
    })?;
    let store = Arc::new(store);
    let partitions = store.known_partitions()?;
    if partitions.is_empty() {
        anyhow::bail!(
            "no profile stored under {}: nothing to replay",
            path.display()
        );
    }
    let engine = Engine::new(
        store.clone(),
        Arc::new(Clock::new(config.clock.manual)),
        config.settings()?,
    )?;
    let node = Node::start(engine.clone(), config.engine.threads)?;
    node.assign(&partitions)?;
    let failed: Vec<String> = futures::executor::block_on(node.start_replay(mode))
        .into_iter()
        .filter_map(|(p, r)| r.err().map(|e| format!("partition {p}: {e}")))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("the replay could not start on {}", failed.join("; "));
    }
    let node_id = crate::server::node_id(config);
    let began = Instant::now();
    loop {
        let status = replay_report::local_status(&engine, &node_id);
        let finished = partitions.iter().all(|p| {
            status
                .partitions
                .iter()
                .any(|r| r.partition == *p && !r.running)
        });
        let (scanned, _) = replay_report::scanned_of_total(&status);
        progress(&status, scanned as f64 / began.elapsed().as_secs_f64());
        if finished {
            // What the rebuild wrote survives a power cut before the command says it is done.
            store.flush()?;
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
