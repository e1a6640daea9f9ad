//! Delivery: routing (DNS, routes, smarthost), connections and the pool, and the attempt that
//! sends one message's recipients to their destinations. [`Delivery`] is its face to the
//! queue runner and the admin interface; everything behind it is reached through its methods.

pub mod attempt;
pub mod connection;
pub mod pool;
pub mod route;
pub mod tls;
pub mod transport;
pub mod uring;
pub mod workers;

#[cfg(test)]
mod transport_tests;

use std::net::SocketAddr;
use std::sync::Arc;

use self::attempt::Report;
use self::connection::Settings;
use self::route::Target;
use self::workers::Workers;
use crate::config::{Config, OutboundTls};
use crate::dns::Dns;
use crate::shaping::Bucket;
use crate::smtp::client::{Message, TlsPolicy};

/// Everything delivery shares: config, DNS, the workers (which hold the connection settings) and shaping.
pub struct Delivery {
    config: Arc<Config>,
    dns: Dns,
    /// Our listener addresses, for loop detection.
    own: Vec<SocketAddr>,
    workers: Workers,
    shaper: crate::shaping::Shaper,
    /// True once the daemon stops: no transaction starts after that.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Delivery {
    pub fn new(config: Arc<Config>, own: Vec<SocketAddr>) -> Result<Arc<Delivery>, String> {
        let d = &config.delivery;
        let dns = Dns::new(&config.dns)?;
        let settings = Arc::new(Settings {
            ehlo_name: config.ehlo_name().to_string(),
            our_hostname: config.hostname.0.clone(),
            source_address: d.source_address,
            chunking: d.chunking,
            timeouts: d.timeouts.clone(),
            tls: tls::opportunistic_tls(),
            verified_tls: tls::verified_tls(&d.tls_trust)?,
            login: match &d.smarthost_auth {
                Some(a) => {
                    let text = std::fs::read_to_string(&a.password_file).map_err(|e| format!("{}: {e}", a.password_file.display()))?;
                    let password = text.lines().next().unwrap_or("").to_string();
                    Some((a.username.clone(), crate::smtp::sasl::Secret::new(password)))
                }
                None => None,
            },
        });
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let workers = Workers::start(&config, settings, stopping)?;
        let shaper = crate::shaping::Shaper::new(&config);
        Ok(Arc::new(Delivery { dns, own, config, workers, shaper, stop }))
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Destinations, their limits and their health.
    pub fn shaper(&self) -> &crate::shaping::Shaper {
        &self.shaper
    }

    /// Where mail for `domain` goes now (DNS, routes, smarthost; loops to our own listeners).
    pub async fn route(&self, domain: &str) -> route::Route {
        route::route(domain, &self.config, &self.own, &self.dns).await
    }

    /// Starts no transaction from now on; those under way finish.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Turns true when delivery stops.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Sends `msg` on one of the workers; see `Sender::send`.
    pub async fn send(&self, targets: Vec<Target>, bucket: Arc<Bucket>, msg: Message, policy: TlsPolicy, login: bool) -> Report {
        self.workers.send(targets, bucket, msg, policy, login).await
    }

    /// Mail to `domain` goes to the smarthost with a login: over required TLS, logged in.
    pub fn logs_in(&self, domain: &str) -> bool {
        let d = &self.config.delivery;
        d.smarthost.is_some() && d.smarthost_auth.is_some() && !d.routes.contains_key(&domain.to_ascii_lowercase())
    }

    /// The TLS policy for mail to `domain`: required for a smarthost login, else its entry in
    /// `tls_policies`, else `tls`.
    pub fn tls_policy(&self, domain: &str) -> TlsPolicy {
        let d = &self.config.delivery;
        if self.logs_in(domain) {
            return TlsPolicy::Required;
        }
        match d.tls_policies.get(&domain.to_ascii_lowercase()).copied().unwrap_or(d.tls) {
            OutboundTls::Opportunistic => TlsPolicy::Opportunistic,
            OutboundTls::Required => TlsPolicy::Required,
            OutboundTls::None => TlsPolicy::Never,
        }
    }
}
