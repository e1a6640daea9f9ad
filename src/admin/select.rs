//! Which messages a `sluice queue` command is for: ids and filters (sender, recipient,
//! destination domain, state, age), each one given must hold.

use serde::{Deserialize, Serialize};

use super::protocol::Selection;
use crate::smtp::address::Mailbox;
use crate::spool::{Envelope, RecipientState};

/// A message's state as `--state` names it (Postfix's hold / deferred / incoming queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// Waiting for its first attempt.
    Queued,
    /// Attempted at least once, still queued.
    Deferred,
    /// Held by an operator.
    Held,
}

pub fn state_of(env: &Envelope) -> QueueState {
    if env.held {
        QueueState::Held
    } else if env.recipients.iter().any(|r| r.state == RecipientState::Queued && r.attempts > 0) {
        QueueState::Deferred
    } else {
        QueueState::Queued
    }
}

/// `user@domain` matches that address; `domain` or `@domain` every address at the domain.
/// Case is ignored.
fn address_matches(pattern: &str, mailbox: &Mailbox) -> bool {
    match pattern.strip_prefix('@') {
        None if pattern.contains('@') => mailbox.to_string().eq_ignore_ascii_case(pattern),
        _ => mailbox.domain.eq_ignore_ascii_case(pattern.trim_start_matches('@')),
    }
}

impl Selection {
    /// Whether `env` is selected at `now` (unix seconds): every criterion given holds (with
    /// none given, every message). `--domain` looks at recipients still queued.
    pub fn matches(&self, env: &Envelope, now: u64) -> bool {
        let queued = || env.recipients.iter().filter(|r| r.state == RecipientState::Queued);
        (self.ids.is_empty() || self.ids.contains(&env.queue_id))
            && self.domain.as_deref().is_none_or(|d| queued().any(|r| r.mailbox.domain.eq_ignore_ascii_case(d)))
            && self
                .from
                .as_deref()
                .is_none_or(|p| env.from.as_ref().is_some_and(|f| address_matches(p, f)) || (p == "<>" && env.from.is_none()))
            && self.to.as_deref().is_none_or(|p| env.recipients.iter().any(|r| address_matches(p, &r.mailbox)))
            && self.state.is_none_or(|s| state_of(env) == s)
            && self.older_than.is_none_or(|age| now.saturating_sub(env.arrival) >= age)
    }
}

/// The queued messages a selection names for an action, and the recipient domains they have
/// queued (for a flush to resume); the first unknown id, if one is named.
/// The envelopes pass one at a time: only the selected ids are kept.
pub fn for_action(
    envelopes: impl IntoIterator<Item = Envelope>,
    selection: &Selection,
    now: u64,
) -> Result<(Vec<String>, Vec<String>), String> {
    let wanted = selection.domain.as_deref().map(str::to_ascii_lowercase);
    let mut named_seen = vec![false; selection.ids.len()];
    let mut ids = Vec::new();
    let mut domains = Vec::new();
    for e in envelopes {
        if let Some(i) = selection.ids.iter().position(|id| *id == e.queue_id) {
            named_seen[i] = true;
        }
        if !selection.matches(&e, now) {
            continue;
        }
        let queued: Vec<String> =
            e.recipients.iter().filter(|r| r.state == RecipientState::Queued).map(|r| r.mailbox.domain.to_ascii_lowercase()).collect();
        if !queued.is_empty() {
            ids.push(e.queue_id.clone());
            domains.extend(queued.into_iter().filter(|d| wanted.as_ref().is_none_or(|w| w == d)));
        }
    }
    if let Some(i) = named_seen.iter().position(|seen| !seen) {
        return Err(selection.ids[i].clone());
    }
    domains.extend(wanted);
    domains.sort();
    domains.dedup();
    Ok((ids, domains))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RecipientRecord;

    fn mailbox(s: &str) -> Mailbox {
        crate::smtp::address::parse_mailbox(s, false).unwrap()
    }

    fn envelope(id: &str, from: &str, to: &[&str], arrival: u64) -> Envelope {
        let mut e = Envelope::report(id.into(), mailbox(to[0]), "relay.test", arrival);
        e.from = Some(mailbox(from));
        e.recipients = to.iter().map(|t| RecipientRecord::queued(mailbox(t), Default::default(), arrival)).collect();
        e
    }

    #[test]
    fn every_criterion_given_must_hold() {
        let a = envelope("A", "app@shop.test", &["x@gmail.test"], 1000);
        let mut b = envelope("B", "cron@host.test", &["y@Yahoo.test", "z@gmail.test"], 5000);
        b.recipients[0].attempts = 2;
        let sel = |f: fn(&mut Selection)| {
            let mut s = Selection::default();
            f(&mut s);
            s
        };
        let picks = |s: &Selection| [&a, &b].iter().filter(|e| s.matches(e, 6000)).map(|e| e.queue_id.clone()).collect::<Vec<_>>();
        assert_eq!(picks(&Selection::default()), ["A", "B"]);
        assert_eq!(picks(&sel(|s| s.from = Some("APP@shop.test".into()))), ["A"]);
        assert_eq!(picks(&sel(|s| s.from = Some("@host.test".into()))), ["B"]);
        assert_eq!(picks(&sel(|s| s.to = Some("yahoo.test".into()))), ["B"]);
        assert_eq!(picks(&sel(|s| s.domain = Some("gmail.test".into()))), ["A", "B"]);
        assert_eq!(picks(&sel(|s| s.state = Some(QueueState::Deferred))), ["B"]);
        assert_eq!(picks(&sel(|s| s.state = Some(QueueState::Queued))), ["A"]);
        assert_eq!(picks(&sel(|s| s.older_than = Some(2000))), ["A"]);
        assert_eq!(
            picks(&sel(|s| {
                s.domain = Some("gmail.test".into());
                s.older_than = Some(2000);
            })),
            ["A"]
        );
        assert_eq!(for_action([a.clone(), b.clone()], &sel(|s| s.ids = vec!["C".into()]), 6000), Err("C".into()));
        let picked = for_action([a.clone(), b.clone()], &sel(|s| s.to = Some("yahoo.test".into())), 6000).unwrap();
        assert_eq!(picked, (vec!["B".to_string()], vec!["gmail.test".to_string(), "yahoo.test".to_string()]));
    }
}
