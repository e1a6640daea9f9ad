//! The GCRA limiter that enforces rates (the `Rate` values themselves are config's).
//!
//! The limiter is pure: time comes in as a `Duration` since any fixed origin, so tests run on
//! virtual time and production passes `Instant::elapsed` of a base instant. GCRA keeps one
//! number per limiter (the theoretical arrival time), lets `burst` events through at once, and
//! then spaces them `period / count` apart.

use std::time::Duration;

pub use crate::config::{Rate, Unit};

/// Generic cell rate algorithm over caller-supplied time.
#[derive(Debug, Clone)]
pub struct Gcra {
    interval: Duration,
    tolerance: Duration,
    /// When the next event would be due at the steady rate.
    tat: Duration,
}

impl Gcra {
    pub fn new(rate: &Rate) -> Gcra {
        let interval = rate.interval();
        Gcra { interval, tolerance: interval * (rate.burst() - 1), tat: Duration::ZERO }
    }

    /// One of `nodes` equal shares of `rate`: the interval `nodes` times as long, the burst
    /// divided (at least one).
    pub fn share(rate: &Rate, nodes: u32) -> Gcra {
        let nodes = nodes.max(1);
        let interval = rate.interval() * nodes;
        let burst = (rate.burst() / nodes).max(1);
        Gcra { interval, tolerance: interval * (burst - 1), tat: Duration::ZERO }
    }

    /// How long from `now` until an event may pass (zero: now).
    pub fn wait(&self, now: Duration) -> Duration {
        self.tat.saturating_sub(self.tolerance).saturating_sub(now)
    }

    /// Books the next event: it may pass after the returned wait. An event up to one
    /// interval late keeps the schedule (a waiter's timer fires a little after its token, and
    /// that must not slow the rate down); later than that, the schedule starts again from now,
    /// so idle time never piles up into a burst.
    pub fn reserve(&mut self, now: Duration) -> Duration {
        let wait = self.wait(now);
        let base = if now > self.tat + self.interval { now } else { self.tat.max(now.saturating_sub(self.interval)) };
        self.tat = base + self.interval;
        wait
    }

    /// Learns that the schedule (what other nodes booked too, say) runs `ahead` of `now`.
    pub fn learn(&mut self, now: Duration, ahead: Duration) {
        self.tat = self.tat.max(now + ahead);
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn a_schedule_learnt_from_elsewhere_holds_events_back() {
        let mut g = Gcra::new(&rate("1/s burst 2"));
        let t0 = Duration::from_secs(100);
        assert_eq!(g.wait(t0), Duration::ZERO);
        // Others booked three: the schedule runs 3 s ahead, one interval past the burst.
        g.learn(t0, Duration::from_secs(3));
        assert_eq!(g.wait(t0), Duration::from_secs(2));
        g.learn(t0, Duration::from_secs(1));
        assert_eq!(g.wait(t0), Duration::from_secs(2), "an older view changes nothing");
        let mut share = Gcra::share(&rate("10/s burst 4"), 2);
        assert_eq!(share.interval(), Duration::from_millis(200));
        assert_eq!(share.reserve(t0), Duration::ZERO);
        assert_eq!(share.reserve(t0), Duration::ZERO, "a burst of 2 each");
        assert_eq!(share.reserve(t0), Duration::from_millis(200));
    }

    #[test]
    fn steady_rate_spaces_events_evenly() {
        let mut g = Gcra::new(&rate("10/s"));
        let t0 = Duration::from_secs(100);
        assert_eq!(g.reserve(t0), Duration::ZERO);
        // The next ones are booked 100 ms apart.
        assert_eq!(g.reserve(t0), Duration::from_millis(100));
        assert_eq!(g.reserve(t0), Duration::from_millis(200));
        // Time passes: the booked ones have gone, the next waits for its turn.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(g.wait(t1), Duration::from_millis(50));
        // After an idle second the first passes at once again (no credit piles up).
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!(g.reserve(t2), Duration::ZERO);
        assert_eq!(g.reserve(t2), Duration::from_millis(100));
    }

    #[test]
    fn late_wakeups_do_not_slow_the_rate_down() {
        // Each waiter wakes 3 ms after its token (a timer's usual lateness), at 50/s.
        let mut g = Gcra::new(&rate("50/s"));
        let mut now = Duration::from_secs(1);
        let end = now + Duration::from_secs(60);
        let mut passed = 0;
        while now < end {
            now += g.reserve(now) + Duration::from_millis(3);
            passed += 1;
        }
        assert!((2999..=3001).contains(&passed), "{passed} events in 60 s at 50/s");
    }

    #[test]
    fn burst_lets_that_many_through_at_once() {
        let mut g = Gcra::new(&rate("1/s burst 3"));
        let t0 = Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(g.reserve(t0), Duration::ZERO);
        }
        assert_eq!(g.reserve(t0), Duration::from_secs(1));
    }

    #[test]
    fn over_a_long_virtual_run_the_rate_holds() {
        // Events as fast as allowed for 60 virtual seconds at 500/min: 500 (+1 at t = 0).
        let mut g = Gcra::new(&rate("500/min"));
        let mut now = Duration::from_secs(1);
        let end = now + Duration::from_secs(60);
        let mut passed = 0;
        while now < end {
            now += g.reserve(now);
            if now < end {
                passed += 1;
            }
        }
        assert_eq!(passed, 500);
    }
}
