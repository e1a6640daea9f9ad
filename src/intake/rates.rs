//! Intake rate limits per client IP and per authenticated user (`limits.messages_per_ip`,
//! `limits.messages_per_user`): one sender cannot swamp the relay. Over the rate, MAIL gets
//! 451 4.7.0, a temporary refusal, so well-behaved senders retry later and lose nothing.
//!
//! The check happens at MAIL (the session's mail gate); the count when a message is stored,
//! so only accepted mail uses up the rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::shaping::rate::{Gcra, Rate};
use crate::smtp::reply::{Enhanced, Reply};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Sender {
    Ip(IpAddr),
    User(String),
}

pub struct SenderRates {
    per_ip: Option<Rate>,
    per_user: Option<Rate>,
    origin: Instant,
    limiters: Arc<Mutex<HashMap<Sender, Limiter>>>,
    /// With `cluster.redis`, each accepted message is counted there too, and what the other
    /// nodes counted is learnt from the answer.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One sender's limiter: at its rate, and at this node's share of it (for while the cluster's
/// Redis is away; the same as the rate without a cluster).
struct Limiter {
    full: Gcra,
    share: Gcra,
}

impl Limiter {
    fn new(rate: &Rate, nodes: u32) -> Limiter {
        Limiter { full: Gcra::new(rate), share: Gcra::share(rate, nodes) }
    }
}

/// Limiters kept before idle ones are dropped.
const PRUNE_AT: usize = 10_000;

impl SenderRates {
    pub fn new(per_ip: Option<Rate>, per_user: Option<Rate>) -> SenderRates {
        SenderRates { per_ip, per_user, origin: Instant::now(), limiters: Arc::default(), cluster: None }
    }

    /// Counts shared with the other nodes of `cluster` too.
    pub fn shared(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> SenderRates {
        self.cluster = cluster;
        self
    }

    fn senders(&self, ip: IpAddr, user: Option<&str>) -> Vec<(Sender, Rate)> {
        let mut v = Vec::new();
        if let Some(r) = self.per_ip {
            v.push((Sender::Ip(ip), r));
        }
        if let (Some(r), Some(u)) = (self.per_user, user) {
            v.push((Sender::User(u.to_string()), r));
        }
        v
    }

    /// Whether any rate is set (without one, `gate` never refuses).
    pub fn limited(&self) -> bool {
        self.per_ip.is_some() || self.per_user.is_some()
    }

    /// The refusal for a MAIL from this sender now, if it is over its rate.
    pub fn gate(&self, ip: IpAddr, user: Option<&str>) -> Option<Reply> {
        // Asked on every read of every session: nothing to do (and no lock) without limits.
        if self.per_ip.is_none() && self.per_user.is_none() {
            return None;
        }
        let now = self.origin.elapsed();
        // Redis away: this node keeps to its share of each sender's rate.
        let alone = self.cluster.as_ref().is_some_and(|c| !c.is_up());
        let limiters = self.limiters.lock().expect("rates lock");
        for (sender, rate) in self.senders(ip, user) {
            let wait = limiters.get(&sender).map_or(Duration::ZERO, |l| if alone { l.share.wait(now) } else { l.full.wait(now) });
            if !wait.is_zero() {
                let who = match sender {
                    Sender::Ip(ip) => format!("from {ip}"),
                    Sender::User(u) => format!("from user {u}"),
                };
                let text = format!("Too many messages {who} (limit {rate}); try again in {} s", wait.as_secs().max(1));
                return Some(Reply::new(451, Enhanced(4, 7, 0), text));
            }
        }
        None
    }

    /// Counts an accepted message against the sender's rates.
    pub fn count(&self, ip: IpAddr, user: Option<&str>) {
        let senders = self.senders(ip, user);
        if senders.is_empty() {
            return;
        }
        let now = self.origin.elapsed();
        let mut limiters = self.limiters.lock().expect("rates lock");
        if limiters.len() >= PRUNE_AT {
            limiters.retain(|_, l| !l.full.wait(now).is_zero() || !l.share.wait(now).is_zero());
        }
        let nodes = self.cluster.as_ref().map_or(1, |c| c.nodes);
        for (sender, rate) in &senders {
            let limiter = limiters.entry(sender.clone()).or_insert_with(|| Limiter::new(rate, nodes));
            limiter.full.reserve(now);
            limiter.share.reserve(now);
        }
        drop(limiters);
        let Some(cluster) = &self.cluster else { return };
        for (sender, rate) in senders {
            let (cluster, limiters, origin, nodes) = (cluster.clone(), self.limiters.clone(), self.origin, nodes);
            tokio::spawn(async move {
                let name = match &sender {
                    Sender::Ip(ip) => format!("ip:{ip}"),
                    Sender::User(u) => format!("user:{u}"),
                };
                if let Ok(ahead) = cluster.book_intake(&name, rate.interval(), rate.burst()).await {
                    let now = origin.elapsed();
                    limiters.lock().expect("rates lock").entry(sender).or_insert_with(|| Limiter::new(&rate, nodes)).full.learn(now, ahead);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_redis_is_away_a_node_keeps_to_its_share() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // Nothing listens on port 1: the cluster is away from the start.
            let config: crate::config::ClusterConfig = serde_norway::from_str("nodes: 2\nredis: { url: \"redis://127.0.0.1:1\" }").unwrap();
            let cluster = crate::cluster::Cluster::start(&config, "relay.test").unwrap();
            let rate = || Some("2/min burst 2".parse().unwrap());
            let (shared, alone) = (SenderRates::new(rate(), None).shared(cluster), SenderRates::new(rate(), None));
            let ip: IpAddr = "192.0.2.1".parse().unwrap();
            for rates in [&shared, &alone] {
                assert!(rates.gate(ip, None).is_none());
                rates.count(ip, None);
            }
            assert!(alone.gate(ip, None).is_none(), "alone, the burst of 2 is this node's");
            let refused = shared.gate(ip, None).expect("half the burst each while Redis is away");
            assert_eq!(refused.code, 451);
        });
    }

    #[test]
    fn the_rate_is_per_ip_and_per_user() {
        let rates = SenderRates::new(Some("2/min".parse().unwrap()), Some("1/h burst 3".parse().unwrap()));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(rates.gate(a, None).is_none());
        rates.count(a, None);
        // 2/min without burst: the next one 30 s later.
        let refusal = rates.gate(a, None).expect("over the rate");
        assert_eq!((refusal.code, refusal.enhanced), (451, Some(Enhanced(4, 7, 0))));
        assert!(rates.gate(b, None).is_none(), "another IP has its own rate");
        // The user's burst of 3 holds across IPs; the IP limit counts too.
        rates.count(b, Some("alice"));
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        rates.count(c, Some("alice"));
        let d: IpAddr = "192.0.2.4".parse().unwrap();
        assert!(rates.gate(d, Some("alice")).is_none());
        rates.count(d, Some("alice"));
        let e: IpAddr = "192.0.2.5".parse().unwrap();
        let refusal = rates.gate(e, Some("alice")).expect("alice is over her rate");
        assert!(refusal.to_string().contains("user alice"), "{refusal}");
    }
}
