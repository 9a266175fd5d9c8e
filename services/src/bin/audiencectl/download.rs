//! `audiencectl download ...`: start an audience download and fetch its ZIP with a progress
//! bar while it prepares and while it arrives; list, show and fetch downloads.

use crate::print::*;
use anyhow::Context;
use audience_proto::v1 as pb;
use audience_services::auth::AuthChannel;
use clap::Subcommand;
use pb::download_service_client::DownloadServiceClient;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum DownloadCmd {
    /// Prepare a ZIP of the members of audiences (a CSV file each, or one per variation
    /// chosen) with a manifest, wait for it and save it.
    Start {
        /// Audience ids.
        #[arg(required = true)]
        audiences: Vec<u64>,
        /// A variation of an audience's A/B test, "AUDIENCE:NAME" (repeat; an audience with
        /// variations named gets a file per variation instead of one for the whole).
        #[arg(long = "variation")]
        variations: Vec<String>,
        /// Identity types to write (repeat): email, customer_id, ios_idfv...
        #[arg(long = "identity", required = true)]
        identities: Vec<String>,
        /// A random sample of at most this many users per file.
        #[arg(long)]
        sample: Option<u32>,
        /// Where to save the ZIP (default: its archive name, in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Start it and print it, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// The downloads of this node.
    List,
    /// A download's progress, or its manifest once ready.
    Get { id: String },
    /// Save a ready download's ZIP.
    Fetch {
        id: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub async fn command(ctx: &Ctx, cmd: DownloadCmd) -> anyhow::Result<()> {
    let mut client = DownloadServiceClient::new(ctx.channel().await?);
    match cmd {
        DownloadCmd::Start {
            audiences,
            variations,
            identities,
            sample,
            out,
            no_wait,
        } => {
            let selections = selections(&audiences, &variations)?;
            let started = client
                .start_download(pb::StartDownloadRequest {
                    selections,
                    identity_types: identities,
                    sample_size: sample.unwrap_or(0),
                })
                .await?
                .into_inner();
            if no_wait {
                show(ctx, &started);
                return Ok(());
            }
            let ready = wait_ready(&mut client, &started.id).await?;
            let path = out.unwrap_or_else(|| PathBuf::from(&ready.archive_name));
            fetch(&mut client, &ready, &path).await?;
            if ctx.json() {
                let mut shown = download_json(&ready);
                shown["saved_to"] = path.display().to_string().into();
                say_json(&shown);
            } else {
                say!(
                    "download {}: {} rows of {} users scanned, {} bytes saved to {}",
                    ready.id,
                    ready.rows_written,
                    ready.users_scanned,
                    ready.size_bytes,
                    path.display()
                );
            }
        }
        DownloadCmd::List => {
            let list = client
                .list_downloads(pb::ListDownloadsRequest {})
                .await?
                .into_inner();
            for d in &list.downloads {
                show(ctx, d);
            }
        }
        DownloadCmd::Get { id } => {
            let d = client
                .get_download(pb::DownloadIdRequest { id })
                .await?
                .into_inner();
            show(ctx, &d);
            if !ctx.json() && !d.manifest_json.is_empty() {
                say!("{}", d.manifest_json);
            }
        }
        DownloadCmd::Fetch { id, out } => {
            let d = client
                .get_download(pb::DownloadIdRequest { id })
                .await?
                .into_inner();
            let path = out.unwrap_or_else(|| PathBuf::from(&d.archive_name));
            fetch(&mut client, &d, &path).await?;
            say!("{}", path.display());
        }
    }
    Ok(())
}

/// The request's selections: each audience, with the variations named for it.
fn selections(
    audiences: &[u64],
    variations: &[String],
) -> anyhow::Result<Vec<pb::DownloadSelection>> {
    let mut out: Vec<pb::DownloadSelection> = audiences
        .iter()
        .map(|&audience_id| pb::DownloadSelection {
            audience_id,
            variations: Vec::new(),
        })
        .collect();
    for v in variations {
        let (audience, name) = v
            .split_once(':')
            .with_context(|| format!("--variation {v:?}: expected AUDIENCE:NAME"))?;
        let audience: u64 = audience
            .trim()
            .parse()
            .with_context(|| format!("--variation {v:?}: {audience:?} is no audience id"))?;
        let Some(selection) = out.iter_mut().find(|s| s.audience_id == audience) else {
            anyhow::bail!("--variation {v:?}: audience {audience} is not among those downloaded");
        };
        selection.variations.push(name.trim().to_string());
    }
    Ok(out)
}

/// Redraws a progress bar on standard error until the download is READY (or FAILED).
async fn wait_ready(
    client: &mut DownloadServiceClient<AuthChannel>,
    id: &str,
) -> anyhow::Result<pb::Download> {
    loop {
        let d = client
            .get_download(pb::DownloadIdRequest { id: id.to_string() })
            .await?
            .into_inner();
        match pb::DownloadState::try_from(d.state) {
            Ok(pb::DownloadState::Ready) => {
                eprint!("\r\x1b[2K");
                return Ok(d);
            }
            Ok(pb::DownloadState::Failed) => {
                eprint!("\r\x1b[2K");
                anyhow::bail!("download {id} failed: {}", d.error);
            }
            _ => {}
        }
        eprint!(
            "\r\x1b[2Kpreparing {} {:5.1}%  {} users scanned, {} rows",
            bar(d.percent),
            d.percent,
            d.users_scanned,
            d.rows_written
        );
        std::io::stderr().flush()?;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Saves a READY download's ZIP to `path` (written aside and renamed once whole), with a
/// progress bar of the bytes received.
async fn fetch(
    client: &mut DownloadServiceClient<AuthChannel>,
    d: &pb::Download,
    path: &Path,
) -> anyhow::Result<()> {
    let partial = path.with_extension("zip.partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut stream = client
        .fetch_download(pb::FetchDownloadRequest {
            id: d.id.clone(),
            offset: 0,
        })
        .await?
        .into_inner();
    let mut received = 0u64;
    while let Some(chunk) = stream.message().await? {
        file.write_all(&chunk.data)?;
        received += chunk.data.len() as u64;
        let percent = match chunk.total_bytes {
            0 => 100.0,
            total => 100.0 * received as f64 / total as f64,
        };
        eprint!(
            "\r\x1b[2Kfetching  {} {percent:5.1}%  {received} of {} bytes",
            bar(percent),
            chunk.total_bytes
        );
        std::io::stderr().flush()?;
    }
    eprint!("\r\x1b[2K");
    if received != d.size_bytes {
        anyhow::bail!(
            "download {}: {received} bytes received of {}: fetch it again",
            d.id,
            d.size_bytes
        );
    }
    file.sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("saving {}", path.display()))?;
    Ok(())
}

/// A 20-character bar of `percent`.
fn bar(percent: f64) -> String {
    let filled = ((percent / 5.0).round() as usize).min(20);
    format!("[{}{}]", "#".repeat(filled), " ".repeat(20 - filled))
}

fn state_name(d: &pb::Download) -> &'static str {
    match pb::DownloadState::try_from(d.state) {
        Ok(pb::DownloadState::Preparing) => "preparing",
        Ok(pb::DownloadState::Ready) => "ready",
        Ok(pb::DownloadState::Failed) => "failed",
        _ => "unknown",
    }
}

fn download_json(d: &pb::Download) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "state": state_name(d),
        "archive_name": d.archive_name,
        "percent": d.percent,
        "users_scanned": d.users_scanned,
        "rows_written": d.rows_written,
        "size_bytes": d.size_bytes,
        "sample_size": d.sample_size,
        "error": d.error,
        "created_by": d.created_by,
        "manifest": serde_json::from_str::<serde_json::Value>(&d.manifest_json).ok(),
    })
}

fn show(ctx: &Ctx, d: &pb::Download) {
    if ctx.json() {
        return say_json(&download_json(d));
    }
    let error = match d.error.as_str() {
        "" => String::new(),
        e => format!("  {e}"),
    };
    say!(
        "{}  {:<9} {:5.1}%  {:<40} {} users scanned, {} rows, {} bytes{error}",
        d.id,
        state_name(d),
        d.percent,
        d.archive_name,
        d.users_scanned,
        d.rows_written,
        d.size_bytes
    );
}
