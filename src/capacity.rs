//! A counting limit whose size a reload changes while its permits are out. Growing adds
//! permits at once; shrinking takes back the free ones and then, as a debt, each permit that
//! comes back until the new size holds. Used for the caps on connections and deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Capacity {
    slots: Arc<Semaphore>,
    size: Mutex<usize>,
    /// Permits to forget as they come back (a shrink that found them in use).
    debt: AtomicUsize,
}

/// One unit of a [`Capacity`], given back (or paid towards a shrink) on drop.
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    capacity: Arc<Capacity>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take()
            && self.capacity.debt.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1)).is_ok()
        {
            permit.forget();
        }
    }
}

impl Capacity {
    pub fn new(size: usize) -> Arc<Capacity> {
        let size = size.min(Semaphore::MAX_PERMITS);
        Arc::new(Capacity { slots: Arc::new(Semaphore::new(size)), size: Mutex::new(size), debt: AtomicUsize::new(0) })
    }

    pub fn size(&self) -> usize {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Permit { permit: Some(permit), capacity: self.clone() })
    }

    pub async fn acquire(self: &Arc<Self>) -> Permit {
        // Never closed, so acquiring cannot fail.
        let permit = self.slots.clone().acquire_owned().await.ok();
        Permit { permit, capacity: self.clone() }
    }

    /// Makes the limit `size` from now on; permits out stay valid until dropped.
    pub fn resize(&self, size: usize) {
        let size = size.min(Semaphore::MAX_PERMITS);
        let mut current = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if size > *current {
            let more = size - *current;
            let owed = self.debt.load(Ordering::SeqCst).min(more);
            self.debt.fetch_sub(owed, Ordering::SeqCst);
            self.slots.add_permits(more - owed);
        } else if size < *current {
            let fewer = *current - size;
            let taken = self.slots.forget_permits(fewer);
            self.debt.fetch_add(fewer - taken, Ordering::SeqCst);
        }
        *current = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_below_the_permits_out_waits_for_them_to_come_back() {
        let c = Capacity::new(3);
        let (a, b, d) = (c.try_acquire().unwrap(), c.try_acquire().unwrap(), c.try_acquire().unwrap());
        c.resize(1);
        drop(a);
        drop(b);
        assert!(c.try_acquire().is_none(), "two came back, both paid the debt");
        drop(d);
        let e = c.try_acquire().expect("the third came back as the one permit");
        assert!(c.try_acquire().is_none());
        drop(e);
    }

    #[test]
    fn growing_pays_a_debt_before_adding_permits() {
        let c = Capacity::new(2);
        let (a, b) = (c.try_acquire().unwrap(), c.try_acquire().unwrap());
        c.resize(0);
        c.resize(3);
        assert!(c.try_acquire().is_some(), "3 - 2 out = 1 free");
        drop((a, b));
        let held: Vec<_> = (0..3).map_while(|_| c.try_acquire()).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(c.size(), 3);
    }
}
