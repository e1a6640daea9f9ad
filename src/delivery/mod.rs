//! Delivery: routing (DNS, routes, smarthost), connections and the pool, and the attempt that
//! sends one message's recipients to their destinations. [`Delivery`] is its face to the
//! queue runner and the admin interface; everything behind it is reached through its methods.

pub mod attempt;
pub mod connection;
pub mod dane;
pub mod dane_lookup;
pub mod https;
pub mod legacy;
pub mod mta_sts;
pub mod pool;
pub mod route;
pub mod sts;
pub mod sts_fetch;
pub mod tls;
pub mod tls_rpt;
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
use crate::live::Live;
use crate::shaping::Bucket;
use crate::smtp::client::{Message, TlsPolicy};

/// How a connection to a next hop is set up beyond its TLS policy: with the smarthost's
/// login or not, TLS from the first byte or not. Connections that differ in it are never
/// pooled together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Hop {
    /// Log in with the smarthost credentials (after TLS).
    pub login: bool,
    /// TLS before the greeting (`delivery.smarthost_tls: implicit`): no STARTTLS, and no
    /// plain-text retry when the handshake fails.
    pub implicit_tls: bool,
    /// Check the certificate for the host's name without requiring it (an MTA-STS policy in
    /// testing mode): what TLS-RPT reports of the session.
    pub observe: bool,
}

/// Everything delivery shares: the config generation in force (with its DNS), the workers
/// (which read the connection settings of the same generation) and shaping.
pub struct Delivery {
    generation: Live<Generation>,
    /// Shared with the workers, which read it once per message.
    settings: Arc<Live<Settings>>,
    workers: Workers,
    shaper: crate::shaping::Shaper,
    /// MTA-STS policies: the cache (in the spool) and the fetches under way.
    sts: Arc<sts::Sts>,
    /// TLS-RPT: this period's sessions, by policy domain.
    tls_reports: Arc<crate::tlsrpt::Collector>,
    /// True once the daemon stops: no transaction starts after that.
    stop: tokio::sync::watch::Sender<bool>,
}

/// What one config means for delivery: read by routing and policy at each use.
struct Generation {
    config: Arc<Config>,
    dns: Arc<Dns>,
    /// Our listener addresses, for loop detection.
    own: Vec<SocketAddr>,
    /// How MTA-STS policies are fetched under this config.
    sts_fetch: sts_fetch::FetchSettings,
    /// The validating resolver DANE looks up through, when `delivery.dane.enabled`.
    secure_dns: Option<Arc<crate::dns::dnssec::SecureDns>>,
    /// What it was made from (`secure_dns_from`): a reload that changes nothing keeps it.
    secure_dns_from: String,
}

/// The settings the validating resolver is made from, with the anchors file's modification
/// time (it may be edited in place).
fn secure_dns_from(config: &Config) -> String {
    let dane = &config.delivery.dane;
    let anchors = dane.trust_anchors.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    format!("{:?}{dane:?}{anchors:?}", config.dns)
}

/// The validating resolver `config` asks for, if any.
fn secure_dns(config: &Config) -> Result<Option<Arc<crate::dns::dnssec::SecureDns>>, String> {
    let dane = &config.delivery.dane;
    if !dane.enabled {
        return Ok(None);
    }
    crate::dns::dnssec::SecureDns::new(&config.dns, dane.trust_anchors.as_deref()).map(|dns| Some(Arc::new(dns)))
}

/// A loaded next generation (see [`Delivery::prepare`]), not yet in force.
pub struct Prepared {
    generation: Generation,
    settings: Settings,
}

/// The connection settings `config` asks for; reads the smarthost password file.
fn settings(config: &Config, generation: u64) -> Result<Settings, String> {
    let d = &config.delivery;
    let password = match &d.smarthost_auth {
        Some(a) => {
            let text = std::fs::read_to_string(&a.password_file).map_err(|e| format!("{}: {e}", a.password_file.display()))?;
            Some(text.lines().next().unwrap_or("").to_string())
        }
        None => None,
    };
    // What a connection is opened with. A reload that leaves it alone keeps pooled
    // connections (a changed rate or cap is no reason to reconnect everywhere).
    let opened_with = {
        use sha2::Digest;
        let login = d.smarthost_auth.as_ref().map(|a| (&a.username, sha2::Sha256::digest(password.as_deref().unwrap_or(""))));
        format!(
            "{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
            config.ehlo_name(),
            config.hostname.0,
            d.source_address,
            d.chunking,
            d.timeouts,
            d.tls_trust.iter().map(|p| (p, std::fs::metadata(p).and_then(|m| m.modified()).ok())).collect::<Vec<_>>(),
            login
        )
    };
    let roots = tls::roots(&d.tls_trust)?;
    Ok(Settings {
        ehlo_name: config.ehlo_name().to_string(),
        our_hostname: config.hostname.0.clone(),
        source_address: d.source_address,
        chunking: d.chunking,
        starttls_failure_memory: d.starttls_failure_memory.0,
        timeouts: d.timeouts.clone(),
        tls: tls::opportunistic_tls(),
        verified_tls: tls::verified_tls(roots.clone())?,
        observer: tls::observer(roots)?,
        login: d.smarthost_auth.as_ref().zip(password).map(|(a, p)| (a.username.clone(), crate::smtp::sasl::Secret::new(p))),
        generation,
        opened_with,
    })
}

fn sts_fetch(config: &Config, settings: &Settings) -> sts_fetch::FetchSettings {
    let s = &config.delivery.mta_sts;
    sts_fetch::FetchSettings { port: s.port, timeout: s.fetch_timeout.0, tls: settings.verified_tls.clone() }
}

impl Delivery {
    /// `store` keeps what delivery learns beside the queue (MTA-STS policies).
    /// With `cluster`, message rates, connection caps and suspensions are shared with the
    /// other nodes.
    pub fn new(
        config: Arc<Config>,
        own: Vec<SocketAddr>,
        store: Arc<dyn crate::spool::Spool>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Arc<Delivery>, String> {
        let dns = Arc::new(Dns::new(&config.dns)?);
        let first = settings(&config, 0)?;
        let fetching = sts_fetch(&config, &first);
        let settings = Arc::new(Live::new(first));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let workers = Workers::start(&config, settings.clone(), stopping, cluster.clone())?;
        let shaper = crate::shaping::Shaper::with_cluster(&config, cluster);
        let (secure_dns, secure_dns_from) = (secure_dns(&config)?, secure_dns_from(&config));
        let generation = Live::new(Generation { config, dns, own, sts_fetch: fetching, secure_dns, secure_dns_from });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tls_reports = Arc::new(crate::tlsrpt::Collector::new(now));
        Ok(Arc::new(Delivery { generation, settings, workers, shaper, sts: sts::Sts::new(store), tls_reports, stop }))
    }

    /// Loads what `config` needs (DNS servers, TLS trust, the smarthost password) without
    /// putting it in force; an error changes nothing.
    pub fn prepare(&self, config: Arc<Config>, own: Vec<SocketAddr>) -> Result<Prepared, String> {
        let current = self.generation.get();
        // The resolver keeps its cache while its settings stay the same.
        let dns = if format!("{:?}", current.config.dns) == format!("{:?}", config.dns) {
            current.dns.clone()
        } else {
            Arc::new(Dns::new(&config.dns)?)
        };
        let running = self.settings.get();
        let mut settings = settings(&config, running.generation + 1)?;
        if settings.opened_with == running.opened_with {
            settings.generation = running.generation;
        }
        let fetching = sts_fetch(&config, &settings);
        let secure_dns_from = secure_dns_from(&config);
        let secure_dns = if secure_dns_from == current.secure_dns_from { current.secure_dns.clone() } else { secure_dns(&config)? };
        Ok(Prepared { generation: Generation { config, dns, own, sts_fetch: fetching, secure_dns, secure_dns_from }, settings })
    }

    /// Puts a prepared generation in force: routes, policies, shaping and connection
    /// settings apply to attempts that start from now on; pooled connections opened under
    /// the old settings are closed instead of reused.
    pub fn install(&self, next: Prepared) {
        let d = &next.generation.config.delivery;
        self.shaper.reconfigure(&next.generation.config);
        self.workers.resize(d.max_connections);
        self.settings.replace(Arc::new(next.settings));
        self.generation.replace(Arc::new(next.generation));
    }

    /// The config delivery works under now.
    pub fn config(&self) -> Arc<Config> {
        self.generation.get().config.clone()
    }

    /// Destinations, their limits and their health.
    pub fn shaper(&self) -> &crate::shaping::Shaper {
        &self.shaper
    }

    /// Where mail for `domain` goes now (DNS, routes, smarthost; loops to our own listeners).
    pub async fn route(&self, domain: &str) -> route::Route {
        let g = self.generation.get();
        route::route(domain, &g.config, &g.own, g.dns.as_ref()).await
    }

    /// The MTA-STS policy for mail to `domain` by its MX records at `now` (unix seconds), with
    /// the fetch failure met on the way; no policy when `delivery.mta_sts.enabled` is off.
    pub async fn mta_sts(&self, domain: &str, now: u64) -> sts::Found {
        let g = self.generation.get();
        let ascii = crate::dns::ascii_domain(domain);
        match ascii {
            Some(ascii) if g.config.delivery.mta_sts.enabled => self.sts.discover(&ascii, &g.dns, &g.sts_fetch, now).await,
            _ => sts::Found { policy: None, failure: None, unknown: false },
        }
    }

    /// The targets routing found for `domain` by its MX records under DANE; as they are
    /// (`Unsigned`) when `delivery.dane.enabled` is off.
    pub async fn dane(&self, domain: &str, targets: Vec<Target>) -> dane_lookup::DaneRoute {
        let g = self.generation.get();
        let Some(dns) = g.secure_dns.as_ref() else { return dane_lookup::DaneRoute::Unsigned(targets) };
        let ascii = crate::dns::ascii_domain(domain).unwrap_or_else(|| domain.to_ascii_lowercase());
        dane_lookup::authenticate(dns.as_ref(), &ascii, targets, g.config.delivery.ip_family).await
    }

    /// This period's TLS-RPT counts.
    pub fn tls_reports(&self) -> &Arc<crate::tlsrpt::Collector> {
        &self.tls_reports
    }

    /// The resolver in force.
    pub fn dns(&self) -> Arc<Dns> {
        self.generation.get().dns.clone()
    }

    /// Verified TLS (WebPKI roots plus `tls_trust`) under the settings in force.
    pub fn verified_tls(&self) -> Arc<rustls::ClientConfig> {
        self.settings.get().verified_tls.clone()
    }

    /// Whether an explicit `tls_policies` entry (or a smarthost login) decides the TLS of
    /// mail to `domain`, over anything the domain publishes.
    pub fn tls_configured(&self, domain: &str) -> bool {
        self.logs_in(domain) || self.config().delivery.tls_policies.contains_key(&domain.to_ascii_lowercase())
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
    pub async fn send(&self, targets: Vec<Target>, bucket: Arc<Bucket>, msg: Message, policy: TlsPolicy, hop: Hop) -> Report {
        self.workers.send(targets, bucket, msg, policy, hop).await
    }

    /// How connections for mail to `domain` are set up beyond their TLS policy.
    /// One reading of the config: whether mail to `domain` goes to the smarthost (no route of
    /// its own), and then whether with a login and implicit TLS.
    pub fn hop(&self, domain: &str) -> Hop {
        let config = self.config();
        let d = &config.delivery;
        let smarthost = d.smarthost.is_some() && !d.routes.contains_key(&domain.to_ascii_lowercase());
        Hop {
            login: smarthost && d.smarthost_auth.is_some(),
            implicit_tls: smarthost && d.smarthost_tls == crate::config::SmarthostTls::Implicit,
            observe: false,
        }
    }

    /// Mail to `domain` goes to the smarthost with a login: over required TLS, logged in.
    pub fn logs_in(&self, domain: &str) -> bool {
        self.hop(domain).login
    }

    /// The TLS policy for mail to `domain`: required for a smarthost login, else its entry in
    /// `tls_policies`, else `tls`.
    pub fn tls_policy(&self, domain: &str) -> TlsPolicy {
        let config = self.config();
        let d = &config.delivery;
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
