//! What ingestion holds of each partition between the consumer and the partition actors: the
//! messages received and not yet handed over, and whether a batch is being applied. Pure
//! bookkeeping; [`crate::ingest`] does the Kafka and actor calls it asks for.
//!
//! Why lanes: one consumer queue serves the partitions in runs (a fetch response may hold one
//! partition's records only: tansu fills a response from the first partition it lists, and a
//! Kafka broker up to `max.partition.fetch.bytes` of each), so a poll batch mostly holds one
//! partition. Handing each batch over and waiting for it before the next poll applied one
//! partition at a time. Here each partition has its own lane: a batch of it is applied while
//! the consumer goes on polling, and every partition with messages waiting has its batch in
//! flight at once, on its own arbiter.
//!
//! Invariants:
//! - A lane has at most one batch in flight: a partition's messages reach its actor in offset
//!   order, one batch after the other. A batch is at most `max_messages` records or
//!   `max_bytes` (the record that crosses it included).
//! - A lane holds at most [`LANE_BATCHES`] batches' worth of records waiting, and at most
//!   `max_bytes` of them; when it is full the partition is paused in the consumer, which drops
//!   what it fetched ahead of it, so the records behind that partition's run in the queue
//!   (other partitions') come meanwhile. It is resumed once less than one batch waits, from
//!   the record after the last one received (librdkafka's application position). A broker
//!   may serve that position from the next record batch on (tansu does, see
//!   [`crate::input_positions`]): each resume is a positioning to check, and the lane tells at
//!   which offsets ([`Resume::from`]).
//! - Within an epoch a lane takes each record once: one below the furthest received of its
//!   topic (read again after the consumer moved back) is passed over ([`Received::Again`]).
//! - A lane belongs to one epoch of its partition ([`crate::node::Node::epoch`]): a message of
//!   another epoch, or an epoch that ended, empties it (what it held is read again from the
//!   stored offsets by whoever owns the partition now); a completion of an older epoch's
//!   batch does not free the new lane.

use crate::partition::RawMessage;
use audience_state::store::Partition;
use std::collections::{BTreeMap, VecDeque};

/// How many batches a lane holds waiting before its partition is paused: enough that a
/// broker's run of one partition (a fetch response, up to 5 MiB from tansu) rarely fills it,
/// since every pause makes the consumer fetch again what it had ahead.
pub const LANE_BATCHES: usize = 8;

/// One partition's lane.
#[derive(Debug, Default)]
struct Lane {
    epoch: u64,
    waiting: VecDeque<RawMessage>,
    waiting_bytes: usize,
    /// The bytes of the batch being applied, when there is one.
    in_flight: Option<usize>,
    /// Paused in the consumer because the lane was full.
    paused: bool,
    /// Each topic's offset after the last record received: where the consumer reads on when
    /// the partition is resumed.
    received_up_to: Vec<(String, i64)>,
}

/// A batch to hand to a partition's actor.
#[derive(Debug)]
pub struct Ready {
    pub partition: Partition,
    pub epoch: u64,
    pub messages: Vec<RawMessage>,
}

/// A partition to resume in the consumer.
#[derive(Debug, PartialEq, Eq)]
pub struct Resume {
    pub partition: Partition,
    /// Where each topic of it reads on (to check, as after any positioning); empty when the
    /// partition's epoch ended (its new assignment positions it).
    pub from: Vec<(String, i64)>,
}

/// What receiving a message asks of the consumer.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Kept; nothing to do.
    Kept,
    /// Kept, and the lane is full: pause the partition.
    Pause(Partition),
    /// Not kept: its partition is not owned under the epoch it came with.
    Dropped,
    /// Not kept: the lane received it (or a later record of its topic) already.
    Again,
}

/// What a message costs a lane: its key and payload.
fn message_bytes(message: &RawMessage) -> usize {
    message.key.as_ref().map_or(0, Vec::len) + message.payload.as_ref().map_or(0, Vec::len)
}

#[derive(Debug)]
pub struct Lanes {
    lanes: BTreeMap<Partition, Lane>,
    max_messages: usize,
    max_bytes: usize,
    /// Partitions whose lanes were emptied while paused (their epoch ended): the consumer must
    /// resume them, since a pause outlives an assignment in librdkafka.
    orphaned_pauses: Vec<Partition>,
}

impl Lanes {
    pub fn new(max_messages: usize, max_bytes: usize) -> Lanes {
        Lanes {
            lanes: BTreeMap::new(),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            orphaned_pauses: Vec::new(),
        }
    }

    /// A message of `partition` received under `epoch` (`None`: not owned when received).
    pub fn receive(
        &mut self,
        partition: Partition,
        epoch: Option<u64>,
        message: RawMessage,
    ) -> Received {
        let Some(epoch) = epoch else {
            return Received::Dropped;
        };
        if self
            .lanes
            .get(&partition)
            .is_some_and(|lane| lane.epoch > epoch)
        {
            return Received::Dropped;
        }
        let lane = self.lanes.entry(partition).or_default();
        if lane.epoch != epoch {
            let old = std::mem::take(lane);
            if old.paused {
                self.orphaned_pauses.push(partition);
            }
            lane.epoch = epoch;
        }
        let next = message.offset + 1;
        match lane
            .received_up_to
            .iter_mut()
            .find(|(topic, _)| *topic == message.topic)
        {
            // Read again (the consumer moved back after a resume or a positioning): the lane
            // has had it already, this epoch.
            Some((_, up_to)) if message.offset < *up_to => return Received::Again,
            Some((_, up_to)) => *up_to = next,
            None => lane.received_up_to.push((message.topic.clone(), next)),
        }
        lane.waiting_bytes = lane.waiting_bytes.saturating_add(message_bytes(&message));
        lane.waiting.push_back(message);
        let full = lane.waiting.len() >= self.max_messages.saturating_mul(LANE_BATCHES)
            || lane.waiting_bytes >= self.max_bytes;
        if full && !lane.paused {
            lane.paused = true;
            Received::Pause(partition)
        } else {
            Received::Kept
        }
    }

    /// The batches to hand over now: one of every lane with messages waiting and none in
    /// flight. Also returns the partitions to resume: paused ones with less than a batch left
    /// waiting, and those paused under an epoch that ended.
    pub fn take_ready(&mut self) -> (Vec<Ready>, Vec<Resume>) {
        let mut orphaned = std::mem::take(&mut self.orphaned_pauses);
        orphaned.sort_unstable();
        orphaned.dedup();
        // A pause of an ended epoch is undone, unless the partition's lane now is full again.
        orphaned.retain(|p| !self.lanes.get(p).is_some_and(|lane| lane.paused));
        let mut resume: Vec<Resume> = orphaned
            .into_iter()
            .map(|partition| Resume {
                partition,
                from: Vec::new(),
            })
            .collect();
        let mut ready = Vec::new();
        for (&partition, lane) in &mut self.lanes {
            if lane.in_flight.is_some() || lane.waiting.is_empty() {
                continue;
            }
            let (mut count, mut bytes) = (0, 0);
            for message in &lane.waiting {
                if count == self.max_messages || bytes >= self.max_bytes {
                    break;
                }
                count += 1;
                bytes += message_bytes(message);
            }
            lane.waiting_bytes -= bytes;
            lane.in_flight = Some(bytes);
            ready.push(Ready {
                partition,
                epoch: lane.epoch,
                messages: lane.waiting.drain(..count).collect(),
            });
            let below_a_batch =
                lane.waiting.len() < self.max_messages && lane.waiting_bytes < self.max_bytes / 2;
            if lane.paused && below_a_batch {
                lane.paused = false;
                resume.push(Resume {
                    partition,
                    from: lane.received_up_to.clone(),
                });
            }
        }
        (ready, resume)
    }

    /// The batch of `partition` handed over under `epoch` is applied (or will never be):
    /// its lane may hand over the next one.
    pub fn finished(&mut self, partition: Partition, epoch: u64) {
        if let Some(lane) = self.lanes.get_mut(&partition) {
            if lane.epoch == epoch {
                lane.in_flight = None;
            }
        }
    }

    /// Keeps the lanes of the partitions owned now under the same epoch (`epoch_now`), and
    /// empties the others. Returns how many waiting messages were dropped.
    pub fn retain_epochs(&mut self, epoch_now: impl Fn(Partition) -> Option<u64>) -> usize {
        let mut dropped = 0;
        let orphaned = &mut self.orphaned_pauses;
        self.lanes.retain(|&partition, lane| {
            let keep = epoch_now(partition) == Some(lane.epoch);
            if !keep {
                dropped += lane.waiting.len();
                if lane.paused {
                    orphaned.push(partition);
                }
            }
            keep
        });
        dropped
    }

    /// Drops every waiting message (the consumer is about to be positioned again at the
    /// stored offsets, which fetches them again) and forgets the batches in flight, which the
    /// caller has awaited. Returns the partitions that were paused, to resume (the new
    /// positioning is checked as such).
    pub fn clear(&mut self) -> Vec<Partition> {
        let mut resume = std::mem::take(&mut self.orphaned_pauses);
        resume.extend(
            std::mem::take(&mut self.lanes)
                .into_iter()
                .filter(|(_, lane)| lane.paused)
                .map(|(partition, _)| partition),
        );
        resume
    }

    /// The bytes of keys and payloads held: waiting and in flight.
    pub fn held_bytes(&self) -> usize {
        self.lanes
            .values()
            .map(|lane| lane.waiting_bytes + lane.in_flight.unwrap_or(0))
            .sum()
    }

    /// How many batches are in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lanes
            .values()
            .filter(|lane| lane.in_flight.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `bytes` payload bytes.
    fn sized(topic: &str, partition: i32, offset: i64, bytes: usize) -> RawMessage {
        RawMessage {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: Some(vec![b'x'; bytes]),
            content_type: None,
            timestamp_ms: None,
        }
    }

    fn message(partition: i32, offset: i64) -> RawMessage {
        sized("events", partition, offset, 10)
    }

    fn offsets(ready: &Ready) -> Vec<i64> {
        ready.messages.iter().map(|m| m.offset).collect()
    }

    /// Two partitions each get a batch in flight at once, and a lane's next batch waits for
    /// its first one, in order.
    #[test]
    fn every_partition_has_its_batch_in_flight_and_one_at_a_time() {
        let mut lanes = Lanes::new(100, 1 << 20);
        for offset in 0..3 {
            assert_eq!(
                lanes.receive(0, Some(1), message(0, offset)),
                Received::Kept
            );
        }
        assert_eq!(lanes.receive(1, Some(2), message(1, 0)), Received::Kept);
        let (ready, resume) = lanes.take_ready();
        assert!(resume.is_empty());
        assert_eq!(ready.len(), 2, "both partitions at once");
        assert_eq!((ready[0].partition, ready[0].epoch), (0, 1));
        assert_eq!(offsets(&ready[0]), vec![0, 1, 2]);
        assert_eq!(lanes.in_flight(), 2);
        assert_eq!(lanes.held_bytes(), 40);

        lanes.receive(0, Some(1), message(0, 3));
        assert!(
            lanes.take_ready().0.is_empty(),
            "partition 0's next batch waits for the one in flight"
        );
        lanes.finished(0, 1);
        let (ready, _) = lanes.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(offsets(&ready[0]), vec![3]);
        assert_eq!(
            lanes.held_bytes(),
            20,
            "partition 1's batch and the new one"
        );
    }

    /// A batch ends at its record count or at its bytes, the record that crosses them
    /// included; what is left waits for the next one.
    #[test]
    fn a_batch_ends_at_its_count_or_its_bytes() {
        let mut by_count = Lanes::new(3, 1 << 20);
        for offset in 0..5 {
            by_count.receive(0, Some(1), message(0, offset));
        }
        let (ready, _) = by_count.take_ready();
        assert_eq!(offsets(&ready[0]), vec![0, 1, 2]);
        by_count.finished(0, 1);
        assert_eq!(offsets(&by_count.take_ready().0[0]), vec![3, 4]);

        let mut by_bytes = Lanes::new(2000, 1000);
        for offset in 0..5 {
            by_bytes.receive(0, Some(1), sized("events", 0, offset, 300));
        }
        let (ready, _) = by_bytes.take_ready();
        assert_eq!(
            offsets(&ready[0]),
            vec![0, 1, 2, 3],
            "the fourth crossed 1,000 bytes"
        );
        assert_eq!(by_bytes.held_bytes(), 1500);

        let mut huge = Lanes::new(2000, 1000);
        huge.receive(0, Some(1), sized("events", 0, 0, 5000));
        huge.receive(0, Some(1), sized("events", 0, 1, 10));
        let (ready, _) = huge.take_ready();
        assert_eq!(
            offsets(&ready[0]),
            vec![0],
            "a record over the budget is a batch alone"
        );
        assert_eq!(
            Lanes::new(0, 0).max_messages,
            1,
            "a batch holds at least one"
        );
    }

    /// A full lane (by records or by bytes) asks once for its partition to be paused, and for
    /// it to be resumed once less than a batch waits, from the record after the last one
    /// received of each topic.
    #[test]
    fn a_full_lane_pauses_its_partition_until_less_than_a_batch_waits() {
        let mut lanes = Lanes::new(2, 1 << 20);
        let full = 2 * LANE_BATCHES as i64;
        lanes.receive(0, Some(1), sized("identities", 0, 40, 10));
        for offset in 0..full - 2 {
            assert_eq!(
                lanes.receive(0, Some(1), message(0, offset)),
                Received::Kept
            );
        }
        assert_eq!(
            lanes.receive(0, Some(1), message(0, full - 2)),
            Received::Pause(0)
        );
        // What librdkafka delivered before the pause took effect is kept, without asking again.
        assert_eq!(
            lanes.receive(0, Some(1), message(0, full - 1)),
            Received::Kept
        );
        let mut resumed = None;
        let mut batches = 0;
        while resumed.is_none() {
            let (ready, resume) = lanes.take_ready();
            assert_eq!(ready.len(), 1);
            batches += 1;
            lanes.finished(0, 1);
            resumed = resume.into_iter().next();
        }
        assert_eq!(
            batches, LANE_BATCHES,
            "resumed when less than a batch was left"
        );
        assert_eq!(
            resumed.unwrap().from,
            vec![("identities".to_string(), 41), ("events".to_string(), full)]
        );

        let mut by_bytes = Lanes::new(1000, 100);
        assert_eq!(
            by_bytes.receive(5, Some(1), sized("events", 5, 0, 60)),
            Received::Kept
        );
        assert_eq!(
            by_bytes.receive(5, Some(1), sized("events", 5, 1, 60)),
            Received::Pause(5)
        );
        assert_eq!(by_bytes.held_bytes(), 120);
        let (ready, resume) = by_bytes.take_ready();
        assert_eq!(offsets(&ready[0]), vec![0, 1]);
        assert_eq!(resume.len(), 1, "nothing left waiting: resumed");
    }

    /// A partition that left (or left and came back) loses what its lane held; a completion
    /// of its old batch does not free the new lane, and a pause of the old epoch is undone.
    #[test]
    fn an_epoch_that_ends_empties_its_lane() {
        let mut lanes = Lanes::new(1, 1 << 20);
        lanes.receive(0, Some(1), message(0, 0));
        let _ = lanes.take_ready();
        for offset in 1..=LANE_BATCHES as i64 {
            lanes.receive(0, Some(1), message(0, offset));
        }
        assert!(lanes.lanes[&0].paused);
        lanes.receive(1, Some(1), message(1, 0));

        // Partition 0 left and came back under epoch 3; partition 1 stayed.
        let dropped = lanes.retain_epochs(|p| if p == 0 { Some(3) } else { Some(1) });
        assert_eq!(dropped, LANE_BATCHES);
        let (ready, resume) = lanes.take_ready();
        assert_eq!(
            resume,
            vec![Resume {
                partition: 0,
                from: vec![]
            }],
            "the old epoch's pause is undone; the new assignment positions it"
        );
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].partition, 1);

        // A message of the new epoch opens a new lane; the old batch's completion is ignored.
        lanes.receive(0, Some(3), message(0, 0));
        let (ready, _) = lanes.take_ready();
        assert_eq!((ready[0].partition, ready[0].epoch), (0, 3));
        lanes.receive(0, Some(3), message(0, 1));
        lanes.finished(0, 1);
        assert!(
            lanes.take_ready().0.is_empty(),
            "epoch 3's batch is in flight"
        );
        lanes.finished(0, 3);
        assert_eq!(lanes.take_ready().0.len(), 1);

        // Late messages of an older epoch, or of no epoch, are dropped.
        assert_eq!(lanes.receive(0, Some(1), message(0, 9)), Received::Dropped);
        assert_eq!(lanes.receive(7, None, message(7, 0)), Received::Dropped);
    }

    /// A record read again (the consumer moved back) is passed over, once per topic; the
    /// lane's resume position stays the furthest record received.
    #[test]
    fn a_record_read_again_is_passed_over() {
        let mut lanes = Lanes::new(100, 1 << 20);
        for offset in 10..13 {
            lanes.receive(0, Some(1), message(0, offset));
        }
        lanes.receive(0, Some(1), sized("identities", 0, 3, 10));
        assert_eq!(lanes.receive(0, Some(1), message(0, 11)), Received::Again);
        assert_eq!(lanes.receive(0, Some(1), message(0, 12)), Received::Again);
        assert_eq!(lanes.receive(0, Some(1), message(0, 13)), Received::Kept);
        assert_eq!(
            lanes.receive(0, Some(1), sized("identities", 0, 3, 10)),
            Received::Again
        );
        let (ready, _) = lanes.take_ready();
        assert_eq!(offsets(&ready[0]), vec![10, 11, 12, 3, 13]);
        // A new epoch reads from its stored offsets: nothing of the old one is "again".
        assert_eq!(lanes.receive(0, Some(2), message(0, 11)), Received::Kept);
    }

    /// A message under a newer epoch than its lane's replaces the lane (the epoch changed
    /// between two looks at the node), and its old pause is undone once.
    #[test]
    fn a_newer_epoch_replaces_the_lane() {
        let mut lanes = Lanes::new(1, 1 << 20);
        for offset in 0..LANE_BATCHES as i64 - 1 {
            lanes.receive(0, Some(1), message(0, offset));
        }
        assert_eq!(
            lanes.receive(0, Some(1), message(0, 99)),
            Received::Pause(0)
        );
        assert_eq!(lanes.receive(0, Some(2), message(0, 5)), Received::Kept);
        let (ready, resume) = lanes.take_ready();
        assert_eq!(offsets(&ready[0]), vec![5]);
        assert_eq!(resume.len(), 1, "resumed once");
        assert!(resume[0].from.is_empty());
    }

    /// A pause of an epoch that ended is undone, unless the partition's new lane is full and
    /// paused itself: then it stays paused until that lane empties.
    #[test]
    fn an_old_pause_is_undone_unless_the_new_lane_is_full() {
        let fill = |lanes: &mut Lanes, epoch: u64| {
            let mut last = Received::Kept;
            for offset in 1..=LANE_BATCHES as i64 {
                last = lanes.receive(0, Some(epoch), message(0, offset));
            }
            last
        };
        let mut lanes = Lanes::new(1, 1 << 20);
        lanes.receive(0, Some(1), message(0, 0));
        let _ = lanes.take_ready();
        assert_eq!(fill(&mut lanes, 1), Received::Pause(0));
        // Partition 0 left and came back as epoch 4; its new lane fills (in flight, paused).
        let _ = lanes.retain_epochs(|_| Some(4));
        lanes.receive(0, Some(4), message(0, 0));
        let _ = lanes.take_ready();
        assert_eq!(fill(&mut lanes, 4), Received::Pause(0));
        let (ready, resume) = lanes.take_ready();
        assert!(
            ready.is_empty() && resume.is_empty(),
            "in flight, full, paused"
        );
        // It leaves again while paused: then comes back as epoch 6 with one message.
        let _ = lanes.retain_epochs(|_| Some(6));
        lanes.receive(0, Some(6), message(0, 0));
        let (ready, resume) = lanes.take_ready();
        assert_eq!((ready.len(), resume.len()), (1, 1));
    }

    #[test]
    fn clear_forgets_everything_and_resumes_the_paused() {
        let mut lanes = Lanes::new(1, 1 << 20);
        for p in 1..=3 {
            lanes.receive(p, Some(1), message(p as i32, 0));
        }
        let _ = lanes.take_ready();
        for p in 1..=2 {
            for offset in 1..=LANE_BATCHES as i64 {
                lanes.receive(p, Some(1), message(p as i32, offset));
            }
        }
        assert_eq!(lanes.clear(), vec![1, 2]);
        assert_eq!(lanes.held_bytes(), 0);
        assert_eq!(lanes.in_flight(), 0);
    }
}
