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
//! Jobs are placed by `Limits::assign`: where a connection is idle; else with a slot taken at
//! dispatch, on the worker holding fewest; else on the worker holding most, to wait for one to
//! come back. So a worker waits only where its own connections will return. Should one wait
//! while holding none (a connection died and another worker took its slot), the others shed
//! idle connections to that address rather than leave it waiting for an idle timeout.
//!
//! A slot is released only after its connection has closed (QUIT, then the server's close),
//! so the destination never sees more than the cap, not even for a moment.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connection::{Connection, Settings};
use super::route::Target;
use super::transport::Transport;
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
    addr: SocketAddr,
    slots: Arc<Semaphore>,
    /// Per worker: checkouts waiting for a slot.
    waiting_on: Vec<AtomicUsize>,
    /// Per worker: slots it holds (connections, and jobs on their way with a slot), and how
    /// many of its connections are idle.
    open_on: Vec<AtomicUsize>,
    idle_on: Vec<AtomicUsize>,
}

/// A connection's share of its address's cap: held until the connection has closed.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    limit: Arc<Limit>,
    worker: usize,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, limit: Arc<Limit>, worker: usize) -> Slot {
        limit.open_on[worker].fetch_add(1, Ordering::SeqCst);
        Slot { _permit: permit, limit, worker }
    }
}

impl Slot {
    pub fn is_for(&self, addr: SocketAddr) -> bool {
        self.limit.addr == addr
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.open_on[self.worker].fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a job goes, with the slot for a new connection when one was free.
pub struct Assignment {
    pub worker: usize,
    pub slot: Option<Slot>,
}

/// Every address's cap; one per process.
pub struct Limits {
    map: Mutex<HashMap<SocketAddr, Arc<Limit>>>,
    max_per_destination: usize,
    /// One signal per worker: "shed idle connections a starved worker waits for".
    shed: Vec<Arc<Notify>>,
}

fn per_worker(n: usize) -> Vec<AtomicUsize> {
    (0..n).map(|_| AtomicUsize::new(0)).collect()
}

impl Limits {
    pub fn new(max_per_destination: usize, workers: usize) -> Limits {
        Limits { map: Mutex::new(HashMap::new()), max_per_destination, shed: (0..workers).map(|_| Arc::new(Notify::new())).collect() }
    }

    fn get(&self, addr: SocketAddr) -> Arc<Limit> {
        let n = self.shed.len();
        let mut map = self.map.lock().expect("limits lock");
        map.entry(addr)
            .or_insert_with(|| {
                Arc::new(Limit {
                    addr,
                    slots: Arc::new(Semaphore::new(self.max_per_destination)),
                    waiting_on: per_worker(n),
                    open_on: per_worker(n),
                    idle_on: per_worker(n),
                })
            })
            .clone()
    }

    /// Places a job for `addr`, looking at workers from `start` on (see the module comment).
    pub fn assign(&self, addr: SocketAddr, start: usize) -> Assignment {
        let limit = self.get(addr);
        let n = self.shed.len();
        let order = (0..n).map(|i| (start + i) % n);
        let held = |w: usize| limit.open_on[w].load(Ordering::SeqCst);
        if let Some(worker) = order.clone().find(|&w| limit.idle_on[w].load(Ordering::SeqCst) > 0) {
            return Assignment { worker, slot: None };
        }
        if let Ok(permit) = limit.slots.clone().try_acquire_owned() {
            let worker = order.min_by_key(|&w| held(w)).unwrap_or(start);
            return Assignment { worker, slot: Some(Slot::new(permit, limit.clone(), worker)) };
        }
        Assignment { worker: order.max_by_key(|&w| held(w)).unwrap_or(start), slot: None }
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
    settings: Arc<Settings>,
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

impl<T: Transport> Pool<T> {
    pub fn new(limits: Arc<Limits>, settings: Arc<Settings>, worker: usize, max_deliveries: usize, idle_timeout: Duration) -> Pool<T> {
        Pool { idle: RefCell::default(), returned: RefCell::default(), limits, settings, worker, max_deliveries, idle_timeout }
    }

    fn count_idle(&self, addr: SocketAddr, added: usize, removed: usize) {
        let limit = self.limits.get(addr);
        limit.idle_on[self.worker].fetch_add(added, Ordering::SeqCst);
        limit.idle_on[self.worker].fetch_sub(removed, Ordering::SeqCst);
    }

    /// Closes a connection politely in the background; its slot is freed once it has closed.
    fn retire(&self, conn: Connection<T>) {
        let settings = self.settings.clone();
        tokio::task::spawn_local(async move { conn.quit(&settings).await });
    }

    /// An idle, still fresh connection for `key`, if this worker has one.
    pub fn take(&self, key: &PoolKey) -> Option<Connection<T>> {
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.idle.borrow_mut();
            let list = idle.get_mut(key)?;
            let mut found = None;
            while let Some(conn) = list.pop() {
                self.count_idle(key.addr, 0, 1);
                if conn.idle_since.elapsed() < self.idle_timeout {
                    found = Some(conn);
                    break;
                }
                expired.push(conn);
            }
            found
        };
        expired.into_iter().for_each(|c| self.retire(c));
        if found.is_some() {
            metrics::counter!(m::DELIVERY_CONNECTIONS_REUSED).increment(1);
        }
        found
    }

    /// Another worker waits for `addr` and holds no slot that could come back to it.
    fn wanted_elsewhere(&self, limit: &Limit) -> bool {
        (0..limit.waiting_on.len())
            .any(|w| w != self.worker && limit.waiting_on[w].load(Ordering::SeqCst) > 0 && limit.open_on[w].load(Ordering::SeqCst) == 0)
    }

    /// A pooled connection for `key`, or a slot for a new one: whichever comes first. Pooled
    /// connections keep their slot, so a waiter must watch both the idle list and the cap.
    pub async fn checkout(&self, key: &PoolKey) -> Checkout<T> {
        let limit = self.limits.get(key.addr);
        loop {
            if let Some(conn) = self.take(key) {
                return Checkout::Pooled(Box::new(conn));
            }
            if let Ok(permit) = limit.slots.clone().try_acquire_owned() {
                return Checkout::New(Slot::new(permit, limit, self.worker));
            }
            let returned = self.returned.borrow_mut().entry(key.addr).or_default().clone();
            limit.waiting_on[self.worker].fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting { limit: &limit, worker: self.worker };
            if limit.open_on[self.worker].load(Ordering::SeqCst) == 0 {
                for (i, shed) in self.limits.shed.iter().enumerate() {
                    if i != self.worker {
                        shed.notify_one();
                    }
                }
            }
            tokio::select! {
                permit = limit.slots.clone().acquire_owned() => {
                    let permit = permit.expect("pool semaphores are never closed");
                    return Checkout::New(Slot::new(permit, limit.clone(), self.worker));
                }
                _ = returned.notified() => {}
            }
        }
    }

    /// A slot for one more connection to `addr` (for a retry on the same host).
    pub async fn slot(&self, addr: SocketAddr) -> Slot {
        let limit = self.limits.get(addr);
        let permit = limit.slots.clone().acquire_owned().await.expect("pool semaphores are never closed");
        Slot::new(permit, limit, self.worker)
    }

    /// Returns a connection after a transaction; it is kept only if it can be reused and no
    /// starved worker waits for its slot.
    pub fn put(&self, conn: Connection<T>) {
        if !conn.is_ready() {
            return; // In an unknown state: closed at once.
        }
        let key = PoolKey::new(&conn.target, conn.policy, conn.login);
        let addr = key.addr;
        if conn.deliveries >= self.max_deliveries || self.wanted_elsewhere(&self.limits.get(addr)) {
            return self.retire(conn);
        }
        self.idle.borrow_mut().entry(key).or_default().push(conn);
        self.count_idle(addr, 1, 0);
        if let Some(returned) = self.returned.borrow().get(&addr) {
            returned.notify_one();
        }
    }

    /// Takes out the idle connections `drop_it` picks, and retires them.
    fn retire_idle(&self, drop_it: impl Fn(&PoolKey, &Connection<T>) -> bool) {
        let mut gone = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            for (key, list) in idle.iter_mut() {
                let (out, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|c| drop_it(key, c));
                *list = keep;
                self.count_idle(key.addr, 0, out.len());
                gone.extend(out);
            }
            idle.retain(|_, list| !list.is_empty());
        }
        gone.into_iter().for_each(|c| self.retire(c));
    }

    /// Closes idle connections whose slots a starved worker waits for.
    pub fn shed(&self) {
        self.retire_idle(|key, _| self.wanted_elsewhere(&self.limits.get(key.addr)));
    }

    /// Closes idle connections past the idle timeout; called periodically.
    pub fn reap(&self) {
        self.retire_idle(|_, c| c.idle_since.elapsed() >= self.idle_timeout);
    }
}
