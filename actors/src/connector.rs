//! Connector actors, first form: one per membership subscription. The subscription's pump reads
//! the durable outbox from the subscriber's cursor and hands each delivered delta to its
//! connector actor, which keeps per audience the adds and drops of the last 24 hours, and
//! reports size and volatility = (adds + drops) / size.

use crate::engine::Engine;
use crate::stats::{ChangeWindow, Figures};
use actix::prelude::*;
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

impl Cursor {
    /// Parses `p0=12,p3=7`; empty means from the beginning; `now` means from the current heads.
    pub fn parse(text: &str, engine: &Engine) -> Result<Cursor, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Cursor::default());
        }
        if text == "now" {
            let mut c = Cursor::default();
            for p in engine.partitions.lock().iter() {
                let head = engine.store.outbox_head(*p).map_err(|e| e.to_string())?;
                c.0.insert(*p, head);
            }
            return Ok(c);
        }
        let mut c = Cursor::default();
        for part in text.split(',') {
            let (p, seq) = part
                .trim()
                .strip_prefix('p')
                .and_then(|rest| rest.split_once('='))
                .ok_or_else(|| {
                    format!("cursor: \"{part}\" is not of the form p<partition>=<sequence>")
                })?;
            let p: Partition = p
                .parse()
                .map_err(|_| format!("cursor: bad partition \"{p}\""))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| format!("cursor: bad sequence \"{seq}\""))?;
            c.0.insert(p, seq);
        }
        Ok(c)
    }

    pub fn format(&self) -> String {
        self.0
            .iter()
            .map(|(p, s)| format!("p{p}={s}"))
            .collect::<Vec<_>>()
            .join(",")
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
}

/// One item of a subscription stream.
pub struct Outgoing {
    pub partition: Partition,
    pub sequence: u64,
    pub delta: Delta,
    pub cursor: String,
}

impl Connectors {
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

    /// Starts a subscription: a connector actor and the pump that feeds `tx` from `cursor`.
    pub fn subscribe(
        self: &Arc<Self>,
        engine: Arc<Engine>,
        subscriber_name: String,
        filter: Vec<AudienceId>,
        cursor: Cursor,
        arbiter: &ArbiterHandle,
        tx: mpsc::Sender<Result<Outgoing, String>>,
    ) {
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
            cursor: cursor.format(),
            connected_at_ms: engine.clock.now(),
            window: ChangeWindow::default(),
            seen: BTreeSet::new(),
        };
        let connectors = self.clone();
        // The pump runs on the caller's runtime; the actor on an arbiter of the actix system.
        let addr = Connector::start_in_arbiter(arbiter, move |_| connector);
        self.live.lock().insert(id, addr.clone());
        tokio::spawn(async move {
            let result = pump(engine, filter.into_iter().collect(), cursor, &tx, &addr).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
            connectors.live.lock().remove(&id);
        });
    }
}

async fn pump(
    engine: Arc<Engine>,
    filter: HashSet<AudienceId>,
    mut cursor: Cursor,
    tx: &mpsc::Sender<Result<Outgoing, String>>,
    connector: &Addr<Connector>,
) -> Result<(), String> {
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
                    return Err(format!(
                        "cursor p{p}={after} is ahead of the outbox (head {head}): it belongs to another engine's data"
                    ));
                }
            }
            if let Some(&(first, _)) = chunk.first() {
                // A position the subscriber named must be followed by the very next delta;
                // with no position for a partition, it starts at the oldest retained.
                if explicit.is_some() && first > after + 1 {
                    return Err(format!(
                        "cursor p{p}={after} is older than the retained outbox (oldest {first})"
                    ));
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
                    cursor: cursor.format(),
                };
                if tx.send(Ok(out)).await.is_err() {
                    return Ok(());
                }
                delivered.push(delta);
            }
            if !delivered.is_empty() {
                connector.do_send(Delivered(delivered, cursor.format()));
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
