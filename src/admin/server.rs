//! The daemon's side of the admin socket: reads one request, runs its handler, answers.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::protocol::{Request, Response, Selection};
use super::summary::from_spool;
use super::{DestinationSummary, list, show};
use crate::config::Config;
use crate::queue::runner::Runner;
use crate::spool::{Envelope, RecipientState, Spool};

/// Serves the admin socket until shutdown: one task per connection, one request each.
pub async fn serve(
    listener: UnixListener,
    spool: Arc<dyn Spool>,
    config: Arc<Config>,
    runner: Option<Arc<Runner>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (spool, config, runner) = (spool.clone(), config.clone(), runner.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let operator = reader.get_ref().peer_cred().ok().map(|c| c.uid());
            let response = match serde_json::from_str::<Request>(line.trim()) {
                Ok(request) => handle(request, &Handlers { spool, config, runner, operator }).await,
                Err(e) => Response::Error(format!("bad request: {e}")),
            };
            let bytes = serde_json::to_vec(&response).unwrap_or_default();
            let _ = reader.into_inner().write_all(&bytes).await;
        });
    }
}

/// What the handlers work with.
struct Handlers {
    spool: Arc<dyn Spool>,
    config: Arc<Config>,
    /// None while delivery is paused.
    runner: Option<Arc<Runner>>,
    /// The uid of the operator asking (SO_PEERCRED), for the log.
    operator: Option<u32>,
}

impl Handlers {
    fn operator(&self) -> String {
        self.operator.map(|uid| crate::sys::user_name(uid).unwrap_or_else(|| format!("uid{uid}"))).unwrap_or_else(|| "unknown".into())
    }
}

async fn handle(request: Request, h: &Handlers) -> Response {
    match request {
        Request::QueueList => queue_list(h).await,
        Request::QueueSummary => queue_summary(h).await,
        Request::QueueShow { id, body } => queue_show(h, id, body).await,
        Request::QueueFlush(selection) => queue_flush(h, selection).await,
        Request::QueueDelete { selection, dry_run } => queue_delete(h, selection, dry_run).await,
        Request::QueueHold { selection, held } => queue_hold(h, selection, held).await,
        Request::QueueBounce { selection, status, reason } => queue_bounce(h, selection, &status, reason).await,
    }
}

/// Reads the spool on a blocking thread (sled reads block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(e.to_string()))
}

async fn queue_list(h: &Handlers) -> Response {
    let spool = h.spool.clone();
    match blocking(move || list(spool.as_ref())).await {
        Ok(entries) => Response::Queue(entries),
        Err(e) => Response::Error(e),
    }
}

async fn queue_summary(h: &Handlers) -> Response {
    let (spool, config) = (h.spool.clone(), h.config.clone());
    let delivery = h.runner.as_ref().map(|r| r.delivery());
    let rows: Result<Vec<DestinationSummary>, String> = blocking(move || from_spool(spool.as_ref(), &config, delivery.as_deref())).await;
    match rows {
        Ok(rows) => Response::Summary(rows),
        Err(e) => Response::Error(e),
    }
}

/// The queued messages a selection names, and the recipient domains they have queued; the
/// first unknown id, if one is named.
fn select(envelopes: &[Envelope], selection: &Selection) -> Result<(Vec<String>, Vec<String>), String> {
    if let Some(missing) = selection.ids.iter().find(|id| !envelopes.iter().any(|e| &&e.queue_id == id)) {
        return Err(missing.clone());
    }
    let wanted = selection.domain.as_deref().map(str::to_ascii_lowercase);
    let mut ids = Vec::new();
    let mut domains = Vec::new();
    for e in envelopes {
        let queued: Vec<String> =
            e.recipients.iter().filter(|r| r.state == RecipientState::Queued).map(|r| r.mailbox.domain.to_ascii_lowercase()).collect();
        let named = selection.all || selection.ids.contains(&e.queue_id) || wanted.as_ref().is_some_and(|d| queued.contains(d));
        if named && !queued.is_empty() {
            ids.push(e.queue_id.clone());
            domains.extend(queued.into_iter().filter(|d| wanted.as_ref().is_none_or(|w| w == d)));
        }
    }
    domains.extend(wanted);
    domains.sort();
    domains.dedup();
    Ok((ids, domains))
}

/// The selection's queued messages and their domains, or the answer that ends the request.
async fn selected(h: &Handlers, selection: &Selection) -> Result<(Vec<String>, Vec<String>), Response> {
    let spool = h.spool.clone();
    let envelopes = blocking(move || spool.list().map_err(|e| e.to_string())).await.map_err(Response::Error)?;
    select(&envelopes, selection).map_err(Response::NotFound)
}

async fn queue_delete(h: &Handlers, selection: Selection, dry_run: bool) -> Response {
    let (ids, _) = match selected(h, &selection).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let messages = ids.len();
    if !dry_run {
        let result = match &h.runner {
            Some(runner) => runner.delete(ids.clone()).await,
            // Delivery is paused: nothing is in flight, the spool is the daemon's alone.
            None => match h.spool.apply(crate::spool::Changes { remove: ids.clone(), ..Default::default() }) {
                Ok(durable) => durable.wait().await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            return Response::Error(format!("deleting failed, nothing was removed: {e}"));
        }
    }
    tracing::info!(operator = %h.operator(), messages, dry_run, ids = ?ids, "queue delete");
    Response::Done { messages, ids }
}

async fn queue_hold(h: &Handlers, selection: Selection, held: bool) -> Response {
    let Some(runner) = &h.runner else {
        return Response::Error("delivery is paused (delivery.paused): nothing is dispatched to hold".into());
    };
    let (ids, _) = match selected(h, &selection).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    if let Err(e) = runner.hold(ids.clone(), held).await {
        return Response::Error(format!("holding failed: {e}"));
    }
    tracing::info!(operator = %h.operator(), messages = ids.len(), held, ids = ?ids, "queue hold");
    Response::Done { messages: ids.len(), ids }
}

/// `5.x.y` with x and y below 1000, as RFC 3463 writes a permanent status.
fn permanent_status(text: &str) -> Option<crate::smtp::reply::Enhanced> {
    let mut parts = text.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && class == 5 && subject < 1000 && detail < 1000)
        .then_some(crate::smtp::reply::Enhanced(class, subject, detail))
}

async fn queue_bounce(h: &Handlers, selection: Selection, status: &str, reason: String) -> Response {
    let Some(runner) = &h.runner else { return Response::Error("delivery is paused (delivery.paused): bounces would not be sent".into()) };
    let Some(enhanced) = permanent_status(status) else {
        return Response::Error(format!("{status:?} is not a permanent status such as 5.0.0"));
    };
    let (ids, _) = match selected(h, &selection).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let operator = h.operator();
    let text: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let reply = crate::smtp::reply::Reply::new(550, enhanced, format!("{text} (bounced by {operator})"));
    if let Err(e) = runner.bounce(ids.clone(), reply).await {
        return Response::Error(format!("bouncing failed: {e}"));
    }
    tracing::info!(operator = %operator, messages = ids.len(), status, ids = ?ids, "queue bounce");
    Response::Done { messages: ids.len(), ids }
}

async fn queue_flush(h: &Handlers, selection: Selection) -> Response {
    let Some(runner) = &h.runner else { return Response::Error("delivery is paused (delivery.paused): nothing is sent".into()) };
    let (ids, domains) = match selected(h, &selection).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let messages = ids.len();
    runner.flush(ids.clone(), &domains);
    tracing::info!(operator = %h.operator(), messages, domains = ?domains, "queue flush");
    Response::Done { messages, ids }
}

async fn queue_show(h: &Handlers, id: String, whole: bool) -> Response {
    let spool = h.spool.clone();
    let wanted = id.clone();
    match blocking(move || show(spool.as_ref(), &wanted, whole)).await {
        Ok(Some(view)) => Response::Message(Box::new(view)),
        Ok(None) => Response::NotFound(id),
        Err(e) => Response::Error(e),
    }
}
