//! What the workspace tests share: three inputs of two workspaces, told apart by the JSON
//! batches' `context.source`, batches through them, scoped audiences and their members.

use crate::CLUSTER_TOKEN;
use crate::{
    criteria, custom_event, memberships, wait_active, Broker, Channel, Engine, Result, Topics,
};
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// Secrets of the tokens limited to app-a and app-b.
pub const TOKEN_A: &str = "app-a-token-0123456789";
pub const TOKEN_B: &str = "app-b-token-0123456789";

/// An engine (data in `dir`/engine) with the three inputs, told apart by `context.source`,
/// accepting the tests' own token and `tokens`, each (name, secret, scopes such as
/// `read+write+workspace:app-b`).
pub fn start_engine(
    broker: &Broker,
    topics: &Topics,
    dir: &Path,
    group: &str,
    tokens: &[(&str, &str, &str)],
) -> Result<Engine> {
    let mut secrets = format!("e2e={CLUSTER_TOKEN}");
    let mut scopes = Vec::new();
    for (name, secret, grant) in tokens {
        secrets.push_str(&format!(",{name}={secret}"));
        scopes.push(format!("{name}={grant}"));
    }
    let scopes = scopes.join(",");
    let mut settings = vec![
        ("AUDIENCE_INPUTS", INPUTS),
        ("AUDIENCE_SOURCE_FIELD", "context.source"),
    ];
    if !tokens.is_empty() {
        settings.push(("AUDIENCE_TOKENS", &secrets));
        settings.push(("AUDIENCE_TOKEN_SCOPES", &scopes));
    }
    Engine::start_with(broker, topics, &dir.join("engine"), group, &settings)
}

/// A channel to the engine sending `secret`.
pub async fn connect_as(engine: &Engine, secret: &str) -> Result<Channel> {
    audience_services::auth::ClientOptions {
        token: Some(secret.into()),
        ..Default::default()
    }
    .connect(&engine.grpc)
    .await
}

/// ios and web are app-a's, partner is app-b's.
pub const INPUTS: &str = "ios@app-a:source=ios;web@app-a:source=web;partner@app-b:source=partner";

/// A batch through `source` (`None`: unstamped), with `plays` Play events.
pub fn batch(mpid: i64, now: i64, source: Option<&str>, plays: usize, extra: Value) -> Value {
    let mut b = json!({
        "mpid": mpid,
        "timestamp_unixtime_ms": now,
        "events": (0..plays)
            .map(|i| custom_event("Play", "navigation", now - i as i64, json!({})))
            .collect::<Vec<_>>(),
    });
    if let Some(source) = source {
        b["context"] = json!({"source": source});
    }
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

pub async fn create_scoped(
    ch: &Channel,
    name: &str,
    criteria_json: Value,
    workspaces: &[&str],
    inputs: &[&str],
) -> std::result::Result<pb::Audience, tonic::Status> {
    pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .create_audience(pb::CreateAudienceRequest {
            name: name.into(),
            criteria: Some(criteria(criteria_json)),
            workspaces: workspaces.iter().map(|w| w.to_string()).collect(),
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Waits until the audience is calculated (ACTIVE), then its members among `mpids`.
pub async fn members_of(ch: &Channel, id: u64, mpids: &[i64]) -> Result<BTreeSet<i64>> {
    wait_active(ch, id).await?;
    let mut out = BTreeSet::new();
    for &mpid in mpids {
        if memberships(ch, mpid).await?.iter().any(|(a, _)| *a == id) {
            out.insert(mpid);
        }
    }
    Ok(out)
}

pub async fn listed(ch: &Channel, workspace: &str, kind: pb::WorkspaceKind) -> Result<Vec<String>> {
    let page = pb::audience_service_client::AudienceServiceClient::new(ch.clone())
        .list_audiences(pb::ListAudiencesRequest {
            workspace: workspace.into(),
            workspace_kind: kind as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page.audiences.into_iter().map(|a| a.name).collect())
}
