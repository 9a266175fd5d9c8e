//! Value tests of leaf criteria: strings (case-insensitive), numbers, versions, dates by UTC
//! day and globs, with the operators of the seed.

use crate::model::AttrValue;
use chrono::NaiveDate;

/// A compiled operator with its operand, strings already lowercased.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Exists,
    Contains(String),
    ExactMatch(String),
    Pattern(String),
    Includes(String),
    PartialMatch(String),
    NumberCmp(std::cmp::Ordering, bool, f64),
    NumberBetween(f64, f64),
    IsBool(bool),
    /// Dotted versions compared part by part as numbers ("16.10" > "16.9").
    VersionCmp(std::cmp::Ordering, bool, Vec<u64>),
    /// A date in `[from, until)`, milliseconds since the epoch.
    DateIn(i64, i64),
    /// The complement of the inner test.
    Not(Box<Test>),
}

/// Parses "16.4.1" (or "v16.4", "16.4-beta") into its numeric parts; `None` when it has none.
pub fn parse_version(text: &str) -> Option<Vec<u64>> {
    let trimmed = text.trim().trim_start_matches(['v', 'V']);
    let parts: Vec<u64> = trimmed
        .split('.')
        .map_while(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    (!parts.is_empty()).then_some(parts)
}

pub fn compare_versions(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

impl Test {
    /// Applies the test to a value, `None` when the attribute is absent.
    pub fn holds(&self, value: Option<&AttrValue>) -> bool {
        match self {
            Test::Not(inner) => !inner.holds(value),
            Test::Exists => value.is_some(),
            _ => match value {
                None => false,
                Some(v) => self.holds_on_value(v),
            },
        }
    }

    pub(super) fn holds_on_value(&self, v: &AttrValue) -> bool {
        let text = || v.as_text().map(|s| s.to_lowercase());
        let list = || match v {
            AttrValue::List(items) => Some(items.iter().map(|i| i.to_lowercase()).collect()),
            _ => text().map(|t| vec![t]),
        };
        match self {
            Test::Exists => true,
            Test::Not(inner) => !inner.holds_on_value(v),
            Test::Contains(needle) => {
                list().is_some_and(|items: Vec<String>| items.iter().any(|i| i.contains(needle)))
            }
            Test::ExactMatch(needle) | Test::Includes(needle) => {
                list().is_some_and(|items: Vec<String>| items.iter().any(|i| i == needle))
            }
            Test::PartialMatch(needle) => {
                list().is_some_and(|items: Vec<String>| items.iter().any(|i| i.contains(needle)))
            }
            Test::Pattern(pattern) => list()
                .is_some_and(|items: Vec<String>| items.iter().any(|i| glob_match(pattern, i))),
            Test::NumberCmp(ord, or_equal, operand) => {
                v.as_number().is_some_and(|n| match n.partial_cmp(operand) {
                    Some(std::cmp::Ordering::Equal) => *or_equal,
                    Some(o) => o == *ord,
                    None => false,
                })
            }
            Test::NumberBetween(lo, hi) => v.as_number().is_some_and(|n| n >= *lo && n <= *hi),
            Test::IsBool(b) => v.as_bool() == Some(*b),
            Test::DateIn(from, until) => date_of(v).is_some_and(|ms| ms >= *from && ms < *until),
            Test::VersionCmp(ord, or_equal, operand) => v
                .as_text()
                .and_then(|t| parse_version(&t))
                .is_some_and(|version| match compare_versions(&version, operand) {
                    std::cmp::Ordering::Equal => *or_equal,
                    o => o == *ord,
                }),
        }
    }
}

/// A value read as a date: a date attribute, epoch milliseconds, or an ISO 8601 date or
/// date-time string ("2024-03-01", "2024-03-01T10:00:00Z").
pub fn date_of(v: &AttrValue) -> Option<i64> {
    match v {
        AttrValue::Date(ms) => Some(*ms),
        AttrValue::Number(n) if n.is_finite() => Some(*n as i64),
        AttrValue::String(s) => {
            let s = s.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp_millis());
            }
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                return Some(t.and_utc().timestamp_millis());
            }
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return d
                    .and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis());
            }
            s.parse::<i64>().ok()
        }
        _ => None,
    }
}

/// Wildcard match of a whole string: `*` any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}
