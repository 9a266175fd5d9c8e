//! The guard every output's network access goes through (REVIEW S1, S5): a host is resolved
//! and refused when any of its addresses is inside the engine's own network (loopback,
//! private, link-local, carrier-grade NAT, unique-local, unspecified, IPv4-mapped...; see
//! [`audience_state::network::refused_reason`]), unless `outputs.allow_private` says the
//! deployment sends to private addresses on purpose (tests, `make run`, an on-premises
//! receiver).
//!
//! It is asked when an output is created or changed, and again at each connect: webhooks
//! resolve through it (reqwest's resolver), and a literal address in a URL, which no resolver
//! sees, is checked before each request; a Kafka output's bootstrap servers are checked each
//! time its producer is made. DNS answers change, so a name that was public at creation may
//! not be at the next connect.

use audience_state::network::refused_reason;
use std::net::{IpAddr, SocketAddr};

/// Whether outputs may reach private addresses; otherwise, what refuses them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkGuard {
    pub allow_private: bool,
}

impl NetworkGuard {
    /// Refuses `ip` (which `host` names) unless it is public or private targets are allowed.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        match refused_reason(ip) {
            Some(why) if !self.allow_private => Err(format!(
                "{host} is {why}: outputs may not reach the engine's own network (set \
                 outputs.allow_private = true to allow it)"
            )),
            _ => Ok(()),
        }
    }

    /// A literal address in `host` (`10.0.0.1`, `[::1]`) checked without resolving; `None` for
    /// a name.
    pub fn check_literal(&self, host: &str) -> Option<Result<IpAddr, String>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = bare.parse().ok()?;
        Some(self.check_ip(host, ip).map(|()| ip))
    }

    /// Resolves `host`; refused when any of its addresses is (a name answering both a public
    /// and a private address is how DNS rebinding starts).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Some(literal) = self.check_literal(host) {
            return Ok(vec![SocketAddr::new(literal?, port)]);
        }
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| format!("{host} does not resolve"))?
            .collect();
        if addresses.is_empty() {
            return Err(format!("{host} does not resolve"));
        }
        for address in &addresses {
            self.check_ip(host, address.ip())?;
        }
        Ok(addresses)
    }

    /// Checks the host of an http(s) URL.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "the url does not parse".to_string())?;
        let host = parsed
            .host_str()
            .ok_or_else(|| "the url has no host".to_string())?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        self.resolve(host, port).await.map(|_| ())
    }

    /// Checks every host of a Kafka `bootstrap.servers` list (`host:port`, `[v6]:port`, with
    /// or without a `PROTOCOL://` prefix).
    pub async fn check_kafka_servers(&self, servers: &str) -> Result<(), String> {
        for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let address = server.rsplit_once("://").map_or(server, |(_, a)| a);
            let (host, port) = match address.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') => (host, port.parse().unwrap_or(9092)),
                _ => (address, 9092),
            };
            self.resolve(host, port).await?;
        }
        Ok(())
    }
}

impl NetworkGuard {
    /// Checks the brokers a Kafka cluster advertises in its metadata (`host`, `port`): a
    /// cluster may name any address, and those brokers are where records go.
    pub async fn check_advertised_brokers(&self, brokers: &[(String, u16)]) -> Result<(), String> {
        for (host, port) in brokers {
            self.resolve(host, *port)
                .await
                .map_err(|why| format!("the cluster advertises broker {host}:{port}: {why}"))?;
        }
        Ok(())
    }

    /// Checks the hosts an output configuration names (a webhook's URL, a Kafka output's
    /// bootstrap servers), when it is created or changed.
    pub async fn check_output(
        &self,
        config: &audience_state::outputs::OutputConfig,
    ) -> Result<(), (&'static str, String)> {
        match config.kind.as_str() {
            "webhook" => self
                .check_url(config.setting_str("url").unwrap_or_default())
                .await
                .map_err(|why| ("settings.url", why)),
            "kafka" => self
                .check_kafka_servers(config.setting_str("bootstrap_servers").unwrap_or_default())
                .await
                .map_err(|why| ("settings.bootstrap_servers", why)),
            _ => Ok(()),
        }
    }
}

/// reqwest resolves every webhook host through the guard, at each new connection.
impl reqwest::dns::Resolve for NetworkGuard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = *self;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses = guard
                .resolve(&host, 0)
                .await
                .map_err(|why| -> Box<dyn std::error::Error + Send + Sync> { why.into() })?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUARDED: NetworkGuard = NetworkGuard {
        allow_private: false,
    };

    #[tokio::test]
    async fn names_and_literals_inside_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://localhost:9000/hook",
        ] {
            let refused = GUARDED.check_url(url).await.unwrap_err();
            assert!(
                refused.contains("outputs.allow_private"),
                "{url}: {refused}"
            );
        }
        let allowed = NetworkGuard {
            allow_private: true,
        };
        assert!(allowed
            .check_url("http://127.0.0.1:8080/hook")
            .await
            .is_ok());
        assert!(allowed
            .check_url("http://localhost:9000/hook")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn every_bootstrap_server_is_checked() {
        for servers in [
            "127.0.0.1:9092",
            "8.8.8.8:9092,10.1.2.3:9092",
            "SASL_SSL://[::1]:9093",
            "localhost",
        ] {
            assert!(
                GUARDED.check_kafka_servers(servers).await.is_err(),
                "{servers}"
            );
        }
        assert!(GUARDED
            .check_kafka_servers("8.8.8.8:9092, SSL://1.1.1.1:9093")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn every_advertised_broker_is_checked() {
        let advertised = |hosts: &[&str]| -> Vec<(String, u16)> {
            hosts.iter().map(|h| (h.to_string(), 9092)).collect()
        };
        let refused = GUARDED
            .check_advertised_brokers(&advertised(&["8.8.8.8", "10.1.2.3"]))
            .await
            .unwrap_err();
        assert!(
            refused.contains("advertises broker 10.1.2.3:9092")
                && refused.contains("outputs.allow_private"),
            "{refused}"
        );
        assert!(GUARDED
            .check_advertised_brokers(&advertised(&["8.8.8.8", "1.1.1.1"]))
            .await
            .is_ok());
        let allowed = NetworkGuard {
            allow_private: true,
        };
        assert!(allowed
            .check_advertised_brokers(&advertised(&["127.0.0.1"]))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn webhook_connections_resolve_through_the_guard() {
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(GUARDED))
            .build()
            .unwrap();
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("outputs.allow_private"), "{chain}");
    }
}
