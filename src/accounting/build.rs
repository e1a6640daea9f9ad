//! Records from a spooled envelope: the facts every record about a message repeats.

use super::{Event, Record};
use crate::spool::{Envelope, RecipientState};

fn sender(env: &Envelope) -> String {
    env.from.as_ref().map(|m| m.to_string()).unwrap_or_default()
}

fn base(event: Event, env: &Envelope) -> Record {
    let mut r = Record::new(event, &env.queue_id, sender(env));
    r.message_id = env.message_id.clone();
    r.size = env.body.as_ref().map(|b| b.len);
    r.listener = Some(env.listener.to_string());
    r.client = Some(env.client_ip.to_string());
    r.identity = Some(env.identity.to_string());
    r.priority = env.params.priority;
    r
}

/// A record about the whole message (received, held, released, deleted), naming its
/// recipients still queued: all of them on arrival.
pub fn message_record(event: Event, env: &Envelope) -> Record {
    let mut r = base(event, env);
    r.recipients = env.recipients.iter().filter(|r| r.state == RecipientState::Queued).map(|r| r.mailbox.to_string()).collect();
    r
}

/// A record about recipient `index` of the message, as its record stands now.
pub fn recipient_record(event: Event, env: &Envelope, index: usize) -> Record {
    let mut r = base(event, env);
    let rcpt = &env.recipients[index];
    r.recipient = Some(rcpt.mailbox.to_string());
    r.destination = Some(rcpt.mailbox.domain.to_ascii_lowercase());
    r.attempt = Some(rcpt.attempts);
    r.reply = rcpt.last_reply.clone();
    r
}
