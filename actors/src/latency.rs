//! How long deltas take, per audience: from the event that caused one (the event's timestamp)
//! and from its input record's Kafka timestamp (when it was produced) to the moment the delta
//! is durable (its unit of work committed; subscribers and outputs read it from then on).
//!
//! Only deltas a message caused are timed: a delta of time passing, of a calculation or of a
//! replay has no sender waiting on it.
//!
//! Invariants:
//! - histograms are log-scaled, four buckets per doubling of milliseconds, so a quantile read
//!   from one (the upper bound of its bucket) is at most 19% above the exact value;
//! - the figures cover the last 5 to 10 minutes (two slots; the older is dropped when a new
//!   one starts), so they describe the engine now, not since it started;
//! - nodes merge theirs by adding bucket counts, so a cluster's figure is exact to the bucket.

use audience_state::model::{AudienceId, Delta};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Buckets per doubling.
const PER_DOUBLING: f64 = 4.0;
/// The last bucket counts everything beyond 2^24 ms (4.7 hours).
pub const LAST_BUCKET: u32 = 4 * 24 + 2;
/// How long one slot of the window collects.
pub const SLOT: Duration = Duration::from_secs(300);
/// Audiences with a Prometheus label of their own; deltas of the others are labelled `other`,
/// so the number of series stays bounded whatever the catalog holds.
pub const MAX_LABELLED_AUDIENCES: usize = 1_000;

/// The bucket of a latency: 0 below 1 ms, then bucket i up to 2^((i-1)/4) ms.
pub fn bucket_of(ms: i64) -> u32 {
    if ms < 1 {
        return 0;
    }
    // Bucket i holds (2^((i-2)/4), 2^((i-1)/4)] ms; 1 ms is bucket 1.
    let i = ((ms as f64).log2() * PER_DOUBLING).ceil() as u32 + 1;
    i.min(LAST_BUCKET)
}

/// The largest latency bucket `i` holds, in milliseconds (infinite for the last). Latencies
/// are whole milliseconds: bucket 0 holds those of 0.
pub fn upper_bound_ms(i: u32) -> f64 {
    match i {
        0 => 0.0,
        i if i >= LAST_BUCKET => f64::INFINITY,
        i => 2f64.powf((i - 1) as f64 / PER_DOUBLING),
    }
}

/// A latency histogram: bucket index to count, sparse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: BTreeMap<u32, u64>,
}

impl Histogram {
    pub fn from_buckets(buckets: impl IntoIterator<Item = (u32, u64)>) -> Histogram {
        let mut h = Histogram::default();
        for (i, n) in buckets {
            *h.buckets.entry(i.min(LAST_BUCKET)).or_default() += n;
        }
        h
    }

    pub fn record(&mut self, ms: i64) {
        *self.buckets.entry(bucket_of(ms)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    pub fn buckets(&self) -> &BTreeMap<u32, u64> {
        &self.buckets
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1), in milliseconds; `None`
    /// when empty. The last bucket's is its lower bound: what is known of it.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: p50 of 2 samples is the first, p99 of 100 the
        // 99th.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&i, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let bound = upper_bound_ms(i);
                return Some(if bound.is_finite() {
                    bound
                } else {
                    upper_bound_ms(LAST_BUCKET - 1)
                });
            }
        }
        None
    }
}

/// One audience's latencies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaLatency {
    /// From the event's timestamp.
    pub from_event: Histogram,
    /// From the input record's Kafka timestamp.
    pub from_produce: Histogram,
}

impl DeltaLatency {
    pub fn merge(&mut self, other: &DeltaLatency) {
        self.from_event.merge(&other.from_event);
        self.from_produce.merge(&other.from_produce);
    }
}

/// The deltas of a unit of work that messages caused: each range of its deltas with the
/// Kafka timestamp of the message that caused them (`None`: the record had none).
pub type Caused = Vec<(Range<usize>, Option<i64>)>;

/// One latency, as [`LatencyWindow::note`] measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    pub audience: AudienceId,
    pub from_event_ms: Option<i64>,
    pub from_produce_ms: Option<i64>,
}

/// The latencies of the last 5 to 10 minutes, per audience.
#[derive(Debug)]
pub struct LatencyWindow {
    started: Instant,
    current: HashMap<AudienceId, DeltaLatency>,
    previous: HashMap<AudienceId, DeltaLatency>,
    labelled: std::collections::HashSet<AudienceId>,
}

impl LatencyWindow {
    pub fn new(now: Instant) -> LatencyWindow {
        LatencyWindow {
            started: now,
            current: HashMap::new(),
            previous: HashMap::new(),
            labelled: Default::default(),
        }
    }

    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= SLOT * 2 {
            self.previous.clear();
            self.current.clear();
            self.started = now;
        } else if age >= SLOT {
            self.previous = std::mem::take(&mut self.current);
            self.started += SLOT;
        }
    }

    /// Records the latencies of the deltas `caused` names, committed at `committed_ms` (the
    /// engine's clock, which event timestamps are read against) and `wall_ms` (the wall clock,
    /// which Kafka timestamps are). A latency below zero (a clock ahead of this node's) counts
    /// as zero; an event without a timestamp is not timed from it. Returns what it recorded.
    pub fn note(
        &mut self,
        deltas: &[Delta],
        caused: &Caused,
        (committed_ms, wall_ms): (i64, i64),
        now: Instant,
    ) -> Vec<Timed> {
        self.roll(now);
        let mut out = Vec::new();
        for (range, produced_ms) in caused {
            for d in deltas.get(range.clone()).unwrap_or_default() {
                let timed = Timed {
                    audience: d.audience_id,
                    from_event_ms: (d.event_time_ms > 0)
                        .then(|| (committed_ms - d.event_time_ms).max(0)),
                    from_produce_ms: produced_ms.filter(|&t| t > 0).map(|t| (wall_ms - t).max(0)),
                };
                let latency = self.current.entry(d.audience_id).or_default();
                if let Some(ms) = timed.from_event_ms {
                    latency.from_event.record(ms);
                }
                if let Some(ms) = timed.from_produce_ms {
                    latency.from_produce.record(ms);
                }
                out.push(timed);
            }
        }
        out
    }

    /// An audience's latencies over the window.
    pub fn of(&mut self, audience: AudienceId, now: Instant) -> DeltaLatency {
        self.roll(now);
        let mut out = self.previous.get(&audience).cloned().unwrap_or_default();
        if let Some(current) = self.current.get(&audience) {
            out.merge(current);
        }
        out
    }

    /// The Prometheus label of an audience: its id for the first [`MAX_LABELLED_AUDIENCES`]
    /// timed, `other` after.
    pub fn label(&mut self, audience: AudienceId) -> String {
        if self.labelled.contains(&audience)
            || (self.labelled.len() < MAX_LABELLED_AUDIENCES && self.labelled.insert(audience))
        {
            audience.to_string()
        } else {
            "other".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audience_state::model::DeltaKind;

    fn delta(audience: AudienceId, event_time_ms: i64) -> Delta {
        Delta {
            audience_id: audience,
            mpid: 1,
            kind: DeltaKind::Added,
            event_time_ms,
            processing_time_ms: 0,
            version: 1,
        }
    }

    /// Each bucket holds what its bounds say, and a bound is never below the latency.
    #[test]
    fn buckets_bound_their_latencies_within_a_fifth() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(-5), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 5);
        assert_eq!(bucket_of(i64::MAX), LAST_BUCKET);
        for ms in 1..5_000 {
            let i = bucket_of(ms);
            let upper = upper_bound_ms(i);
            assert!(upper >= ms as f64, "{ms} ms in bucket {i} up to {upper}");
            assert!(upper <= ms as f64 * 1.19 + 1e-9, "{ms} ms: {upper}");
            assert!(
                upper_bound_ms(i - 1) < ms as f64,
                "{ms} ms belongs above {}",
                i - 1
            );
        }
    }

    #[test]
    fn quantiles_read_the_bucket_of_their_rank() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((50.0..=50.0 * 1.19).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.19).contains(&p99), "{p99}");
        // Merged from two nodes: the same as recorded on one.
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        for ms in 1..=100 {
            let node = if ms % 2 == 0 { &mut a } else { &mut b };
            node.record(ms);
        }
        a.merge(&Histogram::from_buckets(b.buckets().clone()));
        assert_eq!(a, h);
    }

    /// Only the deltas a message caused are timed, from the event and from the record; clocks
    /// ahead count zero; the window forgets what is older than two slots.
    #[test]
    fn the_window_times_caused_deltas_and_forgets_old_ones() {
        let t0 = Instant::now();
        let mut w = LatencyWindow::new(t0);
        let deltas = [delta(7, 1_000), delta(8, 0), delta(7, 900), delta(9, 5_000)];
        let caused: Caused = vec![(0..2, Some(10_000)), (2..3, None)];
        let timed = w.note(&deltas, &caused, (1_020, 10_050), t0);
        assert_eq!(
            timed,
            vec![
                Timed {
                    audience: 7,
                    from_event_ms: Some(20),
                    from_produce_ms: Some(50)
                },
                Timed {
                    audience: 8,
                    from_event_ms: None,
                    from_produce_ms: Some(50)
                },
                Timed {
                    audience: 7,
                    from_event_ms: Some(120),
                    from_produce_ms: None
                },
            ],
            "delta 3 (of time passing) is not timed"
        );
        let seven = w.of(7, t0);
        assert_eq!(seven.from_event.count(), 2);
        assert_eq!(seven.from_produce.count(), 1);
        assert_eq!(w.of(9, t0), DeltaLatency::default());
        let ahead = w.note(&deltas[..1], &vec![(0..1, Some(20_000))], (500, 10_000), t0);
        assert_eq!(ahead[0].from_event_ms, Some(0));
        assert_eq!(ahead[0].from_produce_ms, Some(0));

        // In the next slot the figures still hold; two slots on they are gone.
        assert_eq!(w.of(7, t0 + SLOT).from_event.count(), 3);
        assert_eq!(w.of(7, t0 + SLOT + SLOT / 2).from_event.count(), 3);
        assert_eq!(w.of(7, t0 + SLOT * 2), DeltaLatency::default());
    }

    #[test]
    fn labels_are_bounded() {
        let mut w = LatencyWindow::new(Instant::now());
        for id in 0..MAX_LABELLED_AUDIENCES as u64 {
            assert_eq!(w.label(id), id.to_string());
        }
        assert_eq!(w.label(5_000), "other");
        assert_eq!(w.label(3), "3", "a labelled audience keeps its label");
    }
}
