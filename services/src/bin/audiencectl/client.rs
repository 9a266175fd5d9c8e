//! What every command uses: the connection to the engine, printing, and a Kafka producer.

use anyhow::Context;
use audience_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;
use tonic::transport::Channel;

pub async fn channel(server: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(server.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to the engine at {server}"))
}

/// One line per criterion of an explanation, indented by depth.
pub fn print_explain_node(node: &pb::ExplainNode, depth: usize) {
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

pub fn print_audience(a: &pb::Audience) {
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
