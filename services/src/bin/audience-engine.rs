//! The audience engine daemon.

/// mimalloc: the engine allocates and frees many short-lived buffers per batch and per
/// backfill page; glibc's allocator returns and re-faults that memory page by page.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use audience_services::config::{Config, ENVIRONMENT};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Real-time audience engine: Kafka in, RocksDB state, membership deltas out"
)]
struct Args {
    /// TOML configuration file (see deploy/engine.toml); environment variables override it.
    #[arg(long, short, env = "AUDIENCE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "AUDIENCE_LOG_JSON")]
    log_json: bool,
    /// Print the environment variables the engine reads, and exit.
    #[arg(long)]
    print_env: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_env {
        for (var, setting) in ENVIRONMENT {
            println!("{var:32} overrides {setting}");
        }
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn,librdkafka=warn".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = Config::load(args.config.as_deref())?;
    tracing::info!(?config, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(audience_services::server::run(config));
    // Everything is committed and the WAL flushed: leave without running destructors, whose
    // order across the actor threads, librdkafka and RocksDB is not ours to choose.
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!(error = %e, "engine failed");
            std::process::exit(1)
        }
    }
}
