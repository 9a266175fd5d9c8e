//! The scenarios of the chaos matrix. Each builds a [`Stage`] (a broker, an engine, the three
//! audiences connected to a webhook receiver), streams the seeded workload while it breaks
//! something, then reads everything back and judges it ([`Stage::finish`]).

use super::check::{
    differing, engine_view, membership_hash, model_of, quantile, receiver_view, wait_consumed,
};
use super::disk::Tmpfs;
use super::workload::{audiences, workload, Message, Rng, MAX_MESSAGE_BYTES, POISON_HEADER};
use super::{Figures, Row, Scale};
use crate::webhook::{start_hook, webhook, Hook};
use crate::{
    create_audience, engine_now, read_whole_topic, status, wait_active, Broker, Channel, Engine,
    Result,
};
use crate::{Topics, CLUSTER_KEY};
use audience_proto::v1 as pb;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;

/// What the producer did.
#[derive(Debug, Default)]
pub struct Fed {
    pub acknowledged: u64,
    pub steps_acknowledged: u64,
    pub failed: u64,
    /// When each acknowledged message was due to be sent (the schedule, so that a stall of
    /// the producer counts against the engine: no coordinated omission), by its event time.
    pub sent_at: HashMap<i64, Instant>,
}

/// How a [`Stage`]'s node is set up beyond the defaults.
#[derive(Debug, Default)]
pub struct Setup {
    /// Poison messages per 10,000 of the workload.
    pub poison_per_10000: u64,
    pub changelog: bool,
    /// The data directory on a tmpfs of its own of this size (see [`super::disk`]).
    pub tmpfs_bytes: Option<u64>,
    /// gRPC over TLS, with a certificate of a CA made for the run (the harness trusts it).
    pub tls: bool,
    /// More of the engine's environment.
    pub env: Vec<(&'static str, String)>,
}

/// A run's broker, engine, audiences and receiver.
/// Fields drop in order: the engine stops before its disk is unmounted and the broker stops,
/// all before the data goes.
pub struct Stage {
    pub engine: Engine,
    pub disk: Option<Tmpfs>,
    pub ch: Channel,
    pub broker: Broker,
    pub topics: Topics,
    pub dir: tempfile::TempDir,
    pub audience_ids: Vec<u64>,
    pub hook: Arc<Hook>,
    pub messages: Vec<Message>,
    pub base_ms: i64,
    pub scale: Scale,
    /// Messages acknowledged so far, and the largest lag sampled (acknowledged - consumed).
    pub acked_so_far: Arc<AtomicU64>,
    pub max_lag: Arc<AtomicI64>,
}

impl Stage {
    /// A broker (given, so that a scenario can choose a durable one), an engine set up as
    /// `setup` says, the chaos audiences, each connected to one webhook receiver.
    pub async fn start(name: &str, broker: Broker, scale: Scale, setup: Setup) -> Result<Stage> {
        let topics = Topics::unique(&format!("chaos-{name}"));
        broker.create_deployment_topics(&topics, PARTITIONS).await?;
        let dir = tempfile::tempdir()?;
        let partitions = PARTITIONS.to_string();
        let max_bytes = MAX_MESSAGE_BYTES.to_string();
        let mut env = vec![
            ("AUDIENCE_PARTITIONS", partitions.as_str()),
            ("AUDIENCE_MAX_MESSAGE_BYTES", max_bytes.as_str()),
        ];
        let changelog_topic = format!("{}-changelog", topics.events);
        if setup.changelog {
            env.extend([
                ("AUDIENCE_CHANGELOG", "true"),
                ("AUDIENCE_CHANGELOG_TOPIC", changelog_topic.as_str()),
                ("AUDIENCE_NODE_ID", "chaos-1"),
                ("AUDIENCE_CATALOG_SECRET_KEY", CLUSTER_KEY),
            ]);
        }
        let mut owned = setup.env.clone();
        let ca = match setup.tls {
            true => {
                let pki = crate::test_pki(dir.path(), "chaos")?;
                owned.push(("AUDIENCE_TLS_CERT", pki.cert.display().to_string()));
                owned.push(("AUDIENCE_TLS_KEY", pki.key.display().to_string()));
                Some(pki.ca)
            }
            false => None,
        };
        env.extend(owned.iter().map(|(k, v)| (*k, v.as_str())));
        let data_dir = dir.path().join("node");
        let disk = match setup.tmpfs_bytes {
            Some(bytes) => Some(Tmpfs::mount(&data_dir, bytes)?),
            None => None,
        };
        let mut engine = Engine::start_with(&broker, &topics, &data_dir, name, &env)?;
        engine.client.ca_file = ca;
        let ch = engine.ready().await?;
        let (hook, url) = start_hook().await?;
        let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
        let output = webhook(
            &mut outputs,
            "chaos receiver",
            &url,
            &["customer_id"],
            serde_json::json!({"max_attempts": 5, "backoff_ms": 200, "batch_size": 100}),
        )
        .await?;
        let mut audience_ids = Vec::new();
        for (name, criteria) in audiences() {
            let a = create_audience(&ch, name, criteria).await?;
            wait_active(&ch, a.id).await?;
            crate::connect(&ch, a.id, output.id).await?;
            audience_ids.push(a.id);
        }
        let messages = workload(
            scale.seed,
            scale.users,
            scale.messages,
            setup.poison_per_10000,
        );
        let base_ms = engine_now(&ch).await? - scale.messages as i64 - 60_000;
        Ok(Stage {
            engine,
            disk,
            ch,
            broker,
            topics,
            dir,
            audience_ids,
            hook,
            messages,
            base_ms,
            scale,
            acked_so_far: Arc::new(AtomicU64::new(0)),
            max_lag: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Streams the workload at the scale's rate, on a task of its own, with a sampler of the
    /// lag beside it; the task ends when every message is acknowledged or failed.
    pub fn feed(&self) -> Result<tokio::task::JoinHandle<Fed>> {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.broker.bootstrap)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .set("message.max.bytes", "4000000")
            .create()?;
        let topic = self.topics.events.clone();
        let messages = self.messages.clone();
        let (base, rate, seed) = (self.base_ms, self.scale.rate, self.scale.seed);
        let acked_so_far = self.acked_so_far.clone();
        let done = Arc::new(AtomicBool::new(false));
        self.sample_lag(done.clone());
        Ok(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ 0x5eed);
            let mut fed = Fed::default();
            let mut in_flight = FuturesUnordered::new();
            let start = tokio::time::Instant::now();
            for (i, m) in messages.iter().enumerate() {
                let due = match rate {
                    0 => tokio::time::Instant::now(),
                    rate => start + Duration::from_secs_f64(i as f64 / rate as f64),
                };
                tokio::time::sleep_until(due).await;
                let due = due.into_std();
                let record = m.record(base, &mut rng);
                let mut headers = OwnedHeaders::new();
                if let Some(kind) = record.poison {
                    headers = headers.insert(Header {
                        key: POISON_HEADER,
                        value: Some(kind.name()),
                    });
                }
                if let Some(ct) = record.content_type {
                    headers = headers.insert(Header {
                        key: "content-type",
                        value: Some(ct),
                    });
                }
                let (at, step) = (m.event_time(base), m.poison.is_none());
                // Queued at once (the delivery is awaited among the others in flight); a full
                // queue waits for one to settle.
                let delivery = loop {
                    let queued = producer.send_result(
                        FutureRecord::to(&topic)
                            .key(&record.key)
                            .payload(&record.payload)
                            .headers(headers.clone()),
                    );
                    match queued {
                        Ok(delivery) => break Some(delivery),
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            match in_flight.next().await {
                                Some(done) => settle(Some(done), &mut fed, &acked_so_far),
                                None => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                        Err(_) => break None,
                    }
                };
                match delivery {
                    Some(d) => {
                        in_flight.push(async move { (matches!(d.await, Ok(Ok(_))), at, step, due) })
                    }
                    None => fed.failed += 1,
                }
                while in_flight.len() >= 256 {
                    settle(in_flight.next().await, &mut fed, &acked_so_far);
                }
            }
            while let Some(result) = in_flight.next().await {
                settle(Some(result), &mut fed, &acked_so_far);
            }
            done.store(true, Ordering::Relaxed);
            fed
        }))
    }

    /// Samples acknowledged minus consumed every 200 ms until `done`, keeping the largest.
    fn sample_lag(&self, done: Arc<AtomicBool>) {
        let (ch, topic) = (self.ch.clone(), self.topics.events.clone());
        let (acked, max_lag) = (self.acked_so_far.clone(), self.max_lag.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok(consumed) = super::check::consumed(&[&ch], &topic).await {
                    let lag = acked.load(Ordering::Relaxed) as i64 - consumed;
                    max_lag.fetch_max(lag, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Reads everything back once the engine has consumed the whole topic and judges it.
    pub async fn finish(
        &self,
        scenario: &'static str,
        fed: Fed,
        mut figures: Figures,
    ) -> Result<Row> {
        let records = {
            let (bootstrap, topic) = (self.broker.bootstrap.clone(), self.topics.events.clone());
            tokio::task::spawn_blocking(move || read_whole_topic(&bootstrap, &topic)).await??
        };
        let model = model_of(&records);
        let caught_up = wait_consumed(
            &[&self.ch],
            &self.topics.events,
            records.len() as i64,
            Duration::from_secs(180),
        )
        .await?;
        let engine = engine_view(&self.ch, model.users.keys().copied(), &self.audience_ids).await?;
        let expected = model.members();
        // The receiver gets the last deltas a moment after the engine wrote them.
        let deadline = Instant::now() + Duration::from_secs(60);
        let receiver = loop {
            let view = receiver_view(&self.hook, &self.audience_ids, &fed.sent_at);
            if differing(&view.members, &engine.members) == 0 || Instant::now() > deadline {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let steps_on_topic: u64 = model.users.values().map(|u| u.steps).sum();
        figures.acknowledged = fed.acknowledged;
        figures.on_topic = records.len() as u64;
        figures.applied = engine.steps.values().sum();
        figures.lost = fed.steps_acknowledged.saturating_sub(steps_on_topic);
        // The first users whose counts differ, named in the row so that a failure says where.
        let mut differing_users = Vec::new();
        for (mpid, user) in &model.users {
            let applied = engine.steps.get(mpid).copied().unwrap_or(0);
            figures.lost += user.steps.saturating_sub(applied);
            figures.duplicated_applied += applied.saturating_sub(user.steps);
            if applied != user.steps && differing_users.len() < 5 {
                differing_users.push(format!(
                    "user {mpid}: {} steps on the topic, {applied} applied",
                    user.steps
                ));
            }
        }
        figures.duplicate_deltas = receiver.items - receiver.distinct;
        figures.order_violations = receiver.order_violations;
        figures.receiver_differs = differing(&receiver.members, &expected);
        figures.engine_differs = differing(&engine.members, &expected);
        figures.p99_latency_ms = quantile(&mut receiver.latencies_ms.clone(), 0.99);
        figures.max_lag = self.max_lag.load(Ordering::Relaxed);
        figures.poison_injected = model.poison_total();
        figures.memberships = engine.memberships.len() as u64;
        figures.state_hash = membership_hash(&engine.memberships);
        // Steps the topic holds twice (a producer's retry without idempotence): the engine
        // must count them twice, as the model does.
        let topic_duplicates: u64 = model
            .users
            .values()
            .map(|u| u.steps - u.seqs.len() as u64)
            .sum();
        if topic_duplicates > 0 {
            figures
                .extra
                .insert("topic_duplicates".into(), topic_duplicates as f64);
        }
        figures
            .extra
            .insert("catch_up_s".into(), round(caught_up.as_secs_f64()));
        // A run that applied less than 90% of what it sent proves nothing.
        let min_applied = (steps_on_topic * 9 / 10).max(1);
        let mut row = Row::judge(scenario, figures, min_applied);
        row.failures.extend(differing_users);
        Ok(row)
    }

    /// The dead letters on their topic once `expected` are there (or 60 s passed): by
    /// `dlq-reason-code`, and how many carry no reason.
    pub async fn dead_letters(&self, expected: u64) -> Result<(u64, BTreeMap<String, u64>, u64)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let letters = {
                let (bootstrap, topic) = (
                    self.broker.bootstrap.clone(),
                    self.topics.dead_letters.clone(),
                );
                tokio::task::spawn_blocking(move || read_whole_topic(&bootstrap, &topic)).await??
            };
            if letters.len() as u64 >= expected || Instant::now() > deadline {
                let mut by_code = BTreeMap::new();
                let mut unexplained = 0;
                for l in &letters {
                    let code = l
                        .headers
                        .get("dlq-reason-code")
                        .cloned()
                        .unwrap_or_default();
                    *by_code.entry(code).or_default() += 1;
                    if l.headers
                        .get("dlq-reason")
                        .is_none_or(|r| r.trim().is_empty())
                    {
                        unexplained += 1;
                    }
                }
                return Ok((letters.len() as u64, by_code, unexplained));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A delivery's outcome: acknowledged, the message's event time, whether it is a step, and
/// when it was due to be sent.
type Settled = (bool, i64, bool, Instant);

fn settle(result: Option<Settled>, fed: &mut Fed, acked_so_far: &AtomicU64) {
    let Some((ok, at, step, due)) = result else {
        return;
    };
    if ok {
        fed.acknowledged += 1;
        fed.steps_acknowledged += u64::from(step);
        fed.sent_at.insert(at, due);
        acked_so_far.fetch_add(1, Ordering::Relaxed);
    } else {
        fed.failed += 1;
    }
}

/// How long the producer takes to send the workload at the scale's rate.
pub(super) fn stream_ms(scale: Scale) -> u64 {
    match scale.rate {
        0 => 10_000,
        rate => scale.messages * 1000 / rate,
    }
}

pub(super) fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Poison input (scenario 7): 1% of the messages are bad in each way a producer can be. Every one
/// is dead-lettered with its reason, nothing else is lost, and the lag returns to 0.
pub async fn poison(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let stage = Stage::start(
        "poison",
        Broker::start()?,
        scale,
        Setup {
            poison_per_10000: 100,
            ..Setup::default()
        },
    )
    .await?;
    let fed = stage.feed()?.await?;
    let mut row = stage.finish("poison", fed, Figures::default()).await?;
    let injected = row.figures.poison_injected;
    let (letters, by_code, unexplained) = stage.dead_letters(injected).await?;
    row.figures.dead_lettered = letters;
    for (code, n) in &by_code {
        row.figures.extra.insert(format!("dlq_{code}"), *n as f64);
    }
    if letters != injected {
        row.failures.push(format!(
            "{letters} dead letters for {injected} poison messages"
        ));
    }
    if unexplained > 0 {
        row.failures
            .push(format!("{unexplained} dead letters without a reason"));
    }
    // Each kind of poison has its reason (`Poison::ALL` cycles, so ten give one of each).
    for code in ["malformed", "oversized", "invalid_field", "key_mismatch"] {
        if !by_code.contains_key(code) {
            row.failures
                .push(format!("no dead letter of reason {code}"));
        }
    }
    if injected < 10 {
        row.failures
            .push(format!("only {injected} poison messages injected"));
    }
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

/// Random SIGKILL loop (scenario 3): the engine is killed at random times while the workload
/// streams, and started again each time.
pub async fn kill_loop(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let mut stage = Stage::start("kill-loop", Broker::start()?, scale, Setup::default()).await?;
    let feeding = stage.feed()?;
    let mut rng = Rng::new(scale.seed ^ 0x4b11);
    let stream_ms = stream_ms(scale);
    let mut figures = Figures::default();
    let mut recovery: f64 = 0.0;
    for _ in 0..scale.kills {
        let wait = 200 + rng.below((stream_ms / u64::from(scale.kills)).max(1));
        tokio::time::sleep(Duration::from_millis(wait)).await;
        stage.engine.kill9();
        let restarted = Instant::now();
        stage.engine.restart()?;
        stage.ch = stage.engine.ready().await?;
        recovery = recovery.max(restarted.elapsed().as_secs_f64());
        figures.reopens += 1;
    }
    let fed = feeding.await?;
    figures.recovery_s = round(recovery);
    let mut row = stage.finish("kill_loop", fed, figures).await?;
    if row.figures.reopens < u64::from(scale.kills) {
        row.failures.push("fewer kills than asked".into());
    }
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

/// Broker restart (scenario 4): the broker, its topics in a file, is killed a third of the way into
/// the stream and started again 2 s later. The producer holds what it could not send; the engine
/// must take up where it was. Reports the time from the broker's restart until the engine consumes
/// again (recovery), and the peak lag.
pub async fn broker_restart(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let broker_dir = tempfile::tempdir()?;
    let broker = Broker::start_durable(broker_dir.path())?;
    let mut stage = Stage::start("broker", broker, scale, Setup::default()).await?;
    let feeding = stage.feed()?;
    tokio::time::sleep(Duration::from_millis(stream_ms(scale) / 3)).await;
    let events = stage.topics.events.clone();
    stage.broker.kill9();
    let down = Duration::from_secs(2);
    tokio::time::sleep(down).await;
    // What the engine had consumed when the broker went (it fetches nothing while it is down).
    let before = super::check::consumed(&[&stage.ch], &events).await?;
    stage.broker.restart()?;
    let restarted = Instant::now();
    loop {
        let now = super::check::consumed(&[&stage.ch], &events)
            .await
            .unwrap_or(0);
        if now > before {
            break;
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(180),
            "the engine consumed nothing within 180 s of the broker's restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut figures = Figures {
        recovery_s: round(restarted.elapsed().as_secs_f64()),
        reopens: 1,
        ..Figures::default()
    };
    figures
        .extra
        .insert("broker_down_s".into(), down.as_secs_f64());
    let fed = feeding.await?;
    figures
        .extra
        .insert("unacknowledged".into(), fed.failed as f64);
    let mut row = stage.finish("broker_restart", fed, figures).await?;
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

/// Output down, then slow (scenario 8): the webhook answers 503 for `outage_s`, then takes a second
/// (5 s in the soak) for each answer as long again. Faulted connections are resumed as an operator
/// would once it answers; no delta may reach the receiver out of order.
pub async fn output_outage(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let stage = Stage::start("outage", Broker::start()?, scale, Setup::default()).await?;
    let outage = Duration::from_secs(scale.outage_s);
    let slow = if scale.outage_s >= 30 { 5 } else { 1 };
    *stage.hook.down_until.lock().unwrap() = Some(Instant::now() + outage);
    let feeding = stage.feed()?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(stage.ch.clone());
    let (mut max_unsent, mut resumed) = (0u64, 0u64);
    let slow_from = Instant::now() + outage;
    let slow_until = slow_from + outage;
    let mut slowed = false;
    while Instant::now() < slow_until + Duration::from_secs(1) || !feeding.is_finished() {
        if !slowed && Instant::now() >= slow_from {
            *stage.hook.delay.lock().unwrap() = Duration::from_secs(slow);
            slowed = true;
        }
        if slowed && Instant::now() >= slow_until {
            *stage.hook.delay.lock().unwrap() = Duration::ZERO;
        }
        let connections = outputs
            .list_connections(pb::ListConnectionsRequest::default())
            .await?
            .into_inner()
            .connections;
        let head: u64 = status(&stage.ch)
            .await?
            .partitions
            .iter()
            .map(|p| p.outbox_head)
            .sum();
        let sent: u64 = connections
            .iter()
            .filter_map(|c| c.figures.as_ref())
            .map(|f| f.sent)
            .sum();
        max_unsent = max_unsent.max(head.saturating_sub(sent));
        if Instant::now() >= slow_from {
            for c in connections.iter().filter(|c| c.faulted) {
                outputs.resume(pb::ConnectionIdRequest { id: c.id }).await?;
                resumed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fed = feeding.await?;
    // A connection that faulted at the very end is resumed too, as an operator would.
    for c in outputs
        .list_connections(pb::ListConnectionsRequest::default())
        .await?
        .into_inner()
        .connections
        .iter()
        .filter(|c| c.faulted)
    {
        outputs.resume(pb::ConnectionIdRequest { id: c.id }).await?;
        resumed += 1;
    }
    let mut figures = Figures::default();
    figures
        .extra
        .insert("max_unsent_deltas".into(), max_unsent as f64);
    figures.extra.insert("resumes".into(), resumed as f64);
    let mut row = stage.finish("output_outage", fed, figures).await?;
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

/// Wipe and replay (scenario 9): once the stream is in, the node's data directory is deleted and
/// the node started again: it restores its partitions from the changelog and the log, and must end
/// with the same memberships, versions included.
pub async fn wipe_replay(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let mut stage = Stage::start(
        "wipe",
        Broker::start()?,
        scale,
        Setup {
            changelog: true,
            ..Setup::default()
        },
    )
    .await?;
    let fed = stage.feed()?.await?;
    let before = stage
        .finish("wipe_replay", Fed::default(), Figures::default())
        .await?;
    stage.engine.kill9();
    std::fs::remove_dir_all(&stage.engine.data_dir)?;
    let wiped = Instant::now();
    stage.engine.restart()?;
    stage.ch = stage.engine.ready().await?;
    let mut row = stage.finish("wipe_replay", fed, Figures::default()).await?;
    row.figures.recovery_s = round(wiped.elapsed().as_secs_f64());
    row.figures
        .extra
        .insert("memberships".into(), row.figures.memberships as f64);
    let (hash_before, hash_after) = (before.figures.state_hash, row.figures.state_hash);
    if hash_before != hash_after {
        row.failures.push(format!(
            "membership hash {hash_before:016x} before the wipe, {hash_after:016x} after"
        ));
    }
    if !before.passed() {
        row.failures.extend(
            before
                .failures
                .iter()
                .map(|f| format!("before the wipe: {f}")),
        );
    }
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}

/// Every scenario, in the order `make chaos` runs them.
pub const NAMES: [&str; 7] = [
    "poison",
    "kill_loop",
    "broker_restart",
    "output_outage",
    "wipe_replay",
    "disk_full",
    "security",
];

/// Runs the scenario called `name` (one of [`NAMES`]).
pub async fn run(name: &str, scale: Scale) -> Result<Row> {
    match name {
        "poison" => poison(scale).await,
        "kill_loop" => kill_loop(scale).await,
        "broker_restart" => broker_restart(scale).await,
        "output_outage" => output_outage(scale).await,
        "wipe_replay" => wipe_replay(scale).await,
        "disk_full" => super::disk::disk_full(scale).await,
        "security" => super::security::security(scale).await,
        other => anyhow::bail!("no chaos scenario {other:?} (there are {NAMES:?})"),
    }
}
