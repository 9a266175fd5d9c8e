//! `audiencectl output ...` and `audiencectl connection ...`: output configurations and the
//! connections of audiences to them.

use crate::client::{all_pages, PAGE_SIZE};
use crate::print::*;
use anyhow::Context;
use audience_proto::v1 as pb;
use audience_services::convert::{json_to_struct, struct_to_json};
use clap::Subcommand;
use pb::output_service_client::OutputServiceClient;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum OutputCmd {
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
pub enum ConnectionCmd {
    /// Connect audiences to an output (one or many: a result per audience).
    Create {
        /// The output's id (`--output` is the global output format).
        #[arg(long = "output-id")]
        output_id: u64,
        /// Audience ids.
        audiences: Vec<u64>,
        /// User attributes to share with the identities.
        #[arg(long = "share")]
        shared_attributes: Vec<String>,
        /// Create it inactive.
        #[arg(long)]
        inactive: bool,
        /// Connect one variation of the audience's A/B test (Control included) instead of
        /// the whole audience: one audience only.
        #[arg(long)]
        variation: Option<String>,
    },
    List {
        #[arg(long, default_value_t = 0)]
        audience: u64,
    },
    /// Change a connection's shared user attributes or settings; what is not given is kept.
    /// Its delivery starts again with them (an inactive connection keeps waiting).
    Update {
        id: u64,
        /// The user attributes shared from now on (repeat the flag; replaces the list).
        #[arg(long = "share")]
        shared_attributes: Vec<String>,
        /// Share no user attributes from now on.
        #[arg(long, conflicts_with = "shared_attributes")]
        share_none: bool,
        /// The connection's settings, a JSON object (replaces them).
        #[arg(long)]
        settings: Option<String>,
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

pub async fn output(ctx: &Ctx, cmd: OutputCmd) -> anyhow::Result<()> {
    let mut client = OutputServiceClient::new(ctx.channel().await?);
    let read = |file: &Path| -> anyhow::Result<pb::OutputConfig> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
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
        if ctx.json() {
            return say_json(&serde_json::json!({
                "id": o.id,
                "name": o.name,
                "kind": o.kind,
                "accepted_identities": o.accepted_identities,
                "connections": o.connections,
                "faulted_connections": o.faulted_connections,
                "settings": o.settings.as_ref().map(struct_to_json),
            }));
        }
        say!(
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
        OutputCmd::Create { file } => show(&client.create_output(read(&file)?).await?.into_inner()),
        OutputCmd::Update { id, file } => {
            let mut config = read(&file)?;
            config.id = id;
            show(&client.update_output(config).await?.into_inner())
        }
        OutputCmd::List => {
            let outputs = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_outputs(pb::ListOutputsRequest {
                            page_size: PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.outputs, page.next_page_token))
                }
            })
            .await?;
            outputs.iter().for_each(&show);
        }
        OutputCmd::Delete { id } => {
            client.delete_output(pb::OutputIdRequest { id }).await?;
            if ctx.json() {
                say_json(&serde_json::json!({"deleted_output": id}));
            } else {
                say!("deleted output {id}");
            }
        }
    }
    Ok(())
}

pub async fn connection(ctx: &Ctx, cmd: ConnectionCmd) -> anyhow::Result<()> {
    let mut client = OutputServiceClient::new(ctx.channel().await?);
    let show = |c: &pb::Connection| {
        let f = c.figures.unwrap_or_default();
        if ctx.json() {
            return say_json(&serde_json::json!({
                "id": c.id,
                "audience_id": c.audience_id,
                "output_id": c.output_id,
                "status": if c.status == pb::ConnectionStatus::Inactive as i32 { "inactive" } else { "sending" },
                "shared_attributes": c.shared_attributes,
                "variation": c.variation,
                "settings": c.settings.as_ref().map(struct_to_json),
                "faulted": c.faulted,
                "size": f.size,
                "adds_24h": f.adds_24h,
                "drops_24h": f.drops_24h,
                "volatility": f.volatility,
                "sent": f.sent,
                "failed": f.failed,
                "retried": f.retried,
                "unsendable": f.unsendable,
            }));
        }
        let shares = match c.shared_attributes.is_empty() {
            true => String::new(),
            false => format!("  shares {}", c.shared_attributes.join(", ")),
        };
        let variation = match c.variation.as_str() {
            "" => String::new(),
            v => format!(" ({v})"),
        };
        say!(
            "{:>4} audience {:>4}{variation} -> output {:>3}  {:<8} size {} adds {} drops {} volatility {:.3}  sent {} failed {} retried {} unsendable {}{shares}{}",
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
            output_id,
            audiences,
            shared_attributes,
            inactive,
            variation,
        } => {
            let status = if inactive {
                pb::ConnectionStatus::Inactive
            } else {
                pb::ConnectionStatus::Sending
            } as i32;
            if let Some(variation) = variation {
                let [audience_id] = audiences[..] else {
                    anyhow::bail!(
                        "--variation connects the variation of one audience: give one audience id"
                    );
                };
                let c = client
                    .create_connection(pb::Connection {
                        audience_id,
                        output_id,
                        status,
                        shared_attributes,
                        variation,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                show(&c);
                return Ok(());
            }
            let results = client
                .bulk_connect(pb::BulkConnectRequest {
                    output_id,
                    audience_ids: audiences,
                    status,
                    settings: None,
                    shared_attributes,
                })
                .await?
                .into_inner()
                .results;
            for r in results {
                if ctx.json() {
                    say_json(&serde_json::json!({
                        "audience_id": r.audience_id,
                        "connection_id": r.ok.then_some(r.connection_id),
                        "error": (!r.ok).then_some(&r.error),
                    }));
                } else if r.ok {
                    say!("audience {}: connection {}", r.audience_id, r.connection_id);
                } else {
                    say!("audience {}: {}", r.audience_id, r.error);
                }
            }
        }
        ConnectionCmd::List { audience } => {
            let connections = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_connections(pb::ListConnectionsRequest {
                            audience_id: audience,
                            output_id: 0,
                            page_size: PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.connections, page.next_page_token))
                }
            })
            .await?;
            connections.iter().for_each(&show);
        }
        ConnectionCmd::Update {
            id,
            shared_attributes,
            share_none,
            settings,
        } => {
            let mut c = client
                .get_connection(pb::ConnectionIdRequest { id })
                .await?
                .into_inner();
            if share_none {
                c.shared_attributes.clear();
            } else if !shared_attributes.is_empty() {
                c.shared_attributes = shared_attributes;
            }
            if let Some(text) = settings {
                let json: serde_json::Value =
                    serde_json::from_str(&text).context("--settings is not JSON")?;
                anyhow::ensure!(
                    json.is_object(),
                    "--settings must be a JSON object, not {json}"
                );
                c.settings = Some(json_to_struct(&json));
            }
            show(&client.update_connection(c).await?.into_inner());
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
            if ctx.json() {
                say_json(&serde_json::json!({"deleted_connection": id}));
            } else {
                say!("deleted connection {id}");
            }
        }
        ConnectionCmd::Faults => {
            let faults = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_faults(pb::ListFaultsRequest {
                            page_size: PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.faults, page.next_page_token))
                }
            })
            .await?;
            for f in faults {
                if ctx.json() {
                    say_json(&serde_json::json!({
                        "connection_id": f.connection_id,
                        "audience_id": f.audience_id,
                        "output_id": f.output_id,
                        "message": f.message,
                        "status": f.status,
                        "attempts": f.attempts,
                        "at": when_json(f.at_ms),
                        "body_excerpt": f.body_excerpt,
                        "node_id": f.node_id,
                    }));
                    continue;
                }
                say!(
                    "connection {} (audience {} -> output {}) on node {}: {} status {} after {} attempts at {}  body {:?}",
                    f.connection_id, f.audience_id, f.output_id, f.node_id, f.message, f.status, f.attempts, when(f.at_ms), f.body_excerpt
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
