//! The `cluster` section: appliances sharing their limits on Redis/Valkey (docs/CLUSTER.md).

use serde::{Deserialize, Serialize};

use super::HumanDuration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name among the others (default: the hostname).
    #[serde(default)]
    pub node: Option<String>,
    /// How many nodes share the limits: while Redis cannot be reached, each node keeps to
    /// its share (the limit divided by this).
    #[serde(default = "default_nodes")]
    pub nodes: u32,
    /// Where the shared state lives; without it every limit is this node's alone.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// How long a connection's lease on a shared connection cap lasts unless renewed (it is
    /// renewed every third of this while the connection is open): the longest a crashed
    /// node's connections keep counting against the cap.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { node: None, nodes: default_nodes(), redis: None, lease_ttl: default_lease_ttl() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (Redis or Valkey), `rediss://` over TLS. A
    /// Redis Cluster: `redis+cluster://` (`rediss+cluster://`) naming one of its nodes, or a
    /// list of URLs naming one or more.
    pub url: RedisUrls,
    /// PEM CA certificates a `rediss://` server's certificate is checked against (default:
    /// the system's roots). Only with `rediss://`.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Put before every key, so several clusters can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// One command's answer at most; longer counts as Redis being unreachable.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
}

/// One URL, or several (a Redis Cluster's seed nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RedisUrls {
    One(String),
    Many(Vec<String>),
}

impl RedisConfig {
    fn given(&self) -> Vec<&str> {
        match &self.url {
            RedisUrls::One(url) => vec![url.as_str()],
            RedisUrls::Many(urls) => urls.iter().map(String::as_str).collect(),
        }
    }

    /// Whether the URLs name a Redis Cluster: a `+cluster` scheme, or a list (of one or more).
    pub fn cluster_mode(&self) -> bool {
        matches!(self.url, RedisUrls::Many(_))
            || self.given().iter().any(|u| u.starts_with("redis+cluster://") || u.starts_with("rediss+cluster://"))
    }

    /// The URLs as redis-rs reads them (a `+cluster` scheme made plain).
    pub fn urls(&self) -> Vec<String> {
        let plain = |u: &str| match (u.strip_prefix("redis+cluster://"), u.strip_prefix("rediss+cluster://")) {
            (Some(rest), _) => format!("redis://{rest}"),
            (_, Some(rest)) => format!("rediss://{rest}"),
            _ => u.to_string(),
        };
        self.given().into_iter().map(plain).collect()
    }

    /// Whether the connections are TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.urls().iter().any(|u| u.starts_with("rediss://"))
    }

    /// The first URL, for the logs and the status: without its password.
    pub fn shown(&self) -> String {
        let first = self.given().first().map(|u| u.to_string()).unwrap_or_default();
        let more = self.given().len().saturating_sub(1);
        let first = match first.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{host}"),
                None => first.clone(),
            },
            None => first.clone(),
        };
        match more {
            0 => first,
            n => format!("{first} (and {n} more)"),
        }
    }
}

fn default_nodes() -> u32 {
    1
}
fn default_lease_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_key_prefix() -> String {
    "sluice:".into()
}
fn default_redis_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(250))
}
