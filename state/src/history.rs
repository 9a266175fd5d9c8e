//! Compact event history: per event key, per UTC day, the millisecond offsets of the events
//! within that day. Retention prunes whole days, so the history of a profile is bounded by
//! `retention days × distinct keys`, never by the life of the profile.
//!
//! Invariants: buckets are sorted by day and offsets within a bucket are sorted; a bucket keeps
//! at most [`MAX_OFFSETS_PER_DAY`] exact offsets, counting the rest in `overflow` at the time
//! of the latest exact offset (so counts stay exact and window edges stay exact for all but
//! extreme per-day volumes).

use crate::model::{TimestampMs, DAY_MS};
use serde::{Deserialize, Serialize};

pub const MAX_OFFSETS_PER_DAY: usize = 2048;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayBucket {
    /// Days since the epoch (UTC).
    pub day: i32,
    /// Milliseconds into the day of each event, sorted.
    pub offsets: Vec<u32>,
    /// Events beyond `MAX_OFFSETS_PER_DAY`, dated at the last offset.
    pub overflow: u32,
}

impl DayBucket {
    fn start_ms(&self) -> TimestampMs {
        self.day as i64 * DAY_MS
    }
}

/// The occurrences of one event key (or one matcher) in time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventSeries {
    pub buckets: Vec<DayBucket>,
}

impl EventSeries {
    pub fn record(&mut self, at: TimestampMs) {
        let day = at.div_euclid(DAY_MS) as i32;
        let offset = at.rem_euclid(DAY_MS) as u32;
        let idx = match self.buckets.binary_search_by_key(&day, |b| b.day) {
            Ok(i) => i,
            Err(i) => {
                self.buckets.insert(
                    i,
                    DayBucket {
                        day,
                        offsets: Vec::new(),
                        overflow: 0,
                    },
                );
                i
            }
        };
        let bucket = &mut self.buckets[idx];
        if bucket.offsets.len() >= MAX_OFFSETS_PER_DAY {
            bucket.overflow = bucket.overflow.saturating_add(1);
            return;
        }
        let pos = bucket.offsets.partition_point(|&o| o <= offset);
        bucket.offsets.insert(pos, offset);
    }

    /// Drops the days that ended before `cutoff`.
    pub fn prune_before(&mut self, cutoff: TimestampMs) {
        self.buckets.retain(|b| b.start_ms() + DAY_MS > cutoff);
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Every occurrence time with its multiplicity, in order.
    pub fn occurrences(&self) -> impl Iterator<Item = (TimestampMs, u32)> + '_ {
        self.buckets.iter().flat_map(|b| {
            let start = b.start_ms();
            let last = b.offsets.len().saturating_sub(1);
            b.offsets.iter().enumerate().map(move |(i, &o)| {
                let extra = if i == last { b.overflow } else { 0 };
                (start + o as i64, 1 + extra)
            })
        })
    }

    /// Occurrences in the closed interval `[from, to]`.
    pub fn count_between(&self, from: TimestampMs, to: TimestampMs) -> u64 {
        if from > to {
            return 0;
        }
        let day_of =
            |t: TimestampMs| t.div_euclid(DAY_MS).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let first_day = day_of(from);
        let last_day = day_of(to);
        let start = self.buckets.partition_point(|b| b.day < first_day);
        let mut total = 0u64;
        for b in &self.buckets[start..] {
            if b.day > last_day {
                break;
            }
            let day_start = b.start_ms();
            if day_start >= from && day_start.saturating_add(DAY_MS - 1) <= to {
                total += b.offsets.len() as u64 + b.overflow as u64;
                continue;
            }
            let lo = from.saturating_sub(day_start).max(0) as u32;
            let hi = to.saturating_sub(day_start).min(DAY_MS - 1);
            if hi < 0 {
                continue;
            }
            let hi = hi as u32;
            let a = b.offsets.partition_point(|&o| o < lo);
            let z = b.offsets.partition_point(|&o| o <= hi);
            total += (z - a) as u64;
            if b.overflow > 0 && z == b.offsets.len() && z > a {
                total += b.overflow as u64;
            }
        }
        total
    }

    pub fn total(&self) -> u64 {
        self.buckets
            .iter()
            .map(|b| b.offsets.len() as u64 + b.overflow as u64)
            .sum()
    }

    pub fn last(&self) -> Option<TimestampMs> {
        self.buckets
            .last()
            .and_then(|b| b.offsets.last().map(|&o| b.start_ms() + o as i64))
    }

    /// Merges another series into this one (used to sum custom events across event types).
    pub fn times(&self) -> Vec<TimestampMs> {
        self.occurrences()
            .flat_map(|(t, n)| std::iter::repeat_n(t, n as usize))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_respect_exact_edges() {
        let mut s = EventSeries::default();
        let t = 10 * DAY_MS + 5_000;
        s.record(t);
        s.record(t + 1);
        s.record(t + 3 * DAY_MS);
        assert_eq!(s.count_between(t, t), 1);
        assert_eq!(s.count_between(t + 1, t + 3 * DAY_MS), 2);
        assert_eq!(s.count_between(t + 2, t + 3 * DAY_MS - 1), 0);
        assert_eq!(s.total(), 3);
        assert_eq!(s.count_between(i64::MIN, i64::MAX), 3);
        s.prune_before(t + DAY_MS);
        assert_eq!(s.total(), 1);
    }

    proptest! {
        #[test]
        fn count_between_matches_a_plain_filter(
            times in proptest::collection::vec(-5 * DAY_MS..40 * DAY_MS, 0..60),
            from in -6 * DAY_MS..41 * DAY_MS,
            len in 0..20 * DAY_MS,
        ) {
            let mut s = EventSeries::default();
            for &t in &times { s.record(t); }
            let to = from + len;
            let expected = times.iter().filter(|&&t| t >= from && t <= to).count() as u64;
            prop_assert_eq!(s.count_between(from, to), expected);
            let mut sorted = times.clone();
            sorted.sort();
            prop_assert_eq!(s.times(), sorted);
        }
    }
}
