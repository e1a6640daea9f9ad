//! The one accept path: a message handed in, over SMTP, on the sendmail socket or through the
//! HTTP API, is checked, stamped with its trace fields, signed, stored, and answered only once the
//! spool has made it durable. (The runner's reports are stored with the change that caused
//! them, in one commit; their envelope is `Envelope::report`.)

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::IntakeContext;
use super::body::{Body, BodyError};
use crate::dkim::{SignError, Signed, Signer};
use crate::message::trace::{self, Trace};
use crate::metrics as m;
use crate::smtp::address::{MailParams, Mailbox, RcptParams};
use crate::smtp::reply::{Enhanced, Reply, codes};
use crate::smtp::server::TlsInfo;
use crate::spool::{Envelope, Identity, RecipientRecord, SpoolError};

/// Bodies above this size are written from a blocking thread, not the async worker (a body
/// with a scratch file always is: its copy reads the file).
const BLOCKING_WRITE_THRESHOLD: usize = 256 * 1024;

/// The user name an API key counts as (rates, priorities, signing rules).
pub fn api_user(key: &str) -> String {
    format!("api-key:{key}")
}

/// How a message came in.
pub enum Source {
    /// Over SMTP on one of our listeners.
    Smtp {
        /// The session's id in the mail log.
        session: String,
        peer: SocketAddr,
        local: SocketAddr,
        helo: String,
        /// The WITH protocol of the Received field (ESMTPSA, ...).
        protocol: &'static str,
        tls: Option<TlsInfo>,
        /// The authenticated user.
        user: Option<String>,
        /// The client's address is in `trusted_networks`.
        trusted: bool,
        /// Submission fix-ups apply (submission listeners and authenticated clients).
        fix_ups: bool,
        /// The listener's priority for mail that names none.
        default_priority: i8,
    },
    /// On the sendmail socket, from a local user (the header work of `sendmail -t` is done).
    Local { user: String, uid: u32 },
    /// From the HTTP API, sent with this key (its name). The key is the user `api-key:NAME` for
    /// per-user rates, priorities and signing rules, never one of the SMTP or local users.
    Http { peer: SocketAddr, local: SocketAddr, key: String, tls: Option<TlsInfo> },
}

/// One message to accept.
pub struct Submission {
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub recipients: Vec<(Mailbox, RcptParams)>,
    /// The message as received (CRLF line ends, unstuffed), without our trace fields.
    pub body: Body,
    pub source: Source,
}

/// Why a message was not accepted.
#[derive(Debug)]
pub enum Refusal {
    /// More Received fields than `limits.max_hops`: a loop.
    TooManyHops,
    /// The spool did not make it durable; nothing was kept.
    Spool(SpoolError),
    /// The body could not be taken in (its header section, memory, its scratch file).
    Body(BodyError),
    /// A DKIM signature the config asks for could not be made.
    Signing(SignError),
}

impl Refusal {
    /// The SMTP reply for it.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::TooManyHops => codes::too_many_hops(),
            Refusal::Spool(SpoolError::Poisoned) => codes::spool_unavailable(),
            Refusal::Spool(_) => codes::spool_failed(),
            Refusal::Body(BodyError::HeaderTooBig { limit }) => codes::header_too_big(*limit),
            Refusal::Body(BodyError::OverBudget) => codes::intake_busy(),
            Refusal::Body(BodyError::Scratch(SpoolError::Poisoned)) => codes::spool_unavailable(),
            Refusal::Body(BodyError::Scratch(_)) => codes::spool_failed(),
            // Unsigned mail from a domain that signs fails DMARC: better the client retries.
            Refusal::Signing(_) => Reply::new(451, Enhanced(4, 3, 0), "the message could not be signed (DKIM); try again later"),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooManyHops => f.write_str("too many Received fields (mail loop?)"),
            Refusal::Spool(e) => write!(f, "the queue cannot take mail now: {e}"),
            Refusal::Body(BodyError::HeaderTooBig { limit }) => write!(f, "the header section exceeds {limit} bytes"),
            Refusal::Body(BodyError::OverBudget) => f.write_str("too much mail arriving at once (limits.intake_memory), try again later"),
            Refusal::Body(BodyError::Scratch(e)) => write!(f, "the message could not be written to the spool's incoming/: {e}"),
            Refusal::Signing(e) => e.fmt(f),
        }
    }
}

impl Source {
    /// The session's id in the mail log; `local` for the sendmail socket and the maildrop.
    fn session(&self) -> &str {
        match self {
            Source::Smtp { session, .. } => session,
            Source::Local { .. } => "local",
            Source::Http { .. } => "http",
        }
    }

    fn client_ip(&self) -> IpAddr {
        match self {
            Source::Smtp { peer, .. } | Source::Http { peer, .. } => peer.ip(),
            Source::Local { .. } => std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    fn identity(&self) -> Identity {
        match self {
            Source::Smtp { user: Some(user), .. } => Identity::Authenticated(user.clone()),
            Source::Smtp { tls: Some(TlsInfo { certificate_identity: Some(name), .. }), .. } => Identity::Certificate(name.clone()),
            Source::Smtp { trusted: true, .. } => Identity::TrustedNetwork,
            Source::Smtp { .. } => Identity::Anonymous,
            Source::Local { user, .. } => Identity::Local(user.clone()),
            Source::Http { key, .. } => Identity::ApiKey(key.clone()),
        }
    }

    /// Who the per-user rate limits and priorities count: the authenticated user, else the
    /// client certificate's identity; the local user; the API key.
    fn user(&self) -> Option<&str> {
        match self {
            Source::Smtp { user: Some(user), .. } => Some(user),
            Source::Smtp { tls, .. } => tls.as_ref().and_then(|t| t.certificate_identity.as_deref()),
            Source::Local { user, .. } => Some(user),
            Source::Http { .. } => None,
        }
    }

    /// `user()`, owned, with an API key as `api-key:NAME`.
    fn user_name(&self) -> Option<String> {
        match self {
            Source::Http { key, .. } => Some(api_user(key)),
            other => other.user().map(str::to_string),
        }
    }
}

/// Checks, stamps and stores one message; the queue id only once it is durable.
pub async fn accept(ctx: &Arc<IntakeContext>, mut sub: Submission) -> Result<String, Refusal> {
    let config = &ctx.config;
    let hostname = &config.hostname.0;
    // The header section is all in `head` (the body buffer keeps it in memory whole).
    let facts = trace::scan_headers(&sub.body.head);
    if facts.received >= config.limits.max_hops {
        return Err(Refusal::TooManyHops);
    }
    if let Source::Smtp { fix_ups: true, .. } | Source::Http { .. } = sub.source
        && let Some(fixed) = crate::message::submission::fix_recipient_headers(&sub.body.head)
    {
        sub.body.head = fixed;
    }
    let queue_id = ctx.spool.new_queue_id();
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = since_epoch.as_secs();
    let single = match sub.recipients.as_slice() {
        [(only, _)] => Some(only),
        _ => None,
    };
    let prefix = match &sub.source {
        Source::Smtp { peer, helo, protocol, tls, user, .. } => trace::prefix_fields(
            &Trace {
                helo,
                client_ip: peer.ip(),
                hostname,
                protocol,
                queue_id: &queue_id,
                single_recipient: single,
                unix_time: now,
                tls: tls.as_ref(),
                identity: user.as_deref().filter(|_| config.auth.received_identity),
            },
            &facts,
        ),
        Source::Local { user, uid } => trace::local_prefix(hostname, &queue_id, user, *uid, single, now, &facts),
        Source::Http { peer, tls, key, .. } => trace::prefix_fields(
            &Trace {
                helo: "api",
                client_ip: peer.ip(),
                hostname,
                protocol: if tls.is_some() { "HTTPS" } else { "HTTP" },
                queue_id: &queue_id,
                single_recipient: single,
                unix_time: now,
                tls: tls.as_ref(),
                identity: Some(&format!("api-key={key}")),
            },
            &facts,
        ),
    };
    let user = sub.source.user_name();
    let (signed, body) = match &ctx.signer {
        Some(signer) => sign(signer, &prefix, sub.body, user.as_deref()).await?,
        None => (None, sub.body),
    };
    sub.body = body;
    let signatures = signed.as_ref().map_or("", |s| s.fields.as_str());
    let size = (signatures.len() + prefix.len()) as u64 + sub.body.len();
    let identity = sub.source.identity();
    let client_ip = sub.source.client_ip();
    let (helo, listener, tls_text, default_priority) = match &sub.source {
        Source::Smtp { helo, local, tls, default_priority, .. } => {
            let tls = tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher)).unwrap_or_else(|| "none".into());
            (helo.clone(), *local, tls, *default_priority)
        }
        Source::Local { .. } => ("localhost".to_string(), SocketAddr::new(client_ip, 0), "none".to_string(), 0),
        Source::Http { local, tls, .. } => {
            let tls = tls.as_ref().map(|t| format!("{} {}", t.version, t.cipher)).unwrap_or_else(|| "none".into());
            ("api".to_string(), *local, tls, 0)
        }
    };
    // MT-PRIORITY as given; else the (authenticated or local) user's default; else the listener's.
    let login = match &sub.source {
        Source::Smtp { user, .. } => user.as_deref(),
        Source::Local { user, .. } => Some(user.as_str()),
        Source::Http { .. } => user.as_deref(),
    };
    let user_priority = login.and_then(|u| config.auth.user_priorities.get(u).copied());
    sub.params.priority = sub.params.priority.or(user_priority).or(Some(default_priority).filter(|&p| p != 0));
    // RFC 8689 5: the header field is ignored when REQUIRETLS was given.
    sub.params.tls_optional = facts.tls_required_no && !sub.params.requiretls;
    let message_id = facts.message_id.unwrap_or_else(|| format!("<{queue_id}@{hostname}>"));
    let envelope = Envelope {
        queue_id: queue_id.clone(),
        from: sub.from,
        params: sub.params,
        recipients: sub.recipients.into_iter().map(|(mailbox, params)| RecipientRecord::queued(mailbox, params, now)).collect(),
        client_ip,
        helo,
        identity: identity.clone(),
        listener,
        arrival: now,
        arrival_ms: Some(since_epoch.as_millis() as u64),
        body: None,
        held: false,
        message_id: Some(message_id.clone()),
    };
    let from = format!("<{}>", envelope.from.as_ref().map(|m| m.to_string()).unwrap_or_default());
    let record = ctx.accounting.enabled().then(|| {
        let mut r = crate::accounting::message_record(crate::accounting::Event::Received, &envelope);
        r.size = Some(size);
        r.session = Some(sub.source.session().to_string());
        r.tls = Some(tls_text.clone());
        if let Source::Local { .. } = sub.source {
            r.listener = Some("local".into());
        }
        r
    });
    let session = sub.source.session().to_string();
    let recipients = envelope.recipients.len();
    let started = Instant::now();
    let dkim = signed.as_ref().map_or_else(|| "none".to_string(), Signed::summary);
    let stored = if sub.body.tail.is_some() || sub.body.head.len() > BLOCKING_WRITE_THRESHOLD {
        let spool = ctx.spool.clone();
        let body = sub.body;
        let signatures = signatures.to_string();
        tokio::task::spawn_blocking(move || {
            let head = [signatures.as_bytes(), prefix.as_bytes(), &body.head];
            match &body.tail {
                Some(tail) => spool.store_with_tail(envelope, &head, tail),
                None => spool.store(envelope, &head),
            }
        })
        .await
        .unwrap_or_else(|e| Err(SpoolError::Io(e.to_string())))
    } else {
        ctx.spool.store(envelope, &[signatures.as_bytes(), prefix.as_bytes(), &sub.body.head])
    };
    let durable = match stored {
        Ok(d) => d.wait().await,
        Err(e) => Err(e),
    };
    if let Err(e) = durable {
        tracing::error!(queue_id = %queue_id, error = %e, "message not stored");
        return Err(Refusal::Spool(e));
    }
    // Before the runner is woken, so `received` is never written after the message's delivery.
    if let Some(record) = record {
        ctx.accounting.emit(record);
    }
    ctx.stored.notify_one();
    ctx.rates.count(client_ip, user.as_deref());
    metrics::histogram!(m::COMMIT_LATENCY).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::MESSAGES_ACCEPTED).increment(1);
    metrics::counter!(m::BYTES_ACCEPTED).increment(size);
    for made in signed.iter().flat_map(|s| &s.made) {
        metrics::counter!(m::DKIM_SIGNATURES, "domain" => made.domain.clone(), "algorithm" => made.algorithm).increment(1);
    }
    // The traceability line (spamops draft 3.1): queue id, identity, client, TLS, Message-ID.
    // What the client chose is quoted and escaped by the log's format (crate::log), so no
    // value can end the line or pose as another field.
    tracing::info!(
        queue_id = %queue_id,
        session = session.as_str(),
        from = from.as_str(),
        recipients,
        size,
        client = %client_ip,
        identity = %identity,
        tls = tls_text.as_str(),
        message_id = message_id.as_str(),
        dkim = dkim.as_str(),
        "accepted"
    );
    Ok(queue_id)
}

/// Bytes of a spooled body tail read per piece while signing.
const SIGN_READ: usize = 256 * 1024;

/// Adds the DKIM signatures the config asks for, on a blocking thread (an RSA signature takes
/// about a millisecond of CPU); the body comes back with them. The header section is all in
/// `head`, the rest maybe in the scratch file.
async fn sign(signer: &Arc<Signer>, prefix: &str, body: Body, user: Option<&str>) -> Result<(Option<Signed>, Body), Refusal> {
    let (_, body_start) = crate::message::submission::header_fields(&body.head);
    let mut section = Vec::with_capacity(prefix.len() + body_start);
    section.extend_from_slice(prefix.as_bytes());
    section.extend_from_slice(&body.head[..body_start]);
    let plan = signer.plan(&section, user);
    if plan.is_empty() {
        return Ok((None, body));
    }
    if body.tail.is_none() && signer.is_quick(&plan, prefix.len() + body.head.len()) {
        // Tens of microseconds: less than handing the work to another thread and back costs.
        let signed = signer.sign(&plan, |push| {
            push(prefix.as_bytes());
            push(&body.head);
            Ok(())
        });
        return match signed {
            Ok(signed) => Ok((Some(signed), body)),
            Err(e) => Err(signing_failed(e)),
        };
    }
    let (signer, prefix) = (signer.clone(), prefix.to_string());
    let (result, body) = tokio::task::spawn_blocking(move || {
        let result = signer.sign(&plan, |push| {
            push(prefix.as_bytes());
            push(&body.head);
            if let Some(tail) = &body.tail {
                let mut buf = vec![0; SIGN_READ.min(tail.len() as usize)];
                let mut at = 0;
                while at < tail.len() {
                    let n = tail.read_at(&mut buf, at)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    push(&buf[..n]);
                    at += n as u64;
                }
            }
            Ok(())
        });
        (result, body)
    })
    .await
    .map_err(|e| Refusal::Signing(SignError::Sign(e.to_string())))?;
    match result {
        Ok(signed) => Ok((Some(signed), body)),
        Err(e) => Err(signing_failed(e)),
    }
}

fn signing_failed(e: SignError) -> Refusal {
    metrics::counter!(m::DKIM_FAILURES).increment(1);
    tracing::error!(error = %e, "DKIM signing failed; the message is refused with 451");
    Refusal::Signing(e)
}
