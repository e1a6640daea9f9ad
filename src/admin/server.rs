//! The daemon's side of the admin socket: reads one request, runs its handler, answers.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{ReloadReport, Request, Response, Selection};
use super::summary::from_spool;
use super::{DestinationSummary, QueueEntry, show};
use crate::config::Config;
use crate::live::Live;
use crate::queue::runner::Runner;
use crate::spool::Spool;

/// Asks whoever reloads the daemon (one reload at a time) and waits for the outcome.
pub type Reloads = mpsc::Sender<oneshot::Sender<Result<ReloadReport, String>>>;

/// What the handlers work with, shared by every admin connection.
pub struct Daemon {
    pub spool: Arc<dyn Spool>,
    pub config: Arc<Live<Config>>,
    /// None while delivery is paused.
    pub runner: Option<Arc<Runner>>,
    pub reloads: Reloads,
    /// `deleted` records while delivery is paused (the runner makes them otherwise).
    pub accounting: Arc<crate::accounting::Accounting>,
    /// Limits shared with other nodes, if they are (`cluster.redis`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Serves the admin socket until shutdown: one task per connection, one request each.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            // One request line, of bounded length.
            if (&mut reader).take(64 * 1024).read_line(&mut line).await.is_err() {
                return;
            }
            let uid = reader.get_ref().peer_cred().ok().map(|c| c.uid());
            let operator =
                uid.map(|uid| crate::sys::user_name(uid).unwrap_or_else(|| format!("uid{uid}"))).unwrap_or_else(|| "unknown".into());
            let mut out = reader.into_inner();
            match serde_json::from_str::<Request>(line.trim()) {
                Ok(Request::QueueList(selection)) => queue_list(&daemon, selection, &mut out).await,
                Ok(request) => {
                    let answer = perform(&daemon, operator, request).await.unwrap_or_else(Response::from);
                    let _ = write_line(&mut out, &answer).await;
                }
                Err(e) => {
                    let _ = write_line(&mut out, &Response::Error(format!("bad request: {e}"))).await;
                }
            }
        });
    }
}

/// Why an admin request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No message with this queue id.
    NotFound(String),
    /// The request itself is wrong (a status that is not a permanent one, ...).
    Invalid(String),
    /// The action needs delivery, and delivery is paused.
    Paused(String),
    /// The daemon is shutting down.
    Unavailable(String),
    /// The spool or the config failed; nothing (or, as said, part) was done.
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotFound(id) => write!(f, "no message {id}"),
            Refused::Paused(what) => write!(f, "delivery is paused (delivery.paused): {what}"),
            Refused::Invalid(e) | Refused::Unavailable(e) | Refused::Failed(e) => f.write_str(e),
        }
    }
}

impl From<Refused> for Response {
    fn from(refused: Refused) -> Response {
        match refused {
            Refused::NotFound(id) => Response::NotFound(id),
            other => Response::Error(other.to_string()),
        }
    }
}

/// One request's handler state: the daemon, and who asks (for the log and accounting).
struct Handlers<'a> {
    daemon: &'a Daemon,
    operator: String,
}

impl std::ops::Deref for Handlers<'_> {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        self.daemon
    }
}

impl Handlers<'_> {
    fn operator(&self) -> String {
        self.operator.clone()
    }
}

/// Every answer is one JSON line.
async fn write_line(out: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).unwrap_or_default();
    bytes.push(b'\n');
    out.write_all(&bytes).await
}

/// Carries out one request for `operator` (a user name, or `api-key:NAME` over HTTP) and
/// answers it; every request but `QueueList`, which is streamed (`queue_list`).
pub async fn perform(daemon: &Daemon, operator: String, request: Request) -> Result<Response, Refused> {
    let h = &Handlers { daemon, operator };
    match request {
        Request::QueueList(_) => Err(Refused::Invalid("queue_list is streamed".into())),
        Request::QueueSummary => queue_summary(h).await,
        Request::ClusterStatus => Ok(Response::Cluster(h.cluster.as_ref().map(|c| c.status()))),
        Request::QueueShow { id, body } => queue_show(h, id, body).await,
        Request::QueueFlush(selection) => queue_flush(h, selection).await,
        Request::QueueRequeue(selection) => queue_requeue(h, selection).await,
        Request::QueueDelete { selection, dry_run } => queue_delete(h, selection, dry_run).await,
        Request::QueueHold { selection, held } => queue_hold(h, selection, held).await,
        Request::QueueBounce { selection, status, reason } => queue_bounce(h, selection, &status, reason).await,
        Request::QueueTransfer { selection, to, login, limit, after } => queue_transfer(h, selection, &to, login, (limit, after)).await,
        Request::Reload => reload(h).await,
    }
}

async fn reload(h: &Handlers<'_>) -> Result<Response, Refused> {
    tracing::info!(operator = %h.operator(), "reload asked for");
    let (tx, rx) = oneshot::channel();
    let shutting_down = || Refused::Unavailable("the daemon is shutting down".into());
    h.reloads.send(tx).await.map_err(|_| shutting_down())?;
    match rx.await {
        Ok(Ok(report)) => Ok(Response::Reloaded(report)),
        Ok(Err(e)) => Err(Refused::Failed(e)),
        Err(_) => Err(shutting_down()),
    }
}

/// Reads the spool on a blocking thread (sled reads block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, Refused> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(e.to_string())).map_err(Refused::Failed)
}

/// Streams the selected messages: the spool is read on a blocking thread and each entry
/// handed over through a short channel, so neither side holds the queue in memory.
async fn queue_list(h: &Daemon, selection: Selection, out: &mut UnixStream) {
    let (tx, mut rx) = mpsc::channel::<Response>(256);
    let spool = h.spool.clone();
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let scan = tokio::task::spawn_blocking(move || {
        let mut listed = 0;
        for item in spool.scan() {
            let response = match item {
                Ok(env) if selection.matches(&env, now) => Response::Entry(Box::new(QueueEntry::from(&env))),
                Ok(_) => continue,
                Err(e) => Response::Error(format!("reading the spool: {e}")),
            };
            let failed = matches!(response, Response::Error(_));
            listed += 1;
            // A client that went away ends the scan.
            if tx.blocking_send(response).is_err() || failed {
                return;
            }
        }
        let _ = tx.blocking_send(Response::Listed(listed));
    });
    while let Some(response) = rx.recv().await {
        if write_line(out, &response).await.is_err() {
            break;
        }
    }
    drop(rx);
    let _ = scan.await;
}

async fn queue_summary(h: &Handlers<'_>) -> Result<Response, Refused> {
    let (spool, config) = (h.spool.clone(), h.config.get());
    let delivery = h.runner.as_ref().map(|r| r.delivery());
    let rows: Vec<DestinationSummary> = blocking(move || from_spool(spool.as_ref(), &config, delivery.as_deref())).await?;
    Ok(Response::Summary(rows))
}

/// The selection's queued messages and their domains, or the answer that ends the request.
async fn selected(h: &Handlers<'_>, selection: &Selection) -> Result<(Vec<String>, Vec<String>), Refused> {
    // Selected while the spool is scanned: a large queue never passes through memory at once.
    let (spool, selection) = (h.spool.clone(), selection.clone());
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let picked = blocking(move || {
        let mut failure = None;
        let envelopes = spool.scan().map_while(|e| e.map_err(|e| failure = Some(e.to_string())).ok());
        let picked = super::select::for_action(envelopes, &selection, now);
        match failure {
            Some(e) => Err(format!("reading the spool: {e}")),
            None => Ok(picked),
        }
    });
    picked.await?.map_err(Refused::NotFound)
}

/// Actions that change what delivery does need it running.
fn runner<'a>(h: &'a Handlers<'_>, what: &str) -> Result<&'a Arc<Runner>, Refused> {
    h.runner.as_ref().ok_or_else(|| Refused::Paused(what.to_string()))
}

async fn queue_delete(h: &Handlers<'_>, selection: Selection, dry_run: bool) -> Result<Response, Refused> {
    let (ids, _) = selected(h, &selection).await?;
    if !dry_run {
        let operator = h.operator();
        let result = match &h.runner {
            Some(runner) => runner.delete(ids.clone(), &operator).await,
            // Delivery is paused: nothing is in flight, the spool is the daemon's alone.
            None => delete_while_paused(h, &ids, &operator).await,
        };
        result.map_err(|e| Refused::Failed(format!("deleting failed, nothing was removed: {e}")))?;
    }
    tracing::info!(operator = %h.operator(), messages = ids.len(), dry_run, ids = ids.join(",").as_str(), "queue delete");
    Ok(Response::Done { messages: ids.len(), ids })
}

async fn delete_while_paused(h: &Handlers<'_>, ids: &[String], operator: &str) -> Result<(), crate::spool::SpoolError> {
    let records: Vec<_> = match h.accounting.enabled() {
        true => ids
            .iter()
            .filter_map(|id| h.spool.get(id).ok())
            .map(|env| crate::accounting::Record {
                operator: Some(operator.to_string()),
                ..crate::accounting::message_record(crate::accounting::Event::Deleted, &env)
            })
            .collect(),
        false => Vec::new(),
    };
    h.spool.apply(crate::spool::Changes { remove: ids.to_vec(), ..Default::default() })?.wait().await?;
    records.into_iter().for_each(|r| h.accounting.emit(r));
    Ok(())
}

async fn queue_hold(h: &Handlers<'_>, selection: Selection, held: bool) -> Result<Response, Refused> {
    let runner = runner(h, "nothing is dispatched to hold")?;
    let (ids, _) = selected(h, &selection).await?;
    runner.hold(ids.clone(), held, &h.operator()).await.map_err(|e| Refused::Failed(format!("holding failed: {e}")))?;
    tracing::info!(operator = %h.operator(), messages = ids.len(), held, ids = ids.join(",").as_str(), "queue hold");
    Ok(Response::Done { messages: ids.len(), ids })
}

async fn queue_bounce(h: &Handlers<'_>, selection: Selection, status: &str, reason: String) -> Result<Response, Refused> {
    let runner = runner(h, "bounces would not be sent")?;
    // A permanent status alone, as RFC 3463 writes it (the reply parser's own reading).
    let enhanced = crate::smtp::reply::parse_enhanced(status)
        .filter(|e| e.0 == 5 && !status.contains(char::is_whitespace))
        .ok_or_else(|| Refused::Invalid(format!("{status:?} is not a permanent status such as 5.0.0")))?;
    let (ids, _) = selected(h, &selection).await?;
    let operator = h.operator();
    let text: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let reply = crate::smtp::reply::Reply::new(550, enhanced, format!("{text} (bounced by {operator})"));
    runner.bounce(ids.clone(), reply, &operator).await.map_err(|e| Refused::Failed(format!("bouncing failed: {e}")))?;
    tracing::info!(operator = %operator, messages = ids.len(), status, ids = ids.join(",").as_str(), "queue bounce");
    Ok(Response::Done { messages: ids.len(), ids })
}

async fn queue_transfer(
    h: &Handlers<'_>,
    selection: Selection,
    to: &str,
    login: bool,
    (limit, after): (usize, Option<String>),
) -> Result<Response, Refused> {
    let runner = runner(h, "nothing is sent")?;
    let (host, port) = crate::queue::transfer::parse_destination(to).map_err(Refused::Invalid)?;
    if login && h.config.get().delivery.smarthost_auth.is_none() {
        return Err(Refused::Invalid("logging in needs delivery.smarthost_auth".into()));
    }
    let delivery = runner.delivery();
    let family = h.config.get().delivery.ip_family;
    let targets: Vec<crate::delivery::route::Target> = match delivery.dns().addrs(&host, family).await {
        crate::dns::AddrAnswer::Addrs(ips) => {
            ips.into_iter().map(|ip| crate::delivery::route::Target::new(host.clone(), std::net::SocketAddr::new(ip, port))).collect()
        }
        crate::dns::AddrAnswer::None => return Err(Refused::Invalid(format!("{host} has no address"))),
        crate::dns::AddrAnswer::Temporary(why) => return Err(Refused::Failed(format!("looking up {host}: {why}"))),
    };
    let (mut ids, _) = selected(h, &selection).await?;
    ids.sort();
    ids.retain(|id| after.as_ref().is_none_or(|a| id > a));
    let selected_after = ids.len();
    ids.truncate(limit);
    let operator = h.operator();
    let destination = crate::queue::transfer::Destination { host, targets, login };
    let report = runner.transfer(ids.clone(), &destination, &operator).await;
    let started: Vec<&String> = ids.iter().filter(|id| !report.unstarted.contains(id)).collect();
    let (last, remaining) = (started.last().map(|id| id.to_string()), selected_after - started.len());
    tracing::info!(
        operator = %operator,
        to,
        moved = report.moved.len(),
        kept = report.kept.len(),
        ids = report.moved.join(",").as_str(),
        "queue transfer"
    );
    Ok(Response::Transferred { report, remaining, last })
}

async fn queue_flush(h: &Handlers<'_>, selection: Selection) -> Result<Response, Refused> {
    let runner = runner(h, "nothing is sent")?;
    let (ids, domains) = selected(h, &selection).await?;
    runner.flush(ids.clone(), &domains);
    tracing::info!(operator = %h.operator(), messages = ids.len(), domains = domains.join(",").as_str(), "queue flush");
    Ok(Response::Done { messages: ids.len(), ids })
}

async fn queue_requeue(h: &Handlers<'_>, selection: Selection) -> Result<Response, Refused> {
    let runner = runner(h, "nothing is sent")?;
    let (ids, _) = selected(h, &selection).await?;
    // Routing happens at each attempt, so an attempt now is a new routing; suspensions stay.
    runner.flush(ids.clone(), &[]);
    tracing::info!(operator = %h.operator(), messages = ids.len(), "queue requeue");
    Ok(Response::Done { messages: ids.len(), ids })
}

async fn queue_show(h: &Handlers<'_>, id: String, whole: bool) -> Result<Response, Refused> {
    let spool = h.spool.clone();
    let wanted = id.clone();
    match blocking(move || show(spool.as_ref(), &wanted, whole)).await? {
        Some(view) => Ok(Response::Message(Box::new(view))),
        None => Err(Refused::NotFound(id)),
    }
}

/// One page of a listing: the selected messages with ids after `after`, at most `limit`, in
/// queue id order, and whether more follow. The spool is scanned once and only the page is
/// held (whatever order the spool lists in).
pub async fn list_page(
    daemon: &Daemon,
    selection: Selection,
    after: Option<String>,
    limit: usize,
) -> Result<(Vec<QueueEntry>, bool), Refused> {
    let spool = daemon.spool.clone();
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    blocking(move || {
        let mut page = std::collections::BTreeMap::new();
        let mut more = false;
        for item in spool.scan() {
            let env = item.map_err(|e| format!("reading the spool: {e}"))?;
            if after.as_ref().is_some_and(|a| env.queue_id <= *a) || !selection.matches(&env, now) {
                continue;
            }
            page.insert(env.queue_id.clone(), QueueEntry::from(&env));
            if page.len() > limit {
                page.pop_last();
                more = true;
            }
        }
        Ok((page.into_values().collect(), more))
    })
    .await
}
