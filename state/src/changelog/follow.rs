//! Reading a partition's changelog topic: which records change the state, in which order, and
//! when a node's local state of the partition can no longer be trusted. Pure: the store keeps
//! the [`Position`] and applies what [`Follower::read`] says to apply.
//!
//! The rules, in topic order:
//! - a [`Claim`] with an epoch above every epoch before it starts an owner's reign; a claim at
//!   or below it is stale and ignored;
//! - a unit of an epoch below the newest claim's is a zombie's (a node that lost the partition
//!   but still wrote): ignored;
//! - a unit at or below the sequence already read is a repetition: ignored;
//! - the next sequence is taken; a sequence further on is a gap in the log: the log is broken;
//! - a unit this node holds already (it wrote it when it owned the partition) is verified, not
//!   applied: it must be this node's own, of the epoch it wrote under; else the node's state
//!   went another way than the log's and must be rebuilt from the log.

use super::{Claim, Record, Unit};
use serde::{Deserialize, Serialize};

/// Where a node stands in one partition's changelog topic. Node-local: every node keeps its
/// own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The next topic offset to read.
    pub next_offset: i64,
    /// The last unit sequence read from the topic (applied, or verified as this node's own).
    pub seq: u64,
    /// The epoch of the newest claim read.
    pub epoch: u64,
    /// The epoch this node writes its own units under: of its last claim.
    pub own_epoch: u64,
}

impl Position {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("positions always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Position, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("changelog position does not parse: {e}"))
    }
}

/// What to do with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Apply the unit: it is the partition's next one and this node does not hold it.
    Apply,
    /// This node holds the unit already (it wrote it): nothing to apply.
    Verified,
    /// A claim that starts a new epoch.
    Claimed { epoch: u64, node: String },
    /// Nothing changes: a stale claim, a zombie's unit, a repetition.
    Ignored(&'static str),
}

/// Why the log cannot be followed from here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// This node's state holds units the log does not: rebuild it from the log.
    #[error("this node's state of the partition went another way than the changelog: {0}")]
    Diverged(String),
    /// The log misses units: nobody can rebuild the partition past them.
    #[error("the changelog misses units: {0}")]
    Gap(String),
}

/// Reads one partition's changelog from a [`Position`], knowing how far the node's own state
/// goes (`local_seq`: the last unit committed on this node).
#[derive(Debug, Clone)]
pub struct Follower {
    pub position: Position,
    pub local_seq: u64,
}

impl Follower {
    pub fn new(position: Position, local_seq: u64) -> Follower {
        Follower {
            position,
            local_seq,
        }
    }

    /// The record at `offset`: what to do with it, and the position moves past it.
    pub fn read(&mut self, offset: i64, record: &Record) -> Result<Step, Broken> {
        let step = match record {
            Record::Claim(claim) => self.claim(claim),
            Record::Unit(unit) => self.unit(unit)?,
        };
        self.position.next_offset = offset + 1;
        Ok(step)
    }

    fn claim(&mut self, claim: &Claim) -> Step {
        if claim.epoch <= self.position.epoch {
            return Step::Ignored("a stale claim");
        }
        self.position.epoch = claim.epoch;
        Step::Claimed {
            epoch: claim.epoch,
            node: claim.node.clone(),
        }
    }

    fn unit(&mut self, unit: &Unit) -> Result<Step, Broken> {
        if unit.epoch < self.position.epoch {
            return Ok(Step::Ignored("a unit of an epoch a newer claim ended"));
        }
        if unit.seq <= self.position.seq {
            return Ok(Step::Ignored("a repeated unit"));
        }
        if unit.seq > self.position.seq + 1 {
            return Err(Broken::Gap(format!(
                "partition {} goes from unit {} to unit {}",
                unit.partition, self.position.seq, unit.seq
            )));
        }
        // A unit of a newer epoch than any claim read: the claim is older than the position
        // (a node never writes before its claim), so this is the epoch.
        self.position.epoch = unit.epoch;
        self.position.seq = unit.seq;
        if unit.seq > self.local_seq {
            self.local_seq = unit.seq;
            return Ok(Step::Apply);
        }
        if unit.epoch == self.position.own_epoch {
            return Ok(Step::Verified);
        }
        Err(Broken::Diverged(format!(
            "unit {} of partition {} is of epoch {} in the changelog, this node wrote its own \
             under epoch {}",
            unit.seq, unit.partition, unit.epoch, self.position.own_epoch
        )))
    }

    /// At the end of the topic: this node's state holds no unit the log does not.
    pub fn caught_up(&self) -> Result<(), Broken> {
        if self.local_seq > self.position.seq {
            return Err(Broken::Diverged(format!(
                "this node holds units up to {}, the changelog only up to {}",
                self.local_seq, self.position.seq
            )));
        }
        Ok(())
    }
}

/// Whether the records another writer put between two of the owner's units (a zombie's late
/// unit, a stale claim, a duplicate of the owner's own unit) leave the owner's reign intact:
/// only a claim above the owner's epoch ends it.
pub fn gap_keeps_reign<'a>(records: impl IntoIterator<Item = &'a Record>, own_epoch: u64) -> bool {
    !records
        .into_iter()
        .any(|r| matches!(r, Record::Claim(c) if c.epoch > own_epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(epoch: u64, seq: u64) -> Record {
        Record::Unit(Unit {
            partition: 1,
            epoch,
            seq,
            ops: vec![],
        })
    }

    fn claim(epoch: u64, node: &str) -> Record {
        Record::Claim(Claim {
            partition: 1,
            epoch,
            node: node.into(),
        })
    }

    /// Reads `records` from offset 0; the steps, or where it broke.
    fn follow(follower: &mut Follower, records: &[Record]) -> Result<Vec<Step>, Broken> {
        let mut steps = Vec::new();
        for (offset, record) in records.iter().enumerate() {
            steps.push(follower.read(offset as i64, record)?);
        }
        follower.caught_up()?;
        Ok(steps)
    }

    #[test]
    fn a_new_node_applies_every_unit_in_order_and_skips_what_a_zombie_wrote_after_a_claim() {
        let records = [
            claim(1, "a"),
            unit(1, 1),
            unit(1, 2),
            claim(2, "b"),
            // A, SIGSTOPped past its session, wakes and writes its next unit: too late.
            unit(1, 3),
            unit(2, 3),
            unit(2, 3),
            claim(2, "a"),
            unit(2, 4),
        ];
        let mut f = Follower::new(Position::default(), 0);
        let steps = follow(&mut f, &records).unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Claimed {
                    epoch: 1,
                    node: "a".into()
                },
                Step::Apply,
                Step::Apply,
                Step::Claimed {
                    epoch: 2,
                    node: "b".into()
                },
                Step::Ignored("a unit of an epoch a newer claim ended"),
                Step::Apply,
                Step::Ignored("a repeated unit"),
                Step::Ignored("a stale claim"),
                Step::Apply,
            ]
        );
        assert_eq!(
            f.position,
            Position {
                next_offset: 9,
                seq: 4,
                epoch: 2,
                own_epoch: 0
            }
        );
    }

    #[test]
    fn a_former_owner_verifies_its_own_units_and_applies_only_the_tail() {
        // A owned the partition under epoch 1 and wrote units 1 and 2; B took it over.
        let records = [
            claim(1, "a"),
            unit(1, 1),
            unit(1, 2),
            claim(2, "b"),
            unit(2, 3),
        ];
        let position = Position {
            next_offset: 1,
            seq: 0,
            epoch: 1,
            own_epoch: 1,
        };
        let mut f = Follower::new(position, 2);
        let mut steps = Vec::new();
        for (offset, record) in records.iter().enumerate().skip(1) {
            steps.push(f.read(offset as i64, record).unwrap());
        }
        f.caught_up().unwrap();
        assert_eq!(steps[..2], [Step::Verified, Step::Verified]);
        assert_eq!(steps[3], Step::Apply);
        assert_eq!(f.local_seq, 3);
    }

    #[test]
    fn a_former_owner_whose_last_units_the_log_refused_must_rebuild() {
        // A wrote unit 2 after B's claim (A was a zombie): the log has B's unit 2.
        let records = [
            claim(1, "a"),
            unit(1, 1),
            claim(2, "b"),
            unit(1, 2),
            unit(2, 2),
        ];
        let position = Position {
            own_epoch: 1,
            ..Position::default()
        };
        let mut f = Follower::new(position, 2);
        let broken = follow(&mut f, &records).unwrap_err();
        assert!(matches!(broken, Broken::Diverged(ref why) if why.contains("epoch 2")));
        // A's units never reached the topic (its publisher was cut off): the same.
        let mut f = Follower::new(position, 2);
        let broken = follow(&mut f, &records[..2]).unwrap_err();
        assert!(matches!(broken, Broken::Diverged(ref why) if why.contains("up to 1")));
    }

    #[test]
    fn a_missing_unit_breaks_the_log() {
        let mut f = Follower::new(Position::default(), 0);
        let broken = follow(&mut f, &[claim(1, "a"), unit(1, 1), unit(1, 3)]).unwrap_err();
        assert!(matches!(broken, Broken::Gap(ref why) if why.contains("from unit 1 to unit 3")));
    }

    #[test]
    fn only_a_newer_claim_between_the_owners_units_ends_its_reign() {
        assert!(gap_keeps_reign(&[unit(1, 7), claim(2, "a"), unit(2, 9)], 2));
        assert!(gap_keeps_reign(&[], 2));
        assert!(!gap_keeps_reign(&[unit(2, 9), claim(3, "b")], 2));
    }

    #[test]
    fn positions_round_trip() {
        let p = Position {
            next_offset: 41,
            seq: 40,
            epoch: 3,
            own_epoch: 2,
        };
        assert_eq!(Position::decode(&p.encode()), Ok(p));
        assert!(Position::decode(&[]).is_err());
    }
}
