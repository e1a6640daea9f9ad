//! The local admin API: a Unix socket the daemon serves, and the `sluice queue ...` client.
//!
//! sled locks its database, so while the daemon runs, `sluice queue list` must ask it; when no
//! daemon answers, the client opens the spool itself.
//!
//! Protocol (`protocol.rs`): the client sends one `Request` as a JSON line, the daemon answers
//! with one `Response` document and closes. `server.rs` has one handler per request;
//! `client.rs` asks, or reads the spool itself when no daemon answers.

mod client;
mod passwd;
pub mod protocol;
pub mod select;
mod server;
mod summary;

pub use client::{
    AdminError, cluster_status, list_queue, queue_bounce, queue_delete, queue_flush, queue_hold, queue_list, queue_requeue, queue_show,
    queue_summary, queue_transfer, reload,
};
pub use passwd::users_file_line;
pub use server::{Daemon, Refused, Reloads, list_page, perform, serve};
pub use summary::{DestinationSummary, format_summary};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use crate::spool::{Envelope, Identity, RecipientState, SpoolRead};

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
    /// Held by an operator.
    #[serde(default)]
    pub held: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientEntry {
    pub address: String,
    pub state: RecipientState,
    pub attempts: u32,
    pub last_reply: Option<String>,
    pub next_attempt: Option<u64>,
    /// The latest attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::spool::AttemptRecord>,
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
            held: e.held,
            recipients: e
                .recipients
                .iter()
                .map(|r| RecipientEntry {
                    address: r.mailbox.to_string(),
                    state: r.state,
                    attempts: r.attempts,
                    last_reply: r.last_reply.clone(),
                    next_attempt: r.next_attempt,
                    history: r.history.clone(),
                })
                .collect(),
        }
    }
}

/// One message as `sluice queue show` prints it (`postcat -q`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub entry: QueueEntry,
    /// MT-PRIORITY, REQUIRETLS, RET and ENVID as the message carries them.
    pub priority: Option<i8>,
    pub requiretls: bool,
    pub ret: Option<String>,
    pub envid: Option<String>,
    /// The header section as stored (our trace fields first).
    pub headers: String,
    /// The whole message as stored, when asked for.
    pub message: Option<String>,
}

/// The message `id` from the spool; `Ok(None)` when there is none.
pub(crate) fn show(spool: &dyn SpoolRead, id: &str, whole: bool) -> Result<Option<MessageView>, String> {
    let env = match spool.get(id) {
        Ok(e) => e,
        Err(crate::spool::SpoolError::NotFound) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let stored = spool.read_body(&env).map_err(|e| e.to_string())?;
    let end = memchr::memmem::find(&stored, b"\r\n\r\n").map_or(stored.len(), |i| i + 2);
    Ok(Some(MessageView {
        entry: QueueEntry::from(&env),
        priority: env.params.priority,
        requiretls: env.params.requiretls,
        ret: env.params.ret.map(|r| format!("{r:?}").to_ascii_uppercase()),
        envid: env.params.envid.clone(),
        headers: String::from_utf8_lossy(&stored[..end]).into_owned(),
        message: whole.then(|| String::from_utf8_lossy(&stored).into_owned()),
    }))
}

/// The human-readable form of one message.
pub fn format_message(view: &MessageView) -> String {
    let mut out = format_entry(&view.entry);
    use std::fmt::Write;
    for r in view.entry.recipients.iter().filter(|r| !r.history.is_empty()) {
        let _ = writeln!(out, "  attempts for {}:", r.address);
        for a in &r.history {
            let host = a.remote.as_deref().map(|h| format!(" {h}:")).unwrap_or_default();
            let _ = writeln!(out, "    {}{host} {}", crate::message::date::rfc5322_date(a.at), a.reply);
        }
    }
    let _ = writeln!(
        out,
        "  priority {}  requiretls {}  ret {}  envid {}",
        view.priority.map_or("-".into(), |p| p.to_string()),
        view.requiretls,
        view.ret.as_deref().unwrap_or("-"),
        view.envid.as_deref().unwrap_or("-")
    );
    out.push('\n');
    out.push_str(view.message.as_deref().unwrap_or(&view.headers).replace("\r\n", "\n").as_str());
    out
}

/// The admin socket: 0600, or 0660 for `admin.group` (validated to exist by the config).
pub fn bind_admin_socket(admin: &crate::config::AdminConfig) -> Result<UnixListener, String> {
    let path = &admin.socket;
    let fail = |e: std::io::Error| format!("admin socket {}: {e}", path.display());
    let Some(group) = &admin.group else { return bind_socket(path, 0o600).map_err(fail) };
    let gid = crate::sys::group_id(group).ok_or_else(|| format!("admin.group: no group {group:?}"))?;
    let listener = bind_socket(path, 0o600).map_err(fail)?;
    // Group first, then the mode: the group's members never see it open to another group.
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(fail)?;
    Ok(listener)
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

/// Prints the selected messages as they arrive (`sluice queue list`, `mailq`, `sendmail -bp`):
/// a table, or one JSON object per line. The exit code: 0, 1 error, 69 a daemon that cannot
/// be asked.
pub fn print_queue(config: &crate::config::Config, selection: &protocol::Selection, json: bool) -> u8 {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let listed = list_queue(config, selection, |entry| {
        let _ = match json {
            true => writeln!(out, "{}", serde_json::to_string(&entry).unwrap_or_default()),
            false => write!(out, "{}", format_entry(&entry)),
        };
    });
    let code = match listed {
        Ok(n) => {
            if !json {
                let _ = writeln!(out, "{n} message(s)");
            }
            0
        }
        Err(e) => {
            let _ = out.flush();
            eprintln!("sluice: {e}");
            e.exit_code()
        }
    };
    let _ = out.flush();
    code
}

/// One message of the listing (`sluice queue list` prints them as they arrive).
pub fn format_entry(e: &QueueEntry) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let from = if e.from.is_empty() { "<>" } else { &e.from };
    let _ = writeln!(
        out,
        "{}{}  {} bytes  from {}  client {}  arrived {}",
        e.queue_id,
        if e.held { " (held)" } else { "" },
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
    out
}
