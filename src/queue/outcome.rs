//! Recording an attempt's results on the envelope: delivered and failed recipients become
//! final, deferred ones get their next attempt from the retry schedule until `max_age`, when
//! they fail as expired. Pure: `now` is passed in.

use std::time::Duration;

use crate::delivery::attempt::Attempted;
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{Enhanced, Reply};
use crate::spool::{Envelope, RecipientState};

pub struct RetryPolicy<'a> {
    /// Waits between attempts; the last repeats.
    pub schedule: &'a [Duration],
    pub max_age: Duration,
    /// After this long in the queue a deferred recipient's sender is told once (None: never).
    pub delay_warning: Option<Duration>,
}

impl RetryPolicy<'_> {
    /// Unix seconds of the next attempt after `attempts` attempts.
    pub fn next_attempt(&self, attempts: u32, now: u64) -> u64 {
        let i = (attempts.max(1) as usize - 1).min(self.schedule.len() - 1);
        now + self.schedule[i].as_secs().max(1)
    }
}

/// RFC 3464 Action of a recipient in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    /// Delivered to a next hop that offers no DSN, so no further success notice will come.
    Relayed,
}

/// What a report's Diagnostic-Code says (RFC 3464 2.3.6): the remote server's own reply, or,
/// where no server said anything that decided it, our reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    Remote(Reply),
    Local(String),
}

impl Diagnostic {
    fn of(attempted: &Attempted, reply: &Reply) -> Diagnostic {
        if attempted.remote_said {
            Diagnostic::Remote(reply.clone())
        } else {
            Diagnostic::Local(reply.summary(STORED_LINES, STORED_OCTETS))
        }
    }
}

/// The status of a recipient that expired (RFC 3463: delivery time expired).
pub const EXPIRED: Enhanced = Enhanced(5, 4, 7);

/// Why a recipient was deferred or bounced, as a small fixed set (the metrics' `reason`
/// label): what the next hop said, by RFC 3463 subject, or what stopped us before it could.
pub fn reason_class(outcome: &RcptOutcome, remote_said: bool) -> &'static str {
    let Some(reply) = outcome.reply() else { return "overflow" };
    let e = reply.enhanced.unwrap_or(Enhanced((reply.code / 100) as u8, 0, 0));
    if remote_said {
        if reply.code == 421 || (reply.code / 100 == 4 && e.1 == 7) {
            return "throttled";
        }
        return match e.1 {
            1 => "recipient",
            2 => "mailbox",
            7 => "policy",
            _ => "remote",
        };
    }
    match (e.1, e.2) {
        (4, 3) | (4, 4) => "dns",
        (1, 2) | (1, 10) => "routing",
        (4, 1) | (4, 2) => "connection",
        (4, 6) => "loop",
        (4, 5) => "shaping",
        (7, _) => "tls",
        (5, _) | (6, 3) => "protocol",
        _ => "local",
    }
}

/// How much of a reply is kept in the spool and logs.
pub const STORED_LINES: usize = 5;
pub const STORED_OCTETS: usize = 900;

/// A recipient the sender is to hear about, from this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub index: usize,
    pub action: Action,
    /// Our verdict: the Status field and the report's text.
    pub reply: Reply,
    pub diagnostic: Diagnostic,
    pub remote: Option<String>,
}

/// What an attempt changed, for metrics, logs and the report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub delivered: usize,
    pub deferred: usize,
    pub failed: Vec<Notice>,
    /// Deferred past `delay_warning` for the first time, and NOTIFY allows DELAY.
    pub delayed: Vec<Notice>,
    /// Delivered with NOTIFY=SUCCESS to a next hop without DSN.
    pub relayed: Vec<Notice>,
}

/// Recipients shaping held back (a suspended destination, a full rate queue): not an attempt,
/// so they only move to `until` with the reason as their last reply. Once the message is past
/// `max_age` they are handed to `record` as deferred instead, which bounces them as expired.
pub fn postpone(
    env: &mut Envelope,
    postponed: &[(usize, u64, String)],
    results: &mut Vec<(usize, Attempted)>,
    now: u64,
    policy: &RetryPolicy<'_>,
) {
    let expired = now >= env.arrival.saturating_add(policy.max_age.as_secs());
    for (index, until, why) in postponed {
        if expired {
            let reply = Reply::new(451, Enhanced(4, 4, 5), why.clone());
            results.push((*index, Attempted::local(RcptOutcome::Deferred(reply))));
        } else {
            let r = &mut env.recipients[*index];
            r.next_attempt = Some(*until);
            r.last_reply = Some(format!("451 4.4.5 {why}"));
        }
    }
}

pub fn record(env: &mut Envelope, results: &[(usize, Attempted)], now: u64, policy: &RetryPolicy<'_>) -> Tally {
    let mut tally = Tally::default();
    let expired = now >= env.arrival.saturating_add(policy.max_age.as_secs());
    for (index, attempted) in results {
        record_one(env, *index, attempted, now, policy, expired, &mut tally);
        let r = &mut env.recipients[*index];
        if r.history.len() >= crate::spool::AttemptRecord::KEPT {
            r.history.remove(0);
        }
        let reply = r.last_reply.clone().unwrap_or_default();
        r.history.push(crate::spool::AttemptRecord { at: now, remote: attempted.remote.clone(), reply });
    }
    tally
}

/// One recipient's result on its record and in the tally.
fn record_one(
    env: &mut Envelope,
    index: usize,
    attempted: &Attempted,
    now: u64,
    policy: &RetryPolicy<'_>,
    expired: bool,
    tally: &mut Tally,
) {
    let index = &index;
    {
        let r = &mut env.recipients[*index];
        r.attempts += 1;
        match &attempted.outcome {
            RcptOutcome::Delivered(reply) => {
                r.state = RecipientState::Delivered;
                r.last_reply = Some(reply.summary(STORED_LINES, STORED_OCTETS));
                r.next_attempt = None;
                tally.delivered += 1;
                if !attempted.remote_dsn && r.params.notify.is_some_and(|n| n.success) {
                    tally.relayed.push(Notice {
                        index: *index,
                        action: Action::Relayed,
                        reply: reply.clone(),
                        diagnostic: Diagnostic::of(attempted, reply),
                        remote: attempted.remote.clone(),
                    });
                }
            }
            RcptOutcome::Failed(reply) => {
                r.state = RecipientState::Failed;
                r.last_reply = Some(reply.summary(STORED_LINES, STORED_OCTETS));
                r.next_attempt = None;
                let diagnostic = Diagnostic::of(attempted, reply);
                tally.failed.push(Notice {
                    index: *index,
                    action: Action::Failed,
                    reply: reply.clone(),
                    diagnostic,
                    remote: attempted.remote.clone(),
                });
            }
            RcptOutcome::Deferred(_) | RcptOutcome::Overflow if expired => {
                // The last reply, remote or ours, is the diagnostic; the expiry is our verdict.
                let diagnostic = match &attempted.outcome {
                    RcptOutcome::Deferred(reply) => Diagnostic::of(attempted, reply),
                    _ => Diagnostic::Local("too many recipients for one transaction".to_string()),
                };
                let reply = Reply::new(554, EXPIRED, format!("Delivery time expired after {} attempts", r.attempts));
                let last = match &diagnostic {
                    Diagnostic::Remote(remote) => remote.summary(STORED_LINES, STORED_OCTETS),
                    Diagnostic::Local(text) => text.clone(),
                };
                r.state = RecipientState::Failed;
                r.last_reply = Some(format!("{reply}; last: {last}"));
                r.next_attempt = None;
                tally.failed.push(Notice { index: *index, action: Action::Failed, reply, diagnostic, remote: attempted.remote.clone() });
            }
            RcptOutcome::Deferred(reply) => {
                r.last_reply = Some(reply.summary(STORED_LINES, STORED_OCTETS));
                r.next_attempt = Some(policy.next_attempt(r.attempts, now));
                tally.deferred += 1;
                let overdue = policy.delay_warning.is_some_and(|w| now >= env.arrival.saturating_add(w.as_secs()));
                if overdue && !r.delay_notified && r.params.notify.is_none_or(|n| n.delay) {
                    r.delay_notified = true;
                    tally.delayed.push(Notice {
                        index: *index,
                        action: Action::Delayed,
                        reply: reply.clone(),
                        diagnostic: Diagnostic::of(attempted, reply),
                        remote: attempted.remote.clone(),
                    });
                }
            }
            RcptOutcome::Overflow => {
                r.next_attempt = Some(now);
                tally.deferred += 1;
            }
        }
    }
}

/// Every recipient is delivered or failed: the message can leave the spool.
pub fn is_final(env: &Envelope) -> bool {
    env.recipients.iter().all(|r| r.state != RecipientState::Queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_latest_attempts_oldest_first() {
        let mut env = Envelope::report("Q".into(), Mailbox { local: "x".into(), domain: "y.test".into() }, "relay.test", 0);
        let schedule = [Duration::from_secs(60)];
        let policy = RetryPolicy { schedule: &schedule, max_age: Duration::from_secs(86400), delay_warning: None };
        for n in 0..7u64 {
            let reply = Reply::new(451, Enhanced(4, 3, 0), format!("busy {n}"));
            let attempted = Attempted::from_server(RcptOutcome::Deferred(reply), "mx.y.test", false);
            record(&mut env, &[(0, attempted)], 100 + n, &policy);
        }
        let history = &env.recipients[0].history;
        assert_eq!(history.len(), crate::spool::AttemptRecord::KEPT);
        assert_eq!((history[0].at, history[0].reply.as_str()), (102, "451 4.3.0 busy 2"));
        assert_eq!((history[4].at, history[4].remote.as_deref()), (106, Some("mx.y.test")));
        assert_eq!(env.recipients[0].attempts, 7);
    }
    use crate::smtp::address::{MailParams, Mailbox, RcptParams};
    use crate::spool::{Identity, RecipientRecord};

    fn env(n: usize) -> Envelope {
        Envelope {
            queue_id: "Q".into(),
            from: Some(Mailbox { local: "a".into(), domain: "x.test".into() }),
            params: MailParams::default(),
            recipients: (0..n)
                .map(|i| RecipientRecord {
                    mailbox: Mailbox { local: format!("r{i}"), domain: "y.test".into() },
                    params: RcptParams::default(),
                    state: RecipientState::Queued,
                    attempts: 0,
                    last_reply: None,
                    next_attempt: Some(1000),
                    delay_notified: false,
                    history: Vec::new(),
                })
                .collect(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "c".into(),
            identity: Identity::TrustedNetwork,
            listener: "127.0.0.1:25".parse().unwrap(),
            arrival: 1000,
            arrival_ms: None,
            body: None,
            held: false,
            message_id: None,
        }
    }

    fn att(o: RcptOutcome) -> Attempted {
        Attempted::from_server(o, "mx.y.test", false)
    }

    const SCHEDULE: [Duration; 3] = [Duration::from_secs(60), Duration::from_secs(300), Duration::from_secs(3600)];

    #[test]
    fn retry_schedule_steps_then_repeats_its_last_interval() {
        let p = RetryPolicy { schedule: &SCHEDULE, max_age: Duration::from_secs(86400), delay_warning: None };
        let waits: Vec<u64> = (1..=5).map(|a| p.next_attempt(a, 0)).collect();
        assert_eq!(waits, [60, 300, 3600, 3600, 3600]);
    }

    #[test]
    fn outcomes_set_states_and_the_next_attempt() {
        let mut e = env(3);
        let p = RetryPolicy { schedule: &SCHEDULE, max_age: Duration::from_secs(86400), delay_warning: None };
        let results = [
            (0, att(RcptOutcome::Delivered(Reply::new(250, Enhanced(2, 0, 0), "ok")))),
            (1, att(RcptOutcome::Failed(Reply::new(550, Enhanced(5, 1, 1), "unknown")))),
            (2, att(RcptOutcome::Deferred(Reply::new(451, Enhanced(4, 3, 0), "later")))),
        ];
        let t = record(&mut e, &results, 2000, &p);
        assert_eq!((t.delivered, t.deferred, t.failed.len()), (1, 1, 1));
        assert_eq!(e.recipients[0].state, RecipientState::Delivered);
        assert_eq!(e.recipients[1].state, RecipientState::Failed);
        assert_eq!(e.recipients[2].next_attempt, Some(2060));
        assert_eq!(e.recipients[2].last_reply.as_deref(), Some("451 4.3.0 later"));
        assert!(!is_final(&e));
        assert_eq!(e.next_due(), Some(2060));
    }

    #[test]
    fn a_delay_notice_goes_out_once_and_only_when_notify_allows() {
        use crate::smtp::address::Notify;
        let mut e = env(2);
        e.recipients[1].params.notify = Some(Notify { failure: true, ..Notify::default() });
        let p = RetryPolicy { schedule: &SCHEDULE, max_age: Duration::from_secs(86400), delay_warning: Some(Duration::from_secs(100)) };
        let later = || att(RcptOutcome::Deferred(Reply::new(451, Enhanced(4, 3, 0), "later")));
        let early = record(&mut e, &[(0, later()), (1, later())], 1050, &p);
        assert!(early.delayed.is_empty(), "not overdue yet");
        let first = record(&mut e, &[(0, later()), (1, later())], 1200, &p);
        assert_eq!(first.delayed.iter().map(|n| n.index).collect::<Vec<_>>(), [0], "NOTIFY without DELAY gets none");
        let second = record(&mut e, &[(0, later())], 1300, &p);
        assert!(second.delayed.is_empty(), "only once");
    }

    #[test]
    fn success_notices_only_where_the_next_hop_cannot_carry_them() {
        use crate::smtp::address::Notify;
        let mut e = env(2);
        for r in &mut e.recipients {
            r.params.notify = Some(Notify { success: true, ..Notify::default() });
        }
        let p = RetryPolicy { schedule: &SCHEDULE, max_age: Duration::from_secs(86400), delay_warning: None };
        let ok = Reply::new(250, Enhanced(2, 0, 0), "ok");
        let without = Attempted { remote_said: false, ..Attempted::from_server(RcptOutcome::Delivered(ok.clone()), "old.test", false) };
        let with = Attempted::from_server(RcptOutcome::Delivered(ok), "new.test", true);
        let t = record(&mut e, &[(0, without), (1, with)], 2000, &p);
        assert_eq!(t.relayed.iter().map(|n| (n.index, n.action)).collect::<Vec<_>>(), [(0, Action::Relayed)]);
    }

    #[test]
    fn reasons_are_a_small_fixed_set_from_the_reply() {
        let r = |code, e: Enhanced| RcptOutcome::Failed(Reply::new(code, e, "x"));
        assert_eq!(reason_class(&r(550, Enhanced(5, 1, 1)), true), "recipient");
        assert_eq!(reason_class(&r(552, Enhanced(5, 2, 2)), true), "mailbox");
        assert_eq!(reason_class(&r(550, Enhanced(5, 7, 1)), true), "policy");
        assert_eq!(reason_class(&r(451, Enhanced(4, 7, 28)), true), "throttled");
        assert_eq!(reason_class(&r(421, Enhanced(4, 3, 2)), true), "throttled");
        assert_eq!(reason_class(&r(451, Enhanced(4, 3, 0)), true), "remote");
        assert_eq!(reason_class(&r(451, Enhanced(4, 4, 3)), false), "dns");
        assert_eq!(reason_class(&r(556, Enhanced(5, 1, 10)), false), "routing");
        assert_eq!(reason_class(&r(451, Enhanced(4, 4, 1)), false), "connection");
        assert_eq!(reason_class(&r(451, Enhanced(4, 7, 4)), false), "tls");
        assert_eq!(reason_class(&r(554, Enhanced(5, 4, 6)), false), "loop");
        assert_eq!(reason_class(&RcptOutcome::Overflow, false), "overflow");
    }

    #[test]
    fn deferral_past_max_age_fails_as_expired() {
        let mut e = env(1);
        let p = RetryPolicy { schedule: &SCHEDULE, max_age: Duration::from_secs(600), delay_warning: None };
        let busy = Reply::new(421, Enhanced(4, 7, 0), "busy");
        let t = record(&mut e, &[(0, att(RcptOutcome::Deferred(busy.clone())))], 1600, &p);
        assert_eq!(t.failed.len(), 1);
        assert_eq!(t.failed[0].reply.enhanced, Some(Enhanced(5, 4, 7)));
        assert_eq!(t.failed[0].diagnostic, Diagnostic::Remote(busy), "the remote's last reply is the diagnostic");
        assert!(e.recipients[0].last_reply.as_deref().unwrap().ends_with("last: 421 4.7.0 busy"));
        assert!(is_final(&e));
        // Our own reason (no server answered) is a local diagnostic.
        let mut e = env(1);
        let down = Attempted::local(RcptOutcome::Deferred(Reply::new(451, Enhanced(4, 4, 1), "no host answered")));
        let t = record(&mut e, &[(0, down)], 1600, &p);
        assert_eq!(t.failed[0].diagnostic, Diagnostic::Local("451 4.4.1 no host answered".into()));
    }
}
