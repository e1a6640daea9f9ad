//! How long a message's data may take: `limits.max_data_time` in all, and on average at least
//! `limits.min_data_rate` bytes a second once `data_timeout` has passed since it began. The
//! per-read `data_timeout` alone lets a client that sends a byte just before each timeout
//! hold a slot (and a body buffer) for as long as it likes. BDAT counts from its first chunk
//! to its last, pauses between chunks included.

use std::time::{Duration, Instant};

use crate::config::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Fine,
    /// Past `max_data_time`.
    TooLong,
    /// Under `min_data_rate` on average.
    TooSlow,
}

/// The data of the transaction under way: when it began and how much came.
#[derive(Debug, Default)]
pub struct DataPace {
    /// (transaction serial, when its data began)
    began: Option<(u64, Instant)>,
    bytes: u64,
}

impl DataPace {
    /// Before each read: `receiving` while message data of transaction `serial` is under
    /// way (between BDAT chunks too); `in_transaction` while that transaction lasts.
    pub fn before_read(&mut self, serial: u64, receiving: bool, in_transaction: bool, now: Instant) {
        match self.began {
            Some((s, _)) if s == serial && in_transaction => {}
            _ if receiving => {
                self.began = Some((serial, now));
                self.bytes = 0;
            }
            _ => self.began = None,
        }
    }

    /// Bytes read while data is under way.
    pub fn read(&mut self, n: usize) {
        if self.began.is_some() {
            self.bytes += n as u64;
        }
    }

    /// The longest the next read may wait: `normal`, or less if the data's time runs out first.
    pub fn read_limit(&self, limits: &Limits, normal: Duration, now: Instant) -> Duration {
        match self.began {
            Some((_, began)) => normal.min(limits.max_data_time.0.saturating_sub(now - began)),
            None => normal,
        }
    }

    pub fn judge(&self, limits: &Limits, now: Instant) -> Pace {
        let Some((_, began)) = self.began else { return Pace::Fine };
        let elapsed = now - began;
        if elapsed >= limits.max_data_time.0 {
            return Pace::TooLong;
        }
        let floor = limits.min_data_rate as f64 * elapsed.as_secs_f64();
        if elapsed > limits.data_timeout.0 && (self.bytes as f64) < floor { Pace::TooSlow } else { Pace::Fine }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let mut l = Limits::default();
        l.data_timeout.0 = Duration::from_secs(60);
        l.max_data_time.0 = Duration::from_secs(600);
        l.min_data_rate = 100;
        l
    }

    #[test]
    fn slow_data_is_judged_only_after_the_grace_and_on_average() {
        let (l, t0) = (limits(), Instant::now());
        let mut p = DataPace::default();
        p.before_read(1, true, true, t0);
        p.read(10);
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(59)), Pace::Fine, "within data_timeout");
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(61)), Pace::TooSlow);
        p.read(6100);
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(61)), Pace::Fine, "a burst makes up the average");
    }

    #[test]
    fn all_data_must_end_within_max_data_time_and_reads_wait_no_longer() {
        let (l, t0) = (limits(), Instant::now());
        let mut p = DataPace::default();
        p.before_read(1, true, true, t0);
        p.read(1_000_000_000);
        let late = t0 + Duration::from_secs(590);
        assert_eq!(p.read_limit(&l, Duration::from_secs(60), late), Duration::from_secs(10));
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(600)), Pace::TooLong);
    }

    #[test]
    fn bdat_pauses_count_and_a_new_transaction_starts_afresh() {
        let (l, t0) = (limits(), Instant::now());
        let mut p = DataPace::default();
        p.before_read(1, true, true, t0);
        // Between chunks: waiting for a command, the transaction still under way.
        p.before_read(1, false, true, t0 + Duration::from_secs(300));
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(300)), Pace::TooSlow);
        p.before_read(1, false, false, t0 + Duration::from_secs(301));
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(301)), Pace::Fine, "no data under way");
        p.before_read(2, true, true, t0 + Duration::from_secs(302));
        assert_eq!(p.judge(&l, t0 + Duration::from_secs(303)), Pace::Fine);
    }
}
