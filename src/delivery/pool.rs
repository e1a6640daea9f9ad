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

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::Connection;
use crate::metrics as m;

pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    limits: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
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

    /// Waits for room for one more connection to `addr`.
    pub async fn permit(&self, addr: SocketAddr) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut limits = self.limits.lock().expect("pool lock");
            limits.entry(addr).or_insert_with(|| Arc::new(Semaphore::new(self.max_per_destination))).clone()
        };
        if semaphore.available_permits() == 0 {
            // Every slot is taken; an idle connection holding one is better closed than kept.
            self.close_idle(addr);
        }
        semaphore.acquire_owned().await.expect("pool semaphores are never closed")
    }

    fn close_idle(&self, addr: SocketAddr) {
        if let Some(list) = self.idle.lock().expect("pool lock").get_mut(&addr)
            && !list.is_empty()
        {
            list.remove(0);
        }
    }

    /// Returns a connection after a transaction; it is kept only if it can be reused.
    pub fn put(&self, conn: Connection) {
        if conn.is_ready() && conn.deliveries < self.max_deliveries {
            self.idle.lock().expect("pool lock").entry(conn.target.addr).or_default().push(conn);
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
