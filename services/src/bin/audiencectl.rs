//! audiencectl: the operator CLI of the audience engine. Manages audiences, subscribes to
//! membership deltas, looks up profiles, produces events to Kafka, and runs the demo.

use anyhow::{bail, Context};
use audience_proto::v1 as pb;
use audience_services::config::AudienceFile;
use audience_services::convert::{json_to_struct, struct_to_json};
use clap::{Parser, Subcommand};
use pb::admin_service_client::AdminServiceClient;
use pb::audience_service_client::AudienceServiceClient;
use pb::membership_service_client::MembershipServiceClient;
use pb::output_service_client::OutputServiceClient;
use pb::profile_service_client::ProfileServiceClient;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

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
enum CalcCmd {
    /// Define or redefine calculated attributes from JSON files (name, calculation, event,
    /// field, window_days).
    Put { files: Vec<PathBuf> },
    /// List the calculated attributes.
    List,
    /// Delete a calculated attribute (refused while audiences read it).
    Delete { name: String },
}

#[derive(Subcommand)]
enum OutputCmd {
    /// Create an output from a JSON file: {"name", "kind", "settings", "secrets",
    /// "accepted_identities"}.
    Create {
        file: PathBuf,
    },
    /// Replace an output's configuration from a JSON file (secrets shown as ******** keep
    /// their value).
    Update {
        id: u64,
        file: PathBuf,
    },
    List,
    Delete {
        id: u64,
    },
}

#[derive(Subcommand)]
enum ConnectionCmd {
    /// Connect audiences to an output (one or many: a result per audience).
    Create {
        #[arg(long)]
        output: u64,
        /// Audience ids.
        audiences: Vec<u64>,
        /// User attributes to share with the identities.
        #[arg(long = "share")]
        shared_attributes: Vec<String>,
        /// Create it inactive.
        #[arg(long)]
        inactive: bool,
    },
    List {
        #[arg(long, default_value_t = 0)]
        audience: u64,
    },
    /// Set a connection sending or inactive.
    Status {
        id: u64,
        #[arg(value_parser = ["sending", "inactive"])]
        status: String,
    },
    Delete {
        id: u64,
    },
    /// Faulted connections with their last error.
    Faults,
    /// Send everything owed since a connection's fault.
    Resume {
        id: u64,
    },
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

#[derive(Subcommand)]
enum AudienceCmd {
    /// Create an audience from a JSON file: {"name", "external_name", "tags", "criteria"}.
    Create {
        file: PathBuf,
        #[arg(long)]
        draft: bool,
        /// Show the calculation's progress until the audience is ACTIVE.
        #[arg(long)]
        wait: bool,
    },
    /// Create every audience of a folder whose name does not exist yet.
    Load {
        dir: PathBuf,
    },
    List {
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    Get {
        id: u64,
    },
    Update {
        id: u64,
        file: PathBuf,
        /// Show the calculation's progress until the audience is ACTIVE.
        #[arg(long)]
        wait: bool,
    },
    /// Show a live progress line while the audience is CALCULATING, until it is ACTIVE.
    Wait {
        id: u64,
    },
    /// Estimate the size of the definition in FILE from a sample of profiles (saves nothing).
    Estimate {
        file: PathBuf,
        #[arg(long, default_value_t = 0)]
        sample: u32,
    },
    /// What replacing audience ID's definition with FILE's would change (changes nothing).
    Diff {
        id: u64,
        file: PathBuf,
    },
    Delete {
        id: u64,
    },
    Activate {
        id: u64,
    },
    Draft {
        id: u64,
    },
}

#[derive(Subcommand)]
enum ClockCmd {
    Get,
    /// Move a manual clock forward.
    Advance {
        #[arg(long, default_value_t = 0)]
        days: i64,
        #[arg(long, default_value_t = 0)]
        hours: i64,
        #[arg(long, default_value_t = 0)]
        millis: i64,
    },
}

async fn channel(server: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(server.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to the engine at {server}"))
}

/// One line per criterion of an explanation, indented by depth.
fn print_explain_node(node: &pb::ExplainNode, depth: usize) {
    let mark = if node.matched { "yes" } else { "no " };
    let next = if node.next_change_ms > 0 {
        format!("  (may change at {})", node.next_change_ms)
    } else {
        String::new()
    };
    println!(
        "{}[{mark}] {}: {}{next}",
        "    ".repeat(depth),
        node.criterion,
        node.detail
    );
    for child in &node.children {
        print_explain_node(child, depth + 1);
    }
}

fn print_audience(a: &pb::Audience) {
    let s = a.stats.unwrap_or_default();
    let status = match pb::AudienceStatus::try_from(a.status) {
        Ok(pb::AudienceStatus::Draft) => "draft".to_string(),
        Ok(pb::AudienceStatus::Calculating) => format!(
            "calculating {:.0}%",
            a.calculation.map(|c| c.percent).unwrap_or_default()
        ),
        _ => "active".to_string(),
    };
    println!(
        "{:>5}  {:<32} {:<7} size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}  tags [{}]",
        a.id,
        a.name,
        status,
        s.size,
        s.adds_24h,
        s.drops_24h,
        s.volatility_24h,
        a.tags.join(", ")
    );
}

async fn engine_bootstrap(server: &str) -> anyhow::Result<String> {
    let mut admin = AdminServiceClient::new(channel(server).await?);
    Ok(admin
        .get_engine_status(pb::GetEngineStatusRequest {})
        .await?
        .into_inner()
        .bootstrap_servers)
}

fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?)
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> anyhow::Result<(i32, i64)> {
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok((delivery.partition, delivery.offset))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Audience(cmd) => audience(&cli.server, cmd).await,
        Command::Subscribe {
            audiences,
            cursor,
            limit,
            json,
            name,
        } => {
            let mut client = MembershipServiceClient::new(channel(&cli.server).await?);
            let mut stream = client
                .subscribe(pb::SubscribeRequest {
                    audience_ids: audiences,
                    cursor,
                    subscriber_name: name,
                })
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(d) = stream.message().await? {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "delta_id": d.delta_id, "audience_id": d.audience_id, "mpid": d.mpid,
                            "kind": if d.kind == pb::DeltaKind::Added as i32 { "added" } else { "dropped" },
                            "version": d.version, "event_time_ms": d.event_time_ms,
                            "processing_time_ms": d.processing_time_ms, "cursor": d.cursor,
                        })
                    );
                } else {
                    let kind = if d.kind == pb::DeltaKind::Added as i32 {
                        "+ added  "
                    } else {
                        "- dropped"
                    };
                    println!(
                        "{kind} mpid {:>20}  audience {:>4}  v{}  cursor {}",
                        d.mpid, d.audience_id, d.version, d.cursor
                    );
                }
                n += 1;
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
            }
            Ok(())
        }
        Command::Output(cmd) => {
            let mut client = OutputServiceClient::new(channel(&cli.server).await?);
            let read = |file: &Path| -> anyhow::Result<pb::OutputConfig> {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let json: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                let strings = |key: &str| -> Vec<String> {
                    json[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                };
                Ok(pb::OutputConfig {
                    name: json["name"].as_str().unwrap_or_default().into(),
                    kind: json["kind"].as_str().unwrap_or_default().into(),
                    settings: Some(json_to_struct(&json["settings"])),
                    secrets: json["secrets"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect(),
                    accepted_identities: strings("accepted_identities"),
                    ..Default::default()
                })
            };
            let show = |o: &pb::OutputConfig| {
                println!(
                    "{:>4} {:<24} {:<8} accepts {:?}  connections {} (faulted {})  settings {}",
                    o.id,
                    o.name,
                    o.kind,
                    o.accepted_identities,
                    o.connections,
                    o.faulted_connections,
                    o.settings.as_ref().map(struct_to_json).unwrap_or_default()
                )
            };
            match cmd {
                OutputCmd::Create { file } => {
                    show(&client.create_output(read(&file)?).await?.into_inner())
                }
                OutputCmd::Update { id, file } => {
                    let mut config = read(&file)?;
                    config.id = id;
                    show(&client.update_output(config).await?.into_inner())
                }
                OutputCmd::List => {
                    for o in client
                        .list_outputs(pb::ListOutputsRequest {})
                        .await?
                        .into_inner()
                        .outputs
                    {
                        show(&o);
                    }
                }
                OutputCmd::Delete { id } => {
                    client.delete_output(pb::OutputIdRequest { id }).await?;
                    println!("deleted output {id}");
                }
            }
            Ok(())
        }
        Command::Connection(cmd) => {
            let mut client = OutputServiceClient::new(channel(&cli.server).await?);
            let show = |c: &pb::Connection| {
                let f = c.figures.unwrap_or_default();
                println!(
                    "{:>4} audience {:>4} -> output {:>3}  {:<8} size {} adds {} drops {} volatility {:.3}  sent {} failed {} retried {} unsendable {}{}",
                    c.id,
                    c.audience_id,
                    c.output_id,
                    if c.status == pb::ConnectionStatus::Inactive as i32 { "inactive" } else { "sending" },
                    f.size, f.adds_24h, f.drops_24h, f.volatility, f.sent, f.failed, f.retried, f.unsendable,
                    if c.faulted { "  FAULTED" } else { "" }
                )
            };
            match cmd {
                ConnectionCmd::Create {
                    output,
                    audiences,
                    shared_attributes,
                    inactive,
                } => {
                    let status = if inactive {
                        pb::ConnectionStatus::Inactive
                    } else {
                        pb::ConnectionStatus::Sending
                    } as i32;
                    let results = client
                        .bulk_connect(pb::BulkConnectRequest {
                            output_id: output,
                            audience_ids: audiences,
                            status,
                            settings: None,
                            shared_attributes,
                        })
                        .await?
                        .into_inner()
                        .results;
                    for r in results {
                        if r.ok {
                            println!("audience {}: connection {}", r.audience_id, r.connection_id);
                        } else {
                            println!("audience {}: {}", r.audience_id, r.error);
                        }
                    }
                }
                ConnectionCmd::List { audience } => {
                    for c in client
                        .list_connections(pb::ListConnectionsRequest {
                            audience_id: audience,
                            output_id: 0,
                        })
                        .await?
                        .into_inner()
                        .connections
                    {
                        show(&c);
                    }
                }
                ConnectionCmd::Status { id, status } => {
                    let mut c = client
                        .get_connection(pb::ConnectionIdRequest { id })
                        .await?
                        .into_inner();
                    c.status = if status == "inactive" {
                        pb::ConnectionStatus::Inactive
                    } else {
                        pb::ConnectionStatus::Sending
                    } as i32;
                    show(&client.update_connection(c).await?.into_inner());
                }
                ConnectionCmd::Delete { id } => {
                    client
                        .delete_connection(pb::ConnectionIdRequest { id })
                        .await?;
                    println!("deleted connection {id}");
                }
                ConnectionCmd::Faults => {
                    for f in client
                        .list_faults(pb::ListFaultsRequest {})
                        .await?
                        .into_inner()
                        .faults
                    {
                        println!(
                            "connection {} (audience {} -> output {}): {} status {} after {} attempts at {}  body {:?}",
                            f.connection_id, f.audience_id, f.output_id, f.message, f.status, f.attempts, f.at_ms, f.body_excerpt
                        );
                    }
                }
                ConnectionCmd::Resume { id } => {
                    show(
                        &client
                            .resume(pb::ConnectionIdRequest { id })
                            .await?
                            .into_inner(),
                    );
                }
            }
            Ok(())
        }
        Command::Calc(cmd) => {
            let mut client = AudienceServiceClient::new(channel(&cli.server).await?);
            match cmd {
                CalcCmd::Put { files } => {
                    for file in files {
                        let text = std::fs::read_to_string(&file)
                            .with_context(|| format!("reading {}", file.display()))?;
                        let json: serde_json::Value = serde_json::from_str(&text)
                            .with_context(|| format!("{} is not JSON", file.display()))?;
                        let saved = client
                            .put_calculated_attribute(pb::CalculatedAttribute {
                                definition: Some(json_to_struct(&json)),
                                ..Default::default()
                            })
                            .await
                            .with_context(|| format!("{}", file.display()))?
                            .into_inner();
                        println!("defined (revision {}) {}", saved.revision, file.display());
                    }
                }
                CalcCmd::List => {
                    let list = client
                        .list_calculated_attributes(pb::ListCalculatedAttributesRequest {})
                        .await?
                        .into_inner();
                    for a in list.attributes {
                        let json = a
                            .definition
                            .as_ref()
                            .map(struct_to_json)
                            .unwrap_or_default();
                        println!("{json}");
                    }
                }
                CalcCmd::Delete { name } => {
                    client
                        .delete_calculated_attribute(pb::DeleteCalculatedAttributeRequest {
                            name: name.clone(),
                        })
                        .await?;
                    println!("deleted {name}");
                }
            }
            Ok(())
        }
        Command::History { mpid } => {
            let mut client = MembershipServiceClient::new(channel(&cli.server).await?);
            let h = client
                .get_membership_history(pb::GetMembershipHistoryRequest { mpid })
                .await?
                .into_inner();
            for i in h.intervals {
                let left = if i.left_ms == 0 {
                    "still a member".to_string()
                } else {
                    format!("left {} (v{})", i.left_ms, i.left_version)
                };
                println!(
                    "{:>5}  {:<32} entered {} (v{})  {left}",
                    i.audience_id, i.audience_name, i.entered_ms, i.entered_version
                );
            }
            Ok(())
        }
        Command::Members { audience, as_of } => {
            let mut client = MembershipServiceClient::new(channel(&cli.server).await?);
            let mut page_token = String::new();
            let mut total = 0;
            loop {
                let page = client
                    .list_members(pb::ListMembersRequest {
                        audience_id: audience,
                        as_of_ms: as_of.unwrap_or(0),
                        page_size: 10_000,
                        page_token,
                    })
                    .await?
                    .into_inner();
                total += page.mpids.len();
                for mpid in &page.mpids {
                    println!("{mpid}");
                }
                if page.next_page_token.is_empty() {
                    eprintln!(
                        "{total} members of audience {audience} as of {}",
                        page.as_of_ms
                    );
                    break;
                }
                page_token = page.next_page_token;
            }
            Ok(())
        }
        Command::Profile { mpid } => {
            let mut client = ProfileServiceClient::new(channel(&cli.server).await?);
            let p = client
                .get_profile(pb::GetProfileRequest { mpid })
                .await?
                .into_inner();
            println!(
                "mpid {}  first seen {}  last seen {}  app version {}",
                p.mpid, p.first_seen_ms, p.last_seen_ms, p.app_version
            );
            println!("identities:");
            for i in &p.identities {
                println!("  {:<28} {}", i.identity_type, i.value);
            }
            println!("user attributes:");
            let mut attrs: Vec<_> = p.user_attributes.iter().collect();
            attrs.sort_by_key(|(k, _)| (*k).clone());
            for (k, v) in attrs {
                println!("  {k:<28} {:?}", v.value);
            }
            if let Some(d) = &p.device_info {
                println!(
                    "device: platform {:?} os {:?} model {:?} carrier {:?}",
                    d.platform, d.os_version, d.device_model, d.network_carrier
                );
            }
            if !p.calculated_attributes.is_empty() {
                println!("calculated attributes:");
                let mut calc: Vec<_> = p.calculated_attributes.iter().collect();
                calc.sort_by_key(|(k, _)| (*k).clone());
                for (k, v) in calc {
                    println!("  {k:<28} {:?}", v.value);
                }
            }
            if let Some(l) = p
                .location
                .as_ref()
                .filter(|l| **l != pb::Location::default())
            {
                println!(
                    "location: city {:?} state {:?} zip {:?} dma {:?} country {:?} at {:?}, {:?}",
                    l.city, l.state, l.zip, l.dma, l.country, l.latitude, l.longitude
                );
            }
            for (kind, a) in [
                ("install", &p.install_attribution),
                ("uninstall", &p.uninstall_attribution),
            ] {
                if let Some(a) = a {
                    println!(
                        "{kind} attribution: publisher {:?} campaign {:?} ({})",
                        a.publisher, a.campaign, a.service_provider
                    );
                }
            }
            println!("audiences:");
            for m in &p.audiences {
                println!(
                    "  {:>5} {:<32} since {} (v{})",
                    m.audience_id, m.audience_name, m.since_ms, m.version
                );
            }
            println!("events in retention:");
            for e in &p.events {
                println!(
                    "  {:<48} {:>6}  last {}",
                    e.event_key, e.count_in_retention, e.last_seen_ms
                );
            }
            Ok(())
        }
        Command::Tier {
            event_type,
            name,
            tier,
        } => {
            let mut client = AudienceServiceClient::new(channel(&cli.server).await?);
            if let (Some(event_type), Some(name), Some(tier)) = (event_type, name, tier) {
                client
                    .set_event_tier(pb::EventTier {
                        event_type,
                        name,
                        tier,
                    })
                    .await?;
            }
            for t in client
                .list_event_tiers(pb::ListEventTiersRequest {})
                .await?
                .into_inner()
                .tiers
            {
                println!("{:<20} {:<32} {}", t.event_type, t.name, t.tier);
            }
            Ok(())
        }
        Command::Explain { mpid, audience } => {
            let mut client = ProfileServiceClient::new(channel(&cli.server).await?);
            let e = client
                .explain(pb::ExplainRequest {
                    mpid,
                    audience_id: audience,
                })
                .await?
                .into_inner();
            println!(
                "mpid {mpid} is {} audience {audience} (evaluated at {})",
                if e.member {
                    "a member of"
                } else {
                    "not a member of"
                },
                e.evaluated_at_ms
            );
            if let Some(root) = &e.root {
                print_explain_node(root, 1);
            }
            Ok(())
        }
        Command::Stats { ids } => {
            let mut client = MembershipServiceClient::new(channel(&cli.server).await?);
            let r = client
                .get_audience_stats(pb::GetAudienceStatsRequest { audience_ids: ids })
                .await?
                .into_inner();
            for a in r.audiences {
                let s = a.stats.unwrap_or_default();
                println!(
                    "audience {:>5}  size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}",
                    a.audience_id, s.size, s.adds_24h, s.drops_24h, s.volatility_24h
                );
            }
            Ok(())
        }
        Command::Connectors => {
            let mut client = MembershipServiceClient::new(channel(&cli.server).await?);
            for c in client
                .list_connectors(pb::ListConnectorsRequest {})
                .await?
                .into_inner()
                .connectors
            {
                println!(
                    "connector {} '{}' audiences {:?} delivered {} cursor {}",
                    c.id, c.subscriber_name, c.audience_ids, c.delivered, c.cursor
                );
                for a in c.audiences {
                    let s = a.stats.unwrap_or_default();
                    println!("    audience {:>5}  size {:>7}  adds24h {:>6}  drops24h {:>6}  volatility {:.3}", a.audience_id, s.size, s.adds_24h, s.drops_24h, s.volatility_24h);
                }
            }
            Ok(())
        }
        Command::Status => {
            let mut admin = AdminServiceClient::new(channel(&cli.server).await?);
            let s = admin
                .get_engine_status(pb::GetEngineStatusRequest {})
                .await?
                .into_inner();
            println!(
                "bootstrap {}  processed {}  dead-lettered {}  deltas {}",
                s.bootstrap_servers,
                s.messages_processed,
                s.messages_dead_lettered,
                s.deltas_emitted
            );
            println!(
                "dead letters: published {}  truncated {}  unpublishable {}  dropped {}  kept {}  (deltas unpublishable {})",
                s.dead_letters_published,
                s.dead_letters_truncated,
                s.dead_letters_unpublishable,
                s.dead_letters_dropped,
                s.dead_letters_kept,
                s.deltas_unpublishable
            );
            for p in s.partitions {
                println!("  partition {:>3}  outbox head {:>8}  profiles in memory {:>6}  next offsets {:?}", p.partition, p.outbox_head, p.profiles_active, p.next_offsets);
            }
            Ok(())
        }
        Command::Replay { start, wipe, wait } => {
            let mut admin = AdminServiceClient::new(channel(&cli.server).await?);
            let mut status = if start {
                admin
                    .replay_from_log(pb::ReplayFromLogRequest {
                        wipe_profiles: wipe,
                    })
                    .await?
                    .into_inner()
            } else {
                admin
                    .get_replay(pb::GetReplayRequest {})
                    .await?
                    .into_inner()
            };
            while wait && status.running {
                use std::io::Write;
                let (scanned, total) = status.partitions.iter().fold((0, 0), |(s, t), p| {
                    (
                        s + p.profiles_scanned,
                        t + p.profiles_total.max(p.profiles_scanned),
                    )
                });
                let percent = if total == 0 {
                    0.0
                } else {
                    100.0 * scanned as f64 / total as f64
                };
                eprint!("\r\x1b[2Kreplaying {percent:5.1}%  {scanned} of {total} profiles");
                std::io::stderr().flush()?;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                status = admin
                    .get_replay(pb::GetReplayRequest {})
                    .await?
                    .into_inner();
            }
            if wait {
                eprint!("\r\x1b[2K");
            }
            if status.partitions.is_empty() {
                println!("no replay since the engine started");
            }
            for p in &status.partitions {
                println!(
                    "partition {:>3}  {}{}  {} of {} profiles  {} deltas  {} unreadable logs",
                    p.partition,
                    if p.running { "running" } else { "done" },
                    if p.wiped { " (wiped first)" } else { "" },
                    p.profiles_scanned,
                    p.profiles_total.max(p.profiles_scanned),
                    p.deltas,
                    p.unreadable_logs
                );
            }
            Ok(())
        }
        Command::Clock(cmd) => {
            let mut admin = AdminServiceClient::new(channel(&cli.server).await?);
            let r = match cmd {
                ClockCmd::Get => admin.get_clock(pb::GetClockRequest {}).await?,
                ClockCmd::Advance {
                    days,
                    hours,
                    millis,
                } => {
                    let millis = days * 86_400_000 + hours * 3_600_000 + millis;
                    admin
                        .advance_clock(pb::AdvanceClockRequest { millis })
                        .await?
                }
            }
            .into_inner();
            println!(
                "now {} ({}) manual {}",
                r.now_ms,
                chrono::DateTime::from_timestamp_millis(r.now_ms)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
                r.manual
            );
            Ok(())
        }
        Command::Produce {
            bootstrap,
            topic,
            key,
            raw,
            file,
        } => {
            let bootstrap = match bootstrap {
                Some(b) => b,
                None => engine_bootstrap(&cli.server).await?,
            };
            let producer = producer(&bootstrap)?;
            let bytes = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let messages: Vec<Vec<u8>> = if raw {
                vec![bytes]
            } else {
                let text =
                    String::from_utf8(bytes).context("the file is not UTF-8 JSON (use --raw)")?;
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) => vec![serde_json::to_vec(&v)?],
                    Err(_) => text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| l.as_bytes().to_vec())
                        .collect(),
                }
            };
            for m in messages {
                let key = key
                    .clone()
                    .or_else(|| {
                        serde_json::from_slice::<serde_json::Value>(&m)
                            .ok()
                            .and_then(|v| match &v["mpid"] {
                                serde_json::Value::Number(n) => Some(n.to_string()),
                                serde_json::Value::String(s) => Some(s.clone()),
                                _ => None,
                            })
                    })
                    .unwrap_or_default();
                let (p, o) = send(&producer, &topic, &key, &m).await?;
                println!("produced to {topic} partition {p} offset {o} key {key}");
            }
            Ok(())
        }
        Command::CreateTopics {
            bootstrap,
            partitions,
            topics,
        } => {
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let refused =
                audience_services::server::ensure_topics(&bootstrap, &refs, partitions).await?;
            for (topic, reason) in &refused {
                eprintln!("topic {topic}: {reason}");
            }
            if !refused.is_empty() {
                bail!("{} topic(s) not created", refused.len());
            }
            println!("topics ready: {}", topics.join(", "));
            Ok(())
        }
        Command::Demo {
            audiences,
            users,
            rate,
            seconds,
        } => demo(&cli.server, &audiences, users, rate, seconds).await,
    }
}

async fn audience(server: &str, cmd: AudienceCmd) -> anyhow::Result<()> {
    let mut client = AudienceServiceClient::new(channel(server).await?);
    match cmd {
        AudienceCmd::Create { file, draft, wait } => {
            let f = AudienceFile::read(&file)?;
            let a = client
                .create_audience(pb::CreateAudienceRequest {
                    name: f.name,
                    external_name: f.external_name,
                    criteria: Some(json_to_struct(&f.criteria)),
                    tags: f.tags,
                    draft,
                })
                .await?
                .into_inner();
            print_audience(&a);
            if wait && !draft {
                wait_calculated(&mut client, a.id).await?;
            }
        }
        AudienceCmd::Load { dir } => {
            load_audiences(&mut client, &dir).await?;
        }
        AudienceCmd::List { tags } => {
            for a in client
                .list_audiences(pb::ListAudiencesRequest { tags })
                .await?
                .into_inner()
                .audiences
            {
                print_audience(&a);
            }
        }
        AudienceCmd::Get { id } => {
            let a = client
                .get_audience(pb::GetAudienceRequest { id })
                .await?
                .into_inner();
            print_audience(&a);
            if let Some(c) = &a.criteria {
                println!("{}", serde_json::to_string_pretty(&struct_to_json(c))?);
            }
        }
        AudienceCmd::Wait { id } => wait_calculated(&mut client, id).await?,
        AudienceCmd::Estimate { file, sample } => {
            let f = AudienceFile::read(&file)?;
            let e = client
                .estimate_audience(pb::EstimateAudienceRequest {
                    criteria: Some(json_to_struct(&f.criteria)),
                    sample_size: sample,
                })
                .await?
                .into_inner();
            if e.too_small {
                println!(
                    "~  (too small to estimate: {} of {} sampled profiles match, {} profiles)",
                    e.sampled_members, e.sample_size, e.profiles_total
                );
            } else if e.exact {
                println!(
                    "{}  (exact: every one of {} profiles evaluated)",
                    e.estimate, e.profiles_total
                );
            } else {
                println!(
                    "{}  (95% interval {}..{}; {} of {} sampled profiles match, {} profiles)",
                    e.estimate, e.low, e.high, e.sampled_members, e.sample_size, e.profiles_total
                );
            }
        }
        AudienceCmd::Diff { id, file } => {
            let f = AudienceFile::read(&file)?;
            let d = client
                .preview_update(pb::PreviewUpdateRequest {
                    audience_id: id,
                    criteria: Some(json_to_struct(&f.criteria)),
                    sample_size: 0,
                })
                .await?
                .into_inner();
            println!(
                "audience {id}: {} members now; {} would leave, {} would enter ({} profiles scanned)",
                d.members_now, d.would_leave, d.would_enter, d.profiles_scanned
            );
            for (label, sample, reason) in [
                ("leaving", &d.leaving_sample, &d.leaving_reason),
                ("entering", &d.entering_sample, &d.entering_reason),
            ] {
                if sample.is_empty() {
                    continue;
                }
                let list: Vec<String> = sample.iter().map(|m| m.to_string()).collect();
                println!("  {label}: {}", list.join(", "));
                if let Some(root) = reason.as_ref().and_then(|r| r.root.as_ref()) {
                    println!("  why {} is {label}:", sample[0]);
                    print_explain_node(root, 2);
                }
            }
        }
        AudienceCmd::Update { id, file, wait } => {
            let f = AudienceFile::read(&file)?;
            let a = client
                .update_audience(pb::UpdateAudienceRequest {
                    id,
                    name: f.name,
                    external_name: f.external_name,
                    criteria: Some(json_to_struct(&f.criteria)),
                    tags: f.tags,
                })
                .await?
                .into_inner();
            print_audience(&a);
            if wait {
                wait_calculated(&mut client, id).await?;
            }
        }
        AudienceCmd::Delete { id } => {
            client
                .delete_audience(pb::DeleteAudienceRequest { id })
                .await?;
            println!("audience {id} deleted");
        }
        AudienceCmd::Activate { id } => print_audience(
            &client
                .activate_audience(pb::AudienceIdRequest { id })
                .await?
                .into_inner(),
        ),
        AudienceCmd::Draft { id } => print_audience(
            &client
                .save_as_draft(pb::AudienceIdRequest { id })
                .await?
                .into_inner(),
        ),
    }
    Ok(())
}

/// Redraws one progress line (scanned, total, percentage, time left) until the audience is no
/// longer CALCULATING, then prints it.
async fn wait_calculated(
    client: &mut AudienceServiceClient<Channel>,
    id: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    loop {
        let a = client
            .get_audience(pb::GetAudienceRequest { id })
            .await?
            .into_inner();
        if a.status != pb::AudienceStatus::Calculating as i32 {
            eprint!("\r\x1b[2K");
            print_audience(&a);
            return Ok(());
        }
        let c = a.calculation.unwrap_or_default();
        let estimate = match &c.estimate {
            Some(e) if e.too_small => ", estimated size ~".to_string(),
            Some(e) => format!(", estimated size {} ({}..{})", e.estimate, e.low, e.high),
            None => String::new(),
        };
        let left = if c.eta_ms > 0 {
            format!(", about {:.0} s left", c.eta_ms as f64 / 1000.0)
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[2Kcalculating {:5.1}%  {} of {} profiles{left}{estimate}",
            c.percent, c.profiles_scanned, c.profiles_total
        );
        std::io::stderr().flush()?;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Creates the audiences of a folder that do not exist by name; returns id by name.
async fn load_audiences(
    client: &mut AudienceServiceClient<Channel>,
    dir: &Path,
) -> anyhow::Result<HashMap<u64, String>> {
    let existing = client
        .list_audiences(pb::ListAudiencesRequest { tags: vec![] })
        .await?
        .into_inner()
        .audiences;
    let mut names: HashMap<u64, String> = existing.iter().map(|a| (a.id, a.name.clone())).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in files {
        let f = AudienceFile::read(&file)?;
        if existing.iter().any(|a| a.name == f.name) {
            continue;
        }
        let a = client
            .create_audience(pb::CreateAudienceRequest {
                name: f.name,
                external_name: f.external_name,
                criteria: Some(json_to_struct(&f.criteria)),
                tags: f.tags,
                draft: false,
            })
            .await
            .with_context(|| format!("creating {}", file.display()))?
            .into_inner();
        println!(
            "loaded audience {} '{}' from {}",
            a.id,
            a.name,
            file.display()
        );
        names.insert(a.id, a.name);
    }
    Ok(names)
}

/// A deterministic stream of sample users doing sample things.
fn sample_batch(mpid: i64, step: u64, now_ms: i64) -> serde_json::Value {
    const SCREENS: &[&str] = &["Home", "Search", "Product", "Cart"];
    const EVENTS: &[(&str, &str)] = &[
        ("Viewed Item", "navigation"),
        ("Search", "search"),
        ("Shared", "social"),
        ("Played Video", "other"),
    ];
    const TIERS: &[&str] = &["bronze", "silver", "gold", "platinum"];
    let h = (mpid as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(step.wrapping_mul(1442695040888963407));
    let pick = |n: usize, salt: u64| ((h >> (salt * 8)) % n as u64) as usize;
    let mut events = vec![
        serde_json::json!({"event_type": "screen_view", "data": {"screen_name": SCREENS[pick(SCREENS.len(), 1)], "timestamp_unixtime_ms": now_ms}}),
    ];
    let (name, kind) = EVENTS[pick(EVENTS.len(), 2)];
    events.push(serde_json::json!({"event_type": "custom_event", "data": {"event_name": name, "custom_event_type": kind, "timestamp_unixtime_ms": now_ms, "custom_attributes": {"category": if pick(2, 3) == 0 { "shoes" } else { "hats" }}}}));
    if pick(5, 4) == 0 {
        events.push(serde_json::json!({"event_type": "commerce_event", "data": {"timestamp_unixtime_ms": now_ms, "product_action": {"action": if pick(3, 5) == 0 { "purchase" } else { "add_to_cart" }, "products": [{"id": "sku-1", "name": "Sneaker", "price": 59.0, "quantity": 1}], "total_amount": 59.0}}}));
    }
    serde_json::json!({
        "mpid": mpid,
        "environment": "development",
        "timestamp_unixtime_ms": now_ms,
        "user_identities": {"customer_id": format!("cust-{mpid}"), "email": if mpid % 3 == 0 { serde_json::Value::Null } else { format!("user{mpid}@example.com").into() }},
        "user_attributes": {"tier": TIERS[pick(TIERS.len(), 6)], "age": 18 + (mpid % 50)},
        "device_info": {"platform": if mpid % 2 == 0 { "iOS" } else { "Android" }, "os_version": "17.1"},
        "events": events,
    })
}

async fn demo(server: &str, dir: &Path, users: i64, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let engine = channel(server).await?;
    let mut audiences = AudienceServiceClient::new(engine.clone());
    let names = load_audiences(&mut audiences, dir).await?;
    if names.is_empty() {
        bail!("no audiences in {}", dir.display());
    }
    let bootstrap = engine_bootstrap(server).await?;
    let producer = producer(&bootstrap)?;
    let mut membership = MembershipServiceClient::new(engine.clone());
    let mut stream = membership
        .subscribe(pb::SubscribeRequest {
            audience_ids: vec![],
            cursor: "now".into(),
            subscriber_name: "demo".into(),
        })
        .await?
        .into_inner();
    let mut stats_client = MembershipServiceClient::new(engine.clone());
    let printer = tokio::spawn(async move {
        while let Ok(Some(d)) = stream.message().await {
            let size = stats_client
                .get_audience_stats(pb::GetAudienceStatsRequest {
                    audience_ids: vec![d.audience_id],
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().audiences.first().and_then(|a| a.stats))
                .map(|s| s.size)
                .unwrap_or_default();
            let name = names.get(&d.audience_id).cloned().unwrap_or_default();
            let verb = if d.kind == pb::DeltaKind::Added as i32 {
                "entered"
            } else {
                "left   "
            };
            println!(
                "user {:>6} {verb} '{name}' (audience {}, now {size} members)",
                d.mpid, d.audience_id
            );
        }
    });
    println!("feeding sample events for {users} users to {bootstrap} at {rate} batches/s (Ctrl-C to stop)");
    let mut admin = AdminServiceClient::new(engine);
    let manual_clock = admin
        .get_clock(pb::GetClockRequest {})
        .await?
        .into_inner()
        .manual;
    if manual_clock {
        println!("the engine clock is manual: every 15 s the demo moves it a day forward, so recency windows pass");
    }
    let mut last_jump = std::time::Instant::now();
    let start = std::time::Instant::now();
    let mut step = 0u64;
    let mut interval = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
    loop {
        interval.tick().await;
        if seconds > 0 && start.elapsed() > Duration::from_secs(seconds) {
            break;
        }
        if manual_clock && last_jump.elapsed() > Duration::from_secs(15) {
            admin
                .advance_clock(pb::AdvanceClockRequest { millis: 86_400_000 })
                .await?;
            println!("--- the engine clock moved one day forward ---");
            last_jump = std::time::Instant::now();
        }
        let mpid = 1000 + (step as i64 * 7919) % users.max(1);
        let now = admin
            .get_clock(pb::GetClockRequest {})
            .await?
            .into_inner()
            .now_ms;
        let batch = sample_batch(mpid, step, now);
        send(
            &producer,
            "audience-events",
            &mpid.to_string(),
            batch.to_string().as_bytes(),
        )
        .await?;
        step += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    printer.abort();
    Ok(())
}
