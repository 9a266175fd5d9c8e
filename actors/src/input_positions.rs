//! Checks that the input consumer, once positioned at a stored offset, really starts there.
//!
//! The engine positions its consumer at explicit offsets (those stored with the state) on every
//! assignment and re-assignment. A broker answers a fetch from an offset inside a record batch
//! with the whole batch (the client passes over the records before the offset), so the first
//! record delivered is the one asked for. Some brokers do not: tansu 0.6 serves a batch only to
//! a fetch from its first offset and answers a fetch from inside it with the *next* batch, and
//! the rest of the batch would silently never be applied.
//!
//! So after each positioning the first record of each input partition is checked: at the
//! offset asked for (or before it, which the partition actor passes over), all is well; past
//! it, the consumer is moved back 1, 2, 4, ... records (records before the stored offset are
//! passed over by the actor) until a fetch starts at or before the offset asked for. Once a
//! record before the offset was seen, a later jump is a real hole (a transaction marker,
//! compaction) and is let through, as it is after [`MAX_REREADS`] tries. When the skipped
//! batch is the partition's last, no record comes at all: a partition that stays quiet for
//! [`QUIET`] is moved back the same way (its broker's reported end cannot tell: tansu reports
//! the last batch's first offset + 1). A partition at its end costs a few records read again.
//!
//! Pure bookkeeping; the ingest loop does the seeking.

use std::time::{Duration, Instant};

/// How many times one positioning is read again from further back before a jump is accepted
/// as a hole in the topic: the last try starts 2^16 records before the stored offset, more
/// than a producer's batch holds by default (10,000 records).
pub const MAX_REREADS: u32 = 17;

/// A resumed partition's first re-read starts this many records back
/// ([`InputPositions::resumed`]).
pub const RESUMED_REREAD_BACK: i64 = 1 << RESUMED_REREADS;
/// The tries a resumed position counts as already made, so that its first re-read is
/// [`RESUMED_REREAD_BACK`] back (see [`crate::catalog_topic::reread_from`]).
const RESUMED_REREADS: u32 = 10;

/// How long a positioned partition may go without a record before it is read again from
/// further back.
pub const QUIET: Duration = Duration::from_millis(250);

/// What to do with a record just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to its partition actor.
    Deliver,
    /// Drop it and move the consumer of its partition back to `from`: records between the
    /// stored offset and it were passed over.
    Reread { from: i64 },
    /// A jump past the stored offset that re-reading did not close: a hole in the topic.
    /// Hand it over (the actor counts the jump).
    Hole { expected: i64 },
}

#[derive(Debug, Clone)]
struct Expected {
    topic: String,
    partition: i32,
    offset: i64,
    rereads: u32,
    /// A record before `offset` came since the positioning: the broker serves from before it,
    /// so what follows is contiguous.
    seen_before: bool,
    /// When the consumer was last positioned (or moved back) for it.
    since: Instant,
}

/// The stored offsets the consumer was last positioned at, until each partition's first
/// record confirms it. Checked for every record received: a short list (one entry per
/// partition positioned and not yet confirmed, usually none), searched without allocating.
#[derive(Debug, Default)]
pub struct InputPositions {
    expected: Vec<Expected>,
}

impl InputPositions {
    /// The consumer was (re-)assigned: `positions` are the explicit offsets it starts from,
    /// every other expectation is void (its partition is no longer consumed, or was assigned
    /// from the beginning, where a batch starts).
    pub fn positioned<'a>(
        &mut self,
        positions: impl IntoIterator<Item = (&'a str, i32, i64)>,
        now: Instant,
    ) {
        self.expected.clear();
        self.added(positions, now);
    }

    /// The consumer was assigned `positions` besides what it consumes already (an
    /// incremental assignment): they are checked, the other partitions' expectations stay.
    pub fn added<'a>(
        &mut self,
        positions: impl IntoIterator<Item = (&'a str, i32, i64)>,
        now: Instant,
    ) {
        for (topic, partition, offset) in positions {
            self.expect(topic, partition, offset, 0, now);
        }
    }

    /// Replaces what is expected of `topic`/`partition` with `offset`, as if `rereads` tries
    /// had been made.
    fn expect(&mut self, topic: &str, partition: i32, offset: i64, rereads: u32, now: Instant) {
        self.give_up(topic, partition);
        self.expected.push(Expected {
            topic: topic.to_string(),
            partition,
            offset,
            rereads,
            seen_before: false,
            since: now,
        });
    }

    /// Paused partitions were resumed at `positions`: the record after the last one received
    /// of each, where the consumer reads on. Checked like a positioning, except that a skip
    /// is read again from [`RESUMED_REREAD_BACK`] records back at once, not 1, 2, 4...: the
    /// consumer paused anywhere in a producer's record batch, often hundreds of records long,
    /// and each step back is a fetch.
    pub fn resumed<'a>(
        &mut self,
        positions: impl IntoIterator<Item = (&'a str, i32, i64)>,
        now: Instant,
    ) {
        for (topic, partition, offset) in positions {
            self.expect(topic, partition, offset, RESUMED_REREADS, now);
        }
    }

    /// `partitions` are no longer consumed: nothing is expected of them.
    pub fn forget(&mut self, partitions: &[i32]) {
        self.expected.retain(|e| !partitions.contains(&e.partition));
    }

    fn find(&self, topic: &str, partition: i32) -> Option<usize> {
        self.expected
            .iter()
            .position(|e| e.partition == partition && e.topic == topic)
    }

    /// A record at `offset` of `topic`/`partition` was received.
    pub fn check(&mut self, topic: &str, partition: i32, offset: i64, now: Instant) -> Verdict {
        let Some(at) = self.find(topic, partition) else {
            return Verdict::Deliver;
        };
        let expected = &mut self.expected[at];
        if offset < expected.offset {
            expected.seen_before = true;
            return Verdict::Deliver;
        }
        if offset == expected.offset {
            self.expected.swap_remove(at);
            return Verdict::Deliver;
        }
        if expected.seen_before {
            let expected = self.expected.swap_remove(at).offset;
            return Verdict::Hole { expected };
        }
        self.read_again(at, now)
    }

    /// The partitions positioned (or moved back) more than [`QUIET`] ago that no record came
    /// from since, each with what to do: read again from further back, or, after
    /// [`MAX_REREADS`] tries, nothing more (a [`Verdict::Hole`]: it waits for its next record).
    pub fn quiet(&mut self, now: Instant) -> Vec<(String, i32, Verdict)> {
        let mut quiet = Vec::new();
        // From the end: `read_again` may remove the entry it looks at.
        for at in (0..self.expected.len()).rev() {
            let e = &self.expected[at];
            if !e.seen_before && now.duration_since(e.since) >= QUIET {
                let (topic, partition) = (e.topic.clone(), e.partition);
                quiet.push((topic, partition, self.read_again(at, now)));
            }
        }
        quiet
    }

    /// Records past the stored offset of entry `at` were passed over: read again from further
    /// back, up to [`MAX_REREADS`] times.
    fn read_again(&mut self, at: usize, now: Instant) -> Verdict {
        let expected = &mut self.expected[at];
        if expected.rereads >= MAX_REREADS {
            let expected = self.expected.swap_remove(at).offset;
            return Verdict::Hole { expected };
        }
        expected.rereads += 1;
        expected.since = now;
        let from = crate::catalog_topic::reread_from(expected.offset, 0, expected.rereads + 1);
        Verdict::Reread { from }
    }

    /// Moving the consumer back failed: the partition is read on from where it is.
    pub fn give_up(&mut self, topic: &str, partition: i32) {
        if let Some(at) = self.find(topic, partition) {
            self.expected.swap_remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log whose records come in batches: a fetch from `offset` returns what a broker
    /// serving batches only from their first offset would (the batch starting there, or the
    /// next one after), flattened.
    fn tansu_fetch(batch_starts: &[i64], end: i64, offset: i64) -> Vec<i64> {
        let first = batch_starts
            .iter()
            .copied()
            .find(|&start| start >= offset)
            .unwrap_or(end);
        // The client passes over records before the offset it asked for.
        (first..end).filter(|&o| o >= offset).collect()
    }

    /// Drives the consumer positioned at `stored` over that log until a record reaches the
    /// actor; returns the offsets the actor received, in order.
    fn consume(batch_starts: &[i64], end: i64, stored: i64) -> (Vec<i64>, u32) {
        let mut positions = InputPositions::default();
        positions.positioned([("events", 0, stored)], Instant::now());
        let mut from = stored;
        let mut seeks = 0;
        'fetch: loop {
            let mut delivered = Vec::new();
            for offset in tansu_fetch(batch_starts, end, from) {
                match positions.check("events", 0, offset, Instant::now()) {
                    Verdict::Deliver | Verdict::Hole { .. } => delivered.push(offset),
                    Verdict::Reread { from: back } => {
                        from = back;
                        seeks += 1;
                        continue 'fetch;
                    }
                }
            }
            return (delivered, seeks);
        }
    }

    #[test]
    fn a_fetch_from_inside_a_batch_that_skips_it_is_read_again_from_before_it() {
        // Batches of 100 records; the state stands at 250, inside the third.
        let starts: Vec<i64> = (0..10).map(|b| b * 100).collect();
        let (delivered, seeks) = consume(&starts, 1_000, 250);
        // The actor passes over what precedes 250; from 250 on, nothing is missing.
        let applied: Vec<i64> = delivered.into_iter().filter(|&o| o >= 250).collect();
        assert_eq!(applied, (250..1_000).collect::<Vec<_>>());
        // 249, 248, 246, 242, 234, 218, 186 (at last before the batch's start at 200).
        assert_eq!(seeks, 7);
    }

    /// A resumed position inside a batch is read again from far back at once: one seek for a
    /// batch of up to [`RESUMED_REREAD_BACK`] records, nothing skipped; a broker that serves
    /// the containing batch costs nothing.
    #[test]
    fn a_resumed_position_inside_a_batch_is_read_again_from_far_back_at_once() {
        let starts: Vec<i64> = (0..10).map(|b| b * 700).collect();
        let mut positions = InputPositions::default();
        positions.resumed([("events", 0, 1_650)], Instant::now());
        let from = match positions.check("events", 0, 2_100, Instant::now()) {
            Verdict::Reread { from } => from,
            other => panic!("{other:?}"),
        };
        assert_eq!(from, 1_650 - RESUMED_REREAD_BACK);
        let delivered: Vec<i64> = tansu_fetch(&starts, 7_000, from)
            .into_iter()
            .filter(|&o| positions.check("events", 0, o, Instant::now()) == Verdict::Deliver)
            .collect();
        assert!(
            delivered[0] <= 1_650,
            "from before the position: {:?}",
            &delivered[..3]
        );
        assert!(delivered.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
        assert_eq!(delivered.last(), Some(&6_999));

        // An older expectation of the same partition is replaced, and every resumed topic
        // starts far back (whatever the order the entries end up in).
        let mut both = InputPositions::default();
        both.positioned([("events", 0, 7)], Instant::now());
        both.resumed(
            [("events", 0, 1_650), ("identities", 0, 3_000)],
            Instant::now(),
        );
        for (topic, at, past) in [("identities", 3_000, 3_100), ("events", 1_650, 2_100)] {
            assert_eq!(
                both.check(topic, 0, past, Instant::now()),
                Verdict::Reread {
                    from: at - RESUMED_REREAD_BACK
                }
            );
        }

        let mut at_once = InputPositions::default();
        at_once.positioned([("events", 1, 5)], Instant::now());
        at_once.resumed([("events", 0, 1_650)], Instant::now());
        assert_eq!(
            at_once.check("events", 0, 1_650, Instant::now()),
            Verdict::Deliver
        );
        assert_eq!(
            at_once.check("events", 0, 1_651, Instant::now()),
            Verdict::Deliver
        );
        assert!(
            matches!(
                at_once.check("events", 1, 9, Instant::now()),
                Verdict::Reread { from: 4 }
            ),
            "the other partition's positioning is still checked from one back"
        );
    }

    #[test]
    fn a_broker_that_serves_the_containing_batch_costs_nothing() {
        let mut positions = InputPositions::default();
        positions.positioned([("events", 0, 250), ("identities", 0, 7)], Instant::now());
        // The batch from 200: records before 250 are dropped by the client, 250 comes first.
        assert_eq!(
            positions.check("events", 0, 250, Instant::now()),
            Verdict::Deliver
        );
        assert_eq!(
            positions.check("events", 0, 251, Instant::now()),
            Verdict::Deliver
        );
        // An expectation for each partition apart; one of another topic is untouched.
        assert_eq!(
            positions.check("identities", 0, 7, Instant::now()),
            Verdict::Deliver
        );
        assert_eq!(
            positions.check("identities", 1, 90, Instant::now()),
            Verdict::Deliver
        );
    }

    #[test]
    fn a_real_hole_is_let_through_once_the_broker_served_records_before_it() {
        // A transaction marker at 250: re-read from 249, the record before it comes, then
        // 251: a hole, handed over.
        let mut positions = InputPositions::default();
        positions.positioned([("events", 0, 250)], Instant::now());
        assert_eq!(
            positions.check("events", 0, 251, Instant::now()),
            Verdict::Reread { from: 249 }
        );
        assert_eq!(
            positions.check("events", 0, 249, Instant::now()),
            Verdict::Deliver
        );
        assert_eq!(
            positions.check("events", 0, 251, Instant::now()),
            Verdict::Hole { expected: 250 }
        );
        assert_eq!(
            positions.check("events", 0, 252, Instant::now()),
            Verdict::Deliver
        );
    }

    #[test]
    fn re_reading_is_bounded_and_a_new_assignment_starts_over() {
        // The log starts at 1,000 (retention): every re-read lands past 250.
        let mut positions = InputPositions::default();
        positions.positioned([("events", 0, 250)], Instant::now());
        let mut verdicts = Vec::new();
        loop {
            let verdict = positions.check("events", 0, 1_000, Instant::now());
            verdicts.push(verdict);
            if !matches!(verdict, Verdict::Reread { .. }) {
                break;
            }
        }
        assert_eq!(verdicts.len() as u32, MAX_REREADS + 1);
        assert_eq!(verdicts.last(), Some(&Verdict::Hole { expected: 250 }));
        assert!(verdicts
            .iter()
            .all(|v| !matches!(v, Verdict::Reread { from } if *from < 0)));
        // A re-assignment replaces the expectations: the old one is void.
        positions.positioned([("events", 0, 900)], Instant::now());
        positions.positioned([("events", 1, 5)], Instant::now());
        assert_eq!(
            positions.check("events", 0, 1_000, Instant::now()),
            Verdict::Deliver
        );
        assert_eq!(
            positions.check("events", 1, 6, Instant::now()),
            Verdict::Reread { from: 4 }
        );
        positions.give_up("events", 1);
        assert_eq!(
            positions.check("events", 1, 6, Instant::now()),
            Verdict::Deliver
        );
    }

    #[test]
    fn a_quiet_partition_is_read_again_from_further_back() {
        // The skipped batch was the partition's last: no record comes at all.
        let mut positions = InputPositions::default();
        let t0 = Instant::now();
        positions.positioned([("events", 0, 40), ("events", 1, 7)], t0);
        assert!(positions.quiet(t0 + QUIET / 2).is_empty(), "not quiet yet");
        let later = t0 + QUIET;
        let mut quiet = positions.quiet(later);
        quiet.sort_by_key(|(_, partition, _)| *partition);
        assert_eq!(
            quiet,
            vec![
                ("events".to_string(), 0, Verdict::Reread { from: 39 }),
                ("events".to_string(), 1, Verdict::Reread { from: 6 }),
            ]
        );
        assert!(positions.quiet(later).is_empty(), "moved back just now");
        // Partition 1 was at its end: the record before its offset comes, and it is done.
        assert_eq!(positions.check("events", 1, 6, later), Verdict::Deliver);
        let again = positions.quiet(later + QUIET);
        assert_eq!(
            again,
            vec![("events".to_string(), 0, Verdict::Reread { from: 38 })]
        );
        // Partition 0's batch comes from its start: what precedes 40 is passed over.
        assert_eq!(positions.check("events", 0, 0, later), Verdict::Deliver);
        assert!(
            positions.quiet(later + QUIET * 4).is_empty(),
            "records came"
        );
        assert_eq!(positions.check("events", 0, 40, later), Verdict::Deliver);
        assert_eq!(
            positions.check("events", 1, 9, later),
            Verdict::Hole { expected: 7 }
        );
        // A partition from which nothing ever comes is given up after MAX_REREADS tries.
        positions.positioned([("events", 2, 5)], t0);
        let mut at = t0;
        let mut rereads = 0;
        loop {
            at += QUIET;
            match positions.quiet(at).as_slice() {
                [(_, 2, Verdict::Reread { .. })] => rereads += 1,
                [(_, 2, Verdict::Hole { expected: 5 })] => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(rereads, MAX_REREADS);
        assert!(positions.quiet(at + QUIET).is_empty());
    }

    #[test]
    fn an_incremental_assignment_keeps_the_other_partitions_expectations() {
        let t0 = Instant::now();
        let mut positions = InputPositions::default();
        positions.positioned([("events", 0, 40)], t0);
        // Partition 3 is added (restored elsewhere, handed over): 0 still waits for 40.
        positions.added([("events", 3, 12)], t0);
        assert_eq!(
            positions.check("events", 0, 45, t0),
            Verdict::Reread { from: 39 }
        );
        assert_eq!(
            positions.check("events", 3, 20, t0),
            Verdict::Reread { from: 11 }
        );
        // Partition 0 is handed over: nothing is expected of it any more.
        positions.forget(&[0]);
        assert_eq!(positions.check("events", 0, 45, t0), Verdict::Deliver);
        assert_eq!(positions.check("events", 3, 12, t0), Verdict::Deliver);
    }
}
