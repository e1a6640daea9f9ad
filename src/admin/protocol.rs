//! What the admin socket carries: one request, one response, both JSON.

use serde::{Deserialize, Serialize};

use super::select::QueueState;
use super::{DestinationSummary, MessageView, QueueEntry};

/// What an operator asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The queued messages a selection names (all with an empty one), streamed: one
    /// `Response::Entry` line each, then `Response::Listed`.
    QueueList(Selection),
    /// Per destination: queued mail, connections, rates, suspensions.
    QueueSummary,
    /// Whether limits are shared with other nodes now, or kept to this node's share.
    ClusterStatus,
    /// One message: its envelope, recipients' states, headers, and with `body` all of it.
    QueueShow { id: String, body: bool },
    /// Make messages due now and end their destinations' suspensions.
    QueueFlush(Selection),
    /// Route messages again under the config in force: every queued recipient due now, the
    /// destinations' limits and suspensions as they are (postsuper -r).
    QueueRequeue(Selection),
    /// Hold messages (never dispatched until released), or release held ones.
    QueueHold { selection: Selection, held: bool },
    /// Bounce every queued recipient (a DSN to the sender) with this enhanced status and text.
    QueueBounce { selection: Selection, status: String, reason: String },
    /// Remove messages from the queue; with `dry_run`, only say which.
    QueueDelete { selection: Selection, dry_run: bool },
    /// Relay at most `limit` of the selected messages, in queue id order after `after`, to
    /// the MTA at `to` (`HOST:PORT`), logging in with the smarthost credentials when `login`;
    /// each recipient leaves the queue once that MTA took it. New messages are started for
    /// about a minute; the answer's `last` is the last one started.
    QueueTransfer {
        selection: Selection,
        to: String,
        #[serde(default)]
        login: bool,
        limit: usize,
        #[serde(default)]
        after: Option<String>,
    },
    /// Read the config file again and put it in force; a config that fails to load is
    /// refused and the running one kept.
    Reload,
}

/// Which messages an action is for: these ids, and/or every message with a queued recipient
/// at `domain`, or all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub all: bool,
    /// The sender: an address, or `@domain` / `domain` (`<>` for the null sender).
    #[serde(default)]
    pub from: Option<String>,
    /// Any recipient: an address, or `@domain` / `domain`.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub state: Option<QueueState>,
    /// Arrived at least this many seconds ago.
    #[serde(default)]
    pub older_than: Option<u64>,
}

impl Selection {
    /// Names nothing: an action needs ids, a filter or `all`.
    pub fn is_empty(&self) -> bool {
        *self == Selection::default()
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// One message of a listing.
    Entry(Box<QueueEntry>),
    /// The end of a listing: how many messages it had.
    Listed(usize),
    Summary(Vec<DestinationSummary>),
    /// None without `cluster.redis`.
    Cluster(Option<crate::cluster::ClusterStatus>),
    Message(Box<MessageView>),
    /// How many messages an action took, and which.
    Done {
        messages: usize,
        ids: Vec<String>,
    },
    /// A reload took effect.
    Reloaded(ReloadReport),
    /// What a transfer moved and kept, and how many selected messages it did not reach.
    Transferred {
        report: crate::queue::transfer::TransferReport,
        remaining: usize,
        last: Option<String>,
    },
    /// No message with this queue id.
    NotFound(String),
    /// The request could not be carried out (or not read).
    Error(String),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The listeners bound now, in config order.
    pub listeners: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same address, other settings (for new connections).
    pub changed: Vec<String>,
    /// Keys whose new values only a restart puts in force (the old ones stay until then).
    pub needs_restart: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        assert_eq!(serde_json::to_string(&Request::QueueSummary).unwrap(), r#"{"request":"queue_summary"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"request":"queue_summary"}"#).unwrap(), Request::QueueSummary);
        assert!(serde_json::from_str::<Request>(r#"{"request":"queue_destroy"}"#).is_err(), "unknown requests are refused");
    }
}
