//! Compact event history: per event key, per UTC day, the millisecond offsets of the events
//! within that day. Retention prunes whole days, so the history of a profile is bounded by
//! `retention days × distinct keys`, never by the life of the profile.
//!
//! A series is packed: one vector of days and one of offsets (a day's offsets follow the
//! previous day's), so decoding a profile allocates twice per series, not once per day. It is
//! stored (profile format 3) as one byte string of varints, offsets delta-coded within a day,
//! written and read in one pass each; [`SeriesV2`] reads format 2's list of days.
//!
//! Invariants: days are sorted and offsets within a day are sorted; a day keeps at most
//! [`MAX_OFFSETS_PER_DAY`] exact offsets, counting the rest in `overflow` at the time of the
//! latest exact offset (so counts stay exact and window edges stay exact for all but extreme
//! per-day volumes).

use crate::model::{TimestampMs, DAY_MS};
use crate::varint::{put_varint, read_varint, unzigzag, zigzag, VarintError};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
#[cfg(test)]
use serde::ser::SerializeStruct;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::ops::Range;

pub const MAX_OFFSETS_PER_DAY: usize = 2048;

/// One UTC day of a series: its offsets are those from the previous day's `end` to its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Day {
    /// Days since the epoch (UTC).
    day: i32,
    /// Where its offsets end in the series' offsets.
    end: u32,
    /// Events beyond `MAX_OFFSETS_PER_DAY`, dated at the last offset.
    overflow: u32,
}

impl Day {
    fn start_ms(&self) -> TimestampMs {
        self.day as i64 * DAY_MS
    }
}

/// The occurrences of one event key (or one matcher) in time. The representation is canonical
/// (equal series are equal field by field).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventSeries {
    days: Vec<Day>,
    /// Milliseconds into its day of each event, day after day, sorted within a day.
    offsets: Vec<u32>,
}

impl EventSeries {
    /// Where the offsets of the `i`-th day are.
    fn range(&self, i: usize) -> Range<usize> {
        let start = if i == 0 {
            0
        } else {
            self.days[i - 1].end as usize
        };
        start..self.days[i].end as usize
    }

    /// The days with their offsets, in order.
    fn days(&self) -> impl Iterator<Item = (&Day, &[u32])> + '_ {
        (0..self.days.len()).map(|i| (&self.days[i], &self.offsets[self.range(i)]))
    }

    pub fn record(&mut self, at: TimestampMs) {
        let day = at.div_euclid(DAY_MS) as i32;
        let offset = at.rem_euclid(DAY_MS) as u32;
        let idx = match self.days.binary_search_by_key(&day, |d| d.day) {
            Ok(i) => i,
            Err(i) => {
                let end = if i == 0 { 0 } else { self.days[i - 1].end };
                self.days.insert(
                    i,
                    Day {
                        day,
                        end,
                        overflow: 0,
                    },
                );
                i
            }
        };
        let range = self.range(idx);
        if range.len() >= MAX_OFFSETS_PER_DAY {
            self.days[idx].overflow = self.days[idx].overflow.saturating_add(1);
            return;
        }
        let pos = range.start + self.offsets[range].partition_point(|&o| o <= offset);
        self.offsets.insert(pos, offset);
        for d in &mut self.days[idx..] {
            d.end += 1;
        }
    }

    /// Drops the days that ended before `cutoff`.
    pub fn prune_before(&mut self, cutoff: TimestampMs) {
        let kept = self
            .days
            .iter()
            .position(|d| d.start_ms() + DAY_MS > cutoff)
            .unwrap_or(self.days.len());
        if kept == 0 {
            return;
        }
        let dropped = self.days[kept - 1].end;
        self.days.drain(..kept);
        self.offsets.drain(..dropped as usize);
        for d in &mut self.days {
            d.end -= dropped;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Every occurrence time with its multiplicity, in order.
    pub fn occurrences(&self) -> impl Iterator<Item = (TimestampMs, u32)> + '_ {
        self.days().flat_map(|(d, offsets)| {
            let start = d.start_ms();
            let last = offsets.len().saturating_sub(1);
            offsets.iter().enumerate().map(move |(i, &o)| {
                let extra = if i == last { d.overflow } else { 0 };
                (start + o as i64, 1 + extra)
            })
        })
    }

    /// Occurrences in the closed interval `[from, to]`.
    pub fn count_between(&self, from: TimestampMs, to: TimestampMs) -> u64 {
        let all = 0..self.positions();
        let first = self.partition_point(all.clone(), |t| t < from);
        let after = self.partition_point(first..all.end, |t| t <= to);
        self.events_in(first..after)
    }

    /// The number of positions of the series: its occurrences in time order (an overflowed
    /// day's extra events share its last position; see [`EventSeries::events_in`]).
    pub fn positions(&self) -> usize {
        self.offsets.len()
    }

    /// The time of the occurrence at `position` (less than [`EventSeries::positions`]).
    pub fn time_at(&self, position: usize) -> TimestampMs {
        let day = self.days.partition_point(|d| d.end as usize <= position);
        self.days[day].start_ms() + self.offsets[position] as i64
    }

    /// The first position in `within` whose time fails `before`, given that `before` holds
    /// for the earlier times and fails for the later ones (a binary search, so a window is
    /// counted in O(log² n), not by a walk over a hot profile's thousands of events).
    pub fn partition_point(
        &self,
        within: Range<usize>,
        before: impl Fn(TimestampMs) -> bool,
    ) -> usize {
        let (mut low, mut high) = (within.start, within.end);
        while low < high {
            let middle = low + (high - low) / 2;
            if before(self.time_at(middle)) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The events at the positions of `range`: one each, plus the overflow of each day whose
    /// last position is in the range (the overflow is dated at it).
    pub fn events_in(&self, range: Range<usize>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let first = self.days.partition_point(|d| d.end as usize <= range.start);
        let after = self.days.partition_point(|d| d.end as usize <= range.end);
        let overflow: u64 = (first..after)
            .filter(|&i| !self.range(i).is_empty())
            .map(|i| self.days[i].overflow as u64)
            .sum();
        range.len() as u64 + overflow
    }

    pub fn total(&self) -> u64 {
        self.offsets.len() as u64 + self.days.iter().map(|d| d.overflow as u64).sum::<u64>()
    }

    pub fn last(&self) -> Option<TimestampMs> {
        let i = self.days.len().checked_sub(1)?;
        let day = &self.days[i];
        self.offsets[self.range(i)]
            .last()
            .map(|&o| day.start_ms() + o as i64)
    }

    /// Merges another series into this one (used to sum custom events across event types).
    pub fn times(&self) -> Vec<TimestampMs> {
        self.occurrences()
            .flat_map(|(t, n)| std::iter::repeat_n(t, n as usize))
            .collect()
    }
}

impl EventSeries {
    /// The stored form (profile format 3): the number of days; then per day the day (zigzag
    /// for the first, then the distance from the previous day), the number of offsets, the
    /// overflow, and the offsets (the first, then each one's distance from the one before).
    fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 * self.days.len() + 3 * self.offsets.len());
        self.pack_into(&mut out);
        out
    }

    /// [`EventSeries::pack`] appended to `out` (the profile row writer's form: no buffer of
    /// its own).
    pub(crate) fn pack_into(&self, out: &mut Vec<u8>) {
        out.reserve(1 + 4 * self.days.len() + 3 * self.offsets.len());
        put_varint(out, self.days.len() as u64);
        let mut previous_day = None;
        for (d, offsets) in self.days() {
            let day = match previous_day {
                None => zigzag(d.day as i64),
                Some(p) => (d.day as i64 - p as i64) as u64,
            };
            previous_day = Some(d.day);
            put_varint(out, day);
            put_varint(out, offsets.len() as u64);
            put_varint(out, d.overflow as u64);
            let mut previous = 0;
            for &o in offsets {
                put_varint(out, (o - previous) as u64);
                previous = o;
            }
        }
    }

    /// Reads [`EventSeries::pack`]'s form, checking every invariant: days increase, offsets
    /// increase within a day and stay inside it, counts fit the bytes, nothing trails.
    fn unpack(bytes: &[u8]) -> Result<EventSeries, String> {
        let mut pos = 0;
        let mut next = |what: &str| {
            read_varint(bytes, &mut pos).map_err(|e| match e {
                VarintError::Truncated => format!("event series ends inside its {what}"),
                VarintError::TooLong => format!("event series: {what} is not a varint"),
            })
        };
        let count = next("number of days")?;
        // Every day takes three bytes at least: a count beyond that is damage, not a length.
        if count > bytes.len() as u64 / 3 {
            return Err(format!(
                "event series: {count} days in {} bytes",
                bytes.len()
            ));
        }
        let mut series = EventSeries {
            days: Vec::with_capacity(count as usize),
            offsets: Vec::new(),
        };
        let mut previous_day: Option<i64> = None;
        for _ in 0..count {
            let coded = next("day")?;
            let day = match previous_day {
                None => unzigzag(coded),
                Some(_) if coded == 0 => return Err("event series: a day twice".into()),
                Some(p) => p.saturating_add(coded.min(i64::MAX as u64) as i64),
            };
            let day = i32::try_from(day).map_err(|_| format!("event series: day {day}"))?;
            previous_day = Some(day as i64);
            let offsets = next("number of offsets")?;
            if offsets > bytes.len() as u64 {
                return Err(format!(
                    "event series: {offsets} offsets in {} bytes",
                    bytes.len()
                ));
            }
            let overflow = u32::try_from(next("overflow")?)
                .map_err(|_| "event series: overflow beyond 2^32".to_string())?;
            let mut offset: u64 = 0;
            for _ in 0..offsets {
                offset = offset.saturating_add(next("offset")?);
                if offset >= DAY_MS as u64 {
                    return Err(format!("event series: offset {offset} is past its day"));
                }
                series.offsets.push(offset as u32);
            }
            series.days.push(Day {
                day,
                end: series.offsets.len() as u32,
                overflow,
            });
        }
        if pos != bytes.len() {
            return Err(format!(
                "event series: {} bytes after its last day",
                bytes.len() - pos
            ));
        }
        Ok(series)
    }
}

impl Serialize for EventSeries {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.pack())
    }
}

impl<'de> Deserialize<'de> for EventSeries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(PackedVisitor)
    }
}

struct PackedVisitor;

impl<'de> Visitor<'de> for PackedVisitor {
    type Value = EventSeries;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a packed event series")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<EventSeries, E> {
        EventSeries::unpack(bytes).map_err(E::custom)
    }

    /// Self-describing formats (JSON) write bytes as a list of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventSeries, A::Error> {
        let mut bytes = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        EventSeries::unpack(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An event series in the stored form of profile format 2: a list of days, each
/// `{day, offsets, overflow}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SeriesV2(pub EventSeries);

/// A day as stored: `{day, offsets, overflow}` (format 2's `DayBucket`). The engine only
/// reads format 2: writing it is for tests.
#[cfg(test)]
#[derive(Serialize)]
struct StoredDay<'a> {
    day: i32,
    offsets: &'a [u32],
    overflow: u32,
}

/// The days of a series, as a list of [`StoredDay`].
#[cfg(test)]
struct StoredDays<'a>(&'a EventSeries);

#[cfg(test)]
impl Serialize for StoredDays<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.days().map(|(d, offsets)| StoredDay {
            day: d.day,
            offsets,
            overflow: d.overflow,
        }))
    }
}

#[cfg(test)]
impl Serialize for SeriesV2 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("EventSeries", 1)?;
        s.serialize_field("buckets", &StoredDays(&self.0))?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for SeriesV2 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_struct("EventSeries", &["buckets"], SeriesVisitor)
            .map(SeriesV2)
    }
}

struct SeriesVisitor;

impl<'de> Visitor<'de> for SeriesVisitor {
    type Value = EventSeries;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event series")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventSeries, A::Error> {
        seq.next_element_seed(DaysSeed)?
            .ok_or_else(|| serde::de::Error::invalid_length(0, &self))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventSeries, A::Error> {
        let mut series = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "buckets" {
                series = Some(map.next_value_seed(DaysSeed)?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        series.ok_or_else(|| serde::de::Error::missing_field("buckets"))
    }
}

/// Reads the stored days straight into one series.
struct DaysSeed;

impl<'de> DeserializeSeed<'de> for DaysSeed {
    type Value = EventSeries;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<EventSeries, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DaysSeed {
    type Value = EventSeries;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of days")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventSeries, A::Error> {
        let mut series = EventSeries {
            days: Vec::with_capacity(seq.size_hint().unwrap_or(0)),
            offsets: Vec::new(),
        };
        while seq.next_element_seed(DaySeed(&mut series))?.is_some() {}
        Ok(series)
    }
}

/// Reads one stored day, appending its offsets to the series'.
struct DaySeed<'a>(&'a mut EventSeries);

impl<'de> DeserializeSeed<'de> for DaySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_struct("DayBucket", &["day", "offsets", "overflow"], self)
    }
}

impl DaySeed<'_> {
    fn push(self, day: i32, overflow: u32) -> Result<(), String> {
        let end = u32::try_from(self.0.offsets.len())
            .map_err(|_| "an event series holds more than 2^32 offsets".to_string())?;
        self.0.days.push(Day { day, end, overflow });
        Ok(())
    }
}

impl<'de> Visitor<'de> for DaySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a day of an event series")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let day: i32 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &"day, offsets, overflow"))?;
        seq.next_element_seed(OffsetsSeed(&mut self.0.offsets))?
            .ok_or_else(|| A::Error::invalid_length(1, &"day, offsets, overflow"))?;
        let overflow: u32 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(2, &"day, offsets, overflow"))?;
        self.push(day, overflow).map_err(A::Error::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let (mut day, mut overflow) = (None, 0);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "day" => day = Some(map.next_value()?),
                "offsets" => map.next_value_seed(OffsetsSeed(&mut self.0.offsets))?,
                "overflow" => overflow = map.next_value()?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let day = day.ok_or_else(|| A::Error::missing_field("day"))?;
        self.push(day, overflow).map_err(A::Error::custom)
    }
}

/// Appends a list of offsets to the series' offsets.
struct OffsetsSeed<'a>(&'a mut Vec<u32>);

impl<'de> DeserializeSeed<'de> for OffsetsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OffsetsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of offsets")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.0.reserve(n);
        }
        while let Some(offset) = seq.next_element::<u32>()? {
            self.0.push(offset);
        }
        Ok(())
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

    /// The stored form of format 2, as serde derived it for the unpacked series.
    #[derive(Serialize, Deserialize, PartialEq, Debug, Default)]
    struct StoredBucket {
        day: i32,
        offsets: Vec<u32>,
        overflow: u32,
    }
    #[derive(Serialize, Deserialize, PartialEq, Debug, Default)]
    struct StoredSeries {
        buckets: Vec<StoredBucket>,
    }

    /// What format 2 stored for `times` (sorted, at most `MAX_OFFSETS_PER_DAY` a day) from the
    /// day of `cutoff` on.
    fn stored(times: &[TimestampMs], cutoff: TimestampMs) -> StoredSeries {
        let mut sorted = times.to_vec();
        sorted.sort();
        let mut out = StoredSeries::default();
        for t in sorted {
            let day = t.div_euclid(DAY_MS) as i32;
            if (day as i64 + 1) * DAY_MS <= cutoff {
                continue;
            }
            if out.buckets.last().is_none_or(|b| b.day != day) {
                out.buckets.push(StoredBucket {
                    day,
                    ..Default::default()
                });
            }
            out.buckets
                .last_mut()
                .unwrap()
                .offsets
                .push(t.rem_euclid(DAY_MS) as u32);
        }
        out
    }

    /// Format 2's bytes of `legacy`, read as a series.
    fn read_v2(legacy: &StoredSeries) -> EventSeries {
        let bytes = postcard::to_allocvec(legacy).unwrap();
        postcard::from_bytes::<SeriesV2>(&bytes).unwrap().0
    }

    #[test]
    fn a_full_day_counts_the_rest_and_keeps_it_stored() {
        let mut s = EventSeries::default();
        let day = 3 * DAY_MS;
        for i in 0..(MAX_OFFSETS_PER_DAY as i64 + 5) {
            s.record(day + i);
        }
        s.record(day + 2 * DAY_MS);
        assert_eq!(s.total(), MAX_OFFSETS_PER_DAY as u64 + 6);
        assert_eq!(
            s.count_between(day, day + DAY_MS - 1),
            MAX_OFFSETS_PER_DAY as u64 + 5
        );
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<EventSeries>(&bytes).unwrap(), s);
        let legacy = postcard::to_allocvec(&SeriesV2(s.clone())).unwrap();
        let legacy: StoredSeries = postcard::from_bytes(&legacy).unwrap();
        assert_eq!(legacy.buckets[0].overflow, 5);
        assert_eq!(legacy.buckets[1].offsets, vec![0]);
        assert_eq!(read_v2(&legacy), s);
    }

    #[test]
    fn damaged_packed_series_are_refused_with_a_reason() {
        let mut s = EventSeries::default();
        s.record(5 * DAY_MS + 7);
        s.record(6 * DAY_MS + 9);
        let good = s.pack();
        for (bytes, why) in [
            (good[..good.len() - 1].to_vec(), "ends inside"),
            ([good.clone(), vec![0]].concat(), "after its last day"),
            (
                vec![200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 1],
                "not a varint",
            ),
            (vec![100, 0, 0, 0], "100 days in 4 bytes"),
            (vec![1, 0, 1, 0, 0x80, 0xc6, 0x99, 0x29], "past its day"),
            (vec![2, 0, 1, 0, 0, 0, 1, 0, 0], "a day twice"),
        ] {
            let err = EventSeries::unpack(&bytes).unwrap_err();
            assert!(err.contains(why), "{bytes:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn format_3_round_trips_and_format_2_reads_as_it_was_stored(
            times in proptest::collection::vec(-5 * DAY_MS..40 * DAY_MS, 0..80),
            cutoff in -6 * DAY_MS..41 * DAY_MS,
        ) {
            let mut s = EventSeries::default();
            for &t in &times { s.record(t); }
            s.prune_before(cutoff);
            let bytes = postcard::to_allocvec(&s).unwrap();
            prop_assert_eq!(&postcard::from_bytes::<EventSeries>(&bytes).unwrap(), &s);
            let json = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(&serde_json::from_str::<EventSeries>(&json).unwrap(), &s);
            let expected = stored(&times, cutoff);
            prop_assert_eq!(&read_v2(&expected), &s);
            let legacy_json = serde_json::to_string(&expected).unwrap();
            prop_assert_eq!(&serde_json::from_str::<SeriesV2>(&legacy_json).unwrap().0, &s);
            prop_assert_eq!(
                &postcard::to_allocvec(&SeriesV2(s.clone())).unwrap(),
                &postcard::to_allocvec(&expected).unwrap()
            );
            let kept: Vec<TimestampMs> = expected.buckets.iter()
                .flat_map(|b| b.offsets.iter().map(move |&o| b.day as i64 * DAY_MS + o as i64))
                .collect();
            prop_assert_eq!(s.times(), kept.clone());
            prop_assert_eq!(s.last(), kept.last().copied());
            prop_assert_eq!(s.is_empty(), kept.is_empty());
        }

        #[test]
        fn any_bytes_unpack_or_say_why_and_what_unpacks_packs_back(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(series) = EventSeries::unpack(&bytes) {
                let again = EventSeries::unpack(&series.pack()).unwrap();
                prop_assert_eq!(again, series);
            }
        }

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
