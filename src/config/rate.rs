//! Rates as the config writes them ("500/min", "10/s burst 20"): parsed, printed back the same
//! way, and read from YAML with the error at the key's own line.

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
            // The same spellings as durations take.
            "s" | "sec" | "secs" | "second" | "seconds" => Unit::Second,
            "m" | "min" | "mins" | "minute" | "minutes" => Unit::Minute,
            "h" | "hr" | "hrs" | "hour" | "hours" => Unit::Hour,
            "d" | "day" | "days" => Unit::Day,
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
        assert_eq!(rate("30/m").to_string(), "30/min");
        assert_eq!(rate("2/hours").to_string(), "2/h");
        assert_eq!(rate("500/min").interval(), Duration::from_millis(120));
        for bad in ["", "10", "10/fortnight", "x/s", "0/s", "10/s burst", "10/s burst 0", "10/s bust 3", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} parsed");
        }
    }
}
