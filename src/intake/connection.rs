//! One intake connection: moves bytes between the socket and the sans-IO session, runs TLS
//! handshakes and credential checks when the session asks, and turns finished transactions into
//! durable spool entries before their 250.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::IntakeContext;
use super::auth::Verdict;
use super::body::BodyBuffer;
use super::pace::{DataPace, Pace};
use crate::stream;

type Stream = stream::Stream<tokio_rustls::server::TlsStream<TcpStream>>;
use super::accept::{Source, Submission};
use crate::config::ListenerMode;
use crate::metrics as m;
use crate::smtp::reply::{Enhanced, Reply, codes};
use crate::smtp::sasl::Credentials;
use crate::smtp::server::{AuthOutcome, ClientInfo, Event, Session, TlsInfo, Transaction, Waiting};
use crate::spool::Health;

const READ_BUFFER: usize = 64 * 1024;
/// Body bytes the session may gather before the driver moves them to the body buffer (a
/// smaller message reaches the accept path in one piece, straight from the session).
const TAKE_BODY_AT: usize = 32 * 1024;

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
    let id = crate::log::session_id();
    let started = Instant::now();
    tracing::info!(session = %id, client = %peer, listener = %local, mode = mode.name(), "connect");
    let limit = ctx.config.limits.command_timeout.0;
    let mut stream = Stream::Plain(tcp);
    let mut implicit_tls = None;
    if mode == ListenerMode::Submissions {
        let Stream::Plain(tcp) = stream else { return };
        match handshake(&ctx, &id, tcp, limit, client_certs).await {
            Some((tls, info)) => {
                stream = tls;
                implicit_tls = Some(info);
            }
            None => {
                disconnected(&id, peer, End::TlsFailed, None, 0, started);
                return;
            }
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
    if spec.forbid_unauth_pipelining {
        session.forbid_unauth_pipelining();
    }
    let mut out = Vec::with_capacity(4096);
    if spec.forbid_unauth_pipelining && spoke_first(&stream) {
        session.close_with(codes::spoke_first(), &mut out);
    } else if ctx.spool.health() == Health::Failed {
        session.close_with(codes::spool_unavailable(), &mut out);
    } else if !origin.trusted && ctx.failures.is_locked(ip, Instant::now()) {
        // A trusted network's relaying goes on: only its AUTH is refused (one bad password
        // behind a NAT address must not stop a LAN's mail).
        session.close_with(codes::closing("Too many authentication failures, try again later"), &mut out);
    } else {
        session.greeting(&mut out);
    }
    let link = Link { id: &id, origin, client_certs };
    let (end, messages) = converse(&ctx, &mut session, stream, out, link, &mut shutdown).await;
    for refused in session.take_refusals() {
        metrics::counter!(m::MESSAGES_REJECTED, "reason" => refused.reply.reason()).increment(1);
        ctx.refusal_log.refused(&id, ip, &refused, Instant::now());
    }
    ctx.refusal_log.settle(ip, Instant::now());
    disconnected(&id, peer, end, Some(session.tally()), messages, started);
}

/// How a session ended, for its disconnect line.
#[derive(Debug, Clone, Copy)]
enum End {
    /// We closed it: after QUIT, a 421, a timeout, a protocol violation.
    Closed,
    /// The client went away (or a read or write failed).
    Lost,
    TlsFailed,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Lost => "lost",
            End::TlsFailed => "tls_failed",
        }
    }
}

/// The disconnect line: how it ended, the commands by verb (Postfix's `disconnect ...
/// ehlo=1 mail=1 ... commands=5`), messages accepted and the session's length.
fn disconnected(id: &str, peer: SocketAddr, end: End, tally: Option<&crate::smtp::server::Tally>, messages: u32, started: Instant) {
    let mut verbs = String::new();
    for (verb, n) in tally.into_iter().flat_map(|t| t.used()) {
        if !verbs.is_empty() {
            verbs.push(',');
        }
        verbs.push_str(&format!("{verb}:{n}"));
    }
    tracing::info!(
        session = id,
        client = %peer,
        end = end.name(),
        commands = tally.map_or(0, |t| t.total()),
        verbs = verbs.as_str(),
        messages,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()).as_str(),
        "disconnect"
    );
}

/// What the conversation needs to know about its connection.
#[derive(Clone, Copy)]
struct Link<'a> {
    id: &'a str,
    origin: Origin,
    client_certs: bool,
}

/// Runs the SMTP conversation until the session closes or the connection is lost; returns how
/// it ended and how many messages were accepted.
async fn converse(
    ctx: &Arc<IntakeContext>,
    session: &mut Session,
    mut stream: Stream,
    mut out: Vec<u8>,
    link: Link<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> (End, u32) {
    let Link { id, origin, client_certs } = link;
    let ip = origin.peer.ip();
    let mut messages = 0;
    // Never zeroed: read_buf fills the spare capacity (a connection per message is common).
    let mut buf = Vec::with_capacity(READ_BUFFER);
    // The body of the transaction under way, as it arrives: (its serial, the buffer).
    let mut incoming: Option<(u64, BodyBuffer)> = None;
    // The buffer the session gathers body bytes in next (see `Session::swap_body`).
    let mut spare = Vec::new();
    let mut pace = DataPace::default();
    loop {
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return (End::Lost, messages);
            }
            out.clear();
        }
        if session.is_closed() {
            let _ = stream.shutdown().await;
            return (End::Closed, messages);
        }
        let l = &ctx.config.limits;
        let limit = match session.waiting() {
            // Under pressure an idle anonymous session gives its slot up soon.
            Waiting::Command
                if !origin.trusted && session.sender_identity().is_none() && !session.in_transaction() && ctx.limits.under_stress(l) =>
            {
                l.stress_command_timeout.0.min(l.command_timeout.0)
            }
            Waiting::Command => l.command_timeout.0,
            Waiting::Data => l.data_timeout.0,
        };
        let now = Instant::now();
        pace.before_read(session.transaction_serial(), session.receiving_data(), session.in_transaction(), now);
        if let Some(reply) = pace_refusal(pace.judge(l, now)) {
            session.close_with(reply, &mut out);
            continue;
        }
        let limit = pace.read_limit(l, limit, now);
        let read = tokio::select! {
            r = tokio::time::timeout(limit, { buf.clear(); stream.read_buf(&mut buf) }) => r,
            _ = shutdown.changed() => {
                session.close_with(Reply::new(421, Enhanced(4, 3, 2), "Service shutting down, closing connection"), &mut out);
                continue;
            }
        };
        let n = match read {
            Err(_) => {
                let reply = pace_refusal(pace.judge(l, Instant::now())).unwrap_or_else(codes::timeout);
                session.close_with(reply, &mut out);
                continue;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return (End::Lost, messages),
            Ok(Ok(n)) => n,
        };
        pace.read(n);
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
                    let serial = session.transaction_serial();
                    let buffer = match incoming.take() {
                        Some((s, buffer)) if s == serial => buffer,
                        _ => ctx.body_buffer(),
                    };
                    let result = accept(ctx, *tx, buffer, origin, id).await;
                    messages += u32::from(result.is_ok());
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
                    let outcome = authenticate(ctx, id, ip, credentials).await;
                    session.auth_result(outcome, &mut out);
                }
                Event::StartTls => {
                    // The 220 goes out in plaintext; then the handshake owns the socket.
                    if stream.write_all(&out).await.is_err() {
                        return (End::Lost, messages);
                    }
                    out.clear();
                    let Stream::Plain(tcp) = stream else { return (End::Lost, messages) };
                    match handshake(ctx, id, tcp, limit, client_certs).await {
                        Some((tls, info)) => {
                            stream = tls;
                            session.tls_started(info);
                        }
                        None => return (End::TlsFailed, messages),
                    }
                }
            }
        }
        // A large body moves on as it arrives: the session keeps about one read of it.
        if session.swap_body(TAKE_BODY_AT, &mut spare) {
            let serial = session.transaction_serial();
            let buffer = match &mut incoming {
                Some((s, buffer)) if *s == serial => buffer,
                _ => &mut incoming.insert((serial, ctx.body_buffer())).1,
            };
            buffer.push(std::mem::take(&mut spare)).await;
            spare = buffer.take_spare();
        } else if !session.in_transaction() {
            incoming = None; // Ended without a message (RSET, a refused body): dropped.
        }
        for refused in session.take_refusals() {
            metrics::counter!(m::MESSAGES_REJECTED, "reason" => refused.reply.reason()).increment(1);
            ctx.refusal_log.refused(id, ip, &refused, Instant::now());
        }
    }
}

/// Bytes from the client are waiting already, before our greeting (RFC 5321 3.1: a client
/// waits for it). Only what arrived by now is seen: a check, not a greeting delay.
fn spoke_first(stream: &Stream) -> bool {
    use std::os::fd::AsRawFd;
    let Stream::Plain(tcp) = stream else { return false };
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the byte in the socket.
    let n = unsafe { libc::recv(tcp.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n > 0
}

/// Runs the server side of a TLS handshake; `None` (connection dropped) on failure or timeout.
async fn handshake(
    ctx: &IntakeContext,
    id: &str,
    tcp: TcpStream,
    limit: std::time::Duration,
    client_certs: bool,
) -> Option<(Stream, TlsInfo)> {
    let acceptor = if client_certs { ctx.tls_client_certs.as_ref()? } else { ctx.tls.as_ref()? };
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let info = super::tls::info(tls.get_ref().1, |f| ctx.config.certificate_identity(f).map(str::to_string));
            metrics::counter!(m::TLS_HANDSHAKES, "version" => info.version.clone()).increment(1);
            tracing::info!(
                session = id,
                version = info.version.as_str(),
                cipher = info.cipher.as_str(),
                certificate = info.certificate_identity.as_deref().unwrap_or("none"),
                "TLS established"
            );
            Some((Stream::Tls(Box::new(tls)), info))
        }
        Ok(Err(e)) => {
            metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
            tracing::info!(session = id, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!(m::TLS_HANDSHAKE_FAILURES).increment(1);
            tracing::info!(session = id, error = "timed out", "TLS handshake failed");
            None
        }
    }
}

/// Checks credentials off the async workers (argon2 is slow on purpose), delays failures, and
/// locks out an address that fails too often.
async fn authenticate(ctx: &Arc<IntakeContext>, id: &str, ip: IpAddr, credentials: Credentials) -> AuthOutcome {
    let Some(users) = ctx.users.clone() else {
        return AuthOutcome::TemporaryFailure;
    };
    let username = credentials.username.clone();
    // Counted before the check: parallel guesses beyond the limit are never checked.
    let Some(attempt) = ctx.failures.begin(ip, &username, Instant::now()) else {
        metrics::counter!(m::AUTH_ATTEMPTS, "result" => "locked_out").increment(1);
        tracing::warn!(session = id, user = username.as_str(), client = %ip, "authentication refused: locked out");
        return AuthOutcome::LockedOut;
    };
    // A few checks at a time (argon2 takes ~19 MiB and a core each); the rest wait their turn.
    let Ok(_turn) = ctx.auth_checks.clone().acquire_owned().await else {
        return AuthOutcome::TemporaryFailure;
    };
    let verdict = tokio::task::spawn_blocking(move || users.verify(&credentials.username, credentials.password.expose()))
        .await
        .unwrap_or(Verdict::Unavailable);
    match verdict {
        Verdict::Valid => {
            ctx.failures.succeeded(attempt);
            metrics::counter!(m::AUTH_ATTEMPTS, "result" => "success").increment(1);
            tracing::info!(session = id, user = username.as_str(), client = %ip, "authenticated");
            AuthOutcome::Success(username)
        }
        Verdict::Invalid => {
            metrics::counter!(m::AUTH_ATTEMPTS, "result" => "failure").increment(1);
            tracing::warn!(session = id, user = username.as_str(), client = %ip, "authentication failed");
            drop(_turn);
            tokio::time::sleep(ctx.config.auth.failure_delay.0).await;
            if ctx.failures.failed(attempt, Instant::now()) {
                tracing::warn!(session = id, client = %ip, seconds = ctx.config.auth.lockout.0.as_secs(), "too many authentication failures: locked out");
                AuthOutcome::LockedOut
            } else {
                AuthOutcome::Failed
            }
        }
        Verdict::Unavailable => {
            ctx.failures.succeeded(attempt); // Not the client's failure.
            metrics::counter!(m::AUTH_ATTEMPTS, "result" => "temporary_failure").increment(1);
            tracing::error!(session = id, user = username.as_str(), "authentication unavailable: the users file cannot be read");
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

fn pace_refusal(pace: Pace) -> Option<Reply> {
    match pace {
        Pace::Fine => None,
        Pace::TooLong => Some(codes::data_too_long()),
        Pace::TooSlow => Some(codes::data_too_slow()),
    }
}

/// Hands a finished SMTP transaction to the accept path, with the body bytes taken so far.
async fn accept(ctx: &Arc<IntakeContext>, tx: Transaction, mut buffer: BodyBuffer, origin: Origin, id: &str) -> Result<String, Reply> {
    let source = Source::Smtp {
        session: id.to_string(),
        peer: origin.peer,
        local: origin.local,
        protocol: protocol_name(&tx),
        helo: tx.helo,
        fix_ups: origin.mode != ListenerMode::Relay || tx.identity.is_some(),
        tls: tx.tls,
        user: tx.identity,
        trusted: origin.trusted,
        default_priority: origin.default_priority,
    };
    let recipients = tx.recipients.into_iter().map(|r| (r.mailbox, r.params)).collect();
    buffer.push(tx.body).await;
    let body = buffer.finish().await.map_err(|e| super::accept::Refusal::Body(e).reply())?;
    let submission = Submission { from: tx.from, params: tx.params, recipients, body, source };
    super::accept::accept(ctx, submission).await.map_err(|refusal| refusal.reply())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_spoke_before_the_greeting_is_seen_and_one_that_waits_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut eager = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut eager, b"EHLO early\r\n").unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        // The bytes are in the socket before the greeting is written (the test waits for them).
        tokio::time::timeout(Duration::from_secs(5), tcp.readable()).await.unwrap().unwrap();
        assert!(spoke_first(&Stream::Plain(tcp)));
        let _polite = std::net::TcpStream::connect(addr).unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        assert!(!spoke_first(&Stream::Plain(tcp)));
    }
}
