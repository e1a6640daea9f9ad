//! Backoff: a destination that throttles us (421, or a 4.7.x reply such as 4.7.28) is suspended
//! at once, one that cannot be reached after `after_failures` attempts in a row too. Each
//! suspension in a row lasts twice the one before, from `initial` up to `max`; the first
//! success resumes the destination and forgets the history.
//!
//! An outage counts once: an attempt that started before the current suspension began was
//! part of the burst that caused it (twenty connections refused within a few milliseconds are
//! one event), so what it reports, failure or answer, changes nothing. The level therefore
//! rises at most once per suspension period. Pure: time is passed in (milliseconds).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub after_failures: u32,
}

/// What an attempt told us about the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The destination answered normally (accepted or refused recipients).
    Answered,
    /// It asked us to slow down.
    Throttled(String),
    /// No host of it could be reached, or all refused the session.
    Unreachable(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    failures: u32,
    /// Suspensions in a row.
    level: u32,
    /// Unix milliseconds: when the current (or last) suspension began, and ends.
    since: Option<u64>,
    until: Option<u64>,
    reason: Option<String>,
}

impl Health {
    /// Records the signal of an attempt that started at `started` and ended at `now` (unix
    /// milliseconds); true when this suspended the destination. An attempt that started
    /// before (or as) the current suspension began changes nothing.
    pub fn record(&mut self, signal: &Signal, started: u64, now: u64, backoff: &Backoff) -> bool {
        if self.since.is_some_and(|since| started <= since) {
            return false;
        }
        match signal {
            Signal::Answered => {
                *self = Health::default();
                false
            }
            Signal::Throttled(why) => {
                self.suspend(now, format!("throttled: {why}"), backoff);
                true
            }
            Signal::Unreachable(why) => {
                self.failures += 1;
                if self.failures >= backoff.after_failures.max(1) {
                    self.failures = 0;
                    self.suspend(now, format!("unreachable: {why}"), backoff);
                    return true;
                }
                false
            }
        }
    }

    fn suspend(&mut self, now: u64, reason: String, backoff: &Backoff) {
        let factor = 1u32.checked_shl(self.level).unwrap_or(u32::MAX);
        let length = backoff.initial.checked_mul(factor).unwrap_or(backoff.max).min(backoff.max);
        self.level = self.level.saturating_add(1);
        self.since = Some(now);
        self.until = Some(now + (length.as_millis() as u64).max(1000));
        self.reason = Some(reason);
    }

    /// Until when (unix milliseconds) and why, while suspended at `now` (unix milliseconds).
    pub fn suspended(&self, now: u64) -> Option<(u64, &str)> {
        match (self.until, &self.reason) {
            (Some(until), Some(reason)) if until > now => Some((until, reason)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { initial: Duration::from_secs(60), max: Duration::from_secs(300), after_failures: 3 };
    const S: u64 = 1000;

    /// An attempt that starts and ends at `t` (seconds).
    fn at(h: &mut Health, signal: &Signal, t: u64) -> bool {
        h.record(signal, t * S, t * S, &B)
    }

    #[test]
    fn throttling_suspends_at_once_and_the_intervals_grow_to_the_cap() {
        let mut h = Health::default();
        let t = 1000;
        assert!(at(&mut h, &Signal::Throttled("421 4.7.28 slow down".into()), t));
        assert_eq!(h.suspended(t * S), Some(((t + 60) * S, "throttled: 421 4.7.28 slow down")));
        assert_eq!(h.suspended((t + 60) * S), None, "over when the time is up");
        at(&mut h, &Signal::Throttled("again".into()), t + 60);
        assert_eq!(h.suspended((t + 60) * S).unwrap().0, (t + 60 + 120) * S);
        at(&mut h, &Signal::Throttled("again".into()), t + 180);
        assert_eq!(h.suspended((t + 180) * S).unwrap().0, (t + 180 + 240) * S);
        at(&mut h, &Signal::Throttled("again".into()), t + 420);
        assert_eq!(h.suspended((t + 420) * S).unwrap().0, (t + 420 + 300) * S, "capped at max");
        // The first success resumes it and forgets the history.
        at(&mut h, &Signal::Answered, t + 720);
        assert_eq!(h.suspended((t + 720) * S), None);
        at(&mut h, &Signal::Throttled("new".into()), t + 800);
        assert_eq!(h.suspended((t + 800) * S).unwrap().0, (t + 860) * S);
    }

    #[test]
    fn connection_failures_suspend_after_the_configured_count_in_a_row() {
        let mut h = Health::default();
        let down = Signal::Unreachable("connection refused".into());
        assert!(!at(&mut h, &down, 10));
        assert!(!at(&mut h, &down, 11));
        // An answer in between starts the count again.
        at(&mut h, &Signal::Answered, 12);
        assert!(!at(&mut h, &down, 13));
        assert!(!at(&mut h, &down, 14));
        assert!(at(&mut h, &down, 15));
        assert_eq!(h.suspended(15 * S), Some((75 * S, "unreachable: connection refused")));
    }

    /// Twenty refusals of attempts started together within 5 ms: one suspension at the first
    /// level, not four levels (the failures after the third belong to the same burst).
    #[test]
    fn a_burst_of_failures_raises_the_level_once() {
        let mut h = Health::default();
        let down = Signal::Unreachable("connection refused".into());
        let start = 50_000;
        let suspended = (0..20).filter(|i| h.record(&down, start, start + 5 * i / 20, &B)).count();
        assert_eq!(suspended, 1);
        assert_eq!(h.suspended(start + 5), Some((start + 60 * S, "unreachable: connection refused")), "the first level: 60 s");
        // An answer from the same burst does not end the suspension either.
        assert!(!h.record(&Signal::Answered, start, start + 6, &B));
        assert!(h.suspended(start + 6).is_some());
        // Attempts after it ends count again, and the next suspension is the next level.
        let later = start + 61 * S;
        for k in 0..3 {
            h.record(&down, later + k, later + k, &B);
        }
        assert_eq!(h.suspended(later + 2).unwrap().0, later + 2 + 120 * S);
    }
}
