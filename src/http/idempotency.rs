//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): a request sent again with the
//! same key (by the same API key) gets the first answer, and nothing is queued twice. The answer
//! is kept in the spool's index, made durable before the 202 is sent, for `api.idempotency_ttl`.
//! A request still being served when its repeat arrives makes the repeat 409; the same key
//! with a different request body is 422. A request only part of which was queued (a 429 or
//! 503 naming the `queued` messages) keeps which messages those were: its retry with the same
//! key queues only the rest, and its answer names every message. One window is left: a crash
//! after the messages' commit and before the record's (one commit, a few milliseconds) lets a
//! retry queue them again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::problem::Problem;
use crate::intake::IntakeContext;
use crate::spool::Shelf;

/// What is kept per key.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// SHA-256 of the request body, hex.
    request: String,
    /// The 202 answer; null while only part of the request is queued.
    #[serde(default)]
    answer: serde_json::Value,
    /// While only part is queued: the queue id of each message queued, by its place in the
    /// request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    queued: Vec<Option<String>>,
}

/// The request's `Idempotency-Key`, if it has one: 1 to 255 printable ASCII characters.
pub fn header(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let text = value.to_str().unwrap_or("");
    let text = text.trim().trim_matches('"');
    if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::new(400, "invalid-idempotency-key", "The Idempotency-Key header is invalid")
            .detail("1 to 255 printable ASCII characters"));
    }
    Ok(Some(text.to_string()))
}

/// A key being served now; released when dropped.
pub struct Claim {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
    request: String,
    /// Messages an earlier try of this request queued, by their place in it (empty if none).
    pub queued: Vec<Option<String>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

pub enum Lookup {
    /// The first request's answer.
    Replay(serde_json::Value),
    /// Not seen: serve it, then `remember` the answer.
    Fresh(Claim),
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Claims `key` (of API key `owner`) for a request with this body, or finds its answer.
pub fn begin(ctx: &IntakeContext, owner: &str, key: &str, body: &[u8]) -> Result<Lookup, Problem> {
    let stored_key = format!("{owner}\n{key}");
    let request: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    {
        let mut set = ctx.api_in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(stored_key.clone()) {
            return Err(Problem::new(409, "idempotency-key-in-use", "A request with this Idempotency-Key is being served")
                .detail("wait for its answer, then send again to get it"));
        }
    }
    let mut claim = Claim { set: ctx.api_in_flight.clone(), key: stored_key, request, queued: Vec::new() };
    let kept = ctx
        .spool
        .recall(Shelf::Answers, &claim.key, now())
        .map_err(|e| Problem::new(503, "unavailable", "The idempotency record could not be read").detail(e.to_string()))?;
    match kept.map(|bytes| serde_json::from_slice::<Kept>(&bytes)) {
        None => Ok(Lookup::Fresh(claim)),
        Some(Ok(kept)) if kept.request == claim.request && !kept.answer.is_null() => Ok(Lookup::Replay(kept.answer)),
        Some(Ok(kept)) if kept.request == claim.request => {
            claim.queued = kept.queued;
            Ok(Lookup::Fresh(claim))
        }
        Some(Ok(_)) => Err(Problem::new(422, "idempotency-key-reused", "This Idempotency-Key was used for another request")
            .detail("an Idempotency-Key names one request; use a new key for a new request")),
        Some(Err(e)) => Err(Problem::new(503, "unavailable", "The idempotency record is damaged").detail(e.to_string())),
    }
}

static PRUNED_HOUR: AtomicU64 = AtomicU64::new(0);
static PRUNING: AtomicBool = AtomicBool::new(false);

/// Keeps `answer` for the claimed key, durably before this returns; the first answer of each
/// hour also drops the expired ones. A failure is logged: the messages are queued either way.
pub async fn remember(ctx: &Arc<IntakeContext>, claim: &Claim, answer: &serde_json::Value) {
    keep(ctx, claim, Kept { request: claim.request.clone(), answer: answer.clone(), queued: Vec::new() }).await
}

/// Keeps which messages of the claimed request are queued (by place) when it was not all
/// queued, so that its retry queues only the rest.
pub async fn remember_partial(ctx: &Arc<IntakeContext>, claim: &Claim, queued: Vec<Option<String>>) {
    keep(ctx, claim, Kept { request: claim.request.clone(), answer: serde_json::Value::Null, queued }).await
}

async fn keep(ctx: &Arc<IntakeContext>, claim: &Claim, kept: Kept) {
    let bytes = serde_json::to_vec(&kept).unwrap_or_default();
    let expires = now() + ctx.config.api.idempotency_ttl.0.as_secs();
    let result = match ctx.spool.remember(Shelf::Answers, &claim.key, expires, &bytes) {
        Ok(durable) => durable.wait().await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "an HTTP API answer could not be kept for its Idempotency-Key; a retry would queue again");
    }
    // At most one pass over the kept answers at a time, and at most one an hour.
    let hour = now() / 3600;
    if PRUNED_HOUR.swap(hour, Ordering::AcqRel) != hour && !PRUNING.swap(true, Ordering::AcqRel) {
        let spool = ctx.spool.clone();
        tokio::task::spawn_blocking(move || {
            let _ = spool.forget_expired(Shelf::Answers, now());
            PRUNING.store(false, Ordering::Release);
        });
    }
}
