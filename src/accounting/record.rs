//! One accounting record: what happened to a message or a recipient, as one JSON line.
//!
//! The schema is `contrib/accounting.schema.json` (version [`SCHEMA_VERSION`], the `v` of
//! every record). Fields are added without a new version; a field that changes meaning or
//! goes away makes one. Absent facts are left out rather than written as `null`.

use std::time::SystemTime;

use serde::Serialize;

/// The `v` of every record.
pub const SCHEMA_VERSION: u32 = 1;

/// What the record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Accepted and durable (the 250 was given): one per message.
    Received,
    /// A recipient delivered (the next hop's 250).
    Delivered,
    /// A recipient tried and kept for a later attempt.
    Deferred,
    /// A recipient failed for good by a permanent reply or a routing failure.
    Bounced,
    /// A recipient failed for good because it was queued longer than `delivery.max_age`.
    Expired,
    /// A delivery status notification (failure, delay or relay notice) was queued.
    DsnSent,
    /// An operator held the message (`sluice queue hold`).
    Held,
    /// An operator released it.
    Released,
    /// An operator deleted it: its queued recipients will never be delivered.
    Deleted,
    /// An operator bounced a recipient (`sluice queue bounce`).
    AdminBounce,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Received => "received",
            Event::Delivered => "delivered",
            Event::Deferred => "deferred",
            Event::Bounced => "bounced",
            Event::Expired => "expired",
            Event::DsnSent => "dsn_sent",
            Event::Held => "held",
            Event::Released => "released",
            Event::Deleted => "deleted",
            Event::AdminBounce => "admin_bounce",
        }
    }
}

/// One record. Built where the event happens (cheap: owned fields), serialized by the
/// writer thread, never on the hot path.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub v: u32,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub event: Event,
    pub queue_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The envelope sender, without angle brackets; empty for the null sender.
    pub sender: String,
    /// The recipient this record is about (per-recipient events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Every recipient concerned (per-message events: received, held, released, deleted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The recipient's domain (or the route's key) delivery groups by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `TLSv1.3/TLS13_AES_256_GCM_SHA384`, or `none` when the hop was in plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The enhanced status code (RFC 3463), `5.1.1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsn: Option<String>,
    /// The reply's text as stored (the remote server's, or ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// From arrival to this event, and its parts for this attempt (milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_ms: Option<u64>,
    /// When a deferred recipient is tried next (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    /// Message size in octets, as stored (with our trace fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The intake listener's address (`127.0.0.1:25`), or `local` for the sendmail socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Who submitted it: `trusted-network`, `user:NAME`, `certificate:NAME`, `local:NAME`, `bounce`, `anonymous`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i8>,
    /// The operator of an admin action (a user name, or `uidN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// A `dsn_sent` record's report: its own queue id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
}

impl Record {
    /// A record of `event` about `queue_id` now, with every optional field empty.
    pub fn new(event: Event, queue_id: &str, sender: String) -> Record {
        Record {
            v: SCHEMA_VERSION,
            time: SystemTime::now(),
            event,
            queue_id: queue_id.to_string(),
            message_id: None,
            sender,
            recipient: None,
            recipients: Vec::new(),
            destination: None,
            mx: None,
            ip: None,
            port: None,
            tls: None,
            code: None,
            dsn: None,
            reply: None,
            attempt: None,
            delay_ms: None,
            queued_ms: None,
            connect_ms: None,
            transfer_ms: None,
            next_attempt: None,
            size: None,
            listener: None,
            client: None,
            session: None,
            identity: None,
            priority: None,
            operator: None,
            report_id: None,
        }
    }

    /// About the octets the record holds, for the writer's byte bound.
    pub fn weight(&self) -> usize {
        let text = [&self.message_id, &self.recipient, &self.reply, &self.mx, &self.tls, &self.operator];
        std::mem::size_of::<Record>()
            + self.sender.len()
            + self.queue_id.len()
            + text.iter().filter_map(|t| t.as_ref()).map(String::len).sum::<usize>()
            + self.recipients.iter().map(|r| r.len() + 24).sum::<usize>()
    }

    /// The record as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| format!("{{\"v\":{SCHEMA_VERSION},\"error\":\"{e}\"}}").into_bytes());
        line.push(b'\n');
        line
    }
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let mut text = String::with_capacity(24);
    let _ = crate::log::write_time(&mut text, *time);
    s.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_line_of_json_without_absent_fields() {
        let mut r = Record::new(Event::Bounced, "Q1", "a@b.test".into());
        r.time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_681_001_123);
        r.reply = Some("550 5.1.1 no \"such\"\nuser".into());
        let line = String::from_utf8(r.to_line()).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["event"], "bounced");
        assert_eq!(v["time"], "2025-12-02T13:10:01.123Z");
        assert_eq!(v["reply"], "550 5.1.1 no \"such\"\nuser");
        assert!(v.get("recipient").is_none() && v.get("recipients").is_none(), "{line}");
    }

    #[test]
    fn event_names_are_the_serialized_names() {
        for e in [Event::Received, Event::DsnSent, Event::AdminBounce, Event::Expired] {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.name()));
        }
    }
}
