//! DNS: MX and address lookups through hickory-resolver, with answers sorted into the cases
//! their users care about (routing, intake's null-MX check). Callers that decide on answers
//! take the [`Resolve`] trait, so they are tested with a table; [`Dns`] is the product's.
//! hickory caches answers by their TTL.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use crate::config::{DnsConfig, IpFamily};

pub mod dnssec;

/// The lookups delivery and intake decide on; [`Dns`] in the product, a table in tests.
pub trait Resolve: Sync {
    fn mx(&self, domain: &str) -> impl Future<Output = MxAnswer> + Send;
    fn addrs(&self, host: &str, family: IpFamily) -> impl Future<Output = AddrAnswer> + Send;
    fn txt(&self, name: &str) -> impl Future<Output = TxtAnswer> + Send;
}

impl Resolve for Dns {
    fn mx(&self, domain: &str) -> impl Future<Output = MxAnswer> + Send {
        Dns::mx(self, domain)
    }
    fn addrs(&self, host: &str, family: IpFamily) -> impl Future<Output = AddrAnswer> + Send {
        Dns::addrs(self, host, family)
    }
    fn txt(&self, name: &str) -> impl Future<Output = TxtAnswer> + Send {
        Dns::txt(self, name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtAnswer {
    /// Each record's character-strings joined into one text (RFC 7208 3.3's reading, which
    /// MTA-STS and TLS-RPT records share); not UTF-8 is kept lossily.
    Records(Vec<String>),
    /// NXDOMAIN or no TXT records.
    None,
    Temporary(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// (preference, exchange) pairs; the exchange is "." for a null MX (RFC 7505).
    Mx(Vec<(u16, String)>),
    /// The domain exists but has no MX: implicit MX (RFC 5321 5.1).
    NoMx,
    /// NXDOMAIN.
    NoDomain,
    /// SERVFAIL, timeout, refused: try again later, never fall back to A/AAAA.
    Temporary(String),
}

impl MxAnswer {
    /// A null MX (RFC 7505): one record, preference 0 by convention, exchange ".".
    pub fn is_null(&self) -> bool {
        matches!(self, MxAnswer::Mx(records) if records.len() == 1 && records[0].1 == ".")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrAnswer {
    Addrs(Vec<IpAddr>),
    /// The name exists (or not) but has no address of the wanted family.
    None,
    Temporary(String),
}

pub struct Dns {
    resolver: TokioResolver,
}

/// The A-label (punycode) form of a domain, as DNS and the client on the wire need it.
pub fn ascii_domain(domain: &str) -> Option<String> {
    Name::from_utf8(domain).ok().map(|n| n.to_ascii().trim_end_matches('.').to_ascii_lowercase())
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Result<Dns, String> {
        builder(cfg)?.build().map_err(|e| format!("DNS resolver: {e}")).map(|resolver| Dns { resolver })
    }

    pub async fn mx(&self, domain: &str) -> MxAnswer {
        let Some(name) = fqdn(domain) else { return MxAnswer::NoDomain };
        match self.resolver.lookup(name, RecordType::MX).await {
            Ok(lookup) => {
                let mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase())),
                        _ => None,
                    })
                    .map(|(p, e)| (p, if e.is_empty() { ".".to_string() } else { e }))
                    .collect();
                if mx.is_empty() { MxAnswer::NoMx } else { MxAnswer::Mx(mx) }
            }
            Err(e) => match self.classify(&e, domain, "mx").await {
                Negative::NoDomain => MxAnswer::NoDomain,
                Negative::NoData => MxAnswer::NoMx,
                Negative::Temporary(why) => MxAnswer::Temporary(why),
            },
        }
    }

    pub async fn txt(&self, name: &str) -> TxtAnswer {
        let Some(fq) = fqdn(name) else { return TxtAnswer::None };
        match self.resolver.lookup(fq, RecordType::TXT).await {
            Ok(lookup) => {
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part)).collect()),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() { TxtAnswer::None } else { TxtAnswer::Records(records) }
            }
            Err(e) => match self.classify(&e, name, "txt").await {
                Negative::NoDomain | Negative::NoData => TxtAnswer::None,
                Negative::Temporary(why) => TxtAnswer::Temporary(why),
            },
        }
    }

    /// A negative answer for a name other than the one asked means a CNAME chain was
    /// followed; if that chain loops or is longer than the resolver follows, the answer says
    /// nothing about the domain (a broken zone, perhaps for a moment): temporary, not "no such
    /// domain".
    /// Temporary failures are counted by record type (`sluice_dns_failures_total`).
    async fn classify(&self, e: &NetError, asked: &str, kind: &'static str) -> Negative {
        let negative = self.classify_uncounted(e, asked).await;
        if let Negative::Temporary(_) = negative {
            metrics::counter!(crate::metrics::DNS_FAILURES, "type" => kind).increment(1);
        }
        negative
    }

    async fn classify_uncounted(&self, e: &NetError, asked: &str) -> Negative {
        let negative = classify(e);
        let NetError::Dns(DnsError::NoRecordsFound(nr)) = e else { return negative };
        let answered = nr.query.name().to_ascii();
        if matches!(negative, Negative::Temporary(_)) || same_name(&answered, asked) {
            return negative;
        }
        match self.cname_trouble(asked).await {
            Some(why) => Negative::Temporary(why),
            None => negative,
        }
    }

    /// Follows `name`'s CNAME records one by one: a loop, or more than `MAX_CNAMES` links.
    async fn cname_trouble(&self, name: &str) -> Option<String> {
        let mut seen = vec![name.trim_end_matches('.').to_ascii_lowercase()];
        while seen.len() <= MAX_CNAMES {
            let current = fqdn(seen.last()?)?;
            let lookup = self.resolver.lookup(current, RecordType::CNAME).await.ok()?;
            let next = lookup.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(target) => Some(target.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })?;
            if seen.contains(&next) {
                return Some(format!("CNAME loop at {next}"));
            }
            seen.push(next);
        }
        Some(format!("CNAME chain from {name} longer than {MAX_CNAMES} links"))
    }

    pub async fn addrs(&self, host: &str, family: IpFamily) -> AddrAnswer {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return AddrAnswer::Addrs(vec![ip]);
        }
        let Some(name) = fqdn(host) else { return AddrAnswer::None };
        let kinds: &[RecordType] = match family {
            IpFamily::Any => &[RecordType::A, RecordType::AAAA],
            IpFamily::Ipv4 => &[RecordType::A],
            IpFamily::Ipv6 => &[RecordType::AAAA],
        };
        let mut addrs = Vec::new();
        let mut temporary = None;
        for &kind in kinds {
            match self.resolver.lookup(name.clone(), kind).await {
                Ok(lookup) => addrs.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => {
                    let label = if kind == RecordType::A { "a" } else { "aaaa" };
                    if let Negative::Temporary(why) = self.classify(&e, host, label).await {
                        temporary = Some(why);
                    }
                }
            }
        }
        match (addrs.is_empty(), temporary) {
            (false, _) => AddrAnswer::Addrs(addrs),
            (true, Some(why)) => AddrAnswer::Temporary(why),
            (true, None) => AddrAnswer::None,
        }
    }
}

/// A resolver of the configured name servers (or /etc/resolv.conf's), not yet built.
fn builder(cfg: &DnsConfig) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, String> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
    } else {
        let servers = cfg.nameservers.iter().map(server).collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
    };
    let opts = builder.options_mut();
    opts.timeout = cfg.timeout.0;
    opts.attempts = 2;
    // Absolute names only: a search domain must never turn an MX target into another host.
    opts.ndots = 0;
    Ok(builder)
}

fn server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// The resolver follows at most 8 links; more in a row are as good as a loop.
const MAX_CNAMES: usize = 8;

fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

fn fqdn(domain: &str) -> Option<Name> {
    let mut name = Name::from_utf8(domain).ok()?;
    name.set_fqdn(true);
    Some(name)
}

enum Negative {
    NoDomain,
    NoData,
    Temporary(String),
}

fn classify(e: &NetError) -> Negative {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) if nr.response_code == ResponseCode::NXDomain => Negative::NoDomain,
        NetError::Dns(DnsError::NoRecordsFound(nr)) if nr.response_code == ResponseCode::NoError => Negative::NoData,
        other => Negative::Temporary(other.to_string()),
    }
}

/// How long lookups may take in total before delivery gives up for this attempt.
pub const LOOKUP_BUDGET: Duration = Duration::from_secs(60);
