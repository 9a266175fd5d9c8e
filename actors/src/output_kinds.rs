//! The output kinds a connection sends to: what a send is ([`Output`]), how it fails
//! ([`SendFailure`]), and the kinds themselves: webhooks, Kafka topics of any cluster, and gRPC
//! receivers attached to the connection ([`GrpcHub`]). The loops that read the outbox and call
//! them are in [`crate::delivery`].
//!
//! Invariant: an output reaches only what the [`NetworkGuard`] allows, and what a failure
//! keeps (shown by `ListFaults`) never reads an internal answer back (REVIEW S1 to S5).

use crate::network_guard::NetworkGuard;
use audience_state::model::AudienceId;
use audience_state::outputs::{
    fault_excerpt, ConnectionId, DeliveryItem, OnAudienceDelete, OutputConfig, MAX_ERROR_BODY_BYTES,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Why a send failed.
#[derive(Debug, Clone)]
pub struct SendFailure {
    /// Worth retrying (timeouts, 5xx, 429); otherwise the connection faults at once.
    pub retryable: bool,
    pub status: Option<u32>,
    pub retry_after: Option<Duration>,
    pub body_excerpt: String,
    pub message: String,
    /// Nothing failed: the output has no receiver yet (a `grpc` connection nobody attached
    /// to). The loop waits without spending attempts, and keeps what is owed.
    pub waiting: bool,
}

impl SendFailure {
    fn retryable(message: String) -> SendFailure {
        SendFailure {
            retryable: true,
            status: None,
            retry_after: None,
            body_excerpt: String::new(),
            message,
            waiting: false,
        }
    }

    /// The network guard refused the output's host: retrying would not change it, the
    /// connection faults at once.
    fn refused(message: String) -> SendFailure {
        SendFailure {
            retryable: false,
            ..SendFailure::retryable(message)
        }
    }
}

/// The audience as its outputs see it.
#[derive(Debug, Clone)]
pub struct AudienceInfo {
    pub id: AudienceId,
    /// The external name when set, else the name; for a connection of an A/B test variation,
    /// followed by " - " and the variation's name.
    pub name: String,
    /// The variation a connection sends; empty: the whole audience.
    pub variation: String,
    pub connection_id: ConnectionId,
    pub connection_settings: BTreeMap<String, serde_json::Value>,
}

impl AudienceInfo {
    /// The audience as webhook and Kafka messages name it (the variation only for a
    /// connection of one).
    pub fn json(&self) -> serde_json::Value {
        let mut audience = serde_json::json!({"id": self.id, "name": self.name});
        if !self.variation.is_empty() {
            audience["variation"] = self.variation.clone().into();
        }
        audience
    }
}

/// An output kind: where batches of items go, and what deleting an audience does there.
#[async_trait::async_trait]
pub trait Output: Send + Sync {
    async fn send(
        &self,
        audience: &AudienceInfo,
        items: &[DeliveryItem],
    ) -> Result<(), SendFailure>;
    /// Tells the output the audience is gone; kinds that keep their copy do nothing.
    async fn audience_deleted(&self, audience: &AudienceInfo) -> Result<(), SendFailure>;
}

/// The output of a configuration (its secrets in clear), reaching only what `guard` allows.
pub fn build_output(config: &OutputConfig, guard: NetworkGuard) -> Result<Arc<dyn Output>, String> {
    match config.kind.as_str() {
        "webhook" => Ok(Arc::new(Webhook::new(config, guard)?)),
        "kafka" => Ok(Arc::new(KafkaOutput::new(config, guard)?)),
        "grpc" => Ok(Arc::new(GrpcStreamOutput {
            ack_timeout: Duration::from_millis(config.setting_u64("timeout_ms", 10_000)),
        })),
        other => Err(format!("unknown output kind \"{other}\"")),
    }
}

// ------------------------------------------------------------------ webhook

/// JSON batches POSTed to a URL: `{"type": "membership", "audience": {...}, "items": [...]}`.
/// Every secret of the configuration is sent as an HTTP header of that name.
///
/// The host is resolved through the [`NetworkGuard`] at each new connection (a literal address
/// is checked before each request); redirects are not followed (a 3xx is a fault: a 307 would
/// re-post members and secret headers elsewhere); an error body is read to
/// [`MAX_ERROR_BODY_BYTES`] at most, and only a 4xx's excerpt is kept.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    /// The URL's host when it is a literal address (no resolver sees those).
    literal_host: Option<String>,
    guard: NetworkGuard,
    headers: reqwest::header::HeaderMap,
    /// What the audience's deletion sends: a POST of the notice, or a DELETE of the audience.
    on_delete: OnAudienceDelete,
}

impl Webhook {
    fn new(config: &OutputConfig, guard: NetworkGuard) -> Result<Webhook, String> {
        let timeout = Duration::from_millis(config.setting_u64("timeout_ms", 10_000));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(guard))
            .build()
            .map_err(|e| e.to_string())?;
        let url = config.setting_str("url").unwrap_or_default().to_string();
        let parsed = reqwest::Url::parse(&url).map_err(|_| "the url does not parse".to_string())?;
        let literal_host = parsed
            .host_str()
            .filter(|host| guard.check_literal(host).is_some())
            .map(str::to_string);
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.secrets {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("secrets: \"{name}\" is not an HTTP header name"))?;
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("secrets.{name}: not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(Webhook {
            client,
            url,
            literal_host,
            guard,
            headers,
            on_delete: config.on_audience_delete(),
        })
    }

    async fn post(&self, body: serde_json::Value) -> Result<(), SendFailure> {
        self.request(reqwest::Method::POST, &self.url, body).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        body: serde_json::Value,
    ) -> Result<(), SendFailure> {
        if let Some(Some(Err(why))) = self
            .literal_host
            .as_deref()
            .map(|h| self.guard.check_literal(h))
        {
            return Err(SendFailure::refused(why));
        }
        let response = self
            .client
            .request(method, url)
            .headers(self.headers.clone())
            .json(&body)
            .send()
            .await
            .map_err(request_failure)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_redirection() {
            return Err(SendFailure {
                retryable: false,
                status: Some(status.as_u16() as u32),
                retry_after: None,
                body_excerpt: String::new(),
                message: format!("HTTP {status}: redirects are not followed"),
                waiting: false,
            });
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_at_most(response, MAX_ERROR_BODY_BYTES).await;
        Err(SendFailure {
            retryable: status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error(),
            status: Some(status.as_u16() as u32),
            retry_after,
            body_excerpt: fault_excerpt(status.as_u16(), &body),
            message: format!("HTTP {status}"),
            waiting: false,
        })
    }
}

/// Why a request got no answer, as a fault says it: whether it timed out or the guard refused
/// the host, nothing of the network's own words (a refused port, an unknown name: REVIEW S2),
/// which go to the log without the URL.
fn request_failure(e: reqwest::Error) -> SendFailure {
    if e.is_timeout() {
        return SendFailure::retryable("timed out".to_string());
    }
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if text.contains("outputs.allow_private") {
            return SendFailure::refused(text);
        }
        source = cause.source();
    }
    tracing::debug!(error = %e.without_url(), "webhook request failed");
    SendFailure::retryable("the request got no answer (connection failed)".to_string())
}

/// The first `limit` bytes of a body, as text.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[async_trait::async_trait]
impl Output for Webhook {
    async fn send(
        &self,
        audience: &AudienceInfo,
        items: &[DeliveryItem],
    ) -> Result<(), SendFailure> {
        self.post(serde_json::json!({
            "type": "membership",
            "audience": audience.json(),
            "connection_id": audience.connection_id,
            "settings": audience.connection_settings,
            "items": items,
        }))
        .await
    }

    async fn audience_deleted(&self, audience: &AudienceInfo) -> Result<(), SendFailure> {
        let notice = serde_json::json!({
            "type": "audience_deleted",
            "audience": audience.json(),
            "connection_id": audience.connection_id,
        });
        if self.on_delete != OnAudienceDelete::Delete {
            return self.post(notice).await;
        }
        // The audience as a resource of the receiver: its id in the query, beside the url's
        // own parameters.
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|_| SendFailure::refused("the url does not parse".to_string()))?;
        url.query_pairs_mut()
            .append_pair("audience_id", &audience.id.to_string())
            .append_pair("connection_id", &audience.connection_id.to_string());
        self.request(reqwest::Method::DELETE, url.as_str(), notice)
            .await
    }
}

// ------------------------------------------------------------------ kafka

/// The librdkafka properties a Kafka output's secrets may set: credentials only (no
/// property that runs a command, loads a library or reads a file on the engine's host).
const KAFKA_SECRET_KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.certificate.pem",
    "ssl.ca.pem",
];

/// One record per item on a topic of any cluster, keyed by MPID, with the item's idempotency
/// key as header `idempotency-key`. Secrets are librdkafka properties (sasl.password...).
///
/// Its bootstrap servers, then the brokers the cluster advertises, go through the
/// [`NetworkGuard`] before the first send and then at most once a minute; a record leaves only
/// while all of them pass. librdkafka resolves and connects on its own, so this is as close to
/// each connect as it gets: it may open a connection to an advertised broker before the check
/// refuses it, but no record is produced to one.
pub struct KafkaOutput {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    servers: String,
    guard: NetworkGuard,
    checked_at: Mutex<Option<std::time::Instant>>,
}

/// How long a Kafka output's bootstrap servers stay checked.
const KAFKA_RECHECK: Duration = Duration::from_secs(60);

impl KafkaOutput {
    fn new(config: &OutputConfig, guard: NetworkGuard) -> Result<KafkaOutput, String> {
        let mut client = rdkafka::ClientConfig::new();
        client
            .set(
                "bootstrap.servers",
                config.setting_str("bootstrap_servers").unwrap_or_default(),
            )
            .set(
                "message.timeout.ms",
                config.setting_u64("timeout_ms", 10_000).to_string(),
            )
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1");
        for (k, v) in &config.secrets {
            if !KAFKA_SECRET_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "secrets: \"{k}\" is not a Kafka credential (one of: {})",
                    KAFKA_SECRET_KEYS.join(", ")
                ));
            }
            client.set(k, v);
        }
        // librdkafka's errors quote the offending value: never pass them on, they may hold a
        // secret.
        let producer = client.create().map_err(|_: rdkafka::error::KafkaError| {
            "the Kafka client refused the settings or secrets (check their names and values)"
                .to_string()
        })?;
        Ok(KafkaOutput {
            producer,
            topic: config.setting_str("topic").unwrap_or_default().to_string(),
            servers: config
                .setting_str("bootstrap_servers")
                .unwrap_or_default()
                .to_string(),
            guard,
            checked_at: Mutex::new(None),
        })
    }

    async fn check_servers(&self) -> Result<(), SendFailure> {
        let fresh = self
            .checked_at
            .lock()
            .is_some_and(|at| at.elapsed() < KAFKA_RECHECK);
        if !fresh {
            self.guard
                .check_kafka_servers(&self.servers)
                .await
                .map_err(SendFailure::refused)?;
            let brokers = self.advertised_brokers().await?;
            self.guard
                .check_advertised_brokers(&brokers)
                .await
                .map_err(SendFailure::refused)?;
            *self.checked_at.lock() = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// The brokers of the cluster's metadata for the output's topic.
    async fn advertised_brokers(&self) -> Result<Vec<(String, u16)>, SendFailure> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map(|metadata| {
                    metadata
                        .brokers()
                        .iter()
                        .map(|b| (b.host().to_string(), u16::try_from(b.port()).unwrap_or(0)))
                        .collect()
                })
                .map_err(|e| SendFailure::retryable(format!("kafka metadata: {e}")))
        })
        .await
        .map_err(|e| SendFailure::retryable(format!("kafka metadata: {e}")))?
    }

    async fn produce(&self, key: &str, id: &str, value: String) -> Result<(), SendFailure> {
        use rdkafka::message::{Header, OwnedHeaders};
        let record = rdkafka::producer::FutureRecord::to(&self.topic)
            .key(key)
            .payload(&value)
            .headers(OwnedHeaders::new().insert(Header {
                key: "idempotency-key",
                value: Some(id),
            }));
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| SendFailure::retryable(format!("kafka: {e}")))
    }
}

#[async_trait::async_trait]
impl Output for KafkaOutput {
    async fn send(
        &self,
        audience: &AudienceInfo,
        items: &[DeliveryItem],
    ) -> Result<(), SendFailure> {
        self.check_servers().await?;
        for item in items {
            let value = serde_json::json!({
                "type": "membership",
                "audience": audience.json(),
                "connection_id": audience.connection_id,
                "item": item,
            });
            self.produce(
                &item.mpid.to_string(),
                &item.idempotency_key,
                value.to_string(),
            )
            .await?;
        }
        Ok(())
    }

    async fn audience_deleted(&self, audience: &AudienceInfo) -> Result<(), SendFailure> {
        let value = serde_json::json!({
            "type": "audience_deleted",
            "audience": audience.json(),
            "connection_id": audience.connection_id,
        });
        let id = format!("deleted:{}:{}", audience.id, audience.connection_id);
        self.check_servers().await?;
        self.produce(&audience.id.to_string(), &id, value.to_string())
            .await
    }
}

// ------------------------------------------------------------------ grpc stream

/// A batch on its way to a `grpc` receiver.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    pub batch_id: u64,
    pub audience: AudienceInfo,
    /// `membership` or `audience_deleted`.
    pub kind: String,
    pub items: Vec<DeliveryItem>,
}

type Acked = tokio::sync::oneshot::Sender<()>;

struct Attached {
    tx: tokio::sync::mpsc::Sender<(StreamBatch, Acked)>,
    generation: u64,
}

/// The receivers attached to `grpc` connections, process-wide.
#[derive(Default)]
pub struct GrpcHub {
    receivers: Mutex<HashMap<ConnectionId, Attached>>,
    next_batch: std::sync::atomic::AtomicU64,
    next_generation: std::sync::atomic::AtomicU64,
}

impl GrpcHub {
    pub fn global() -> &'static GrpcHub {
        static HUB: std::sync::OnceLock<GrpcHub> = std::sync::OnceLock::new();
        HUB.get_or_init(GrpcHub::default)
    }

    /// Attaches a receiver to a connection (replacing any other); batches come on the channel
    /// with the sender of their acknowledgement.
    pub fn attach(
        &self,
        id: ConnectionId,
    ) -> (u64, tokio::sync::mpsc::Receiver<(StreamBatch, Acked)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let generation = self.next_generation.fetch_add(1, Relaxed) + 1;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        self.receivers
            .lock()
            .insert(id, Attached { tx, generation });
        (generation, rx)
    }

    pub fn detach(&self, id: ConnectionId, generation: u64) {
        let mut receivers = self.receivers.lock();
        if receivers
            .get(&id)
            .is_some_and(|a| a.generation == generation)
        {
            receivers.remove(&id);
        }
    }

    async fn deliver(
        &self,
        audience: &AudienceInfo,
        kind: &str,
        items: &[DeliveryItem],
        ack_timeout: Duration,
    ) -> Result<(), SendFailure> {
        let tx = self
            .receivers
            .lock()
            .get(&audience.connection_id)
            .map(|a| a.tx.clone());
        let Some(tx) = tx else {
            return Err(SendFailure {
                waiting: true,
                ..SendFailure::retryable("no receiver attached".to_string())
            });
        };
        let batch = StreamBatch {
            batch_id: self
                .next_batch
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            audience: audience.clone(),
            kind: kind.to_string(),
            items: items.to_vec(),
        };
        let (acked, ack) = tokio::sync::oneshot::channel();
        match tokio::time::timeout(ack_timeout, tx.send((batch, acked))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SendFailure::retryable("the receiver went away".to_string())),
            Err(_) => {
                return Err(SendFailure::retryable(
                    "the receiver is not reading".to_string(),
                ))
            }
        }
        match tokio::time::timeout(ack_timeout, ack).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendFailure::retryable(
                "the receiver went away before acknowledging".to_string(),
            )),
            Err(_) => Err(SendFailure::retryable(
                "acknowledgement timed out".to_string(),
            )),
        }
    }
}

/// Batches streamed to the subscriber attached to the connection (`OutputService.Receive`),
/// each acknowledged before the next.
pub struct GrpcStreamOutput {
    ack_timeout: Duration,
}

#[async_trait::async_trait]
impl Output for GrpcStreamOutput {
    async fn send(
        &self,
        audience: &AudienceInfo,
        items: &[DeliveryItem],
    ) -> Result<(), SendFailure> {
        GrpcHub::global()
            .deliver(audience, "membership", items, self.ack_timeout)
            .await
    }

    /// The subscriber's copy is its own: it is told only if it is attached right now.
    async fn audience_deleted(&self, audience: &AudienceInfo) -> Result<(), SendFailure> {
        match GrpcHub::global()
            .deliver(audience, "audience_deleted", &[], self.ack_timeout)
            .await
        {
            Err(f) if f.waiting => Ok(()),
            other => other,
        }
    }
}
