//! The period's counts, per policy domain, fed by delivery.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::delivery::attempt::Report;
use crate::delivery::mta_sts::Policy;
use crate::delivery::tls_rpt::{Counts, Failure, KeptCounts, PolicyKey, PolicyType, ResultType};

/// Domains counted in one period at most; sessions with others are not counted (and the
/// overflow is counted) rather than let a bulk sender's fan-out grow memory without bound.
const MAX_DOMAINS: usize = 100_000;
/// A failure reason is cut to this many octets.
const MAX_REASON: usize = 200;

pub struct Collector {
    period: Mutex<Period>,
}

struct Period {
    start: u64,
    domains: HashMap<String, Counts>,
}

impl Collector {
    pub fn new(now: u64) -> Collector {
        Collector { period: Mutex::new(Period { start: now, domains: HashMap::new() }) }
    }

    fn with(&self, policy: &PolicyKey, f: impl FnOnce(&mut Counts) -> bool) {
        let mut period = self.period.lock().expect("tls-rpt lock");
        let counted = match period.domains.len() >= MAX_DOMAINS && !period.domains.contains_key(&policy.domain) {
            true => false,
            false => f(period.domains.entry(policy.domain.clone()).or_default()),
        };
        if !counted {
            metrics::counter!(crate::metrics::TLS_RPT_UNCOUNTED).increment(1);
        }
    }

    pub fn success(&self, policy: &PolicyKey) {
        self.with(policy, |c| c.success(policy));
    }

    pub fn failure(&self, policy: &PolicyKey, failure: Failure) {
        self.with(policy, |c| c.failure(policy, failure));
    }

    /// The period's counts as kept across a restart: its start, and per domain.
    pub fn snapshot(&self) -> Vec<u8> {
        let period = self.period.lock().expect("tls-rpt lock");
        let domains: Vec<(&String, KeptCounts)> = period.domains.iter().map(|(d, c)| (d, KeptCounts::from(c))).collect();
        serde_json::to_vec(&(period.start, domains)).unwrap_or_default()
    }

    /// Adds counts kept by [`Collector::snapshot`] (an earlier run's) to this period's; the
    /// earlier start is kept. Unreadable bytes add nothing.
    pub fn restore(&self, bytes: &[u8]) {
        let Ok((start, domains)) = serde_json::from_slice::<(u64, Vec<(String, KeptCounts)>)>(bytes) else { return };
        let mut period = self.period.lock().expect("tls-rpt lock");
        period.start = period.start.min(start);
        for (domain, kept) in domains {
            if period.domains.len() < MAX_DOMAINS || period.domains.contains_key(&domain) {
                period.domains.entry(domain).or_default().merge(Counts::from(kept));
            }
        }
    }

    /// The counts since the period began (its start, and by domain); a new period starts at
    /// `now`.
    pub fn take(&self, now: u64) -> (u64, HashMap<String, Counts>) {
        let mut period = self.period.lock().expect("tls-rpt lock");
        let start = std::mem::replace(&mut period.start, now);
        (start, std::mem::take(&mut period.domains))
    }

    /// Counts one attempt's sessions: each new connection that got TLS is a success, each
    /// host where TLS failed (a handshake, STARTTLS missing under a policy) a failure. Under
    /// an MTA-STS policy in testing mode the mail went anyway: a certificate that did not
    /// check out, no TLS at all, or an MX host the policy does not allow (`allowed`) is the
    /// session's failure. A host whose handshake failed and that then took the mail in plain
    /// text is one failed session, not two.
    pub fn record(&self, policy: &PolicyKey, report: &Report, source: Option<IpAddr>, allowed: &dyn Fn(&str) -> bool) {
        let mut counted = Vec::new();
        for host in &report.hosts {
            if let Some(result) = host.tls {
                counted.push(host.target.addr);
                let reason = host.error.clone();
                self.refused(policy, result, &host.target.host, Some(host.target.addr.ip()), &reason, source);
            }
        }
        for via in report.results.iter().flatten().filter_map(|a| a.via.as_ref()) {
            if via.reused || counted.contains(&via.addr) {
                continue;
            }
            counted.push(via.addr);
            let failed = match (&via.tls, &via.tls_verdict) {
                _ if !allowed(&via.host) => {
                    Some((ResultType::ValidationFailure, "the MX host is not one the MTA-STS policy allows".to_string()))
                }
                (Some(_), None) => None,
                (Some(_), Some((result, why))) => Some((*result, why.clone())),
                (None, _) if policy.kind == PolicyType::Sts => Some((ResultType::StarttlsNotSupported, "sent in plain text".to_string())),
                (None, _) => continue,
            };
            match failed {
                None => self.success(policy),
                Some((result, why)) => self.refused(policy, result, &via.host, Some(via.addr.ip()), &why, source),
            }
        }
    }

    /// MX hosts an enforced policy did not allow, or a policy that could not be fetched: a
    /// failure each, with no session.
    pub fn refused(&self, policy: &PolicyKey, result: ResultType, host: &str, ip: Option<IpAddr>, reason: &str, source: Option<IpAddr>) {
        // No session (a policy fetch): the configured source, else the unspecified address.
        let unspecified = || source.map_or_else(|| std::net::Ipv4Addr::UNSPECIFIED.to_string(), |s| s.to_string());
        let failure = Failure {
            result,
            sending_ip: ip.map_or_else(unspecified, |ip| sending_ip(source, ip)),
            receiving_mx: host.to_string(),
            receiving_ip: ip.map(|ip| ip.to_string()),
            reason: Some(bounded(reason)),
        };
        self.failure(policy, failure);
    }
}

/// A failure's reason as kept: printable, at most `MAX_REASON` octets (peers choose some of
/// it, and each distinct reason is an entry of its own).
fn bounded(reason: &str) -> String {
    let mut out: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// The report's name for a domain's DANE policy: the TLSA records of its hosts that have
/// them (`usage selector matching data`, RFC 8460 4.4), and those hosts.
pub fn dane_policy_key(domain: &str, targets: &[crate::delivery::route::Target]) -> PolicyKey {
    let (mut text, mut mx_hosts) = (Vec::new(), Vec::new());
    for t in targets {
        let Some(auth) = &t.dane else { continue };
        if !mx_hosts.contains(&t.host) {
            mx_hosts.push(t.host.clone());
        }
        for r in auth.records.iter() {
            let hex: String = r.data.iter().map(|b| format!("{b:02X}")).collect();
            let line = format!("{} {} {} {hex}", r.usage, r.selector, r.matching);
            if !text.contains(&line) {
                text.push(line);
            }
        }
    }
    PolicyKey { kind: PolicyType::Tlsa, text, domain: domain.to_string(), mx_hosts }
}

/// The report's name for a domain's policy: MTA-STS (enforce or testing) or none.
pub fn policy_key(domain: &str, policy: Option<&Policy>) -> PolicyKey {
    match policy {
        Some(p) => {
            let mut text = vec!["version: STSv1".to_string(), format!("mode: {}", p.mode.name())];
            text.extend(p.mx.iter().map(|m| format!("mx: {m}")));
            text.push(format!("max_age: {}", p.max_age));
            PolicyKey { kind: PolicyType::Sts, text, domain: domain.to_string(), mx_hosts: p.mx.clone() }
        }
        None => PolicyKey { kind: PolicyType::NoPolicyFound, text: Vec::new(), domain: domain.to_string(), mx_hosts: Vec::new() },
    }
}

/// The address mail to `to` leaves from: the configured source, else the one the kernel's
/// routing picks (a UDP socket connected, nothing sent).
fn sending_ip(configured: Option<IpAddr>, to: IpAddr) -> String {
    if let Some(ip) = configured {
        return ip.to_string();
    }
    let any: IpAddr = if to.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    std::net::UdpSocket::bind((any, 0))
        .and_then(|s| s.connect((to, 25)).and_then(|_| s.local_addr()))
        .map_or_else(|_| any.to_string(), |a| a.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::attempt::{Attempted, HostEvent, HostEventKind, Via};
    use crate::delivery::route::Target;
    use crate::shaping::health::Signal;
    use crate::smtp::client::RcptOutcome;

    #[test]
    fn new_tls_connections_are_successes_and_tls_failures_are_counted_with_their_host() {
        let collector = Collector::new(1000);
        let policy = policy_key("d.test", None);
        let via = |port: u16, connect_ms: u64, tls: bool| Via {
            host: "mx.d.test".into(),
            addr: ([127, 0, 0, 1], port).into(),
            tls: tls.then(|| "TLSv1.3 x".into()),
            tls_verdict: None,
            reused: connect_ms == 0,
            connect_ms,
            transfer_ms: 1,
        };
        let delivered = |v: Via| {
            Some(Attempted {
                via: Some(v),
                ..Attempted::local(RcptOutcome::Delivered(crate::smtp::reply::Reply::new(250, crate::smtp::reply::Enhanced(2, 0, 0), "ok")))
            })
        };
        let failed = HostEvent {
            relay: "mx2.d.test[127.0.0.1]:26".into(),
            error: "TLS handshake failed: invalid peer certificate: Expired".into(),
            kind: HostEventKind::Failed,
            target: Target::new("mx2.d.test", ([127, 0, 0, 1], 26).into()),
            tls: Some(ResultType::CertificateExpired),
        };
        let report = Report {
            // Two recipients over one new TLS connection, one over a pooled one, one in plain text.
            results: vec![
                delivered(via(25, 5, true)),
                delivered(via(25, 5, true)),
                delivered(via(27, 0, true)),
                delivered(via(28, 5, false)),
            ],
            signal: Signal::Answered,
            hosts: vec![failed],
        };
        collector.record(&policy, &report, None, &|_| true);
        let (start, domains) = collector.take(2000);
        assert_eq!(start, 1000);
        let json = serde_json::to_value(domains["d.test"].report("o", "c", "r", 0, 86399)).unwrap();
        let summary = &json["policies"][0]["summary"];
        assert_eq!(
            (summary["total-successful-session-count"].as_u64(), summary["total-failure-session-count"].as_u64()),
            (Some(1), Some(1))
        );
        let detail = &json["policies"][0]["failure-details"][0];
        assert_eq!(detail["result-type"], "certificate-expired");
        assert_eq!(detail["receiving-mx-hostname"], "mx2.d.test");
        assert_eq!(detail["sending-mta-ip"], "127.0.0.1", "the address loopback mail leaves from");
        assert!(collector.take(3000).1.is_empty(), "a new period");
        // Kept across a restart: a snapshot restored into a new collector reports the same.
        collector.record(&policy, &report, None, &|_| true);
        let later = Collector::new(5000);
        later.restore(&collector.snapshot());
        later.restore(b"not json");
        let (start, kept) = later.take(6000);
        assert_eq!(start, 3000, "the earlier start");
        assert_eq!(kept["d.test"], collector.take(6000).1["d.test"]);
    }

    #[test]
    fn the_policy_names_its_lines_and_mx_patterns() {
        let p = crate::delivery::mta_sts::parse_policy("version: STSv1\nmode: enforce\nmx: *.d.test\nmax_age: 600\n").unwrap();
        let key = policy_key("d.test", Some(&p));
        assert_eq!(key.kind, PolicyType::Sts);
        assert_eq!(key.text, ["version: STSv1", "mode: enforce", "mx: *.d.test", "max_age: 600"]);
        assert_eq!(key.mx_hosts, ["*.d.test"]);
    }
}
