//! Queue ids: unique across restarts, ordered by time, written with [0-9A-Z] only.
//!
//! An id is a 64-bit value, microseconds since the epoch shifted left by 8 bits (room for 256
//! ids per microsecond), never smaller than the last id issued plus one. The spool persists the
//! highest id issued with every message, so a clock that steps back across a restart cannot
//! repeat an id. Written in base 36 with a fixed width of 13 digits, so text order is time order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const WIDTH: usize = 13;
const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[derive(Debug)]
pub struct QueueIdGenerator {
    last: AtomicU64,
}

impl QueueIdGenerator {
    /// Starts after `high_water`, the largest id value ever issued by this spool.
    pub fn new(high_water: u64) -> Self {
        QueueIdGenerator { last: AtomicU64::new(high_water) }
    }

    /// The largest id value issued so far (persisted by the spool with every commit).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    pub fn next(&self) -> (u64, String) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        self.next_at(now)
    }

    fn next_at(&self, now_micros: u64) -> (u64, String) {
        let candidate = now_micros << 8;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let value = candidate.max(last + 1);
            match self.last.compare_exchange_weak(last, value, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (value, encode(value)),
                Err(seen) => last = seen,
            }
        }
    }
}

pub fn encode(mut value: u64) -> String {
    let mut out = [b'0'; WIDTH];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    String::from_utf8(out.to_vec()).expect("base36 digits are ASCII")
}

pub fn decode(text: &str) -> Option<u64> {
    if text.len() != WIDTH {
        return None;
    }
    text.bytes().try_fold(0u64, |acc, b| {
        let d = DIGITS.iter().position(|&x| x == b)? as u64;
        acc.checked_mul(36)?.checked_add(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_increasing_in_text_order_and_alphanumeric() {
        let g = QueueIdGenerator::new(0);
        let ids: Vec<String> = (0..1000).map(|_| g.next().1).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| { id.len() == 13 && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) }));
    }

    #[test]
    fn a_clock_stepping_back_after_restart_cannot_repeat_an_id() {
        let before = QueueIdGenerator::new(0);
        let (high, _) = before.next_at(2_000_000);
        let after_restart = QueueIdGenerator::new(high);
        let (v, _) = after_restart.next_at(1_000_000);
        assert!(v > high);
    }

    #[test]
    fn encode_decode_round_trip() {
        for v in [0, 1, 35, 36, u64::MAX, 1_700_000_000_000_000 << 8] {
            assert_eq!(decode(&encode(v)), Some(v));
        }
        assert_eq!(decode("short"), None);
    }
}
