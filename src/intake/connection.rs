//! One intake connection: moves bytes between the socket and the sans-IO session, and turns
//! finished transactions into durable spool entries before their 250.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::IntakeContext;
use super::trace::{self, Trace};
use crate::metrics as m;
use crate::smtp::reply::{Enhanced, Reply, codes};
use crate::smtp::server::{ClientInfo, Event, Session, Transaction, Waiting};
use crate::spool::{Envelope, Health, Identity, RecipientRecord, RecipientState, SpoolError};

/// Bodies above this size are written from a blocking thread, not the async worker.
const BLOCKING_WRITE_THRESHOLD: usize = 256 * 1024;
const READ_BUFFER: usize = 64 * 1024;

pub(super) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<IntakeContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let ip = peer.ip();
    let trusted = ctx.config.is_trusted(ip);
    let mut session = Session::new(
        ctx.session.clone(),
        ClientInfo {
            ip,
            relay_allowed: trusted,
        },
    );
    let mut out = Vec::with_capacity(4096);
    if ctx.spool.health() == Health::Failed {
        session.close_with(codes::spool_unavailable(), &mut out);
    } else {
        session.greeting(&mut out);
    }
    let mut buf = vec![0u8; READ_BUFFER];
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
            r = tokio::time::timeout(limit, stream.read(&mut buf)) => r,
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
            Health::Ok => None,
            Health::LowSpace => Some(codes::disk_full()),
            Health::Failed => Some(codes::spool_unavailable()),
        });
        loop {
            match session.poll(&mut out) {
                Event::NeedInput | Event::Close => break,
                Event::Message(tx) => {
                    let result = accept(&ctx, tx, peer, local, trusted).await;
                    session.message_stored(result.as_deref().map_err(Clone::clone), &mut out);
                }
            }
        }
        for reason in session.take_refusals() {
            metrics::counter!(m::MESSAGES_REJECTED, "reason" => reason).increment(1);
        }
    }
}

/// Checks, stamps and stores one message; `Ok(queue_id)` only once it is durable.
async fn accept(
    ctx: &Arc<IntakeContext>,
    tx: Transaction,
    peer: SocketAddr,
    local: SocketAddr,
    trusted: bool,
) -> Result<String, Reply> {
    let facts = trace::scan_headers(&tx.body);
    if facts.received >= ctx.config.limits.max_hops {
        return Err(codes::too_many_hops());
    }
    let queue_id = ctx.spool.new_queue_id();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let protocol = match (tx.esmtp, tx.params.smtputf8) {
        (false, _) => "SMTP",
        (true, false) => "ESMTP",
        (true, true) => "UTF8SMTP",
    };
    let single = match tx.recipients.as_slice() {
        [only] => Some(&only.mailbox),
        _ => None,
    };
    let prefix = trace::prefix_fields(
        &Trace {
            helo: &tx.helo,
            client_ip: peer.ip(),
            hostname: &ctx.config.hostname.0,
            protocol,
            queue_id: &queue_id,
            single_recipient: single,
            unix_time: now,
        },
        &facts,
    );
    let size = prefix.len() + tx.body.len();
    let envelope = Envelope {
        queue_id: queue_id.clone(),
        from: tx.from,
        params: tx.params,
        recipients: tx
            .recipients
            .into_iter()
            .map(|r| RecipientRecord {
                mailbox: r.mailbox,
                params: r.params,
                state: RecipientState::Queued,
                attempts: 0,
                last_reply: None,
                next_attempt: Some(now),
            })
            .collect(),
        client_ip: peer.ip(),
        helo: tx.helo,
        identity: if trusted {
            Identity::TrustedNetwork
        } else {
            Identity::Anonymous
        },
        listener: local,
        arrival: now,
        body: None,
    };
    let log = LogFields {
        from: envelope
            .from
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        recipients: envelope.recipients.len(),
        identity: envelope.identity.clone(),
        message_id: facts
            .message_id
            .unwrap_or_else(|| format!("<{queue_id}@{}>", ctx.config.hostname.0)),
    };
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
    metrics::histogram!(m::COMMIT_LATENCY).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::MESSAGES_ACCEPTED).increment(1);
    metrics::counter!(m::BYTES_ACCEPTED).increment(size as u64);
    tracing::info!(
        queue_id = %queue_id,
        from = %log.from,
        recipients = log.recipients,
        size,
        client = %peer.ip(),
        identity = ?log.identity,
        message_id = %log.message_id,
        "accepted"
    );
    Ok(queue_id)
}

struct LogFields {
    from: String,
    recipients: usize,
    identity: Identity,
    message_id: String,
}
