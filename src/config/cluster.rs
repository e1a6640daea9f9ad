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
    /// `redis://[user:password@]host:port[/db]` (Redis or Valkey).
    pub url: String,
    /// Put before every key, so several clusters can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// One command's answer at most; longer counts as Redis being unreachable.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
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
