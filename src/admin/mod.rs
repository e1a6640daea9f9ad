//! The local admin API: a Unix socket the daemon serves, and the `sluice queue ...` client.
//!
//! sled locks its database, so while the daemon runs, `sluice queue list` must ask it; when no
//! daemon answers, the client opens the spool itself.
//!
//! Protocol: the client sends one request line (`queue list`, `queue summary`), the daemon
//! answers with one JSON document and closes.

mod passwd;
mod summary;

pub use passwd::users_file_line;
pub use summary::{DestinationSummary, format_summary};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::config::Config;
use crate::spool::{Envelope, Identity, RecipientState, SledSpool, Spool};

/// One message as `sluice queue list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub queue_id: String,
    pub from: String,
    pub arrival: u64,
    pub size: u64,
    pub client_ip: String,
    pub identity: Identity,
    pub recipients: Vec<RecipientEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientEntry {
    pub address: String,
    pub state: RecipientState,
    pub attempts: u32,
    pub last_reply: Option<String>,
    pub next_attempt: Option<u64>,
}

impl From<&Envelope> for QueueEntry {
    fn from(e: &Envelope) -> Self {
        QueueEntry {
            queue_id: e.queue_id.clone(),
            from: e.from.as_ref().map(|m| m.to_string()).unwrap_or_default(),
            arrival: e.arrival,
            size: e.body.map(|b| b.len).unwrap_or(0),
            client_ip: e.client_ip.to_string(),
            identity: e.identity.clone(),
            recipients: e
                .recipients
                .iter()
                .map(|r| RecipientEntry {
                    address: r.mailbox.to_string(),
                    state: r.state,
                    attempts: r.attempts,
                    last_reply: r.last_reply.clone(),
                    next_attempt: r.next_attempt,
                })
                .collect(),
        }
    }
}

fn list(spool: &dyn Spool) -> Result<Vec<QueueEntry>, String> {
    spool.list().map(|v| v.iter().map(QueueEntry::from).collect()).map_err(|e| e.to_string())
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Queue(Vec<QueueEntry>),
    Summary(Vec<DestinationSummary>),
    Error(String),
}

/// Binds a daemon socket at `path` (replacing a stale one) with permissions `mode`: 0o600 for
/// the admin socket (only the daemon's user), 0o666 for the sendmail socket (every local user).
pub fn bind_socket(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The summary from the spool and, when delivery runs, its live state.
fn summarize(spool: &dyn Spool, config: &Config, delivery: Option<&crate::delivery::Delivery>) -> Result<Vec<DestinationSummary>, String> {
    let envelopes = spool.list().map_err(|e| e.to_string())?;
    Ok(match delivery {
        Some(d) => summary::summarize(&envelopes, d.shaper(), d.shaper().states(unix_now())),
        None => summary::summarize(&envelopes, &crate::shaping::Shaper::new(config), Vec::new()),
    })
}

pub async fn serve(
    listener: UnixListener,
    spool: Arc<dyn Spool>,
    config: Arc<Config>,
    delivery: Option<Arc<crate::delivery::Delivery>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (spool, config, delivery) = (spool.clone(), config.clone(), delivery.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match line.trim() {
                "queue list" => {
                    let spool = spool.clone();
                    match tokio::task::spawn_blocking(move || list(spool.as_ref())).await {
                        Ok(Ok(entries)) => Response::Queue(entries),
                        Ok(Err(e)) => Response::Error(e),
                        Err(e) => Response::Error(e.to_string()),
                    }
                }
                "queue summary" => {
                    let spool = spool.clone();
                    match tokio::task::spawn_blocking(move || summarize(spool.as_ref(), &config, delivery.as_deref())).await {
                        Ok(Ok(rows)) => Response::Summary(rows),
                        Ok(Err(e)) => Response::Error(e),
                        Err(e) => Response::Error(e.to_string()),
                    }
                }
                other => Response::Error(format!("unknown request {other:?}")),
            };
            let bytes = serde_json::to_vec(&response).unwrap_or_default();
            let _ = reader.into_inner().write_all(&bytes).await;
        });
    }
}

/// Asks the running daemon; None when none answers.
fn ask(config: &Config, request: &str) -> Option<Result<Response, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        let mut stream = UnixStream::connect(&config.admin.socket).await.ok()?;
        stream.write_all(format!("{request}\n").as_bytes()).await.ok()?;
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
    match ask(config, "queue list") {
        Some(Ok(Response::Queue(entries))) => Ok(entries),
        Some(Ok(Response::Error(e))) | Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err("unexpected answer from the daemon".into()),
        None => offline(config, list),
    }
}

/// `sluice queue summary`: live from the daemon, or counts from the spool when none answers.
pub fn queue_summary(config: &Config) -> Result<Vec<DestinationSummary>, String> {
    match ask(config, "queue summary") {
        Some(Ok(Response::Summary(rows))) => Ok(rows),
        Some(Ok(Response::Error(e))) | Some(Err(e)) => Err(e),
        Some(Ok(_)) => Err("unexpected answer from the daemon".into()),
        None => offline(config, |spool| summarize(spool, config, None)),
    }
}

/// The human-readable listing.
pub fn format_table(entries: &[QueueEntry]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for e in entries {
        let from = if e.from.is_empty() { "<>" } else { &e.from };
        let _ = writeln!(
            out,
            "{}  {} bytes  from {}  client {}  arrived {}",
            e.queue_id,
            e.size,
            from,
            e.client_ip,
            crate::message::date::rfc5322_date(e.arrival)
        );
        for r in &e.recipients {
            let state = match r.state {
                RecipientState::Queued => "queued",
                RecipientState::Delivered => "delivered",
                RecipientState::Failed => "failed",
            };
            let _ = write!(out, "    {}  {}  attempts {}", r.address, state, r.attempts);
            if let (RecipientState::Queued, Some(next)) = (r.state, r.next_attempt) {
                let _ = write!(out, "  next attempt {}", crate::message::date::rfc5322_date(next));
            }
            if let Some(reply) = &r.last_reply {
                let _ = write!(out, "  last reply: {reply}");
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out, "{} message(s)", entries.len());
    out
}
