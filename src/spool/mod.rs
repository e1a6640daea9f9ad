//! The spool: the only source of truth for accepted mail.
//!
//! A message is written (body, then its envelope), then the caller waits on [`Durable`]; the
//! group committer resolves it only after an fsync that started after the write finished. The
//! 250 is written only then.

mod commit;
pub mod queue_id;
mod scratch;
mod segments;
mod sled_spool;
pub mod snapshot;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::smtp::address::{MailParams, Mailbox, RcptParams};

pub use scratch::Scratch;
pub use sled_spool::SledSpool;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolError {
    /// An fsync failed. The spool refuses everything until it is reopened and recovered,
    /// because after a failed fsync the kernel may have dropped the dirty pages.
    Poisoned,
    /// A write or read failed; the operation can be tried again.
    Io(String),
    /// Stored data does not match its checksum or cannot be decoded.
    Corrupt(String),
    NotFound,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Poisoned => f.write_str("spool failed an fsync and refuses writes until restarted"),
            SpoolError::Io(e) => write!(f, "spool I/O error: {e}"),
            SpoolError::Corrupt(e) => write!(f, "spool data corrupt: {e}"),
            SpoolError::NotFound => f.write_str("no such message"),
        }
    }
}

impl std::error::Error for SpoolError {}

impl From<std::io::Error> for SpoolError {
    fn from(e: std::io::Error) -> Self {
        SpoolError::Io(e.to_string())
    }
}

impl From<sled::Error> for SpoolError {
    fn from(e: sled::Error) -> Self {
        SpoolError::Io(e.to_string())
    }
}

/// Whether the spool can take new mail now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Free space is below the configured threshold (452 4.3.1).
    LowSpace,
    /// An fsync failed (421 4.3.0 until restart).
    Failed,
}

/// How the client earned the right to relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Identity {
    /// Not trusted: only postmaster was accepted.
    Anonymous,
    TrustedNetwork,
    /// AUTH as this user.
    Authenticated(String),
    /// A bounce this server generated.
    Bounce,
    /// A listed TLS client certificate, by its configured name.
    Certificate(String),
    /// A local system user, through `sluice sendmail`.
    Local(String),
    /// The HTTP API, with this key (by its name).
    ApiKey(String),
}

impl Envelope {
    /// The envelope of a report of ours (bounce, delay or relay notice) to `to`: null sender,
    /// identity `bounce`, arriving `now`. Its body is the report (see `queue::dsn`).
    pub fn report(queue_id: String, to: Mailbox, hostname: &str, now: u64) -> Envelope {
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        Envelope {
            queue_id,
            from: None,
            params: Default::default(),
            recipients: vec![RecipientRecord::queued(to, Default::default(), now)],
            client_ip: loopback,
            helo: hostname.to_string(),
            identity: Identity::Bounce,
            listener: std::net::SocketAddr::new(loopback, 0),
            arrival: now,
            arrival_ms: None,
            body: None,
            held: false,
            message_id: None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::TrustedNetwork => f.write_str("trusted-network"),
            Identity::Authenticated(user) => write!(f, "user:{user}"),
            Identity::Bounce => f.write_str("bounce"),
            Identity::Certificate(name) => write!(f, "certificate:{name}"),
            Identity::Local(user) => write!(f, "local:{user}"),
            Identity::ApiKey(name) => write!(f, "api-key:{name}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientState {
    Queued,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    pub mailbox: Mailbox,
    pub params: RcptParams,
    pub state: RecipientState,
    pub attempts: u32,
    pub last_reply: Option<String>,
    /// Unix seconds of the next delivery attempt.
    pub next_attempt: Option<u64>,
    /// A delay notice was sent for this recipient (only one is sent).
    #[serde(default)]
    pub delay_notified: bool,
    /// The latest attempts, oldest first (at most `AttemptRecord::KEPT`; older spools have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
}

/// One attempt for a recipient, as `sluice queue show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Unix seconds.
    pub at: u64,
    /// The host that answered, if one did.
    #[serde(default)]
    pub remote: Option<String>,
    pub reply: String,
}

impl AttemptRecord {
    /// Attempts kept per recipient: enough to see a pattern, few enough to keep envelopes small.
    pub const KEPT: usize = 5;
}

impl RecipientRecord {
    /// A recipient just accepted: queued, due at `now`, never tried.
    pub fn queued(mailbox: Mailbox, params: RcptParams, now: u64) -> RecipientRecord {
        RecipientRecord {
            mailbox,
            params,
            state: RecipientState::Queued,
            attempts: 0,
            last_reply: None,
            next_attempt: Some(now),
            delay_notified: false,
            history: Vec::new(),
        }
    }
}

/// Where a body lives: a segment file, an offset, a length, and a CRC-32 to catch torn writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

/// Everything about a message except its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub queue_id: String,
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub recipients: Vec<RecipientRecord>,
    pub client_ip: IpAddr,
    pub helo: String,
    pub identity: Identity,
    pub listener: SocketAddr,
    /// Unix seconds at arrival.
    pub arrival: u64,
    /// Unix milliseconds at arrival, for the delivery latency histogram (absent in envelopes
    /// written before it existed, and in bounces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_ms: Option<u64>,
    /// Filled in by the spool when the body is written.
    pub body: Option<BodyRef>,
    /// Held by an operator (`sluice queue hold`): never dispatched until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// The message's Message-ID (ours when it had none), for the accounting records of its
    /// deliveries; absent in envelopes written before it was kept, and in our reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

impl Envelope {
    /// When the next delivery attempt is due (unix seconds): the earliest of the queued
    /// recipients'. `None` when every recipient is final, or the message is held.
    pub fn next_due(&self) -> Option<u64> {
        if self.held {
            return None;
        }
        self.recipients.iter().filter(|r| r.state == RecipientState::Queued).map(|r| r.next_attempt.unwrap_or(self.arrival)).min()
    }
}

/// Index changes applied in order (new messages, then updates, then removals) and covered by
/// one commit: after a crash a prefix of them is there, so a bounce stored with the update
/// that failed its cause is never lost (at worst the cause is tried and bounced again).
#[derive(Debug, Default)]
pub struct Changes {
    /// New messages (bounces), with their bodies.
    pub store: Vec<(Envelope, Vec<u8>)>,
    pub update: Vec<Envelope>,
    pub remove: Vec<String>,
}

/// Resolves when the writes it stands for are durable (or failed to become so).
#[must_use = "a message is not safe until its Durable resolves"]
pub struct Durable(oneshot::Receiver<Result<(), SpoolError>>);

impl Durable {
    /// An already-decided outcome (for spool implementations that resolve at once).
    pub fn resolved(result: Result<(), SpoolError>) -> Durable {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        Durable(rx)
    }

    pub async fn wait(self) -> Result<(), SpoolError> {
        self.0.await.unwrap_or(Err(SpoolError::Poisoned))
    }

    pub fn wait_blocking(self) -> Result<(), SpoolError> {
        self.0.blocking_recv().unwrap_or(Err(SpoolError::Poisoned))
    }
}

/// Reading a spool: all the admin commands need, and all a read-only snapshot offers.
/// Records the spool keeps beside messages, each kind on its own shelf, each record with an
/// expiry: they live in the same database, so they are as durable as the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelf {
    /// The HTTP API's answers, by idempotency key.
    Answers,
    /// MTA-STS policies, by recipient domain, until their max_age runs out.
    Policies,
    /// TLS-RPT reports that could not be posted yet, for a day after their first try.
    TlsReports,
    /// The TLS-RPT period's counts so far, kept over a restart.
    TlsCounts,
}

pub trait SpoolRead: Send + Sync {
    fn get(&self, queue_id: &str) -> Result<Envelope, SpoolError>;
    fn read_body(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError>;
    /// Every envelope, one at a time (a large queue never passes through memory at once).
    fn scan(&self) -> Box<dyn Iterator<Item = Result<Envelope, SpoolError>> + '_>;
    /// Every envelope at once; for small spools and tests.
    fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        self.scan().collect()
    }
}

/// The spool interface; one backend (sled index + body segment files) today.
pub trait Spool: SpoolRead {
    /// A fresh queue id (needed before the body is final: Received names it).
    fn new_queue_id(&self) -> String;
    /// Writes a message whose body is the concatenation of `body_parts`. Wait on the result
    /// before acknowledging the message.
    fn store(&self, envelope: Envelope, body_parts: &[&[u8]]) -> Result<Durable, SpoolError>;
    /// [`Spool::store`] for a body whose end is in a scratch file: `body_parts`, then the
    /// scratch file's bytes. Blocking (the copy reads the file): call it off the async workers.
    fn store_with_tail(&self, envelope: Envelope, body_parts: &[&[u8]], tail: &Scratch) -> Result<Durable, SpoolError>;
    /// A new scratch file for a body too large to keep in memory while it arrives.
    fn scratch(&self) -> Result<Scratch, SpoolError>;
    /// Stores, updates and removes in one atomic index change and one commit (a bounce and
    /// the recipient states that caused it land together).
    fn apply(&self, changes: Changes) -> Result<Durable, SpoolError>;
    /// Replaces a stored envelope (recipient state changes); the body stays.
    fn update(&self, envelope: &Envelope) -> Result<Durable, SpoolError> {
        self.apply(Changes { update: vec![envelope.clone()], ..Changes::default() })
    }
    /// Removes a message whose recipients are all final.
    fn remove(&self, queue_id: &str) -> Result<Durable, SpoolError> {
        self.apply(Changes { remove: vec![queue_id.to_string()], ..Changes::default() })
    }
    /// Keeps `value` under `key` on `shelf` until `expires` (unix seconds), durably once the
    /// result resolves.
    fn remember(&self, _shelf: Shelf, _key: &str, _expires: u64, _value: &[u8]) -> Result<Durable, SpoolError> {
        Err(SpoolError::Io("this spool keeps no records beside messages".into()))
    }
    /// The value kept for `key` on `shelf`, unless it expired by `now`.
    fn recall(&self, _shelf: Shelf, _key: &str, _now: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(None)
    }
    /// Every record on `shelf` not expired by `now`: key, value, expiry.
    fn shelved(&self, _shelf: Shelf, _now: u64) -> Result<Vec<(String, Vec<u8>, u64)>, SpoolError> {
        Ok(Vec::new())
    }
    /// Drops one record (made durable with the next commit).
    fn forget(&self, _shelf: Shelf, _key: &str) -> Result<(), SpoolError> {
        Ok(())
    }
    /// Drops the records on `shelf` expired by `now`; how many.
    fn forget_expired(&self, _shelf: Shelf, _now: u64) -> Result<usize, SpoolError> {
        Ok(0)
    }
    /// Queue ids whose next attempt is due at `now` (unix seconds), earliest first.
    fn due(&self, now: u64, limit: usize) -> Result<Vec<String>, SpoolError>;
    /// The earliest scheduled attempt (unix seconds), if any message is queued.
    fn next_due(&self) -> Result<Option<u64>, SpoolError>;
    /// The first `limit` schedule entries: (due, queue id), earliest first.
    fn upcoming(&self, limit: usize) -> Result<Vec<(u64, String)>, SpoolError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn health(&self) -> Health;
}
