//! The changelog of a partition: its units of work (one RocksDB write each: a poll batch, a
//! timer firing, a backfill step, a prune) as logical operations on the store's column
//! families, so that another node can rebuild the partition's state exactly by applying them
//! in order (cluster step 2). Pure: the operations and their encoding; the store records them
//! as a [`crate::store::WriteBatch`] is built and applies them ([`crate::store::Store::apply_unit`]).
//!
//! Invariants:
//! - a unit carries every operation of its write, in the order they were made, so applying
//!   the units of a partition in order gives the owner's keys byte for byte;
//! - column families are named by stable codes ([`CF_CODES`]), never by RocksDB's ids (which
//!   depend on the order a database created them);
//! - a unit names its partition, the owner's epoch and its sequence in the partition: a
//!   reader applies each sequence once, in order, and ignores units of an older epoch once a
//!   newer one claimed the partition ([`Claim`], and [`follow`] for the reader's rules).

use crate::row_format::frame_legacy_row;
use serde::{Deserialize, Serialize};

pub mod follow;
pub mod snapshot;

/// Version byte of an encoded unit (then postcard). 3: the outbox's and the dead letters'
/// rows open with their format byte ([`crate::row_format`]).
pub const CHANGELOG_FORMAT: u8 = 3;

/// Units written before those rows had a format byte: still read, their rows framed.
pub const LEGACY_CHANGELOG_FORMAT: u8 = 1;

/// First byte of an encoded [`Claim`] (then postcard): claims and units share the topic.
pub const CLAIM_FORMAT: u8 = 2;

/// The column families a unit may touch, by their stable code (the index here). New column
/// families are appended: codes never change meaning.
pub const CF_CODES: &[&str] = &[
    "profiles",
    "outbox",
    "timers",
    "deadletters",
    "meta",
    "audiences",
    "eventlog",
    "logdict",
    "sample",
    "members",
    "facts",
    "derived",
];

/// The code of a column family.
pub fn cf_code(name: &str) -> u8 {
    CF_CODES
        .iter()
        .position(|c| *c == name)
        .unwrap_or_else(|| panic!("column family {name} has no changelog code")) as u8
}

/// The column family of a code, if this version knows it.
pub fn cf_name(code: u8) -> Option<&'static str> {
    CF_CODES.get(code as usize).copied()
}

/// One operation of a write. Keys and values are (de)serialised as bytes: postcard writes
/// them as it writes a sequence of `u8` (a length, then the bytes), in one copy instead of a
/// call per byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        cf: u8,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        cf: u8,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Deletes the keys from `from` (included) to `to` (excluded).
    DeleteRange {
        cf: u8,
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
}

impl Op {
    pub fn cf(&self) -> u8 {
        match self {
            Op::Put { cf, .. } | Op::Delete { cf, .. } | Op::DeleteRange { cf, .. } => *cf,
        }
    }
}

/// One unit of work of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub partition: u32,
    /// The owner's claim on the partition when it wrote the unit.
    pub epoch: u64,
    /// The unit's place in the partition's changelog, from 1, without gaps.
    pub seq: u64,
    pub ops: Vec<Op>,
}

impl Unit {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CHANGELOG_FORMAT];
        out.extend(postcard::to_allocvec(self).expect("changelog units always serialise"));
        out
    }

    /// Reads a unit; the error says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Unit, String> {
        let (format, body) = bytes
            .split_first()
            .ok_or_else(|| "empty changelog record".to_string())?;
        if *format != CHANGELOG_FORMAT && *format != LEGACY_CHANGELOG_FORMAT {
            return Err(format!(
                "unknown changelog format {format} (this node reads formats \
                 {LEGACY_CHANGELOG_FORMAT} and {CHANGELOG_FORMAT}): is a newer node writing the \
                 changelog?"
            ));
        }
        let mut unit: Unit = postcard::from_bytes(body)
            .map_err(|e| format!("changelog unit of format {format} does not parse: {e}"))?;
        if let Some(op) = unit.ops.iter().find(|op| cf_name(op.cf()).is_none()) {
            return Err(format!(
                "changelog unit {} of partition {} writes column family code {}, unknown to this \
                 version: is a newer node writing the changelog?",
                unit.seq,
                unit.partition,
                op.cf()
            ));
        }
        if *format == LEGACY_CHANGELOG_FORMAT {
            unit.frame_legacy_rows();
        }
        Ok(unit)
    }

    /// Gives the rows a unit of the legacy format puts the format byte they lacked.
    fn frame_legacy_rows(&mut self) {
        for op in &mut self.ops {
            if let Op::Put { cf, value, .. } = op {
                let framed = cf_name(*cf).and_then(|name| frame_legacy_row(name, value));
                if let Some(framed) = framed {
                    *value = framed;
                }
            }
        }
    }
}

/// A node takes a partition: from this record on, readers ignore units of older epochs (a
/// node that lost the partition but still writes, a zombie, cannot change its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub partition: u32,
    /// Above every epoch claimed before it in the partition, else readers ignore the claim.
    pub epoch: u64,
    /// The claiming node, for operators reading the topic.
    pub node: String,
}

impl Claim {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CLAIM_FORMAT];
        out.extend(postcard::to_allocvec(self).expect("claims always serialise"));
        out
    }
}

/// A record of the changelog topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Unit(Unit),
    Claim(Claim),
}

impl Record {
    /// Reads a record; the error says what is wrong with the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        match bytes.split_first() {
            Some((&CLAIM_FORMAT, body)) => postcard::from_bytes(body)
                .map(Record::Claim)
                .map_err(|e| format!("changelog claim does not parse: {e}")),
            _ => Unit::decode(bytes).map(Record::Unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row_format::{DELTA_FORMAT, LETTER_FORMAT};

    #[test]
    fn bytes_are_written_as_a_sequence_of_u8_was_so_stored_units_still_read() {
        #[derive(Serialize)]
        enum PlainOp {
            Put {
                cf: u8,
                key: Vec<u8>,
                value: Vec<u8>,
            },
        }
        let value: Vec<u8> = (0..=255).chain(0..200).collect();
        let plain = postcard::to_allocvec(&PlainOp::Put {
            cf: 4,
            key: vec![0, 0, 0, 7, 200],
            value: value.clone(),
        })
        .unwrap();
        let op = Op::Put {
            cf: 4,
            key: vec![0, 0, 0, 7, 200],
            value,
        };
        assert_eq!(postcard::to_allocvec(&op).unwrap(), plain);
        assert_eq!(postcard::from_bytes::<Op>(&plain).unwrap(), op);
    }

    #[test]
    fn a_legacy_unit_reads_with_its_outbox_and_dead_letter_rows_framed() {
        let put = |cf: &str, value: &[u8]| Op::Put {
            cf: cf_code(cf),
            key: vec![0, 0, 0, 1],
            value: value.to_vec(),
        };
        let unit = Unit {
            partition: 1,
            epoch: 1,
            seq: 1,
            ops: vec![
                put("outbox", b"delta"),
                put("deadletters", b"letter"),
                put("profiles", b"profile"),
            ],
        };
        let mut legacy = vec![LEGACY_CHANGELOG_FORMAT];
        legacy.extend(postcard::to_allocvec(&unit).unwrap());
        let read = Unit::decode(&legacy).unwrap();
        let values: Vec<Vec<u8>> = read
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { value, .. } => value.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(values[0], [&[DELTA_FORMAT][..], b"delta"].concat());
        assert_eq!(values[1], [&[LETTER_FORMAT][..], b"letter"].concat());
        assert_eq!(values[2], b"profile", "other rows keep their own format");
        // A unit of this version is read as written.
        assert_eq!(Unit::decode(&unit.encode()), Ok(unit));
    }

    #[test]
    fn units_round_trip_and_bad_bytes_say_why() {
        let unit = Unit {
            partition: 3,
            epoch: 2,
            seq: 41,
            ops: vec![
                Op::Put {
                    cf: cf_code("profiles"),
                    key: vec![0, 0, 0, 3, 1],
                    value: b"state".to_vec(),
                },
                Op::Delete {
                    cf: cf_code("timers"),
                    key: vec![9],
                },
                Op::DeleteRange {
                    cf: cf_code("outbox"),
                    from: vec![0],
                    to: vec![1],
                },
            ],
        };
        assert_eq!(Unit::decode(&unit.encode()), Ok(unit.clone()));
        assert_eq!(
            Record::decode(&unit.encode()),
            Ok(Record::Unit(unit.clone()))
        );
        let claim = Claim {
            partition: 3,
            epoch: 4,
            node: "node-b".into(),
        };
        assert_eq!(Record::decode(&claim.encode()), Ok(Record::Claim(claim)));
        assert!(Record::decode(&[CLAIM_FORMAT, 0xff])
            .unwrap_err()
            .contains("claim"));
        assert!(Unit::decode(&[]).unwrap_err().contains("empty"));
        assert!(Unit::decode(&[7, 1, 2]).unwrap_err().contains("format 7"));
        let mut unknown = unit;
        unknown.ops.push(Op::Delete {
            cf: 200,
            key: vec![],
        });
        assert!(Unit::decode(&unknown.encode())
            .unwrap_err()
            .contains("code 200"));
    }

    #[test]
    fn every_column_family_of_the_store_has_a_code() {
        for name in crate::store::replicated_column_families() {
            assert_eq!(cf_name(cf_code(name)), Some(*name));
        }
    }
}
