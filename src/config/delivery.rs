//! The `delivery` section: routing, outbound TLS, limits, retries and timeouts (its shaping
//! keys' types live in `shaping.rs` beside this file).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BackoffConfig, DestinationRule, Hostname, HumanDuration, NextHop, Rate};

/// The delivery workers' I/O: `auto` (io_uring where the kernel allows it, else epoll),
/// `uring` (refuse to start without it), or `epoll`.
/// `delivery.smarthost_tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    #[default]
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    #[default]
    Any,
    Ipv4,
    Ipv6,
}

/// Outbound TLS: `opportunistic` (STARTTLS when offered, any certificate: RFC 7435), `required`
/// (STARTTLS with a certificate valid for the MX name, or no delivery), or `none`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    #[default]
    Opportunistic,
    Required,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Accept and spool mail but deliver nothing (maintenance; a queue on hold).
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub io: IoBackend,
    /// Delivery worker threads; 0: one per core.
    #[serde(default)]
    pub workers: usize,
    /// Port for MX delivery (25; other values are for test setups).
    #[serde(default = "default_delivery_port")]
    pub port: u16,
    /// Name sent in EHLO (default: hostname).
    #[serde(default)]
    pub ehlo_name: Option<Hostname>,
    /// Local address outgoing connections are made from.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    #[serde(default)]
    pub ip_family: IpFamily,
    /// Send everything to this next hop instead of looking up MX records.
    #[serde(default)]
    pub smarthost: Option<NextHop>,
    /// Log in to the smarthost (over TLS verified like `required`, never in plain text).
    #[serde(default)]
    pub smarthost_auth: Option<SmarthostAuth>,
    /// How TLS to the smarthost starts: `starttls` (after the greeting, the default) or
    /// `implicit` (from the first byte, as on port 465: RFC 8314), never falling back to
    /// plain text.
    #[serde(default)]
    pub smarthost_tls: SmarthostTls,
    /// Per recipient domain: a next hop instead of MX.
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, NextHop>,
    /// Accept recipients at address literals (`user@[192.0.2.1]`); refused at RCPT otherwise.
    #[serde(default)]
    pub address_literals: bool,
    /// Send bodies with BDAT (RFC 3030 CHUNKING) to next hops that offer it with PIPELINING:
    /// envelope and body in one round trip, no dot-stuffing.
    #[serde(default = "default_true")]
    pub chunking: bool,
    #[serde(default)]
    pub tls: OutboundTls,
    /// Per recipient domain, a TLS policy other than `tls`.
    #[serde(default)]
    pub tls_policies: std::collections::BTreeMap<String, OutboundTls>,
    /// PEM certificates trusted for `required` TLS besides the WebPKI roots (private CAs);
    /// also for MTA-STS policy hosts and the MX hosts a policy enforces TLS to.
    #[serde(default)]
    pub tls_trust: Vec<PathBuf>,
    /// A host whose STARTTLS handshake failed is sent to in plain text at once for this long,
    /// where the policy is opportunistic (0s: a handshake is tried every time).
    #[serde(default = "default_starttls_failure_memory")]
    pub starttls_failure_memory: HumanDuration,
    /// MTA-STS (RFC 8461): the policies recipient domains publish for mail to their MX hosts.
    #[serde(default)]
    pub mta_sts: MtaStsConfig,
    /// DANE (RFC 7672): TLSA records of MX hosts, found by DNSSEC-validated lookups.
    #[serde(default)]
    pub dane: DaneConfig,
    /// TLS-RPT (RFC 8460): daily reports to the domains that ask for them.
    #[serde(default)]
    pub tls_rpt: TlsRptConfig,
    #[serde(default = "default_max_recipients_per_transaction")]
    pub max_recipients_per_transaction: usize,
    /// Transactions on one connection before it is closed.
    #[serde(default = "default_max_deliveries_per_connection")]
    pub max_deliveries_per_connection: usize,
    /// Concurrent connections to one next-hop address.
    #[serde(default = "default_max_connections_per_destination")]
    pub max_connections_per_destination: usize,
    /// Outbound connections in total.
    #[serde(default = "default_max_outbound_connections")]
    pub max_connections: usize,
    /// Per destination, new connections at most this fast ("10/s"; default: no limit).
    #[serde(default)]
    pub connection_rate: Option<Rate>,
    /// Per destination, messages at most this fast ("500/min", "10000/h burst 100"; default:
    /// no limit).
    #[serde(default)]
    pub message_rate: Option<Rate>,
    /// Suspension of destinations that throttle us or cannot be reached.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Overrides of the limits above for the destinations each rule matches.
    #[serde(default)]
    pub destinations: Vec<DestinationRule>,
    /// Messages being delivered at once, in total.
    #[serde(default = "default_max_concurrent_deliveries")]
    pub max_concurrent_deliveries: usize,
    /// An idle pooled connection is closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Waits between attempts; the last one repeats.
    #[serde(default = "default_retry")]
    pub retry: Vec<HumanDuration>,
    /// After this long in the queue a message bounces.
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
    /// After this long in the queue the sender gets one delay notice per recipient; 0: never.
    #[serde(default = "default_delay_warning")]
    pub delay_warning: HumanDuration,
    #[serde(default)]
    pub timeouts: ClientTimeouts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmarthostAuth {
    pub username: String,
    /// A file holding the password (its first line), readable by the service only.
    pub password_file: PathBuf,
}

/// Client timeouts (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeouts {
    #[serde(default = "default_connect_timeout")]
    pub connect: HumanDuration,
    #[serde(default = "five_minutes")]
    pub greeting: HumanDuration,
    /// MAIL, RCPT and other commands.
    #[serde(default = "five_minutes")]
    pub command: HumanDuration,
    /// The reply to DATA.
    #[serde(default = "default_data_init")]
    pub data_init: HumanDuration,
    /// Each write of message data.
    #[serde(default = "default_data_block")]
    pub data_block: HumanDuration,
    /// The reply to the final dot; short values manufacture duplicates.
    #[serde(default = "default_final_dot")]
    pub final_dot: HumanDuration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: default_connect_timeout(),
            greeting: five_minutes(),
            command: five_minutes(),
            data_init: default_data_init(),
            data_block: default_data_block(),
            final_dot: default_final_dot(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            io: IoBackend::default(),
            workers: 0,
            paused: false,
            port: default_delivery_port(),
            ehlo_name: None,
            source_address: None,
            ip_family: IpFamily::Any,
            smarthost: None,
            smarthost_auth: None,
            smarthost_tls: SmarthostTls::Starttls,
            routes: Default::default(),
            address_literals: false,
            chunking: true,
            tls: OutboundTls::Opportunistic,
            tls_policies: Default::default(),
            tls_trust: Vec::new(),
            starttls_failure_memory: default_starttls_failure_memory(),
            mta_sts: MtaStsConfig::default(),
            dane: DaneConfig::default(),
            tls_rpt: TlsRptConfig::default(),
            max_recipients_per_transaction: default_max_recipients_per_transaction(),
            max_deliveries_per_connection: default_max_deliveries_per_connection(),
            max_connections_per_destination: default_max_connections_per_destination(),
            max_connections: default_max_outbound_connections(),
            connection_rate: None,
            message_rate: None,
            backoff: Default::default(),
            destinations: Vec::new(),
            max_concurrent_deliveries: default_max_concurrent_deliveries(),
            idle_timeout: default_idle_timeout(),
            retry: default_retry(),
            max_age: default_max_age(),
            delay_warning: default_delay_warning(),
            timeouts: ClientTimeouts::default(),
        }
    }
}

/// MTA-STS: looked up for mail that goes by MX records (not for routes or the smarthost).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtaStsConfig {
    /// Honour policies: `enforce` delivers only to the policy's MX hosts over verified TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Port of `mta-sts.DOMAIN` (443; other values are for test setups).
    #[serde(default = "default_https_port")]
    pub port: u16,
    /// One policy fetch, connection to the last byte.
    #[serde(default = "default_sts_fetch_timeout")]
    pub fetch_timeout: HumanDuration,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig { enabled: true, port: default_https_port(), fetch_timeout: default_sts_fetch_timeout() }
    }
}

/// DANE: off unless asked for, because it needs name servers that pass DNSSEC records on
/// (a resolver that strips them makes every answer bogus, and every message wait).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaneConfig {
    /// Validate MX, address and TLSA answers, and authenticate MX hosts by their TLSA records.
    #[serde(default)]
    pub enabled: bool,
    /// A file of DNSKEY records (`NAME TTL IN DNSKEY FLAGS 3 ALG KEY`) trusted as anchors
    /// instead of the root zone's keys built in; names under none of them are not validated.
    #[serde(default)]
    pub trust_anchors: Option<PathBuf>,
}

/// TLS-RPT: sessions with the MX hosts of domains routed by MX records are counted; at the
/// end of each period, each domain whose `_smtp._tls` record names a `rua` gets its report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRptConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The From of mailed reports (default: the postmaster address).
    #[serde(default)]
    pub from: Option<String>,
    /// `organization-name` (default: the hostname).
    #[serde(default)]
    pub organization: Option<String>,
    /// `contact-info` (default: the postmaster address).
    #[serde(default)]
    pub contact: Option<String>,
    /// The reporting period: a day (RFC 8460 4.1); shorter only for test setups.
    #[serde(default = "default_tls_rpt_period")]
    pub period: HumanDuration,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig { enabled: true, from: None, organization: None, contact: None, period: default_tls_rpt_period() }
    }
}

fn default_tls_rpt_period() -> HumanDuration {
    HumanDuration(Duration::from_secs(86_400))
}
fn default_starttls_failure_memory() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_https_port() -> u16 {
    443
}
fn default_sts_fetch_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_true() -> bool {
    true
}
fn default_delivery_port() -> u16 {
    25
}
fn default_max_recipients_per_transaction() -> usize {
    100
}
fn default_max_deliveries_per_connection() -> usize {
    1000
}
fn default_max_connections_per_destination() -> usize {
    20
}
fn default_max_outbound_connections() -> usize {
    1000
}
fn default_max_concurrent_deliveries() -> usize {
    1000
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_retry() -> Vec<HumanDuration> {
    [60, 300, 900, 1800, 3600, 7200].into_iter().map(|s| HumanDuration(Duration::from_secs(s))).collect()
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 86400))
}
fn default_delay_warning() -> HumanDuration {
    HumanDuration(Duration::from_secs(4 * 3600))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn five_minutes() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_data_init() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_data_block() -> HumanDuration {
    HumanDuration(Duration::from_secs(180))
}
fn default_final_dot() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
