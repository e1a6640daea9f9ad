//! The YAML configuration: schema, defaults, validation.
//!
//! Values are validated while they are parsed (through the small types below), so every error
//! names the key path and the line, e.g. `limits.max_hops: invalid type ... at line 7 column 13`.
//! Relative paths are resolved against the directory of the config file.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::smtp::address::{self, Mailbox};

mod values;
pub use values::{Cidr, HumanDuration, MailboxOrDomain, NextHop};

mod delivery;
pub use delivery::{ClientTimeouts, DeliveryConfig, IoBackend, IpFamily, OutboundTls, SmarthostAuth, SmarthostTls};

mod rate;
pub use rate::{Rate, Unit};

mod shaping;
pub use shaping::{BackoffConfig, DestinationRule, matches_pattern};

mod sendmail;
pub use sendmail::SendmailConfig;

mod accounting;
pub use accounting::AccountingConfig;

mod dkim;
pub use dkim::{DkimConfig, DkimSignature};

mod api;
mod cluster;
pub use api::{ApiConfig, HttpListener};
pub use cluster::{ClusterConfig, RedisConfig, RedisUrls};

pub mod show;
mod validate;

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name Sluice uses in its greeting, EHLO reply and Received fields (default: the machine's hostname).
    #[serde(default = "Hostname::system")]
    pub hostname: Hostname,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Where intake listens (default: one relay listener on 127.0.0.1:25).
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Where the HTTP injection API listens (default: nowhere).
    #[serde(default)]
    pub http_listeners: Vec<HttpListener>,
    #[serde(default)]
    pub api: ApiConfig,
    /// Clients allowed to relay on `relay` listeners (default: loopback only).
    #[serde(default = "default_trusted")]
    pub trusted_networks: Vec<Cidr>,
    /// `trusted_networks` may include every address (`0.0.0.0/0`, `::/0`): an open relay.
    #[serde(default)]
    pub allow_open_relay: bool,
    #[serde(default)]
    pub limits: Limits,
    /// TLS for STARTTLS and implicit-TLS listeners; without it no TLS is offered.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Which clients must STARTTLS before MAIL, per network.
    #[serde(default)]
    pub starttls_policy: StarttlsPolicy,
    /// Client certificates by SHA-256 fingerprint (hex, colons optional) -> identity name; a
    /// client presenting one may relay, like after AUTH.
    #[serde(default)]
    pub client_certificates: std::collections::BTreeMap<String, String>,
    /// Addresses or domains whose mail must travel encrypted: refused at RCPT over plain text
    /// (530 5.7.0), delivered only over verified TLS (`required`), never in plain text.
    #[serde(default)]
    pub require_tls_recipients: Vec<MailboxOrDomain>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The accounting stream: one JSON line per delivery event (off without a path).
    #[serde(default)]
    pub accounting: AccountingConfig,
    /// DKIM signing at intake (off without entries).
    #[serde(default)]
    pub dkim: DkimConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// The local submission socket of `sluice sendmail`.
    #[serde(default)]
    pub sendmail: SendmailConfig,
    /// Where mail to `<Postmaster>` goes (default: postmaster@hostname).
    #[serde(default)]
    pub postmaster: Option<String>,
    /// Limits shared with other appliances on Redis (docs/CLUSTER.md).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The file this config was read from (`Config::load`); a reload reads it again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// What is allowed but probably wrong, each naming its key (check-config prints them, the
    /// daemon logs them when it starts).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool (created if missing).
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// Below this much free space on the spool's file system, MAIL is answered 452 4.3.1.
    #[serde(default = "default_min_free_space")]
    pub min_free_space: u64,
    /// Memory for the index's page cache, in bytes.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    /// Size at which a body segment file is closed and a new one started, in bytes.
    #[serde(default = "default_segment_size")]
    pub segment_size: u64,
    /// Group commit: while several writers are waiting for commits, a commit starts this long
    /// after the one before it started (or once as many writers wait as that one served), so
    /// one round of fsyncs covers more messages (fewer fsyncs, less CPU per message). A lone
    /// writer never waits for it. 0 turns it off.
    #[serde(default = "default_commit_window")]
    pub commit_window: HumanDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub mode: ListenerMode,
    /// Ask TLS clients for a certificate; listed ones (`client_certificates`) get relay rights.
    #[serde(default)]
    pub request_client_certificates: bool,
    /// Delivery priority (-9 to 9) of mail that names none (MT-PRIORITY, RFC 6710).
    #[serde(default)]
    pub default_priority: i8,
    /// Close (554 5.5.0) an unauthenticated client that talks before the greeting or does
    /// not wait for a reply RFC 2920 says it must wait for. Off only for a legacy device that
    /// cannot be fixed.
    #[serde(default = "yes")]
    pub forbid_unauth_pipelining: bool,
}

fn yes() -> bool {
    true
}

/// `relay` (port 25): trusted networks and authenticated clients may relay.
/// `submission` (587): AUTH required before MAIL, TLS (STARTTLS) before AUTH.
/// `submissions` (465): the same rules over implicit TLS (RFC 8314).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    #[default]
    Relay,
    Submission,
    Submissions,
}

impl ListenerMode {
    /// As the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            ListenerMode::Relay => "relay",
            ListenerMode::Submission => "submission",
            ListenerMode::Submissions => "submissions",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; reloaded when the file changes.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Generate a self-signed certificate for `hostname` at start when the files are missing.
    #[serde(default)]
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:hash` lines (argon2id; bcrypt and SHA-512-crypt accepted). Without it, no AUTH.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Clients that may authenticate without TLS (default: none).
    #[serde(default)]
    pub plaintext_networks: Vec<Cidr>,
    /// Failed AUTH attempts from one IP within `failure_window` before it is locked out.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_failure_window")]
    pub failure_window: HumanDuration,
    /// How long a locked-out IP gets 421 4.7.0.
    #[serde(default = "default_lockout")]
    pub lockout: HumanDuration,
    /// Delay before answering a failed AUTH (slows guessing).
    #[serde(default = "default_failure_delay")]
    pub failure_delay: HumanDuration,
    /// Name the authenticated user in Received (off: every recipient would see the login).
    #[serde(default)]
    pub received_identity: bool,
    /// Per user, the delivery priority (-9 to 9) of mail that names none; over the listener's.
    #[serde(default)]
    pub user_priorities: std::collections::BTreeMap<String, i8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `ip:port`; empty means those of /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Per query.
    #[serde(default = "default_dns_timeout")]
    pub timeout: HumanDuration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { nameservers: Vec::new(), timeout: default_dns_timeout() }
    }
}

fn default_dns_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// STARTTLS required or not, per client network: the most specific listed network wins. A
/// client matching neither list: loopback may use plain text, others must use TLS on
/// submission listeners and may use plain text on relay listeners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarttlsPolicy {
    /// Clients that must issue STARTTLS before MAIL (530 5.7.0 otherwise).
    #[serde(default)]
    pub require_tls: Vec<Cidr>,
    /// Clients that may send in plain text (a scanner that cannot do TLS).
    #[serde(default)]
    pub allow_plaintext: Vec<Cidr>,
}

fn default_max_failures() -> u32 {
    5
}
fn default_failure_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_lockout() -> HumanDuration {
    HumanDuration(Duration::from_secs(900))
}
fn default_failure_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            plaintext_networks: Vec::new(),
            max_failures: default_max_failures(),
            failure_window: default_failure_window(),
            lockout: default_lockout(),
            failure_delay: default_failure_delay(),
            received_identity: false,
            user_priorities: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted, in bytes (advertised with SIZE).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Recipients per transaction; more get 452 4.5.3.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Messages with this many Received fields are refused (554 5.4.6).
    #[serde(default = "default_max_hops")]
    pub max_hops: usize,
    /// Longest text line in a message, without CRLF (RFC 5321 says 998).
    #[serde(default = "default_max_line_length")]
    pub max_line_length: usize,
    /// Concurrent intake connections in total; more get 421 4.7.0.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent intake connections from one client IP outside `trusted_networks`; more get
    /// 421 4.7.0.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// The same for one IP in `trusted_networks` (an application server may open hundreds).
    #[serde(default = "default_max_connections_per_trusted_ip")]
    pub max_connections_per_trusted_ip: usize,
    /// Of `max_connections`, this many only clients in `trusted_networks` may use, so
    /// anonymous clients cannot fill every slot.
    #[serde(default = "default_reserved_for_trusted")]
    pub reserved_for_trusted: usize,
    /// With 80% of `max_connections` in use, a session that is neither trusted nor
    /// authenticated and has no transaction under way waits this long for a command (not
    /// `command_timeout`): idle sockets cannot hold slots under pressure.
    #[serde(default = "default_stress_command_timeout")]
    pub stress_command_timeout: HumanDuration,
    /// Error replies after which a session is closed with 421 4.7.0.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
    /// How long to wait for a command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// How long to wait for the next block of message data.
    #[serde(default = "default_data_timeout")]
    pub data_timeout: HumanDuration,
    /// The longest a message's data may take in all (DATA to the final dot, or every BDAT
    /// chunk), however steadily it comes; past it the session is closed with 421 4.4.2.
    #[serde(default = "default_max_data_time")]
    pub max_data_time: HumanDuration,
    /// The slowest a message's data may arrive on average, in bytes per second, once
    /// `data_timeout` has passed since it began; slower, the session is closed with 421 4.4.2
    /// (a client trickling a byte a minute cannot hold a slot and memory for hours).
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
    /// Longest header section a message may have, in bytes; longer gets 552 5.3.4. It is held
    /// in memory while the message arrives (the rest of a large body goes to the spool).
    #[serde(default = "default_max_header_size")]
    pub max_header_size: usize,
    /// Memory all messages arriving at once may hold beyond 64 KiB each, in bytes. Past it,
    /// bodies go to the spool sooner, and a header section that does not fit gets 451 4.3.0.
    #[serde(default = "default_intake_memory")]
    pub intake_memory: usize,
    /// Messages accepted from one client IP at most this fast ("100/min"); over it, MAIL gets
    /// 451 4.7.0 and the sender retries later. Default: no limit.
    #[serde(default)]
    pub messages_per_ip: Option<Rate>,
    /// The same per authenticated user (or client-certificate identity).
    #[serde(default)]
    pub messages_per_user: Option<Rate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint (/metrics, /healthz, /readyz); `null` turns it off.
    #[serde(default = "default_metrics_address")]
    pub address: Option<SocketAddr>,
    /// How often the queue is counted by state for `sluice_queue_*` (each count reads every
    /// envelope; a count that takes long is made at most every twenty times its duration).
    #[serde(default = "default_census_interval")]
    pub queue_census_interval: HumanDuration,
}

fn default_census_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Unix socket of the admin API, used by `sluice queue ...`.
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    /// A group whose members may use the socket too (mode 0660, that group); without it only
    /// the daemon's user may (0600).
    #[serde(default)]
    pub group: Option<String>,
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        address: "127.0.0.1:25".parse().unwrap(),
        mode: ListenerMode::Relay,
        request_client_certificates: false,
        default_priority: 0,
        forbid_unauth_pipelining: true,
    }]
}
fn default_trusted() -> Vec<Cidr> {
    vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()]
}
fn default_spool_path() -> PathBuf {
    "/var/lib/sluice/spool".into()
}
fn default_min_free_space() -> u64 {
    1 << 30
}
fn default_cache_capacity() -> u64 {
    64 << 20
}
fn default_commit_window() -> HumanDuration {
    HumanDuration(Duration::from_millis(2))
}
fn default_segment_size() -> u64 {
    64 << 20
}
fn default_max_message_size() -> u64 {
    50 << 20
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_hops() -> usize {
    100
}
fn default_max_line_length() -> usize {
    crate::smtp::data::MAX_TEXT_LINE
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_connections_per_ip() -> usize {
    20
}
fn default_max_connections_per_trusted_ip() -> usize {
    1000
}
fn default_reserved_for_trusted() -> usize {
    100
}
fn default_stress_command_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}
fn default_max_errors() -> usize {
    20
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_data_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(180))
}
fn default_max_data_time() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 60))
}
fn default_min_data_rate() -> u64 {
    1024
}
fn default_max_header_size() -> usize {
    256 * 1024
}
fn default_intake_memory() -> usize {
    64 * 1024 * 1024
}
fn default_metrics_address() -> Option<SocketAddr> {
    Some("127.0.0.1:9187".parse().unwrap())
}
fn default_admin_socket() -> PathBuf {
    "/run/sluice/admin.sock".into()
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: default_spool_path(),
            min_free_space: default_min_free_space(),
            cache_capacity: default_cache_capacity(),
            segment_size: default_segment_size(),
            commit_window: default_commit_window(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_hops: default_max_hops(),
            max_line_length: default_max_line_length(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_connections_per_trusted_ip: default_max_connections_per_trusted_ip(),
            reserved_for_trusted: default_reserved_for_trusted(),
            stress_command_timeout: default_stress_command_timeout(),
            max_errors: default_max_errors(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            max_data_time: default_max_data_time(),
            min_data_rate: default_min_data_rate(),
            max_header_size: default_max_header_size(),
            intake_memory: default_intake_memory(),
            messages_per_ip: None,
            messages_per_user: None,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { address: default_metrics_address(), queue_census_interval: default_census_interval() }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { socket: default_admin_socket(), group: None }
    }
}

impl Config {
    /// Reads and validates a config file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::parse(&text, base).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = serde_norway::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        let mut paths: Vec<&mut PathBuf> =
            vec![&mut config.spool.path, &mut config.admin.socket, &mut config.sendmail.socket, &mut config.sendmail.maildrop];
        if let Some(tls) = config.tls.as_mut() {
            paths.push(&mut tls.certificate);
            paths.push(&mut tls.private_key);
        }
        if let Some(users) = config.auth.users_file.as_mut() {
            paths.push(users);
        }
        if let Some(accounting) = config.accounting.path.as_mut() {
            paths.push(accounting);
        }
        paths.extend(config.delivery.tls_trust.iter_mut());
        paths.extend(config.delivery.dane.trust_anchors.as_mut());
        paths.extend(config.dkim.sign.iter_mut().map(|s| &mut s.key));
        paths.extend(config.api.keys_file.as_mut());
        if let Some(auth) = config.delivery.smarthost_auth.as_mut() {
            paths.push(&mut auth.password_file);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.validate(text)?;
        config.warnings = config.find_warnings(text);
        Ok(config)
    }

    /// The EHLO name of outgoing connections.
    pub fn ehlo_name(&self) -> &str {
        self.delivery.ehlo_name.as_ref().map_or(&self.hostname.0, |h| &h.0)
    }

    pub fn postmaster(&self) -> Mailbox {
        match self.postmaster.as_deref().map(|p| address::parse_mailbox(p, true)) {
            Some(Ok(m)) => m,
            _ => Mailbox { local: "postmaster".into(), domain: self.hostname.0.clone() },
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }

    pub fn plaintext_auth_allowed(&self, ip: IpAddr) -> bool {
        self.auth.plaintext_networks.iter().any(|n| n.contains(ip))
    }

    /// The identity a client certificate with this SHA-256 fingerprint (lower-case hex) maps to.
    pub fn certificate_identity(&self, fingerprint: &str) -> Option<&str> {
        self.client_certificates.iter().find(|(k, _)| fingerprint_key(k).as_deref() == Some(fingerprint)).map(|(_, v)| v.as_str())
    }

    /// Whether mail to `mailbox` must only travel over TLS.
    pub fn requires_tls(&self, mailbox: &Mailbox) -> bool {
        self.require_tls_recipients.iter().any(|e| e.matches(mailbox))
    }

    /// Whether a client at `ip` must STARTTLS before MAIL on a listener of this mode.
    pub fn tls_required(&self, ip: IpAddr, mode: ListenerMode) -> bool {
        let p = &self.starttls_policy;
        let best = |list: &[Cidr]| list.iter().filter(|n| n.contains(ip)).map(Cidr::prefix).max();
        match (best(&p.require_tls), best(&p.allow_plaintext)) {
            (Some(r), Some(a)) => r > a,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            // Unlisted: loopback and `auth.plaintext_networks` may use plain text; others must
            // use TLS on submission listeners.
            (None, None) => mode != ListenerMode::Relay && !ip.to_canonical().is_loopback() && !self.plaintext_auth_allowed(ip),
        }
    }
}

/// A fingerprint as written in the config, normalised to lower-case hex without colons.
fn fingerprint_key(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// A fully qualified host name (RFC 5321 2.3.5), checked by `Config::validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hostname(pub String);

impl Hostname {
    fn system() -> Hostname {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for 256 bytes and gethostname writes at most that many.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let name = if rc == 0 { String::from_utf8_lossy(buf.split(|&b| b == 0).next().unwrap_or(b"")).into_owned() } else { String::new() };
        Hostname(if name.is_empty() { "localhost.localdomain".into() } else { name })
    }
}

#[cfg(test)]
mod tests;
