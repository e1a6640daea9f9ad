//! Intake: listeners, TLS, AUTH, connection limits, and the driver of the sans-IO session.

pub mod accept;
mod auth;
pub mod body;
mod connection;
mod limits;
pub mod local;
mod pace;
pub mod pickup;
mod rates;
mod refusals;
pub mod tls;

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ListenerConfig, ListenerMode};
use crate::live::Live;
use crate::metrics as m;
use crate::smtp::reply::codes;
use crate::smtp::server::{RecipientRule, SessionConfig};
use crate::spool::Spool;

pub use auth::{FailureTracker, UsersFile, hash_password, hash_problem, parse_users};
pub use limits::ConnectionLimits;

/// What every intake connection shares, for one generation of the config: a reload builds
/// the next one (see [`IntakeContext::next`]) and each connection keeps the one it started
/// under. The spool, the connection counts and the runner's wake-up are the same object in
/// every generation; AUTH failures and sender rates too while their settings are unchanged.
pub struct IntakeContext {
    pub config: Arc<Config>,
    relay: Arc<SessionConfig>,
    submission: Arc<SessionConfig>,
    pub spool: Arc<dyn Spool>,
    pub limits: Arc<ConnectionLimits>,
    pub tls: Option<TlsAcceptor>,
    /// The same, asking clients for certificates (listeners with `request_client_certificates`).
    pub tls_client_certs: Option<TlsAcceptor>,
    pub users: Option<Arc<UsersFile>>,
    pub failures: Arc<FailureTracker>,
    /// Woken after every stored message, so the queue runner starts on it at once.
    pub stored: Arc<tokio::sync::Notify>,
    /// Messages per client IP and per user.
    pub rates: Arc<rates::SenderRates>,
    /// For the null MX check at RCPT on submission listeners.
    pub dns: Option<crate::dns::Dns>,
    /// Password checks running at once, over every session: about one per core.
    pub auth_checks: Arc<tokio::sync::Semaphore>,
    /// Memory the bodies arriving now hold beyond their free share.
    pub body_memory: Arc<body::MemoryBudget>,
    /// Refusal lines per client address, summarised past a threshold.
    pub refusal_log: Arc<refusals::RefusalLog>,
    /// The accounting stream (`received` records).
    pub accounting: Arc<crate::accounting::Accounting>,
    /// DKIM signing, when the config has entries (keys loaded with this generation).
    pub signer: Option<Arc<crate::dkim::Signer>>,
    /// The HTTP API's keys (`api.keys_file`), read with this generation.
    pub api_keys: Option<Arc<crate::http::keys::ApiKeys>>,
    /// Idempotency keys of HTTP requests being served now (a second request with one gets 409).
    pub api_in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Limits shared with other nodes (`cluster.redis`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The parts of a generation that carry state from one to the next.
struct Carried {
    spool: Arc<dyn Spool>,
    limits: Arc<ConnectionLimits>,
    stored: Arc<tokio::sync::Notify>,
    /// With the config they were made for.
    failures: Option<(Arc<Config>, Arc<FailureTracker>)>,
    rates: Option<(Arc<Config>, Arc<rates::SenderRates>)>,
    auth_checks: Arc<tokio::sync::Semaphore>,
    body_memory: Arc<body::MemoryBudget>,
    refusal_log: Arc<refusals::RefusalLog>,
    accounting: Arc<crate::accounting::Accounting>,
    api_in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl IntakeContext {
    /// Loads TLS material (generating a self-signed certificate if configured to) and the
    /// users file.
    /// With `cluster`, intake rates are shared with the other nodes.
    pub fn new(
        config: Arc<Config>,
        spool: Arc<dyn Spool>,
        accounting: Arc<crate::accounting::Accounting>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Arc<Self>, String> {
        let carried = Carried {
            spool,
            limits: ConnectionLimits::new(),
            stored: Arc::new(tokio::sync::Notify::new()),
            failures: None,
            rates: None,
            // About one password check per core at a time, over every session.
            auth_checks: Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))),
            body_memory: Arc::default(),
            refusal_log: Arc::default(),
            accounting,
            api_in_flight: Arc::default(),
            cluster,
        };
        Self::build(config, carried)
    }

    /// The generation for `config` after this one: TLS, users and DNS loaded afresh, the
    /// state carried over. Fails (changing nothing) when a file cannot be loaded.
    pub fn next(&self, config: Arc<Config>) -> Result<Arc<Self>, String> {
        let carried = Carried {
            spool: self.spool.clone(),
            limits: self.limits.clone(),
            stored: self.stored.clone(),
            failures: Some((self.config.clone(), self.failures.clone())),
            rates: Some((self.config.clone(), self.rates.clone())),
            auth_checks: self.auth_checks.clone(),
            body_memory: self.body_memory.clone(),
            refusal_log: self.refusal_log.clone(),
            accounting: self.accounting.clone(),
            api_in_flight: self.api_in_flight.clone(),
            cluster: self.cluster.clone(),
        };
        Self::build(config, carried)
    }

    fn build(config: Arc<Config>, carried: Carried) -> Result<Arc<Self>, String> {
        let (tls, tls_client_certs) = match &config.tls {
            Some(t) => {
                tls::ensure_certificate(t, &config.hostname.0)?;
                (Some(tls::acceptor(t, false)?), Some(tls::acceptor(t, true)?))
            }
            None => (None, None),
        };
        let users = match &config.auth.users_file {
            Some(path) => Some(Arc::new(UsersFile::open(path)?)),
            None => None,
        };
        let session = |require_auth| {
            Arc::new(SessionConfig {
                tls_available: tls.is_some(),
                auth_available: users.is_some(),
                require_auth,
                tls_only_recipients: {
                    let config = config.clone();
                    RecipientRule(Arc::new(move |m| config.requires_tls(m)))
                },
                // Submission only: there the sender is a person who can fix the address now.
                check_recipient_domains: require_auth,
                ..plain_session_config(&config)
            })
        };
        let (relay, submission) = (session(false), session(true));
        let a = &config.auth;
        let failures = match carried.failures {
            Some((was, kept))
                if (was.auth.max_failures, was.auth.failure_window, was.auth.lockout) == (a.max_failures, a.failure_window, a.lockout) =>
            {
                kept
            }
            _ => Arc::new(FailureTracker::new(a.max_failures, a.failure_window.0, a.lockout.0)),
        };
        let l = &config.limits;
        let rates = match carried.rates {
            Some((was, kept)) if (was.limits.messages_per_ip, was.limits.messages_per_user) == (l.messages_per_ip, l.messages_per_user) => {
                kept
            }
            _ => Arc::new(rates::SenderRates::new(l.messages_per_ip, l.messages_per_user).shared(carried.cluster.clone())),
        };
        let submits = config.listeners.iter().any(|l| l.mode != ListenerMode::Relay);
        let dns = if submits { Some(crate::dns::Dns::new(&config.dns)?) } else { None };
        let signer = crate::dkim::Signer::load(&config.dkim)?;
        let api_keys = match &config.api.keys_file {
            Some(path) => Some(Arc::new(crate::http::keys::ApiKeys::load(path)?)),
            None => None,
        };
        let Carried { spool, limits, stored, auth_checks, body_memory, refusal_log, accounting, api_in_flight, cluster, .. } = carried;
        Ok(Arc::new(IntakeContext {
            relay,
            submission,
            spool,
            limits,
            tls,
            tls_client_certs,
            users,
            failures,
            stored,
            rates,
            dns,
            config,
            auth_checks,
            body_memory,
            refusal_log,
            accounting,
            signer,
            api_keys,
            api_in_flight,
            cluster,
        }))
    }

    /// A buffer for the next message body, under this generation's limits.
    pub fn body_buffer(&self) -> body::BodyBuffer {
        let l = &self.config.limits;
        body::BodyBuffer::new(
            self.spool.clone(),
            self.body_memory.clone(),
            body::BodyLimits { memory: l.intake_memory, max_header: l.max_header_size },
        )
    }

    fn session_config(&self, mode: ListenerMode) -> Arc<SessionConfig> {
        match mode {
            ListenerMode::Relay => self.relay.clone(),
            ListenerMode::Submission | ListenerMode::Submissions => self.submission.clone(),
        }
    }
}

/// The session settings that follow from the config alone: limits, names, address literals;
/// no TLS, no AUTH, no recipient policies (the listeners add those; `sendmail -bs` uses it
/// as it is).
pub fn plain_session_config(config: &Config) -> SessionConfig {
    let l = &config.limits;
    SessionConfig {
        hostname: config.hostname.0.clone(),
        max_message_size: usize::try_from(l.max_message_size).unwrap_or(usize::MAX),
        max_recipients: l.max_recipients,
        max_line: l.max_line_length,
        max_errors: l.max_errors,
        postmaster: config.postmaster(),
        tls_available: false,
        auth_available: false,
        require_auth: false,
        address_literals: config.delivery.address_literals,
        tls_only_recipients: RecipientRule::never(),
        check_recipient_domains: false,
    }
}

/// Accepts connections until `shutdown` turns true or the listener's settings are dropped
/// (a reload removed it); each connection runs in its own task,
/// under the listener settings and the intake generation in force when it was accepted.
/// `accepting` says whether the last accept worked.
pub async fn serve(
    listener: TcpListener,
    mut spec: watch::Receiver<ListenerConfig>,
    intake: Arc<Live<IntakeContext>>,
    mut shutdown: watch::Receiver<bool>,
    accepting: Arc<std::sync::atomic::AtomicBool>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let listener_label = local.to_string();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    accepting.store(true, std::sync::atomic::Ordering::Relaxed);
                    a
                }
                Err(e) => {
                    // Out of file descriptors or memory: back off instead of spinning; /healthz
                    // says the listener is down until an accept succeeds again. A connection
                    // that failed on its own (aborted, refused by a filter) says nothing of
                    // the listener.
                    let exhausted = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
                    if e.raw_os_error().is_some_and(|n| exhausted.contains(&n)) {
                        accepting.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
            // A reload changed its settings (taken at the next accept), or removed it.
            changed = spec.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        metrics::counter!(m::CONNECTIONS_TOTAL, "listener" => listener_label.clone()).increment(1);
        let ctx = intake.get();
        let spec = spec.borrow().clone();
        match ctx.limits.acquire(peer.ip(), ctx.config.is_trusted(peer.ip()), &ctx.config.limits) {
            Ok(slot) => {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    connection::serve(stream, peer, local, spec, ctx, shutdown).await;
                    drop(slot);
                });
            }
            Err(refusal) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => refusal.label()).increment(1);
                // On an implicit-TLS port a plaintext 421 would be noise; just close.
                if spec.mode != ListenerMode::Submissions {
                    tokio::spawn(async move {
                        let reply = codes::closing("Too many connections, try again later");
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&reply.to_bytes())).await;
                    });
                }
            }
        }
    }
}
