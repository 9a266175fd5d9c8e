//! Store work off the async runtime (review R4). The runtime's few worker threads also drive
//! ingestion, the publishers and every other call: a RocksDB read that waits on the disk, or
//! a scan of thousands of rows for one page, must not hold one of them. Handlers run such work
//! on tokio's blocking pool and await it.

use tonic::Status;

/// Runs `work` on the blocking pool and returns what it returned.
pub async fn off_runtime<T, F>(work: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("store work did not finish: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// On a runtime of one thread, other tasks go on while the work blocks: it does not run
    /// on that thread.
    #[tokio::test(flavor = "current_thread")]
    async fn other_tasks_run_while_the_work_blocks() {
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        tokio::task::yield_now().await;
        let before = ticks.load(Ordering::SeqCst);
        let seen = {
            let ticks = ticks.clone();
            off_runtime(move || {
                // Blocks its thread until the ticker has ticked five times more: were this the
                // runtime's only thread, the ticker could never run, and this would fail.
                for _ in 0..2_000 {
                    if ticks.load(Ordering::SeqCst) >= before + 5 {
                        return Ok(true);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(false)
            })
            .await
            .unwrap()
        };
        ticker.abort();
        assert!(seen, "the runtime's thread was free while the work blocked");
        let failed: Result<(), Status> = off_runtime(|| Err(Status::not_found("x"))).await;
        assert_eq!(failed.unwrap_err().code(), tonic::Code::NotFound);
    }
}
