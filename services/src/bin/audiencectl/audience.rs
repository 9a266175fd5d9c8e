//! `audiencectl audience ...`: create, load, list, get, update, wait, estimate, diff, delete,
//! activate, draft and clone audiences, and their A/B tests.

use crate::client::{all_pages, PAGE_SIZE};
use crate::print::*;
use anyhow::Context;
use audience_proto::v1 as pb;
use audience_services::auth::AuthChannel;
use audience_services::config::AudienceFile;
use audience_services::convert::{json_to_struct, struct_to_json};
use clap::Subcommand;
use pb::audience_service_client::AudienceServiceClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum AudienceCmd {
    /// Create an audience from a JSON file: {"name", "external_name", "tags", "criteria",
    /// "workspaces", "inputs", "access": "private" | "view_only" | "usable"}.
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
        /// Only audiences reading this workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// Only single workspace, only multi workspace audiences, or the audiences shared with
        /// me (with --workspace: shared with that workspace; else with the token's).
        #[arg(long, value_parser = ["single", "multi", "shared"])]
        kind: Option<String>,
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
    /// Copy an audience as a draft: its criteria, external name, tags, scope and access (not
    /// its members or connections).
    Clone {
        id: u64,
        /// The copy's name (default: "Copy of" and the original's name).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// An audience's A/B test: its members split into variations, each connected to outputs
    /// on its own (`connection create --variation`).
    Test {
        #[command(subcommand)]
        cmd: TestCmd,
    },
}

#[derive(Subcommand)]
pub enum TestCmd {
    /// Start a test: up to 5 variations, "NAME=PERCENT" or "PERCENT" (named "Variation N");
    /// Control holds the rest.
    Create {
        id: u64,
        #[arg(long = "variation", required = true)]
        variations: Vec<String>,
    },
    /// The test's variations and their shares, Control last.
    Show { id: u64 },
    /// End the test: its variations and their connections are deleted.
    Delete { id: u64 },
}

pub async fn command(ctx: &Ctx, cmd: AudienceCmd) -> anyhow::Result<()> {
    let mut client = AudienceServiceClient::new(ctx.channel().await?);
    match cmd {
        AudienceCmd::Create { file, draft, wait } => {
            let f = AudienceFile::read(&file)?;
            let a = client
                .create_audience(create_request(f, draft))
                .await?
                .into_inner();
            // With --wait, JSON gives one object: the audience once calculated.
            if !(wait && !draft && ctx.json()) {
                audience(ctx, &a);
            }
            if wait && !draft {
                wait_calculated(ctx, &mut client, a.id).await?;
            }
        }
        AudienceCmd::Load { dir } => {
            load_audiences(ctx, &mut client, &dir).await?;
        }
        AudienceCmd::List {
            tags,
            workspace,
            kind,
        } => {
            let filter = ListFilter {
                tags,
                workspace: workspace.unwrap_or_default(),
                kind: match kind.as_deref() {
                    Some("single") => pb::WorkspaceKind::SingleWorkspace,
                    Some("multi") => pb::WorkspaceKind::MultiWorkspace,
                    Some("shared") => pb::WorkspaceKind::SharedWithMe,
                    _ => pb::WorkspaceKind::Unspecified,
                },
            };
            for a in all_audiences(&mut client, filter).await? {
                audience(ctx, &a);
            }
        }
        AudienceCmd::Get { id } => {
            let a = client
                .get_audience(pb::GetAudienceRequest { id })
                .await?
                .into_inner();
            audience(ctx, &a);
            if let Some(c) = a.criteria.as_ref().filter(|_| !ctx.json()) {
                say!("{}", serde_json::to_string_pretty(&struct_to_json(c))?);
            }
        }
        AudienceCmd::Wait { id } => wait_calculated(ctx, &mut client, id).await?,
        AudienceCmd::Estimate { file, sample } => {
            let f = AudienceFile::read(&file)?;
            let e = client
                .estimate_audience(pb::EstimateAudienceRequest {
                    criteria: Some(json_to_struct(&f.criteria)),
                    sample_size: sample,
                    workspaces: f.workspaces,
                    inputs: f.inputs,
                })
                .await?
                .into_inner();
            if ctx.json() {
                say_json(&serde_json::json!({
                    "estimate": e.estimate,
                    "low": e.low,
                    "high": e.high,
                    "exact": e.exact,
                    "too_small": e.too_small,
                    "sampled_members": e.sampled_members,
                    "sample_size": e.sample_size,
                    "profiles_total": e.profiles_total,
                }));
            } else if e.too_small {
                say!(
                    "~  (too small to estimate: {} of {} sampled profiles match, {} profiles)",
                    e.sampled_members,
                    e.sample_size,
                    e.profiles_total
                );
            } else if e.exact {
                say!(
                    "{}  (exact: every one of {} profiles evaluated)",
                    e.estimate,
                    e.profiles_total
                );
            } else {
                say!(
                    "{}  (95% interval {}..{}; {} of {} sampled profiles match, {} profiles)",
                    e.estimate,
                    e.low,
                    e.high,
                    e.sampled_members,
                    e.sample_size,
                    e.profiles_total
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
            if ctx.json() {
                let reason = |r: &Option<pb::Explanation>| {
                    r.as_ref().and_then(|r| r.root.as_ref()).map(explain_json)
                };
                say_json(&serde_json::json!({
                    "audience_id": id,
                    "members_now": d.members_now,
                    "would_leave": d.would_leave,
                    "would_enter": d.would_enter,
                    "profiles_scanned": d.profiles_scanned,
                    "leaving_sample": d.leaving_sample,
                    "entering_sample": d.entering_sample,
                    "leaving_reason": reason(&d.leaving_reason),
                    "entering_reason": reason(&d.entering_reason),
                }));
                return Ok(());
            }
            say!(
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
                say!("  {label}: {}", list.join(", "));
                if let Some(root) = reason.as_ref().and_then(|r| r.root.as_ref()) {
                    say!("  why {} is {label}:", sample[0]);
                    explain_text(root, 2);
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
                    workspaces: f.workspaces,
                    inputs: f.inputs,
                    access: access_number(f.access),
                })
                .await?
                .into_inner();
            if !(wait && ctx.json()) {
                audience(ctx, &a);
            }
            if wait {
                wait_calculated(ctx, &mut client, id).await?;
            }
        }
        AudienceCmd::Delete { id } => {
            client
                .delete_audience(pb::DeleteAudienceRequest { id })
                .await?;
            if ctx.json() {
                say_json(&serde_json::json!({"deleted": id}));
            } else {
                say!("audience {id} deleted");
            }
        }
        AudienceCmd::Activate { id } => audience(
            ctx,
            &client
                .activate_audience(pb::AudienceIdRequest { id })
                .await?
                .into_inner(),
        ),
        AudienceCmd::Draft { id } => audience(
            ctx,
            &client
                .save_as_draft(pb::AudienceIdRequest { id })
                .await?
                .into_inner(),
        ),
        AudienceCmd::Clone { id, name } => audience(
            ctx,
            &client
                .clone_audience(pb::CloneAudienceRequest { id, name })
                .await?
                .into_inner(),
        ),
        AudienceCmd::Test { cmd } => test_command(ctx, &mut client, cmd).await?,
    }
    Ok(())
}

async fn test_command(
    ctx: &Ctx,
    client: &mut AudienceServiceClient<AuthChannel>,
    cmd: TestCmd,
) -> anyhow::Result<()> {
    let a = match cmd {
        TestCmd::Create { id, variations } => {
            let variations = variations
                .iter()
                .map(|v| variation_arg(v))
                .collect::<anyhow::Result<Vec<_>>>()?;
            client
                .create_ab_test(pb::CreateAbTestRequest {
                    audience_id: id,
                    variations,
                })
                .await?
                .into_inner()
        }
        TestCmd::Show { id } => client
            .get_audience(pb::GetAudienceRequest { id })
            .await?
            .into_inner(),
        TestCmd::Delete { id } => client
            .delete_ab_test(pb::AudienceIdRequest { id })
            .await?
            .into_inner(),
    };
    if ctx.json() {
        say_json(&serde_json::json!({
            "audience_id": a.id,
            "ab_test": a.ab_test.as_ref().map(ab_test_json),
        }));
        return Ok(());
    }
    match &a.ab_test {
        None => say!("audience {} '{}': no A/B test", a.id, a.name),
        Some(test) => {
            say!("audience {} '{}': A/B test {}", a.id, a.name, test.id);
            for v in &test.variations {
                say!("  {:>3}%  {}", v.percent, v.name);
            }
        }
    }
    Ok(())
}

/// A `--variation` argument: "NAME=PERCENT", or "PERCENT" alone (the engine names it).
fn variation_arg(arg: &str) -> anyhow::Result<pb::AbVariation> {
    let (name, percent) = match arg.rsplit_once('=') {
        Some((name, percent)) => (name.trim(), percent.trim()),
        None => ("", arg.trim()),
    };
    let percent = percent.trim_end_matches('%').parse::<u32>().map_err(|_| {
        anyhow::anyhow!("--variation {arg:?}: expected NAME=PERCENT or PERCENT, a whole number")
    })?;
    Ok(pb::AbVariation {
        name: name.to_string(),
        percent,
    })
}

/// The request that creates the audience of a file.
fn create_request(f: AudienceFile, draft: bool) -> pb::CreateAudienceRequest {
    pb::CreateAudienceRequest {
        name: f.name,
        external_name: f.external_name,
        criteria: Some(json_to_struct(&f.criteria)),
        tags: f.tags,
        draft,
        workspaces: f.workspaces,
        inputs: f.inputs,
        access: access_number(f.access),
    }
}

/// A file's access as the request's enum number (unspecified when the file names none).
fn access_number(access: Option<audience_state::catalog::AudienceAccess>) -> i32 {
    access.map_or(0, |a| audience_services::convert::access_to_pb(a) as i32)
}

/// Redraws one progress line (scanned, total, percentage, time left) until the audience is no
/// longer CALCULATING, then prints it.
pub async fn wait_calculated(
    ctx: &Ctx,
    client: &mut AudienceServiceClient<AuthChannel>,
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
            audience(ctx, &a);
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

/// Every audience carrying all of `tags`, read page after page.
/// What `audience list` selects by.
#[derive(Default)]
pub struct ListFilter {
    pub tags: Vec<String>,
    pub workspace: String,
    pub kind: pb::WorkspaceKind,
}

pub async fn all_audiences(
    client: &mut AudienceServiceClient<AuthChannel>,
    filter: ListFilter,
) -> anyhow::Result<Vec<pb::Audience>> {
    all_pages(|page_token| {
        let mut client = client.clone();
        let request = pb::ListAudiencesRequest {
            tags: filter.tags.clone(),
            page_size: PAGE_SIZE,
            page_token,
            workspace: filter.workspace.clone(),
            workspace_kind: filter.kind as i32,
        };
        async move {
            let page = client.list_audiences(request).await?.into_inner();
            Ok((page.audiences, page.next_page_token))
        }
    })
    .await
}

/// Creates the audiences of a folder that do not exist by name; returns id by name.
pub async fn load_audiences(
    ctx: &Ctx,
    client: &mut AudienceServiceClient<AuthChannel>,
    dir: &Path,
) -> anyhow::Result<HashMap<u64, String>> {
    let existing = all_audiences(client, ListFilter::default()).await?;
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
            .create_audience(create_request(f, false))
            .await
            .with_context(|| format!("creating {}", file.display()))?
            .into_inner();
        if ctx.json() {
            let mut loaded = audience_json(&a);
            loaded["file"] = serde_json::json!(file.display().to_string());
            say_json(&loaded);
        } else {
            say!(
                "loaded audience {} '{}' from {}",
                a.id,
                a.name,
                file.display()
            );
        }
        names.insert(a.id, a.name);
    }
    Ok(names)
}
