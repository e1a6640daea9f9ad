//! A value a reload replaces while its readers keep the one they took: each session, attempt
//! or command takes a snapshot when it starts and works under it to the end, so a reload
//! never changes the rules half-way through a transaction.

use std::sync::{Arc, RwLock};

pub struct Live<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live { current: RwLock::new(Arc::new(value)) }
    }

    pub fn from_arc(value: Arc<T>) -> Live<T> {
        Live { current: RwLock::new(value) }
    }

    /// The value in force now.
    pub fn get(&self) -> Arc<T> {
        // A reader or writer cannot panic while holding the lock (they only clone or swap an
        // Arc), so a poisoned lock still holds a whole value.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `value` in force for every later `get`; returns the one it replaces.
    pub fn replace(&self, value: Arc<T>) -> Arc<T> {
        std::mem::replace(&mut *self.current.write().unwrap_or_else(|e| e.into_inner()), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_outlives_the_replacement() {
        let live = Live::new(1);
        let taken = live.get();
        let old = live.replace(Arc::new(2));
        assert_eq!((*taken, *old, *live.get()), (1, 1, 2));
    }
}
