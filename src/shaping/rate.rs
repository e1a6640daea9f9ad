//! Rates ("500/min", "10/s burst 20") and the GCRA limiter that enforces them.
//!
//! The limiter is pure: time comes in as a `Duration` since any fixed origin, so tests run on
//! virtual time and production passes `Instant::elapsed` of a base instant. GCRA keeps one
//! number per limiter (the theoretical arrival time), lets `burst` events through at once, and
//! then spaces them `period / count` apart.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `count` events per `unit`, with up to `burst` at once (default 1: evenly spaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub unit: Unit,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Second => "s",
            Unit::Minute => "min",
            Unit::Hour => "h",
            Unit::Day => "d",
        }
    }
}

impl Rate {
    /// The time between two events at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.unit.seconds()) / self.count
    }

    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(1)
    }

    /// Events per second, for metrics and the queue summary.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.unit.seconds() as f64
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let bad = || format!("\"{text}\" is not a rate: write COUNT/UNIT (s, min, h or d), e.g. \"500/min\" or \"10/s burst 20\"");
        let mut words = text.split_whitespace();
        let (count, unit) = words.next().and_then(|r| r.split_once('/')).ok_or_else(bad)?;
        let count: u32 = count.parse().map_err(|_| bad())?;
        let unit = match unit {
            "s" | "sec" | "second" => Unit::Second,
            "min" | "minute" => Unit::Minute,
            "h" | "hour" => Unit::Hour,
            "d" | "day" => Unit::Day,
            _ => return Err(bad()),
        };
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => None,
            (Some("burst"), Some(n), None) => Some(n.parse::<u32>().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        if count == 0 || burst == Some(0) {
            return Err(format!("\"{text}\": a rate needs a count and burst of at least 1 (leave the key out for no limit)"));
        }
        Ok(Rate { count, unit, burst })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit.name())?;
        if let Some(b) = self.burst {
            write!(f, " burst {b}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        // A visitor, so a bad value is reported at its own key (not its parent's).
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate such as \"500/min\" or \"10/s burst 20\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

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
    fn rates_parse_and_print_back_the_same_way() {
        for text in ["500/min", "10/s", "10000/h", "10/s burst 20", "1/d"] {
            assert_eq!(rate(text).to_string(), text);
        }
        assert_eq!(rate("3/second").to_string(), "3/s");
        assert_eq!(rate("500/min").interval(), Duration::from_millis(120));
        for bad in ["", "10", "10/fortnight", "x/s", "0/s", "10/s burst", "10/s burst 0", "10/s bust 3", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} parsed");
        }
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
