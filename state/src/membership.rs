//! Membership history: every entry into and exit from an audience, as the subscribers were told
//! (the deltas' processing times and versions), kept within retention.
//!
//! The store keeps one record per delta, under two keys (by audience, for the members at an
//! instant; by MPID, for a profile's history). This module turns a key range of those records
//! into intervals and answers "member at T", without I/O.
//!
//! Invariants: a (audience, MPID) pair's records alternate Added / Dropped by version, each
//! version once; an interval is open while its Dropped record is missing.

use crate::model::{AudienceId, DeltaKind, TimestampMs};

/// One recorded change of a (audience, MPID) membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub version: u64,
    pub kind: DeltaKind,
    pub at_ms: TimestampMs,
}

/// A stretch of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub audience_id: AudienceId,
    pub entered_ms: TimestampMs,
    /// `None`: still a member.
    pub left_ms: Option<TimestampMs>,
    pub entered_version: u64,
    pub left_version: Option<u64>,
}

/// The record's value: kind byte, then the instant (big-endian).
pub fn encode_change(kind: DeltaKind, at_ms: TimestampMs) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = match kind {
        DeltaKind::Added => 1,
        DeltaKind::Dropped => 2,
    };
    v[1..].copy_from_slice(&at_ms.to_be_bytes());
    v
}

pub fn decode_change(version: u64, bytes: &[u8]) -> Result<Change, String> {
    if bytes.len() != 9 {
        return Err(format!("membership record of {} bytes, not 9", bytes.len()));
    }
    let kind = match bytes[0] {
        1 => DeltaKind::Added,
        2 => DeltaKind::Dropped,
        k => return Err(format!("unknown membership change kind {k}")),
    };
    let mut at = [0u8; 8];
    at.copy_from_slice(&bytes[1..]);
    Ok(Change {
        version,
        kind,
        at_ms: i64::from_be_bytes(at),
    })
}

/// The intervals of one (audience, MPID) pair from its changes in version order.
pub fn intervals(audience_id: AudienceId, changes: &[Change]) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    for c in changes {
        match c.kind {
            DeltaKind::Added => out.push(Interval {
                audience_id,
                entered_ms: c.at_ms,
                left_ms: None,
                entered_version: c.version,
                left_version: None,
            }),
            DeltaKind::Dropped => {
                if let Some(open) = out.last_mut().filter(|i| i.left_ms.is_none()) {
                    open.left_ms = Some(c.at_ms);
                    open.left_version = Some(c.version);
                }
            }
        }
    }
    out
}

/// Whether the changes (in version order) leave the pair a member at `at`.
pub fn member_at(changes: &[Change], at: TimestampMs) -> bool {
    changes
        .iter()
        .rfind(|c| c.at_ms <= at)
        .is_some_and(|c| c.kind == DeltaKind::Added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(version: u64, kind: DeltaKind, at_ms: i64) -> Change {
        Change {
            version,
            kind,
            at_ms,
        }
    }

    #[test]
    fn changes_pair_into_intervals_and_answer_as_of() {
        let changes = [
            change(1, DeltaKind::Added, 10),
            change(2, DeltaKind::Dropped, 20),
            change(3, DeltaKind::Added, 30),
        ];
        let got = intervals(7, &changes);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].entered_ms, got[0].left_ms), (10, Some(20)));
        assert_eq!((got[1].entered_version, got[1].left_version), (3, None));
        for (at, member) in [(9, false), (10, true), (19, true), (20, false), (30, true)] {
            assert_eq!(member_at(&changes, at), member, "at {at}");
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let bytes = encode_change(DeltaKind::Dropped, -5);
        assert_eq!(
            decode_change(4, &bytes),
            Ok(change(4, DeltaKind::Dropped, -5))
        );
        assert!(decode_change(1, &bytes[..3]).is_err());
        assert!(decode_change(1, &[9; 9]).is_err());
    }
}
