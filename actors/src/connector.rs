//! Connector actors, first form: one per membership subscription. The subscription's pump reads
//! the durable outbox from the subscriber's cursor and hands each delivered delta to its
//! connector actor, which keeps per audience the adds and drops of the last 24 hours, and
//! reports size and volatility = (adds + drops) / size.

use crate::deltas_tail::{DeltasTopic, StreamError};
use crate::engine::Engine;
use crate::stats::{ChangeWindow, Figures};
use actix::prelude::*;
use audience_state::cursor::CursorText;
use audience_state::model::{AudienceId, Delta};
use audience_state::store::Partition;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A subscriber's position: the last sequence delivered per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<Partition, u64>);

/// Why a cursor is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// Not a cursor (INVALID_ARGUMENT).
    Invalid(String),
    /// A cursor of another deployment (OUT_OF_RANGE): its sequences mean other deltas here.
    Foreign(String),
}

impl std::fmt::Display for CursorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CursorError::Invalid(why) | CursorError::Foreign(why) => f.write_str(why),
        }
    }
}

impl Cursor {
    /// Parses `c=<cluster>,p0=12,p3=7`; empty means from the beginning; `now` means from the
    /// current heads. A cursor naming another cluster than this engine's is refused; one
    /// without a cluster (made before cursors carried it) is taken as this cluster's.
    pub fn parse(text: &str, engine: &Engine) -> Result<Cursor, CursorError> {
        let read = CursorText::parse(text).map_err(CursorError::Invalid)?;
        if read.now {
            let mut c = Cursor::default();
            for p in engine.partitions.lock().iter() {
                let head = engine
                    .store
                    .outbox_head(*p)
                    .map_err(|e| CursorError::Invalid(e.to_string()))?;
                c.0.insert(*p, head);
            }
            return Ok(c);
        }
        if let Some(ours) = engine.cluster_id.read().as_deref() {
            if let Some(cluster) = read.clusters.iter().find(|c| c.as_str() != ours) {
                return Err(CursorError::Foreign(format!(
                    "the cursor is of cluster {cluster} and this engine is of cluster \
                     {ours}: a cursor resumes only in the deployment that gave it"
                )));
            }
        }
        Ok(Cursor(read.positions))
    }

    /// The cursor as subscribers get it, with the cluster it belongs to when known.
    /// Written into one string: every delta a subscriber receives carries its cursor.
    pub fn format(&self, cluster: Option<&str>) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(24 * (self.0.len() + 1));
        if let Some(c) = cluster {
            out.push_str("c=");
            out.push_str(c);
        }
        for (p, s) in &self.0 {
            if !out.is_empty() {
                out.push(',');
            }
            write!(out, "p{p}={s}").expect("writing to a String never fails");
        }
        out
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Delivered(pub Vec<Delta>, pub String);

#[derive(Message)]
#[rtype(result = "ConnectorView")]
pub struct Describe;

#[derive(Debug, Clone, Default)]
pub struct ConnectorView {
    pub id: u64,
    pub subscriber_name: String,
    pub audience_ids: Vec<AudienceId>,
    pub delivered: u64,
    pub cursor: String,
    pub connected_at_ms: i64,
    pub audiences: Vec<(AudienceId, Figures)>,
}

pub struct Connector {
    id: u64,
    engine: Arc<Engine>,
    subscriber_name: String,
    filter: Vec<AudienceId>,
    delivered: u64,
    cursor: String,
    connected_at_ms: i64,
    window: ChangeWindow,
    seen: BTreeSet<AudienceId>,
}

impl Actor for Connector {
    type Context = Context<Self>;
}

impl Handler<Delivered> for Connector {
    type Result = ();
    fn handle(&mut self, msg: Delivered, _: &mut Context<Self>) {
        for d in &msg.0 {
            self.window.record(d);
            self.seen.insert(d.audience_id);
        }
        self.delivered += msg.0.len() as u64;
        metrics::counter!("audience_connector_delivered_total", "connector" => self.id.to_string())
            .increment(msg.0.len() as u64);
        self.cursor = msg.1;
    }
}

impl Handler<Describe> for Connector {
    type Result = MessageResult<Describe>;
    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Self::Result {
        let ids: Vec<AudienceId> = if self.filter.is_empty() {
            self.seen.iter().copied().collect()
        } else {
            self.filter.clone()
        };
        let sizes = self.engine.figures(&ids).unwrap_or_default();
        let now = self.engine.clock.now();
        let audiences = sizes
            .into_iter()
            .map(|(id, engine_figures)| {
                let (adds, drops) = self.window.adds_drops(id, now);
                (id, Figures::new(engine_figures.size, adds, drops))
            })
            .collect();
        MessageResult(ConnectorView {
            id: self.id,
            subscriber_name: self.subscriber_name.clone(),
            audience_ids: self.filter.clone(),
            delivered: self.delivered,
            cursor: self.cursor.clone(),
            connected_at_ms: self.connected_at_ms,
            audiences,
        })
    }
}

/// The live connectors of a node.
#[derive(Default)]
pub struct Connectors {
    next_id: Mutex<u64>,
    live: Mutex<BTreeMap<u64, Addr<Connector>>>,
    /// In a cluster, subscriptions read the deltas topic (every partition, from any node);
    /// alone, the node's own outbox.
    deltas_topic: Option<DeltasTopic>,
}

/// One item of a subscription stream.
pub struct Outgoing {
    pub partition: Partition,
    pub sequence: u64,
    pub delta: Delta,
    pub cursor: String,
}

impl Connectors {
    /// Connectors whose subscriptions read `topic` (a node of a cluster).
    pub fn over_deltas_topic(topic: DeltasTopic) -> Connectors {
        Connectors {
            deltas_topic: Some(topic),
            ..Connectors::default()
        }
    }

    /// Where a subscription starts: `cursor` parsed, and whether it is `now`. Over the deltas
    /// topic, `now` is the topic's ends (found when the subscription starts); over the
    /// outbox, this node's heads.
    pub fn start(&self, cursor: &str, engine: &Engine) -> Result<(Cursor, bool), CursorError> {
        if self.deltas_topic.is_some() && cursor.trim() == "now" {
            return Ok((Cursor::default(), true));
        }
        Cursor::parse(cursor, engine).map(|c| (c, false))
    }

    pub async fn describe(&self) -> Vec<ConnectorView> {
        let addrs: Vec<_> = self.live.lock().values().cloned().collect();
        let mut out = Vec::new();
        for a in addrs {
            if let Ok(v) = a.send(Describe).await {
                out.push(v);
            }
        }
        out
    }

    /// Starts a subscription: a connector actor and the pump that feeds `tx` from `start`
    /// (see [`Connectors::start`]).
    pub fn subscribe(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        subscriber_name: String,
        filter: Vec<AudienceId>,
        start: (Cursor, bool),
        arbiter: &ArbiterHandle,
        tx: mpsc::Sender<Result<Outgoing, StreamError>>,
    ) {
        let (cursor, now) = start;
        let cluster = engine.cluster_id.read().clone();
        let id = {
            let mut n = self.next_id.lock();
            *n += 1;
            *n
        };
        let connector = Connector {
            id,
            engine: engine.clone(),
            subscriber_name,
            filter: filter.clone(),
            delivered: 0,
            cursor: cursor.format(cluster.as_deref()),
            connected_at_ms: engine.clock.now(),
            window: ChangeWindow::default(),
            seen: BTreeSet::new(),
        };
        let connectors = self.clone();
        // The pump runs on the caller's runtime; the actor on an arbiter of the actix system.
        let addr = Connector::start_in_arbiter(arbiter, move |_| connector);
        self.live.lock().insert(id, addr.clone());
        let filter: HashSet<AudienceId> = filter.into_iter().collect();
        if let Some(topic) = self.deltas_topic.clone() {
            tokio::task::spawn_blocking(move || {
                let result =
                    pump_topic(&topic, &filter, cursor, now, cluster.as_deref(), &tx, &addr);
                if let Err(e) = result {
                    let _ = tx.blocking_send(Err(e));
                }
                connectors.live.lock().remove(&id);
            });
            return;
        }
        tokio::spawn(async move {
            let result = pump(engine, filter, cursor, cluster.as_deref(), &tx, &addr).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
            connectors.live.lock().remove(&id);
        });
    }
}

/// A subscription fed from the deltas topic (blocking).
fn pump_topic(
    topic: &DeltasTopic,
    filter: &HashSet<AudienceId>,
    cursor: Cursor,
    now: bool,
    cluster: Option<&str>,
    tx: &mpsc::Sender<Result<Outgoing, StreamError>>,
    connector: &Addr<Connector>,
) -> Result<(), StreamError> {
    crate::deltas_tail::pump(
        topic,
        cursor.0,
        now,
        || tx.is_closed(),
        |partition, sequence, delta, positions| {
            if !filter.is_empty() && !filter.contains(&delta.audience_id) {
                return true;
            }
            let cursor = Cursor(positions.clone()).format(cluster);
            let out = Outgoing {
                partition,
                sequence,
                delta: delta.clone(),
                cursor: cursor.clone(),
            };
            if tx.blocking_send(Ok(out)).is_err() {
                return false;
            }
            connector.do_send(Delivered(vec![delta], cursor));
            true
        },
    )
}

async fn pump(
    engine: Arc<Engine>,
    filter: HashSet<AudienceId>,
    mut cursor: Cursor,
    cluster: Option<&str>,
    tx: &mpsc::Sender<Result<Outgoing, StreamError>>,
    connector: &Addr<Connector>,
) -> Result<(), StreamError> {
    let mut wake = engine.outbox_written.subscribe();
    loop {
        let partitions: Vec<Partition> = engine.partitions.lock().iter().copied().collect();
        let mut progressed = false;
        for p in partitions {
            let explicit = cursor.0.get(&p).copied();
            let after = explicit.unwrap_or(0);
            let chunk = engine
                .store
                .read_readable_outbox(p, after, 500)
                .map_err(|e| e.to_string())?;
            if chunk.is_empty() {
                let head = engine.store.outbox_head(p).map_err(|e| e.to_string())?;
                if after > head {
                    return Err(StreamError::OutOfRange(format!(
                        "cursor p{p}={after} is ahead of the outbox (head {head}): it belongs to another engine's data"
                    )));
                }
            }
            if let Some(&(first, _)) = chunk.first() {
                // A position the subscriber named must be followed by the very next delta;
                // with no position for a partition, it starts at the oldest retained.
                if explicit.is_some() && first > after + 1 {
                    return Err(StreamError::OutOfRange(format!(
                        "cursor p{p}={after} is older than the retained outbox (oldest {first})"
                    )));
                }
            }
            if !chunk.is_empty() {
                // Nothing leaves before it is durable.
                engine.make_durable().await.map_err(|e| e.to_string())?;
            }
            let mut delivered = Vec::new();
            for (seq, delta) in chunk {
                progressed = true;
                cursor.0.insert(p, seq);
                if !filter.is_empty() && !filter.contains(&delta.audience_id) {
                    continue;
                }
                let out = Outgoing {
                    partition: p,
                    sequence: seq,
                    delta: delta.clone(),
                    cursor: cursor.format(cluster),
                };
                if tx.send(Ok(out)).await.is_err() {
                    return Ok(());
                }
                delivered.push(delta);
            }
            if !delivered.is_empty() {
                connector.do_send(Delivered(delivered, cursor.format(cluster)));
            }
        }
        if tx.is_closed() {
            return Ok(());
        }
        if !progressed {
            tokio::select! {
                _ = wake.changed() => {}
                _ = tx.closed() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_prints_its_cluster_then_each_partitions_position() {
        let cursor = Cursor([(0, 17), (3, 4)].into());
        assert_eq!(cursor.format(Some("k1")), "c=k1,p0=17,p3=4");
        assert_eq!(cursor.format(None), "p0=17,p3=4");
        assert_eq!(Cursor::default().format(Some("k1")), "c=k1");
        assert_eq!(Cursor::default().format(None), "");
    }
}
