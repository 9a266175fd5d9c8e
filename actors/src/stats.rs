//! Adds and drops per audience over a sliding 24 hours, in one-minute buckets, so size, adds,
//! drops and volatility = (adds + drops) / size can be read at any moment. Windows are kept
//! in memory, and started from the durable outbox (which keeps at least
//! `outbox_retention_ms` of deltas, 7 days by default) when an engine or a delivery loop starts,
//! so the figures survive a restart.

use audience_state::model::{AudienceId, Delta, DeltaKind, TimestampMs};
use audience_state::store::{Partition, Store, StoreError};
use std::collections::{HashMap, VecDeque};

const BUCKET_MS: i64 = 60_000;
const WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Default, Clone)]
struct Series {
    /// (bucket start, adds, drops), oldest first.
    buckets: VecDeque<(i64, u64, u64)>,
}

#[derive(Debug, Default, Clone)]
pub struct ChangeWindow {
    series: HashMap<AudienceId, Series>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub size: u64,
    pub adds_24h: u64,
    pub drops_24h: u64,
    pub volatility_24h: f64,
}

impl Figures {
    pub fn new(size: u64, adds: u64, drops: u64) -> Self {
        let volatility = if size == 0 {
            0.0
        } else {
            (adds + drops) as f64 / size as f64
        };
        Figures {
            size,
            adds_24h: adds,
            drops_24h: drops,
            volatility_24h: volatility,
        }
    }
}

impl ChangeWindow {
    pub fn record(&mut self, delta: &Delta) {
        let bucket = delta.processing_time_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        let series = self.series.entry(delta.audience_id).or_default();
        let pos = series.buckets.iter().rposition(|b| b.0 <= bucket);
        let slot = match pos {
            Some(i) if series.buckets[i].0 == bucket => &mut series.buckets[i],
            Some(i) => {
                series.buckets.insert(i + 1, (bucket, 0, 0));
                &mut series.buckets[i + 1]
            }
            None => {
                series.buckets.push_front((bucket, 0, 0));
                &mut series.buckets[0]
            }
        };
        match delta.kind {
            DeltaKind::Added => slot.1 += 1,
            DeltaKind::Dropped => slot.2 += 1,
        }
    }

    /// Records the deltas of a partition's outbox, through sequence `through`, that were
    /// processed in the 24 hours before `now` and that `keep` selects.
    pub fn record_outbox(
        &mut self,
        store: &Store,
        partition: Partition,
        through: u64,
        now: TimestampMs,
        keep: impl Fn(&Delta) -> bool,
    ) -> Result<(), StoreError> {
        let mut after = 0;
        while after < through {
            let page = store.read_outbox(partition, after, 10_000)?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            for (_, delta) in page.iter().take_while(|(seq, _)| *seq <= through) {
                if delta.processing_time_ms > now - WINDOW_MS && keep(delta) {
                    self.record(delta);
                }
            }
            after = last;
        }
        Ok(())
    }

    /// (adds, drops) of an audience in the 24 hours before `now`.
    pub fn adds_drops(&mut self, audience: AudienceId, now: TimestampMs) -> (u64, u64) {
        let Some(series) = self.series.get_mut(&audience) else {
            return (0, 0);
        };
        while series
            .buckets
            .front()
            .is_some_and(|b| b.0 + BUCKET_MS <= now - WINDOW_MS)
        {
            series.buckets.pop_front();
        }
        series
            .buckets
            .iter()
            .filter(|b| b.0 <= now)
            .fold((0, 0), |(a, d), b| (a + b.1, d + b.2))
    }

    pub fn forget(&mut self, audience: AudienceId) {
        self.series.remove(&audience);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(kind: DeltaKind, at: i64) -> Delta {
        Delta {
            audience_id: 1,
            mpid: 1,
            kind,
            event_time_ms: at,
            processing_time_ms: at,
            version: 1,
        }
    }

    #[test]
    fn counts_slide_out_after_a_day() {
        let mut w = ChangeWindow::default();
        w.record(&delta(DeltaKind::Added, 0));
        w.record(&delta(DeltaKind::Added, 30 * BUCKET_MS));
        w.record(&delta(DeltaKind::Dropped, 31 * BUCKET_MS));
        assert_eq!(w.adds_drops(1, 40 * BUCKET_MS), (2, 1));
        assert_eq!(w.adds_drops(1, WINDOW_MS + 10 * BUCKET_MS), (1, 1));
        assert_eq!(w.adds_drops(1, 2 * WINDOW_MS), (0, 0));
        assert_eq!(Figures::new(4, 2, 2).volatility_24h, 1.0);
        assert_eq!(Figures::new(0, 2, 2).volatility_24h, 0.0);
    }
}
