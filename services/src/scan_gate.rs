//! A bound on the scans of stored profiles that API calls start (estimates, previews): each
//! reads many profiles on the blocking pool, and an unbounded number at once would take the
//! cores from streaming. A scan past the bound is refused at once with `RESOURCE_EXHAUSTED`
//! naming the limit, never queued without bound.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Scans of stored profiles one node runs for API calls at once.
pub const MAX_CONCURRENT_SCANS: usize = 2;

#[derive(Clone)]
pub struct ScanGate {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ScanGate {
    pub fn new(limit: usize) -> ScanGate {
        ScanGate {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A place for one scan (`call` names the API call, for the refusal), held until the
    /// permit is dropped.
    pub fn enter(&self, call: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{call}: {} scans of stored profiles already run on this node (the limit); \
                 try again when one ends",
                self.limit
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_past_the_limit_is_refused_naming_it_until_one_ends() {
        let gate = ScanGate::new(2);
        let first = gate.enter("EstimateAudience").unwrap();
        let _second = gate.clone().enter("PreviewUpdate").unwrap();
        let refused = gate.enter("EstimateAudience").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().starts_with("EstimateAudience: 2 scans"),
            "{refused:?}"
        );
        drop(first);
        assert!(gate.enter("EstimateAudience").is_ok());
    }
}
