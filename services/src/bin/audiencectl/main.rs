//! audiencectl: the operator CLI of the audience engine. Manages audiences, subscribes to
//! membership deltas, looks up profiles, produces events to Kafka, and runs the demo.
//!
//! A good citizen of the shell: every read command prints text for people or, with
//! `--output json`, JSON for scripts; instants are typed and printed as people use them; a
//! closed pipe ends it quietly; an error is one line on standard error (exit status 1), with
//! the full chain and a backtrace only when `AUDIENCECTL_DEBUG=1` asks for them.

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod admin;
mod audience;
mod calc;
mod client;
mod download;
mod kafka;
mod membership;
mod output;
mod print;
mod profile;
mod token;

use admin::ClockCmd;
use audience::AudienceCmd;
use calc::CalcCmd;
use output::{ConnectionCmd, OutputCmd};
use print::{Ctx, Format};
use token::TokenCmd;

#[derive(Parser)]
#[command(version, about = "Operate an audience engine")]
struct Cli {
    /// gRPC address of the engine.
    #[arg(
        long,
        global = true,
        env = "AUDIENCE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// For an https:// server: the PEM file of the CA that signed its certificate (the
    /// system's roots without it). The token is read from AUDIENCE_TOKEN, never from a flag
    /// (the process list would show it).
    #[arg(long, global = true, env = "AUDIENCE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// For an engine that requires client certificates (mutual TLS): the PEM file of this
    /// client's certificate, with --client-key.
    #[arg(
        long,
        global = true,
        env = "AUDIENCE_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The PEM file of the private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "AUDIENCE_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// How to print: text for people, or JSON for scripts (one object, or one per line for
    /// lists).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

/// How instants are typed, for the help of every option that takes one.
const INSTANT_HELP: &str = "RFC 3339 (2026-12-04T09:00:00Z), a UTC date (2026-12-04), \
milliseconds since the epoch, or relative to now (-2h, -7d, -30m)";

#[derive(Subcommand)]
enum Command {
    /// Manage audience definitions.
    #[command(subcommand)]
    Audience(AudienceCmd),
    /// Stream membership deltas (Ctrl-C to stop); prints the cursor to resume from.
    Subscribe {
        /// Audience ids (all when omitted).
        #[arg(long = "audience", short = 'a')]
        audiences: Vec<u64>,
        /// Resume after this cursor ("now" for new deltas only; empty for everything retained).
        #[arg(long, default_value = "")]
        cursor: String,
        /// Stop after this many deltas.
        #[arg(long)]
        limit: Option<usize>,
        /// Print each delta as one JSON line (the same as --output json).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "audiencectl")]
        name: String,
    },
    /// Show a profile: identities, attributes, audiences, event counts.
    Profile { mpid: i64 },
    /// A profile's membership history: when it entered and left each audience (retention).
    History { mpid: i64 },
    /// The members of an audience now, or at an instant within retention.
    Members {
        audience: u64,
        /// The instant: RFC 3339, a UTC date, milliseconds since the epoch, or relative to
        /// now (-2h, -7d).
        #[arg(long, long_help = INSTANT_HELP, allow_hyphen_values = true)]
        as_of: Option<String>,
    },
    /// Why a user is or is not in an audience.
    Explain { mpid: i64, audience: u64 },
    /// Set an event's data tier (only "personalize" events feed real-time audiences), or list them.
    Tier {
        /// custom_event, screen_view, commerce_event... (omit to list)
        event_type: Option<String>,
        /// Event name, screen name or product action.
        name: Option<String>,
        /// personalize, analyze, connect...
        tier: Option<String>,
    },
    /// Manage calculated attributes.
    #[command(subcommand)]
    Calc(CalcCmd),
    /// Manage output configurations (webhook, kafka).
    #[command(subcommand)]
    Output(OutputCmd),
    /// Connect audiences to outputs, list connections and faults, resume.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Download audiences' members as a ZIP of CSV files with a manifest.
    #[command(subcommand)]
    Download(download::DownloadCmd),
    /// Size, adds, drops and volatility of audiences.
    Stats { ids: Vec<u64> },
    /// The live subscriptions and their figures.
    Connectors,
    /// Ingestion figures of the node.
    Status,
    /// The cluster: its nodes and their partitions, each partition's owner, restore and lag.
    Cluster,
    /// The engine clock (manual clocks can be advanced).
    #[command(subcommand)]
    Clock(ClockCmd),
    /// API tokens: create (shown once), list, revoke (needs the admin scope).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Who changed which definition and when (needs the admin scope), oldest first.
    Audit {
        /// Only the changes made with this token name.
        #[arg(long)]
        by: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Rebuild every profile of the node from its logs (base, event log, membership
    /// history): profiles whose stored state differs from the fold are rewritten and send the
    /// deltas their memberships need; the others are left alone. Waits, showing progress.
    Rebuild {
        /// Delete the profile states and timers first.
        #[arg(long)]
        wipe: bool,
        /// Return once started, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Compare every profile of the node with the fold of its logs, and list each that
    /// differs (its MPID and what differs); writes nothing. Exits 1 if any differs.
    Verify {
        /// Return once started, without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// The node's rebuilds and verifies. With --start, starts a rebuild (as `rebuild`).
    Replay {
        /// Start a replay.
        #[arg(long)]
        start: bool,
        /// Delete the profile states and timers first (with --start).
        #[arg(long, requires = "start")]
        wipe: bool,
        /// Draw a live progress line until every partition is done.
        #[arg(long)]
        wait: bool,
    },
    /// Produce messages to a Kafka topic: a JSON file (one batch, or one per line), or `-` for stdin.
    Produce {
        /// Kafka bootstrap servers (default: the engine's own).
        #[arg(long, env = "AUDIENCE_BOOTSTRAP_SERVERS")]
        bootstrap: Option<String>,
        #[arg(long, default_value = "audience-events")]
        topic: String,
        /// Message key (default: the batch's mpid).
        #[arg(long)]
        key: Option<String>,
        /// Send the file's bytes as one message, unparsed (for testing bad input).
        #[arg(long)]
        raw: bool,
        file: PathBuf,
    },
    /// Create Kafka topics.
    CreateTopics {
        #[arg(long, env = "AUDIENCE_BOOTSTRAP_SERVERS")]
        bootstrap: String,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        topics: Vec<String>,
    },
    /// Print a completion script for a shell: `audiencectl completions bash >
    /// /etc/bash_completion.d/audiencectl`.
    Completions { shell: clap_complete::Shell },
    /// Load the example audiences, feed sample events and show users entering and leaving.
    Demo {
        /// Folder of audience files to load.
        #[arg(long, default_value = "deploy/audiences")]
        audiences: PathBuf,
        #[arg(long, default_value_t = 200)]
        users: i64,
        /// Batches per second.
        #[arg(long, default_value_t = 20)]
        rate: u64,
        /// Stop after this many seconds (0: run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("audiencectl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = cli.server.clone();
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if std::env::var_os("AUDIENCECTL_DEBUG").is_some() {
                eprintln!("audiencectl: {e:?}");
            } else {
                eprintln!("audiencectl: {}", one_line(&e, &server));
            }
            ExitCode::FAILURE
        }
    }
}

/// An error as one line: what the engine answered (its message and the kind of refusal), or
/// the chain of what failed, joined.
fn one_line(e: &anyhow::Error, server: &str) -> String {
    let text = match e.chain().find_map(|c| c.downcast_ref::<tonic::Status>()) {
        Some(status) if status.code() == tonic::Code::Unavailable => format!(
            "the engine at {server} is unavailable ({}): is it running? `make run` starts one",
            status.message()
        ),
        Some(status) => {
            let context: Vec<String> = e
                .chain()
                .take_while(|c| c.downcast_ref::<tonic::Status>().is_none())
                .map(|c| c.to_string())
                .collect();
            let refusal = if status.message().is_empty() {
                code_words(status.code())
            } else {
                format!("{} ({})", status.message(), code_words(status.code()))
            };
            context
                .into_iter()
                .chain(std::iter::once(refusal))
                .collect::<Vec<_>>()
                .join(": ")
        }
        None => format!("{e:#}"),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `NotFound` as `not found`.
fn code_words(code: tonic::Code) -> String {
    let mut words = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// A bug reports itself in one line; `AUDIENCECTL_DEBUG=1` shows where, with a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if std::env::var_os("AUDIENCECTL_DEBUG").is_some() {
            eprintln!(
                "audiencectl: {info}\n{}",
                std::backtrace::Backtrace::force_capture()
            );
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!(
            "audiencectl: internal error: {} (AUDIENCECTL_DEBUG=1 shows where)",
            message.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        server: cli.server,
        format: cli.output,
        client: audience_services::auth::ClientOptions::from_env(
            cli.ca_file,
            cli.client_cert.zip(cli.client_key),
        ),
    };
    let ctx = &ctx;
    match cli.command {
        Command::Audience(cmd) => audience::command(ctx, cmd).await,
        Command::Subscribe {
            audiences,
            cursor,
            limit,
            json,
            name,
        } => membership::subscribe(ctx, audiences, cursor, limit, json, name).await,
        Command::Output(cmd) => output::output(ctx, cmd).await,
        Command::Connection(cmd) => output::connection(ctx, cmd).await,
        Command::Calc(cmd) => calc::calc(ctx, cmd).await,
        Command::History { mpid } => membership::history(ctx, mpid).await,
        Command::Members { audience, as_of } => membership::members(ctx, audience, as_of).await,
        Command::Profile { mpid } => profile::profile(ctx, mpid).await,
        Command::Tier {
            event_type,
            name,
            tier,
        } => calc::tier(ctx, event_type, name, tier).await,
        Command::Explain { mpid, audience } => profile::explain(ctx, mpid, audience).await,
        Command::Download(cmd) => download::command(ctx, cmd).await,
        Command::Stats { ids } => membership::stats(ctx, ids).await,
        Command::Connectors => membership::connectors(ctx).await,
        Command::Status => admin::status(ctx).await,
        Command::Cluster => admin::cluster(ctx).await,
        Command::Audit { by, limit } => admin::audit(ctx, by, limit).await,
        Command::Token(cmd) => token::token(ctx, cmd).await,
        Command::Replay { start, wipe, wait } => {
            let ask = match start {
                true => admin::ReplayAsk::Start {
                    wipe,
                    check_only: false,
                },
                false => admin::ReplayAsk::Show,
            };
            admin::replay(ctx, ask, wait).await
        }
        Command::Rebuild { wipe, no_wait } => {
            let ask = admin::ReplayAsk::Start {
                wipe,
                check_only: false,
            };
            admin::replay(ctx, ask, !no_wait).await
        }
        Command::Verify { no_wait } => {
            let ask = admin::ReplayAsk::Start {
                wipe: false,
                check_only: true,
            };
            admin::replay(ctx, ask, !no_wait).await
        }
        Command::Clock(cmd) => admin::clock(ctx, cmd).await,
        Command::Produce {
            bootstrap,
            topic,
            key,
            raw,
            file,
        } => kafka::produce(ctx, bootstrap, topic, key, raw, file).await,
        Command::CreateTopics {
            bootstrap,
            partitions,
            topics,
        } => kafka::create_topics(ctx, bootstrap, partitions, topics).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "audiencectl", &mut script);
            print::line(format_args!(
                "{}",
                String::from_utf8_lossy(&script).trim_end()
            ));
            Ok(())
        }
        Command::Demo {
            audiences,
            users,
            rate,
            seconds,
        } => kafka::demo(ctx, &audiences, users, rate, seconds).await,
    }
}
