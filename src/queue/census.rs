//! The queue counted by state, for the metrics: messages and recipients new (never tried),
//! active (being delivered), deferred (tried, waiting for a retry), waiting (held back by
//! shaping: a suspended destination or a full rate line) and held (by an operator); and the
//! oldest message's arrival, which is the first in the spool (queue ids sort by time).
//!
//! Counting reads every envelope, so it runs on a blocking thread now and then (see
//! [`interval`]), not at each scrape; the scrape reports the last count and its age.

use std::collections::HashSet;
use std::time::Duration;

use crate::metrics::text::Gauge;
use crate::spool::{Envelope, RecipientState};

pub const STATES: [&str; 5] = ["new", "active", "deferred", "waiting", "held"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Per state, in [`STATES`] order.
    pub messages: [u64; 5],
    pub recipients: [u64; 5],
    /// Unix seconds.
    pub oldest_arrival: Option<u64>,
    /// When it was taken (unix seconds) and how long it took.
    pub taken_at: u64,
    pub took: Duration,
}

/// How far along each state is, for a message's state (its furthest recipient's): held and
/// active win, then deferred over waiting over new.
const RANK: [u8; 5] = [0, 3, 2, 1, 4];

fn state_of(env: &Envelope, r: &crate::spool::RecipientRecord, in_flight: bool) -> usize {
    if env.held {
        4
    } else if in_flight {
        1
    } else if r.attempts > 0 {
        2
    } else if r.last_reply.is_some() {
        3
    } else {
        0
    }
}

/// Counts `envelopes`; `in_flight` are the messages being delivered now.
pub fn count(envelopes: impl Iterator<Item = Envelope>, in_flight: &HashSet<String>) -> Census {
    let mut census = Census::default();
    for env in envelopes {
        let flying = in_flight.contains(&env.queue_id);
        let mut message_state = None;
        for r in env.recipients.iter().filter(|r| r.state == RecipientState::Queued) {
            let s = state_of(&env, r, flying);
            census.recipients[s] += 1;
            message_state = Some(message_state.map_or(s, |m: usize| if RANK[s] > RANK[m] { s } else { m }));
        }
        if let Some(s) = message_state {
            census.messages[s] += 1;
            census.oldest_arrival = Some(census.oldest_arrival.map_or(env.arrival, |o| o.min(env.arrival)));
        }
    }
    census
}

/// The pause before the next count: `configured` (`metrics.queue_census_interval`), or
/// twenty times what the last took, so counting a huge queue costs at most about 5% of one
/// core; never under 100 ms.
pub fn interval(configured: Duration, took: Duration) -> Duration {
    (took * 20).max(configured).max(Duration::from_millis(100))
}

/// The census's series, read at scrape time `now` (unix seconds).
pub fn render(census: Option<&Census>, now: u64, out: &mut String) {
    let Some(c) = census else { return }; // not counted yet: no series rather than zeros
    for (name, help, values) in [
        ("sluice_queue_messages", "Queued messages by state (new, active, deferred, waiting, held)", &c.messages),
        ("sluice_queue_recipients", "Queued recipients by state", &c.recipients),
    ] {
        let mut g = Gauge::new(out, name, help);
        for (state, value) in STATES.iter().zip(values.iter()) {
            g.labelled(&[("state", state)], *value as f64);
        }
    }
    let age = c.oldest_arrival.map_or(0, |a| now.saturating_sub(a));
    Gauge::new(out, "sluice_queue_oldest_message_age_seconds", "Age of the oldest queued message (0 when the queue is empty)")
        .value(age as f64);
    Gauge::new(out, "sluice_queue_census_age_seconds", "How old the queue counts above are").value(now.saturating_sub(c.taken_at) as f64);
    Gauge::new(out, "sluice_queue_census_duration_seconds", "How long the last count of the queue took").value(c.took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;
    use crate::spool::RecipientRecord;

    fn env(id: &str, arrival: u64, recipients: Vec<RecipientRecord>) -> Envelope {
        let mut e = Envelope::report(id.into(), Mailbox { local: "a".into(), domain: "b.test".into() }, "relay.test", arrival);
        e.recipients = recipients;
        e
    }

    fn rcpt(attempts: u32, reply: Option<&str>, state: RecipientState) -> RecipientRecord {
        RecipientRecord {
            attempts,
            last_reply: reply.map(str::to_string),
            state,
            ..RecipientRecord::queued(Mailbox { local: "r".into(), domain: "d.test".into() }, Default::default(), 0)
        }
    }

    #[test]
    fn each_state_is_counted_for_messages_and_recipients() {
        let q = RecipientState::Queued;
        let mut held = env("H", 50, vec![rcpt(3, Some("451"), q)]);
        held.held = true;
        let envelopes = vec![
            env("N", 100, vec![rcpt(0, None, q), rcpt(0, None, q)]),
            env("A", 90, vec![rcpt(1, Some("451"), q)]),
            env("D", 80, vec![rcpt(0, None, q), rcpt(2, Some("451 busy"), q), rcpt(1, Some("250"), RecipientState::Delivered)]),
            // Deferred and waiting recipients: the message counts as deferred.
            env("M", 75, vec![rcpt(0, Some("451 4.4.5 Waiting for the message rate"), q), rcpt(1, Some("451 busy"), q)]),
            env("W", 70, vec![rcpt(0, Some("451 4.4.5 Waiting for the message rate"), q)]),
            held,
        ];
        let in_flight: HashSet<String> = ["A".to_string()].into();
        let c = count(envelopes.into_iter(), &in_flight);
        assert_eq!(c.messages, [1, 1, 2, 1, 1]);
        assert_eq!(c.recipients, [3, 1, 2, 2, 1], "a delivered recipient is not queued");
        assert_eq!(c.oldest_arrival, Some(50));
        let mut out = String::new();
        render(Some(&Census { taken_at: 1000, ..c }), 1030, &mut out);
        assert!(out.contains("sluice_queue_messages{state=\"held\"} 1"), "{out}");
        assert!(out.contains("sluice_queue_recipients{state=\"new\"} 3"));
        assert!(out.contains("sluice_queue_oldest_message_age_seconds 980"));
        assert!(out.contains("sluice_queue_census_age_seconds 30"));
    }

    #[test]
    fn an_empty_queue_has_no_oldest_age_and_no_count_yet_has_no_series() {
        let c = count(std::iter::empty(), &HashSet::new());
        let mut out = String::new();
        render(Some(&c), 10, &mut out);
        assert!(out.contains("sluice_queue_oldest_message_age_seconds 0"));
        let mut none = String::new();
        render(None, 10, &mut none);
        assert!(none.is_empty());
        let fifteen = Duration::from_secs(15);
        assert_eq!(interval(fifteen, Duration::from_millis(10)), fifteen);
        assert_eq!(interval(fifteen, Duration::from_secs(2)), Duration::from_secs(40));
        assert_eq!(interval(Duration::ZERO, Duration::ZERO), Duration::from_millis(100));
    }
}
