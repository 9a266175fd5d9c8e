//! `audiencectl calc ...` (calculated attributes) and `audiencectl tier` (event tiers).

use crate::client::{all_pages, PAGE_SIZE};
use crate::print::*;
use anyhow::Context;
use audience_proto::v1 as pb;
use audience_services::convert::{json_to_struct, struct_to_json};
use clap::Subcommand;
use pb::audience_service_client::AudienceServiceClient;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CalcCmd {
    /// Define or redefine calculated attributes from JSON files (name, calculation, event,
    /// field, window_days).
    Put { files: Vec<PathBuf> },
    /// List the calculated attributes.
    List,
    /// Delete a calculated attribute (refused while audiences read it).
    Delete { name: String },
}

pub async fn calc(ctx: &Ctx, cmd: CalcCmd) -> anyhow::Result<()> {
    let mut client = AudienceServiceClient::new(ctx.channel().await?);
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
                if ctx.json() {
                    say_json(&serde_json::json!({
                        "file": file.display().to_string(),
                        "revision": saved.revision,
                        "definition": saved.definition.as_ref().map(struct_to_json),
                    }));
                } else {
                    say!("defined (revision {}) {}", saved.revision, file.display());
                }
            }
        }
        CalcCmd::List => {
            let attributes = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let page = client
                        .list_calculated_attributes(pb::ListCalculatedAttributesRequest {
                            page_size: PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.attributes, page.next_page_token))
                }
            })
            .await?;
            for a in attributes {
                let json = a
                    .definition
                    .as_ref()
                    .map(struct_to_json)
                    .unwrap_or_default();
                if ctx.json() {
                    say_json(&json);
                } else {
                    say!("{json}");
                }
            }
        }
        CalcCmd::Delete { name } => {
            client
                .delete_calculated_attribute(pb::DeleteCalculatedAttributeRequest {
                    name: name.clone(),
                })
                .await?;
            if ctx.json() {
                say_json(&serde_json::json!({"deleted": name}));
            } else {
                say!("deleted {name}");
            }
        }
    }
    Ok(())
}

pub async fn tier(
    ctx: &Ctx,
    event_type: Option<String>,
    name: Option<String>,
    tier: Option<String>,
) -> anyhow::Result<()> {
    let mut client = AudienceServiceClient::new(ctx.channel().await?);
    if let (Some(event_type), Some(name), Some(tier)) = (event_type, name, tier) {
        client
            .set_event_tier(pb::EventTier {
                event_type,
                name,
                tier,
            })
            .await?;
    }
    let tiers = all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_event_tiers(pb::ListEventTiersRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.tiers, page.next_page_token))
        }
    })
    .await?;
    for t in tiers {
        if ctx.json() {
            say_json(&serde_json::json!({
                "event_type": t.event_type, "name": t.name, "tier": t.tier,
            }));
        } else {
            say!("{:<20} {:<32} {}", t.event_type, t.name, t.tier);
        }
    }
    Ok(())
}
