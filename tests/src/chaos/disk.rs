//! Disk full (scenario 6): the node's data directory is a small tmpfs of its own, filled to the
//! last byte a third of the way into the stream and freed again a few seconds later.
//!
//! What the engine must do: stop applying (nothing is read past what is stored, so nothing can
//! be skipped), say so on its readiness probe (`ready` turns NOT_SERVING), stay up (a restart
//! would only meet the same full disk), and once space returns take up where it stopped, with
//! nothing lost or applied twice. RocksDB refuses writes from the first ENOSPC and takes them
//! again on its own once its file manager sees free space (it checks every few seconds).
//!
//! Mounting needs root (or CAP_SYS_ADMIN), as `make test` has here; without it the scenario
//! fails and says so, rather than passing without a full disk.

use super::scenarios::{round, stream_ms, Setup, Stage};
use super::{Figures, Row, Scale};
use crate::{Broker, Channel, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

/// The data directory's size: room for the store of a short run many times over, small
/// enough that filling it is quick. (Memtables of 1 MiB keep RocksDB writing new files, so a
/// full disk is met within a second rather than once a preallocated log runs out.)
const TMPFS_BYTES: u64 = 256 << 20;
const WRITE_BUFFER_BYTES: &str = "1048576";

/// A tmpfs mounted for one run, unmounted when dropped (after the engine that used it stops:
/// a [`Stage`] drops its engine first).
pub struct Tmpfs {
    path: PathBuf,
    filler: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cannot mount a tmpfs at {} for the disk-full scenario (it needs root or \
             CAP_SYS_ADMIN): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Tmpfs {
            path: path.to_path_buf(),
            filler: path.join("chaos-filler"),
        })
    }

    /// Writes one file until the file system refuses more (ENOSPC), in ever smaller pieces, so
    /// that not one page is left; returns the bytes written.
    pub fn fill(&self) -> Result<u64> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)?;
        let mut written = 0u64;
        let mut piece = 1usize << 20;
        let zeros = vec![0u8; piece];
        while piece >= 512 {
            match file.write(&zeros[..piece]) {
                Ok(0) => piece /= 2,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => piece /= 2,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(written)
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(&self.filler)?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The node's readiness probe (the health service's `ready`), as an orchestrator sees it.
async fn ready(ch: &Channel) -> Result<bool> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ready".into(),
        })
        .await?
        .into_inner()
        .status;
    Ok(status == ServingStatus::Serving as i32)
}

/// Polls `ready` every 100 ms until it is `want` (or `within` passes): how long it took.
async fn until_ready_is(ch: &Channel, want: bool, within: Duration) -> Result<Option<Duration>> {
    let since = Instant::now();
    while since.elapsed() < within {
        if ready(ch).await? == want {
            return Ok(Some(since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

pub async fn disk_full(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let setup = Setup {
        tmpfs_bytes: Some(TMPFS_BYTES),
        env: vec![(
            "AUDIENCE_STORE_WRITE_BUFFER_BYTES",
            WRITE_BUFFER_BYTES.into(),
        )],
        ..Setup::default()
    };
    let mut stage = Stage::start("disk-full", Broker::start()?, scale, setup).await?;
    let feeding = stage.feed()?;
    tokio::time::sleep(Duration::from_millis(stream_ms(scale) / 3)).await;
    let disk = stage.disk.as_ref().expect("a tmpfs was asked for");
    let filled = disk.fill()?;
    let full_at = Instant::now();
    let mut figures = Figures::default();
    let mut failures = Vec::new();
    let not_serving = until_ready_is(&stage.ch, false, Duration::from_secs(30)).await?;
    match not_serving {
        Some(after) => {
            figures
                .extra
                .insert("not_serving_after_s".into(), round(after.as_secs_f64()));
            // The status says which partitions wait on the store.
            let stalled = crate::status(&stage.ch)
                .await?
                .partitions
                .iter()
                .filter(|p| p.stalled)
                .count();
            figures
                .extra
                .insert("stalled_partitions".into(), stalled as f64);
            if stalled == 0 {
                failures.push("NOT_SERVING, but no partition shows as stalled".into());
            }
        }
        None => failures.push("the disk was full for 30 s and `ready` stayed SERVING".into()),
    }
    // Full for as long as the output is down in the other scenarios (but at least 3 s), all
    // of it NOT_SERVING.
    let hold = Duration::from_secs(scale.outage_s.max(3));
    while full_at.elapsed() < hold {
        if not_serving.is_some() && ready(&stage.ch).await? {
            failures.push("`ready` turned SERVING while the disk was still full".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let full_for = full_at.elapsed();
    stage.disk.as_ref().expect("mounted").free()?;
    let serving_again = until_ready_is(&stage.ch, true, Duration::from_secs(120)).await?;
    match serving_again {
        Some(after) => figures.recovery_s = round(after.as_secs_f64()),
        None => failures.push("`ready` not SERVING within 120 s of the space returning".into()),
    }
    let fed = feeding.await?;
    if let Some(status) = stage.engine.exited()? {
        failures.push(format!("the engine exited on the full disk ({status})"));
    }
    let log = stage.engine.plain_log_text();
    let refusals = log.matches("the store refused a batch").count();
    figures
        .extra
        .insert("full_s".into(), round(full_for.as_secs_f64()));
    figures.extra.insert(
        "filler_mib".into(),
        round(filled as f64 / f64::from(1 << 20)),
    );
    figures
        .extra
        .insert("refused_batches".into(), refusals as f64);
    if refusals == 0 {
        failures.push("the store never refused a batch: the disk was not full to it".into());
    }
    let mut row = match stage.finish("disk_full", fed, figures).await {
        Ok(row) => row,
        Err(e) => {
            let log = stage.engine.plain_log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("{e:#}; the engine's log ends:\n{}", tail.join("\n"));
        }
    };
    row.failures.extend(failures);
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}
