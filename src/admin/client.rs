//! The `sluice queue ...` side: asks the daemon over its socket, or, for the read-only
//! commands, reads a snapshot of the spool when no daemon runs (see `spool::snapshot`:
//! nothing in the spool is written).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::protocol::{ReloadReport, Request, Response, Selection};
use super::summary::from_spool;
use super::{DestinationSummary, MessageView, QueueEntry, show};
use crate::config::Config;
use crate::spool::SpoolRead;
use crate::spool::snapshot::{Snapshot, SnapshotError};

/// Why an admin command failed, with the exit code `sluice queue` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// No daemon answers on the admin socket (the action needs one).
    Unreachable(String),
    /// The socket is there but this user may not open it: a daemon probably runs.
    Denied {
        socket: String,
        error: String,
    },
    /// No message with this queue id.
    NoSuchMessage(String),
    Failed(String),
}

impl AdminError {
    /// 69 (EX_UNAVAILABLE) unreachable or denied, 3 no such message, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Unreachable(_) | AdminError::Denied { .. } => 69,
            AdminError::NoSuchMessage(_) => 3,
            AdminError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Unreachable(socket) => write!(f, "no daemon answers at {socket}; this needs the running daemon"),
            AdminError::Denied { socket, error } => write!(
                f,
                "the daemon's admin socket {socket} cannot be opened ({error}); run this as the daemon's user, root, or a member of admin.group"
            ),
            AdminError::NoSuchMessage(id) => write!(f, "no message {id} in the queue"),
            AdminError::Failed(e) => f.write_str(e),
        }
    }
}

/// The daemon's socket, connected; `Ok(None)` when no daemon listens there (no socket, or a
/// stale one nobody accepts on).
fn connect(config: &Config, patience: Duration) -> Result<Option<UnixStream>, AdminError> {
    let socket = &config.admin.socket;
    match UnixStream::connect(socket) {
        Ok(s) => {
            // A daemon that accepted but never answers must not hang the command.
            let _ = s.set_read_timeout(Some(patience));
            Ok(Some(s))
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(AdminError::Denied { socket: socket.display().to_string(), error: e.to_string() })
        }
        Err(e) => Err(AdminError::Failed(format!("admin socket {}: {e}", socket.display()))),
    }
}

/// Sends `request` and hands each answer line to `each` until it returns false; `Ok(false)`
/// when no daemon runs.
fn exchange(config: &Config, request: &Request, each: impl FnMut(Response) -> bool) -> Result<bool, AdminError> {
    exchange_within(config, request, Duration::from_secs(120), each)
}

/// `exchange`, waiting up to `patience` for each answer line.
fn exchange_within(
    config: &Config,
    request: &Request,
    patience: Duration,
    mut each: impl FnMut(Response) -> bool,
) -> Result<bool, AdminError> {
    let Some(mut stream) = connect(config, patience)? else { return Ok(false) };
    let failed = |e: std::io::Error| AdminError::Failed(format!("talking to the daemon: {e}"));
    let mut line = serde_json::to_vec(request).map_err(|e| AdminError::Failed(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(failed)?;
    for line in BufReader::new(stream).lines() {
        let response = serde_json::from_str::<Response>(&line.map_err(failed)?)
            .map_err(|e| AdminError::Failed(format!("bad answer from the daemon: {e}")))?;
        if !each(response) {
            return Ok(true);
        }
    }
    Err(AdminError::Failed("the daemon closed the connection before answering".into()))
}

/// One request, one answer; `None` when no daemon runs.
fn ask(config: &Config, request: &Request) -> Result<Option<Response>, AdminError> {
    let mut answer = None;
    let asked = exchange(config, request, |r| {
        answer = Some(r);
        false
    })?;
    Ok(asked.then_some(answer).flatten())
}

/// Runs `f` on a read-only snapshot of the spool (no daemon runs); an empty spool when there
/// is none yet.
fn offline<T>(config: &Config, f: impl FnOnce(Option<&dyn SpoolRead>) -> Result<T, String>) -> Result<T, AdminError> {
    match Snapshot::open(&config.spool) {
        Ok(snapshot) => f(snapshot.as_ref().map(|s| s as &dyn SpoolRead)).map_err(AdminError::Failed),
        Err(SnapshotError::Locked(spool)) => Err(AdminError::Failed(format!(
            "a daemon holds the spool {} but does not answer at {}",
            spool.display(),
            config.admin.socket.display()
        ))),
        Err(e) => Err(AdminError::Failed(format!("no daemon answers at {} and {e}", config.admin.socket.display()))),
    }
}

fn unexpected(response: Response) -> AdminError {
    match response {
        Response::Error(e) => AdminError::Failed(e),
        Response::NotFound(id) => AdminError::NoSuchMessage(id),
        other => AdminError::Failed(format!("unexpected answer from the daemon: {other:?}")),
    }
}

/// `sluice queue list`: each selected message to `each` as it comes, from the running daemon
/// or a snapshot of the spool when none runs; how many there were.
pub fn list_queue(config: &Config, selection: &Selection, mut each: impl FnMut(QueueEntry)) -> Result<usize, AdminError> {
    let mut outcome = Err(AdminError::Failed("the listing ended early".into()));
    let asked = exchange(config, &Request::QueueList(selection.clone()), |r| match r {
        Response::Entry(entry) => {
            each(*entry);
            true
        }
        Response::Listed(n) => {
            outcome = Ok(n);
            false
        }
        other => {
            outcome = Err(unexpected(other));
            false
        }
    })?;
    if asked {
        return outcome;
    }
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    offline(config, |spool| {
        let mut n = 0;
        for env in spool.into_iter().flat_map(|s| s.scan()) {
            let env = env.map_err(|e| format!("reading the spool: {e}"))?;
            if selection.matches(&env, now) {
                each(QueueEntry::from(&env));
                n += 1;
            }
        }
        Ok(n)
    })
}

/// Every message at once (for tests and small tools; `list_queue` streams).
pub fn queue_list(config: &Config) -> Result<Vec<QueueEntry>, AdminError> {
    let mut all = Vec::new();
    list_queue(config, &Selection::default(), |e| all.push(e))?;
    Ok(all)
}

/// `sluice queue summary`: live from the daemon, or counts from the spool when none runs.
pub fn queue_summary(config: &Config) -> Result<Vec<DestinationSummary>, AdminError> {
    match ask(config, &Request::QueueSummary)? {
        Some(Response::Summary(rows)) => Ok(rows),
        Some(other) => Err(unexpected(other)),
        None => offline(config, |spool| match spool {
            Some(spool) => from_spool(spool, config, None),
            None => Ok(Vec::new()),
        }),
    }
}

/// Whether the running daemon shares its limits with other nodes now; None when it runs
/// without `cluster.redis`, or does not run.
pub fn cluster_status(config: &Config) -> Result<Option<crate::cluster::ClusterStatus>, AdminError> {
    match ask(config, &Request::ClusterStatus)? {
        Some(Response::Cluster(status)) => Ok(status),
        Some(other) => Err(unexpected(other)),
        None => Ok(None),
    }
}

/// An action only the running daemon can carry out (nothing is written to the spool behind
/// its back): the ids it took.
fn act(config: &Config, request: Request) -> Result<Vec<String>, AdminError> {
    match ask(config, &request)? {
        Some(Response::Done { ids, .. }) => Ok(ids),
        Some(other) => Err(unexpected(other)),
        None => Err(AdminError::Unreachable(config.admin.socket.display().to_string())),
    }
}

/// `sluice reload`: what the reload changed, or why the daemon refused the new config.
pub fn reload(config: &Config) -> Result<ReloadReport, AdminError> {
    match ask(config, &Request::Reload)? {
        Some(Response::Reloaded(report)) => Ok(report),
        Some(other) => Err(unexpected(other)),
        None => Err(AdminError::Unreachable(config.admin.socket.display().to_string())),
    }
}

/// `sluice queue flush`: the selected messages due now, their destinations' suspensions ended.
pub fn queue_flush(config: &Config, selection: Selection) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueFlush(selection))
}

/// `sluice queue requeue`: the selected messages routed again now under the config in force.
pub fn queue_requeue(config: &Config, selection: Selection) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueRequeue(selection))
}

/// `sluice queue hold` / `release`.
pub fn queue_hold(config: &Config, selection: Selection, held: bool) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueHold { selection, held })
}

/// `sluice queue bounce`: every queued recipient of the selection bounced.
pub fn queue_bounce(config: &Config, selection: Selection, status: String, reason: String) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueBounce { selection, status, reason })
}

/// Messages one transfer request hands over at most; the daemon starts new ones for about a
/// minute, and those started may take up to their delivery timeouts, hence the patience.
const TRANSFER_BATCH: usize = 500;
const TRANSFER_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// `sluice queue transfer`: the selected messages relayed to `to`, in batches until none
/// is left that has not been tried.
pub fn queue_transfer(
    config: &Config,
    selection: Selection,
    to: &str,
    login: bool,
) -> Result<crate::queue::transfer::TransferReport, AdminError> {
    let mut total = crate::queue::transfer::TransferReport::default();
    let mut after = None;
    loop {
        let request = Request::QueueTransfer { selection: selection.clone(), to: to.to_string(), login, limit: TRANSFER_BATCH, after };
        let mut answer = None;
        let asked = exchange_within(config, &request, TRANSFER_PATIENCE, |r| {
            answer = Some(r);
            false
        });
        match (asked, answer) {
            (Ok(true), Some(Response::Transferred { report, remaining, last })) => {
                total.moved.extend(report.moved);
                total.kept.extend(report.kept);
                if remaining == 0 || last.is_none() {
                    return Ok(total);
                }
                after = last;
            }
            // Named messages handed over by an earlier batch are gone now: the selection is done.
            (Ok(true), Some(Response::NotFound(_))) if !total.moved.is_empty() => return Ok(total),
            (Ok(true), Some(other)) => return Err(unexpected(other)),
            (Ok(false), _) | (Ok(true), None) => return Err(AdminError::Unreachable(config.admin.socket.display().to_string())),
            (Err(e), _) if total.moved.is_empty() && total.kept.is_empty() => return Err(e),
            (Err(e), _) => {
                total.kept.push(crate::queue::transfer::Kept { id: "-".into(), why: format!("the transfer stopped: {e}") });
                return Ok(total);
            }
        }
    }
}

/// `sluice queue delete`: the selected messages removed (or with `dry_run`, named).
pub fn queue_delete(config: &Config, selection: Selection, dry_run: bool) -> Result<Vec<String>, AdminError> {
    act(config, Request::QueueDelete { selection, dry_run })
}

/// `sluice queue show ID`: from the running daemon, or from the spool when none runs.
pub fn queue_show(config: &Config, id: &str, whole: bool) -> Result<MessageView, AdminError> {
    let found = match ask(config, &Request::QueueShow { id: id.to_string(), body: whole })? {
        Some(Response::Message(view)) => Some(*view),
        Some(Response::NotFound(_)) => None,
        Some(other) => return Err(unexpected(other)),
        None => offline(config, |spool| match spool {
            Some(spool) => show(spool, id, whole),
            None => Ok(None),
        })?,
    };
    found.ok_or_else(|| AdminError::NoSuchMessage(id.to_string()))
}
