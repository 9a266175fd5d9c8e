//! Wiring of one engine node: store, actors, Kafka, gRPC, metrics, and graceful shutdown.
//! SIGTERM (or Ctrl-C) stops polling, lets the batches in flight commit, drains the publishers
//! and exits cleanly.

use crate::config::{AudienceFile, Config};
use crate::grpc::Services;
use audience_actors::catalog_applier::{CatalogApplier, CatalogSettings};
use audience_actors::changelog_publisher;
use audience_actors::changelog_restore::Restorer;
use audience_actors::changelog_snapshots::{SnapshotPolicy, Snapshotter};
use audience_actors::clock::Clock;
use audience_actors::connector::Connectors;
use audience_actors::delivery::Deliveries;
use audience_actors::engine::Engine;
use audience_actors::ingest::{self, IngestConfig};
use audience_actors::node::Node;
use audience_actors::publisher;
use audience_actors::registry::Registry;
use audience_proto::v1 as pb;
use audience_state::changelog::snapshot::SnapshotRepository;
use audience_state::secrets::SecretKey;
use audience_state::store::Store;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Creates topics on a real cluster, leaving existing ones alone. Returns the topics the
/// cluster refused, with the reason. `properties` are the operator's librdkafka settings
/// (`kafka.properties`: security, SASL, timeouts), as every other client of the node has them:
/// without them a cluster that asks for credentials never answers the admin client.
pub async fn ensure_topics(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<Vec<(String, String)>> {
    let admin: AdminClient<DefaultClientContext> =
        audience_actors::catalog_topic::client_config(bootstrap, properties).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut refused = Vec::new();
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "topic created"),
            Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic exists")
            }
            Err((topic, code)) => refused.push((topic, code.to_string())),
        }
    }
    Ok(refused)
}

/// The input topics share the events topic's partition count (they are co-partitioned by
/// MPID: partition p of each is partition p's state), or the engine does not start: a profile's
/// messages in two partitions would make two profiles. A topic that shows no partition yet
/// (not created) is read once it has them.
fn check_co_partitioned(topics: &[String], partitions: &[i32]) -> anyhow::Result<()> {
    let events = (&topics[0], partitions[0]);
    for (topic, &n) in topics.iter().zip(partitions).skip(1) {
        if n == 0 {
            tracing::warn!(
                topic,
                "an input topic shows no partition: its messages are read once it has"
            );
        } else if events.1 > 0 && n != events.1 {
            anyhow::bail!(
                "input topic {topic} has {n} partitions and the events topic {} has {}: the \
                 input topics are co-partitioned by MPID (partition p of each holds the \
                 messages of partition p's profiles), so they need one count (recreate {topic} \
                 with {} partitions)",
                events.0,
                events.1,
                events.1
            );
        }
    }
    Ok(())
}

/// Creates the audiences of a folder (in file name order) whose names do not exist yet.
async fn load_audiences(registry: &Registry, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("audiences_dir {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    // Listed once: listing the catalog for each file made a restart with 1,000 files clone
    // a million audience records (a second of CPU).
    let mut known: std::collections::HashSet<String> =
        registry.list(&[]).into_iter().map(|a| a.name).collect();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let f: AudienceFile =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if !known.insert(f.name.clone()) {
            continue;
        }
        let spec = audience_actors::registry::AudienceSpec {
            name: f.name,
            external_name: f.external_name,
            criteria: f.criteria,
            tags: f.tags,
            workspaces: f.workspaces,
            inputs: f.inputs,
            access: f.access,
            ab_test: None,
        };
        let record = registry
            .create("", spec, false)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        tracing::info!(audience = record.id, name = %record.name, file = %file.display(), "audience loaded");
    }
    Ok(())
}

/// Every few seconds: audience figures and consumer lag as Prometheus gauges. Labels are
/// bounded: audience ids, topics and partitions, never MPIDs.
async fn export_figures(
    node: Arc<Node>,
    consumer: std::sync::Weak<rdkafka::consumer::StreamConsumer<ingest::IngestContext>>,
    topics: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    use rdkafka::consumer::Consumer;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if let Ok(figures) = node.engine.figures(&[]) {
            for (id, f) in figures {
                let id = id.to_string();
                metrics::gauge!("audience_size", "audience" => id.clone()).set(f.size as f64);
                metrics::gauge!("audience_adds_24h", "audience" => id.clone())
                    .set(f.adds_24h as f64);
                metrics::gauge!("audience_drops_24h", "audience" => id.clone())
                    .set(f.drops_24h as f64);
                metrics::gauge!("audience_volatility_24h", "audience" => id).set(f.volatility_24h);
            }
        }
        let memory = node.engine.store.memory();
        for (part, bytes) in [
            ("block_cache", memory.block_cache),
            ("block_cache_pinned", memory.block_cache_pinned),
            ("memtables", memory.memtables),
            ("table_readers", memory.table_readers),
        ] {
            metrics::gauge!("audience_store_memory_bytes", "part" => part).set(bytes as f64);
        }
        metrics::counter!("audience_state_bytes_written_total")
            .absolute(node.engine.store.partition_bytes_committed());
        let owned = node.owned();
        let store = node.engine.store.clone();
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        let topics = topics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for topic in &topics {
                for &p in &owned {
                    let Ok((_, high)) = consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(2)) else {
                        continue;
                    };
                    let next = store.next_offset(topic, p).ok().flatten().unwrap_or(0);
                    metrics::gauge!("audience_consumer_lag", "topic" => topic.clone(), "partition" => p.to_string())
                        .set((high - next).max(0) as f64);
                }
            }
        })
        .await;
    }
}

/// The key that seals outputs' secrets: the configured one, or this node's own, kept in its
/// data directory (made on first start), which no other node has.
fn secret_key(config: &Config) -> anyhow::Result<SecretKey> {
    if !config.catalog.secret_key.trim().is_empty() {
        return SecretKey::from_hex(&config.catalog.secret_key)
            .map_err(|e| anyhow::anyhow!("catalog.secret_key: {e}"));
    }
    let path = config.storage.path.join("catalog-secret.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return SecretKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = SecretKey::generate();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        file.write_all(key.to_hex().as_bytes())?;
        file.sync_all()?;
    }
    tracing::warn!(
        path = %path.display(),
        "no catalog.secret_key: outputs' secrets are sealed with this node's own key; a \
         cluster needs the same catalog.secret_key on every node"
    );
    Ok(key)
}

/// This node's name in its catalog proposals.
pub(crate) fn node_id(config: &Config) -> String {
    if !config.catalog.node_id.trim().is_empty() {
        return config.catalog.node_id.trim().to_string();
    }
    let port = config.grpc.listen.rsplit(':').next().unwrap_or_default();
    format!("{}:{port}", hostname())
}

/// This machine's name ("node" when unknown).
fn hostname() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "node".to_string()
    } else {
        host
    }
}

/// The gRPC address the other nodes reach this one at (see `cluster.advertised_grpc`).
fn advertised_grpc(config: &Config) -> String {
    let advertised = config.cluster.advertised_grpc.trim();
    if !advertised.is_empty() {
        return advertised.to_string();
    }
    let listen = config.grpc.listen.trim();
    match listen.rsplit_once(':') {
        Some(("" | "0.0.0.0" | "[::]", port)) => format!("{}:{port}", hostname()),
        _ => listen.to_string(),
    }
}

/// How this node calls the others: their CA (`cluster.peer_ca_file`), and where the nodes
/// require client certificates (`grpc.tls_client_ca`), this node's own certificate and key as
/// its client identity.
fn peer_client(config: &Config) -> crate::auth::ClientOptions {
    let file = |f: &str| {
        Some(f.trim())
            .filter(|f| !f.is_empty())
            .map(std::path::PathBuf::from)
    };
    let identity = match (
        file(&config.grpc.tls_client_ca),
        file(&config.grpc.tls_cert),
        file(&config.grpc.tls_key),
    ) {
        (Some(_), Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    crate::auth::ClientOptions {
        token: None,
        ca_file: file(&config.cluster.peer_ca_file),
        identity,
    }
}

/// The server's TLS from `grpc.tls_cert` and `grpc.tls_key` (PEM), when both are set, and
/// with `grpc.tls_client_ca`, mutual TLS: a client without a certificate that CA signed is
/// refused during the handshake.
fn server_tls(
    grpc: &crate::config::GrpcConfig,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (cert, key) = (grpc.tls_cert.trim(), grpc.tls_key.trim());
    if cert.is_empty() && !grpc.tls_client_ca.trim().is_empty() {
        anyhow::bail!(
            "grpc.tls_client_ca (mutual TLS) needs the server's own TLS: set grpc.tls_cert and \
             grpc.tls_key too (AUDIENCE_TLS_CERT, AUDIENCE_TLS_KEY)"
        );
    }
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(None),
        (false, true) | (true, false) => Err(anyhow::anyhow!(
            "grpc.tls_cert and grpc.tls_key go together: set both (AUDIENCE_TLS_CERT, \
             AUDIENCE_TLS_KEY) or neither"
        )),
        (false, false) => {
            let read = |what: &str, path: &str| {
                std::fs::read(path).map_err(|e| anyhow::anyhow!("grpc.{what} {path}: {e}"))
            };
            let identity = tonic::transport::Identity::from_pem(
                read("tls_cert", cert)?,
                read("tls_key", key)?,
            );
            let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
            let client_ca = grpc.tls_client_ca.trim();
            if !client_ca.is_empty() {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
                    "tls_client_ca",
                    client_ca,
                )?));
            }
            Ok(Some(tls))
        }
    }
}

/// The health service's "ready": SERVING once the node holds its partitions restored, NOT
/// SERVING while it waits for its assignment or restores, while a partition is stalled on a
/// store that refuses writes (a full disk; see `Node::ready`), and again once it drains.
async fn report_readiness(
    node: Arc<Node>,
    health: tonic_health::server::HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ready = None;
    loop {
        let now = node.ready() && !*shutdown.borrow();
        if ready != Some(now) {
            let status = if now {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status(READY_SERVICE, status).await;
            tracing::info!(ready = now, "readiness");
            ready = Some(now);
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The health service name of readiness.
pub const READY_SERVICE: &str = "ready";

/// Runs a node until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Who may call is settled before anything starts: an engine that would serve an open API
    // where it must not stops here, in one line.
    let grpc_addr: std::net::SocketAddr = config
        .grpc
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("grpc.listen {}: {e}", config.grpc.listen))?;
    let token_sources = config.auth.sources()?;
    crate::auth::check_exposure(
        grpc_addr,
        token_sources.is_configured(),
        config.auth.allow_unauthenticated,
    )
    .map_err(anyhow::Error::msg)?;
    let authenticator = if token_sources.is_configured() {
        let tokens = token_sources.load().map_err(anyhow::Error::msg)?;
        tracing::info!(names = ?tokens.names(), "API calls need one of these bearer tokens");
        crate::auth::Authenticator::with_tokens(tokens)
    } else {
        tracing::warn!(
            "auth.allow_unauthenticated: every process of this host may call the API \
             (development only)"
        );
        crate::auth::Authenticator::open()
    };
    let tls = server_tls(&config.grpc)?;
    if tls.is_none() && !grpc_addr.ip().is_loopback() {
        tracing::warn!(
            %grpc_addr,
            "no TLS (grpc.tls_cert, grpc.tls_key): tokens cross the network in clear text"
        );
    }
    if !config.metrics.listen.is_empty() {
        let addr: std::net::SocketAddr = config
            .metrics
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("metrics.listen {}: {e}", config.metrics.listen))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()?;
        tracing::info!(%addr, "prometheus metrics at /metrics");
    }

    // The topics consumed (events, identities, and those inputs claim), in the order every
    // reader of offsets takes them.
    let input_topics = config.input_topics();
    // The embedded broker lives as long as the node: demos only, never for real data.
    let mut _embedded = None;
    let bootstrap = if config.kafka.bootstrap_servers == "embedded" {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        for t in input_topics
            .iter()
            .chain([&config.kafka.deltas_topic, &config.kafka.dead_letter_topic])
        {
            cluster.create_topic(t, config.kafka.partitions, 1)?;
        }
        cluster.create_topic(&config.catalog.topic, 1, 1)?;
        cluster.create_topic(&config.cluster.changelog_topic, config.kafka.partitions, 1)?;
        cluster.create_topic(&config.cluster.members_topic(&config.kafka.group_id), 1, 1)?;
        let servers = cluster.bootstrap_servers();
        tracing::warn!(%servers, "using the embedded in-process Kafka mock cluster (demo only)");
        _embedded = Some(cluster);
        servers
    } else {
        if config.kafka.create_topics {
            // A cluster may refuse (replication policy, ACLs) topics an operator creates
            // otherwise: say so and go on; a topic really missing shows as consumer errors.
            let topics: Vec<&str> = input_topics
                .iter()
                .chain([&config.kafka.deltas_topic, &config.kafka.dead_letter_topic])
                .map(String::as_str)
                .collect();
            let refused = ensure_topics(
                &config.kafka.bootstrap_servers,
                &config.kafka.properties,
                &topics,
                config.kafka.partitions,
            )
            .await?;
            for (topic, reason) in refused {
                tracing::warn!(topic, reason, "could not create topic");
            }
        }
        config.kafka.bootstrap_servers.clone()
    };

    std::fs::create_dir_all(&config.storage.path)?;
    let store = Arc::new(Store::open_with(
        &config.storage.path,
        &config.storage.store_options(),
    )?);
    let clock = Arc::new(Clock::new(config.clock.manual));
    let engine = Engine::new(store.clone(), clock, config.settings()?)?;
    if config.cluster.changelog {
        // Every write of partition state is a unit of its changelog, and only partitions this
        // node claimed are written: the publishers start with none (not the store's).
        store.log_partition_writes();
        engine.partitions.lock().clear();
    }
    let node = Node::start(engine.clone(), config.engine.threads)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let self_assigned = config.cluster.self_assigned()?;
    // The node's tombstone on the members topic: at shutdown, after what it holds is handed
    // over when the engine assigns the partitions.
    let (announce_stop, announce_stop_rx) = watch::channel(false);

    // The catalog is read to its end before anything is served or consumed.
    let secret_key = secret_key(&config)?;
    let guard = audience_actors::network_guard::NetworkGuard {
        allow_private: config.outputs.allow_private,
    };
    let deliveries = Arc::new(Deliveries::new(secret_key.clone(), guard));
    let catalog = CatalogApplier::start(
        node.clone(),
        deliveries.clone(),
        CatalogSettings {
            bootstrap: bootstrap.clone(),
            properties: config.kafka.properties.clone(),
            topic: config.catalog.topic.clone(),
            replication: config.catalog.replication_factor,
            node_id: node_id(&config),
            secret_key,
            apply_timeout: Duration::from_millis(config.catalog.apply_timeout_ms.max(1)),
            topic_made: _embedded.is_some(),
        },
        shutdown_rx.clone(),
    )
    .await?;
    let registry = Arc::new(Registry::new(node.clone(), catalog.clone()));
    // Partition p's deltas go to the deltas topic's partition p when it has one for each
    // input partition: what a cluster's subscriptions read (from any node, every partition).
    let deltas_topic = audience_actors::deltas_tail::DeltasTopic {
        kafka: audience_actors::catalog_topic::client_config(&bootstrap, &config.kafka.properties),
        topic: config.kafka.deltas_topic.clone(),
    };
    let (input_partitions, deltas_partitions) = {
        let topic = deltas_topic.clone();
        let inputs = input_topics.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<i32>, i32)> {
            use audience_actors::catalog_topic::partition_count;
            use rdkafka::consumer::Consumer;
            let consumer = topic.consumer().map_err(anyhow::Error::msg)?;
            let mut counts = (Vec::new(), 0);
            // A topic just created may take a moment to show its partitions.
            for _ in 0..50 {
                counts.0 = inputs
                    .iter()
                    .map(|t| partition_count(consumer.client(), t))
                    .collect::<Result<_, _>>()?;
                counts.1 = partition_count(consumer.client(), &topic.topic)?;
                if counts.0.iter().all(|&n| n > 0) && counts.1 > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(counts)
        })
        .await??
    };
    let events_partitions = input_partitions[0];
    check_co_partitioned(&input_topics, &input_partitions)?;
    let deltas_by_partition = events_partitions > 0 && deltas_partitions >= events_partitions;
    if !deltas_by_partition {
        let why = format!(
            "the deltas topic {} has {deltas_partitions} partitions and the events topic \
             {events_partitions}: partition p's deltas go to the deltas topic's partition p only \
             when it has one for each input partition",
            config.kafka.deltas_topic,
        );
        if config.cluster.changelog {
            anyhow::bail!("{why}; a cluster's subscriptions read them there (recreate it)");
        }
        tracing::warn!("{why}; they are spread by MPID instead");
    }
    let connectors = Arc::new(if config.cluster.changelog {
        Connectors::over_deltas_topic(deltas_topic)
    } else {
        Connectors::default()
    });
    if let Some(dir) = &config.engine.audiences_dir {
        load_audiences(&registry, dir).await?;
    }

    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        // One request in flight per connection: retries cannot reorder deltas of the topic.
        .set("max.in.flight.requests.per.connection", "1");
    for (k, v) in config
        .kafka
        .properties
        .iter()
        .chain(&config.kafka.producer_properties)
    {
        producer_config.set(k, v);
    }
    let producer: FutureProducer = producer_config.create()?;
    let publisher_task = tokio::spawn(publisher::run(
        engine.clone(),
        producer,
        deltas_by_partition,
        shutdown_rx.clone(),
    ));

    // Every unit of a partition's state goes to the changelog, when it is on; an assigned
    // partition is restored from it before it is consumed.
    // The changelog publisher stops last: after the revoke (see below).
    let (changelog_shutdown, changelog_shutdown_rx) = watch::channel(false);
    let (changelog_task, restore, restored) = if config.cluster.changelog {
        let kafka =
            audience_actors::catalog_topic::client_config(&bootstrap, &config.kafka.properties);
        if _embedded.is_none() {
            changelog_publisher::ensure_changelog_topic(
                &kafka,
                &config.cluster.changelog_topic,
                config.kafka.partitions,
                config.catalog.replication_factor,
            )
            .await?;
        }
        let task = tokio::spawn(changelog_publisher::run(
            engine.clone(),
            changelog_publisher::producer(&kafka)?,
            kafka.clone(),
            config.cluster.changelog_topic.clone(),
            changelog_shutdown_rx.clone(),
        ));
        let snapshots = (!config.cluster.snapshot_dir.is_empty())
            .then(|| SnapshotRepository::new(&config.cluster.snapshot_dir));
        if let Some(repository) = &snapshots {
            let policy = SnapshotPolicy {
                every_units: config.cluster.snapshot_every_units.max(1),
                max_age: Duration::from_millis(config.cluster.snapshot_max_age_ms),
                keep: config.cluster.snapshots_kept.max(1),
                interval: Duration::from_millis(config.cluster.snapshot_interval_ms.max(10)),
                trim_changelog: config.cluster.trim_changelog,
            };
            let snapshotter = Arc::new(Snapshotter::new(
                engine.clone(),
                repository.clone(),
                node_id(&config),
                policy,
                &kafka,
                config.cluster.changelog_topic.clone(),
            )?);
            tokio::spawn(snapshotter.run(changelog_shutdown_rx.clone()));
        }
        let (restored_tx, restored_rx) = tokio::sync::mpsc::unbounded_channel();
        let restorer = Arc::new(Restorer::new(
            engine.clone(),
            kafka,
            config.cluster.changelog_topic.clone(),
            node_id(&config),
            snapshots,
        )?);
        let hook = ingest::RestoreHook {
            restorer: restorer.clone(),
            runtime: tokio::runtime::Handle::current(),
            restored: restored_tx,
        };
        (Some(task), Some(hook), Some(restored_rx))
    } else {
        (None, None, None)
    };

    // Every node announces itself on the members topic, which `audiencectl cluster` reads.
    let members = audience_actors::cluster_view::MembersTopic {
        kafka: audience_actors::catalog_topic::client_config(&bootstrap, &config.kafka.properties),
        topic: config.cluster.members_topic(&config.kafka.group_id),
    };
    if _embedded.is_none() {
        if let Err(e) = members.ensure().await {
            tracing::warn!(error = %e, "members topic: audiencectl cluster will not see this node");
        }
    }
    // Any node exports the cluster's figures (owners, restores, lag) as metrics.
    tokio::spawn(
        members
            .clone()
            .export(input_topics.clone(), shutdown_rx.clone()),
    );
    // With standby replicas, this node keeps warm copies of partitions others own.
    let standby = Arc::new(audience_actors::standby::StandbySet::default());
    let silent_after = Duration::from_millis(config.cluster.silent_after_ms);
    if let (Some(hook), true) = (&restore, config.cluster.standby_replicas > 0) {
        use audience_actors::standby::Placement;
        let placement = if self_assigned {
            Placement::engine(silent_after)
        } else {
            Placement::range_group(silent_after)
        };
        tokio::spawn(audience_actors::standby::stand_by(
            node.clone(),
            hook.restorer.clone(),
            members.clone(),
            node_id(&config),
            (
                config.cluster.standby_replicas,
                events_partitions.max(0) as u32,
                placement,
            ),
            standby.clone(),
            shutdown_rx.clone(),
        ));
    }
    let announce_now = Arc::new(tokio::sync::Notify::new());
    let facts = audience_actors::cluster_view::NodeFacts {
        node_id: node_id(&config),
        grpc: advertised_grpc(&config),
        input_topics: input_topics.clone(),
    };
    tokio::spawn(members.clone().announce(
        node.clone(),
        facts,
        {
            let catalog = catalog.clone();
            move || catalog.status().applied_offset.unwrap_or(-1)
        },
        move || standby.partitions(),
        (
            Duration::from_millis(config.cluster.heartbeat_ms.max(1)),
            announce_now.clone(),
        ),
        announce_stop_rx,
    ));

    let ingest_config = IngestConfig {
        bootstrap_servers: bootstrap.clone(),
        group_id: config.kafka.group_id.clone(),
        client_id: node_id(&config),
        topics: input_topics.clone(),
        max_batch: config.engine.max_batch,
        max_batch_bytes: config.engine.max_batch_bytes,
        self_assigned,
        properties: config.kafka.properties.clone(),
    };
    // Assigned by the engine, the restores are started by its assignment loop, not by the
    // consumer's rebalances (it never joins the group).
    let (restore, self_restore) = if self_assigned {
        (None, restore)
    } else {
        (restore, None)
    };
    let consumer = Arc::new(ingest::consumer(&ingest_config, node.clone(), restore)?);
    if let Some(hook) = self_restore {
        let assignment = audience_actors::self_assignment::SelfAssignment {
            node: node.clone(),
            node_id: node_id(&config),
            consumer: consumer.clone(),
            restore: hook,
            partitions: events_partitions.max(0) as u32,
            look_every: Duration::from_millis(config.cluster.heartbeat_ms.max(1)),
            silent_after,
            announce_now: announce_now.clone(),
        };
        let tail = {
            let members = members.clone();
            tokio::task::spawn_blocking(move || members.tail())
                .await?
                .map_err(anyhow::Error::msg)?
        };
        tokio::spawn(assignment.run(tail, shutdown_rx.clone()));
    }
    let ingest_task = tokio::spawn(ingest::run(
        consumer.clone(),
        node.clone(),
        ingest_config,
        restored,
        shutdown_rx.clone(),
    ));

    let outputs = Arc::new(audience_actors::output_registry::OutputRegistry::new(
        node.clone(),
        deliveries,
        catalog.clone(),
    ));
    let peers = Arc::new(crate::peers::Peers::new(
        members.clone(),
        node_id(&config),
        config.kafka.events_topic.clone(),
        config.cluster.changelog,
        (
            !config.grpc.tls_cert.trim().is_empty(),
            peer_client(&config),
        ),
        silent_after,
    ));
    let output_services = crate::grpc_outputs::OutputServices {
        outputs: outputs.clone(),
        node: node.clone(),
        peers: peers.clone(),
    };
    // The catalog's API tokens are accepted beside the configuration's.
    let authenticator = if authenticator.is_open() {
        authenticator
    } else {
        let engine = node.engine.clone();
        let clock = engine.clock.clone();
        let tokens = crate::api_tokens::CatalogTokens::new(
            move || engine.api_tokens.load_full(),
            move || clock.now(),
        );
        authenticator.with_catalog(move |presented| tokens.check(presented))
    };
    let services = Services {
        auth: authenticator.clone(),
        node: node.clone(),
        registry,
        outputs,
        connectors,
        catalog,
        bootstrap_servers: bootstrap.clone(),
        members: members.clone(),
        group_id: config.kafka.group_id.clone(),
        input_topics: input_topics.clone(),
        peers,
        scans: crate::scan_gate::ScanGate::new(crate::scan_gate::MAX_CONCURRENT_SCANS),
        subscriber_slots: crate::subscriber_slots::SubscriberSlots::new(
            config.grpc.max_subscribers_per_token,
            config.grpc.max_subscribers,
        ),
    };
    let download_services = crate::downloads::DownloadServices {
        services: services.clone(),
        downloads: Arc::new(crate::downloads::Downloads::new(
            config.storage.downloads(),
        )?),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::audience_service_server::AudienceServiceServer<Services>>()
        .await;
    health_reporter
        .set_serving::<pb::membership_service_server::MembershipServiceServer<Services>>()
        .await;
    // Readiness (a Kubernetes gRPC probe on service "ready", no token needed): the node has
    // its partitions and has restored them all.
    tokio::spawn(report_readiness(
        node.clone(),
        health_reporter.clone(),
        shutdown_rx.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let addr = grpc_addr;
    authenticator.watch_file(token_sources, shutdown_rx.clone());
    let auth = authenticator;
    let mut grpc_shutdown = shutdown_rx.clone();
    let max_message = config.grpc.max_message_bytes;
    // A client cannot hold more than its share of the server (review R4): its calls in flight
    // are bounded per connection, and every call by time.
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(config.grpc.max_calls_per_connection.max(1))
        .timeout(Duration::from_millis(config.grpc.request_timeout_ms.max(1)));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("grpc.tls_cert, grpc.tls_key: {e}"))?;
    }
    // One check for every call (crate::auth::AuthLayer): health answers anyone (probes),
    // reflection any valid token, every other method the token's scopes allow.
    let grpc = builder
        .layer(crate::auth::AuthLayer(auth))
        .layer(crate::message_limit::MessageLimitLayer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::audience_service_server::AudienceServiceServer::new(services.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::membership_service_server::MembershipServiceServer::new(services.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::profile_service_server::ProfileServiceServer::new(services.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::output_service_server::OutputServiceServer::new(output_services)
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::download_service_server::DownloadServiceServer::new(download_services)
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(services)
                .max_decoding_message_size(max_message),
        )
        .serve_with_shutdown(addr, async move {
            let _ = grpc_shutdown.changed().await;
        });
    let grpc_task = tokio::spawn(grpc);
    tokio::spawn(export_figures(
        node.clone(),
        Arc::downgrade(&consumer),
        input_topics.clone(),
        shutdown_rx.clone(),
    ));
    tracing::info!(%addr, bootstrap = %bootstrap, "audience engine ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ingest_task = ingest_task;
    let ingest_result = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); None }
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: draining"); None }
        r = &mut ingest_task => Some(r),
    };
    let _ = shutdown_tx.send(true);
    let ingest_result = match ingest_result {
        Some(r) => r,
        None => ingest_task.await,
    };
    if self_assigned {
        // Handed over before the tombstone: the next owners restore what this node wrote.
        let (consumer, node) = (consumer.clone(), node.clone());
        tokio::task::block_in_place(move || {
            audience_actors::self_assignment::SelfAssignment::hand_over_all(&consumer, &node)
        });
    }
    let _ = announce_stop.send(true);
    // What the last batches wrote leaves before the consumer closes: the revoke takes the
    // partitions from the publishers' lists (their outbox is the next owner's).
    let _ = tokio::time::timeout(Duration::from_secs(10), publisher_task).await;
    // Kafka's group offsets are advisory; commit them once more for lag tooling.
    let _ = rdkafka::consumer::Consumer::commit_consumer_state(
        consumer.as_ref(),
        rdkafka::consumer::CommitMode::Sync,
    );
    // Closing the consumer leaves the group now (no session timeout for the next owner) and
    // releases the partition actors through the revoke callback.
    let mut consumer = consumer;
    for _ in 0..50 {
        match Arc::try_unwrap(consumer) {
            Ok(last) => {
                tokio::task::block_in_place(move || drop(last));
                break;
            }
            // The figures task may hold it for a moment.
            Err(shared) => {
                consumer = shared;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The changelog publisher outlives the revoke, which waits until the partitions' units
    // are on the topic for their next owner.
    let _ = changelog_shutdown.send(true);
    if let Some(task) = changelog_task {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
    store.flush()?;
    tracing::info!("audience engine stopped");
    match ingest_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("ingestion task failed: {e}")),
    }
}
