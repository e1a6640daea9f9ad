//! Small config value types that check themselves while they are parsed, so an error names
//! the key and the line: networks, durations, next hops, mailboxes or domains.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

use crate::smtp::address::{self, Mailbox};

/// A fixed next hop: `[host]:port`, `host:port`, `[192.0.2.1]:25` or just `host` (port 25).
/// Brackets mean "no MX lookup" (RFC 5321 5.1 style); a bare host is an MX lookup target too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub host: String,
    pub port: u16,
    /// Written in brackets: use the host's address records, never its MX.
    pub no_mx: bool,
}

impl FromStr for NextHop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host_part, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse::<u16>().map_err(|_| format!("invalid port in {s:?}"))?),
            _ => (s, 25),
        };
        let (host, no_mx) = match host_part.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => (inner, true),
            None => (host_part, false),
        };
        let valid = !host.is_empty() && (host.parse::<IpAddr>().is_ok() || address::check_domain(host).is_ok());
        if !valid || port == 0 {
            return Err(format!("invalid next hop {s:?} (examples: \"[mail.example.net]:25\", \"[192.0.2.7]:2525\")"));
        }
        Ok(NextHop { host: host.to_ascii_lowercase(), port, no_mx })
    }
}

impl<'de> Deserialize<'de> for NextHop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = NextHop;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a next hop such as \"[mail.example.net]:25\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NextHop, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `user@example.org` (one mailbox) or `example.org` (every mailbox at the domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxOrDomain {
    Mailbox(String, String),
    Domain(String),
}

impl MailboxOrDomain {
    pub fn matches(&self, m: &Mailbox) -> bool {
        match self {
            MailboxOrDomain::Mailbox(local, domain) => m.local == *local && m.domain.eq_ignore_ascii_case(domain),
            MailboxOrDomain::Domain(domain) => m.domain.eq_ignore_ascii_case(domain),
        }
    }
}

impl<'de> Deserialize<'de> for MailboxOrDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.contains('@') {
            let m = address::parse_mailbox(&s, true).map_err(|e| de::Error::custom(format!("invalid address {s:?}: {}", e.text())))?;
            Ok(MailboxOrDomain::Mailbox(m.local, m.domain))
        } else {
            address::check_domain(&s).map_err(|_| de::Error::custom(format!("invalid domain {s:?}")))?;
            Ok(MailboxOrDomain::Domain(s))
        }
    }
}

/// A network in CIDR notation; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The prefix length: more is more specific.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // Clients on a dual-stack socket can appear as IPv4-mapped IPv6 addresses.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let bits = prefix as usize;
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("invalid network {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// `0.0.0.0/0` or `::/0`: every address of its family.
    pub fn covers_everyone(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A duration written as `300` (seconds), `300s`, `5m`, `5min`, `1h30m`, `2 hours`, `1d` or
/// `250ms`: numbers each followed by a unit, added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Longer than this is a typo, and would overflow the clock arithmetic that uses it.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Milliseconds per unit, by every spelling accepted.
fn unit_ms(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 7 * 86_400_000,
        _ => return None,
    })
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let n: u64 = text.parse().map_err(|_| format!("duration {s:?} is too long"))?;
            return checked(Duration::from_secs(n), s);
        }
        let mut rest = text;
        let mut ms: u64 = 0;
        if rest.is_empty() {
            return Err(format!("invalid duration {s:?} (examples: 30s, 5min, 1h30m, 250ms)"));
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("invalid duration {s:?} (examples: 30s, 5min, 1h30m, 250ms)"));
            }
            let n: u64 = rest[..digits].parse().map_err(|_| format!("duration {s:?} is too long"))?;
            let after = rest[digits..].trim_start();
            let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
            let unit = &after[..unit_len];
            let per = unit_ms(unit).ok_or_else(|| {
                if unit.is_empty() {
                    format!("duration {s:?} needs a unit after {n} (ms, s, min, h, d, w)")
                } else {
                    format!("invalid duration unit {unit:?} in {s:?} (use ms, s, min, h, d or w)")
                }
            })?;
            ms = n.checked_mul(per).and_then(|v| v.checked_add(ms)).ok_or_else(|| format!("duration {s:?} is too long"))?;
            rest = after[unit_len..].trim_start();
        }
        checked(Duration::from_millis(ms), s)
    }
}

fn checked(d: Duration, text: &str) -> Result<HumanDuration, String> {
    if d > MAX_DURATION {
        return Err(format!("duration {text:?} is too long (at most 10 years)"));
    }
    Ok(HumanDuration(d))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 5m, 2h or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                checked(Duration::from_secs(n), &n.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The config's own spellings, so `sluice config show` prints what `Config::parse` reads back.
impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.no_mx {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Display for MailboxOrDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailboxOrDomain::Mailbox(local, domain) => write!(f, "{}", Mailbox { local: local.clone(), domain: domain.clone() }),
            MailboxOrDomain::Domain(domain) => f.write_str(domain),
        }
    }
}

impl fmt::Display for HumanDuration {
    /// The largest units that add up exactly: `1h30min`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in [("w", 7 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1)] {
            if ms >= per {
                write!(f, "{}{unit}", ms / per)?;
                ms %= per;
            }
        }
        Ok(())
    }
}

macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_text!(NextHop, MailboxOrDomain, HumanDuration, Cidr, super::Rate);
