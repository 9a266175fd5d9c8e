//! Harness for the end-to-end tests: a real tansu broker process, the real engine binary, and
//! clients that talk to them as users would (rdkafka producer, tonic gRPC clients).
//!
//! Each test gets its own broker on a free port and its own data directories, so tests run in
//! parallel and a `kill -9` of an engine is real.

pub mod bench;
pub mod chaos;
pub mod mmdb;
pub mod webhook;
pub mod workspaces;

use audience_proto::v1 as pb;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use anyhow::Result;
/// A channel to an engine that sends the engine's token with every call (tokens are on in
/// every end-to-end test, as in a deployment).
pub use audience_services::auth::AuthChannel as Channel;
use audience_services::auth::ClientOptions;

/// The API token every engine of the tests accepts (`e2e`): a deployment's nodes share their
/// tokens, as a node asks the others for their partitions with its caller's token.
pub const CLUSTER_TOKEN: &str = "e2e-cluster-4b1d0c2e9a7f";

/// The outputs' secret key every node of a test cluster shares (`catalog.secret_key`).
pub const CLUSTER_KEY: &str = "5f0e3c9a1b2d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

/// A plain HTTP/1.0 GET on 127.0.0.1: the whole answer, status line and headers included.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A benchmark's setting: the environment variable `key` as a number, or `default`.
pub fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Directory of the workspace's binaries: tests run from `<target>/release/deps`, the bench
/// from `<target>/release`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/release").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/release").to_path_buf()
    } else {
        dir
    }
}

/// The engine binary of this build, or `AUDIENCE_ENGINE_BINARY` (to measure another build
/// with the same tests).
pub fn engine_binary() -> PathBuf {
    let path = std::env::var_os("AUDIENCE_ENGINE_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().join("audience-engine"));
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`make test` does)",
        path.display()
    );
    path
}

/// A tansu broker process, killed on drop.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    port: u16,
    /// Where a durable broker keeps its data (its working directory); `None`: in memory.
    dir: Option<PathBuf>,
}

impl Broker {
    /// A broker that keeps its topics in memory: gone when it stops.
    pub fn start() -> Result<Broker> {
        Broker::launch(free_port(), None)
    }

    /// A broker that keeps its topics in a SQLite file under `dir`, so that it can be killed
    /// and started again with its data ([`Broker::restart`]).
    pub fn start_durable(dir: &Path) -> Result<Broker> {
        std::fs::create_dir_all(dir)?;
        Broker::launch(free_port(), Some(dir.to_path_buf()))
    }

    /// `kill -9` of the broker process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on its port, with its data when it is durable.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        // The old value's drop reaps a process that is already gone.
        *self = Broker::launch(self.port, self.dir.clone())?;
        Ok(())
    }

    fn launch(port: u16, dir: Option<PathBuf>) -> Result<Broker> {
        let url = format!("tcp://127.0.0.1:{port}");
        let tansu = which("tansu").ok_or_else(|| {
            anyhow::anyhow!("tansu is not installed: run `make setup` (cargo install tansu)")
        })?;
        // tansu reads a sqlite:// path from its working directory.
        let storage = if dir.is_some() {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let mut command = Command::new(tansu);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &dir {
            command.current_dir(dir);
        }
        let child = command.spawn()?;
        let broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("tansu did not listen on {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in admin
            .create_topics(new.iter(), &AdminOptions::new())
            .await?
        {
            if let Err((t, code)) = r {
                if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    anyhow::bail!("creating {t}: {code}");
                }
            }
        }
        Ok(())
    }

    /// Deletes topics and their records (a topic made again with the name starts empty, at
    /// offset 0).
    pub async fn delete_topics(&self, topics: &[&str]) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        for r in admin.delete_topics(topics, &AdminOptions::new()).await? {
            if let Err((t, code)) = r {
                anyhow::bail!("deleting {t}: {code}");
            }
        }
        Ok(())
    }

    /// Creates a deployment's input and output topics (the engine creates its catalog and
    /// changelog topics itself).
    pub async fn create_deployment_topics(&self, topics: &Topics, partitions: i32) -> Result<()> {
        self.create_topics(
            &[
                &topics.events,
                &topics.identities,
                &topics.deltas,
                &topics.dead_letters,
            ],
            partitions,
        )
        .await
    }

    pub fn producer(&self) -> Result<FutureProducer> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .create()?)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists())
}

/// Topic names of one engine deployment.
#[derive(Clone, Debug)]
pub struct Topics {
    pub events: String,
    pub identities: String,
    pub deltas: String,
    pub dead_letters: String,
    /// The catalog topic (definitions shared by every node of the deployment).
    pub catalog: String,
}

impl Topics {
    pub fn unique(prefix: &str) -> Topics {
        Topics {
            events: format!("{prefix}-events"),
            identities: format!("{prefix}-identities"),
            deltas: format!("{prefix}-deltas"),
            dead_letters: format!("{prefix}-dead-letters"),
            catalog: format!("{prefix}-catalog"),
        }
    }
}

/// An engine process.
pub struct Engine {
    child: Option<Child>,
    /// `http://127.0.0.1:port`, or `https://` when the engine has `AUDIENCE_TLS_CERT`.
    pub grpc: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// What the harness's clients connect with: the engine's own token (`AUDIENCE_TOKENS`
    /// `e2e=...` unless a test sets its own) and, for TLS, the CA file a test sets.
    pub client: ClientOptions,
    env: Vec<(String, String)>,
}

impl Engine {
    pub fn start(broker: &Broker, topics: &Topics, data_dir: &Path, group: &str) -> Result<Engine> {
        Engine::start_with(broker, topics, data_dir, group, &[])
    }

    /// A node of a cluster of one deployment, in `group`: the changelog on (its topic named
    /// after the events topic), node id `id`, its data under `dir/id`.
    pub fn start_node(
        broker: &Broker,
        topics: &Topics,
        dir: &Path,
        group: &str,
        id: &str,
    ) -> Result<Engine> {
        Engine::start_node_with(broker, topics, dir, group, id, &[])
    }

    /// [`Engine::start_node`] with extra environment variables (configuration overrides).
    pub fn start_node_with(
        broker: &Broker,
        topics: &Topics,
        dir: &Path,
        group: &str,
        id: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Engine> {
        let changelog_topic = format!("{}-changelog", topics.events);
        let mut env = vec![
            ("AUDIENCE_CHANGELOG", "true"),
            ("AUDIENCE_CHANGELOG_TOPIC", changelog_topic.as_str()),
            ("AUDIENCE_NODE_ID", id),
            ("AUDIENCE_CATALOG_SECRET_KEY", CLUSTER_KEY),
        ];
        env.extend_from_slice(extra_env);
        Engine::start_with(broker, topics, &dir.join(id), group, &env)
    }

    /// Starts an engine with extra environment variables (configuration overrides).
    pub fn start_with(
        broker: &Broker,
        topics: &Topics,
        data_dir: &Path,
        group: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Engine> {
        let port = free_port();
        let token = CLUSTER_TOKEN.to_string();
        let mut env: Vec<(String, String)> = vec![
            (
                "AUDIENCE_BOOTSTRAP_SERVERS".into(),
                broker.bootstrap.clone(),
            ),
            ("AUDIENCE_GROUP_ID".into(), group.to_string()),
            ("AUDIENCE_EVENTS_TOPIC".into(), topics.events.clone()),
            (
                "AUDIENCE_IDENTITIES_TOPIC".into(),
                topics.identities.clone(),
            ),
            ("AUDIENCE_DELTAS_TOPIC".into(), topics.deltas.clone()),
            (
                "AUDIENCE_DEAD_LETTER_TOPIC".into(),
                topics.dead_letters.clone(),
            ),
            ("AUDIENCE_CATALOG_TOPIC".into(), topics.catalog.clone()),
            ("AUDIENCE_DATA_DIR".into(), data_dir.display().to_string()),
            ("AUDIENCE_GRPC_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("AUDIENCE_METRICS_LISTEN".into(), String::new()),
            ("AUDIENCE_MANUAL_CLOCK".into(), "true".into()),
            ("AUDIENCE_TOKENS".into(), format!("e2e={token}")),
            // The tests' receivers listen on 127.0.0.1.
            ("AUDIENCE_OUTPUTS_ALLOW_PRIVATE".into(), "true".into()),
            ("AUDIENCE_PARTITIONS".into(), "2".into()),
            (
                "AUDIENCE_KAFKA_PROPERTIES".into(),
                "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
            ),
        ];
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        // `AUDIENCE_E2E_ASSIGNMENT=engine cargo test` runs the tests of nodes with the
        // changelog with their partitions assigned by the engine (a test's own setting wins).
        let changelog = env
            .iter()
            .any(|(k, v)| k == "AUDIENCE_CHANGELOG" && v == "true");
        if let (true, Ok(assignment)) = (changelog, std::env::var("AUDIENCE_E2E_ASSIGNMENT")) {
            if !env.iter().any(|(k, _)| k == "AUDIENCE_ASSIGNMENT") {
                env.push(("AUDIENCE_ASSIGNMENT".into(), assignment));
            }
        }
        // The token this harness presents: the `e2e` one the engine is given.
        let token = env
            .iter()
            .find(|(k, _)| k == "AUDIENCE_TOKENS")
            .and_then(|(_, v)| v.split(',').find_map(|pair| pair.strip_prefix("e2e=")))
            .map_or(token, str::to_string);
        let scheme = if env
            .iter()
            .any(|(k, v)| k == "AUDIENCE_TLS_CERT" && !v.is_empty())
        {
            "https"
        } else {
            "http"
        };
        let mut engine = Engine {
            child: None,
            grpc: format!("{scheme}://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension("log"),
            client: ClientOptions {
                token: Some(token),
                ..ClientOptions::default()
            },
            env,
        };
        engine.spawn()?;
        Ok(engine)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(engine_binary())
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the gRPC server answers and the node owns partitions.
    pub async fn ready(&mut self) -> Result<Channel> {
        self.answering(true).await
    }

    /// Waits until the gRPC server answers, whether or not the node owns a partition (a node
    /// that joined a group whose partitions are all taken).
    pub async fn serving(&mut self) -> Result<Channel> {
        self.answering(false).await
    }

    async fn answering(&mut self, with_partitions: bool) -> Result<Channel> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("engine exited with {status}; log:\n{}", self.log_text());
                }
            }
            if let Ok(ch) = self.client.connect(&self.grpc).await {
                let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
                if let Ok(s) = admin.get_engine_status(pb::GetEngineStatusRequest {}).await {
                    if !with_partitions || !s.into_inner().partitions.is_empty() {
                        return Ok(ch);
                    }
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("engine not ready within 60 s; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `audiencectl` pointed at this engine, with its token (and CA file, for TLS).
    pub fn ctl(&self) -> Command {
        let mut c = Command::new(bin_dir().join("audiencectl"));
        c.env("AUDIENCE_SERVER", &self.grpc)
            .env_remove("AUDIENCE_TOKEN")
            .env_remove("AUDIENCE_CA_FILE")
            .env_remove("AUDIENCE_CLIENT_CERT")
            .env_remove("AUDIENCE_CLIENT_KEY");
        if let Some(token) = &self.client.token {
            c.env("AUDIENCE_TOKEN", token);
        }
        if let Some(ca) = &self.client.ca_file {
            c.env("AUDIENCE_CA_FILE", ca);
        }
        if let Some((cert, key)) = &self.client.identity {
            c.env("AUDIENCE_CLIENT_CERT", cert)
                .env("AUDIENCE_CLIENT_KEY", key);
        }
        c
    }

    /// The engine binary with this engine's configuration, for its offline commands
    /// (`verify`, `rebuild`) on its data directory.
    pub fn offline(&self) -> Command {
        let mut c = Command::new(engine_binary());
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// Waits for the process to exit by itself (an engine that refuses to start).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                anyhow::bail!("engine still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, if it has (without waiting); `None` while it runs.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the engine's process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("the engine is not running"))?
            .to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`Engine::log_text`] without its terminal colours, so that fields read `name=value`.
    pub fn plain_log_text(&self) -> String {
        without_colours(&self.log_text())
    }

    /// `kill -9`: no drain, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: returns the exit code.
    pub fn terminate(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("engine did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `text` without its terminal escape sequences (each runs to its final letter).
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<(i32, i64)> {
    let d = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
    Ok((d.partition, d.offset))
}

pub async fn produce_json(
    producer: &FutureProducer,
    topic: &str,
    batch: &serde_json::Value,
) -> Result<(i32, i64)> {
    let key = batch["mpid"].to_string();
    produce(producer, topic, &key, batch.to_string().as_bytes()).await
}

/// Converts a JSON object to the protobuf `Struct` the audience API takes.
pub fn criteria(v: serde_json::Value) -> prost_types::Struct {
    audience_services::convert::json_to_struct(&v)
}

pub async fn create_audience(
    ch: &Channel,
    name: &str,
    crit: serde_json::Value,
) -> Result<pb::Audience> {
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    Ok(client
        .create_audience(pb::CreateAudienceRequest {
            name: name.into(),
            criteria: Some(criteria(crit)),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Connects an audience to an output (sending, no shared attributes).
pub async fn connect(ch: &Channel, audience_id: u64, output_id: u64) -> Result<pb::Connection> {
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    Ok(outputs
        .create_connection(pb::Connection {
            audience_id,
            output_id,
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Subscribes and collects deltas until `until` holds for the collected list, or times out.
pub async fn collect_deltas(
    ch: &Channel,
    audience_ids: Vec<u64>,
    cursor: &str,
    timeout: Duration,
    until: impl Fn(&[pb::MembershipDelta]) -> bool,
) -> Result<Vec<pb::MembershipDelta>> {
    let mut client = pb::membership_service_client::MembershipServiceClient::new(ch.clone());
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            audience_ids,
            cursor: cursor.into(),
            subscriber_name: "test".into(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !until(&out) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(d))) => out.push(d),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        }
    }
    Ok(out)
}

pub async fn profile(ch: &Channel, mpid: i64) -> Result<pb::Profile> {
    let mut client = pb::profile_service_client::ProfileServiceClient::new(ch.clone());
    Ok(client
        .get_profile(pb::GetProfileRequest { mpid })
        .await?
        .into_inner())
}

pub async fn advance_clock(ch: &Channel, millis: i64) -> Result<i64> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    Ok(admin
        .advance_clock(pb::AdvanceClockRequest { millis })
        .await?
        .into_inner()
        .now_ms)
}

pub async fn engine_now(ch: &Channel) -> Result<i64> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    Ok(admin
        .get_clock(pb::GetClockRequest {})
        .await?
        .into_inner()
        .now_ms)
}

pub async fn status(ch: &Channel) -> Result<pb::EngineStatus> {
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    Ok(admin
        .get_engine_status(pb::GetEngineStatusRequest {})
        .await?
        .into_inner())
}

/// The distinct delta ids the deltas topic holds, sorted (what a receiver has after dedupe).
pub fn distinct_delta_ids(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<String>> {
    let mut ids: Vec<String> = read_topic(bootstrap, topic, partitions)?
        .iter()
        .map(|d| d["delta_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A profile's memberships as (audience, version), as the node behind `ch` answers.
pub async fn memberships(ch: &Channel, mpid: i64) -> Result<Vec<(u64, u64)>> {
    Ok(profile(ch, mpid)
        .await?
        .audiences
        .iter()
        .map(|m| (m.audience_id, m.version))
        .collect())
}

/// Every record of the topic's first `partitions` partitions, as JSON ([`read_whole_topic`]).
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<serde_json::Value>> {
    Ok(read_topic_partitions(bootstrap, topic, partitions)?
        .into_iter()
        .map(|(_, record)| record)
        .collect())
}

/// [`read_topic`], each record with the partition it was on.
pub fn read_topic_partitions(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, serde_json::Value)>> {
    read_whole_topic(bootstrap, topic)?
        .into_iter()
        .filter(|r| r.partition < partitions)
        .map(|r| Ok((r.partition, serde_json::from_slice(&r.payload)?)))
        .collect()
}

/// One record of a topic, as read back.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Every record of `topic` up to its end, each partition in offset order: up to the end it
/// reports and on until a second passes with no record, and with no record skipped.
pub fn read_whole_topic(bootstrap: &str, topic: &str) -> Result<Vec<TopicRecord>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use std::collections::BTreeMap;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("topic-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "4000000")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    let mut starts = BTreeMap::new();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        ends.insert(*p, high);
        starts.insert(*p, low);
        assignment.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)?;
    }
    let mut out = Vec::new();
    consumer.assign(&assignment)?;
    // Per partition, the offset of the next record to read.
    let mut read: BTreeMap<i32, i64> = starts;
    // Tries in a row at reading a partition's next record where the broker skipped it.
    let mut skipped_tries: BTreeMap<i32, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // tansu may report an end short of the last batch it acknowledged: once at the ends, read
    // on until a second passes with no record.
    let mut last_record = Instant::now();
    while ends
        .iter()
        .any(|(p, end)| read.get(p).copied().unwrap_or(0) < *end)
        || last_record.elapsed() < Duration::from_secs(1)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{topic}: read {read:?} of {ends:?} within 120 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let (p, offset) = (message.partition(), message.offset());
        let expected = read.get(&p).copied().unwrap_or(0);
        if offset < expected {
            // Read again after moving back (below): already read.
            continue;
        }
        if offset > expected {
            // tansu serves a record batch only to a fetch from its first offset: a fetch that
            // starts inside one gets the next batch, skipping records. Move back, further each
            // try (the engine does the same, `input_positions`), until the records between
            // come; a gap that stays after 12 tries (1,024 back) is taken as the topic's own.
            let tries = skipped_tries.entry(p).or_insert(0);
            if *tries < 12 {
                *tries += 1;
                let back = if *tries == 1 { 0 } else { 1i64 << (*tries - 2) };
                consumer.seek(
                    topic,
                    p,
                    rdkafka::Offset::Offset((expected - back).max(0)),
                    Duration::from_secs(10),
                )?;
                continue;
            }
        }
        skipped_tries.remove(&p);
        let mut headers = BTreeMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        read.insert(p, offset + 1);
        last_record = Instant::now();
        out.push(TopicRecord {
            partition: p,
            offset,
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    Ok(out)
}

/// Waits until the node owns exactly `n` partitions (a partition is owned once restored).
pub async fn wait_owning(ch: &Channel, n: usize) -> Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let owned: Vec<u32> = status(ch)
            .await?
            .partitions
            .iter()
            .map(|p| p.partition)
            .collect();
        if owned.len() == n {
            return Ok(owned);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "owns {owned:?}, not {n} partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the nodes behind `channels` own `n` partitions between them: after a node
/// died, its partitions moved to the others.
pub async fn wait_owned_between(channels: &[&Channel], n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut owned = 0;
        for ch in channels {
            owned += status(ch).await?.partitions.len();
        }
        if owned == n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes own {owned} partitions, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the audience is calculated (ACTIVE): messages read from then on are
/// evaluated as they stream, not by its calculation.
pub async fn wait_active(ch: &Channel, id: u64) -> Result<()> {
    let mut client = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = client
            .get_audience(pb::GetAudienceRequest { id })
            .await?
            .into_inner();
        if a.status == pb::AudienceStatus::Active as i32 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "audience {id} still calculating");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the engine has processed (or dead-lettered) `total` messages since it started.
pub async fn wait_processed(ch: &Channel, total: u64, timeout: Duration) -> Result<()> {
    wait_processed_between(&[ch], total, timeout).await
}

/// Waits until every delta written so far is on the deltas topic (each partition's published
/// position has reached its outbox head: a benchmark's phase starts without the backlog of
/// the one before it). Returns the deltas published while it waited.
pub async fn wait_published(ch: &Channel, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut first = None;
    loop {
        let s = status(ch).await?;
        let head: u64 = s.partitions.iter().map(|p| p.outbox_head).sum();
        let published: u64 = s.partitions.iter().map(|p| p.deltas_published).sum();
        let first = *first.get_or_insert(published);
        if published >= head {
            return Ok(published - first);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "deltas published: {published} of {head} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the nodes behind `channels` have processed (or dead-lettered) `total` messages
/// between them since they started.
pub async fn wait_processed_between(
    channels: &[&Channel],
    total: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (mut processed, mut dead_lettered) = (0, 0);
        for ch in channels {
            let s = status(ch).await?;
            processed += s.messages_processed;
            dead_lettered += s.messages_dead_lettered;
        }
        if processed + dead_lettered >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "processed {processed} + dead-lettered {dead_lettered} of {total} within \
                 {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A realistic batch as the mParticle Python SDK serialises it.
pub fn sdk_batch(mpid: i64, now_ms: i64, events: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "events": events,
        "source_request_id": null,
        "environment": "development",
        "ip": null,
        "schema_version": null,
        "device_info": {"platform": "iOS", "os_version": "17.2", "device_model": "iPhone15,2", "ios_idfv": format!("idfv-{mpid}"), "network_carrier": "T-Mobile"},
        "application_info": {"application_version": "2.1.0"},
        "user_attributes": {"tier": "gold", "age": 42},
        "deleted_user_attributes": null,
        "user_identities": {"customer_id": format!("cust-{mpid}"), "email": format!("u{mpid}@example.com"), "other": null},
        "api_key": null,
        "mpid": mpid,
        "mp_deviceid": null,
        "consent_state": null,
        "timestamp_unixtime_ms": now_ms,
    })
}

/// Two nodes of one deployment with the changelog on, owning a partition each, and the
/// deployment's broker and topics (two partitions). Field order is drop order: engines first.
pub struct TwoNodes {
    pub a: Engine,
    pub b: Engine,
    pub ch_a: Channel,
    pub ch_b: Channel,
    pub dir: tempfile::TempDir,
    pub topics: Topics,
    pub group: String,
    pub broker: Broker,
}

impl TwoNodes {
    /// Starts the broker, `node-a`, then `node-b`, and waits until each owns a partition.
    pub async fn start(name: &str) -> Result<TwoNodes> {
        TwoNodes::start_with(name, &[]).await
    }

    /// [`TwoNodes::start`] with extra environment variables for both nodes.
    pub async fn start_with(name: &str, extra_env: &[(&str, &str)]) -> Result<TwoNodes> {
        let broker = Broker::start()?;
        let topics = Topics::unique(name);
        broker.create_deployment_topics(&topics, 2).await?;
        let dir = tempfile::tempdir()?;
        let group = name.to_string();
        let start =
            |id| Engine::start_node_with(&broker, &topics, dir.path(), &group, id, extra_env);
        let mut a = start("node-a")?;
        let ch_a = a.ready().await?;
        wait_owning(&ch_a, 2).await?;
        let mut b = start("node-b")?;
        let ch_b = b.ready().await?;
        wait_owning(&ch_b, 1).await?;
        wait_owning(&ch_a, 1).await?;
        Ok(TwoNodes {
            a,
            b,
            ch_a,
            ch_b,
            dir,
            topics,
            group,
            broker,
        })
    }

    /// Starts another node of the deployment.
    pub fn start_node(&self, id: &str) -> Result<Engine> {
        self.start_node_with(id, &[])
    }

    /// Starts another node of the deployment, with extra environment variables.
    pub fn start_node_with(&self, id: &str, extra_env: &[(&str, &str)]) -> Result<Engine> {
        let (broker, topics, dir) = (&self.broker, &self.topics, self.dir.path());
        Engine::start_node_with(broker, topics, dir, &self.group, id, extra_env)
    }
}

/// Creates an audience named `tier` of the users whose `tier` attribute is `tier`.
pub async fn create_tier_audience(ch: &Channel, tier: &str) -> Result<pb::Audience> {
    let tier_is =
        serde_json::json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": tier}});
    create_audience(ch, tier, tier_is).await
}

/// One SDK batch per user setting its `tier` attribute.
pub async fn produce_tier(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    now: i64,
    users: std::ops::RangeInclusive<i64>,
    tier: &str,
) -> Result<()> {
    for mpid in users {
        let mut batch = sdk_batch(mpid, now, vec![]);
        batch["user_attributes"]["tier"] = serde_json::json!(tier);
        produce_json(producer, topic, &batch).await?;
    }
    Ok(())
}

pub fn custom_event(
    name: &str,
    event_type: &str,
    at_ms: i64,
    attrs: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "data": {"event_name": name, "custom_event_type": event_type, "timestamp_unixtime_ms": at_ms,
                 "custom_attributes": attrs, "event_id": null, "source_message_id": null, "session_id": null,
                 "session_uuid": null, "location": null, "device_current_state": null},
        "event_type": "custom_event"
    })
}

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, and a client certificate
/// it signed, as PEM files.
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client: (PathBuf, PathBuf),
}

pub fn test_pki(dir: &Path, name: &str) -> Result<TestPki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate()?;
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let client =
        CertificateParams::new(vec![format!("{name}-client")])?.signed_by(&client_key, &issuer)?;
    let pki = TestPki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-server.pem")),
        key: dir.join(format!("{name}-server.key")),
        client: (
            dir.join(format!("{name}-client.pem")),
            dir.join(format!("{name}-client.key")),
        ),
    };
    std::fs::write(&pki.ca, ca_cert.pem())?;
    std::fs::write(&pki.cert, server.pem())?;
    std::fs::write(&pki.key, server_key.serialize_pem())?;
    std::fs::write(&pki.client.0, client.pem())?;
    std::fs::write(&pki.client.1, client_key.serialize_pem())?;
    Ok(pki)
}
