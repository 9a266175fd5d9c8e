//! Security negatives (scenario 10): while the workload streams into an engine serving gRPC
//! over TLS with tokens of three kinds (the operator's, a read-only one, one limited to another
//! workspace), clients keep calling it the ways it must refuse: no token, a wrong token, a
//! write with a read-only token, another workspace's audience, profile and engine status, a
//! request over the size limit, and plain text on the TLS port. Each must get its code (the
//! plain-text call: no answer at all), every time, and the engine must neither exit nor panic
//! nor lose a step. Beside it, an engine started with a SASL setting librdkafka refuses must
//! stop at once naming it, never serving.

use super::scenarios::{Setup, Stage};
use super::{Figures, Row, Scale};
use crate::{Broker, Engine, Result, Topics};
use audience_proto::v1 as pb;
use audience_services::auth::{AuthChannel, ClientOptions};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::Code;

const READER: &str = "chaos-reader-0123456789";
const APP_B: &str = "chaos-app-b-0123456789";
const WRONG: &str = "chaos-wrong-0123456789";
/// The engine's gRPC message limit in this scenario; the oversized request is twice that.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One way of calling the engine that it must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Negative {
    NoToken,
    WrongToken,
    ReadOnlyWrites,
    OtherWorkspaceAudience,
    OtherWorkspaceProfile,
    WorkspaceTokenEngineStatus,
    Oversized,
    PlainTextOnTls,
}

impl Negative {
    const ALL: [Negative; 8] = [
        Negative::NoToken,
        Negative::WrongToken,
        Negative::ReadOnlyWrites,
        Negative::OtherWorkspaceAudience,
        Negative::OtherWorkspaceProfile,
        Negative::WorkspaceTokenEngineStatus,
        Negative::Oversized,
        Negative::PlainTextOnTls,
    ];

    fn name(self) -> &'static str {
        match self {
            Negative::NoToken => "no_token",
            Negative::WrongToken => "wrong_token",
            Negative::ReadOnlyWrites => "read_only_writes",
            Negative::OtherWorkspaceAudience => "other_workspace_audience",
            Negative::OtherWorkspaceProfile => "other_workspace_profile",
            Negative::WorkspaceTokenEngineStatus => "workspace_token_engine_status",
            Negative::Oversized => "oversized_request",
            Negative::PlainTextOnTls => "plain_text_on_tls",
        }
    }

    /// The code it must get (`None`: no answer at all, as plain text on a TLS port).
    fn expected(self) -> Option<Code> {
        match self {
            Negative::NoToken | Negative::WrongToken => Some(Code::Unauthenticated),
            Negative::ReadOnlyWrites | Negative::WorkspaceTokenEngineStatus => {
                Some(Code::PermissionDenied)
            }
            // What a workspace token does not see answers as what does not exist.
            Negative::OtherWorkspaceAudience | Negative::OtherWorkspaceProfile => {
                Some(Code::NotFound)
            }
            Negative::Oversized => Some(Code::ResourceExhausted),
            Negative::PlainTextOnTls => None,
        }
    }
}

/// The answer a call got: a status code, an answer (`Ok`), or none (`None`: refused before
/// gRPC, or nothing within the time allowed).
type Answer = Option<std::result::Result<(), Code>>;

fn answer<T>(result: std::result::Result<T, tonic::Status>) -> Answer {
    Some(result.map(|_| ()).map_err(|s| s.code()))
}

/// What a call should have got against what it got, as a row's failure reads it.
fn verdict(negative: Negative, got: &Answer) -> Option<String> {
    let wanted: Answer = negative.expected().map(Err);
    if *got == wanted {
        return None;
    }
    let show = |a: &Answer| match a {
        None => "no answer".to_string(),
        Some(Ok(())) => "an answer".to_string(),
        Some(Err(code)) => format!("{code:?}"),
    };
    Some(format!(
        "{}: {} instead of {}",
        negative.name(),
        show(got),
        show(&wanted)
    ))
}

/// The clients of one engine, by the token each presents.
struct Clients {
    grpc: String,
    ca: Option<std::path::PathBuf>,
}

impl Clients {
    async fn connect(&self, token: Option<&str>) -> Result<AuthChannel> {
        ClientOptions {
            token: token.map(str::to_string),
            ca_file: self.ca.clone(),
            identity: None,
        }
        .connect(&self.grpc)
        .await
    }

    /// Makes the call `negative` names; `audience` and `mpid` are the workload's.
    async fn call(&self, negative: Negative, audience: u64, mpid: i64) -> Result<Answer> {
        use pb::admin_service_client::AdminServiceClient;
        use pb::audience_service_client::AudienceServiceClient;
        use pb::profile_service_client::ProfileServiceClient;
        let engine_status = pb::GetEngineStatusRequest {};
        Ok(match negative {
            Negative::NoToken => answer(
                AdminServiceClient::new(self.connect(None).await?)
                    .get_engine_status(engine_status)
                    .await,
            ),
            Negative::WrongToken => answer(
                AdminServiceClient::new(self.connect(Some(WRONG)).await?)
                    .get_engine_status(engine_status)
                    .await,
            ),
            Negative::ReadOnlyWrites => answer(
                AudienceServiceClient::new(self.connect(Some(READER)).await?)
                    .create_audience(pb::CreateAudienceRequest {
                        name: "written with a read-only token".into(),
                        criteria: Some(crate::criteria(serde_json::json!(
                            {"event": {"type": "custom_event", "name": "Chaos Step"}}
                        ))),
                        ..Default::default()
                    })
                    .await,
            ),
            Negative::OtherWorkspaceAudience => answer(
                AudienceServiceClient::new(self.connect(Some(APP_B)).await?)
                    .get_audience(pb::GetAudienceRequest { id: audience })
                    .await,
            ),
            Negative::OtherWorkspaceProfile => answer(
                ProfileServiceClient::new(self.connect(Some(APP_B)).await?)
                    .get_profile(pb::GetProfileRequest { mpid })
                    .await,
            ),
            Negative::WorkspaceTokenEngineStatus => answer(
                AdminServiceClient::new(self.connect(Some(APP_B)).await?)
                    .get_engine_status(engine_status)
                    .await,
            ),
            Negative::Oversized => answer(
                AudienceServiceClient::new(self.connect(Some(crate::CLUSTER_TOKEN)).await?)
                    .create_audience(pb::CreateAudienceRequest {
                        name: "x".repeat(2 * MAX_REQUEST_BYTES),
                        ..Default::default()
                    })
                    .await,
            ),
            Negative::PlainTextOnTls => {
                let plain = self.grpc.replace("https://", "http://");
                let call = async {
                    let ch = ClientOptions {
                        token: Some(crate::CLUSTER_TOKEN.into()),
                        ..ClientOptions::default()
                    }
                    .connect(&plain)
                    .await
                    .ok()?;
                    let result = AdminServiceClient::new(ch)
                        .get_engine_status(pb::GetEngineStatusRequest {})
                        .await;
                    // A status the client made of a failed transport (HTTP/2 cannot read what
                    // a TLS port sends back) carries that error as its source; a status the
                    // engine answered carries none.
                    match result {
                        Err(status) if std::error::Error::source(&status).is_some() => None,
                        other => answer(other),
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), call)
                    .await
                    .ok()
                    .flatten()
            }
        })
    }
}

/// An engine whose Kafka client settings name a SASL mechanism librdkafka does not have: it
/// must exit within a minute with an error that names the mechanism (its first client, the
/// admin client that creates the topics, refuses the settings), rather than wait on a broker
/// it cannot speak to.
async fn bad_sasl(broker: &Broker, dir: &std::path::Path) -> Result<Option<String>> {
    let topics = Topics::unique("chaos-sasl");
    let mut engine = Engine::start_with(
        broker,
        &topics,
        &dir.join("sasl"),
        "chaos-sasl",
        &[(
            "AUDIENCE_KAFKA_PROPERTIES",
            "security.protocol=SASL_PLAINTEXT,sasl.mechanism=NOT-A-MECHANISM",
        )],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = engine.exited()? {
            break status.code();
        }
        if Instant::now() > deadline {
            return Ok(Some("bad_sasl: still running after 60 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = engine.plain_log_text();
    // The line that says why, not the configuration logged at start.
    let named = log.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.contains("sasl")
            && line.contains("mechanism")
            && line.contains("error")
            && !line.contains("configuration config=")
    });
    Ok(match (code, named) {
        (Some(0), _) => Some("bad_sasl: exited with 0".into()),
        (_, false) => Some(format!(
            "bad_sasl: exited ({code:?}) without an error naming the SASL mechanism; log:\n{log}"
        )),
        _ => None,
    })
}

pub async fn security(scale: Scale) -> Result<Row> {
    let started = Instant::now();
    let tokens = format!("e2e={},reader={READER},appb={APP_B}", crate::CLUSTER_TOKEN);
    let setup = Setup {
        tls: true,
        env: vec![
            ("AUDIENCE_TOKENS", tokens),
            (
                "AUDIENCE_TOKEN_SCOPES",
                "reader=read,appb=read+write+subscribe+workspace:app-b".into(),
            ),
            // Another workspace, fed by a source the workload never names.
            ("AUDIENCE_SOURCE_FIELD", "context.source".into()),
            ("AUDIENCE_INPUTS", "partner@app-b:source=partner".into()),
            (
                "AUDIENCE_GRPC_MAX_MESSAGE_BYTES",
                MAX_REQUEST_BYTES.to_string(),
            ),
        ],
        ..Setup::default()
    };
    let mut stage = Stage::start("security", Broker::start()?, scale, setup).await?;
    let sasl_dir = tempfile::tempdir()?;
    let sasl_refusal = bad_sasl(&stage.broker, sasl_dir.path());
    let feeding = stage.feed()?;
    let clients = Clients {
        grpc: stage.engine.grpc.clone(),
        ca: stage.engine.client.ca_file.clone(),
    };
    let audience = stage.audience_ids[0];
    let mut tally: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut failures = Vec::new();
    let probing = async {
        let mut round = 0usize;
        // Every kind at least three times, and on until the stream is in.
        while round < 3 * Negative::ALL.len() || !feeding.is_finished() {
            let negative = Negative::ALL[round % Negative::ALL.len()];
            let mpid = 1 + (round as i64 % scale.users);
            let got = clients.call(negative, audience, mpid).await?;
            let entry = tally.entry(negative.name()).or_default();
            entry.0 += 1;
            if let Some(why) = verdict(negative, &got) {
                entry.1 += 1;
                if failures.len() < 8 {
                    failures.push(why);
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (probed, sasl) = tokio::join!(probing, sasl_refusal);
    probed?;
    failures.extend(sasl?);
    let fed = feeding.await?;
    if let Some(status) = stage.engine.exited()? {
        failures.push(format!("the engine exited under the negatives ({status})"));
    }
    if stage.engine.plain_log_text().contains("panicked") {
        failures.push("the engine's log shows a panic".into());
    }
    let mut figures = Figures::default();
    let calls: u64 = tally.values().map(|(n, _)| n).sum();
    let wrong: u64 = tally.values().map(|(_, w)| w).sum();
    figures.extra.insert("negative_calls".into(), calls as f64);
    figures.extra.insert(
        "expected_answers_pct".into(),
        super::scenarios::round(100.0 * (calls - wrong) as f64 / calls.max(1) as f64),
    );
    let mut row = stage.finish("security", fed, figures).await?;
    row.failures.extend(failures);
    row.seconds = started.elapsed().as_secs_f64();
    Ok(row)
}
