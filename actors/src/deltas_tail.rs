//! Subscriptions of a cluster read the deltas topic (cluster step 3, outputs across nodes).
//!
//! A node owns only some partitions, but every owner publishes its outbox to the deltas topic:
//! the deltas of partition `p` to the topic's partition `p`, in sequence order, at least once
//! (a crash or a move republishes from the last acknowledged position). Reading the topic
//! therefore gives every partition's deltas from any node, in order per partition, and the
//! same cursor (partition to last sequence delivered) resumes on any node, also after the node
//! a subscriber was on died.
//!
//! Invariants:
//! - a sequence reaches a subscription once: the topic's repeats (a republish) are passed
//!   over by sequence, the record's own `partition` and `sequence` being authoritative;
//! - where to start for a cursor position `s` is found by a binary search over offsets for a
//!   record of sequence `s + 1` following one of `s` or less: a partition's records are runs
//!   of consecutive sequences, each run starting at or before the end of the one before it
//!   (a republish never skips), so any such boundary leads to every later sequence;
//! - a position older than what the topic retains is refused (OUT_OF_RANGE upstream), never
//!   skipped silently.

use audience_state::model::{AudienceId, Delta, DeltaKind};
use audience_state::store::Partition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The deltas topic, as subscriptions read it.
#[derive(Clone)]
pub struct DeltasTopic {
    /// Bootstrap servers and the deployment's Kafka properties.
    pub kafka: ClientConfig,
    pub topic: String,
}

/// A delta record of the topic (see [`crate::publisher::delta_json`]).
pub fn parse_record(payload: &[u8]) -> Result<(Partition, u64, Delta), String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not a delta record: {e}"))?;
    let number = |field: &str| {
        v[field]
            .as_i64()
            .ok_or_else(|| format!("delta record without {field}"))
    };
    let kind = match v["kind"].as_str() {
        Some("added") => DeltaKind::Added,
        Some("dropped") => DeltaKind::Dropped,
        other => return Err(format!("delta record of kind {other:?}")),
    };
    let partition = Partition::try_from(number("partition")?)
        .map_err(|_| "delta record with a negative partition".to_string())?;
    let delta = Delta {
        audience_id: number("audience_id")? as AudienceId,
        mpid: number("mpid")?,
        kind,
        event_time_ms: number("event_time_ms")?,
        processing_time_ms: number("processing_time_ms")?,
        version: number("version")? as u64,
    };
    Ok((partition, number("sequence")? as u64, delta))
}

/// Why a subscription's stream ended, as its client is told: the cursor names what is gone
/// (OUT_OF_RANGE: start again from a newer cursor), the topic or store could not be read
/// (UNAVAILABLE: resume later with the same cursor), or deltas are missing (DATA_LOSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    OutOfRange(String),
    Unavailable(String),
    DataLoss(String),
}

/// A failure to read is transient unless it says otherwise.
impl From<String> for StreamError {
    fn from(why: String) -> Self {
        StreamError::Unavailable(why)
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::OutOfRange(why)
            | StreamError::Unavailable(why)
            | StreamError::DataLoss(why) => f.write_str(why),
        }
    }
}

/// How many times a partition of a subscription reads again from further back, on seeing its
/// sequences jump, before the stream ends with DATA_LOSS.
const MAX_REREADS: u32 = 20;

/// How long a probe waits for the record at an offset.
const PROBE_WAIT: Duration = Duration::from_secs(10);

impl DeltasTopic {
    pub fn consumer(&self) -> Result<BaseConsumer, String> {
        let mut config = self.kafka.clone();
        // No group: positions are the cursor's, never committed.
        // A position retention removed is an error, never a silent jump to the end.
        config
            .set("group.id", "audience-subscription")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            // A subscriber waits for deltas, not for fuller fetches: librdkafka's default
            // (500 ms) put a quarter of a second between a partition's deltas here.
            .set("fetch.wait.max.ms", "20");
        config
            .create()
            .map_err(|e| format!("deltas topic consumer: {e}"))
    }

    /// The topic's partition count.
    pub fn partitions(&self, consumer: &BaseConsumer) -> Result<i32, String> {
        crate::catalog_topic::partition_count(consumer.client(), &self.topic)
            .map_err(|e| format!("deltas topic {}: {e}", self.topic))
    }

    /// The first record of partition `p` at `offset` or after (offsets may be missing;
    /// records that do not parse or belong to another partition, as deltas spread by MPID
    /// before this layout left, are passed over): its offset and sequence; `None` when none
    /// comes.
    fn probe(
        &self,
        consumer: &BaseConsumer,
        p: i32,
        offset: i64,
    ) -> Result<Option<(i64, u64)>, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(offset))
            .map_err(|e| e.to_string())?;
        // Assigning a partition that is assigned already would not move its fetch position:
        // the previous assignment goes first.
        consumer.unassign().map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        // The first message at `offset` or after: offsets may be missing (compaction and
        // transaction markers leave gaps; asked for one exact offset, tansu 0.6 did not
        // answer it in the subscriptions test).
        let deadline = Instant::now() + PROBE_WAIT;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.partition() == p && m.offset() >= offset => {
                    match parse_record(m.payload().unwrap_or_default()) {
                        Ok((of, seq, _)) if of as i32 == p => return Ok(Some((m.offset(), seq))),
                        _ => continue,
                    }
                }
                Some(Err(e)) => return Err(format!("deltas topic partition {p}: {e}")),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Where a subscription resumes partition `p` after sequence `after` (`None`: from the
    /// oldest record retained).
    fn start_offset(
        &self,
        consumer: &BaseConsumer,
        p: i32,
        after: Option<u64>,
    ) -> Result<i64, StreamError> {
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
            .map_err(|e| format!("deltas topic partition {p}: {e}"))?;
        let Some(after) = after else {
            return Ok(low);
        };
        if low >= high {
            if high > 0 {
                return Err(StreamError::OutOfRange(format!(
                    "cursor p{p}={after} is older than the deltas topic retains (it holds \
                     nothing of partition {p} any more)"
                )));
            }
            return Ok(high);
        }
        let newer =
            |offset: i64| -> Result<Option<(i64, u64)>, String> { self.probe(consumer, p, offset) };
        match newer(low)? {
            None => {
                return Err(StreamError::Unavailable(format!(
                    "deltas topic partition {p}: no record could be read at its start ({low})"
                )))
            }
            Some((_, first)) if first > after + 1 => {
                return Err(StreamError::OutOfRange(format!(
                    "cursor p{p}={after} is older than the deltas topic retains (oldest \
                     sequence {first})"
                )))
            }
            Some((at, first)) if first > after => return Ok(at),
            _ => {}
        }
        // Invariant: the record at or after `lo` has a sequence <= after; `hi` is past one
        // of a larger sequence, or the end.
        let (mut lo, mut hi) = (low, high);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match newer(mid)? {
                Some((at, seq)) if at < hi => {
                    if seq > after {
                        hi = at;
                    } else {
                        lo = at.max(mid);
                    }
                }
                // Nothing of this partition between mid and hi: the boundary is below. None
                // read at all is taken the same way: tansu 0.6 serves no record to a fetch
                // that starts inside its last batch. Starting lower is always safe (the pump
                // passes over sequences it has and reads again from further back on a jump).
                Some(_) | None => hi = mid,
            }
        }
        Ok(hi)
    }
}

/// Reads every partition of the deltas topic from `positions` (partition to the last
/// sequence delivered; with `now`, from the topic's ends), handing each new delta to
/// `deliver` with the positions after it, until `deliver` returns false or `stopped` says so.
/// Blocking: it runs on a thread of its own.
pub fn pump(
    topic: &DeltasTopic,
    mut positions: BTreeMap<Partition, u64>,
    now: bool,
    stopped: impl Fn() -> bool,
    mut deliver: impl FnMut(Partition, u64, Delta, &BTreeMap<Partition, u64>) -> bool,
) -> Result<(), StreamError> {
    let probe = topic.consumer()?;
    let partitions = topic.partitions(&probe)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let partition = p as Partition;
        let offset = if now {
            let (_, high) = probe
                .fetch_watermarks(&topic.topic, p, Duration::from_secs(10))
                .map_err(|e| format!("deltas topic partition {p}: {e}"))?;
            if high > 0 {
                // The newest sequence is the position: later repeats of older ones are
                // passed over.
                if let Some((_, seq)) = topic.probe(&probe, p, high - 1)? {
                    positions.insert(partition, seq);
                }
            }
            high
        } else {
            topic.start_offset(&probe, p, positions.get(&partition).copied())?
        };
        tpl.add_partition_offset(&topic.topic, p, Offset::Offset(offset))
            .map_err(|e| e.to_string())?;
    }
    drop(probe);
    let consumer = topic.consumer()?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut rereads: BTreeMap<Partition, u32> = BTreeMap::new();
    while !stopped() {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|e| format!("deltas topic: {e}"))?;
        let (p, seq, delta) = match parse_record(message.payload().unwrap_or_default()) {
            // A record on another partition than its own (spread by MPID, before this layout)
            // is read where it belongs.
            Ok(record) if record.0 as i32 == message.partition() => record,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(
                    partition = message.partition(), offset = message.offset(), error = %e,
                    "deltas topic record passed over"
                );
                continue;
            }
        };
        if positions.get(&p).is_some_and(|&last| seq <= last) {
            continue;
        }
        // A partition's sequences run on the topic without a gap (its owners publish them in
        // order; repeats after a move are passed over above), so a jump means the read skipped
        // records: tansu 0.6 serves a batch only to a fetch from its first offset, and a
        // resumed cursor's position may be inside one. Read again from further back.
        if let Some(&last) = positions.get(&p) {
            if seq > last + 1 {
                let tries = rereads.entry(p).or_insert(0);
                *tries += 1;
                if *tries > MAX_REREADS {
                    return Err(StreamError::DataLoss(format!(
                        "deltas topic partition {p}: its sequence jumps from {last} to {seq} at \
                         offset {}: deltas are missing",
                        message.offset()
                    )));
                }
                let from = crate::catalog_topic::reread_from(message.offset(), 0, *tries + 1);
                tracing::warn!(
                    partition = p,
                    last,
                    seq,
                    from,
                    "subscription skipped deltas; reading them again"
                );
                consumer
                    .seek(
                        &topic.topic,
                        p as i32,
                        Offset::Offset(from),
                        Duration::from_secs(10),
                    )
                    .map_err(|e| format!("deltas topic partition {p}: {e}"))?;
                continue;
            }
        }
        rereads.remove(&p);
        positions.insert(p, seq);
        if !deliver(p, seq, delta, &positions) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_delta_reads_back_as_it_was() {
        let delta = Delta {
            audience_id: 7,
            mpid: -42,
            kind: DeltaKind::Dropped,
            event_time_ms: 1_700_000_000_000,
            processing_time_ms: 1_700_000_000_005,
            version: 3,
        };
        let record = crate::publisher::delta_json(1, 99, &delta);
        assert_eq!(parse_record(record.as_bytes()).unwrap(), (1, 99, delta));
        let e = parse_record(br#"{"kind": "moved"}"#).unwrap_err();
        assert!(e.contains("moved"), "{e}");
        assert!(parse_record(b"[]").is_err());
    }
}
