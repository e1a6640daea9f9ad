//! Backoff: a destination that throttles us (421, or a 4.7.x reply such as 4.7.28) is suspended
//! at once, one that cannot be reached after `after_failures` attempts in a row too. Each
//! suspension in a row lasts twice the one before, from `initial` up to `max`; the first
//! success resumes the destination and forgets the history. Pure: time is passed in.

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
    /// Unix seconds.
    until: Option<u64>,
    reason: Option<String>,
}

impl Health {
    /// Records an attempt's signal at `now` (unix seconds); true when this suspended it.
    pub fn record(&mut self, signal: &Signal, now: u64, backoff: &Backoff) -> bool {
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
        self.until = Some(now + length.as_secs().max(1));
        self.reason = Some(reason);
    }

    /// Until when (unix seconds) and why, while suspended at `now`.
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

    #[test]
    fn throttling_suspends_at_once_and_the_intervals_grow_to_the_cap() {
        let mut h = Health::default();
        let t = 1000;
        assert!(h.record(&Signal::Throttled("421 4.7.28 slow down".into()), t, &B));
        assert_eq!(h.suspended(t), Some((t + 60, "throttled: 421 4.7.28 slow down")));
        assert_eq!(h.suspended(t + 60), None, "over when the time is up");
        h.record(&Signal::Throttled("again".into()), t + 60, &B);
        assert_eq!(h.suspended(t + 60).unwrap().0, t + 60 + 120);
        h.record(&Signal::Throttled("again".into()), t + 180, &B);
        assert_eq!(h.suspended(t + 180).unwrap().0, t + 180 + 240);
        h.record(&Signal::Throttled("again".into()), t + 420, &B);
        assert_eq!(h.suspended(t + 420).unwrap().0, t + 420 + 300, "capped at max");
        // The first success resumes it and forgets the history.
        h.record(&Signal::Answered, t + 720, &B);
        assert_eq!(h.suspended(t + 720), None);
        h.record(&Signal::Throttled("new".into()), t + 800, &B);
        assert_eq!(h.suspended(t + 800).unwrap().0, t + 860);
    }

    #[test]
    fn connection_failures_suspend_after_the_configured_count_in_a_row() {
        let mut h = Health::default();
        let down = Signal::Unreachable("connection refused".into());
        assert!(!h.record(&down, 10, &B));
        assert!(!h.record(&down, 11, &B));
        // An answer in between starts the count again.
        h.record(&Signal::Answered, 12, &B);
        assert!(!h.record(&down, 13, &B));
        assert!(!h.record(&down, 14, &B));
        assert!(h.record(&down, 15, &B));
        assert_eq!(h.suspended(15), Some((75, "unreachable: connection refused")));
    }
}
