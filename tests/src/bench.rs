//! What the end-to-end benches share: the engine's peak memory, the wall clock, percentiles.

/// The peak resident memory of process `pid` (VmHWM), in KiB; 0 when unreadable.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, &["VmHWM:"]).map_or(0, |v| v[0])
}

/// The fields of `/proc/<pid>/status` named (with their colon), in KiB (`None`: the process is
/// gone, or one is missing).
fn status_kib<const N: usize>(pid: u32, names: &[&str; N]) -> Option<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    };
    let mut values = [0; N];
    for (value, name) in values.iter_mut().zip(names) {
        *value = field(name)?;
    }
    Some(values)
}

/// The largest anonymous and file-backed parts of a process's resident memory, sampled every
/// 100 ms while it runs (VmHWM gives only their largest sum): anonymous memory is what the
/// engine's settings bound, file-backed pages are its binary's and memory-mapped files'.
pub struct RssSampler {
    peaks: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peaks = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sampled, stopped) = (peaks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Some([anon, file]) = status_kib(pid, &["RssAnon:", "RssFile:"]) else {
                    return;
                };
                let mut peaks = sampled.lock().unwrap();
                *peaks = (peaks.0.max(anon), peaks.1.max(file));
                drop(peaks);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        RssSampler { peaks, stop }
    }

    /// The peaks so far, in KiB: (anonymous, file-backed).
    pub fn peaks_kib(&self) -> (u64, u64) {
        *self.peaks.lock().unwrap()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The line the benches print: the peak, then its parts' peaks.
pub fn rss_line(peak_kib: u64, (anon, file): (u64, u64)) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    format!(
        "engine peak RSS: {:.1} MiB (anonymous at most {:.1} MiB, file-backed at most {:.1} MiB)",
        mib(peak_kib),
        mib(anon),
        mib(file)
    )
}

/// Milliseconds since the epoch by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The value at fraction `p` of a sorted list (0 for an empty one).
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Produces every `(key, payload)` record to `topic`, up to 5,000 in flight, and waits until
/// the broker acknowledged all of them.
pub async fn produce_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut pending = futures::stream::FuturesUnordered::new();
    for (key, payload) in records {
        let p = producer.clone();
        let topic = topic.to_string();
        pending.push(async move {
            p.send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload),
                std::time::Duration::from_secs(120),
            )
            .await
        });
        while pending.len() >= 5000 {
            if let Some(Err((e, _))) = pending.next().await {
                anyhow::bail!("produce failed: {e}");
            }
        }
    }
    while let Some(r) = pending.next().await {
        if let Err((e, _)) = r {
            anyhow::bail!("produce failed: {e}");
        }
    }
    Ok(())
}

/// A producer for the benches' loads: batched, with room for a whole phase in its queue.
pub fn bench_producer(bootstrap: &str) -> anyhow::Result<rdkafka::producer::FutureProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000")
        .create()?)
}

/// How many messages/s a bare rdkafka consumer (a group of its own, from the earliest
/// offset) reads from `topic` until it has `total`: the denominator of the engine's rate.
pub async fn bare_consumer_rate(bootstrap: &str, topic: &str, total: u64) -> anyhow::Result<f64> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let raw: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-raw-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    raw.subscribe(&[topic])?;
    let started = std::time::Instant::now();
    let mut count = 0u64;
    while count < total {
        match tokio::time::timeout(std::time::Duration::from_secs(30), raw.recv()).await {
            Ok(Ok(_)) => count += 1,
            Ok(Err(e)) => anyhow::bail!("raw consumer: {e}"),
            Err(_) => anyhow::bail!("raw consumer stalled at {count}"),
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Writes each definition to its own file in `<dir>/audiences` (the engine's
/// `engine.audiences_dir`, loaded at start) and returns that directory.
pub fn write_audience_files(
    dir: &std::path::Path,
    definitions: &[serde_json::Value],
) -> anyhow::Result<String> {
    let defs = dir.join("audiences");
    std::fs::create_dir_all(&defs)?;
    for (i, d) in definitions.iter().enumerate() {
        std::fs::write(defs.join(format!("{i:05}.json")), d.to_string())?;
    }
    Ok(defs.display().to_string())
}

/// What an end-to-end bench runs against: a broker of its own with the deployment's topics
/// (4 partitions), and the engine started on the wall clock with `definitions` as audience
/// files (loaded at start; wait for [`crate::Engine::ready`]).
pub struct BenchDeployment {
    pub broker: crate::Broker,
    pub topics: crate::Topics,
    pub engine: crate::Engine,
    /// The engine's data and audience files; removed when dropped.
    pub dir: tempfile::TempDir,
}

/// Partitions of a bench's topics and engine.
pub const BENCH_PARTITIONS: i32 = 4;

/// Starts a broker and an engine of group `name` over `definitions` (see
/// [`BenchDeployment`]).
pub async fn deploy(
    name: &str,
    definitions: &[serde_json::Value],
) -> anyhow::Result<BenchDeployment> {
    let broker = crate::Broker::start()?;
    let topics = crate::Topics::unique(name);
    broker
        .create_deployment_topics(&topics, BENCH_PARTITIONS)
        .await?;
    let dir = tempfile::tempdir()?;
    let defs_dir = write_audience_files(dir.path(), definitions)?;
    let partitions = BENCH_PARTITIONS.to_string();
    let engine = crate::Engine::start_with(
        &broker,
        &topics,
        &dir.path().join("engine"),
        name,
        &[
            ("AUDIENCE_AUDIENCES_DIR", &defs_dir),
            ("AUDIENCE_MANUAL_CLOCK", "false"),
            ("AUDIENCE_PARTITIONS", &partitions),
        ],
    )?;
    Ok(BenchDeployment {
        broker,
        topics,
        engine,
        dir,
    })
}
