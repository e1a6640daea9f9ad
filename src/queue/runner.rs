//! The queue runner: hands due messages to delivery and records what happened.
//!
//! Only the schedule index is consulted (earliest first), so deferred mail is never held in
//! memory. The runner sleeps until the next due time, a new message, or a finished delivery;
//! it never polls in a loop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::capacity::{Capacity, Permit};

use crate::accounting::{self, Accounting, Event};
use crate::clock::Clock;
use crate::delivery::Delivery;
use crate::metrics as m;
use crate::spool::Spool;

/// The longest the runner sleeps without a reason; a safety net, not a poll.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How often destinations nobody uses are forgotten (their series leave the metrics with them).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Runner {
    spool: Arc<dyn Spool>,
    delivery: Arc<Delivery>,
    /// Woken by intake (new mail) and by finished deliveries.
    pub notify: Arc<Notify>,
    in_flight: Mutex<HashSet<String>>,
    /// Flushed by an operator: attempted at the next dispatch, every queued recipient due.
    flushed: Mutex<HashSet<String>>,
    /// Deleted by an operator (named) while being delivered: removed once that attempt has recorded.
    doomed: Mutex<HashMap<String, String>>,
    /// Bounced by an operator while being delivered, with this reply: once that attempt has recorded.
    bouncing: Mutex<HashMap<String, (crate::smtp::reply::Reply, String)>>,
    /// Held (true) or released (false) while being delivered: applied once that attempt has recorded.
    holding: Mutex<HashMap<String, (bool, String)>>,
    /// `delivery.max_concurrent_deliveries`, resized by a reload.
    permits: Arc<Capacity>,
    /// Every time the runner and its attempts decide on.
    pub(super) clock: Arc<dyn Clock>,
    pub(super) accounting: Arc<Accounting>,
}

impl Runner {
    pub fn new(
        spool: Arc<dyn Spool>,
        delivery: Arc<Delivery>,
        notify: Arc<Notify>,
        clock: Arc<dyn Clock>,
        accounting: Arc<Accounting>,
    ) -> Arc<Runner> {
        let permits = Capacity::new(delivery.config().delivery.max_concurrent_deliveries);
        let (in_flight, flushed, doomed, holding, bouncing) = Default::default();
        Arc::new(Runner { spool, delivery, notify, in_flight, flushed, doomed, holding, bouncing, permits, clock, accounting })
    }

    pub fn delivery(&self) -> Arc<Delivery> {
        self.delivery.clone()
    }

    /// The config in force now; an attempt takes it once and keeps it to the end.
    pub(super) fn config(&self) -> Arc<crate::config::Config> {
        self.delivery.config()
    }

    /// Applies a reloaded `delivery.max_concurrent_deliveries` (delivery's own settings are
    /// installed through [`Delivery::install`]).
    pub fn reconfigure(&self, config: &crate::config::Config) {
        self.permits.resize(config.delivery.max_concurrent_deliveries);
        self.notify.notify_one();
    }

    pub(super) fn spool(&self) -> &Arc<dyn Spool> {
        &self.spool
    }

    /// The messages being delivered now, by queue id.
    pub fn in_flight_ids(&self) -> HashSet<String> {
        self.in_flight.lock().expect("in-flight lock").clone()
    }

    /// Messages being delivered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("in-flight lock").len()
    }

    /// Makes these messages due now (`postqueue -i`): each is attempted at once, every queued
    /// recipient of it, whatever its next attempt said, and the suspension of its destinations
    /// ends. One already being delivered is left to that attempt. Nothing is written here:
    /// the attempt records its outcome like any other, so a flush cannot race a delivery.
    pub fn flush(&self, queue_ids: impl IntoIterator<Item = String>, domains: &[String]) -> usize {
        let shaper = self.delivery.shaper();
        for domain in domains {
            shaper.resume(domain, self.clock.now());
        }
        let mut flushed = self.flushed.lock().expect("flushed lock");
        let before = flushed.len();
        flushed.extend(queue_ids);
        let added = flushed.len() - before;
        drop(flushed);
        self.notify.notify_one();
        added
    }

    /// Dispatches due messages until shut down; deliveries under way finish on their own.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // Pruning goes by the queue's clock (so virtual time reaches it); the interval only
        // makes sure the loop wakes to look.
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut pruned_at = self.clock.now();
        let jumped = self.clock.jumped();
        loop {
            let now = self.clock.now();
            // abs_diff: a wall clock stepped back must not stop pruning until it catches up.
            if now.abs_diff(pruned_at) >= PRUNE_EVERY.as_secs() {
                self.delivery.shaper().prune(now);
                pruned_at = now;
            }
            let sleep = self.dispatch();
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = async { match &jumped { Some(j) => j.notified().await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = prune.tick() => {}
                _ = shutdown.changed() => {
                    // Deliveries under way finish their transaction; nothing new starts.
                    self.delivery.stop();
                    return;
                }
            }
        }
    }

    /// Deletes these messages from the queue (`postsuper -d`), in one spool change. One being
    /// delivered now is removed as soon as that attempt has recorded its outcome, so it is
    /// neither resurrected by the attempt nor interrupted on the wire.
    pub async fn delete(&self, queue_ids: Vec<String>, operator: &str) -> Result<(), crate::spool::SpoolError> {
        let (durable, records) = {
            // Held while removing, so the dispatcher cannot start one of them meanwhile (and
            // no attempt can finish one: that needs it in flight).
            let in_flight = self.in_flight.lock().expect("in-flight lock");
            let (busy, idle): (Vec<String>, Vec<String>) = queue_ids.into_iter().partition(|id| in_flight.contains(id));
            // Delivered (and gone) since the operator's list was made: nothing to remove.
            let idle: Vec<crate::spool::Envelope> = idle.iter().filter_map(|id| self.spool.get(id).ok()).collect();
            self.doomed.lock().expect("doomed lock").extend(busy.into_iter().map(|id| (id, operator.to_string())));
            self.flushed.lock().expect("flushed lock").retain(|id| !idle.iter().any(|e| e.queue_id == *id));
            let records = self.admin_records(Event::Deleted, &idle, operator);
            let remove = idle.into_iter().map(|e| e.queue_id).collect();
            (self.spool.apply(crate::spool::Changes { remove, ..Default::default() })?, records)
        };
        durable.wait().await?;
        records.into_iter().for_each(|r| self.accounting.emit(r));
        Ok(())
    }

    /// Per-message records of an operator's action, if accounting is on.
    fn admin_records(&self, event: Event, envelopes: &[crate::spool::Envelope], operator: &str) -> Vec<accounting::Record> {
        if !self.accounting.enabled() {
            return Vec::new();
        }
        let record = |env| accounting::Record { operator: Some(operator.to_string()), ..accounting::message_record(event, env) };
        envelopes.iter().map(record).collect()
    }

    /// Holds (`postsuper -h`) or releases (`postsuper -H`) these messages, each a durable
    /// change of its envelope: a held message is out of the schedule, across restarts too. A
    /// released one is flushed. One being delivered is changed once that attempt has recorded.
    pub async fn hold(&self, queue_ids: Vec<String>, held: bool, operator: &str) -> Result<(), crate::spool::SpoolError> {
        let released = queue_ids.clone();
        let (durable, records) = {
            let in_flight = self.in_flight.lock().expect("in-flight lock");
            let (busy, idle): (Vec<String>, Vec<String>) = queue_ids.into_iter().partition(|id| in_flight.contains(id));
            self.holding.lock().expect("holding lock").extend(busy.into_iter().map(|id| (id, (held, operator.to_string()))));
            let update = self.held_envelopes(&idle, held);
            let records = self.admin_records(if held { Event::Held } else { Event::Released }, &update, operator);
            (self.spool.apply(crate::spool::Changes { update, ..Default::default() })?, records)
        };
        durable.wait().await?;
        records.into_iter().for_each(|r| self.accounting.emit(r));
        if !held {
            self.flush(released, &[]);
        }
        Ok(())
    }

    /// Bounces every queued recipient of these messages with `reply` (a report to the sender
    /// per RFC 3464, as for any failure). Messages are claimed like a dispatch, so no delivery
    /// starts meanwhile; one being delivered is bounced once that attempt has recorded.
    pub async fn bounce(
        self: &Arc<Self>,
        queue_ids: Vec<String>,
        reply: crate::smtp::reply::Reply,
        operator: &str,
    ) -> Result<(), crate::spool::SpoolError> {
        let idle: Vec<String> = {
            let mut in_flight = self.in_flight.lock().expect("in-flight lock");
            let (busy, idle): (Vec<String>, Vec<String>) = queue_ids.into_iter().partition(|id| in_flight.contains(id));
            self.bouncing.lock().expect("bouncing lock").extend(busy.into_iter().map(|id| (id, (reply.clone(), operator.to_string()))));
            in_flight.extend(idle.iter().cloned());
            idle
        };
        let mut result = Ok(());
        for queue_id in &idle {
            if let Err(e) = self.bounce_now(queue_id, &reply, operator).await {
                result = Err(e);
            }
        }
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        idle.iter().for_each(|id| {
            in_flight.remove(id);
        });
        drop(in_flight);
        // The reports are due now.
        self.notify.notify_one();
        result
    }

    /// A hold or delete an operator asked for while the message was in flight; called under
    /// the in-flight lock, so no request can slip between it and the message leaving flight.
    /// The changes are made here; their records are for the caller to emit once each is
    /// durable (it cannot wait under the lock).
    fn held_or_deleted_after_attempt(&self, queue_id: &str) -> Vec<(crate::spool::Durable, Vec<accounting::Record>)> {
        let mut pending = Vec::new();
        let hold = self.holding.lock().expect("holding lock").remove(queue_id);
        if let Some((held, operator)) = hold {
            let update = self.held_envelopes(&[queue_id.to_string()], held);
            let records = self.admin_records(if held { Event::Held } else { Event::Released }, &update, &operator);
            match self.spool.apply(crate::spool::Changes { update, ..Default::default() }) {
                Ok(durable) => pending.push((durable, records)),
                Err(e) => tracing::error!(queue_id = %queue_id, error = %e, "holding the message after its attempt failed"),
            }
        }
        let doomed = self.doomed.lock().expect("doomed lock").remove(queue_id);
        if let Some(operator) = doomed
            && let Ok(env) = self.spool.get(queue_id)
        {
            let records = self.admin_records(Event::Deleted, std::slice::from_ref(&env), &operator);
            match self.spool.apply(crate::spool::Changes { remove: vec![env.queue_id], ..Default::default() }) {
                Ok(durable) => pending.push((durable, records)),
                Err(e) => tracing::error!(queue_id = %queue_id, error = %e, "deleting the message after its attempt failed"),
            }
        }
        pending
    }

    /// The envelopes of `ids` (those still queued and not already so) with `held` set.
    fn held_envelopes(&self, ids: &[String], held: bool) -> Vec<crate::spool::Envelope> {
        let envelopes = ids.iter().filter_map(|id| self.spool.get(id).ok());
        envelopes.filter(|e| e.held != held).map(|e| crate::spool::Envelope { held, ..e }).collect()
    }

    /// Starts every due message there is room for; returns how long to sleep.
    fn dispatch(self: &Arc<Self>) -> Duration {
        let now = self.clock.now();
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        {
            let mut flushed = self.flushed.lock().expect("flushed lock");
            let ids: Vec<String> = flushed.iter().filter(|id| !in_flight.contains(*id)).cloned().collect();
            for queue_id in ids {
                let Some(permit) = self.permits.try_acquire() else { return MAX_SLEEP };
                flushed.remove(&queue_id);
                in_flight.insert(queue_id.clone());
                metrics::gauge!(m::QUEUE_IN_FLIGHT).increment(1.0);
                let runner = self.clone();
                tokio::spawn(async move { runner.deliver(queue_id, permit, true).await });
            }
        }
        let limit = in_flight.len() + 256;
        let upcoming = match self.spool.upcoming(limit) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "reading the queue schedule failed");
                return Duration::from_secs(5);
            }
        };
        let more = upcoming.len() == limit;
        for (due, queue_id) in upcoming {
            if in_flight.contains(&queue_id) {
                continue;
            }
            if due > now {
                return Duration::from_secs(due - now).min(MAX_SLEEP);
            }
            let Some(permit) = self.permits.try_acquire() else {
                // Full: a finishing delivery wakes the runner.
                return MAX_SLEEP;
            };
            in_flight.insert(queue_id.clone());
            metrics::gauge!(m::QUEUE_IN_FLIGHT).increment(1.0);
            let runner = self.clone();
            tokio::spawn(async move { runner.deliver(queue_id, permit, false).await });
        }
        // The scan stopped at its limit with everything due: look again at once.
        if more { Duration::ZERO } else { MAX_SLEEP }
    }

    async fn deliver(self: Arc<Self>, queue_id: String, _permit: Permit, flushed: bool) {
        if let Err(e) = self.attempt(&queue_id, flushed).await {
            tracing::error!(queue_id = %queue_id, error = %e, "delivery attempt could not be recorded");
        }
        self.leave_flight(&queue_id).await;
        metrics::gauge!(m::QUEUE_IN_FLIGHT).decrement(1.0);
        self.notify.notify_one();
    }

    /// Claims the messages no delivery holds, as a dispatch does (no attempt starts on them
    /// until [`Runner::leave_flight`]); the others are returned apart.
    pub(super) fn claim(&self, queue_ids: Vec<String>) -> (Vec<String>, Vec<String>) {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        let (busy, idle): (Vec<String>, Vec<String>) = queue_ids.into_iter().partition(|id| in_flight.contains(id));
        in_flight.extend(idle.iter().cloned());
        (idle, busy)
    }

    /// A message's work is over (an attempt, a transfer): what operators asked for meanwhile
    /// (bounce, hold, delete) is done now, and the message leaves flight.
    pub(super) async fn leave_flight(&self, queue_id: &str) {
        let queue_id = queue_id.to_string();
        // An operator's bounce of this message waits for its attempt (it cannot be made while
        // holding the in-flight lock); one asked for meanwhile is seen under the lock below.
        // The in-flight lock is released at the end of this block, before any wait below.
        let pending = {
            let mut in_flight = loop {
                let bounce = self.bouncing.lock().expect("bouncing lock").remove(&queue_id);
                if let Some((reply, operator)) = bounce
                    && let Err(e) = self.bounce_now(&queue_id, &reply, &operator).await
                {
                    tracing::error!(queue_id = %queue_id, error = %e, "bouncing the message after its attempt failed");
                }
                let in_flight = self.in_flight.lock().expect("in-flight lock");
                if !self.bouncing.lock().expect("bouncing lock").contains_key(&queue_id) {
                    break in_flight;
                }
            };
            let pending = self.held_or_deleted_after_attempt(&queue_id);
            in_flight.remove(&queue_id);
            pending
        };
        for (durable, records) in pending {
            match durable.wait().await {
                Ok(()) => records.into_iter().for_each(|r| self.accounting.emit(r)),
                Err(e) => tracing::error!(queue_id = %queue_id, error = %e, "an operator's change after the attempt was not recorded"),
            }
        }
    }
}
