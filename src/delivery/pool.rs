//! Connection pool: idle connections per next-hop address, and a cap on connections per
//! address that idle connections count against too.
//!
//! A connection goes back only when it is ready (its last transaction ended with a clean 250
//! or an answered RSET) and has carried fewer than `max_deliveries` transactions. The key is
//! the next-hop address alone because the TLS policy, source address and EHLO name are the
//! same for every connection of this process; the TLS policy is part of the key, and for
//! `required` so is the verified host name, so an unverified connection never serves a domain
//! that requires TLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connection::Connection;
use super::route::Target;
use crate::smtp::client::TlsPolicy;

/// What makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub policy: TlsPolicy,
    /// The name the certificate was verified for (`required` only).
    pub verified_name: Option<String>,
    /// Logged in with the smarthost credentials.
    pub login: bool,
}

impl PoolKey {
    pub fn new(target: &Target, policy: TlsPolicy, login: bool) -> PoolKey {
        let verified_name = (policy == TlsPolicy::Required).then(|| target.host.clone());
        PoolKey { addr: target.addr, policy, verified_name, login }
    }
}
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
    idle: Mutex<HashMap<PoolKey, Vec<Connection>>>,
    /// Keyed by address alone: the cap counts every connection to a host.
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
    pub fn take(&self, key: &PoolKey) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
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
    pub async fn checkout(&self, key: &PoolKey) -> Checkout {
        let Limit { slots: semaphore, returned } = self.limit(key.addr);
        loop {
            if let Some(conn) = self.take(key) {
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
            let key = PoolKey::new(&conn.target, conn.policy, conn.login);
            let addr = key.addr;
            self.idle.lock().expect("pool lock").entry(key).or_default().push(conn);
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
