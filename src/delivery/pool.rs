//! Connection pools: each delivery worker keeps its own idle connections (an io_uring socket
//! belongs to the ring of the thread that opened it), while the cap on connections per
//! next-hop address is shared by every worker, so a busy destination can use every core
//! without exceeding its limit.
//!
//! A connection goes back only when it is ready (its last transaction ended with a clean 250
//! or an answered RSET) and has carried fewer than `max_deliveries` transactions. The key holds
//! the next-hop address, the TLS policy and for `required` the verified host name (so an
//! unverified connection never serves a domain that requires TLS), and whether it logged in.
//! Source address and EHLO name are the same for every connection of this process.
//!
//! A worker that waits for a slot while holding no connection to that address, and another
//! worker keeps idle ones, would wait for the idle timeout: so such a waiter tells the other
//! workers to shed their idle connections to that address, and a connection put back while it
//! waits is closed. Jobs are sent where connections are (`Limits::pick_worker`), so this is rare.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connection::Connection;
use super::route::Target;
use crate::metrics as m;
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

/// The cap for one next-hop address, shared by every worker.
pub struct Limit {
    slots: Arc<Semaphore>,
    /// Per worker: checkouts waiting for a slot.
    waiting_on: Vec<AtomicUsize>,
    /// Per worker: connections it holds (busy or idle), and of those, idle ones. Jobs go where
    /// a connection is idle, or when the cap is reached where one will come back.
    open_on: Vec<AtomicUsize>,
    idle_on: Vec<AtomicUsize>,
    /// Per worker: jobs sent to it and not finished (they will hold a connection soon).
    assigned_on: Vec<AtomicUsize>,
}

/// A job sent to a worker, counted until it finishes.
pub struct Assigned {
    limit: Arc<Limit>,
    pub worker: usize,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.limit.assigned_on[self.worker].fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's share of its address's cap: held for as long as the connection lives.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    limit: Arc<Limit>,
    worker: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.open_on[self.worker].fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every address's cap; one per process.
pub struct Limits {
    map: Mutex<HashMap<SocketAddr, Arc<Limit>>>,
    max_per_destination: usize,
    /// One signal per worker: "shed idle connections others are waiting for".
    shed: Vec<Arc<Notify>>,
}

impl Limits {
    pub fn new(max_per_destination: usize, workers: usize) -> Limits {
        Limits { map: Mutex::new(HashMap::new()), max_per_destination, shed: (0..workers).map(|_| Arc::new(Notify::new())).collect() }
    }

    fn get(&self, addr: SocketAddr) -> Arc<Limit> {
        let workers = self.shed.len();
        let mut map = self.map.lock().expect("limits lock");
        map.entry(addr)
            .or_insert_with(|| {
                Arc::new(Limit {
                    slots: Arc::new(Semaphore::new(self.max_per_destination)),
                    waiting_on: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
                    open_on: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
                    idle_on: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
                    assigned_on: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
                })
            })
            .clone()
    }

    /// The worker a job for `addr` should go to, looking from `start` on: one with an idle
    /// connection; else, while the cap leaves room, the one with the fewest connections (new
    /// connections spread over the cores); else the one holding the most, where the job waits
    /// for one to come back. The job counts as assigned until `Assigned` is dropped.
    pub fn assign(&self, addr: SocketAddr, start: usize) -> Assigned {
        let limit = self.get(addr);
        let n = self.shed.len();
        let order = (0..n).map(|i| (start + i) % n);
        let load = |w: usize| limit.open_on[w].load(Ordering::SeqCst).max(limit.assigned_on[w].load(Ordering::SeqCst));
        let worker = if let Some(w) = order.clone().find(|&w| limit.idle_on[w].load(Ordering::SeqCst) > 0) {
            w
        } else if (0..n).map(load).sum::<usize>() < self.max_per_destination {
            order.min_by_key(|&w| load(w)).unwrap_or(start)
        } else {
            order.max_by_key(|&w| limit.open_on[w].load(Ordering::SeqCst)).unwrap_or(start)
        };
        limit.assigned_on[worker].fetch_add(1, Ordering::SeqCst);
        Assigned { limit, worker }
    }
    pub fn shed_signal(&self, worker: usize) -> Arc<Notify> {
        self.shed[worker].clone()
    }
}

pub enum Checkout<T> {
    Pooled(Box<Connection<T>>),
    New(Slot),
}

/// One worker's idle connections. Not shared between threads.
pub struct Pool<T> {
    idle: RefCell<HashMap<PoolKey, Vec<Connection<T>>>>,
    /// Per address: the signal for connections put back.
    returned: RefCell<HashMap<SocketAddr, Rc<Notify>>>,
    limits: Arc<Limits>,
    worker: usize,
    max_deliveries: usize,
    idle_timeout: Duration,
}

/// Counts a checkout as waiting for as long as it lives.
struct Waiting<'a> {
    limit: &'a Limit,
    worker: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.limit.waiting_on[self.worker].fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T> Pool<T> {
    pub fn new(limits: Arc<Limits>, worker: usize, max_deliveries: usize, idle_timeout: Duration) -> Pool<T> {
        Pool { idle: RefCell::default(), returned: RefCell::default(), limits, worker, max_deliveries, idle_timeout }
    }

    fn slot(&self, permit: OwnedSemaphorePermit, limit: Arc<Limit>) -> Slot {
        limit.open_on[self.worker].fetch_add(1, Ordering::SeqCst);
        Slot { _permit: permit, limit, worker: self.worker }
    }

    fn count_idle(&self, addr: SocketAddr, added: usize, removed: usize) {
        let limit = self.limits.get(addr);
        limit.idle_on[self.worker].fetch_add(added, Ordering::SeqCst);
        limit.idle_on[self.worker].fetch_sub(removed, Ordering::SeqCst);
    }

    /// An idle, still fresh connection for `key`, if this worker has one.
    pub fn take(&self, key: &PoolKey) -> Option<Connection<T>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        while let Some(conn) = list.pop() {
            self.count_idle(key.addr, 0, 1);
            if conn.idle_since.elapsed() < self.idle_timeout {
                metrics::counter!(m::DELIVERY_CONNECTIONS_REUSED).increment(1);
                return Some(conn);
            }
            // Expired: dropped (closed) here.
        }
        None
    }

    /// Another worker waits for `addr` and holds no connection that could come back to it.
    fn wanted_elsewhere(&self, limit: &Limit) -> bool {
        (0..limit.waiting_on.len())
            .any(|w| w != self.worker && limit.waiting_on[w].load(Ordering::SeqCst) > 0 && limit.open_on[w].load(Ordering::SeqCst) == 0)
    }

    /// A pooled connection for `key`, or room for a new one: whichever comes first. Pooled
    /// connections keep their slot, so a waiter must watch both the idle list and the cap.
    pub async fn checkout(&self, key: &PoolKey) -> Checkout<T> {
        let limit = self.limits.get(key.addr);
        loop {
            if let Some(conn) = self.take(key) {
                return Checkout::Pooled(Box::new(conn));
            }
            if let Ok(permit) = limit.slots.clone().try_acquire_owned() {
                return Checkout::New(self.slot(permit, limit));
            }
            let returned = self.returned.borrow_mut().entry(key.addr).or_default().clone();
            limit.waiting_on[self.worker].fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting { limit: &limit, worker: self.worker };
            for (i, shed) in self.limits.shed.iter().enumerate() {
                if i != self.worker {
                    shed.notify_one();
                }
            }
            tokio::select! {
                permit = limit.slots.clone().acquire_owned() => {
                    return Checkout::New(self.slot(permit.expect("pool semaphores are never closed"), limit.clone()));
                }
                _ = returned.notified() => {}
            }
        }
    }

    /// Room for one more connection to `addr` (for a retry on the same host).
    pub async fn permit(&self, addr: SocketAddr) -> Slot {
        let limit = self.limits.get(addr);
        let permit = limit.slots.clone().acquire_owned().await.expect("pool semaphores are never closed");
        self.slot(permit, limit)
    }

    /// Returns a connection after a transaction; it is kept only if it can be reused and no
    /// other worker waits for its slot.
    pub fn put(&self, conn: Connection<T>) {
        if !conn.is_ready() || conn.deliveries >= self.max_deliveries {
            return;
        }
        let key = PoolKey::new(&conn.target, conn.policy, conn.login);
        let addr = key.addr;
        if self.wanted_elsewhere(&self.limits.get(addr)) {
            return;
        }
        self.idle.borrow_mut().entry(key).or_default().push(conn);
        self.count_idle(addr, 1, 0);
        if let Some(returned) = self.returned.borrow().get(&addr) {
            returned.notify_one();
        }
    }

    /// Closes idle connections whose slots other workers wait for.
    pub fn shed(&self) {
        let wanted: Vec<SocketAddr> =
            self.idle.borrow().keys().map(|k| k.addr).filter(|&a| self.wanted_elsewhere(&self.limits.get(a))).collect();
        let mut idle = self.idle.borrow_mut();
        for (key, list) in idle.iter_mut() {
            if wanted.contains(&key.addr) {
                self.count_idle(key.addr, 0, list.len());
                list.clear();
            }
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Closes idle connections past the idle timeout; called periodically.
    pub fn reap(&self) {
        let mut idle = self.idle.borrow_mut();
        for (key, list) in idle.iter_mut() {
            let before = list.len();
            list.retain(|c| c.idle_since.elapsed() < self.idle_timeout);
            self.count_idle(key.addr, 0, before - list.len());
        }
        idle.retain(|_, list| !list.is_empty());
    }
}
