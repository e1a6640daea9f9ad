//! What a session did, for the mail log: its commands by verb, and each refusal with the
//! command it answered and the addresses involved.

use super::super::command::{Command, Recipient};
use super::super::reply::Reply;

/// Every verb the session counts; `unknown` is a line that did not parse.
const VERBS: [&str; 15] =
    ["helo", "ehlo", "mail", "rcpt", "data", "bdat", "rset", "noop", "quit", "vrfy", "expn", "help", "starttls", "auth", "unknown"];

/// Commands received, by verb.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    counts: [u32; VERBS.len()],
}

impl Tally {
    fn count(&mut self, verb: &'static str) {
        if let Some(i) = VERBS.iter().position(|v| *v == verb) {
            self.counts[i] = self.counts[i].saturating_add(1);
        }
    }

    pub fn total(&self) -> u32 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }

    /// The verbs used, in a fixed order, with their counts.
    pub fn used(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        VERBS.iter().zip(self.counts).filter(|(_, n)| *n > 0).map(|(v, n)| (*v, n))
    }
}

/// A refusal the session wrote (any 4xx or 5xx), for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reply: Reply,
    /// The verb it answered; `None` when the session was closed from outside (timeouts).
    pub command: Option<&'static str>,
    /// The sender of the transaction, or the one MAIL asked for.
    pub from: Option<String>,
    /// The recipient RCPT asked for.
    pub to: Option<String>,
}

/// The command being answered.
#[derive(Debug, Clone, Default)]
pub(super) struct Current {
    pub verb: Option<&'static str>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Current {
    pub fn of(command: Option<&Command>, tally: &mut Tally) -> Current {
        let verb = command.map_or("unknown", Command::verb);
        tally.count(verb);
        let (from, to) = match command {
            Some(Command::Mail { from, .. }) => (Some(from.as_ref().map_or_else(|| "<>".to_string(), |m| format!("<{m}>"))), None),
            Some(Command::Rcpt { to: Recipient::Mailbox(m), .. }) => (None, Some(format!("<{m}>"))),
            Some(Command::Rcpt { to: Recipient::Postmaster, .. }) => (None, Some("<Postmaster>".to_string())),
            _ => (None, None),
        };
        Current { verb: Some(verb), from, to }
    }
}
