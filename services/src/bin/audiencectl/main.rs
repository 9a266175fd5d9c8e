//! audiencectl: the operator CLI of the audience engine. Manages audiences, subscribes to
//! membership deltas, looks up profiles, produces events to Kafka, and runs the demo.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod admin;
mod audience;
mod calc;
mod client;
mod kafka;
mod membership;
mod output;
mod profile;

use admin::ClockCmd;
use audience::AudienceCmd;
use calc::CalcCmd;
use output::{ConnectionCmd, OutputCmd};

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
    #[command(subcommand)]
    command: Command,
}

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
        /// Print each delta as one JSON line.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "audiencectl")]
        name: String,
    },
    /// Show a profile: identities, attributes, audiences, event counts.
    Profile { mpid: i64 },
    /// A profile's membership history: when it entered and left each audience (retention).
    History { mpid: i64 },
    /// The members of an audience now, or at an instant within retention (ms since epoch).
    Members {
        audience: u64,
        #[arg(long)]
        as_of: Option<i64>,
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
    /// Size, adds, drops and volatility of audiences.
    Stats { ids: Vec<u64> },
    /// The live subscriptions and their figures.
    Connectors,
    /// Ingestion figures of the node.
    Status,
    /// The engine clock (manual clocks can be advanced).
    #[command(subcommand)]
    Clock(ClockCmd),
    /// Rebuild every profile of the node from its logs (facts, event log, membership
    /// history); versions continue, so a healthy store changes nothing. Without --start,
    /// shows the replays.
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Audience(cmd) => audience::audience(&cli.server, cmd).await,
        Command::Subscribe {
            audiences,
            cursor,
            limit,
            json,
            name,
        } => membership::subscribe(&cli.server, audiences, cursor, limit, json, name).await,
        Command::Output(cmd) => output::output(&cli.server, cmd).await,
        Command::Connection(cmd) => output::connection(&cli.server, cmd).await,
        Command::Calc(cmd) => calc::calc(&cli.server, cmd).await,
        Command::History { mpid } => membership::history(&cli.server, mpid).await,
        Command::Members { audience, as_of } => {
            membership::members(&cli.server, audience, as_of).await
        }
        Command::Profile { mpid } => profile::profile(&cli.server, mpid).await,
        Command::Tier {
            event_type,
            name,
            tier,
        } => calc::tier(&cli.server, event_type, name, tier).await,
        Command::Explain { mpid, audience } => profile::explain(&cli.server, mpid, audience).await,
        Command::Stats { ids } => membership::stats(&cli.server, ids).await,
        Command::Connectors => membership::connectors(&cli.server).await,
        Command::Status => admin::status(&cli.server).await,
        Command::Replay { start, wipe, wait } => {
            admin::replay(&cli.server, start, wipe, wait).await
        }
        Command::Clock(cmd) => admin::clock(&cli.server, cmd).await,
        Command::Produce {
            bootstrap,
            topic,
            key,
            raw,
            file,
        } => kafka::produce(&cli.server, bootstrap, topic, key, raw, file).await,
        Command::CreateTopics {
            bootstrap,
            partitions,
            topics,
        } => kafka::create_topics(&cli.server, bootstrap, partitions, topics).await,
        Command::Demo {
            audiences,
            users,
            rate,
            seconds,
        } => kafka::demo(&cli.server, &audiences, users, rate, seconds).await,
    }
}
