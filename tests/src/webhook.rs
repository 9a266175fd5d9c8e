//! A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that records every request
//! it accepts and answers as scripted (errors, 429 with Retry-After, a hang, a slow receiver),
//! and the membership it ends with.

use crate::{criteria, Result};
use audience_proto::v1 as pb;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the test webhook answers its next request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    TooManyRequests { retry_after_s: u64 },
    Hang(Duration),
}

#[derive(Default)]
pub struct Hook {
    pub script: Mutex<VecDeque<Answer>>,
    /// Every request body accepted (2xx), in order.
    pub accepted: Mutex<Vec<Value>>,
    /// Every DELETE request: its query string and body.
    pub deleted: Mutex<Vec<(String, Value)>>,
    /// When each request arrived, accepted or not.
    pub arrivals: Mutex<Vec<Instant>>,
    pub authorization: Mutex<Vec<String>>,
    /// Added to every answer: a slow receiver.
    pub delay: Mutex<Duration>,
    /// When each accepted body arrived (beside `accepted`).
    pub accepted_at: Mutex<Vec<Instant>>,
    /// Until then every POST is answered 503: an output that is down.
    pub down_until: Mutex<Option<Instant>>,
}

async fn receive(
    State(hook): State<Arc<Hook>>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    hook.arrivals.lock().unwrap().push(Instant::now());
    let delay = *hook.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(a) = headers.get("authorization") {
        hook.authorization
            .lock()
            .unwrap()
            .push(a.to_str().unwrap_or_default().to_string());
    }
    let down = hook
        .down_until
        .lock()
        .unwrap()
        .is_some_and(|until| Instant::now() < until);
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    let answer = hook.script.lock().unwrap().pop_front();
    match answer {
        Some(Answer::Status(code)) => {
            (StatusCode::from_u16(code).unwrap(), "upstream exploded").into_response()
        }
        Some(Answer::TooManyRequests { retry_after_s }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_s.to_string())],
            "slow down",
        )
            .into_response(),
        Some(Answer::Hang(d)) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        None => {
            // Both under the first lock, so that the two lists stay side by side.
            let mut accepted = hook.accepted.lock().unwrap();
            accepted.push(body);
            hook.accepted_at.lock().unwrap().push(Instant::now());
            StatusCode::OK.into_response()
        }
    }
}

async fn delete(
    State(hook): State<Arc<Hook>>,
    query: axum::extract::RawQuery,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    hook.deleted
        .lock()
        .unwrap()
        .push((query.0.unwrap_or_default(), body));
    StatusCode::NO_CONTENT
}

/// Starts a receiver; its URL is `http://127.0.0.1:<port>/hook`.
pub async fn start_hook() -> Result<(Arc<Hook>, String)> {
    let hook = Arc::new(Hook::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive).delete(delete))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((hook, url))
}

/// The membership a receiver ends with: per MPID the item of the highest version.
pub fn receiver_view(hook: &Hook) -> BTreeMap<i64, (u64, String, Value)> {
    let mut view: BTreeMap<i64, (u64, String, Value)> = BTreeMap::new();
    for body in hook.accepted.lock().unwrap().iter() {
        for item in body["items"].as_array().into_iter().flatten() {
            let mpid = item["mpid"].as_i64().unwrap();
            let version = item["version"].as_u64().unwrap();
            let action = item["action"].as_str().unwrap().to_string();
            if view.get(&mpid).is_none_or(|(v, _, _)| version > *v) {
                view.insert(mpid, (version, action, item.clone()));
            }
        }
    }
    view
}

/// The MPIDs whose last item is an add.
pub fn members(view: &BTreeMap<i64, (u64, String, Value)>) -> Vec<i64> {
    view.iter()
        .filter(|(_, (_, action, _))| action == "add")
        .map(|(m, _)| *m)
        .collect()
}

/// Waits until `check` holds, or fails naming `what`.
pub async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Hook {
    /// The MPIDs of every add item accepted.
    pub fn added(&self) -> BTreeSet<i64> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .iter()
            .flat_map(|body| body["items"].as_array().cloned().unwrap_or_default())
            .filter(|item| item["action"] == "add")
            .filter_map(|item| item["mpid"].as_i64())
            .collect()
    }
}

/// Creates a webhook output to `url` taking the `accepted` identity types; `extra` settings
/// are added to (or replace) a batch size of 50 and a linger of 50 ms.
pub async fn webhook(
    client: &mut pb::output_service_client::OutputServiceClient<crate::Channel>,
    name: &str,
    url: &str,
    accepted: &[&str],
    extra: Value,
) -> Result<pb::OutputConfig> {
    let mut settings = json!({"url": url, "batch_size": 50, "linger_ms": 50});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    Ok(client
        .create_output(pb::OutputConfig {
            name: name.into(),
            kind: "webhook".into(),
            settings: Some(criteria(settings)),
            secrets: [("authorization".to_string(), format!("Bearer {name}-token"))].into(),
            accepted_identities: accepted.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await?
        .into_inner())
}
