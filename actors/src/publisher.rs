//! Publishers read the durable outboxes and write them to Kafka: membership deltas to the
//! deltas topic, dead letters to the dead-letter topic. At least once: the published position
//! is stored only after the broker acknowledged, so a crash republishes, never skips. Each
//! record carries a stable id for receivers to drop duplicates.
//!
//! Each (sink, partition) is a lane, and every lane keeps the same discipline:
//! - its position advances over each record the broker acknowledged, in sequence order; a
//!   record acknowledged after one that failed is remembered, so a retry sends only what was
//!   not acknowledged, never a record twice (within a process; a crash may repeat a page);
//! - a record the broker refuses for a permanent reason (too large, invalid) never holds the
//!   ones behind it: it is sent once more on its own, a dead letter cut to its prefix
//!   ([`Outgoing::retry`]; a broker refuses a whole produce batch for its largest record, so a
//!   small record is retried as it is), then counted in
//!   `audience_{dead_letters,deltas}_unpublishable_total{reason}` and passed over (a delta
//!   passed over still reaches subscribers and connections, which read the outbox);
//! - a transient error backs the lane off, exponentially from 250 ms to 30 s, while the other
//!   lanes go on;
//! - dead letters are deleted in the write that moves their position past them, and at most
//!   `dead_letter_max_kept` unpublished ones are kept per partition (the oldest are dropped
//!   and counted past it).

use crate::engine::Engine;
use audience_state::model::DeltaKind;
use audience_state::store::{DeadLetter, Partition};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const DELTAS_SINK: &str = "kafka-deltas";
pub const DEAD_LETTER_SINK: &str = "kafka-dead-letters";

/// Records read from an outbox per pass of a lane.
const PAGE: usize = 500;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A delta as a record of the deltas topic. Its fields are in the alphabetical order the
/// topic's records always had (they were written from a `serde_json` map), serialized
/// straight to bytes: no JSON tree per delta.
#[derive(serde::Serialize)]
struct DeltaRecord<'a> {
    audience_id: u64,
    delta_id: &'a str,
    event_time_ms: i64,
    kind: &'static str,
    mpid: i64,
    partition: Partition,
    processing_time_ms: i64,
    sequence: u64,
    version: u64,
}

/// The JSON form of a delta on the deltas topic.
pub fn delta_json(partition: Partition, seq: u64, d: &audience_state::model::Delta) -> String {
    let delta_id = d.delta_id();
    let record = DeltaRecord {
        audience_id: d.audience_id,
        delta_id: &delta_id,
        event_time_ms: d.event_time_ms,
        kind: match d.kind {
            DeltaKind::Added => "added",
            DeltaKind::Dropped => "dropped",
        },
        mpid: d.mpid,
        partition,
        processing_time_ms: d.processing_time_ms,
        sequence: seq,
        version: d.version,
    };
    // Integers and a string of digits and colons: serializing cannot fail.
    serde_json::to_string(&record).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sink {
    Deltas,
    DeadLetters,
}

impl Sink {
    /// The name its published positions are stored under.
    fn name(self) -> &'static str {
        match self {
            Sink::Deltas => DELTAS_SINK,
            Sink::DeadLetters => DEAD_LETTER_SINK,
        }
    }
}

/// What the publisher remembers of one (sink, partition) between passes.
#[derive(Debug, Default)]
struct Lane {
    /// Sequences acknowledged (or passed over) beyond the stored position.
    done: BTreeSet<u64>,
    /// No attempt before this instant, after a transient error.
    retry_at: Option<Instant>,
    backoff: Option<Duration>,
}

impl Lane {
    fn failed(&mut self, now: Instant) -> Duration {
        let backoff = self
            .backoff
            .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
        self.backoff = Some(backoff);
        self.retry_at = Some(now + backoff);
        backoff
    }

    fn succeeded(&mut self) {
        self.backoff = None;
        self.retry_at = None;
    }
}

/// One record as it goes to Kafka.
#[derive(Clone)]
struct Outgoing {
    seq: u64,
    /// The topic's partition, when it is chosen rather than hashed from the key.
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    /// The letter it was made of, to cut down when refused for good.
    letter: Option<DeadLetter>,
}

impl Outgoing {
    /// A delta of `partition`: on the topic's partition of the same number when
    /// `by_partition` (every partition's deltas in one place, in order), else by its key.
    fn delta(
        partition: Partition,
        seq: u64,
        d: &audience_state::model::Delta,
        by_partition: bool,
    ) -> Outgoing {
        Outgoing {
            seq,
            partition: by_partition.then_some(partition as i32),
            key: Some(d.mpid.to_string().into_bytes()),
            payload: delta_json(partition, seq, d).into_bytes(),
            headers: vec![("delta-id", d.delta_id().into_bytes())],
            letter: None,
        }
    }

    /// A dead letter: the message (or its prefix) as payload, where it came from and why in
    /// the headers.
    fn letter(seq: u64, letter: DeadLetter) -> Outgoing {
        let headers = vec![
            ("dlq-topic", letter.topic.clone().into_bytes()),
            ("dlq-partition", letter.partition.to_string().into_bytes()),
            ("dlq-offset", letter.offset.to_string().into_bytes()),
            ("dlq-reason", letter.reason.clone().into_bytes()),
            ("dlq-reason-code", letter.reason_code.clone().into_bytes()),
            (
                "dlq-original-size",
                letter.original_size.to_string().into_bytes(),
            ),
            ("dlq-truncated", letter.truncated.to_string().into_bytes()),
        ];
        Outgoing {
            seq,
            partition: None,
            key: letter.key.clone(),
            payload: letter.payload.clone(),
            headers,
            letter: Some(letter),
        }
    }

    /// What is sent once more after a permanent refusal: a dead letter cut to
    /// `prefix_bytes` of its message when it holds more, any other record as it is.
    fn retry(&self, prefix_bytes: usize) -> Outgoing {
        match &self.letter {
            Some(letter) => Outgoing::letter(self.seq, letter.cut_to(prefix_bytes)),
            None => self.clone(),
        }
    }

    /// A dead letter that carries a prefix of its message.
    fn truncated(&self) -> bool {
        self.letter.as_ref().is_some_and(|l| l.truncated)
    }

    async fn send(&self, producer: &FutureProducer, topic: &str) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(&self.payload)
            .headers(headers);
        if let Some(key) = &self.key {
            record = record.key(key);
        }
        if let Some(partition) = self.partition {
            record = record.partition(partition);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// Why the broker refuses a record for good, as a metrics label; `None` for errors a retry
/// may get past (broker down, timeouts, leadership moving).
pub fn permanent_refusal(error: &KafkaError) -> Option<&'static str> {
    let KafkaError::MessageProduction(code) = error else {
        return None;
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => {
            Some("too_large")
        }
        RDKafkaErrorCode::InvalidMessage
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::InvalidRecord
        | RDKafkaErrorCode::InvalidTimestamp => Some("invalid"),
        _ => None,
    }
}

/// Publishes until `shutdown`, then drains what is left once. With `deltas_by_partition`,
/// partition p's deltas go to the deltas topic's partition p (what subscriptions of a cluster
/// read, see [`crate::deltas_tail`]); without, by their key (MPID).
pub async fn run(
    engine: Arc<Engine>,
    producer: FutureProducer,
    deltas_by_partition: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wake = engine.outbox_written.subscribe();
    let mut last_prune = Instant::now();
    let mut lanes: HashMap<(Sink, Partition), Lane> = HashMap::new();
    loop {
        if last_prune.elapsed() > Duration::from_secs(60) {
            prune(&engine);
            last_prune = Instant::now();
        }
        let stopping = *shutdown.borrow();
        let partitions: Vec<Partition> = engine.partitions.lock().iter().copied().collect();
        lanes.retain(|(_, p), _| partitions.contains(p));
        let mut progressed = false;
        let mut next_retry: Option<Instant> = None;
        for &p in &partitions {
            for sink in [Sink::Deltas, Sink::DeadLetters] {
                let lane = lanes.entry((sink, p)).or_default();
                let now = Instant::now();
                if let Some(at) = lane.retry_at.filter(|&at| at > now && !stopping) {
                    next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                    continue;
                }
                match publish_lane(&engine, &producer, sink, p, lane, deltas_by_partition).await {
                    Ok(n) => {
                        progressed |= n > 0;
                        lane.succeeded();
                    }
                    Err(e) => {
                        let backoff = lane.failed(Instant::now());
                        tracing::warn!(
                            partition = p, sink = sink.name(), error = %e,
                            retry_in_ms = backoff.as_millis() as u64,
                            "publishing failed; what was acknowledged is kept, the rest retried"
                        );
                        metrics::counter!("audience_publish_errors_total", "sink" => sink.name())
                            .increment(1);
                        let at = Instant::now() + backoff;
                        next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                    }
                }
            }
        }
        if stopping {
            break;
        }
        if progressed {
            continue;
        }
        let idle = next_retry.map_or(Duration::from_secs(1), |at| {
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1))
        });
        tokio::select! {
            _ = wake.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

/// Drops deltas older than the outbox retention that the deltas topic already has, and dead
/// letters already published (those of stores from before letters were deleted on publish).
fn prune(engine: &Engine) {
    let cutoff = engine.clock.now() - engine.settings.outbox_retention_ms;
    let partitions: Vec<Partition> = engine.partitions.lock().iter().copied().collect();
    for p in partitions {
        let published = engine.store.published(DELTAS_SINK, p).unwrap_or(0);
        // Connections (even faulted ones) keep what they still owe.
        let owed = match engine.store.lowest_connection_cursor(p) {
            Ok(lowest) => lowest.unwrap_or(u64::MAX),
            Err(e) => {
                // Not knowing what connections owe, prune nothing.
                tracing::warn!(partition = p, error = %e, "connection cursors unreadable; outbox not pruned");
                continue;
            }
        };
        match engine
            .store
            .prune_outbox_before(p, cutoff, published.min(owed))
        {
            Ok(Some(seq)) => tracing::info!(partition = p, through = seq, "outbox pruned"),
            Ok(None) => {}
            Err(e) => tracing::warn!(partition = p, error = %e, "outbox pruning failed"),
        }
        // Only stores from before letters were deleted on publish hold published ones.
        let published = engine.store.published(DEAD_LETTER_SINK, p).unwrap_or(0);
        let oldest = engine.store.read_dead_letters(p, 0, 1);
        if matches!(oldest.as_deref(), Ok([(seq, _)]) if *seq <= published) {
            let mut b = engine.store.partition_batch();
            b.delete_dead_letters_through(p, published);
            if let Err(e) = engine.store.commit_partition(b, p) {
                tracing::warn!(partition = p, error = %e, "dead-letter pruning failed");
            }
        }
    }
}

/// Keeps at most `dead_letter_max_kept` unpublished letters: moves the position past the
/// oldest beyond it (deleting them) and counts them. Returns the position.
fn bound_dead_letters(engine: &Engine, p: Partition, position: u64) -> anyhow::Result<u64> {
    let head = engine.store.deadletter_head(p)?;
    let max_kept = engine.settings.dead_letter_max_kept;
    if head.saturating_sub(position) <= max_kept {
        return Ok(position);
    }
    let through = head - max_kept;
    let dropped = through - position;
    let mut b = engine.store.partition_batch();
    b.set_published(DEAD_LETTER_SINK, p, through);
    b.delete_dead_letters_through(p, through);
    engine.store.commit_partition(b, p)?;
    tracing::warn!(
        partition = p,
        dropped,
        kept = max_kept,
        "dead letters unpublished past the bound on what is kept; the oldest were dropped"
    );
    metrics::counter!("audience_dead_letters_dropped_total").increment(dropped);
    engine
        .counters
        .dead_letters_dropped
        .fetch_add(dropped, Ordering::Relaxed);
    Ok(through)
}

/// One pass over a lane: sends the page after its position but what was already
/// acknowledged, and moves the position over the done prefix. Returns the records done; an
/// error when one failed transiently (the position still moved over what precedes it).
async fn publish_lane(
    engine: &Engine,
    producer: &FutureProducer,
    sink: Sink,
    p: Partition,
    lane: &mut Lane,
    deltas_by_partition: bool,
) -> anyhow::Result<usize> {
    let settings = &engine.settings;
    let mut position = engine.store.published(sink.name(), p)?;
    let (topic, records): (&str, Vec<Outgoing>) = match sink {
        Sink::Deltas => (
            &settings.deltas_topic,
            engine
                .store
                .read_readable_outbox(p, position, PAGE)?
                .iter()
                .map(|(seq, d)| Outgoing::delta(p, *seq, d, deltas_by_partition))
                .collect(),
        ),
        Sink::DeadLetters => {
            position = bound_dead_letters(engine, p, position)?;
            (
                &settings.dead_letter_topic,
                engine
                    .store
                    .read_dead_letters(p, position, PAGE)?
                    .into_iter()
                    .map(|(seq, letter)| Outgoing::letter(seq, letter))
                    .collect(),
            )
        }
    };
    if sink == Sink::Deltas && !records.is_empty() {
        // Nothing leaves before it is durable.
        engine.make_durable().await?;
    }
    lane.done.retain(|&seq| seq > position);
    let pending: Vec<&Outgoing> = records
        .iter()
        .filter(|r| !lane.done.contains(&r.seq))
        .collect();
    let results = futures::future::join_all(pending.iter().map(|r| r.send(producer, topic))).await;
    let mut transient = None;
    for (record, result) in pending.into_iter().zip(results) {
        let (truncated, outcome) = match result {
            Err(error) if permanent_refusal(&error).is_some() => {
                // Sent once more, alone, cut down if a letter.
                let retry = record.retry(settings.dead_letter_limits.prefix_bytes);
                let retried = retry.send(producer, topic).await;
                if retried.is_ok() {
                    tracing::warn!(
                        partition = p, sink = sink.name(), seq = record.seq, error = %error,
                        "record refused by the topic; sent again on its own"
                    );
                }
                (retry.truncated(), retried.map_err(|e| (e, Some(error))))
            }
            Err(error) => (false, Err((error, None))),
            Ok(()) => (record.truncated(), Ok(())),
        };
        if outcome.is_ok() && truncated {
            engine
                .counters
                .dead_letters_truncated
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("audience_dead_letters_truncated_total").increment(1);
        }
        match outcome {
            Ok(()) => {
                lane.done.insert(record.seq);
                match sink {
                    Sink::Deltas => {
                        metrics::counter!("audience_deltas_published_total").increment(1)
                    }
                    Sink::DeadLetters => {
                        engine
                            .counters
                            .dead_letters_published
                            .fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("audience_dead_letters_published_total").increment(1)
                    }
                }
            }
            Err((error, first)) => match permanent_refusal(&error) {
                Some(reason) => {
                    // Refused for good: counted and passed over, never holding the rest.
                    lane.done.insert(record.seq);
                    let first = first.map(|e| e.to_string()).unwrap_or_default();
                    match sink {
                        Sink::Deltas => {
                            engine
                                .counters
                                .deltas_unpublishable
                                .fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("audience_deltas_unpublishable_total", "reason" => reason)
                                .increment(1);
                        }
                        Sink::DeadLetters => {
                            engine
                                .counters
                                .dead_letters_unpublishable
                                .fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("audience_dead_letters_unpublishable_total", "reason" => reason)
                                .increment(1);
                        }
                    }
                    tracing::error!(
                        partition = p, sink = sink.name(), seq = record.seq, error = %error,
                        first_error = %first, "record refused by the topic for good; passed over"
                    );
                }
                None => {
                    transient.get_or_insert(error);
                }
            },
        }
    }
    // The position moves over the done prefix, in sequence order.
    let mut done = 0;
    let mut moved_to = position;
    for record in &records {
        if !lane.done.remove(&record.seq) {
            break;
        }
        moved_to = record.seq;
        done += 1;
    }
    if moved_to > position {
        let mut b = engine.store.partition_batch();
        b.set_published(sink.name(), p, moved_to);
        if sink == Sink::DeadLetters {
            b.delete_dead_letters_through(p, moved_to);
        }
        engine.store.commit_partition(b, p)?;
    }
    match transient {
        Some(error) => Err(anyhow::anyhow!("{topic}: {error}")),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audience_state::store::DeadLetterLimits;

    /// A delta's record is byte for byte what the topic always carried (a `serde_json` map,
    /// its keys in alphabetical order): consumers that compare bytes see no change.
    #[test]
    fn a_delta_record_is_the_json_it_always_was() {
        for (kind, name) in [(DeltaKind::Added, "added"), (DeltaKind::Dropped, "dropped")] {
            let d = audience_state::model::Delta {
                audience_id: u64::MAX,
                mpid: i64::MIN,
                kind,
                event_time_ms: -5,
                processing_time_ms: 1_700_000_000_005,
                version: 3,
            };
            let before = serde_json::json!({
                "delta_id": d.delta_id(),
                "audience_id": d.audience_id,
                "mpid": d.mpid,
                "kind": name,
                "event_time_ms": d.event_time_ms,
                "processing_time_ms": d.processing_time_ms,
                "version": d.version,
                "partition": 11,
                "sequence": 99,
            });
            assert_eq!(delta_json(11, 99, &d), before.to_string());
        }
    }

    fn letter(payload: &[u8]) -> Outgoing {
        Outgoing::letter(
            7,
            DeadLetter::new(
                "events".into(),
                1,
                9,
                "oversized".into(),
                "too big".into(),
                None,
                payload,
                0,
                DeadLetterLimits::default(),
            ),
        )
    }

    #[test]
    fn a_refused_letter_is_cut_to_its_prefix_and_a_short_one_sent_as_it_is() {
        let long = letter(&[1; 100_000]).retry(65_536);
        assert_eq!(long.payload.len(), 65_536);
        let short = letter(&[1; 100]).retry(65_536);
        assert_eq!(short.payload.len(), 100);
        assert_eq!(short.letter.as_ref().map(|l| l.truncated), Some(false));
        let headers = long.headers;
        let header = |k: &str| {
            headers
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(header("dlq-original-size").as_deref(), Some("100000"));
        assert_eq!(header("dlq-truncated").as_deref(), Some("true"));
        assert_eq!(header("dlq-offset").as_deref(), Some("9"));
    }

    #[test]
    fn only_refusals_for_good_are_passed_over() {
        let refused = |code| permanent_refusal(&KafkaError::MessageProduction(code));
        assert_eq!(
            refused(RDKafkaErrorCode::MessageSizeTooLarge),
            Some("too_large")
        );
        assert_eq!(refused(RDKafkaErrorCode::InvalidRecord), Some("invalid"));
        assert_eq!(refused(RDKafkaErrorCode::MessageTimedOut), None);
        assert_eq!(refused(RDKafkaErrorCode::AllBrokersDown), None);
        assert_eq!(refused(RDKafkaErrorCode::QueueFull), None);
        assert_eq!(
            permanent_refusal(&KafkaError::Canceled),
            None,
            "errors outside production are retried"
        );
    }

    #[test]
    fn unpublished_letters_past_the_bound_drop_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(audience_state::store::Store::open(dir.path(), false).unwrap());
        let settings = crate::engine::EngineSettings {
            dead_letter_max_kept: 3,
            ..Default::default()
        };
        let clock = Arc::new(crate::clock::Clock::new(true));
        let engine = Engine::new(store.clone(), clock, settings).unwrap();
        let mut b = store.batch();
        for seq in 1..=5 {
            b.put_dead_letter(0, seq, &letter(b"[]").letter.unwrap());
        }
        store.commit(b).unwrap();
        assert_eq!(bound_dead_letters(&engine, 0, 0).unwrap(), 2);
        assert_eq!(store.published(DEAD_LETTER_SINK, 0).unwrap(), 2);
        let kept: Vec<u64> = store
            .read_dead_letters(0, 0, 10)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(kept, vec![3, 4, 5]);
        assert_eq!(
            engine.counters.dead_letters_dropped.load(Ordering::Relaxed),
            2
        );
        // Within the bound, nothing moves.
        assert_eq!(bound_dead_letters(&engine, 0, 2).unwrap(), 2);
        assert_eq!(store.count_dead_letters(0).unwrap(), 3);
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut lane = Lane::default();
        let now = Instant::now();
        assert_eq!(lane.failed(now), FIRST_BACKOFF);
        assert_eq!(lane.failed(now), FIRST_BACKOFF * 2);
        for _ in 0..20 {
            lane.failed(now);
        }
        assert_eq!(lane.failed(now), MAX_BACKOFF);
        lane.succeeded();
        assert_eq!(lane.failed(now), FIRST_BACKOFF);
    }
}
