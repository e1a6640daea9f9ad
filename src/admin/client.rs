//! The `sluice queue ...` side: asks the daemon over its socket, or reads the spool itself
//! when no daemon answers.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::protocol::{ReloadReport, Request, Response, Selection};
use super::summary::from_spool;
use super::{DestinationSummary, MessageView, QueueEntry, list, show};
use crate::config::Config;
use crate::spool::{SledSpool, Spool};

/// Asks the running daemon; None when none answers.
fn ask(config: &Config, request: &Request) -> Option<Result<Response, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        let mut stream = UnixStream::connect(&config.admin.socket).await.ok()?;
        let mut line = serde_json::to_vec(request).ok()?;
        line.push(b'\n');
        stream.write_all(&line).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        Some(serde_json::from_slice::<Response>(&buf).map_err(|e| format!("bad answer from daemon: {e}")))
    })
}

/// Runs `f` on the spool itself (no daemon holds it).
fn offline<T>(config: &Config, f: impl FnOnce(&dyn Spool) -> Result<T, String>) -> Result<T, String> {
    let spool = SledSpool::open(&config.spool)
        .map_err(|e| format!("no daemon at {} and the spool cannot be opened: {e}", config.admin.socket.display()))?;
    let result = f(spool.as_ref());
    spool.close();
    result
}

/// `sluice queue list`: from the running daemon, or from the spool when no daemon answers.
pub fn queue_list(config: &Config) -> Result<Vec<QueueEntry>, String> {
    match ask(config, &Request::QueueList) {
        Some(Ok(Response::Queue(entries))) => Ok(entries),
        Some(Ok(Response::Error(e))) | Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err("unexpected answer from the daemon".into()),
        None => offline(config, list),
    }
}

/// `sluice queue summary`: live from the daemon, or counts from the spool when none answers.
pub fn queue_summary(config: &Config) -> Result<Vec<DestinationSummary>, String> {
    match ask(config, &Request::QueueSummary) {
        Some(Ok(Response::Summary(rows))) => Ok(rows),
        Some(Ok(Response::Error(e))) | Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err("unexpected answer from the daemon".into()),
        None => offline(config, |spool| from_spool(spool, config, None)),
    }
}

/// Why an admin action failed, with the exit code `sluice queue` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// No daemon answers on the admin socket (the action needs one).
    Unreachable(String),
    /// No message with this queue id.
    NoSuchMessage(String),
    Failed(String),
}

impl AdminError {
    /// 69 (EX_UNAVAILABLE) unreachable, 3 no such message, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Unreachable(_) => 69,
            AdminError::NoSuchMessage(_) => 3,
            AdminError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Unreachable(socket) => write!(f, "no daemon answers at {socket}; this needs the running daemon"),
            AdminError::NoSuchMessage(id) => write!(f, "no message {id} in the queue"),
            AdminError::Failed(e) => f.write_str(e),
        }
    }
}

/// An action only the running daemon can carry out (nothing is written to the spool behind
/// its back): the number of messages it took.
fn act(config: &Config, request: Request) -> Result<Vec<String>, AdminError> {
    match ask(config, &request) {
        Some(Ok(Response::Done { ids, .. })) => Ok(ids),
        Some(Ok(Response::NotFound(id))) => Err(AdminError::NoSuchMessage(id)),
        Some(Ok(Response::Error(e))) | Some(Err(e)) => Err(AdminError::Failed(e)),
        Some(Ok(_)) => Err(AdminError::Failed("unexpected answer from the daemon".into())),
        None => Err(AdminError::Unreachable(config.admin.socket.display().to_string())),
    }
}

/// `sluice reload`: what the reload changed, or why the daemon refused the new config.
pub fn reload(config: &Config) -> Result<ReloadReport, AdminError> {
    match ask(config, &Request::Reload) {
        Some(Ok(Response::Reloaded(report))) => Ok(report),
        Some(Ok(Response::Error(e))) | Some(Err(e)) => Err(AdminError::Failed(e)),
        Some(Ok(_)) => Err(AdminError::Failed("unexpected answer from the daemon".into())),
        None => Err(AdminError::Unreachable(config.admin.socket.display().to_string())),
    }
}

/// `sluice queue flush`: the selected messages due now, their destinations' suspensions ended.
pub fn queue_flush(config: &Config, selection: Selection) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueFlush(selection))
}

/// `sluice queue hold` / `release`.
pub fn queue_hold(config: &Config, selection: Selection, held: bool) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueHold { selection, held })
}

/// `sluice queue bounce`: every queued recipient of the selection bounced.
pub fn queue_bounce(config: &Config, selection: Selection, status: String, reason: String) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueBounce { selection, status, reason })
}

/// `sluice queue delete`: the selected messages removed (or with `dry_run`, named).
pub fn queue_delete(config: &Config, selection: Selection, dry_run: bool) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueDelete { selection, dry_run })
}

/// `sluice queue show ID`: from the running daemon, or from the spool when none answers.
pub fn queue_show(config: &Config, id: &str, whole: bool) -> Result<MessageView, AdminError> {
    let found = match ask(config, &Request::QueueShow { id: id.to_string(), body: whole }) {
        Some(Ok(Response::Message(view))) => Some(*view),
        Some(Ok(Response::NotFound(_))) => None,
        Some(Ok(Response::Error(e))) | Some(Err(e)) => return Err(AdminError::Failed(e)),
        Some(Ok(_)) => return Err(AdminError::Failed("unexpected answer from the daemon".into())),
        None => offline(config, |spool| show(spool, id, whole)).map_err(AdminError::Failed)?,
    };
    found.ok_or_else(|| AdminError::NoSuchMessage(id.to_string()))
}
