//! The audience engine daemon.

/// mimalloc: the engine allocates and frees many short-lived buffers per batch and per
/// backfill page; glibc's allocator returns and re-faults that memory page by page.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use audience_actors::partition::ReplayMode;
use audience_services::config::{Config, ENVIRONMENT};
use audience_services::replay_report;
use clap::{Parser, Subcommand};
use std::io::Write;
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
    /// Without a command, the engine runs (consumes, evaluates, serves the API).
    #[command(subcommand)]
    command: Option<Offline>,
}

/// Offline commands on the data directory (`storage.path`, or `--data-dir`), with the engine
/// stopped: no broker, no API. They run the replay `audiencectl rebuild` and `verify` drive.
#[derive(Subcommand)]
enum Offline {
    /// Fold every stored profile from its base and logs; write those that differ from the
    /// stored state (their deltas wait in the outbox until the engine runs). Prints what
    /// changed; a single node's directory only (a cluster rebuilds through its owners).
    Rebuild {
        /// Delete the profile states first and write every fold.
        #[arg(long, conflicts_with = "check")]
        wipe: bool,
        /// Write nothing: the same as `verify`.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Compare every stored profile with the fold of its base and logs; write nothing. Exits 1
    /// when a profile differs, naming it and what differs (the check to run after an upgrade).
    Verify {
        #[command(flatten)]
        report: ReportArgs,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The data directory (default: the configuration's storage.path).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_env {
        for (var, setting) in ENVIRONMENT {
            println!("{var:32} overrides {setting}");
        }
        return Ok(());
    }
    // An offline command's report owns standard output; its log is for trouble only.
    let default_filter = match args.command {
        Some(_) => "warn",
        None => "info,rdkafka=warn,librdkafka=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    if args.command.is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(command) = args.command {
        let (mode, report) = match command {
            Offline::Rebuild {
                wipe: true, report, ..
            } => (ReplayMode::RebuildWiped, report),
            Offline::Rebuild {
                check: true,
                report,
                ..
            }
            | Offline::Verify { report } => (ReplayMode::Verify, report),
            Offline::Rebuild { report, .. } => (ReplayMode::Rebuild, report),
        };
        if let Some(dir) = report.data_dir {
            config.storage.path = dir;
        }
        leave(offline(&config, mode, report.json));
    }
    tracing::info!(?config, "configuration");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(audience_services::server::run(config));
    // Everything is committed and the WAL flushed: leave without running destructors, whose
    // order across the actor threads, librdkafka and RocksDB is not ours to choose.
    match result {
        Ok(()) => leave(0),
        Err(e) => {
            tracing::error!(error = %e, "engine failed");
            leave(1)
        }
    }
}

/// Ends the process at once, with `code`, after flushing standard output and error.
///
/// Not `std::process::exit`: that runs the C exit handlers, which destroy RocksDB's and
/// librdkafka's static objects while their background threads (compactions, flushes, broker
/// threads) and the runtime's workers still run and use them: a crash at exit, now and then,
/// after a clean stop (rust-rocksdb#767, facebook/rocksdb#14850). What must outlive the
/// process is on disk by now: the store's WAL is synced, the topics acknowledged.
fn leave(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // libc's `_exit`: no exit handlers, no static destructors.
    signal_hook::low_level::exit(code)
}

/// Runs an offline replay with a progress line on standard error, prints its report on
/// standard output, and returns the exit code: 1 when it failed or a verify found a profile
/// that differs.
fn offline(config: &Config, mode: ReplayMode, json: bool) -> i32 {
    let interactive = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut draw = |status: &audience_proto::v1::ReplayStatus, rate: f64| {
        if interactive {
            eprint!("\r\x1b[2K{}", replay_report::progress_line(status, rate));
            let _ = std::io::stderr().flush();
        }
    };
    let status = match audience_services::offline::replay(config, mode, &mut draw) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("audience-engine: {e:#}");
            return 1;
        }
    };
    if interactive {
        eprint!("\r\x1b[2K");
    }
    if json {
        println!("{}", replay_report::json(&status));
    } else {
        for line in replay_report::text_lines(&status) {
            println!("{line}");
        }
    }
    let differing = replay_report::differing(&status);
    if differing > 0 {
        eprintln!("audience-engine: {differing} profile(s) differ from the fold of their logs");
        return 1;
    }
    0
}
