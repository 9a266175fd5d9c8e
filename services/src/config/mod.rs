//! Engine configuration: a TOML file, overridden by environment variables, with defaults that
//! work on a laptop (embedded broker, data under `.data/`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

mod inputs;
use inputs::parse_inputs;
pub use inputs::InputsConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub storage: StorageConfig,
    pub grpc: GrpcConfig,
    pub metrics: MetricsConfig,
    pub engine: EngineConfig,
    pub clock: ClockConfig,
    pub catalog: CatalogConfig,
    pub cluster: ClusterConfig,
    pub outputs: OutputsConfig,
    pub auth: AuthConfig,
    pub inputs: InputsConfig,
}

/// Who may call the API (README: "Security"): bearer tokens by name, inline or in a file that
/// is re-read when it changes.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `name = "token"` pairs (AUDIENCE_TOKENS=name=token,name=token).
    pub tokens: BTreeMap<String, String>,
    /// The scopes of some of those tokens, `name = "read,subscribe"`; a token not listed here
    /// holds every scope (AUDIENCE_TOKEN_SCOPES=name=read+subscribe,name=write).
    pub scopes: BTreeMap<String, String>,
    /// A file of `name token` lines, re-read within a second of a change: rotation without a
    /// restart (AUDIENCE_TOKENS_FILE).
    pub tokens_file: String,
    /// Run without any token: a development engine on loopback only
    /// (AUDIENCE_ALLOW_UNAUTHENTICATED).
    pub allow_unauthenticated: bool,
}

// A token never reaches a log: the configuration is logged at start.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .field("scopes", &self.scopes)
            .field("tokens_file", &self.tokens_file)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .finish()
    }
}

impl AuthConfig {
    /// Where the accepted tokens come from, checked.
    pub fn sources(&self) -> anyhow::Result<crate::auth::TokenSources> {
        Ok(crate::auth::TokenSources {
            inline: crate::auth::inline_tokens(&self.tokens, &self.scopes)
                .map_err(anyhow::Error::msg)?,
            file: (!self.tokens_file.trim().is_empty())
                .then(|| PathBuf::from(self.tokens_file.trim())),
        })
    }
}

/// What outputs may reach.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputsConfig {
    /// Let webhook and Kafka outputs reach loopback, private, link-local and other internal
    /// addresses (tests, `make run`, a receiver inside the network on purpose). Off: an output
    /// configured through the API cannot be pointed at the engine's own network.
    pub allow_private: bool,
}

/// A partition's state moves with it (cluster step 2): its changelog, and its snapshots.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Write every partition's units of work to the changelog topic, and restore an assigned
    /// partition from it before consuming it.
    pub changelog: bool,
    /// One partition per input partition, never deleted by retention; created when missing.
    pub changelog_topic: String,
    /// The snapshot repository: a directory every node reaches (a shared volume). Empty: no
    /// snapshots, a restore reads the changelog from this node's position.
    pub snapshot_dir: String,
    /// Units of a partition's changelog since its newest snapshot that call for a new one.
    pub snapshot_every_units: u64,
    /// A partition with units past its newest snapshot is snapshotted once that snapshot is
    /// this old.
    pub snapshot_max_age_ms: u64,
    /// Snapshots kept per partition.
    pub snapshots_kept: usize,
    /// How often the owned partitions are looked at for a snapshot.
    pub snapshot_interval_ms: u64,
    /// Delete the changelog's records before the oldest snapshot kept (DeleteRecords; the
    /// broker must support it).
    pub trim_changelog: bool,
    /// Where every node announces itself (`audiencectl cluster`); empty: the group id
    /// followed by `-members`.
    pub members_topic: String,
    /// The `host:port` the other nodes reach this node's gRPC at (they ask it for its
    /// partitions' part of a read). Empty: `grpc.listen`, its host replaced by this machine's
    /// name when it listens on every interface.
    pub advertised_grpc: String,
    /// The CA that signed the other nodes' certificates when they serve TLS; empty: the
    /// system's roots.
    pub peer_ca_file: String,
    /// Nodes besides its owner that keep a warm copy of each partition by following its
    /// changelog (0: none).
    pub standby_replicas: usize,
    /// Who assigns the input partitions to the nodes: "group" (the consumer group, librdkafka's
    /// `range`, EAGER), "engine" (the nodes place them alike from the members topic and hand
    /// over only what moves; needs `changelog`), or "auto": "engine" with the changelog on,
    /// "group" without.
    pub assignment: String,
    /// How often a node announces itself on the members topic.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is gone: with `assignment = "engine"`, its
    /// partitions move to the other nodes (a kill -9's failover takes this long).
    pub silent_after_ms: u64,
}

impl ClusterConfig {
    /// Whether the engine assigns the partitions itself (`assignment = "engine"`, or "auto"
    /// with the changelog on); an unknown assignment, "engine" without the changelog, or a
    /// silence shorter than two heartbeats is refused with what is wrong.
    pub fn self_assigned(&self) -> anyhow::Result<bool> {
        match self.assignment.trim() {
            "auto" | "" if !self.changelog => Ok(false),
            "group" => Ok(false),
            "auto" | "" | "engine" => {
                anyhow::ensure!(
                    self.changelog,
                    "cluster.assignment = \"engine\" needs cluster.changelog = true: a \
                     partition moves by its changelog"
                );
                anyhow::ensure!(
                    self.heartbeat_ms > 0 && self.silent_after_ms >= 2 * self.heartbeat_ms,
                    "cluster.silent_after_ms ({}) must be at least two heartbeats \
                     (cluster.heartbeat_ms = {})",
                    self.silent_after_ms,
                    self.heartbeat_ms
                );
                Ok(true)
            }
            other => anyhow::bail!(
                "cluster.assignment is \"auto\", \"group\" or \"engine\", not {other:?}"
            ),
        }
    }

    pub fn members_topic(&self, group_id: &str) -> String {
        if self.members_topic.trim().is_empty() {
            format!("{group_id}-members")
        } else {
            self.members_topic.trim().to_string()
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            changelog: false,
            changelog_topic: "audience-changelog".into(),
            snapshot_dir: String::new(),
            snapshot_every_units: 10_000,
            snapshot_max_age_ms: 600_000,
            snapshots_kept: 2,
            snapshot_interval_ms: 10_000,
            trim_changelog: false,
            members_topic: String::new(),
            advertised_grpc: String::new(),
            peer_ca_file: String::new(),
            standby_replicas: 0,
            assignment: "auto".into(),
            heartbeat_ms: audience_actors::cluster_view::ANNOUNCE_EVERY.as_millis() as u64,
            silent_after_ms: audience_actors::cluster_view::SILENT_AFTER.as_millis() as u64,
        }
    }
}

/// The catalog topic: every definition (audiences, calculated attributes, tiers, outputs,
/// connections) as records every node applies in order (README: "The catalog").
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// One partition, compacted; created at start when missing.
    pub topic: String,
    pub replication_factor: i32,
    /// This node's name in its proposals; empty: `host:port` of `grpc.listen`.
    pub node_id: String,
    /// 64 hex digits (`openssl rand -hex 32`), the same on every node: seals outputs'
    /// secrets on the topic. Empty: the node keeps a key of its own in its data directory,
    /// which only a single node can use.
    pub secret_key: String,
    /// How long an API call waits for its change to be applied on the node that took it,
    /// and a starting node for the topic to be read to its end.
    pub apply_timeout_ms: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            topic: "audience-catalog".into(),
            replication_factor: 1,
            node_id: String::new(),
            secret_key: String::new(),
            apply_timeout_ms: 30_000,
        }
    }
}

// A key never reaches a log: the configuration is logged at start.
impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.secret_key.is_empty() {
            "(none: this node's own)"
        } else {
            "********"
        };
        f.debug_struct("CatalogConfig")
            .field("topic", &self.topic)
            .field("replication_factor", &self.replication_factor)
            .field("node_id", &self.node_id)
            .field("secret_key", &key)
            .field("apply_timeout_ms", &self.apply_timeout_ms)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `embedded` starts librdkafka's in-process mock cluster (demos only).
    pub bootstrap_servers: String,
    pub group_id: String,
    pub events_topic: String,
    pub identities_topic: String,
    pub deltas_topic: String,
    pub dead_letter_topic: String,
    /// Create the topics at start when missing.
    pub create_topics: bool,
    pub partitions: i32,
    /// Extra librdkafka properties for consumer and producer.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer alone (over `properties`).
    pub producer_properties: BTreeMap<String, String>,
    /// The largest record the dead-letter topic accepts (its `max.message.bytes`, and the
    /// producer's `message.max.bytes`): a dead letter that would not fit carries a prefix of
    /// its message (`engine.dead_letter_prefix_bytes`).
    pub dead_letter_max_bytes: usize,
}

/// librdkafka properties as logged: the values of credentials (`sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`...) hidden.
fn logged_properties(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(k, v)| {
            let secret = ["password", "secret", "key.pem", "token"]
                .iter()
                .any(|word| k.contains(word));
            (k.as_str(), if secret { "********" } else { v.as_str() })
        })
        .collect()
}

// The configuration is logged at start: a credential among the properties must not be.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("events_topic", &self.events_topic)
            .field("identities_topic", &self.identities_topic)
            .field("deltas_topic", &self.deltas_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("properties", &logged_properties(&self.properties))
            .field(
                "producer_properties",
                &logged_properties(&self.producer_properties),
            )
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub path: PathBuf,
    /// fsync every batch write (survives power loss, not only process crashes).
    pub sync_writes: bool,
    /// RocksDB's block cache, shared by every column family, index and filter blocks
    /// included (AUDIENCE_STORE_CACHE_BYTES).
    pub cache_bytes: usize,
    /// RocksDB's memtables, every column family together (AUDIENCE_STORE_WRITE_BUFFER_BYTES).
    pub write_buffer_bytes: usize,
    /// Read SST files through memory maps: cheaper backfills, but a resident set that grows
    /// with the store (AUDIENCE_STORE_MMAP_READS).
    pub mmap_reads: bool,
    /// Where audience downloads are prepared and kept; empty: `downloads` in `path`
    /// (AUDIENCE_DOWNLOADS_DIR).
    pub downloads_dir: PathBuf,
}

impl StorageConfig {
    /// The directory of audience downloads.
    pub fn downloads(&self) -> PathBuf {
        match self.downloads_dir.as_os_str().is_empty() {
            true => self.path.join("downloads"),
            false => self.downloads_dir.clone(),
        }
    }

    pub fn store_options(&self) -> audience_state::store::StoreOptions {
        audience_state::store::StoreOptions {
            sync_writes: self.sync_writes,
            cache_bytes: self.cache_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
            mmap_reads: self.mmap_reads,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub listen: String,
    /// PEM certificate chain and private key: both or neither. With them the API is served
    /// over TLS only (AUDIENCE_TLS_CERT, AUDIENCE_TLS_KEY).
    pub tls_cert: String,
    pub tls_key: String,
    /// Mutual TLS: the PEM file of the CA whose certificates clients must present; a client
    /// without one is refused in the handshake, before any token is read
    /// (AUDIENCE_TLS_CLIENT_CA). The nodes of a cluster then present their own `tls_cert` to
    /// each other, so it must allow client authentication.
    pub tls_client_ca: String,
    /// The largest request message, in bytes: a larger one is refused with RESOURCE_EXHAUSTED
    /// naming this limit (AUDIENCE_GRPC_MAX_MESSAGE_BYTES).
    pub max_message_bytes: usize,
    /// Delta streams (`Subscribe`) one token may hold open at once
    /// (AUDIENCE_MAX_SUBSCRIBERS_PER_TOKEN).
    pub max_subscribers_per_token: usize,
    /// Delta streams the node holds open at once, every token together: each may hold a
    /// thread of tokio's blocking pool (512) (AUDIENCE_MAX_SUBSCRIBERS).
    pub max_subscribers: usize,
    /// Calls one client connection may have in flight; the next waits for one to end
    /// (AUDIENCE_GRPC_MAX_CALLS_PER_CONNECTION).
    pub max_calls_per_connection: usize,
    /// How long a call may take to answer (a stream, to open) before it is CANCELLED
    /// (AUDIENCE_GRPC_REQUEST_TIMEOUT_MS); a client's own `grpc-timeout` may be shorter.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus exporter address; empty disables it.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub retention_days: u32,
    pub max_message_bytes: usize,
    /// A partition's batch ends at this many messages...
    pub max_batch: usize,
    /// ...or once its keys and payloads reach this many bytes, whichever comes first.
    pub max_batch_bytes: usize,
    /// Arbiter threads hosting partition actors.
    pub threads: usize,
    /// Profiles each partition keeps decoded in memory, least recently used first out: a
    /// profile out of it is read back from the store at its next message
    /// (AUDIENCE_MAX_CACHED_PROFILES).
    pub max_cached_profiles: usize,
    pub timer_tick_ms: u64,
    /// Audience files (`*.json`: name, external_name, tags, criteria) created at start, before
    /// consuming, when no audience of that name exists.
    pub audiences_dir: Option<PathBuf>,
    /// A City database in the MaxMind DB format (GeoIP2 / GeoLite2 City): batches' `ip` is
    /// located with it for location criteria.
    pub geoip_database: Option<PathBuf>,
    /// Per-profile event log bounds: past either, the oldest events go first (counted in
    /// `audience_eventlog_events_dropped_total` and shown by the profile lookup).
    pub log_max_events: u32,
    pub log_max_bytes: u32,
    /// Profiles computed per backfill page (one RocksDB write each).
    pub backfill_page: usize,
    /// Pause between backfill pages, to leave the cores to streaming during a large one.
    pub backfill_pause_ms: u64,
    /// What a dead letter keeps of a message too large for the dead-letter topic, and what
    /// a letter the topic refused as too large is cut to before its one retry.
    pub dead_letter_prefix_bytes: usize,
    /// Unpublished dead letters kept per partition while the topic cannot take them; past
    /// it the oldest are dropped and counted (`audience_dead_letters_dropped_total`).
    pub dead_letter_max_kept: u64,
    /// The most audiences, calculated attributes, outputs, connections and API tokens the
    /// catalog holds; one more is RESOURCE_EXHAUSTED, naming the setting.
    pub max_audiences: usize,
    pub max_calculated_attributes: usize,
    pub max_outputs: usize,
    pub max_connections: usize,
    pub max_api_tokens: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// Let `AdminService.AdvanceClock` move time forward (tests and demos).
    pub manual: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        let d = audience_actors::engine::EngineSettings::default();
        KafkaConfig {
            bootstrap_servers: "embedded".into(),
            group_id: "audience-engine".into(),
            events_topic: audience_actors::engine::DEFAULT_EVENTS_TOPIC.into(),
            identities_topic: audience_actors::engine::DEFAULT_IDENTITIES_TOPIC.into(),
            deltas_topic: d.deltas_topic,
            dead_letter_topic: d.dead_letter_topic,
            create_topics: true,
            partitions: 4,
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            dead_letter_max_bytes: d.dead_letter_limits.max_record_bytes,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let store = audience_state::store::StoreOptions::default();
        StorageConfig {
            path: PathBuf::from(".data/engine"),
            sync_writes: store.sync_writes,
            cache_bytes: store.cache_bytes,
            write_buffer_bytes: store.write_buffer_bytes,
            mmap_reads: store.mmap_reads,
            downloads_dir: PathBuf::new(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: "127.0.0.1:50051".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            max_message_bytes: 4 * 1024 * 1024,
            max_subscribers_per_token: 32,
            max_subscribers: 256,
            max_calls_per_connection: 64,
            request_timeout_ms: 60_000,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        let d = audience_actors::engine::EngineSettings::default();
        EngineConfig {
            retention_days: 30,
            max_message_bytes: audience_state::batch::DEFAULT_MAX_MESSAGE_BYTES,
            max_batch: 2000,
            max_batch_bytes: 16 * 1024 * 1024,
            threads: 2,
            max_cached_profiles: 10_000,
            timer_tick_ms: 200,
            audiences_dir: None,
            geoip_database: None,
            log_max_events: audience_state::eventlog::LogLimits::default().max_events,
            log_max_bytes: audience_state::eventlog::LogLimits::default().max_bytes,
            backfill_page: 500,
            backfill_pause_ms: 0,
            dead_letter_prefix_bytes: d.dead_letter_limits.prefix_bytes,
            dead_letter_max_kept: d.dead_letter_max_kept,
            max_audiences: d.quotas.audiences,
            max_calculated_attributes: d.quotas.calculated_attributes,
            max_outputs: d.quotas.outputs,
            max_connections: d.quotas.connections,
            max_api_tokens: d.quotas.api_tokens,
        }
    }
}

/// Environment variables that override the file, with the setting each one sets.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("AUDIENCE_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
    ("AUDIENCE_GROUP_ID", "kafka.group_id"),
    ("AUDIENCE_EVENTS_TOPIC", "kafka.events_topic"),
    ("AUDIENCE_IDENTITIES_TOPIC", "kafka.identities_topic"),
    ("AUDIENCE_DELTAS_TOPIC", "kafka.deltas_topic"),
    ("AUDIENCE_DEAD_LETTER_TOPIC", "kafka.dead_letter_topic"),
    ("AUDIENCE_PARTITIONS", "kafka.partitions"),
    ("AUDIENCE_DATA_DIR", "storage.path"),
    ("AUDIENCE_STORE_CACHE_BYTES", "storage.cache_bytes"),
    (
        "AUDIENCE_STORE_WRITE_BUFFER_BYTES",
        "storage.write_buffer_bytes",
    ),
    ("AUDIENCE_STORE_MMAP_READS", "storage.mmap_reads"),
    ("AUDIENCE_DOWNLOADS_DIR", "storage.downloads_dir"),
    ("AUDIENCE_CATALOG_TOPIC", "catalog.topic"),
    ("AUDIENCE_NODE_ID", "catalog.node_id"),
    ("AUDIENCE_CHANGELOG", "cluster.changelog"),
    ("AUDIENCE_CHANGELOG_TOPIC", "cluster.changelog_topic"),
    ("AUDIENCE_SNAPSHOT_DIR", "cluster.snapshot_dir"),
    (
        "AUDIENCE_SNAPSHOT_MAX_AGE_MS",
        "cluster.snapshot_max_age_ms",
    ),
    (
        "AUDIENCE_SNAPSHOT_EVERY_UNITS",
        "cluster.snapshot_every_units",
    ),
    (
        "AUDIENCE_SNAPSHOT_INTERVAL_MS",
        "cluster.snapshot_interval_ms",
    ),
    ("AUDIENCE_TRIM_CHANGELOG", "cluster.trim_changelog"),
    ("AUDIENCE_MEMBERS_TOPIC", "cluster.members_topic"),
    ("AUDIENCE_ADVERTISED_GRPC", "cluster.advertised_grpc"),
    ("AUDIENCE_PEER_CA_FILE", "cluster.peer_ca_file"),
    ("AUDIENCE_STANDBY_REPLICAS", "cluster.standby_replicas"),
    ("AUDIENCE_ASSIGNMENT", "cluster.assignment"),
    ("AUDIENCE_HEARTBEAT_MS", "cluster.heartbeat_ms"),
    ("AUDIENCE_SILENT_AFTER_MS", "cluster.silent_after_ms"),
    ("AUDIENCE_CATALOG_SECRET_KEY", "catalog.secret_key"),
    ("AUDIENCE_GRPC_LISTEN", "grpc.listen"),
    ("AUDIENCE_TLS_CERT", "grpc.tls_cert"),
    ("AUDIENCE_TLS_KEY", "grpc.tls_key"),
    ("AUDIENCE_TLS_CLIENT_CA", "grpc.tls_client_ca"),
    ("AUDIENCE_GRPC_MAX_MESSAGE_BYTES", "grpc.max_message_bytes"),
    (
        "AUDIENCE_MAX_SUBSCRIBERS_PER_TOKEN",
        "grpc.max_subscribers_per_token",
    ),
    ("AUDIENCE_MAX_SUBSCRIBERS", "grpc.max_subscribers"),
    (
        "AUDIENCE_GRPC_MAX_CALLS_PER_CONNECTION",
        "grpc.max_calls_per_connection",
    ),
    (
        "AUDIENCE_GRPC_REQUEST_TIMEOUT_MS",
        "grpc.request_timeout_ms",
    ),
    ("AUDIENCE_TOKENS", "auth.tokens (name=token,name=token)"),
    (
        "AUDIENCE_TOKEN_SCOPES",
        "auth.scopes (name=read+subscribe,name=write)",
    ),
    ("AUDIENCE_TOKENS_FILE", "auth.tokens_file"),
    (
        "AUDIENCE_ALLOW_UNAUTHENTICATED",
        "auth.allow_unauthenticated",
    ),
    ("AUDIENCE_OUTPUTS_ALLOW_PRIVATE", "outputs.allow_private"),
    (
        "AUDIENCE_INPUTS",
        "inputs.input (name@workspace:source=S;name@workspace:topic=T)",
    ),
    ("AUDIENCE_SOURCE_FIELD", "inputs.source_field"),
    ("AUDIENCE_MAX_AUDIENCES", "engine.max_audiences"),
    ("AUDIENCE_MAX_CACHED_PROFILES", "engine.max_cached_profiles"),
    (
        "AUDIENCE_MAX_CALCULATED_ATTRIBUTES",
        "engine.max_calculated_attributes",
    ),
    ("AUDIENCE_MAX_OUTPUTS", "engine.max_outputs"),
    ("AUDIENCE_MAX_CONNECTIONS", "engine.max_connections"),
    ("AUDIENCE_MAX_API_TOKENS", "engine.max_api_tokens"),
    ("AUDIENCE_METRICS_LISTEN", "metrics.listen"),
    ("AUDIENCE_RETENTION_DAYS", "engine.retention_days"),
    ("AUDIENCE_MANUAL_CLOCK", "clock.manual"),
    ("AUDIENCE_MAX_MESSAGE_BYTES", "engine.max_message_bytes"),
    ("AUDIENCE_MAX_BATCH_BYTES", "engine.max_batch_bytes"),
    ("AUDIENCE_AUDIENCES_DIR", "engine.audiences_dir"),
    ("AUDIENCE_GEOIP_DATABASE", "engine.geoip_database"),
    ("AUDIENCE_LOG_MAX_EVENTS", "engine.log_max_events"),
    ("AUDIENCE_LOG_MAX_BYTES", "engine.log_max_bytes"),
    ("AUDIENCE_BACKFILL_PAGE", "engine.backfill_page"),
    ("AUDIENCE_BACKFILL_PAUSE_MS", "engine.backfill_pause_ms"),
    ("AUDIENCE_KAFKA_PROPERTIES", "kafka.properties (k=v,k=v)"),
    (
        "AUDIENCE_KAFKA_PRODUCER_PROPERTIES",
        "kafka.producer_properties (k=v,k=v)",
    ),
    (
        "AUDIENCE_DEAD_LETTER_MAX_BYTES",
        "kafka.dead_letter_max_bytes",
    ),
    (
        "AUDIENCE_DEAD_LETTER_PREFIX_BYTES",
        "engine.dead_letter_prefix_bytes",
    ),
    (
        "AUDIENCE_DEAD_LETTER_MAX_KEPT",
        "engine.dead_letter_max_kept",
    ),
];

impl Config {
    /// Reads the file (if any), then applies the environment.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let mut config: Config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        for (var, _) in ENVIRONMENT {
            if let Ok(value) = std::env::var(var) {
                config.set(var, &value)?;
            }
        }
        Ok(config)
    }

    fn set(&mut self, var: &str, value: &str) -> anyhow::Result<()> {
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{var}={value}: {e}");
        match var {
            "AUDIENCE_BOOTSTRAP_SERVERS" => self.kafka.bootstrap_servers = value.into(),
            "AUDIENCE_GROUP_ID" => self.kafka.group_id = value.into(),
            "AUDIENCE_EVENTS_TOPIC" => self.kafka.events_topic = value.into(),
            "AUDIENCE_IDENTITIES_TOPIC" => self.kafka.identities_topic = value.into(),
            "AUDIENCE_DELTAS_TOPIC" => self.kafka.deltas_topic = value.into(),
            "AUDIENCE_DEAD_LETTER_TOPIC" => self.kafka.dead_letter_topic = value.into(),
            "AUDIENCE_PARTITIONS" => self.kafka.partitions = value.parse().map_err(|e| bad(&e))?,
            "AUDIENCE_DATA_DIR" => self.storage.path = value.into(),
            "AUDIENCE_STORE_CACHE_BYTES" => {
                self.storage.cache_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_STORE_WRITE_BUFFER_BYTES" => {
                self.storage.write_buffer_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_STORE_MMAP_READS" => {
                self.storage.mmap_reads = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_DOWNLOADS_DIR" => self.storage.downloads_dir = value.into(),
            "AUDIENCE_CATALOG_TOPIC" => self.catalog.topic = value.into(),
            "AUDIENCE_NODE_ID" => self.catalog.node_id = value.into(),
            "AUDIENCE_CHANGELOG" => self.cluster.changelog = value.parse().map_err(|e| bad(&e))?,
            "AUDIENCE_CHANGELOG_TOPIC" => self.cluster.changelog_topic = value.into(),
            "AUDIENCE_SNAPSHOT_DIR" => self.cluster.snapshot_dir = value.into(),
            "AUDIENCE_SNAPSHOT_EVERY_UNITS" => {
                self.cluster.snapshot_every_units = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_SNAPSHOT_MAX_AGE_MS" => {
                self.cluster.snapshot_max_age_ms = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_SNAPSHOT_INTERVAL_MS" => {
                self.cluster.snapshot_interval_ms = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_TRIM_CHANGELOG" => {
                self.cluster.trim_changelog = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MEMBERS_TOPIC" => self.cluster.members_topic = value.into(),
            "AUDIENCE_ADVERTISED_GRPC" => self.cluster.advertised_grpc = value.into(),
            "AUDIENCE_PEER_CA_FILE" => self.cluster.peer_ca_file = value.into(),
            "AUDIENCE_STANDBY_REPLICAS" => {
                self.cluster.standby_replicas = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_ASSIGNMENT" => self.cluster.assignment = value.into(),
            "AUDIENCE_HEARTBEAT_MS" => {
                self.cluster.heartbeat_ms = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_SILENT_AFTER_MS" => {
                self.cluster.silent_after_ms = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_CATALOG_SECRET_KEY" => self.catalog.secret_key = value.into(),
            "AUDIENCE_GRPC_LISTEN" => self.grpc.listen = value.into(),
            "AUDIENCE_TLS_CERT" => self.grpc.tls_cert = value.into(),
            "AUDIENCE_TLS_KEY" => self.grpc.tls_key = value.into(),
            "AUDIENCE_TLS_CLIENT_CA" => self.grpc.tls_client_ca = value.into(),
            "AUDIENCE_GRPC_MAX_MESSAGE_BYTES" => {
                self.grpc.max_message_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_SUBSCRIBERS_PER_TOKEN" => {
                self.grpc.max_subscribers_per_token = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_SUBSCRIBERS" => {
                self.grpc.max_subscribers = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_GRPC_MAX_CALLS_PER_CONNECTION" => {
                self.grpc.max_calls_per_connection = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_GRPC_REQUEST_TIMEOUT_MS" => {
                self.grpc.request_timeout_ms = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_TOKENS" => {
                // The variable replaces the file's tokens; its values never reach an error.
                let mut tokens = BTreeMap::new();
                parse_properties(value, &mut tokens).map_err(|_| {
                    anyhow::anyhow!("AUDIENCE_TOKENS: expected name=token,name=token")
                })?;
                self.auth.tokens = tokens;
            }
            "AUDIENCE_TOKEN_SCOPES" => {
                let mut scopes = BTreeMap::new();
                parse_properties(value, &mut scopes).map_err(|e| bad(&e))?;
                self.auth.scopes = scopes;
            }
            "AUDIENCE_TOKENS_FILE" => self.auth.tokens_file = value.into(),
            "AUDIENCE_ALLOW_UNAUTHENTICATED" => {
                self.auth.allow_unauthenticated = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_INPUTS" => self.inputs.input = parse_inputs(value).map_err(|e| bad(&e))?,
            "AUDIENCE_SOURCE_FIELD" => self.inputs.source_field = value.into(),
            "AUDIENCE_MAX_AUDIENCES" => {
                self.engine.max_audiences = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_CACHED_PROFILES" => {
                self.engine.max_cached_profiles = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_CALCULATED_ATTRIBUTES" => {
                self.engine.max_calculated_attributes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_OUTPUTS" => {
                self.engine.max_outputs = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_CONNECTIONS" => {
                self.engine.max_connections = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_API_TOKENS" => {
                self.engine.max_api_tokens = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_OUTPUTS_ALLOW_PRIVATE" => {
                self.outputs.allow_private = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_METRICS_LISTEN" => self.metrics.listen = value.into(),
            "AUDIENCE_RETENTION_DAYS" => {
                self.engine.retention_days = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MANUAL_CLOCK" => self.clock.manual = value.parse().map_err(|e| bad(&e))?,
            "AUDIENCE_MAX_MESSAGE_BYTES" => {
                self.engine.max_message_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_MAX_BATCH_BYTES" => {
                self.engine.max_batch_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_AUDIENCES_DIR" => self.engine.audiences_dir = Some(value.into()),
            "AUDIENCE_GEOIP_DATABASE" => self.engine.geoip_database = Some(value.into()),
            "AUDIENCE_LOG_MAX_EVENTS" => {
                self.engine.log_max_events = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_LOG_MAX_BYTES" => {
                self.engine.log_max_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_BACKFILL_PAGE" => {
                self.engine.backfill_page = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_BACKFILL_PAUSE_MS" => {
                self.engine.backfill_pause_ms = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_KAFKA_PROPERTIES" => {
                parse_properties(value, &mut self.kafka.properties).map_err(|e| bad(&e))?
            }
            "AUDIENCE_KAFKA_PRODUCER_PROPERTIES" => {
                parse_properties(value, &mut self.kafka.producer_properties).map_err(|e| bad(&e))?
            }
            "AUDIENCE_DEAD_LETTER_MAX_BYTES" => {
                self.kafka.dead_letter_max_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_DEAD_LETTER_PREFIX_BYTES" => {
                self.engine.dead_letter_prefix_bytes = value.parse().map_err(|e| bad(&e))?
            }
            "AUDIENCE_DEAD_LETTER_MAX_KEPT" => {
                self.engine.dead_letter_max_kept = value.parse().map_err(|e| bad(&e))?
            }
            _ => {}
        }
        Ok(())
    }

    /// The topics the engine consumes, co-partitioned by MPID: the events and the identities
    /// topics, then each topic an input claims (README: "Workspaces and inputs").
    pub fn input_topics(&self) -> Vec<String> {
        self.inputs
            .read_topics(&self.kafka.events_topic, &self.kafka.identities_topic)
    }

    /// The topics the engine writes, which no input may claim.
    fn engine_writes(&self) -> Vec<String> {
        vec![
            self.kafka.deltas_topic.clone(),
            self.kafka.dead_letter_topic.clone(),
            self.catalog.topic.clone(),
            self.cluster.changelog_topic.clone(),
            self.cluster.members_topic(&self.kafka.group_id),
        ]
    }

    /// The actors' settings; opens the GeoIP database when one is configured.
    pub fn settings(&self) -> anyhow::Result<audience_actors::engine::EngineSettings> {
        let geoip = match &self.engine.geoip_database {
            Some(path) => Some(std::sync::Arc::new(
                audience_actors::geoip::GeoIp::open(path).map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        };
        Ok(audience_actors::engine::EngineSettings {
            input_topics: self.input_topics(),
            deltas_topic: self.kafka.deltas_topic.clone(),
            dead_letter_topic: self.kafka.dead_letter_topic.clone(),
            retention_ms: self.engine.retention_days as i64 * audience_state::model::DAY_MS,
            max_message_bytes: self.engine.max_message_bytes,
            max_cached_profiles: self.engine.max_cached_profiles,
            timer_tick_ms: self.engine.timer_tick_ms,
            log_limits: audience_state::eventlog::LogLimits {
                max_events: self.engine.log_max_events,
                max_bytes: self.engine.log_max_bytes,
            },
            backfill_chunk: self.engine.backfill_page.max(1),
            backfill_pause_ms: self.engine.backfill_pause_ms,
            dead_letter_limits: audience_state::store::DeadLetterLimits {
                max_record_bytes: self.kafka.dead_letter_max_bytes,
                prefix_bytes: self.engine.dead_letter_prefix_bytes,
            },
            dead_letter_max_kept: self.engine.dead_letter_max_kept,
            geoip,
            inputs: std::sync::Arc::new(self.inputs.map(&self.engine_writes())?),
            quotas: audience_actors::engine::Quotas {
                audiences: self.engine.max_audiences,
                calculated_attributes: self.engine.max_calculated_attributes,
                outputs: self.engine.max_outputs,
                connections: self.engine.max_connections,
                api_tokens: self.engine.max_api_tokens,
            },
            source_field: self.inputs.source_path(),
            ..Default::default()
        })
    }
}

/// Reads `k=v,k=v` into `into`.
fn parse_properties(value: &str, into: &mut BTreeMap<String, String>) -> Result<(), String> {
    for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("\"{pair}\" is not key=value"))?;
        into.insert(k.trim().into(), v.trim().into());
    }
    Ok(())
}

/// An audience as kept in a file (`deploy/audiences/*.json`): what `audiencectl audience
/// create` sends and what `engine.audiences_dir` loads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceFile {
    pub name: String,
    #[serde(default)]
    pub external_name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub criteria: serde_json::Value,
    /// Its scope (see `CreateAudienceRequest`).
    #[serde(default)]
    pub workspaces: Vec<String>,
    #[serde(default)]
    pub inputs: Vec<String>,
    /// "private" (the default), "view_only" or "usable": who else sees and uses it.
    #[serde(default)]
    pub access: Option<audience_state::catalog::AudienceAccess>,
}

impl AudienceFile {
    pub fn read(path: &std::path::Path) -> anyhow::Result<AudienceFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests;
