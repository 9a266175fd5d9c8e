//! Instants and durations as people read and type them: RFC 3339 in UTC for instants,
//! days, hours and minutes for durations, and the forms an operator types (RFC 3339, a UTC
//! date, milliseconds since the epoch, or a time relative to now such as `-2h`).
//!
//! Invariant: what [`format_instant`] writes, [`parse_instant`] reads back to the same
//! millisecond.

use crate::model::{TimestampMs, DAY_MS};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
/// Integers in this range read as seconds since the epoch (2001 to 5138), not milliseconds
/// (which would be the first days of 1970).
const SECONDS_LIKE_FROM: i64 = 1_000_000_000;
const SECONDS_LIKE_UNTIL: i64 = 100_000_000_000;

/// An instant as RFC 3339 in UTC: whole seconds when it has no milliseconds
/// (`2026-12-10T09:06:00Z`), milliseconds otherwise (`2026-12-10T09:06:00.250Z`). An instant
/// chrono cannot represent (past the year 262,000) is written as its milliseconds, which
/// [`parse_instant`] reads back too.
pub fn format_instant(ms: TimestampMs) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) if ms.rem_euclid(1000) == 0 => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// A UTC calendar date (`2026-12-04`) of an instant.
pub fn format_date(ms: TimestampMs) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => format!("{ms} ms since the epoch"),
    }
}

/// A duration in days, hours and minutes, largest first, zero parts left out: `7 days`,
/// `1 day 2 hours`, `30 minutes`; under a minute, seconds; negative durations get a sign.
pub fn format_duration(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", format_duration(ms.saturating_neg()));
    }
    if ms < MINUTE_MS {
        let seconds = ms as f64 / 1000.0;
        return if seconds == 1.0 {
            "1 second".to_string()
        } else {
            format!("{seconds} seconds")
        };
    }
    let mut parts = Vec::new();
    let mut rest = ms;
    for (unit, name) in [(DAY_MS, "day"), (HOUR_MS, "hour"), (MINUTE_MS, "minute")] {
        let n = rest / unit;
        rest %= unit;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        }
    }
    parts.join(" ")
}

/// Reads an instant as an operator types it, relative forms counted from `now`:
/// - RFC 3339 (`2026-12-04T09:00:00Z`, `2026-12-04T10:00:00+01:00`);
/// - a UTC date (`2026-12-04`: its midnight);
/// - milliseconds since the epoch (`1796979982712`);
/// - `now`, or now minus or plus an amount with a unit of `s`, `m`, `h`, `d` or `w`
///   (`-2h`, `-7d`, `+30m`).
///
/// The error names what was given and the forms accepted.
pub fn parse_instant(text: &str, now: TimestampMs) -> Result<TimestampMs, String> {
    let text = text.trim();
    let refused = || {
        format!(
            "'{text}' is not an instant: give RFC 3339 (2026-12-04T09:00:00Z), a date \
             (2026-12-04), milliseconds since the epoch, or a time relative to now (-2h, -7d)"
        )
    };
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(sign) = text.chars().next().filter(|c| *c == '-' || *c == '+') {
        let body = &text[1..];
        if let Some(unit) = body.chars().last().filter(char::is_ascii_alphabetic) {
            let digits = &body[..body.len() - 1];
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(refused());
            }
            let amount: i64 = digits.parse().map_err(|_| refused())?;
            let unit_ms = match unit.to_ascii_lowercase() {
                's' => 1000,
                'm' => MINUTE_MS,
                'h' => HOUR_MS,
                'd' => DAY_MS,
                'w' => WEEK_MS,
                _ => return Err(refused()),
            };
            let offset = amount.checked_mul(unit_ms).ok_or_else(refused)?;
            return Ok(if sign == '-' {
                now.saturating_sub(offset)
            } else {
                now.saturating_add(offset)
            });
        }
    }
    if let Ok(ms) = text.parse::<i64>() {
        // Seconds since the epoch (ten digits today) would silently mean January 1970.
        if (SECONDS_LIKE_FROM..SECONDS_LIKE_UNTIL).contains(&ms.abs()) {
            return Err(format!(
                "'{text}' looks like seconds since the epoch: give milliseconds ({ms}000), or \
                 RFC 3339"
            ));
        }
        return Ok(ms);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis());
    }
    Err(refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_979_982_712; // 2026-12-11T09:06:22.712Z

    #[test]
    fn instants_are_rfc3339_in_utc_and_read_back() {
        assert_eq!(format_instant(1_796_979_960_000), "2026-12-11T09:06:00Z");
        assert_eq!(format_instant(NOW), "2026-12-11T09:06:22.712Z");
        assert_eq!(format_instant(0), "1970-01-01T00:00:00Z");
        for ms in [0, NOW, 1_796_979_960_000, -1_000] {
            assert_eq!(parse_instant(&format_instant(ms), NOW), Ok(ms));
        }
        assert_eq!(format_date(NOW), "2026-12-11");
        assert_eq!(parse_instant(&format_instant(i64::MAX), NOW), Ok(i64::MAX));
    }

    #[test]
    fn durations_read_in_days_hours_and_minutes() {
        assert_eq!(format_duration(7 * DAY_MS), "7 days");
        assert_eq!(format_duration(DAY_MS + 2 * HOUR_MS), "1 day 2 hours");
        assert_eq!(format_duration(30 * MINUTE_MS), "30 minutes");
        assert_eq!(format_duration(HOUR_MS + MINUTE_MS), "1 hour 1 minute");
        assert_eq!(format_duration(1500), "1.5 seconds");
        assert_eq!(format_duration(-2 * HOUR_MS), "-2 hours");
    }

    #[test]
    fn instants_are_read_as_operators_type_them() {
        assert_eq!(
            parse_instant("2026-12-04T09:00:00Z", NOW),
            Ok(1_796_374_800_000)
        );
        assert_eq!(
            parse_instant("2026-12-04T10:00:00+01:00", NOW),
            Ok(1_796_374_800_000)
        );
        assert_eq!(parse_instant("2026-12-04", NOW), Ok(1_796_342_400_000));
        assert_eq!(parse_instant("1796979982712", NOW), Ok(NOW));
        assert_eq!(parse_instant("now", NOW), Ok(NOW));
        assert_eq!(parse_instant("-2h", NOW), Ok(NOW - 2 * HOUR_MS));
        assert_eq!(parse_instant("-7d", NOW), Ok(NOW - 7 * DAY_MS));
        assert_eq!(parse_instant("+30m", NOW), Ok(NOW + 30 * MINUTE_MS));
        assert_eq!(parse_instant("-1w", NOW), Ok(NOW - WEEK_MS));
        assert_eq!(parse_instant("-90s", NOW), Ok(NOW - 90_000));
    }

    #[test]
    fn seconds_are_not_taken_for_milliseconds() {
        let error = parse_instant("1796374800", NOW).unwrap_err();
        assert!(
            error.contains("looks like seconds") && error.contains("1796374800000"),
            "{error}"
        );
        assert_eq!(parse_instant("0", NOW), Ok(0));
    }

    #[test]
    fn what_is_not_an_instant_is_named() {
        for bad in [
            "yesterday",
            "-2x",
            "-h",
            "--2h",
            "-+2h",
            "2026-13-01",
            "12:00",
            "",
        ] {
            let error = parse_instant(bad, NOW).unwrap_err();
            assert!(error.contains(&format!("'{bad}'")), "{error}");
            assert!(error.contains("RFC 3339"), "{error}");
        }
    }
}
