//! One delivery attempt of a group of recipients to one destination: try its targets in order,
//! over pooled connections, and report one result per recipient.

use std::sync::Arc;
use std::time::Instant;

use super::Hop;
use super::connection::{ConnError, Connection, Settings};
use super::pool::{Checkout, Pool, PoolKey, Slot};
use super::route::Target;
use super::transport::Transport;
use crate::metrics as m;
use crate::shaping::Bucket;
use crate::shaping::health::Signal;
use crate::smtp::client::{Failure, Message, RcptOutcome, TlsPolicy};
use crate::smtp::reply::{Enhanced, Reply};

/// A recipient's result, with the host that gave it (for Remote-MTA in bounces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub outcome: RcptOutcome,
    pub remote: Option<String>,
    /// The connection it went over, for the delivery log line.
    pub via: Option<Via>,
    /// The host that answered offers DSN (RFC 3461), so NOTIFY went on with the message.
    pub remote_dsn: bool,
    /// The outcome's reply is the remote server's own, not ours about it.
    pub remote_said: bool,
}

impl Attempted {
    /// Our own verdict, no server involved (routing, REQUIRETLS, shaping, an operator).
    pub fn local(outcome: RcptOutcome) -> Attempted {
        Attempted { outcome, remote: None, via: None, remote_dsn: false, remote_said: false }
    }

    /// What the server `remote` answered (over no connection worth logging: tests, mostly).
    pub fn from_server(outcome: RcptOutcome, remote: &str, remote_dsn: bool) -> Attempted {
        Attempted { outcome, remote: Some(remote.to_string()), via: None, remote_dsn, remote_said: true }
    }
}

/// The connection a result came over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The host's name (the MX or smarthost name) and the address the connection went to.
    pub host: String,
    pub addr: std::net::SocketAddr,
    /// TLS version and cipher (`TLSv1.3/TLS13_AES_256_GCM_SHA384`), if any.
    pub tls: Option<String>,
    /// What was wrong with a certificate checked but not required (`Hop::observe`).
    pub tls_verdict: Option<(super::tls_rpt::ResultType, String)>,
    /// A pooled connection (not a new session).
    pub reused: bool,
    /// Setting the connection up (0 for a pooled one), and the transaction on it.
    pub connect_ms: u64,
    pub transfer_ms: u64,
}

impl std::fmt::Display for Via {
    /// `host[address]:port`, as Postfix's `relay=`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }
}

/// A host that failed on the way, or was sent to in plain text (the queue logs it with the
/// queue id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEvent {
    pub relay: String,
    pub error: String,
    pub kind: HostEventKind,
    /// The host's name and address.
    pub target: Target,
    /// What failed, as a TLS-RPT result type, when TLS did (a handshake, or STARTTLS missing).
    pub tls: Option<super::tls_rpt::ResultType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEventKind {
    /// The host failed; the next one is tried.
    Failed,
    /// Opportunistic TLS failed and the same host was tried again in plain text.
    PlaintextRetry,
    /// The host's STARTTLS failed earlier (`error` says how): plain text at once.
    PlaintextRemembered,
}

/// One attempt's results, and what it said about the destination (for backoff). A recipient
/// without a result was not tried (delivery is stopping): it stays as it was.
pub struct Report {
    pub results: Vec<Option<Attempted>>,
    pub signal: Signal,
    pub hosts: Vec<HostEvent>,
}

fn relay_of(target: &Target) -> String {
    format!("{}[{}]:{}", target.host, target.addr.ip(), target.addr.port())
}

/// A reply that asks us to slow down: 421, or any 4.7.x (such as 4.7.28, "rate limited").
fn throttles(reply: &Reply) -> bool {
    reply.code == 421 || (reply.code / 100 == 4 && reply.enhanced.is_some_and(|e| e.1 == 7))
}

/// One worker's half of delivery: its pool, and the attempt itself.
pub struct Sender<T> {
    /// Read once per message: an attempt runs under the settings it started with.
    pub settings: Arc<crate::live::Live<Settings>>,
    pub pool: Pool<T>,
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Hosts whose STARTTLS failed, shared by the workers.
    pub legacy: Arc<super::legacy::LegacyHosts>,
    /// Connection caps are shared with the other nodes on its Redis (`cluster.redis`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl<T: Transport> Sender<T> {
    /// `slot` with its lease on the cap shared with other nodes (`cluster.redis`). While the
    /// cap is full, a connection of this worker's under `key` put back serves instead
    /// (Err; none is looked for without a key): this node's connections stay busy rather
    /// than its mail waiting for another node to close one. While it waits, the slot's share
    /// of `delivery.max_connections` is lent back, so a destination other nodes keep busy
    /// does not hold up the rest; the share comes back before the next ask, so a lease is
    /// never held waiting for one.
    async fn leased(&self, mut slot: Slot, key: Option<&PoolKey>, target: &Target, bucket: &Bucket) -> Result<Slot, Connection<T>> {
        let Some(cluster) = &self.cluster else { return Ok(slot) };
        if slot.leased() {
            return Ok(slot);
        }
        let (cap, returned) = (bucket.shared_cap(target), self.pool.returned(slot.cap()));
        let mut pause = crate::cluster::lease::FIRST_PAUSE;
        loop {
            if let Some(conn) = key.and_then(|key| self.pool.take(key)) {
                return Err(conn);
            }
            if !slot.has_total() {
                slot.set_total(self.pool.total_share().await);
            }
            if let Some(lease) = cluster.try_lease(&cap, bucket.max_connections).await {
                slot.hold(lease);
                return Ok(slot);
            }
            slot.lend_total();
            tokio::select! {
                _ = returned.notified(), if key.is_some() => {}
                _ = tokio::time::sleep(pause) => pause = crate::cluster::lease::next_pause(pause),
            }
        }
    }

    /// A pooled connection to `target` (true: reused), or a new one (with `slot` when the
    /// dispatcher reserved one). `fresh` asks for a new one: a pooled one just died.
    async fn connection(
        &self,
        (target, policy, hop): (&Target, TlsPolicy, Hop),
        slot: Option<Slot>,
        fresh: bool,
        bucket: &Bucket,
        settings: &Settings,
    ) -> Result<(Connection<T>, bool, Option<HostEvent>), ConnError> {
        // A host DANE authenticates is never sent to in plain text.
        let policy = if target.dane.is_some() { TlsPolicy::Required } else { policy };
        let key = PoolKey::new(target, policy, hop);
        let cap = bucket.cap(target);
        let permit = match (slot, fresh) {
            (Some(slot), true) => slot,
            (Some(slot), false) => match self.pool.take(&key) {
                Some(conn) => return Ok((conn, true, None)),
                None => slot,
            },
            (None, true) => self.pool.slot(&cap, bucket.max_connections, bucket.max_deliveries, &bucket.active).await,
            (None, false) => match self.pool.checkout(&key, &cap, bucket.max_connections, bucket.max_deliveries, &bucket.active).await {
                Checkout::Pooled(conn) => return Ok((*conn, true, None)),
                Checkout::New(slot) => slot,
            },
        };
        // The lease before the connection rate's token: a token booked and then spent waiting
        // for a lease would let the waiters connect all at once when leases free up.
        let permit = match self.leased(permit, Some(&key), target, bucket).await {
            Ok(permit) => permit,
            Err(pooled) => return Ok((pooled, true, None)),
        };
        let wait = bucket.connection_wait();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut fallback = None;
        let opportunistic = policy == TlsPolicy::Opportunistic && !hop.implicit_tls;
        let remembered = if opportunistic { self.legacy.remembered(target.addr, std::time::Instant::now()) } else { None };
        let first_policy = match &remembered {
            Some(why) => {
                metrics::counter!(m::DELIVERY_TLS_FALLBACKS, "how" => "remembered").increment(1);
                fallback = Some(HostEvent {
                    relay: relay_of(target),
                    error: why.clone(),
                    kind: HostEventKind::PlaintextRemembered,
                    target: target.clone(),
                    tls: None,
                });
                TlsPolicy::Never
            }
            None => policy,
        };
        let mut opened = match Connection::open(target.clone(), first_policy, hop, settings, permit).await {
            // Opportunistic TLS that fails is retried in plain text (rustls speaks no TLS 1.0/1.1),
            // and the host remembered so that its next connections skip the handshake.
            Err(ConnError::Tls(e, result)) if opportunistic && remembered.is_none() => {
                metrics::counter!(m::DELIVERY_TLS_FALLBACKS, "how" => "retried").increment(1);
                self.legacy.remember(target.addr, &e.to_string(), settings.starttls_failure_memory, std::time::Instant::now());
                fallback = Some(HostEvent {
                    relay: relay_of(target),
                    error: e.to_string(),
                    kind: HostEventKind::PlaintextRetry,
                    target: target.clone(),
                    tls: Some(result),
                });
                let permit = self.pool.slot(&cap, bucket.max_connections, bucket.max_deliveries, &bucket.active).await;
                let permit = match self.leased(permit, None, target, bucket).await {
                    Ok(permit) => permit,
                    // Not looked for without a key; should one come, it serves as well.
                    Err(pooled) => return Ok((pooled, true, fallback)),
                };
                Connection::open(target.clone(), TlsPolicy::Never, hop, settings, permit).await
            }
            other => other,
        }?;
        // A plain-text fallback still serves this policy's pool.
        opened.policy = policy;
        metrics::counter!(m::DELIVERY_CONNECTIONS_OPENED).increment(1);
        let tls = opened.tls.as_deref().and_then(|t| t.split(' ').next()).unwrap_or("none").to_string();
        metrics::counter!(m::DELIVERY_TLS, "version" => tls).increment(1);
        tracing::debug!(host = %target.host, addr = %target.addr, tls = opened.tls.as_deref().unwrap_or("none"), "connected");
        Ok((opened, false, fallback))
    }

    /// Sends `msg` to the first target that takes it. Recipients a 452 left over go out in a
    /// new transaction at once. A target that cannot be reached or refuses the session is
    /// skipped for the next one; a session lost during a transaction defers what is left
    /// (once the server answered anything of it, that was an attempt: RFC 5321 6.1 accepts
    /// the duplicate a lost final reply may cause, one per attempt). A pooled connection that
    /// dies before any answer had died while idle: a fresh one is opened, nothing deferred.
    /// `slot`, reserved at dispatch, is for a new connection to the first target.
    pub async fn send(
        &self,
        targets: &[Target],
        mut slot: Option<Slot>,
        bucket: &Bucket,
        msg: Message,
        policy: TlsPolicy,
        hop: Hop,
    ) -> Report {
        let n = msg.recipients.len();
        let mut answered = false;
        let mut throttled: Option<String> = None;
        let mut results: Vec<Option<Attempted>> = vec![None; n];
        let mut pending: Vec<usize> = (0..n).collect();
        let mut last_error = String::from("no destination address to try");
        let mut tls_failures = 0;
        let mut stop = self.stop.clone();
        let settings = self.settings.get();
        let mut hosts = Vec::new();
        'targets: for target in targets {
            let mut fresh = false;
            while !pending.is_empty() {
                let reserved = slot.take().filter(|s| *s.cap() == bucket.cap(target));
                let connecting = Instant::now();
                let connection = tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopping| *stopping) => return finish(results, Signal::Answered, hosts),
                    c = self.connection((target, policy, hop), reserved, fresh, bucket, &settings) => c,
                };
                let connect_ms = connecting.elapsed().as_millis() as u64;
                if *stop.borrow() {
                    // The wait for a connection outlasted the drain's start: nothing new goes out.
                    if let Ok((conn, _, _)) = connection {
                        self.pool.put(conn);
                    }
                    return finish(results, Signal::Answered, hosts);
                }
                let (mut conn, reused) = match connection {
                    Ok((conn, reused, fallback)) => {
                        hosts.extend(fallback);
                        (conn, reused)
                    }
                    Err(ConnError::Smtp(Failure::Loop)) => {
                        let reply = Reply::new(554, Enhanced(5, 4, 6), format!("{} greets with our own name: mail loop", target.host));
                        fill(&mut results, &pending, &reply, Some(&target.host));
                        return finish(results, Signal::Answered, hosts);
                    }
                    Err(e) => {
                        if let ConnError::Smtp(Failure::Greeting(r) | Failure::Closing(r)) = &e
                            && throttles(r)
                        {
                            throttled = Some(format!("{} [{}]: {r}", target.host, target.addr));
                        }
                        if matches!(e, ConnError::Tls(..) | ConnError::Smtp(Failure::TlsUnavailable)) {
                            tls_failures += 1;
                        }
                        if matches!(e, ConnError::Smtp(Failure::TlsUnavailable)) {
                            metrics::counter!(m::DELIVERY_TLS_FAILURES, "kind" => "not_offered").increment(1);
                        }
                        last_error = format!("{} [{}]: {e}", target.host, target.addr);
                        let tls = match &e {
                            ConnError::Tls(_, result) => Some(*result),
                            ConnError::Smtp(Failure::TlsUnavailable) => Some(super::tls_rpt::ResultType::StarttlsNotSupported),
                            _ => None,
                        };
                        hosts.push(HostEvent {
                            relay: relay_of(target),
                            error: e.to_string(),
                            kind: HostEventKind::Failed,
                            target: target.clone(),
                            tls,
                        });
                        continue 'targets;
                    }
                };
                // RFC 7293 3.3: an RRVS check the next hop cannot make fails the recipient
                // (unless it said ";C").
                if !conn.offers_rrvs() && pending.iter().any(|&i| msg.recipients[i].1.rrvs_must_be_checked()) {
                    let (unchecked, rest): (Vec<usize>, Vec<usize>) =
                        pending.iter().partition(|&&i| msg.recipients[i].1.rrvs_must_be_checked());
                    let reply =
                        Reply::new(550, Enhanced(5, 7, 19), format!("RRVS test cannot be completed: {} does not offer RRVS", target.host));
                    fill(&mut results, &unchecked, &reply, Some(&target.host));
                    pending = rest;
                    if pending.is_empty() {
                        self.pool.put(conn);
                        break;
                    }
                }
                let sub = Message { recipients: pending.iter().map(|&i| msg.recipients[i].clone()).collect(), ..msg.clone() };
                let transferring = Instant::now();
                let result = conn.transact(sub, &settings).await;
                let via = Via {
                    host: target.host.clone(),
                    addr: target.addr,
                    tls: conn.tls.as_deref().map(|t| t.replace(' ', "/")),
                    tls_verdict: conn.tls_verdict.clone(),
                    reused,
                    connect_ms: if reused { 0 } else { connect_ms },
                    transfer_ms: transferring.elapsed().as_millis() as u64,
                };
                match result {
                    Ok(outcomes) => {
                        answered = true;
                        if let Some(r) = outcomes.iter().find_map(|o| match o {
                            RcptOutcome::Deferred(r) if throttles(r) => Some(r),
                            _ => None,
                        }) {
                            throttled = Some(format!("{}: {r}", target.host));
                        }
                        let remote_dsn = conn.offers_dsn();
                        let remote_said = !conn.refused_locally();
                        self.pool.put(conn);
                        let mut overflow = Vec::new();
                        for (k, outcome) in outcomes.into_iter().enumerate() {
                            let i = pending[k];
                            match outcome {
                                RcptOutcome::Overflow => overflow.push(i),
                                o => {
                                    results[i] = Some(Attempted {
                                        outcome: o,
                                        remote: Some(target.host.clone()),
                                        via: Some(via.clone()),
                                        remote_dsn,
                                        remote_said,
                                    })
                                }
                            }
                        }
                        pending = overflow;
                    }
                    Err(e) if reused && !conn.transaction_answered() && died_idle(&e) => {
                        // Not an attempt. Its idle siblings are suspect too (a restarted next hop).
                        tracing::debug!(host = %target.host, error = %e, "pooled connection was dead; reconnecting");
                        metrics::counter!(m::DELIVERY_CONNECTIONS_DISCARDED, "reason" => "died").increment(1);
                        self.pool.discard_address(target.addr);
                        fresh = true;
                    }
                    Err(e) => {
                        if let ConnError::Smtp(Failure::Closing(r)) = &e
                            && throttles(r)
                        {
                            throttled = Some(format!("{}: {r}", target.host));
                        }
                        let reply = interrupted(&e, target);
                        fill_via(&mut results, &pending, &reply, Some(&target.host), Some(via));
                        let signal = throttled.map_or(Signal::Answered, Signal::Throttled);
                        return finish(results, signal, hosts);
                    }
                }
            }
            break;
        }
        let signal = match throttled {
            Some(why) => Signal::Throttled(why),
            None if answered || pending.is_empty() => Signal::Answered,
            None => Signal::Unreachable(last_error.clone()),
        };
        if !pending.is_empty() {
            let reply = if tls_failures == targets.len() && !targets.is_empty() {
                Reply::new(451, Enhanced(4, 7, 4), format!("TLS required, and no destination host could provide it; last: {last_error}"))
            } else {
                Reply::new(451, Enhanced(4, 4, 1), format!("No destination host accepted the connection; last: {last_error}"))
            };
            fill(&mut results, &pending, &reply, None);
        }
        finish(results, signal, hosts)
    }
}

/// A failure on a reused connection before the server answered anything of the transaction:
/// closed or reset (or a 421, the idle-timeout goodbye). A timeout is not: the server is there.
fn died_idle(e: &ConnError) -> bool {
    matches!(e, ConnError::Lost(_) | ConnError::Smtp(Failure::Closing(_)))
}

/// The deferral for recipients whose transaction broke off.
fn interrupted(e: &ConnError, target: &Target) -> Reply {
    let why = format!("{} [{}]: {e}", target.host, target.addr);
    match e {
        // The replies did not match the commands: nothing they said is believed.
        ConnError::Smtp(Failure::Protocol(_)) => Reply::new(451, Enhanced(4, 5, 0), why),
        _ => Reply::new(451, Enhanced(4, 4, 2), why),
    }
}

fn fill(results: &mut [Option<Attempted>], which: &[usize], reply: &Reply, remote: Option<&str>) {
    fill_via(results, which, reply, remote, None);
}

fn fill_via(results: &mut [Option<Attempted>], which: &[usize], reply: &Reply, remote: Option<&str>, via: Option<Via>) {
    let outcome = if reply.is_permanent() { RcptOutcome::Failed(reply.clone()) } else { RcptOutcome::Deferred(reply.clone()) };
    for &i in which {
        if results[i].is_none() {
            results[i] = Some(Attempted {
                outcome: outcome.clone(),
                remote: remote.map(str::to_string),
                via: via.clone(),
                remote_dsn: false,
                remote_said: false,
            });
        }
    }
}

fn finish(results: Vec<Option<Attempted>>, signal: Signal, hosts: Vec<HostEvent>) -> Report {
    Report { results, signal, hosts }
}
