//! The derived row's memberships and timers, packed (derived format 2). A profile is in tens
//! of audiences and waits on timers for many of them, and the derived row is rewritten at
//! most of its changes (a timer moves with every event an audience counts). Format 1 wrote
//! each audience id and each time as a whole varint, 6 to 7 bytes per instant; format 2 writes
//! each audience id as its distance from the one before (ids are in order) and each instant as
//! its distance from the one before, so memberships changed together cost a byte of time each.
//!
//! Layout of each part (a byte string in the row, so postcard frames and skips it):
//! - memberships: their number; then per membership, by audience id: the id's distance from the
//!   previous id (from 0 for the first), the member flag (0 or 1), the version, and the change
//!   time's zigzag distance from the previous membership's (from 0 for the first);
//! - timers: their number; then per timer, by audience id: the id's distance from the previous
//!   one, and the instant's zigzag distance from the previous timer's.
//!
//! Distances are taken with wrapping arithmetic, so every value round-trips. Reading checks
//! every invariant (ids strictly increase, flags are 0 or 1, counts fit the bytes, nothing
//! trails): a damaged row is an error, never a wrong profile.

use crate::model::{AudienceId, TimestampMs};
use crate::varint::{put_varint, read_varint, unzigzag, zigzag, VarintError};
use serde::de::{Deserializer, Visitor};
#[cfg(test)]
use serde::ser::{Serialize, Serializer};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A profile's membership of one audience: whether it is in, how many times that changed
/// (the version of the last delta), and when it last did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct MemberRecord {
    pub member: bool,
    pub version: u64,
    pub changed_at_ms: TimestampMs,
}

/// Appends the packed memberships to `out`.
pub(super) fn pack_memberships(
    out: &mut Vec<u8>,
    memberships: &BTreeMap<AudienceId, MemberRecord>,
) {
    put_varint(out, memberships.len() as u64);
    let (mut previous_id, mut previous_at) = (0u64, 0i64);
    for (&audience, record) in memberships {
        put_varint(out, audience.wrapping_sub(previous_id));
        out.push(record.member as u8);
        put_varint(out, record.version);
        put_varint(out, zigzag(record.changed_at_ms.wrapping_sub(previous_at)));
        (previous_id, previous_at) = (audience, record.changed_at_ms);
    }
}

/// Appends the packed timers to `out`.
pub(super) fn pack_due(out: &mut Vec<u8>, due: &BTreeMap<AudienceId, TimestampMs>) {
    put_varint(out, due.len() as u64);
    let (mut previous_id, mut previous_at) = (0u64, 0i64);
    for (&audience, &at) in due {
        put_varint(out, audience.wrapping_sub(previous_id));
        put_varint(out, zigzag(at.wrapping_sub(previous_at)));
        (previous_id, previous_at) = (audience, at);
    }
}

/// Reads varints off a packed part, naming the part in its errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    part: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], part: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            part,
        }
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        read_varint(self.bytes, &mut self.pos).map_err(|e| match e {
            VarintError::Truncated => format!("{}: the bytes end inside {what}", self.part),
            VarintError::TooLong => format!("{}: {what} is not a varint", self.part),
        })
    }

    /// The number of entries, refused when `min_entry_bytes` each would not fit the bytes.
    fn count(&mut self, min_entry_bytes: usize) -> Result<usize, String> {
        let count = self.varint("the number of entries")?;
        let room = (self.bytes.len() - self.pos) / min_entry_bytes;
        if count > room as u64 {
            return Err(format!(
                "{}: {count} entries in {} bytes",
                self.part,
                self.bytes.len()
            ));
        }
        Ok(count as usize)
    }

    /// The next audience id, from its distance to the previous one (`None` before the first).
    fn audience(&mut self, previous: Option<AudienceId>) -> Result<AudienceId, String> {
        let distance = self.varint("an audience id")?;
        match previous {
            None => Ok(distance),
            Some(_) if distance == 0 => Err(format!("{}: an audience id repeats", self.part)),
            Some(p) => p
                .checked_add(distance)
                .ok_or_else(|| format!("{}: audience ids do not increase", self.part)),
        }
    }

    fn end(&self) -> Result<(), String> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            n => Err(format!("{}: {n} bytes trail", self.part)),
        }
    }
}

/// Reads [`pack_memberships`]' bytes.
pub(super) fn unpack_memberships(
    bytes: &[u8],
) -> Result<BTreeMap<AudienceId, MemberRecord>, String> {
    let mut r = Reader::new(bytes, "packed memberships");
    let count = r.count(4)?;
    let mut memberships = BTreeMap::new();
    let (mut previous_id, mut previous_at) = (None, 0i64);
    for _ in 0..count {
        let audience = r.audience(previous_id)?;
        let member = match r.bytes.get(r.pos) {
            Some(0) => false,
            Some(1) => true,
            Some(b) => return Err(format!("packed memberships: member flag {b}")),
            None => return Err("packed memberships: the bytes end inside a flag".to_string()),
        };
        r.pos += 1;
        let version = r.varint("a version")?;
        let changed_at_ms = previous_at.wrapping_add(unzigzag(r.varint("a change time")?));
        memberships.insert(
            audience,
            MemberRecord {
                member,
                version,
                changed_at_ms,
            },
        );
        (previous_id, previous_at) = (Some(audience), changed_at_ms);
    }
    r.end()?;
    Ok(memberships)
}

/// Reads [`pack_due`]'s bytes.
pub(super) fn unpack_due(bytes: &[u8]) -> Result<BTreeMap<AudienceId, TimestampMs>, String> {
    let mut r = Reader::new(bytes, "packed timers");
    let count = r.count(2)?;
    let mut due = BTreeMap::new();
    let (mut previous_id, mut previous_at) = (None, 0i64);
    for _ in 0..count {
        let audience = r.audience(previous_id)?;
        let at = previous_at.wrapping_add(unzigzag(r.varint("an instant")?));
        due.insert(audience, at);
        (previous_id, previous_at) = (Some(audience), at);
    }
    r.end()?;
    Ok(due)
}

/// Postcard's view of a packed part: the byte string `pack` writes (for the row written by
/// serde in tests, byte for byte the hand-written one).
#[cfg(test)]
pub(super) struct Packed<'a, T>(pub &'a T, pub fn(&mut Vec<u8>, &T));

#[cfg(test)]
impl<T> Serialize for Packed<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::new();
        (self.1)(&mut out, self.0);
        serializer.serialize_bytes(&out)
    }
}

/// Reads a byte string with `unpack` (serde's `deserialize_with` for the packed parts).
struct PackedVisitor<T>(fn(&[u8]) -> Result<T, String>);

impl<T> Visitor<'_> for PackedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a packed part of a derived row")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<T, E> {
        (self.0)(bytes).map_err(E::custom)
    }
}

pub(super) fn memberships_from_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<AudienceId, MemberRecord>, D::Error> {
    deserializer.deserialize_bytes(PackedVisitor(unpack_memberships))
}

pub(super) fn due_from_bytes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<AudienceId, TimestampMs>, D::Error> {
    deserializer.deserialize_bytes(PackedVisitor(unpack_due))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(member: bool, version: u64, changed_at_ms: i64) -> MemberRecord {
        MemberRecord {
            member,
            version,
            changed_at_ms,
        }
    }

    proptest! {
        #[test]
        fn every_membership_and_timer_round_trips(
            memberships in proptest::collection::btree_map(
                any::<u64>(), (any::<bool>(), any::<u64>(), any::<i64>()), 0..40),
            due in proptest::collection::btree_map(any::<u64>(), any::<i64>(), 0..40),
        ) {
            let memberships: BTreeMap<_, _> = memberships
                .into_iter()
                .map(|(a, (m, v, t))| (a, record(m, v, t)))
                .collect();
            let mut out = Vec::new();
            pack_memberships(&mut out, &memberships);
            prop_assert_eq!(unpack_memberships(&out).unwrap(), memberships);
            let mut out = Vec::new();
            pack_due(&mut out, &due);
            prop_assert_eq!(unpack_due(&out).unwrap(), due);
        }

        #[test]
        fn garbage_is_an_error_or_a_valid_part_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = unpack_memberships(&bytes) {
                let mut out = Vec::new();
                pack_memberships(&mut out, &m);
                prop_assert_eq!(unpack_memberships(&out).unwrap(), m);
            }
            if let Ok(d) = unpack_due(&bytes) {
                let mut out = Vec::new();
                pack_due(&mut out, &d);
                prop_assert_eq!(unpack_due(&out).unwrap(), d);
            }
        }
    }

    /// Memberships changed together and timers set by the same events cost about three bytes
    /// each: a third of format 1's.
    #[test]
    fn memberships_changed_together_pack_small() {
        let at = 1_796_374_800_000;
        let memberships: BTreeMap<_, _> = (0..20u64)
            .map(|i| (1_000 + 3 * i, record(true, 1, at)))
            .collect();
        let due: BTreeMap<_, _> = (0..20u64)
            .map(|i| (1_000 + 3 * i, at + 7 * 86_400_000))
            .collect();
        let (mut m, mut d) = (Vec::new(), Vec::new());
        pack_memberships(&mut m, &memberships);
        pack_due(&mut d, &due);
        let format_1 = postcard::to_allocvec(&(&memberships, &due)).unwrap();
        assert!(m.len() <= 4 * 20 + 10, "{} bytes", m.len());
        assert!(d.len() <= 2 * 20 + 10, "{} bytes", d.len());
        assert!(
            3 * (m.len() + d.len()) < format_1.len() + 60,
            "{} + {} against {}",
            m.len(),
            d.len(),
            format_1.len()
        );
    }

    #[test]
    fn damaged_parts_are_named_errors() {
        let mut out = Vec::new();
        pack_memberships(
            &mut out,
            &BTreeMap::from([
                (5, record(true, 2, 1_000_000)),
                (9, record(false, 3, 2_000_000)),
            ]),
        );
        // count, then id 5, flag, version, 3 bytes of time; distance 4, flag, version, time.
        assert_eq!(out.len(), 13);
        let error = |bytes: &[u8]| unpack_memberships(bytes).unwrap_err();
        assert!(
            error(&out[..out.len() - 1]).contains("end inside"),
            "{}",
            error(&out[..out.len() - 1])
        );
        let mut trailing = out.clone();
        trailing.push(0);
        assert!(error(&trailing).contains("trail"));
        let mut flag = out.clone();
        flag[2] = 7;
        assert!(error(&flag).contains("member flag 7"));
        let mut repeat = out.clone();
        repeat[7] = 0; // the second id's distance
        assert!(error(&repeat).contains("repeats"), "{}", error(&repeat));
        assert!(error(&[200]).contains("entries"));
        assert!(unpack_due(&[1, 5, 0x80])
            .unwrap_err()
            .contains("end inside an instant"));
        assert!(unpack_due(&[1, 5])
            .unwrap_err()
            .contains("1 entries in 2 bytes"));
    }
}
