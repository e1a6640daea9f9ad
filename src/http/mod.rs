//! The HTTP injection API (`http_listeners`): hyper, HTTP/1.1, plain on loopback or TLS with
//! the intake's certificate. Requests carry `Authorization: Bearer KEY` (`keys`); answers are
//! JSON, errors RFC 9457 problem documents (`problem`). `POST /api/v1/messages` (`inject`)
//! hands each message to the one accept path and answers 202 with the queue ids only once the
//! spool has made them durable, the promise SMTP's 250 makes.

// A refusal is the rare path, made at most once per request: its size costs nothing.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod idempotency;
pub mod inject;
pub mod keys;
pub mod problem;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::intake::IntakeContext;
use crate::intake::accept::{self, Refusal, Source, Submission};
use crate::live::Live;
use crate::metrics as m;
use crate::metrics::http::PerAddress;
use crate::smtp::server::TlsInfo;
use problem::Problem;

/// Every endpoint, as `docs/openapi.json` lists them (a test holds the two in step).
/// `{id}` stands for one path segment, a queue id.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/messages"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/queue"),
    ("GET", "/api/v1/queue/summary"),
    ("GET", "/api/v1/queue/{id}"),
    ("POST", "/api/v1/queue/flush"),
    ("POST", "/api/v1/queue/requeue"),
    ("POST", "/api/v1/queue/hold"),
    ("POST", "/api/v1/queue/release"),
    ("POST", "/api/v1/queue/delete"),
    ("POST", "/api/v1/queue/bounce"),
    ("POST", "/api/v1/reload"),
];

/// The route template a path matches: itself when a route names it, `/api/v1/queue/{id}` for
/// any other single segment under the queue.
pub fn template(path: &str) -> Option<&'static str> {
    if let Some((_, known)) = ROUTES.iter().find(|(_, p)| *p == path) {
        return Some(known);
    }
    let id = path.strip_prefix("/api/v1/queue/")?;
    (!id.is_empty() && !id.contains('/')).then_some("/api/v1/queue/{id}")
}

/// The OpenAPI document, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Connections served at once per listener, and from one address (an IPv6 /64).
const MAX_CONNECTIONS: usize = 512;
const MAX_PER_ADDRESS: usize = 128;
/// A request's header must arrive within this; a whole request (its body read, its messages
/// made durable) within `REQUEST_TIMEOUT`; an idle keep-alive connection ends after that too.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body must have arrived within this (it holds its share of the memory budget).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// One listener's settings.
#[derive(Clone, Copy)]
pub struct Listener {
    pub local: SocketAddr,
    pub tls: bool,
}

/// Serves one HTTP listener until shutdown; each request reads the intake generation in force
/// (keys, limits, TLS certificate), so a reload applies to the next request.
pub async fn serve(
    listener: TcpListener,
    settings: Listener,
    intake: Arc<Live<IntakeContext>>,
    admin: Arc<crate::admin::Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = PerAddress::new(MAX_PER_ADDRESS);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(address_slot) = per_address.take(peer.ip()) else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let _ = stream.set_nodelay(true);
        let (intake, admin) = (intake.clone(), admin.clone());
        tokio::spawn(async move {
            if settings.tls {
                let Some(acceptor) = intake.get().tls.clone() else { return };
                let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else { return };
                let info = crate::intake::tls::info(tls.get_ref().1, |_| None);
                connection(TokioIo::new(tls), peer, settings.local, Some(info), intake, admin).await;
            } else {
                connection(TokioIo::new(stream), peer, settings.local, None, intake, admin).await;
            }
            drop(slot);
            drop(address_slot);
        });
    }
}

async fn connection<S>(
    io: TokioIo<S>,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    intake: Arc<Live<IntakeContext>>,
    admin: Arc<crate::admin::Daemon>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (intake, tls, admin) = (intake.clone(), tls.clone(), admin.clone());
        async move {
            let ctx = intake.get();
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, route(req, &ctx, &admin, peer, local, tls)).await;
            Ok::<_, Infallible>(answer.unwrap_or_else(|_| problem(Problem::new(503, "timeout", "The request took too long"))))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    let _ = connection.await;
}

type Answer = Response<Full<Bytes>>;

async fn route(
    req: Request<Incoming>,
    ctx: &Arc<IntakeContext>,
    admin: &crate::admin::Daemon,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
) -> Answer {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let matched = template(&path);
    let routed = matched.is_some_and(|t| ROUTES.contains(&(method.as_str(), t)));
    match (matched.unwrap_or(""), &method) {
        ("/api/v1/messages", &Method::POST) => {
            let started = Instant::now();
            let key = match authorize(&req, ctx, |s| s.inject) {
                Ok(key) => key,
                Err(p) => return problem(p),
            };
            let answer = match messages(req, ctx, &key, peer, local, tls).await {
                Ok(Answered::Fresh(accepted)) => json(StatusCode::ACCEPTED, &accepted),
                Ok(Answered::Replayed(first)) => {
                    let mut answer = json(StatusCode::ACCEPTED, &first);
                    answer.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                    answer
                }
                Err(p) => problem(p),
            };
            let status = answer.status().as_u16().to_string();
            metrics::counter!(m::API_REQUESTS, "key" => key, "status" => status).increment(1);
            metrics::histogram!(m::API_REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
            answer
        }
        ("/api/v1/openapi.json", &Method::GET) => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        (admin_route, _) if routed && admin::serves(admin_route) => {
            let started = Instant::now();
            let key = match authorize(&req, ctx, |s| s.admin) {
                Ok(key) => key,
                Err(p) => return problem(p),
            };
            let answer = admin::serve(req, admin_route, admin, &key).await;
            let status = answer.status().as_u16().to_string();
            metrics::counter!(m::API_REQUESTS, "key" => key, "status" => status).increment(1);
            metrics::histogram!(m::API_REQUEST_SECONDS).record(started.elapsed().as_secs_f64());
            answer
        }
        (known, _) if matched.is_some() => {
            let allowed: Vec<&str> = ROUTES.iter().filter(|(_, p)| *p == known).map(|(m, _)| *m).collect();
            let mut answer =
                problem(Problem::new(405, "method-not-allowed", "Method not allowed").detail(format!("{} only", allowed.join(", "))));
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                answer.headers_mut().insert(header::ALLOW, v);
            }
            answer
        }
        _ => problem(Problem::new(404, "not-found", "No such endpoint").detail(format!("{method} {path}"))),
    }
}

/// The key's name when the request carries a key with the scope `allowed` asks for.
fn authorize(req: &Request<Incoming>, ctx: &IntakeContext, allowed: impl Fn(&keys::Scopes) -> bool) -> Result<String, Problem> {
    let Some(keys) = &ctx.api_keys else { return Err(Problem::unauthorized("no API keys are configured")) };
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = presented.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))) else {
        return Err(Problem::unauthorized("send Authorization: Bearer KEY"));
    };
    let Some(key) = keys.find(token.trim()) else {
        // Counted, not logged: anyone can send these, as fast as they like.
        metrics::counter!(m::API_REQUESTS, "key" => "unknown", "status" => "401").increment(1);
        return Err(Problem::unauthorized("the key is not known"));
    };
    if !allowed(&key.scopes) {
        // A known key: counted under its name, so its owner sees the refusals too.
        metrics::counter!(m::API_REQUESTS, "key" => key.name.clone(), "status" => "403").increment(1);
        return Err(Problem::new(403, "forbidden", "The key lacks the scope for this").detail(format!("key {}", key.name)));
    }
    Ok(key.name.clone())
}

enum Answered {
    Fresh(serde_json::Value),
    /// The answer to the first request with this Idempotency-Key.
    Replayed(serde_json::Value),
}

#[derive(Serialize)]
struct Accepted {
    messages: Vec<AcceptedMessage>,
}

#[derive(Serialize)]
struct AcceptedMessage {
    queue_id: String,
    recipients: Vec<String>,
}

async fn messages(
    req: Request<Incoming>,
    ctx: &Arc<IntakeContext>,
    key: &str,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
) -> Result<Answered, Problem> {
    let idempotency_key = idempotency::header(req.headers())?;
    json_body(req.headers())?;
    // Over its rate, a key's request is refused before its body is read; one with an
    // Idempotency-Key only once it is known not to be a repeat (a repeat queues nothing).
    let over_rate = || match ctx.rates.gate(peer.ip(), Some(&accept::api_user(key))) {
        Some(reply) => {
            let mut p = Problem::new(429, "rate-limited", "Too many messages from this key").detail(reply.lines.join(" "));
            p.retry_after = Some(1);
            Err(p)
        }
        None => Ok(()),
    };
    if idempotency_key.is_none() {
        over_rate()?;
    }
    let limit = ctx.config.api.max_request_size;
    // Request bodies are held whole while they arrive: past the free share each one takes its
    // declared size (or the largest allowed) from the intake memory budget, so many clients
    // sending large requests at once get 503 instead of the daemon's memory.
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(
            Problem::new(413, "too-large", "The request is too large").detail(format!("at most {limit} octets (api.max_request_size)"))
        );
    }
    let needed = declared.unwrap_or(limit).saturating_sub(crate::intake::body::FREE_BYTES as u64) as usize;
    let _charge = match needed {
        0 => None,
        n => match ctx.body_memory.charge(n, ctx.config.limits.intake_memory) {
            Some(charge) => Some(charge),
            None => {
                let mut p =
                    Problem::new(503, "busy", "Too much mail is arriving at once").detail("limits.intake_memory is in use; try again");
                p.retry_after = Some(1);
                return Err(p);
            }
        },
    };
    let reading = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit as usize).collect()).await;
    let Ok(reading) = reading else {
        return Err(Problem::new(408, "timeout", "The request body came too slowly").detail(format!("within {} s", BODY_TIMEOUT.as_secs())));
    };
    let body = reading.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            Problem::new(413, "too-large", "The request is too large").detail(format!("at most {limit} octets (api.max_request_size)"))
        } else {
            Problem::new(400, "bad-request", "The request body could not be read").detail(e.to_string())
        }
    })?;
    let body = body.to_bytes();
    let claim = match &idempotency_key {
        Some(k) => match idempotency::begin(ctx, key, k, &body)? {
            idempotency::Lookup::Replay(first) => return Ok(Answered::Replayed(first)),
            idempotency::Lookup::Fresh(claim) => {
                over_rate()?;
                Some(claim)
            }
        },
        None => None,
    };
    let limits = inject::Limits {
        max_recipients: ctx.config.api.max_recipients,
        max_message_size: ctx.config.limits.max_message_size,
        max_total: ctx.config.api.max_request_size,
        max_recipients_per_message: ctx.config.limits.max_recipients,
        max_line: ctx.config.limits.max_line_length,
        hostname: ctx.config.hostname.0.clone(),
    };
    // Parsing and building MIME take CPU in proportion to the request: not on the async workers.
    let prepared = tokio::task::spawn_blocking(move || {
        let request: inject::MessageRequest = serde_json::from_slice(&body)
            .map_err(|e| Problem::new(400, "malformed-json", "The body is not the JSON this endpoint takes").detail(e.to_string()))?;
        inject::prepare(request, &limits)
    })
    .await
    .map_err(|e| Problem::new(503, "unavailable", "The request could not be read").detail(e.to_string()))??;
    // The accepts run in a task of their own: a client that goes away, or the request timeout,
    // cannot stop them part-way (each message is queued whole, logged, counted), and the claim
    // on the Idempotency-Key lasts until its answer is kept.
    let accepting = tokio::spawn(accept_all(ctx.clone(), key.to_string(), peer, local, tls, prepared, claim));
    accepting.await.unwrap_or_else(|e| Err(Problem::new(503, "unavailable", "The messages could not be queued").detail(e.to_string())))
}

/// Hands each message to the accept path, side by side (at most ACCEPT_AT_ONCE, so they share
/// group commits instead of waiting for one fsync each), each gated by the key's rate first.
async fn accept_all(
    ctx: Arc<IntakeContext>,
    key: String,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    prepared: Vec<inject::Prepared>,
    claim: Option<idempotency::Claim>,
) -> Result<Answered, Problem> {
    let count = prepared.len();
    let mut results: Vec<Option<Result<String, Refusal>>> = (0..count).map(|_| None).collect();
    // Messages an earlier try of this request (same Idempotency-Key, same body) queued.
    let already = claim.as_ref().map(|c| c.queued.clone()).unwrap_or_default();
    if !already.is_empty() && already.len() != count {
        return Err(Problem::new(422, "idempotency-key-reused", "This Idempotency-Key was used for another request")
            .detail("the request now makes another number of messages than when it was first sent"));
    }
    let mut recipients = Vec::with_capacity(count);
    let mut running = tokio::task::JoinSet::new();
    let mut rate_limited = None;
    // A message is counted against its sender's rate once it is queued: with a rate set, one
    // at a time, so each gate sees the ones before it.
    let at_once = if ctx.rates.limited() { 1 } else { ACCEPT_AT_ONCE };
    for (i, p) in prepared.into_iter().enumerate() {
        recipients.push(p.recipients.iter().map(|(m, _)| m.to_string()).collect::<Vec<_>>());
        if let Some(Some(id)) = already.get(i) {
            results[i] = Some(Ok(id.clone()));
            continue;
        }
        if rate_limited.is_some() {
            continue;
        }
        if running.len() >= at_once
            && let Some(Ok((done, result))) = running.join_next().await
        {
            results[done] = Some(result);
        }
        if let Some(reply) = ctx.rates.gate(peer.ip(), Some(&accept::api_user(&key))) {
            rate_limited = Some(reply.lines.join(" "));
            continue;
        }
        let (ctx, source) = (ctx.clone(), Source::Http { peer, local, key: key.clone(), tls: tls.clone() });
        running.spawn(async move {
            let mut buffer = ctx.body_buffer();
            buffer.push(p.message).await;
            let result = match buffer.finish().await {
                Ok(body) => {
                    let submission = Submission { from: p.from, params: p.params, recipients: p.recipients, body, source };
                    accept::accept(&ctx, submission).await
                }
                Err(e) => Err(Refusal::Body(e)),
            };
            (i, result)
        });
    }
    while let Some(joined) = running.join_next().await {
        if let Ok((done, result)) = joined {
            results[done] = Some(result);
        }
    }
    let queued: Vec<Option<String>> = results.iter().map(|r| r.as_ref().and_then(|r| r.as_ref().ok()).cloned()).collect();
    let answer = answer_of(results, recipients, rate_limited);
    if let (Err(_), Some(claim)) = (&answer, &claim)
        && queued.iter().any(Option::is_some)
    {
        idempotency::remember_partial(&ctx, claim, queued).await;
    }
    let answer = answer?;
    if let Some(claim) = &claim {
        idempotency::remember(&ctx, claim, &answer).await;
    }
    Ok(Answered::Fresh(answer))
}

/// The 202 answer when every message is queued, else the problem naming those that are.
fn answer_of(
    results: Vec<Option<Result<String, Refusal>>>,
    recipients: Vec<Vec<String>>,
    rate_limited: Option<String>,
) -> Result<serde_json::Value, Problem> {
    let count = results.len();
    let mut accepted = Vec::with_capacity(count);
    let mut first_refusal = None;
    let mut unsent = false;
    for (result, recipients) in results.into_iter().zip(recipients) {
        match result {
            Some(Ok(queue_id)) => accepted.push(AcceptedMessage { queue_id, recipients }),
            Some(Err(refusal)) => first_refusal = first_refusal.or(Some(refusal)),
            None => unsent = true,
        }
    }
    if let Some(refusal) = first_refusal {
        return Err(refused(refusal, &accepted));
    }
    if let Some(why) = rate_limited.filter(|_| unsent) {
        let mut p = Problem::new(429, "rate-limited", "Too many messages from this key").detail(why);
        p.retry_after = Some(1);
        p.queued = accepted.iter().map(|q| q.queue_id.clone()).collect();
        return Err(p);
    }
    if unsent {
        return Err(refused(Refusal::Spool(crate::spool::SpoolError::Io("an accept task failed".into())), &accepted));
    }
    Ok(serde_json::to_value(Accepted { messages: accepted }).unwrap_or_default())
}

/// Messages of one request in the accept path at once.
const ACCEPT_AT_ONCE: usize = 32;

/// The problem for a message the accept path refused, naming those already queued.
fn refused(refusal: Refusal, queued: &[AcceptedMessage]) -> Problem {
    let mut p = match &refusal {
        Refusal::TooManyHops => Problem::invalid("/raw", refusal.to_string()),
        Refusal::Body(crate::intake::body::BodyError::HeaderTooBig { .. }) => Problem::invalid("/raw", refusal.to_string()),
        _ => {
            let mut p = Problem::new(503, "unavailable", "The message could not be queued now").detail(refusal.to_string());
            p.retry_after = Some(5);
            p
        }
    };
    p.queued = queued.iter().map(|q| q.queue_id.clone()).collect();
    p
}

/// A request body must be declared JSON (415 otherwise).
fn json_body(headers: &hyper::HeaderMap) -> Result<(), Problem> {
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match declared.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        true => Ok(()),
        false => Err(Problem::new(415, "unsupported-media-type", "The body must be JSON").detail("Content-Type: application/json")),
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Answer {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn problem(p: Problem) -> Answer {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, &p);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if let Some(seconds) = p.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[test]
    fn the_documented_request_fields_are_the_ones_the_endpoint_takes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let properties = doc["components"]["schemas"]["MessageRequest"]["properties"].as_object().unwrap();
        for name in properties.keys() {
            let err = serde_json::from_value::<inject::MessageRequest>(serde_json::json!({ name.as_str(): null }))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.contains("unknown field"), "{name} is documented but not taken: {err}");
        }
        // And a field the document lacks is refused, so the check above means something.
        let err = serde_json::from_value::<inject::MessageRequest>(serde_json::json!({"recipients": []})).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let fields = err.split("expected one of ").nth(1).unwrap_or_default();
        let taken = fields.split(", ").map(|f| f.trim_matches('`').to_string()).collect::<Vec<_>>();
        let mut documented: Vec<String> = properties.keys().cloned().collect();
        let mut taken_sorted = taken.clone();
        documented.sort();
        taken_sorted.sort();
        assert_eq!(documented, taken_sorted, "every field the endpoint takes is documented");
    }
}
