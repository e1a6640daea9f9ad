//! The local submission socket behind `sluice sendmail`. Any local user may connect; the
//! kernel tells us who (SO_PEERCRED), and that user's identity (user@hostname) is the return
//! path unless the user is in `sendmail.trusted_users` and asked for another with `-f`. The
//! message gets the section-5 header treatment (see `message::extract`) and is stored like any
//! other: the answer comes once it is durable.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::IntakeContext;
use super::accept::{Refusal, Source, Submission};
use super::body::{Body, BodyError};
use crate::live::Live;
use crate::message::extract as headers;
use crate::sendmail::{EX_DATAERR, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE, Request, Response};
use crate::smtp::address::{self, Mailbox};

pub async fn serve(listener: UnixListener, intake: Arc<Live<IntakeContext>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let ctx = intake.get();
        tokio::spawn(async move { handle(stream, ctx).await });
    }
}

/// The login name of `uid`, from the password database.
fn refused(exit: u8, text: impl Into<String>) -> Response {
    Response::Refused { exit, text: text.into() }
}

async fn handle(stream: UnixStream, ctx: Arc<IntakeContext>) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let response = match read_request(&mut reader, &ctx).await {
        Ok((request, message)) => accept(&ctx, uid, request, message).await,
        Err(r) => r,
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_default();
    line.push(b'\n');
    let _ = reader.into_inner().write_all(&line).await;
}

async fn read_request(reader: &mut BufReader<UnixStream>, ctx: &IntakeContext) -> Result<(Request, Body), Response> {
    let mut head = Vec::new();
    let n = (&mut *reader).take(64 * 1024).read_until(b'\n', &mut head).await.map_err(|e| refused(EX_SOFTWARE, e.to_string()))?;
    let request: Request = serde_json::from_slice(&head[..n]).map_err(|e| refused(EX_SOFTWARE, format!("bad request: {e}")))?;
    if request.size as u64 > ctx.config.limits.max_message_size {
        return Err(refused(EX_DATAERR, format!("message too big (limit {} bytes)", ctx.config.limits.max_message_size)));
    }
    // In pieces, into a body buffer: a large message goes to the spool as it comes.
    let mut buffer = ctx.body_buffer();
    let mut left = request.size;
    while left > 0 {
        let mut piece = vec![0; left.min(64 * 1024)];
        reader.read_exact(&mut piece).await.map_err(|e| refused(EX_SOFTWARE, e.to_string()))?;
        left -= piece.len();
        buffer.push(piece).await;
    }
    let body = buffer.finish().await.map_err(|e| refusal_response(Refusal::Body(e)))?;
    Ok((request, body))
}

/// A whole message already in memory (a maildrop file) as a body.
pub(super) async fn body_of(ctx: &IntakeContext, message: Vec<u8>) -> Result<Body, Response> {
    let mut buffer = ctx.body_buffer();
    buffer.push(message).await;
    buffer.finish().await.map_err(|e| refusal_response(Refusal::Body(e)))
}

/// The exit code sendmail gives its caller: temporary where trying again can succeed.
fn refusal_response(refusal: Refusal) -> Response {
    let exit = match &refusal {
        Refusal::Spool(_) | Refusal::Signing(_) | Refusal::Body(BodyError::OverBudget | BodyError::Scratch(_)) => EX_TEMPFAIL,
        Refusal::TooManyHops | Refusal::Body(BodyError::HeaderTooBig { .. }) => EX_DATAERR,
    };
    refused(exit, refusal.to_string())
}

pub(super) async fn accept(ctx: &Arc<IntakeContext>, uid: u32, request: Request, mut body: Body) -> Response {
    let config = &ctx.config;
    let user = crate::sys::user_name(uid).unwrap_or_else(|| format!("uid{uid}"));
    let hostname = &config.hostname.0;
    let own = format!("{user}@{hostname}");
    let trusted = config.sendmail.trusted_users.contains(&user);
    // The return path: the user's own identity, unless a trusted user asked for another.
    let return_path = match request.from.as_deref().map(str::trim) {
        Some("" | "<>") if trusted => None,
        Some(f) if trusted => Some(f.trim_start_matches('<').trim_end_matches('>').to_string()),
        _ => Some(own.clone()),
    };
    let from = match return_path.as_deref().map(|p| address::parse_mailbox(p, true)) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => return refused(EX_DATAERR, format!("bad return path: {}", e.text())),
    };
    if request.from.is_some() && !trusted {
        tracing::info!(user = user.as_str(), "sendmail -f ignored: the user is not in sendmail.trusted_users");
    }
    // The header section is all in `head` (the body buffer keeps it in memory whole).
    let prepared = headers::prepare(&body.head, request.extract, &own, request.full_name.as_deref());
    let mut recipients: Vec<Mailbox> = Vec::new();
    for text in request.recipients.iter().chain(&prepared.recipients) {
        // A bare local name is the local user at our host, as sendmail has it.
        let text = if text.contains('@') { text.clone() } else { format!("{text}@{hostname}") };
        match address::parse_mailbox(text.trim_start_matches('<').trim_end_matches('>'), true) {
            Ok(m) if !recipients.contains(&m) => recipients.push(m),
            Ok(_) => {}
            Err(e) => return refused(EX_DATAERR, format!("bad recipient {text}: {}", e.text())),
        }
    }
    if recipients.is_empty() {
        return refused(EX_USAGE, "no recipients");
    }
    if recipients.len() > config.limits.max_recipients {
        return refused(EX_DATAERR, format!("too many recipients (limit {})", config.limits.max_recipients));
    }
    let loopback = std::net::Ipv4Addr::LOCALHOST.into();
    if let Some(reply) = ctx.rates.gate(loopback, Some(&user)) {
        return refused(EX_TEMPFAIL, reply.to_string());
    }
    let source = Source::Local { user: user.clone(), uid };
    let recipients = recipients.into_iter().map(|m| (m, Default::default())).collect();
    body.head = prepared.message;
    let submission = Submission { from, params: Default::default(), recipients, body, source };
    match super::accept::accept(ctx, submission).await {
        Ok(queue_id) => Response::Queued(queue_id),
        Err(refusal) => refusal_response(refusal),
    }
}
