//! Limits shared with other appliances on Redis or Valkey (`cluster.redis`, docs/CLUSTER.md).
//! Per-destination message rates and intake rates per sender, GCRAs in Lua scripts
//! (`rate.rs`); connection caps, as leases that expire unless renewed (`lease.rs`); and
//! suspensions (`suspend.rs`).
//! While Redis cannot be reached, each node keeps to its share (the limit divided by
//! `cluster.nodes`); that is logged once, shown as `sluice_cluster_redis_up` 0, and undone
//! when Redis answers again. Without `cluster.redis` no code here runs.

pub mod connect;
pub mod lease;
pub mod rate;
pub mod suspend;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use self::connect::{Connection, Connector};

use crate::config::ClusterConfig;
use crate::metrics as m;

/// How often a node whose Redis went away tries it again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct Cluster {
    /// Before every key.
    prefix: String,
    /// The nodes sharing the limits: a node's share while Redis is away.
    pub nodes: u32,
    /// This node's name, in what it tells the others.
    pub node: String,
    /// Shared suspensions as last heard, by destination.
    heard: std::sync::Mutex<suspend::Heard>,
    timeout: Duration,
    /// Set once the first connection is made; it reconnects by itself after that.
    connection: tokio::sync::OnceCell<Connection>,
    up: AtomicBool,
    /// How many times Redis came back after being away.
    returned: std::sync::atomic::AtomicU64,
    /// When Redis last failed to answer: while it is away, it is asked once a second, not
    /// for every message.
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// When a refusal by Redis was last logged.
    refused_said_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// The connection leases this node holds, and how long each lives unless renewed.
    leases: lease::Leases,
    lease_ttl: Duration,
    /// Names this process's leases: the node, and when it started (a node restarted under
    /// the same name must not renew its predecessor's leases).
    member_prefix: String,
    /// The daemon's runtime: leases are given back from whichever thread drops them.
    runtime: tokio::runtime::Handle,
    /// Where Redis is, without a password (for the status).
    redis_shown: String,
    /// Since when (unix seconds) Redis has not answered, while it does not.
    away_since: std::sync::Mutex<Option<u64>>,
    /// The latest error Redis answered with, and when.
    last_refusal: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// A refusal this recent says the limits are kept to the node's share (for the status).
const REFUSING_FOR: Duration = Duration::from_secs(10);

/// What `sluice queue summary` shows of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub node: String,
    pub nodes: u32,
    pub redis: String,
    /// The limits are shared now (Redis answers); else each node keeps to its share.
    pub shared: bool,
    /// An error Redis answered with in the last 10 s (READONLY after a failover, OOM,
    /// NOPERM): the commands it refuses are kept to the node's share.
    #[serde(default)]
    pub refusing: Option<String>,
    /// Since when (unix seconds) Redis has not answered, while it does not.
    pub away_since: Option<u64>,
    /// Connection leases this node holds.
    pub leases_held: usize,
}

impl ClusterStatus {
    /// One line for the summary.
    pub fn describe(&self) -> String {
        let whom = format!("cluster: node {} of {}", self.node, self.nodes);
        match (self.shared, self.away_since) {
            (true, _) if self.refusing.is_some() => format!(
                "{whom}, {} refuses commands ({}): those are kept to 1/{} of the limit",
                self.redis,
                self.refusing.as_deref().unwrap_or_default(),
                self.nodes
            ),
            (true, _) => format!("{whom}, limits shared on {}, {} connection leases held", self.redis, self.leases_held),
            (false, since) => format!(
                "{whom}, {} unreachable{}: each node keeps to 1/{} of every shared limit",
                self.redis,
                since.map(|s| format!(" since {}", crate::message::date::rfc5322_date(s))).unwrap_or_default(),
                self.nodes
            ),
        }
    }
}

/// Whether `config`'s URLs and CA file can be used (check-config); an error starts with
/// the key it is about.
pub fn check(config: &crate::config::RedisConfig) -> Result<(), String> {
    Connector::new(config).map(drop)
}

impl Cluster {
    /// Starts connecting to `config`'s Redis in the background; None without one. A bad
    /// URL is check-config's to refuse.
    pub fn start(config: &ClusterConfig, hostname: &str) -> Result<Option<Arc<Cluster>>, String> {
        let Some(redis_cfg) = &config.redis else { return Ok(None) };
        let connector = Connector::new(redis_cfg)?;
        let timeout = redis_cfg.timeout.0;
        let cluster = Arc::new(Cluster {
            prefix: redis_cfg.key_prefix.clone(),
            nodes: config.nodes.max(1),
            node: config.node.clone().unwrap_or_else(|| hostname.to_string()),
            heard: std::sync::Mutex::new(Default::default()),
            timeout,
            connection: tokio::sync::OnceCell::new(),
            up: AtomicBool::new(false),
            returned: std::sync::atomic::AtomicU64::new(0),
            failed_at: std::sync::Mutex::new(None),
            refused_said_at: std::sync::Mutex::new(None),
            leases: Default::default(),
            lease_ttl: config.lease_ttl.0,
            member_prefix: format!("{}:{}", config.node.as_deref().unwrap_or(hostname), suspend::unix_ms()),
            runtime: tokio::runtime::Handle::current(),
            redis_shown: redis_cfg.shown(),
            away_since: std::sync::Mutex::new(Some(suspend::unix_ms() / 1000)),
            last_refusal: std::sync::Mutex::new(None),
        });
        metrics::gauge!(m::CLUSTER_REDIS_UP).set(0.0);
        tokio::spawn(cluster.clone().renew_leases());
        let connecting = cluster.clone();
        tokio::spawn(async move {
            let mut said = false;
            loop {
                // A server that takes the connection and never answers would hold the first
                // connection forever: the whole of it is bounded.
                let connected = tokio::time::timeout(timeout + Duration::from_secs(1), connector.connect(timeout))
                    .await
                    .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::IoError, "no answer while connecting"))));
                match connected {
                    Ok(manager) => {
                        let _ = connecting.connection.set(manager);
                        connecting.mark(true, "connected");
                        return;
                    }
                    Err(e) if !said => {
                        // Shown from the first failure on (the recorder may come later: set it each time).
                        metrics::gauge!(m::CLUSTER_REDIS_UP).set(0.0);
                        said = true;
                        tracing::warn!(error = %e, nodes = connecting.nodes, "Redis cannot be reached: each node keeps to its share of the shared limits");
                    }
                    Err(_) => metrics::gauge!(m::CLUSTER_REDIS_UP).set(0.0),
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        });
        Ok(Some(cluster))
    }

    /// A key of ours: the prefix, a kind, and the name.
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// What the summary shows.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node: self.node.clone(),
            nodes: self.nodes,
            redis: self.redis_shown.clone(),
            shared: self.is_up(),
            away_since: *self.away_since.lock().expect("away_since lock"),
            refusing: self
                .last_refusal
                .lock()
                .expect("last_refusal lock")
                .as_ref()
                .filter(|(at, _)| at.elapsed() < REFUSING_FOR)
                .map(|(_, e)| e.clone()),
            leases_held: self.leases_held(),
        }
    }

    /// How many times Redis came back after being away (the first connection counts).
    pub fn returns(&self) -> u64 {
        self.returned.load(Ordering::Relaxed)
    }

    /// Whether the shared limits apply now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Notes a command's outcome: a change of state is logged once and shown as a metric.
    fn mark(&self, up: bool, why: &str) {
        if !up {
            *self.failed_at.lock().expect("failed_at lock") = Some(std::time::Instant::now());
        }
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                self.returned.fetch_add(1, Ordering::Relaxed);
            }
            *self.away_since.lock().expect("away_since lock") = (!up).then(|| suspend::unix_ms() / 1000);
            metrics::gauge!(m::CLUSTER_REDIS_UP).set(if up { 1.0 } else { 0.0 });
            match up {
                true => tracing::info!("Redis answers ({why}): the limits are shared again"),
                false => tracing::warn!(
                    error = why,
                    nodes = self.nodes,
                    "Redis cannot be reached: each node keeps to its share of the shared limits until it answers"
                ),
            }
        }
    }

    /// A command failed: Redis is away when the connection failed or it did not answer in
    /// time; an error Redis answered with (READONLY after a failover, OOM, NOPERM) leaves
    /// the state as it is and is logged at most once a minute, this command kept to the
    /// node's share.
    fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
            self.mark(false, &e.to_string());
            return;
        }
        *self.last_refusal.lock().expect("last_refusal lock") = Some((std::time::Instant::now(), e.to_string()));
        let mut said = self.refused_said_at.lock().expect("refused_said_at lock");
        if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *said = Some(std::time::Instant::now());
            tracing::warn!(error = %e, "Redis refused a command: kept to this node's share meanwhile");
        }
    }

    /// The connection while Redis answers. While it does not, None at once (nobody waits on a
    /// Redis that is away), and at most once a second a PING in the background finds out
    /// whether it is back.
    fn connection(self: &Arc<Self>) -> Option<Connection> {
        let connection = self.connection.get()?.clone();
        if self.is_up() {
            return Some(connection);
        }
        let due = {
            let mut failed_at = self.failed_at.lock().expect("failed_at lock");
            let due = failed_at.is_none_or(|at| at.elapsed() >= RETRY_EVERY);
            if due {
                *failed_at = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            let (cluster, mut connection) = (self.clone(), connection);
            // On the daemon's runtime: this may be called where a lease is dropped.
            self.runtime.spawn(async move {
                let ping = redis::cmd("PING");
                if let Ok(Ok(_)) = tokio::time::timeout(cluster.timeout, ping.query_async::<String>(&mut connection)).await {
                    cluster.mark(true, "a PING was answered");
                }
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_prefix_and_kind() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let config: ClusterConfig = serde_norway::from_str("redis: { url: \"redis://127.0.0.1:1\", key_prefix: \"eu:\" }").unwrap();
            let cluster = Cluster::start(&config, "relay.test").unwrap().unwrap();
            assert_eq!(cluster.node, "relay.test");
            assert_eq!(cluster.key("rate", "example.com"), "eu:rate:example.com");
            assert!(!cluster.is_up(), "nothing answers on port 1");
            let status = cluster.status();
            assert!(!status.shared && status.away_since.is_some());
            assert!(status.describe().contains("redis://127.0.0.1:1 unreachable since"), "{}", status.describe());
            assert!(Cluster::start(&ClusterConfig::default(), "relay.test").unwrap().is_none());
        });
    }
}
