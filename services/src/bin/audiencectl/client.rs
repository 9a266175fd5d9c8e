//! What every command uses: the connection to the engine and a Kafka producer.

use audience_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;
use tonic::transport::Channel;

/// A connection to the engine. When there is none, the error says where it looked, what the
/// system answered, and how to start one.
pub async fn channel(server: &str) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(server.to_string()).map_err(|_| {
        anyhow::anyhow!("'{server}' is not an engine address (like http://127.0.0.1:50051)")
    })?;
    endpoint.connect().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow::anyhow!(
            "no engine at {server} ({cause}): is it running? `make run` starts one, and \
             --server or AUDIENCE_SERVER names another"
        )
    })
}

pub async fn engine_bootstrap(server: &str) -> anyhow::Result<String> {
    let mut admin = AdminServiceClient::new(channel(server).await?);
    Ok(admin
        .get_engine_status(pb::GetEngineStatusRequest {})
        .await?
        .into_inner()
        .bootstrap_servers)
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
