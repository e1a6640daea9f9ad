//! The connection to Redis: one server through redis-rs's connection manager, or a Redis
//! Cluster through its cluster connection (it follows the slots as they move); both reconnect
//! by themselves. `rediss://` goes over TLS (rustls), checked against `ca_file` or the system's
//! roots.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisConfig;

/// What makes connections: to one server, or to a cluster.
pub(super) enum Connector {
    Server(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to one server or to a cluster; clones share it.
#[derive(Clone)]
pub enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The CA certificates of `ca_file`, for redis-rs.
fn certificates(config: &RedisConfig) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(path) = &config.ca_file else { return Ok(None) };
    let pem = std::fs::read(path).map_err(|e| format!("cluster.redis.ca_file: {}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("cluster.redis.ca_file: {}: no PEM certificate in it", path.display()));
    }
    Ok(Some(redis::TlsCertificates { client_tls: None, root_cert: Some(pem) }))
}

impl Connector {
    /// Reads the URLs and `ca_file`; connects to nothing yet. Errors name the key.
    pub(super) fn new(config: &RedisConfig) -> Result<Connector, String> {
        if config.ca_file.is_some() && !config.tls() {
            return Err("cluster.redis.ca_file: only for rediss:// URLs (TLS)".into());
        }
        let certificates = certificates(config)?;
        let urls = config.urls();
        let bad = |e: redis::RedisError| format!("cluster.redis.url: {e}");
        if config.cluster_mode() {
            if config.key_prefix.contains(['{', '}']) {
                return Err("cluster.redis.key_prefix: no braces with a Redis Cluster (a connection cap's two keys must hash alike)".into());
            }
            let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
            if tls != 0 && tls != urls.len() {
                return Err("cluster.redis.url: a cluster's nodes are all rediss:// or all redis://".into());
            }
            let mut builder = redis::cluster::ClusterClientBuilder::new(urls);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            return builder.build().map(Connector::Cluster).map_err(bad);
        }
        let url = urls.into_iter().next().ok_or("cluster.redis.url: no URL")?;
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates),
            None => redis::Client::open(url.as_str()),
        };
        client.map(Connector::Server).map_err(bad)
    }

    /// The first connection (later ones are the connection's own business), each command
    /// answered within `timeout`.
    pub(super) async fn connect(&self, timeout: Duration) -> redis::RedisResult<Connection> {
        let connecting = timeout.max(Duration::from_secs(1));
        match self {
            Connector::Server(client) => {
                let settings = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(connecting)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                client.get_connection_manager_with_config(settings).await.map(Connection::Server)
            }
            Connector::Cluster(client) => {
                let settings = redis::cluster::ClusterConfig::new().set_connection_timeout(connecting).set_response_timeout(timeout);
                client.get_async_connection_with_config(settings).await.map(Connection::Cluster)
            }
        }
    }
}
