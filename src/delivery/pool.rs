//! Connection pools: each delivery worker keeps its own idle connections (an io_uring socket
//! belongs to the ring of the thread that opened it), while the cap on connections per
//! next-hop address is shared by every worker, so a busy destination can use every core
//! without exceeding its limit.
//!
//! A connection goes back only when it is ready (its last transaction ended with a clean 250
//! or an answered RSET), nothing unread follows its last reply, and it has carried fewer than
//! `max_deliveries` transactions. On checkout it is looked at without waiting: one the peer
//! closed or spoke on unasked is discarded (not an attempt), and since that usually means the
//! next hop restarted, so are the other idle connections to that address on this worker. The key holds
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
//! Every slot also holds a share of `delivery.max_connections`. While a checkout waits for such
//! a share, idle connections (to any address, on every worker) are given up, since each holds
//! one: otherwise mail to one destination would wait for the idle timeout of another's.
//!
//! A slot is released only after its connection has closed (QUIT, then the server's close),
//! so the destination never sees more than the cap, not even for a moment.
//!
//! With `cluster.redis` a slot also holds a lease on the cap shared by every node (taken by
//! the sender before it connects, `cluster::lease`); a connection whose lease says so is
//! closed when it is next idle.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::connection::{Connection, Settings};
use super::route::Target;
use super::transport::{IdleState, Transport};
use crate::capacity::{Capacity, Permit};
use crate::live::Live;
use crate::metrics as m;
use crate::shaping::CapKey;
use crate::smtp::client::TlsPolicy;

/// What makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub policy: TlsPolicy,
    /// The name the certificate was verified for (`required` only).
    pub verified_name: Option<String>,
    /// Logged in with the smarthost credentials, and so on.
    pub hop: super::Hop,
    /// The TLSA records the certificate was checked against (DANE).
    pub dane: Option<Arc<super::dane::DaneAuth>>,
}

impl PoolKey {
    pub fn new(target: &Target, policy: TlsPolicy, hop: super::Hop) -> PoolKey {
        let verified_name = (policy == TlsPolicy::Required).then(|| target.host.clone());
        PoolKey { addr: target.addr, policy, verified_name, hop, dane: target.dane.clone() }
    }
}

/// One connection cap (a next-hop address, or a shaping rule's hosts), shared by every worker.
pub struct Limit {
    key: CapKey,
    /// Sized by the latest config that asked for this cap.
    slots: Arc<Capacity>,
    /// Transactions a connection under this cap carries before it is closed.
    max_deliveries: AtomicUsize,
    /// Per worker: checkouts waiting for a slot.
    waiting_on: Vec<AtomicUsize>,
    /// Per worker: slots it holds (connections, and jobs on their way with a slot), and how
    /// many of its connections are idle.
    open_on: Vec<AtomicUsize>,
    idle_on: Vec<AtomicUsize>,
}

/// A connection's share of its address's cap: held until the connection has closed.
pub struct Slot {
    _permit: Permit,
    /// A share of `delivery.max_connections` (lent back while it waits for a lease).
    total: Option<Permit>,
    limit: Arc<Limit>,
    worker: usize,
    /// The destination's count of connections (for `sluice queue summary`).
    active: Arc<AtomicUsize>,
    /// The connection's lease on the cap shared with other nodes (`cluster.redis`). Declared
    /// last: given back after the local share.
    lease: Option<crate::cluster::lease::Lease>,
}

impl Slot {
    fn new(permit: Permit, total: Permit, limit: Arc<Limit>, worker: usize, active: &Arc<AtomicUsize>) -> Slot {
        limit.open_on[worker].fetch_add(1, Ordering::SeqCst);
        active.fetch_add(1, Ordering::SeqCst);
        Slot { _permit: permit, total: Some(total), limit, worker, active: active.clone(), lease: None }
    }

    pub fn cap(&self) -> &CapKey {
        &self.limit.key
    }

    /// Whether the slot already holds its lease on the shared cap.
    pub fn leased(&self) -> bool {
        self.lease.is_some()
    }

    /// Gives its share of `delivery.max_connections` back while it waits for a lease (a wait
    /// on other nodes must not hold up mail to other destinations); `has_total` says
    /// whether it still holds one.
    pub fn lend_total(&mut self) {
        self.total = None;
    }

    pub fn has_total(&self) -> bool {
        self.total.is_some()
    }

    pub fn set_total(&mut self, total: Permit) {
        self.total = Some(total);
    }

    /// Holds `lease` for as long as the slot lives.
    pub fn hold(&mut self, lease: crate::cluster::lease::Lease) {
        self.lease = Some(lease);
    }

    /// The shared cap wants this connection closed rather than idle (for `idle`, when it is
    /// idle; see `cluster::lease`).
    fn should_yield(&self, idle: Option<Duration>) -> bool {
        self.lease.as_ref().is_some_and(|l| l.should_yield(idle))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.open_on[self.worker].fetch_sub(1, Ordering::SeqCst);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a job goes, with the slot for a new connection when one was free.
pub struct Assignment {
    pub worker: usize,
    pub slot: Option<Slot>,
}

/// Every cap; one per process.
pub struct Limits {
    map: Mutex<HashMap<CapKey, Arc<Limit>>>,
    /// `delivery.max_connections`, over every cap.
    total: Arc<Capacity>,
    /// Checkouts waiting for a share of `total`.
    total_waiting: AtomicUsize,
    /// One signal per worker: "shed idle connections a starved worker waits for".
    shed: Vec<Arc<Notify>>,
}

fn per_worker(n: usize) -> Vec<AtomicUsize> {
    (0..n).map(|_| AtomicUsize::new(0)).collect()
}

impl Limits {
    pub fn new(total: usize, workers: usize) -> Limits {
        Limits {
            map: Mutex::new(HashMap::new()),
            total: Capacity::new(total),
            total_waiting: AtomicUsize::new(0),
            shed: (0..workers).map(|_| Arc::new(Notify::new())).collect(),
        }
    }

    /// The limit for `cap`, with `max` connections and `max_deliveries` each (a reload that
    /// changed them resizes the limit; connections open stay counted).
    fn get(&self, cap: &CapKey, max: usize, max_deliveries: usize) -> Arc<Limit> {
        let n = self.shed.len();
        let mut map = self.map.lock().expect("limits lock");
        let limit = map
            .entry(cap.clone())
            .or_insert_with(|| {
                Arc::new(Limit {
                    key: cap.clone(),
                    max_deliveries: AtomicUsize::new(max_deliveries),
                    slots: Capacity::new(max),
                    waiting_on: per_worker(n),
                    open_on: per_worker(n),
                    idle_on: per_worker(n),
                })
            })
            .clone();
        if limit.slots.size() != max {
            limit.slots.resize(max);
        }
        limit.max_deliveries.store(max_deliveries, Ordering::SeqCst);
        limit
    }

    /// `delivery.max_connections` from now on.
    pub fn resize_total(&self, total: usize) {
        self.total.resize(total);
    }

    /// A free slot under `limit` and the total, if there is one now.
    fn try_slot(&self, limit: &Arc<Limit>, worker: usize, active: &Arc<AtomicUsize>) -> Option<Slot> {
        let permit = limit.slots.try_acquire()?;
        let total = self.total.try_acquire()?;
        Some(Slot::new(permit, total, limit.clone(), worker, active))
    }

    /// Places a job under `cap`, looking at workers from `start` on (see the module comment).
    pub fn assign(&self, cap: &CapKey, max: usize, max_deliveries: usize, active: &Arc<AtomicUsize>, start: usize) -> Assignment {
        let limit = self.get(cap, max, max_deliveries);
        let n = self.shed.len();
        let order = (0..n).map(|i| (start + i) % n);
        let held = |w: usize| limit.open_on[w].load(Ordering::SeqCst);
        if let Some(worker) = order.clone().find(|&w| limit.idle_on[w].load(Ordering::SeqCst) > 0) {
            return Assignment { worker, slot: None };
        }
        let worker = order.clone().min_by_key(|&w| held(w)).unwrap_or(start);
        if let Some(slot) = self.try_slot(&limit, worker, active) {
            return Assignment { worker, slot: Some(slot) };
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
    /// Per cap: the signal for connections put back.
    returned: RefCell<HashMap<CapKey, Rc<Notify>>>,
    limits: Arc<Limits>,
    settings: Arc<Live<Settings>>,
    worker: usize,
    idle_timeout: Duration,
}

fn discarded(state: IdleState) {
    let reason = match state {
        IdleState::Unread => "unread",
        _ => "closed",
    };
    metrics::counter!(m::DELIVERY_CONNECTIONS_DISCARDED, "reason" => reason).increment(1);
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
    pub fn new(limits: Arc<Limits>, settings: Arc<Live<Settings>>, worker: usize, idle_timeout: Duration) -> Pool<T> {
        Pool { idle: RefCell::default(), returned: RefCell::default(), limits, settings, worker, idle_timeout }
    }

    fn count_idle(&self, conn: &Connection<T>, added: usize, removed: usize) {
        let limit = &conn.slot().limit;
        limit.idle_on[self.worker].fetch_add(added, Ordering::SeqCst);
        limit.idle_on[self.worker].fetch_sub(removed, Ordering::SeqCst);
    }

    /// Closes a connection politely in the background; its slot is freed once it has closed.
    fn retire(&self, conn: Connection<T>) {
        let settings = self.settings.get();
        tokio::task::spawn_local(async move { conn.quit(&settings).await });
    }

    /// An idle, fresh and live connection for `key`, if this worker has one.
    pub fn take(&self, key: &PoolKey) -> Option<Connection<T>> {
        let generation = self.settings.get().generation;
        let mut expired = Vec::new();
        let mut dead = None;
        let found = {
            let mut idle = self.idle.borrow_mut();
            let list = idle.get_mut(key)?;
            let mut found = None;
            while let Some(mut conn) = list.pop() {
                self.count_idle(&conn, 0, 1);
                let idle = conn.idle_since.elapsed();
                if idle >= self.idle_timeout || conn.generation != generation || conn.slot().should_yield(Some(idle)) {
                    expired.push(conn);
                    continue;
                }
                match conn.idle_state() {
                    IdleState::Quiet => {
                        found = Some(conn);
                        break;
                    }
                    state => {
                        dead = Some(state);
                        discarded(state);
                        // Dropped, not QUIT: the peer is gone or out of step. The slot goes with it.
                        drop(conn);
                        break;
                    }
                }
            }
            found
        };
        expired.into_iter().for_each(|c| self.retire(c));
        if dead.is_some() {
            self.discard_address(key.addr);
            return None;
        }
        if found.is_some() {
            metrics::counter!(m::DELIVERY_CONNECTIONS_REUSED).increment(1);
        }
        found
    }

    /// Drops this worker's idle connections to `addr`: one of them turned out dead, and a
    /// next hop that restarted leaves all of them dead at once.
    pub fn discard_address(&self, addr: SocketAddr) {
        let mut gone = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            for (key, list) in idle.iter_mut() {
                if key.addr == addr {
                    gone.append(list);
                }
            }
            idle.retain(|_, list| !list.is_empty());
        }
        for conn in gone {
            self.count_idle(&conn, 0, 1);
            metrics::counter!(m::DELIVERY_CONNECTIONS_DISCARDED, "reason" => "sibling").increment(1);
        }
    }

    /// An idle connection under `limit` should be given up: a checkout waits for a share of
    /// the global cap, or another worker waits for this cap holding no slot that could come
    /// back to it.
    fn wanted_elsewhere(&self, limit: &Limit) -> bool {
        self.limits.total_waiting.load(Ordering::SeqCst) > 0
            || (0..limit.waiting_on.len())
                .any(|w| w != self.worker && limit.waiting_on[w].load(Ordering::SeqCst) > 0 && limit.open_on[w].load(Ordering::SeqCst) == 0)
    }

    /// Asks every worker, this one first, to give up what `wanted_elsewhere` picks.
    fn shed_everywhere(&self) {
        self.shed();
        for (i, shed) in self.limits.shed.iter().enumerate() {
            if i != self.worker {
                shed.notify_one();
            }
        }
    }

    /// A share of the global cap: at once if one is free, else after idle connections
    /// everywhere have been given up for it.
    pub async fn total_share(&self) -> Permit {
        if let Some(share) = self.limits.total.try_acquire() {
            return share;
        }
        self.limits.total_waiting.fetch_add(1, Ordering::SeqCst);
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _done = Done(&self.limits.total_waiting);
        self.shed_everywhere();
        self.limits.total.acquire().await
    }

    /// A pooled connection for `key`, or a slot under `cap` for a new one: whichever comes
    /// first. Pooled connections keep their slot, so a waiter watches the idle list and the cap.
    pub async fn checkout(&self, key: &PoolKey, cap: &CapKey, max: usize, max_deliveries: usize, active: &Arc<AtomicUsize>) -> Checkout<T> {
        let limit = self.limits.get(cap, max, max_deliveries);
        loop {
            if let Some(conn) = self.take(key) {
                return Checkout::Pooled(Box::new(conn));
            }
            if let Some(slot) = self.limits.try_slot(&limit, self.worker, active) {
                return Checkout::New(slot);
            }
            // An idle connection under the same cap to another host of the rule: close it to
            // make room rather than wait for it to time out.
            self.retire_idle_once(|k, c| c.slot().cap() == cap && k != key);
            let returned = self.returned(cap);
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
                permit = limit.slots.acquire() => {
                    let total = self.total_share().await;
                    return Checkout::New(Slot::new(permit, total, limit.clone(), self.worker, active));
                }
                _ = returned.notified() => {}
            }
        }
    }

    /// The signal for connections under `cap` put back on this worker.
    pub fn returned(&self, cap: &CapKey) -> Rc<Notify> {
        self.returned.borrow_mut().entry(cap.clone()).or_default().clone()
    }

    /// Another slot under `cap` (for a retry on the same host).
    pub async fn slot(&self, cap: &CapKey, max: usize, max_deliveries: usize, active: &Arc<AtomicUsize>) -> Slot {
        let limit = self.limits.get(cap, max, max_deliveries);
        let permit = limit.slots.acquire().await;
        let total = self.total_share().await;
        Slot::new(permit, total, limit, self.worker, active)
    }

    /// Returns a connection after a transaction; it is kept only if it can be reused and no
    /// starved worker waits for its slot.
    pub fn put(&self, mut conn: Connection<T>) {
        match conn.idle_state() {
            IdleState::Quiet => {}
            // Not ready (an unknown state), or bytes follow the last reply: closed at once.
            IdleState::Closed => return,
            state => return discarded(state),
        }
        let key = PoolKey::new(&conn.target, conn.policy, conn.hop);
        let limit = conn.slot().limit.clone();
        let stale = conn.generation != self.settings.get().generation;
        if stale
            || conn.deliveries >= limit.max_deliveries.load(Ordering::SeqCst)
            || self.wanted_elsewhere(&limit)
            || conn.slot().should_yield(None)
        {
            return self.retire(conn);
        }
        self.count_idle(&conn, 1, 0);
        self.idle.borrow_mut().entry(key).or_default().push(conn);
        if let Some(returned) = self.returned.borrow().get(&limit.key) {
            returned.notify_one();
        }
    }

    /// Takes out the idle connections `drop_it` picks (at most `limit`), and retires them.
    fn retire_idle_up_to(&self, limit: usize, drop_it: impl Fn(&PoolKey, &Connection<T>) -> bool) {
        let mut gone = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            for (key, list) in idle.iter_mut() {
                let mut i = 0;
                while i < list.len() && gone.len() < limit {
                    if drop_it(key, &list[i]) { gone.push(list.swap_remove(i)) } else { i += 1 }
                }
            }
            idle.retain(|_, list| !list.is_empty());
        }
        for conn in gone {
            self.count_idle(&conn, 0, 1);
            self.retire(conn);
        }
    }

    fn retire_idle(&self, drop_it: impl Fn(&PoolKey, &Connection<T>) -> bool) {
        self.retire_idle_up_to(usize::MAX, drop_it);
    }

    fn retire_idle_once(&self, drop_it: impl Fn(&PoolKey, &Connection<T>) -> bool) {
        self.retire_idle_up_to(1, drop_it);
    }

    /// Closes idle connections whose slots a starved worker waits for.
    pub fn shed(&self) {
        self.retire_idle(|_, c| self.wanted_elsewhere(&c.slot().limit));
    }

    /// Closes idle connections past the idle timeout, those a reload made stale, and those
    /// another node's wait for a shared cap asks for; called periodically.
    pub fn reap(&self) {
        let generation = self.settings.get().generation;
        self.retire_idle(|_, c| {
            c.idle_since.elapsed() >= self.idle_timeout || c.generation != generation || c.slot().should_yield(Some(c.idle_since.elapsed()))
        });
    }
}
