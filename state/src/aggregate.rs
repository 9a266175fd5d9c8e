//! The running aggregates of calculated attributes: what each profile keeps per attribute and
//! the value read from it. Depends on nothing but the model, so that criteria can read a
//! calculated attribute's value without knowing how its definition is compiled.
//!
//! Invariants:
//! - a lifetime attribute keeps one [`Aggregate`] per profile, folded event by event, so its
//!   cost does not grow with the user's history;
//! - a windowed attribute keeps the matching occurrences (time, value) that are still in its
//!   window and folds them when read, so the value slides exactly with the clock and the
//!   instant it next changes is known ([`CalcState::value_at`]);
//! - a profile's state is tied to the definition's revision ([`value_of`] reads a state of
//!   another revision as empty): redefining an attribute starts it anew.

use crate::model::{AttrValue, TimestampMs};
use serde::{Deserialize, Serialize};

/// The most values a unique list holds.
pub const UNIQUE_LIST_MAX: usize = 100;

/// The most distinct values a profile tracks per attribute, for unique counts and most
/// frequent values (bounded so that one chatty user cannot grow a profile without limit).
pub const TRACKED_VALUES_MAX: usize = 1000;

/// The most occurrences a windowed attribute keeps per profile; the oldest go first.
pub const WINDOW_ENTRIES_MAX: usize = 10_000;

/// Values are kept to this many characters, so that one attribute cannot grow a profile by
/// megabytes.
pub const VALUE_CHARS_MAX: usize = 256;

fn bounded(value: Option<String>) -> Option<String> {
    value.map(|v| match v.char_indices().nth(VALUE_CHARS_MAX) {
        Some((end, _)) => v[..end].to_string(),
        None => v,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calculation {
    Count,
    Sum,
    Min,
    Max,
    Average,
    FirstValue,
    LastValue,
    FirstTimestamp,
    LastTimestamp,
    UniqueCount,
    MostFrequent,
    UniqueValues,
}

impl Calculation {
    /// Whether the calculation reads a field of the event (the others count events or read
    /// their time).
    pub fn needs_field(self) -> bool {
        !matches!(
            self,
            Calculation::Count | Calculation::FirstTimestamp | Calculation::LastTimestamp
        )
    }
}

/// What a criterion needs to know of a calculated attribute to evaluate it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalcSpec {
    pub calculation: Calculation,
    pub window_ms: Option<i64>,
    pub revision: u64,
}

/// A fold of occurrences: everything any calculation needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub count: u64,
    pub numeric_count: u64,
    pub sum: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Earliest and latest occurrence (time, value); ties keep the first and last added.
    pub first: Option<(TimestampMs, Option<String>)>,
    pub last: Option<(TimestampMs, Option<String>)>,
    /// Distinct values with their counts, in order of first occurrence.
    pub values: Vec<(String, u64)>,
}

impl Aggregate {
    /// [`Aggregate::add`] with an index from value to its slot in `values`, for folds of many
    /// occurrences at once (a linear search per value would be quadratic).
    fn add_indexed<'a>(
        &mut self,
        at: TimestampMs,
        value: Option<&'a str>,
        positions: &mut std::collections::HashMap<&'a str, usize>,
    ) {
        match value {
            Some(v) => {
                let known = positions.get(v).copied();
                self.add_scalar(at, Some(v));
                match known {
                    Some(i) => self.values[i].1 += 1,
                    None if self.values.len() < TRACKED_VALUES_MAX => {
                        positions.insert(v, self.values.len());
                        self.values.push((v.to_string(), 1));
                    }
                    None => {}
                }
            }
            None => self.add_scalar(at, None),
        }
    }

    pub fn add(&mut self, at: TimestampMs, value: Option<&str>) {
        self.add_scalar(at, value);
        if let Some(v) = value {
            let tracked = self.values.len();
            match self.values.iter_mut().find(|(x, _)| x == v) {
                Some((_, n)) => *n += 1,
                None if tracked < TRACKED_VALUES_MAX => self.values.push((v.to_string(), 1)),
                None => {}
            }
        }
    }

    /// Everything but the distinct values.
    fn add_scalar(&mut self, at: TimestampMs, value: Option<&str>) {
        self.count += 1;
        if let Some(n) = value.and_then(|v| v.trim().parse::<f64>().ok().filter(|n| n.is_finite()))
        {
            self.numeric_count += 1;
            self.sum += n;
            self.min = Some(self.min.map_or(n, |m| m.min(n)));
            self.max = Some(self.max.map_or(n, |m| m.max(n)));
        }
        let entry = (at, value.map(str::to_string));
        if self.first.as_ref().is_none_or(|(t, _)| at < *t) {
            self.first = Some(entry.clone());
        }
        if self.last.as_ref().is_none_or(|(t, _)| at >= *t) {
            self.last = Some(entry);
        }
    }

    /// The calculated value; `None` when there is nothing to calculate from (counts and sums
    /// are then 0).
    pub fn value(&self, calculation: Calculation) -> Option<AttrValue> {
        let text = |e: &Option<(TimestampMs, Option<String>)>| {
            e.as_ref()
                .and_then(|(_, v)| v.clone())
                .map(AttrValue::String)
        };
        match calculation {
            Calculation::Count => Some(AttrValue::Number(self.count as f64)),
            Calculation::Sum => Some(AttrValue::Number(self.sum)),
            Calculation::Min => self.min.map(AttrValue::Number),
            Calculation::Max => self.max.map(AttrValue::Number),
            Calculation::Average => (self.numeric_count > 0)
                .then(|| AttrValue::Number(self.sum / self.numeric_count as f64)),
            Calculation::FirstValue => text(&self.first),
            Calculation::LastValue => text(&self.last),
            Calculation::FirstTimestamp => self.first.as_ref().map(|(t, _)| AttrValue::Date(*t)),
            Calculation::LastTimestamp => self.last.as_ref().map(|(t, _)| AttrValue::Date(*t)),
            Calculation::UniqueCount => Some(AttrValue::Number(self.values.len() as f64)),
            Calculation::MostFrequent => self
                .values
                .iter()
                // max_by_key keeps the last maximum: reverse so that ties go to the first seen.
                .rev()
                .max_by_key(|(_, n)| *n)
                .map(|(v, _)| AttrValue::String(v.clone())),
            Calculation::UniqueValues => Some(AttrValue::List(
                self.values
                    .iter()
                    .take(UNIQUE_LIST_MAX)
                    .map(|(v, _)| v.clone())
                    .collect(),
            )),
        }
    }
}

/// One profile's state of one calculated attribute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CalcState {
    /// The definition revision this state was calculated for.
    pub revision: u64,
    /// Lifetime attributes: the running fold.
    pub lifetime: Aggregate,
    /// Windowed attributes: the occurrences still in the window, oldest first.
    pub entries: Vec<(TimestampMs, Option<String>)>,
}

impl CalcState {
    /// Folds an occurrence in (the caller passes event times that are never in the future).
    pub fn add(&mut self, spec: &CalcSpec, at: TimestampMs, value: Option<String>) {
        let value = bounded(value);
        match spec.window_ms {
            None => self.lifetime.add(at, value.as_deref()),
            Some(_) => {
                let position = self.entries.partition_point(|(t, _)| *t <= at);
                self.entries.insert(position, (at, value));
                if self.entries.len() > WINDOW_ENTRIES_MAX {
                    self.entries.remove(0);
                }
            }
        }
    }

    /// Drops the occurrences that left the window at `now`.
    pub fn prune(&mut self, spec: &CalcSpec, now: TimestampMs) {
        if let Some(window) = spec.window_ms {
            let keep_from = self.entries.partition_point(|(t, _)| t + window < now);
            self.entries.drain(..keep_from);
        }
    }

    /// Whether nothing is folded in any more (every occurrence left the window): such a state
    /// reads as an absent one, and is dropped so that a state rebuilt from the event log
    /// is the streamed one.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.lifetime == Aggregate::default()
    }

    /// The value at `now`, and when the clock alone next changes it (a windowed occurrence
    /// leaving the window).
    pub fn value_at(
        &self,
        spec: &CalcSpec,
        now: TimestampMs,
    ) -> (Option<AttrValue>, Option<TimestampMs>) {
        match spec.window_ms {
            None => (self.lifetime.value(spec.calculation), None),
            Some(window) => {
                let mut aggregate = Aggregate::default();
                let mut next = None;
                let mut positions: std::collections::HashMap<&str, usize> =
                    std::collections::HashMap::new();
                for (t, v) in &self.entries {
                    // In the window while now <= t + window (a day is 24 hours before now).
                    if *t <= now && now <= t + window {
                        aggregate.add_indexed(*t, v.as_deref(), &mut positions);
                        let leaves = t + window + 1;
                        next = Some(next.map_or(leaves, |n: i64| n.min(leaves)));
                    }
                }
                (aggregate.value(spec.calculation), next)
            }
        }
    }
}

/// The value of a calculated attribute for a profile's state (absent state: nothing yet).
pub fn value_of(
    state: Option<&CalcState>,
    spec: &CalcSpec,
    now: TimestampMs,
) -> (Option<AttrValue>, Option<TimestampMs>) {
    match state.filter(|s| s.revision == spec.revision) {
        Some(s) => s.value_at(spec, now),
        None => CalcState::default().value_at(spec, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DAY_MS;

    fn spec(calculation: Calculation, window_days: Option<i64>) -> CalcSpec {
        CalcSpec {
            calculation,
            window_ms: window_days.map(|d| d * DAY_MS),
            revision: 0,
        }
    }

    fn fold(
        calculation: Calculation,
        window: Option<i64>,
        items: &[(i64, &str)],
        now: i64,
    ) -> Option<AttrValue> {
        let spec = spec(calculation, window);
        let mut state = CalcState::default();
        for (t, v) in items {
            state.add(&spec, *t, Some(v.to_string()));
        }
        state.value_at(&spec, now).0
    }

    #[test]
    fn every_calculation_over_a_lifetime() {
        let items = [(10, "5"), (30, "b"), (20, "2"), (40, "5")];
        let now = 100;
        let n = |x: f64| Some(AttrValue::Number(x));
        assert_eq!(fold(Calculation::Count, None, &items, now), n(4.0));
        assert_eq!(fold(Calculation::Sum, None, &items, now), n(12.0));
        assert_eq!(fold(Calculation::Min, None, &items, now), n(2.0));
        assert_eq!(fold(Calculation::Max, None, &items, now), n(5.0));
        assert_eq!(fold(Calculation::Average, None, &items, now), n(4.0));
        assert_eq!(
            fold(Calculation::FirstValue, None, &items, now),
            Some(AttrValue::String("5".into()))
        );
        assert_eq!(
            fold(Calculation::LastValue, None, &items, now),
            Some(AttrValue::String("5".into()))
        );
        assert_eq!(
            fold(Calculation::FirstTimestamp, None, &items, now),
            Some(AttrValue::Date(10))
        );
        assert_eq!(
            fold(Calculation::LastTimestamp, None, &items, now),
            Some(AttrValue::Date(40))
        );
        assert_eq!(fold(Calculation::UniqueCount, None, &items, now), n(3.0));
        assert_eq!(
            fold(Calculation::MostFrequent, None, &items, now),
            Some(AttrValue::String("5".into()))
        );
        assert_eq!(
            fold(Calculation::UniqueValues, None, &items, now),
            Some(AttrValue::List(vec!["5".into(), "b".into(), "2".into()]))
        );
        assert_eq!(fold(Calculation::Min, None, &[], now), None);
        assert_eq!(fold(Calculation::Count, None, &[], now), n(0.0));
    }

    #[test]
    fn a_window_slides_and_says_when() {
        let spec = spec(Calculation::Sum, Some(1));
        let mut state = CalcState::default();
        state.add(&spec, 1_000, Some("3".into()));
        state.add(&spec, 5_000, Some("4".into()));
        let (value, next) = state.value_at(&spec, 10_000);
        assert_eq!(value, Some(AttrValue::Number(7.0)));
        assert_eq!(next, Some(1_000 + DAY_MS + 1));
        let (value, next) = state.value_at(&spec, 1_000 + DAY_MS + 1);
        assert_eq!(value, Some(AttrValue::Number(4.0)));
        assert_eq!(next, Some(5_000 + DAY_MS + 1));
        state.prune(&spec, 1_000 + DAY_MS + 1);
        assert_eq!(state.entries.len(), 1);
    }

    #[test]
    fn most_frequent_ties_go_to_the_first_seen() {
        let items = [(1, "a"), (2, "b"), (3, "b"), (4, "a")];
        assert_eq!(
            fold(Calculation::MostFrequent, None, &items, 10),
            Some(AttrValue::String("a".into()))
        );
    }

    #[test]
    fn unique_lists_stop_at_one_hundred() {
        let items: Vec<(i64, String)> = (0..150).map(|i| (i, format!("v{i}"))).collect();
        let refs: Vec<(i64, &str)> = items.iter().map(|(t, v)| (*t, v.as_str())).collect();
        match fold(Calculation::UniqueValues, None, &refs, 1_000) {
            Some(AttrValue::List(l)) => assert_eq!(l.len(), UNIQUE_LIST_MAX),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fold(Calculation::UniqueCount, None, &refs, 1_000),
            Some(AttrValue::Number(150.0))
        );
    }
}
