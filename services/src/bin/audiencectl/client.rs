//! What every command uses: the connection to the engine, the pages of its lists, and a
//! Kafka producer.

use audience_proto::v1 as pb;
use audience_services::auth::AuthChannel;
use pb::admin_service_client::AdminServiceClient;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;

use crate::print::Ctx;

/// The size of the pages the CLI asks for: the most the engine serves.
pub const PAGE_SIZE: u32 = 1_000;

/// Every item of a paged list: `page(token)` asks for the page after `token` (empty: the
/// first) and answers its items and the next token (empty after the last).
pub async fn all_pages<T, F, Fut>(mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (more, next) = page(token).await?;
        items.extend(more);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

impl Ctx {
    /// A connection to the engine, sending the token of `AUDIENCE_TOKEN`. When there is none,
    /// the error says where it looked, what the system answered, and how to start one.
    pub async fn channel(&self) -> anyhow::Result<AuthChannel> {
        let server = &self.server;
        let endpoint = self.client.endpoint(server)?;
        let channel = endpoint.connect().await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            if server.starts_with("https://") {
                anyhow::anyhow!(
                    "no TLS connection to {server} ({cause}): is it running, and was its \
                     certificate signed by the CA of --ca-file (AUDIENCE_CA_FILE)?"
                )
            } else {
                anyhow::anyhow!(
                    "no engine at {server} ({cause}): is it running? `make run` starts one, \
                     and --server or AUDIENCE_SERVER names another (https:// for TLS)"
                )
            }
        })?;
        Ok(tonic::service::interceptor::InterceptedService::new(
            channel,
            self.client.interceptor()?,
        ))
    }

    pub async fn engine_bootstrap(&self) -> anyhow::Result<String> {
        let mut admin = AdminServiceClient::new(self.channel().await?);
        Ok(admin
            .get_engine_status(pb::GetEngineStatusRequest {})
            .await?
            .into_inner()
            .bootstrap_servers)
    }
}

pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?)
}

pub async fn send(
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
