//! The time, behind a trait where a decision depends on it, so tests can run on virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> u64;

    /// Unix seconds.
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Signalled when the time jumps (a clock that only runs forward never does), so a
    /// scheduler sleeping until a due time can look again.
    fn jumped(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that stands still until it is moved: the queue's retries, expiries and
/// suspensions can be tested hours ahead in a second.
pub struct ManualClock {
    ms: AtomicU64,
    jumped: Arc<Notify>,
}

impl ManualClock {
    /// Standing at the system's time now (so arrival times taken from the wall clock fit).
    pub fn at_system_time() -> Arc<ManualClock> {
        Arc::new(ManualClock { ms: AtomicU64::new(SystemClock.now_ms()), jumped: Arc::new(Notify::new()) })
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        // A permit is kept if the scheduler is busy, so the jump is never missed.
        self.jumped.notify_one();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }

    fn jumped(&self) -> Option<Arc<Notify>> {
        Some(self.jumped.clone())
    }
}
