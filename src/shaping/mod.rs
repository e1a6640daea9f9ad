//! Traffic shaping per destination: message and connection rates, connection caps, recipients
//! per transaction, connections' lifetimes, and suspension when a destination throttles us or
//! cannot be reached.
//!
//! A destination is what a `delivery.destinations` rule matches (by recipient domain, or by
//! the MX host names of its route, so every domain at one provider shares one set of limits),
//! or else the recipient domain with the `delivery` defaults. Connection caps of the defaults
//! count per next-hop address (`delivery.max_connections_per_destination`); a rule's cap
//! counts every connection to any of its hosts.

pub mod exposition;
pub mod health;
pub mod queue;
pub mod rate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use self::health::{Backoff, Health, Signal};
use self::queue::RateQueue;
use self::rate::Gcra;
use crate::config::{Config, DestinationRule};
use crate::delivery::route::Target;
use crate::live::Live;
use crate::metrics as m;

/// What a connection cap counts: connections to one next-hop address, or to any host of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CapKey {
    Addr(SocketAddr),
    Rule(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Rule(usize),
    Domain(String),
}

/// One destination's limits and state.
pub struct Bucket {
    key: BucketKey,
    pub name: String,
    pub max_connections: usize,
    pub max_deliveries: usize,
    pub max_recipients: usize,
    /// Messages wait here for their turn (None: no message rate).
    pub messages: Option<RateQueue>,
    /// New connections (None: no connection rate).
    connections: Option<Mutex<Gcra>>,
    origin: Instant,
    health: Mutex<Health>,
    /// Connections open for this destination now.
    pub active: Arc<AtomicUsize>,
    /// Messages sent back to the queue on disk get successive slots after this time (from
    /// `origin`), so each comes back about when its turn comes, once, in order.
    booked: Mutex<Duration>,
    /// The TLS policy the latest attempt applied (`mta-sts-enforce`, `required`, ...).
    tls_policy: Mutex<Option<&'static str>>,
}

impl Bucket {
    pub fn cap(&self, target: &Target) -> CapKey {
        match self.key {
            BucketKey::Rule(i) => CapKey::Rule(i),
            BucketKey::Domain(_) => CapKey::Addr(target.addr),
        }
    }

    /// The name other nodes know `target`'s connection cap by (`cluster::lease`): the
    /// rule's label, or the next-hop address.
    pub fn shared_cap(&self, target: &Target) -> String {
        match self.key {
            BucketKey::Rule(_) => format!("rule:{}", self.name),
            BucketKey::Domain(_) => format!("addr:{}", target.addr),
        }
    }

    /// Books a new connection under the connection rate; how long to wait before opening it.
    pub fn connection_wait(&self) -> Duration {
        match &self.connections {
            Some(gcra) => gcra.lock().expect("gcra lock").reserve(self.origin.elapsed()),
            None => Duration::ZERO,
        }
    }

    /// Notes the TLS policy an attempt applies, for the summary and the metrics.
    pub fn note_tls_policy(&self, policy: &'static str) {
        *self.tls_policy.lock().expect("tls policy lock") = Some(policy);
    }

    /// Until when (unix seconds) and why, if suspended at `now`.
    pub fn suspended(&self, now: u64) -> Option<(u64, String)> {
        let health = self.health.lock().expect("health lock");
        health.suspended(now.saturating_mul(1000)).map(|(t, r)| (t.div_ceil(1000), r.to_string()))
    }

    /// For a message the rate line turned away (`wait` would have been its wait in line): how
    /// long until it should come back. Slots follow each other at the rate, so a long queue
    /// on disk comes back in order and just in time, not all at once over and over. It comes
    /// back two seconds early, while the line still holds messages for its wait.
    pub fn come_back_in(&self, wait: Duration) -> Duration {
        let Some(queue) = &self.messages else { return wait };
        let now = self.origin.elapsed();
        let mut booked = self.booked.lock().expect("booked lock");
        let slot = (*booked).max(now + wait);
        *booked = slot + queue.rate().interval();
        (slot - now).saturating_sub(Duration::from_secs(2))
    }

    /// Messages that may wait in memory for the rate: about four seconds' worth.
    pub fn max_waiting(&self) -> usize {
        self.messages.as_ref().map_or(0, |q| ((q.rate().per_second() * 4.0) as usize).clamp(16, 2000))
    }
}

pub struct Shaper {
    shape: Live<Shape>,
    buckets: Mutex<HashMap<BucketKey, Arc<Bucket>>>,
    /// Destinations as they were before the last reload, by name: a destination the new
    /// config still has takes over its suspension and backoff, so a reload does not end them.
    previous: Mutex<HashMap<String, Arc<Bucket>>>,
    /// Domains found (through their MX hosts) to belong to a rule, for the queue summary.
    ruled: Mutex<HashMap<String, usize>>,
    /// Message rates are shared on its Redis (`cluster.redis`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Domains remembered in `ruled` at most (a summary convenience, not a cache that must hold).
const MAX_RULED: usize = 100_000;

/// The limits one config sets.
struct Shape {
    rules: Vec<DestinationRule>,
    defaults: DestinationRule,
    backoff: Backoff,
}

impl Shape {
    fn of(config: &Config) -> Shape {
        let d = &config.delivery;
        let defaults = DestinationRule {
            max_connections: Some(d.max_connections_per_destination),
            connection_rate: d.connection_rate,
            message_rate: d.message_rate,
            max_deliveries_per_connection: Some(d.max_deliveries_per_connection),
            max_recipients_per_transaction: Some(d.max_recipients_per_transaction),
            ..Default::default()
        };
        let backoff = Backoff { initial: d.backoff.initial.0, max: d.backoff.max.0, after_failures: d.backoff.after_failures };
        Shape { rules: d.destinations.clone(), defaults, backoff }
    }
}

impl Shaper {
    pub fn new(config: &Config) -> Shaper {
        Shaper::with_cluster(config, None)
    }

    /// With `cluster`, message rates are shared with the other nodes on its Redis.
    pub fn with_cluster(config: &Config, cluster: Option<Arc<crate::cluster::Cluster>>) -> Shaper {
        Shaper {
            shape: Live::new(Shape::of(config)),
            buckets: Mutex::new(HashMap::new()),
            previous: Mutex::new(HashMap::new()),
            ruled: Mutex::new(HashMap::new()),
            cluster,
        }
    }

    /// The cluster message rates are shared in, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Applies a reloaded config's limits to destinations from now on. Messages waiting in
    /// a destination's rate line and connections open keep the old destination until done.
    pub fn reconfigure(&self, config: &Config) {
        let old: Vec<Arc<Bucket>> = {
            let mut buckets = self.buckets.lock().expect("buckets lock");
            self.shape.replace(Arc::new(Shape::of(config)));
            self.ruled.lock().expect("ruled lock").clear();
            buckets.drain().map(|(_, b)| b).collect()
        };
        let mut previous = self.previous.lock().expect("previous lock");
        previous.clear();
        previous.extend(old.into_iter().map(|b| (b.name.clone(), b)));
    }

    /// The destination mail to `domain` over `targets` belongs to.
    pub fn bucket(&self, domain: &str, targets: &[Target]) -> Arc<Bucket> {
        let shape = self.shape.get();
        let rule = shape.rules.iter().position(|r| r.names_domain(domain) || targets.iter().any(|t| r.names_host(&t.host)));
        let key = match rule {
            Some(i) => {
                let mut ruled = self.ruled.lock().expect("ruled lock");
                if ruled.len() >= MAX_RULED {
                    ruled.clear();
                }
                ruled.insert(domain.to_ascii_lowercase(), i);
                BucketKey::Rule(i)
            }
            None => BucketKey::Domain(domain.to_ascii_lowercase()),
        };
        let mut buckets = self.buckets.lock().expect("buckets lock");
        buckets.entry(key.clone()).or_insert_with(|| Arc::new(self.make(key, &shape))).clone()
    }

    fn make(&self, key: BucketKey, shape: &Shape) -> Bucket {
        let (name, rule) = match &key {
            BucketKey::Rule(i) => (shape.rules[*i].label(), &shape.rules[*i]),
            BucketKey::Domain(d) => (d.clone(), &shape.defaults),
        };
        let d = &shape.defaults;
        let before = self.previous.lock().expect("previous lock").remove(&name);
        let health = before.as_ref().map(|b| b.health.lock().expect("health lock").clone()).unwrap_or_default();
        let pick = |own: Option<usize>, default: Option<usize>| own.or(default).unwrap_or(1);
        let message_rate = rule.message_rate.or(d.message_rate);
        let connection_rate = rule.connection_rate.or(d.connection_rate);
        let messages = message_rate.map(|rate| match &self.cluster {
            Some(cluster) => RateQueue::shared(rate, cluster.clone(), &name),
            None => RateQueue::new(rate),
        });
        Bucket {
            key,
            name,
            max_connections: pick(rule.max_connections, d.max_connections),
            max_deliveries: pick(rule.max_deliveries_per_connection, d.max_deliveries_per_connection),
            max_recipients: pick(rule.max_recipients_per_transaction, d.max_recipients_per_transaction),
            messages,
            connections: connection_rate.map(|r| Mutex::new(Gcra::new(&r))),
            origin: Instant::now(),
            health: Mutex::new(health),
            active: Arc::new(AtomicUsize::new(0)),
            booked: Mutex::new(Duration::ZERO),
            tls_policy: Mutex::new(None),
        }
    }

    /// Records what an attempt (from `started` to `now`, unix milliseconds) said about a
    /// destination; suspends or resumes it.
    pub fn record(&self, bucket: &Bucket, signal: &Signal, started: u64, now: u64) {
        let mut health = bucket.health.lock().expect("health lock");
        let was = health.suspended(now).is_some();
        if health.record(signal, started, now, &self.shape.get().backoff) {
            let (until, reason) = health.suspended(now).expect("just suspended");
            let until = until.div_ceil(1000);
            tracing::warn!(destination = bucket.name.as_str(), until, reason, "destination suspended");
            if let Some(cluster) = &self.cluster {
                cluster.share_suspension(&bucket.name, until * 1000, reason);
            }
            let kind = if matches!(signal, Signal::Throttled(_)) { "throttled" } else { "unreachable" };
            // By reason only: the log line names the destination, the scrape shows the busiest
            // ones (`metrics_text`); a label per recipient domain would grow without end.
            metrics::counter!(m::DESTINATION_SUSPENSIONS, "reason" => kind).increment(1);
        } else if was && *signal == Signal::Answered && health.suspended(now).is_none() {
            tracing::info!(destination = bucket.name.as_str(), "destination resumed");
        }
    }

    /// Ends the suspension of the destination mail to `domain` belongs to, and forgets its
    /// backoff history (an operator's flush: the cause was mended).
    pub fn resume(&self, domain: &str, now: u64) {
        let domain = domain.to_ascii_lowercase();
        if let Some(cluster) = &self.cluster {
            cluster.clear_suspension(&self.destination_of(&domain));
        }
        // Not yet seen since a reload: it starts afresh instead of taking the old state over.
        self.previous.lock().expect("previous lock").remove(&self.destination_of(&domain));
        let rule = self.shape.get().rules.iter().position(|r| r.names_domain(&domain));
        let key = match rule.or_else(|| self.ruled.lock().expect("ruled lock").get(&domain).copied()) {
            Some(i) => BucketKey::Rule(i),
            None => BucketKey::Domain(domain),
        };
        let Some(bucket) = self.buckets.lock().expect("buckets lock").get(&key).cloned() else { return };
        let mut health = bucket.health.lock().expect("health lock");
        if health.suspended(now.saturating_mul(1000)).is_some() {
            tracing::info!(destination = bucket.name.as_str(), "destination resumed by a flush");
        }
        *health = Health::default();
    }

    /// The destination name mail to `domain` is counted under: a rule's, else the domain.
    pub fn destination_of(&self, domain: &str) -> String {
        let domain = domain.to_ascii_lowercase();
        let shape = self.shape.get();
        let rule = shape.rules.iter().position(|r| r.names_domain(&domain));
        match rule.or_else(|| self.ruled.lock().expect("ruled lock").get(&domain).copied()) {
            Some(i) => shape.rules[i].label(),
            None => domain,
        }
    }

    /// Every destination seen, for `sluice queue summary`.
    pub fn states(&self, now: u64) -> Vec<DestinationState> {
        let buckets = self.buckets.lock().expect("buckets lock");
        buckets
            .values()
            .map(|b| DestinationState {
                name: b.name.clone(),
                message_rate: b.messages.as_ref().map(|q| q.rate().to_string()),
                waiting: b.messages.as_ref().map_or(0, |q| q.waiting()),
                connections: b.active.load(Ordering::SeqCst),
                max_connections: b.max_connections,
                suspended: b.suspended(now),
                ruled: matches!(b.key, BucketKey::Rule(_)),
                tls_policy: *b.tls_policy.lock().expect("tls policy lock"),
            })
            .collect()
    }

    /// Forgets per-domain destinations nobody uses and that hold no state worth keeping.
    pub fn prune(&self, now: u64) {
        self.buckets.lock().expect("buckets lock").retain(|key, b| {
            matches!(key, BucketKey::Rule(_))
                || Arc::strong_count(b) > 1
                || b.suspended(now).is_some()
                || b.messages.as_ref().is_some_and(|q| q.waiting() > 0)
                || *b.health.lock().expect("health lock") != Health::default()
        });
    }
}

/// A destination's state as the admin interface shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DestinationState {
    pub name: String,
    pub message_rate: Option<String>,
    /// Messages waiting in memory for the rate.
    pub waiting: usize,
    /// Connections open now.
    pub connections: usize,
    pub max_connections: usize,
    /// Until (unix seconds) and why.
    pub suspended: Option<(u64, String)>,
    /// A configured destination rule (else one recipient domain).
    #[serde(default)]
    pub ruled: bool,
    /// The TLS policy its latest attempt applied.
    #[serde(default, skip_deserializing)]
    pub tls_policy: Option<&'static str>,
}
