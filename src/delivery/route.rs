//! Where a recipient domain's mail goes: a smarthost, a configured route, an address literal,
//! or the domain's MX hosts (RFC 5321 5.1), turned into an ordered list of addresses to try.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::dane::DaneAuth;
use crate::config::{Config, IpFamily, NextHop};
use crate::dns::{AddrAnswer, MxAnswer, Resolve};
use crate::smtp::reply::{Enhanced, Reply};

/// One address to try, with the host name it came from (for TLS SNI and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
    /// The host's usable TLSA records, found by DNSSEC-validated lookups: its certificate is
    /// checked against them (DANE), and never sent to in plain text.
    pub dane: Option<Arc<DaneAuth>>,
}

impl Target {
    pub fn new(host: impl Into<String>, addr: SocketAddr) -> Target {
        Target { host: host.into(), addr, dane: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Try these in order.
    Targets(Vec<Target>),
    /// Bounce every recipient with this.
    Fail(Reply),
    /// Try again later.
    Defer(Reply),
}

/// Recipients with the same key share transactions: the next hop if one is configured,
/// otherwise the (lower-case) domain.
pub fn destination_key(domain: &str, cfg: &Config) -> String {
    let domain = domain.to_ascii_lowercase();
    match next_hop(&domain, cfg) {
        Some(hop) => format!("[{}]:{}", hop.host, hop.port),
        None => domain,
    }
}

/// The configured next hop for (lower-case) `domain`: its route, else the smarthost; `None`
/// when its mail goes by MX records.
pub fn next_hop<'a>(domain: &str, cfg: &'a Config) -> Option<&'a NextHop> {
    cfg.delivery.routes.get(domain).or(cfg.delivery.smarthost.as_ref())
}

/// Resolves where mail for `domain` goes. `own` are our listener addresses (loop detection).
pub async fn route<R: Resolve>(domain: &str, cfg: &Config, own: &[SocketAddr], dns: &R) -> Route {
    let domain = domain.to_ascii_lowercase();
    let d = &cfg.delivery;
    let route = if let Some(hop) = next_hop(&domain, cfg) {
        if hop.no_mx {
            address_targets(&hop.host, hop.port, d.ip_family, dns).await
        } else {
            mx_targets(&hop.host, hop.port, cfg, dns).await
        }
    } else if let Some(literal) = domain.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        let ip = literal.strip_prefix("ipv6:").unwrap_or(literal).parse::<IpAddr>();
        match ip {
            Ok(ip) if d.address_literals => Route::Targets(vec![Target::new(literal.to_string(), SocketAddr::new(ip, d.port))]),
            _ => Route::Fail(Reply::new(550, Enhanced(5, 1, 2), "Delivery to address literals is disabled")),
        }
    } else {
        match crate::dns::ascii_domain(&domain) {
            Some(ascii) => mx_targets(&ascii, d.port, cfg, dns).await,
            None => Route::Fail(Reply::new(550, Enhanced(5, 1, 2), format!("Invalid domain {domain}"))),
        }
    };
    match route {
        Route::Targets(t) if t.iter().any(|t| is_own(t.addr, own)) => {
            Route::Fail(Reply::new(554, Enhanced(5, 4, 6), format!("Mail for {domain} loops back to this server")))
        }
        other => other,
    }
}

fn is_own(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|l| l.port() == addr.port() && (l.ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback())))
}

async fn address_targets<R: Resolve>(host: &str, port: u16, family: IpFamily, dns: &R) -> Route {
    match dns.addrs(host, family).await {
        AddrAnswer::Addrs(ips) => {
            Route::Targets(ips.into_iter().map(|ip| Target::new(host.to_string(), SocketAddr::new(ip, port))).collect())
        }
        AddrAnswer::None => Route::Defer(Reply::new(451, Enhanced(4, 4, 4), format!("Next hop {host} has no address records"))),
        AddrAnswer::Temporary(why) => Route::Defer(Reply::new(451, Enhanced(4, 4, 3), format!("DNS lookup of {host} failed: {why}"))),
    }
}

async fn mx_targets<R: Resolve>(domain: &str, port: u16, cfg: &Config, dns: &R) -> Route {
    let family = cfg.delivery.ip_family;
    match dns.mx(domain).await {
        MxAnswer::NoDomain => Route::Fail(Reply::new(550, Enhanced(5, 1, 2), format!("Domain {domain} does not exist"))),
        MxAnswer::Temporary(why) => Route::Defer(Reply::new(451, Enhanced(4, 4, 3), format!("MX lookup for {domain} failed: {why}"))),
        MxAnswer::NoMx => match dns.addrs(domain, family).await {
            // Implicit MX: the domain's own address records (RFC 5321 5.1).
            AddrAnswer::Addrs(ips) => {
                Route::Targets(ips.into_iter().map(|ip| Target::new(domain.to_string(), SocketAddr::new(ip, port))).collect())
            }
            AddrAnswer::None => Route::Fail(Reply::new(550, Enhanced(5, 1, 2), format!("Domain {domain} has no MX or address records"))),
            AddrAnswer::Temporary(why) => {
                Route::Defer(Reply::new(451, Enhanced(4, 4, 3), format!("Address lookup for {domain} failed: {why}")))
            }
        },
        answer if answer.is_null() => {
            Route::Fail(Reply::new(556, Enhanced(5, 1, 10), format!("Domain {domain} accepts no mail (null MX)")))
        }
        MxAnswer::Mx(records) => {
            let ours = cfg.hostname.0.to_ascii_lowercase();
            let names_us = records.iter().any(|(_, h)| *h == ours);
            let literals: Vec<String> = records.iter().filter(|(_, h)| is_address(h)).map(|(_, h)| h.clone()).collect();
            if !literals.is_empty() {
                tracing::info!(
                    domain,
                    skipped = literals.join(",").as_str(),
                    "MX records naming IP addresses skipped (RFC 5321 5.1 wants host names)"
                );
            }
            let hosts = ordered_exchanges(records, &ours);
            if hosts.is_empty() && names_us {
                return Route::Fail(Reply::new(554, Enhanced(5, 4, 6), format!("The MX records of {domain} point only to this server")));
            }
            if hosts.is_empty() {
                // A zone mistake its owner can mend: defer, and bounce only at expiry.
                let why = format!("The MX records of {domain} name IP addresses ({}), not host names (RFC 5321 5.1)", literals.join(", "));
                return Route::Defer(Reply::new(451, Enhanced(4, 4, 4), why));
            }
            let mut targets = Vec::new();
            let mut temporary = None;
            for host in hosts {
                match dns.addrs(&host, family).await {
                    AddrAnswer::Addrs(ips) => {
                        targets.extend(ips.into_iter().map(|ip| Target::new(host.clone(), SocketAddr::new(ip, port))))
                    }
                    AddrAnswer::None => {}
                    AddrAnswer::Temporary(why) => temporary = Some(why),
                }
            }
            match (targets.is_empty(), temporary) {
                (false, _) => Route::Targets(targets),
                (true, Some(why)) => {
                    Route::Defer(Reply::new(451, Enhanced(4, 4, 3), format!("Address lookup of {domain}'s MX hosts failed: {why}")))
                }
                (true, None) => Route::Defer(Reply::new(451, Enhanced(4, 4, 4), format!("No MX host of {domain} has an address"))),
            }
        }
    }
}

/// An MX exchange written as an address (`192.0.2.1`, `[192.0.2.1]`) rather than a host name.
fn is_address(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok() || host.starts_with('[')
}

/// MX exchanges by preference, random within one preference (RFC 5321 5.1). Exchanges written
/// as IP literals are skipped; if our own name is among them, only more preferred ones count.
fn ordered_exchanges(mut records: Vec<(u16, String)>, ours: &str) -> Vec<String> {
    records.retain(|(_, host)| host != "." && !is_address(host));
    if let Some(own) = records.iter().filter(|(_, h)| h == ours).map(|(p, _)| *p).min() {
        records.retain(|(p, _)| *p < own);
    }
    let random = std::collections::hash_map::RandomState::new();
    records.sort_by_key(|(p, host)| (*p, random.hash_one(host)));
    let mut hosts: Vec<String> = Vec::new();
    for (_, host) in records {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Table {
        mx: HashMap<&'static str, MxAnswer>,
        a: HashMap<&'static str, AddrAnswer>,
    }

    impl Resolve for Table {
        async fn mx(&self, domain: &str) -> MxAnswer {
            self.mx.get(domain).cloned().unwrap_or(MxAnswer::NoDomain)
        }
        async fn addrs(&self, host: &str, _: IpFamily) -> AddrAnswer {
            if let Ok(ip) = host.parse() {
                return AddrAnswer::Addrs(vec![ip]);
            }
            self.a.get(host).cloned().unwrap_or(AddrAnswer::None)
        }
        async fn txt(&self, _: &str) -> crate::dns::TxtAnswer {
            crate::dns::TxtAnswer::None
        }
    }

    fn table() -> Table {
        let ip = |s: &str| AddrAnswer::Addrs(vec![s.parse().unwrap()]);
        let mx = |v: &[(u16, &str)]| MxAnswer::Mx(v.iter().map(|(p, h)| (*p, h.to_string())).collect());
        Table {
            mx: HashMap::from([
                ("two.test", mx(&[(20, "mx2.two.test"), (10, "mx1.two.test")])),
                ("null.test", mx(&[(0, ".")])),
                ("flaky.test", MxAnswer::Temporary("SERVFAIL".into())),
                ("bare.test", MxAnswer::NoMx),
                ("ours.test", mx(&[(10, "relay.test"), (20, "backup.test")])),
                ("ours-first.test", mx(&[(5, "mx1.two.test"), (10, "relay.test")])),
                ("literal-mx.test", mx(&[(10, "192.0.2.1"), (20, "mx1.two.test")])),
                ("only-literals.test", mx(&[(10, "192.0.2.1"), (20, "192.0.2.2")])),
                ("noaddr.test", mx(&[(10, "ghost.test")])),
                ("loop.test", mx(&[(10, "self.test")])),
            ]),
            a: HashMap::from([
                ("mx1.two.test", ip("192.0.2.10")),
                ("mx2.two.test", ip("192.0.2.20")),
                ("bare.test", ip("192.0.2.30")),
                ("backup.test", ip("192.0.2.40")),
                ("self.test", ip("127.0.0.1")),
                ("smart.test", ip("192.0.2.99")),
            ]),
        }
    }

    fn config(extra: &str) -> Config {
        Config::parse(&format!("hostname: relay.test\n{extra}"), std::path::Path::new("/")).unwrap()
    }

    fn run(domain: &str, cfg: &Config) -> Route {
        let own = ["127.0.0.1:25".parse().unwrap()];
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(route(domain, cfg, &own, &table()))
    }

    fn addrs(r: &Route) -> Vec<String> {
        match r {
            Route::Targets(t) => t.iter().map(|t| t.addr.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    fn code(r: &Route) -> (u16, Option<Enhanced>) {
        match r {
            Route::Fail(reply) | Route::Defer(reply) => (reply.code, reply.enhanced),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mx_hosts_in_preference_order() {
        assert_eq!(addrs(&run("two.test", &config(""))), ["192.0.2.10:25", "192.0.2.20:25"]);
    }

    #[test]
    fn dns_outcomes_table() {
        let c = config("");
        assert_eq!(code(&run("null.test", &c)), (556, Some(Enhanced(5, 1, 10))));
        assert_eq!(code(&run("nxdomain.test", &c)), (550, Some(Enhanced(5, 1, 2))));
        assert_eq!(code(&run("flaky.test", &c)), (451, Some(Enhanced(4, 4, 3))));
        assert_eq!(addrs(&run("bare.test", &c)), ["192.0.2.30:25"], "implicit MX");
        assert_eq!(code(&run("noaddr.test", &c)), (451, Some(Enhanced(4, 4, 4))));
    }

    #[test]
    fn our_own_mx_entry_keeps_only_more_preferred_hosts() {
        let c = config("");
        assert_eq!(code(&run("ours.test", &c)), (554, Some(Enhanced(5, 4, 6))));
        assert_eq!(addrs(&run("ours-first.test", &c)), ["192.0.2.10:25"]);
    }

    #[test]
    fn ip_literal_mx_targets_are_skipped() {
        assert_eq!(addrs(&run("literal-mx.test", &config(""))), ["192.0.2.10:25"]);
        // Only addresses: deferred with that reason, not taken for a loop to ourselves.
        let route = run("only-literals.test", &config(""));
        assert_eq!(code(&route), (451, Some(Enhanced(4, 4, 4))));
        let Route::Defer(reply) = route else { unreachable!() };
        assert!(reply.to_string().contains("name IP addresses (192.0.2.1, 192.0.2.2)"), "{reply}");
    }

    #[test]
    fn a_route_to_our_own_listener_is_a_loop() {
        assert_eq!(code(&run("loop.test", &config(""))), (554, Some(Enhanced(5, 4, 6))));
    }

    #[test]
    fn smarthost_routes_port_and_literals() {
        let c = config("delivery:\n  smarthost: \"[smart.test]:2525\"\n");
        assert_eq!(addrs(&run("two.test", &c)), ["192.0.2.99:2525"]);
        assert_eq!(destination_key("Two.Test", &c), "[smart.test]:2525");
        let c = config("delivery:\n  port: 2526\n  routes: { \"two.test\": \"[192.0.2.77]:26\" }\n");
        assert_eq!(addrs(&run("two.test", &c)), ["192.0.2.77:26"]);
        assert_eq!(addrs(&run("bare.test", &c)), ["192.0.2.30:2526"]);
        assert_eq!(code(&run("[192.0.2.5]", &c)), (550, Some(Enhanced(5, 1, 2))));
        let c = config("delivery:\n  address_literals: true\n");
        assert_eq!(addrs(&run("[192.0.2.5]", &c)), ["192.0.2.5:25"]);
    }
}
