//! How a chaos run checks itself: the events and dead-letter topics read back whole
//! ([`crate::read_whole_topic`]), the receiver's record of every delta (duplicates, order,
//! latency), the engine's own view of every user, and the lag while the run goes.

use super::workload::{audiences, Model, POISON_HEADER, STEP_EVENT};
use crate::webhook::Hook;
use crate::{profile, status, Channel, Result, TopicRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The model of what the events topic holds.
pub fn model_of(records: &[TopicRecord]) -> Model {
    let mut model = Model::default();
    for r in records {
        model.apply(r.headers.get(POISON_HEADER).map(String::as_str), &r.payload);
    }
    model
}

/// What the receiver recorded, deduplicated by idempotency key.
#[derive(Debug, Default)]
pub struct ReceiverView {
    /// Items received, copies included, and distinct.
    pub items: u64,
    pub distinct: u64,
    /// A (audience, MPID) item whose version is not above the last one received for it.
    pub order_violations: u64,
    /// Per audience (in [`audiences`] order), the MPIDs whose last item is an add.
    pub members: Vec<BTreeSet<i64>>,
    /// Milliseconds from a message's scheduled send to the first copy of the delta it caused.
    pub latencies_ms: Vec<f64>,
}

/// Reads the receiver: `audience_ids` in [`audiences`] order; `sent_at` by event time.
pub fn receiver_view(
    hook: &Hook,
    audience_ids: &[u64],
    sent_at: &HashMap<i64, Instant>,
) -> ReceiverView {
    let accepted = hook.accepted.lock().unwrap();
    let arrived = hook.accepted_at.lock().unwrap();
    let mut view = ReceiverView {
        members: vec![BTreeSet::new(); audience_ids.len()],
        ..ReceiverView::default()
    };
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<(u64, i64), (u64, bool)> = BTreeMap::new();
    for (body, at) in accepted.iter().zip(arrived.iter()) {
        let audience = body["audience"]["id"].as_u64().unwrap_or_default();
        for item in body["items"].as_array().into_iter().flatten() {
            view.items += 1;
            let key = item["idempotency_key"].as_str().unwrap_or_default();
            if !seen.insert(key.to_string()) {
                continue;
            }
            view.distinct += 1;
            let mpid = item["mpid"].as_i64().unwrap_or_default();
            let version = item["version"].as_u64().unwrap_or_default();
            let added = item["action"] == "add";
            match last.get(&(audience, mpid)) {
                Some((v, _)) if *v >= version => view.order_violations += 1,
                _ => {
                    last.insert((audience, mpid), (version, added));
                }
            }
            let event_time = item["event_time_ms"].as_i64().unwrap_or_default();
            if let Some(sent) = sent_at.get(&event_time) {
                let ms = at.saturating_duration_since(*sent).as_secs_f64() * 1000.0;
                view.latencies_ms.push(ms);
            }
        }
    }
    for ((audience, mpid), (_, added)) in last {
        if let Some(i) = audience_ids.iter().position(|a| *a == audience) {
            if added {
                view.members[i].insert(mpid);
            }
        }
    }
    view
}

/// The engine's answer for every user: its members per audience and each user's steps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EngineView {
    pub members: Vec<BTreeSet<i64>>,
    pub steps: BTreeMap<i64, u64>,
    /// (audience, MPID, version) of every membership, for a hash of the whole state.
    pub memberships: BTreeSet<(u64, i64, u64)>,
}

pub async fn engine_view(
    ch: &Channel,
    users: impl Iterator<Item = i64>,
    audience_ids: &[u64],
) -> Result<EngineView> {
    let mut view = EngineView {
        members: vec![BTreeSet::new(); audiences().len()],
        ..EngineView::default()
    };
    for mpid in users {
        let p = match profile(ch, mpid).await {
            Ok(p) => p,
            Err(e)
                if e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::NotFound) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let steps = p
            .events
            .iter()
            .filter(|e| {
                // `custom_event:<name>:<category>`, the name lowercased.
                let mut parts = e.event_key.split(':');
                parts.next() == Some("custom_event")
                    && parts
                        .next()
                        .is_some_and(|name| name.eq_ignore_ascii_case(STEP_EVENT))
            })
            .map(|e| e.count_in_retention)
            .max()
            .unwrap_or(0);
        view.steps.insert(mpid, steps);
        for m in &p.audiences {
            view.memberships.insert((m.audience_id, mpid, m.version));
            if let Some(i) = audience_ids.iter().position(|a| *a == m.audience_id) {
                view.members[i].insert(mpid);
            }
        }
    }
    Ok(view)
}

/// Users whose membership differs between two views, summed over audiences.
pub fn differing(a: &[BTreeSet<i64>], b: &[BTreeSet<i64>]) -> u64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.symmetric_difference(y).count() as u64)
        .sum()
}

/// Messages of the events topic the nodes behind `channels` have consumed (their next
/// offsets, summed over partitions): offsets start at 0, so this is a count.
pub async fn consumed(channels: &[&Channel], events_topic: &str) -> Result<i64> {
    let mut total = 0;
    for ch in channels {
        for p in status(ch).await?.partitions {
            total += p.next_offsets.get(events_topic).copied().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Waits until the nodes have consumed `on_topic` messages; returns how long it took.
pub async fn wait_consumed(
    channels: &[&Channel],
    events_topic: &str,
    on_topic: i64,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let done = consumed(channels, events_topic).await.unwrap_or(0);
        if done >= on_topic {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "consumed {done} of {on_topic} messages within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `q` quantile (0 to 1) of `values`, 0 when empty.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[at]
}

/// A stable 64-bit hash (FNV-1a) of the engine's memberships, to compare whole states.
pub fn membership_hash(memberships: &BTreeSet<(u64, i64, u64)>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (a, m, v) in memberships {
        for byte in a
            .to_le_bytes()
            .iter()
            .chain(m.to_le_bytes().iter())
            .chain(v.to_le_bytes().iter())
        {
            h ^= u64::from(*byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
