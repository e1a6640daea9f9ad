//! Connection pool: idle connections per next-hop address, and a cap on connections per
//! address that idle connections count against too.
//!
//! A connection goes back only when it is ready (its last transaction ended with a clean 250
//! or an answered RSET) and has carried fewer than `max_deliveries` transactions. The key is
//! the next-hop address alone because the TLS policy, source address and EHLO name are the
//! same for every connection of this process (per-domain TLS policy will add to the key).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connection::Connection;
use crate::metrics as m;

pub enum Checkout {
    Pooled(Box<Connection>),
    New(OwnedSemaphorePermit),
}

/// Per next-hop address: the connection cap, and a signal for connections put back.
#[derive(Clone)]
struct Limit {
    slots: Arc<Semaphore>,
    returned: Arc<Notify>,
}

pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    limits: Mutex<HashMap<SocketAddr, Limit>>,
    max_per_destination: usize,
    max_deliveries: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_per_destination: usize, max_deliveries: usize, idle_timeout: Duration) -> Pool {
        Pool { idle: Mutex::new(HashMap::new()), limits: Mutex::new(HashMap::new()), max_per_destination, max_deliveries, idle_timeout }
    }

    /// An idle, still fresh connection to `addr`, if one is pooled.
    pub fn take(&self, addr: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout {
                metrics::counter!(m::DELIVERY_CONNECTIONS_REUSED).increment(1);
                return Some(conn);
            }
            // Expired: dropped (closed) here.
        }
        None
    }

    fn limit(&self, addr: SocketAddr) -> Limit {
        let mut limits = self.limits.lock().expect("pool lock");
        limits
            .entry(addr)
            .or_insert_with(|| Limit { slots: Arc::new(Semaphore::new(self.max_per_destination)), returned: Arc::new(Notify::new()) })
            .clone()
    }

    /// A pooled connection to `addr`, or room for a new one: whichever comes first. Pooled
    /// connections keep their slot, so a waiter must watch both the idle list and the cap.
    pub async fn checkout(&self, addr: SocketAddr) -> Checkout {
        let Limit { slots: semaphore, returned } = self.limit(addr);
        loop {
            if let Some(conn) = self.take(addr) {
                return Checkout::Pooled(Box::new(conn));
            }
            if let Ok(permit) = semaphore.clone().try_acquire_owned() {
                return Checkout::New(permit);
            }
            tokio::select! {
                permit = semaphore.clone().acquire_owned() => return Checkout::New(permit.expect("pool semaphores are never closed")),
                _ = returned.notified() => {}
            }
        }
    }

    /// Room for one more connection to `addr` (for a retry on the same host).
    pub async fn permit(&self, addr: SocketAddr) -> OwnedSemaphorePermit {
        self.limit(addr).slots.acquire_owned().await.expect("pool semaphores are never closed")
    }

    /// Returns a connection after a transaction; it is kept only if it can be reused.
    pub fn put(&self, conn: Connection) {
        if conn.is_ready() && conn.deliveries < self.max_deliveries {
            let addr = conn.target.addr;
            self.idle.lock().expect("pool lock").entry(addr).or_default().push(conn);
            self.limit(addr).returned.notify_one();
        }
    }

    /// Closes idle connections past the idle timeout; called periodically.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        for list in idle.values_mut() {
            list.retain(|c| c.idle_since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").values().map(Vec::len).sum()
    }
}
