//! One intake connection: moves bytes between the socket and the sans-IO session, runs TLS
//! handshakes and credential checks when the session asks, and turns finished transactions into
//! durable spool entries before their 250.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::IntakeContext;
use super::auth::Verdict;
use crate::stream;

type Stream = stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;
use crate::config::ListenerMode;
use crate::message::trace::{self, Trace};
use crate::metrics as m;
use crate::smtp::reply::{Enhanced, Reply, codes};
use crate::smtp::sasl::Credentials;
use crate::smtp::server::{AuthOutcome, ClientInfo, Event, Session, TlsInfo, Transaction, Waiting};
use crate::spool::{Envelope, Health, Identity, RecipientRecord, SpoolError};

/// Bodies above this size are written from a blocking thread, not the async worker.
const BLOCKING_WRITE_THRESHOLD: usize = 256 * 1024;
const READ_BUFFER: usize = 64 * 1024;

/// Where a connection came in, and how.
#[derive(Clone, Copy)]
pub(super) struct Origin {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub mode: ListenerMode,
    pub trusted: bool,
    /// The listener's priority for mail that names none.
    pub default_priority: i8,
}

pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    spec: crate::config::ListenerConfig,
    ctx: Arc<IntakeContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let (mode, client_certs) = (spec.mode, spec.request_client_certificates);
    let ip = peer.ip();
    let limit = ctx.config.limits.command_timeout.0;
    let mut stream = Stream::Plain(tcp);
    let mut implicit_tls = None;
    if mode == ListenerMode::Submissions {
        let Stream::Plain(tcp) = stream else { return };
        match handshake(&ctx, tcp, limit, client_certs).await {
            Some((tls, info)) => {
                stream = tls;
                implicit_tls = Some(info);
            }
            None => return,
        }
    }
    let origin = Origin { peer, local, mode, trusted: ctx.config.is_trusted(ip), default_priority: spec.default_priority };
    let client = ClientInfo {
        ip,
        relay_allowed: origin.trusted,
        plaintext_auth: ctx.config.plaintext_auth_allowed(ip),
        tls: implicit_tls,
        tls_required: ctx.config.tls_required(ip, mode),
    };
    let mut session = Session::new(ctx.session_config(mode), client);
    let mut out = Vec::with_capacity(4096);
    if ctx.spool.health() == Health::Failed {
        session.close_with(codes::spool_unavailable(), &mut out);
    } else if ctx.failures.is_locked(ip, Instant::now()) {
        session.close_with(codes::closing("Too many authentication failures, try again later"), &mut out);
    } else {
        session.greeting(&mut out);
    }
    // Never zeroed: read_buf fills the spare capacity (a connection per message is common).
    let mut buf = Vec::with_capacity(READ_BUFFER);
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if session.is_closed() {
            let _ = stream.shutdown().await;
            return;
        }
        let limit = match session.waiting() {
            Waiting::Command => ctx.config.limits.command_timeout.0,
            Waiting::Data => ctx.config.limits.data_timeout.0,
        };
        let read = tokio::select! {
            r = tokio::time::timeout(limit, { buf.clear(); stream.read_buf(&mut buf) }) => r,
            _ = shutdown.changed() => {
                session.close_with(Reply::new(421, Enhanced(4, 3, 2), "Service shutting down, closing connection"), &mut out);
                continue;
            }
        };
        let n = match read {
            Err(_) => {
                session.close_with(codes::timeout(), &mut out);
                continue;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        session.feed(&buf[..n]);
        session.set_mail_gate(match ctx.spool.health() {
            Health::Ok => ctx.rates.gate(ip, session.sender_identity()),
            Health::LowSpace => Some(codes::disk_full()),
            Health::Failed => Some(codes::spool_unavailable()),
        });
        loop {
            match session.poll(&mut out) {
                Event::NeedInput | Event::Close => break,
                Event::Message(tx) => {
                    let end_of_data = Instant::now();
                    let result = accept(&ctx, *tx, origin).await;
                    metrics::histogram!(m::DATA_REPLY_LATENCY).record(end_of_data.elapsed().as_secs_f64());
                    session.message_stored(result.as_deref().map_err(Clone::clone), &mut out);
                }
                Event::CheckRecipient(domain) => {
                    let refusal = match &ctx.dns {
                        Some(dns) => null_mx_refusal(dns, &domain).await,
                        None => None,
                    };
                    session.recipient_checked(refusal, &mut out);
                }
                Event::Authenticate(credentials) => {
                    let outcome = authenticate(&ctx, ip, credentials).await;
                    session.auth_result(outcome, &mut out);
                }
                Event::StartTls => {
                    // The 220 goes out in plaintext; then the handshake owns the socket.
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    let Stream::Plain(tcp) = stream else { return };
                    match handshake(&ctx, tcp, limit, client_certs).await {
                        Some((tls, info)) => {
                            stream = tls;
                            session.tls_started(info);
                        }
                        None => return,
                    }
                }
            }
        }
        for reason in session.take_refusals() {
            metrics::counter!(m::MESSAGES_REJECTED, "reason" => reason).increment(1);
        }
    }
}

/// Runs the server side of a TLS handshake; `None` (connection dropped) on failure or timeout.
async fn handshake(ctx: &IntakeContext, tcp: TcpStream, limit: std::time::Duration, client_certs: bool) -> Option<(Stream, TlsInfo)> {
    let acceptor = if client_certs { ctx.tls_client_certs.as_ref()? } else { ctx.tls.as_ref()? };
    let peer = tcp.peer_addr().ok();
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let info = super::tls::info(tls.get_ref().1, |f| ctx.config.certificate_identity(f).map(str::to_string));
            metrics::counter!(m::TLS_HANDSHAKES, "version" => info.version.clone()).increment(1);
            Some((Stream::Tls(Box::new(tls)), info))
        }
        Ok(Err(e)) => {
            metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
            tracing::info!(client = ?peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
            None
        }
    }
}

/// Checks credentials off the async workers (argon2 is slow on purpose), delays failures, and
/// locks out an address that fails too often.
async fn authenticate(ctx: &Arc<IntakeContext>, ip: IpAddr, credentials: Credentials) -> AuthOutcome {
    if ctx.failures.is_locked(ip, Instant::now()) {
        metrics::counter!(m::AUTH_ATTEMPTS, "result" => "locked_out").increment(1);
        return AuthOutcome::LockedOut;
    }
    let Some(users) = ctx.users.clone() else {
        return AuthOutcome::TemporaryFailure;
    };
    let username = credentials.username.clone();
    let verdict = tokio::task::spawn_blocking(move || users.verify(&credentials.username, credentials.password.expose()))
        .await
        .unwrap_or(Verdict::Unavailable);
    match verdict {
        Verdict::Valid => {
            ctx.failures.record_success(ip);
            metrics::counter!(m::AUTH_ATTEMPTS, "result" => "success").increment(1);
            tracing::info!(user = %username, client = %ip, "authenticated");
            AuthOutcome::Success(username)
        }
        Verdict::Invalid => {
            metrics::counter!(m::AUTH_ATTEMPTS, "result" => "failure").increment(1);
            tracing::warn!(user = %username, client = %ip, "authentication failed");
            tokio::time::sleep(ctx.config.auth.failure_delay.0).await;
            if ctx.failures.record_failure(ip, Instant::now()) {
                tracing::warn!(client = %ip, lockout = ?ctx.config.auth.lockout.0, "too many authentication failures: locked out");
                AuthOutcome::LockedOut
            } else {
                AuthOutcome::Failed
            }
        }
        Verdict::Unavailable => {
            metrics::counter!(m::AUTH_ATTEMPTS, "result" => "temporary_failure").increment(1);
            AuthOutcome::TemporaryFailure
        }
    }
}

/// RFC 3848 / RFC 6531 protocol names for the Received `with` clause.
fn protocol_name(tx: &Transaction) -> &'static str {
    if !tx.esmtp {
        return "SMTP";
    }
    match (tx.params.smtputf8, tx.tls.is_some(), tx.identity.is_some()) {
        (false, false, false) => "ESMTP",
        (false, true, false) => "ESMTPS",
        (false, false, true) => "ESMTPA",
        (false, true, true) => "ESMTPSA",
        (true, false, false) => "UTF8SMTP",
        (true, true, false) => "UTF8SMTPS",
        (true, false, true) => "UTF8SMTPA",
        (true, true, true) => "UTF8SMTPSA",
    }
}

/// How long RCPT waits for the null MX answer; a slower resolver leaves the recipient to the
/// queue (which bounces it later), so a submission client never hangs on DNS.
const NULL_MX_BUDGET: Duration = Duration::from_millis(300);

/// 556 5.1.10 for a recipient domain that publishes a null MX (RFC 7505 4.2); any other
/// answer, a DNS failure or no answer within the budget included, leaves it to the queue.
async fn null_mx_refusal(dns: &impl crate::dns::Resolve, domain: &str) -> Option<Reply> {
    let answer = tokio::time::timeout(NULL_MX_BUDGET, dns.mx(domain)).await.ok()?;
    answer.is_null().then(|| Reply::new(556, Enhanced(5, 1, 10), format!("Recipient domain {domain} accepts no mail (null MX)")))
}

/// Checks, stamps and stores one message; `Ok(queue_id)` only once it is durable.
async fn accept(ctx: &Arc<IntakeContext>, mut tx: Transaction, origin: Origin) -> Result<String, Reply> {
    let facts = trace::scan_headers(&tx.body);
    if facts.received >= ctx.config.limits.max_hops {
        return Err(codes::too_many_hops());
    }
    if (origin.mode != ListenerMode::Relay || tx.identity.is_some())
        && let Some(fixed) = crate::message::submission::fix_recipient_headers(&tx.body)
    {
        tx.body = fixed;
    }
    let queue_id = ctx.spool.new_queue_id();
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = since_epoch.as_secs();
    let single = match tx.recipients.as_slice() {
        [only] => Some(&only.mailbox),
        _ => None,
    };
    let prefix = trace::prefix_fields(
        &Trace {
            helo: &tx.helo,
            client_ip: origin.peer.ip(),
            hostname: &ctx.config.hostname.0,
            protocol: protocol_name(&tx),
            queue_id: &queue_id,
            single_recipient: single,
            unix_time: now,
            tls: tx.tls.as_ref(),
            identity: tx.identity.as_deref().filter(|_| ctx.config.auth.received_identity),
        },
        &facts,
    );
    let size = prefix.len() + tx.body.len();
    let certificate = tx.tls.as_ref().and_then(|t| t.certificate_identity.clone());
    let identity = match (&tx.identity, origin.trusted, certificate) {
        (Some(user), _, _) => Identity::Authenticated(user.clone()),
        (None, _, Some(name)) => Identity::Certificate(name),
        (None, true, None) => Identity::TrustedNetwork,
        (None, false, None) => Identity::Anonymous,
    };
    let tls_text = tx.tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher)).unwrap_or_else(|| "none".into());
    // The rate limits count the authenticated user, else the client certificate's identity.
    let sender = tx.identity.clone().or_else(|| tx.tls.as_ref().and_then(|t| t.certificate_identity.clone()));
    // MT-PRIORITY as given; else the user's default; else the listener's.
    let user_priority = tx.identity.as_ref().and_then(|u| ctx.config.auth.user_priorities.get(u).copied());
    tx.params.priority = tx.params.priority.or(user_priority).or(Some(origin.default_priority).filter(|&p| p != 0));
    // RFC 8689 5: the header field is ignored when REQUIRETLS was given.
    tx.params.tls_optional = facts.tls_required_no && !tx.params.requiretls;
    let envelope = Envelope {
        queue_id: queue_id.clone(),
        from: tx.from,
        params: tx.params,
        recipients: tx.recipients.into_iter().map(|r| RecipientRecord::queued(r.mailbox, r.params, now)).collect(),
        client_ip: origin.peer.ip(),
        helo: tx.helo,
        identity: identity.clone(),
        listener: origin.local,
        arrival: now,
        arrival_ms: Some(since_epoch.as_millis() as u64),
        body: None,
    };
    let from = envelope.from.as_ref().map(|m| m.to_string()).unwrap_or_default();
    let recipients = envelope.recipients.len();
    let message_id = facts.message_id.unwrap_or_else(|| format!("<{queue_id}@{}>", ctx.config.hostname.0));
    let started = Instant::now();
    let stored = if tx.body.len() > BLOCKING_WRITE_THRESHOLD {
        let spool = ctx.spool.clone();
        let body = tx.body;
        tokio::task::spawn_blocking(move || spool.store(envelope, &[prefix.as_bytes(), &body]))
            .await
            .unwrap_or_else(|e| Err(SpoolError::Io(e.to_string())))
    } else {
        ctx.spool.store(envelope, &[prefix.as_bytes(), &tx.body])
    };
    let durable = match stored {
        Ok(d) => d.wait().await,
        Err(e) => Err(e),
    };
    if let Err(e) = durable {
        tracing::error!(queue_id = %queue_id, error = %e, "message not stored");
        return Err(match e {
            SpoolError::Poisoned => codes::spool_unavailable(),
            _ => codes::spool_failed(),
        });
    }
    ctx.stored.notify_one();
    ctx.rates.count(origin.peer.ip(), sender.as_deref());
    metrics::histogram!(m::COMMIT_LATENCY).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::MESSAGES_ACCEPTED).increment(1);
    metrics::counter!(m::BYTES_ACCEPTED).increment(size as u64);
    // The traceability line (spamops draft 3.1): queue id, identity, client, TLS, Message-ID.
    tracing::info!(
        queue_id = %queue_id,
        from = %from,
        recipients,
        size,
        client = %origin.peer.ip(),
        identity = %identity,
        tls = %tls_text,
        message_id = %message_id,
        "accepted"
    );
    Ok(queue_id)
}
