//! The queue runner: hands due messages to delivery and records what happened.
//!
//! Only the schedule index is consulted (earliest first), so deferred mail is never held in
//! memory. The runner sleeps until the next due time, a new message, or a finished delivery;
//! it never polls in a loop.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use super::dsn;
use super::outcome::{self, RetryPolicy, Tally};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::attempt::Attempted;
use crate::delivery::route::{self, Route};
use crate::metrics as m;
use crate::smtp::client::{Message, RcptOutcome, TlsPolicy};
use crate::smtp::reply::{Enhanced, Reply};
use crate::spool::{Changes, Envelope, Identity, RecipientState, Spool, SpoolError};

/// Bodies above this size are read on a blocking thread.
const BLOCKING_READ_THRESHOLD: u64 = 256 * 1024;

/// The longest the runner sleeps without a reason; a safety net, not a poll.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub struct Runner {
    spool: Arc<dyn Spool>,
    delivery: Arc<Delivery>,
    config: Arc<Config>,
    /// Woken by intake (new mail) and by finished deliveries.
    pub notify: Arc<Notify>,
    in_flight: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Runner {
    pub fn new(spool: Arc<dyn Spool>, delivery: Arc<Delivery>, notify: Arc<Notify>) -> Arc<Runner> {
        let config = delivery.config().clone();
        let permits = Arc::new(Semaphore::new(config.delivery.max_concurrent_deliveries));
        Arc::new(Runner { spool, delivery, config, notify, in_flight: Mutex::new(HashSet::new()), permits })
    }

    pub fn delivery(&self) -> Arc<Delivery> {
        self.delivery.clone()
    }

    /// Messages being delivered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("in-flight lock").len()
    }

    /// Dispatches due messages until shut down; deliveries under way finish on their own.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        loop {
            let sleep = self.dispatch();
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = prune.tick() => self.delivery.shaper().prune(unix_now()),
                _ = shutdown.changed() => {
                    // Deliveries under way finish their transaction; nothing new starts.
                    self.delivery.stop();
                    return;
                }
            }
        }
    }

    /// Starts every due message there is room for; returns how long to sleep.
    fn dispatch(self: &Arc<Self>) -> Duration {
        let now = unix_now();
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
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
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                // Full: a finishing delivery wakes the runner.
                return MAX_SLEEP;
            };
            in_flight.insert(queue_id.clone());
            metrics::gauge!(m::QUEUE_IN_FLIGHT).increment(1.0);
            let runner = self.clone();
            tokio::spawn(async move { runner.deliver(queue_id, permit).await });
        }
        // The scan stopped at its limit with everything due: look again at once.
        if more { Duration::ZERO } else { MAX_SLEEP }
    }

    async fn deliver(self: Arc<Self>, queue_id: String, _permit: OwnedSemaphorePermit) {
        if let Err(e) = self.attempt(&queue_id).await {
            tracing::error!(queue_id = %queue_id, error = %e, "delivery attempt could not be recorded");
        }
        self.in_flight.lock().expect("in-flight lock").remove(&queue_id);
        metrics::gauge!(m::QUEUE_IN_FLIGHT).decrement(1.0);
        self.notify.notify_one();
    }

    /// One attempt for every due recipient of a message, then one atomic spool change.
    async fn attempt(&self, queue_id: &str) -> Result<(), SpoolError> {
        let mut env = match self.spool.get(queue_id) {
            Ok(e) => e,
            Err(SpoolError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        // Small bodies are in the page cache and read in microseconds: a thread hop would cost more.
        let large = env.body.is_some_and(|b| b.len > BLOCKING_READ_THRESHOLD);
        let read = if large {
            let (spool, read) = (self.spool.clone(), env.clone());
            tokio::task::spawn_blocking(move || spool.read_body(&read)).await.unwrap_or_else(|e| Err(SpoolError::Io(e.to_string())))
        } else {
            self.spool.read_body(&env)
        };
        let body = match read {
            Ok(b) => Arc::new(b),
            Err(e) => return self.park(env, &format!("message body unreadable: {e}")).await,
        };
        let now = unix_now();
        // Recipients that must travel over TLS get transactions of their own.
        let mut groups: BTreeMap<(String, bool), Vec<usize>> = BTreeMap::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.state == RecipientState::Queued && r.next_attempt.unwrap_or(env.arrival) <= now {
                // `TLS-Required: No` sets the recipient side's policy aside (intake never sets
                // `tls_optional` together with REQUIRETLS).
                let tls_only = !env.params.tls_optional && self.config.requires_tls(&r.mailbox);
                let key = (route::destination_key(&r.mailbox.domain, &self.config), tls_only);
                groups.entry(key).or_default().push(i);
            }
        }
        let mut results: Vec<(usize, Attempted)> = Vec::new();
        // Held back by shaping (not attempts): recipient, when to try again, why.
        let mut postponed: Vec<(usize, u64, String)> = Vec::new();
        let priority = env.params.priority.unwrap_or(0);
        let mut stop = self.delivery.stopping();
        for ((_, tls_only), indexes) in &groups {
            if *stop.borrow() {
                break;
            }
            metrics::counter!(m::DELIVERY_ATTEMPTS).increment(1);
            let domain = env.recipients[indexes[0]].mailbox.domain.clone();
            match self.delivery.route(&domain).await {
                Route::Fail(reply) => results.extend(indexes.iter().map(|&i| {
                    (i, Attempted { outcome: RcptOutcome::Failed(reply.clone()), remote: None, remote_dsn: false, remote_said: false })
                })),
                Route::Defer(reply) => results.extend(indexes.iter().map(|&i| {
                    (i, Attempted { outcome: RcptOutcome::Deferred(reply.clone()), remote: None, remote_dsn: false, remote_said: false })
                })),
                Route::Targets(_) if env.params.requiretls && route::next_hop(&domain.to_ascii_lowercase(), &self.config).is_none() => {
                    // RFC 8689 4.2.1: the next hop must be authenticated (DNSSEC or MTA-STS for
                    // MX records; neither exists here), so only a configured route qualifies.
                    let reply = Reply::new(
                        550,
                        Enhanced(5, 7, 30),
                        format!(
                            "REQUIRETLS support required: no authenticated route to {domain} (only configured routes and smarthosts qualify)"
                        ),
                    );
                    let failed = Attempted { outcome: RcptOutcome::Failed(reply), remote: None, remote_dsn: false, remote_said: false };
                    results.extend(indexes.iter().map(|&i| (i, failed.clone())));
                }
                Route::Targets(targets) => {
                    let shaper = self.delivery.shaper();
                    let bucket = shaper.bucket(&domain, &targets);
                    if let Some((until, why)) = bucket.suspended(now) {
                        metrics::counter!(m::SHAPING_POSTPONED, "reason" => "suspended").increment(1);
                        let why = format!("Destination {} suspended: {why}", bucket.name);
                        postponed.extend(indexes.iter().map(|&i| (i, until, why.clone())));
                        continue;
                    }
                    let policy = self.policy_for(&env, &domain, *tls_only);
                    let chunks: Vec<&[usize]> = indexes.chunks(bucket.max_recipients).collect();
                    for (k, chunk) in chunks.iter().enumerate() {
                        if *stop.borrow() {
                            break;
                        }
                        let waited = match &bucket.messages {
                            Some(queue) => tokio::select! {
                                r = queue.acquire(priority, bucket.max_waiting()) => Some(r),
                                _ = stop.wait_for(|stopping| *stopping) => break,
                            },
                            None => None,
                        };
                        if let (Some(queue), Some(Err(wait))) = (&bucket.messages, waited) {
                            // Too many wait in memory already: back to the queue on disk.
                            metrics::counter!(m::SHAPING_POSTPONED, "reason" => "rate").increment(1);
                            let until = unix_now() + bucket.come_back_in(wait).as_secs_f64().ceil().max(1.0) as u64;
                            let why = format!("Waiting for the message rate of {} ({})", bucket.name, queue.rate());
                            postponed.extend(chunks[k..].iter().flat_map(|c| c.iter()).map(|&i| (i, until, why.clone())));
                            break;
                        }
                        let msg = Message {
                            from: env.from.clone(),
                            params: env.params.clone(),
                            recipients: chunk
                                .iter()
                                .map(|&i| (env.recipients[i].mailbox.clone(), env.recipients[i].params.clone()))
                                .collect(),
                            body: body.clone(),
                        };
                        let started = unix_now_ms();
                        let report = self.delivery.send(targets.clone(), bucket.clone(), msg, policy, self.delivery.logs_in(&domain)).await;
                        shaper.record(&bucket, &report.signal, started, unix_now_ms());
                        results.extend(chunk.iter().copied().zip(report.results).filter_map(|(i, r)| Some((i, r?))));
                    }
                }
            }
        }
        if results.is_empty() && postponed.is_empty() {
            return Ok(()); // Stopped before anything was tried.
        }
        let d = &self.config.delivery;
        let schedule: Vec<Duration> = d.retry.iter().map(|r| r.0).collect();
        let delay_warning = Some(d.delay_warning.0).filter(|w| !w.is_zero());
        let policy = RetryPolicy { schedule: &schedule, max_age: d.max_age.0, delay_warning };
        let now = unix_now();
        outcome::postpone(&mut env, &postponed, &mut results, now, &policy);
        let tally = outcome::record(&mut env, &results, now, &policy);
        self.log_results(&env, &results, &tally, now);
        let mut changes = Changes::default();
        if let Some(bounce) = self.report(&env, &tally, &body, now) {
            changes.store.push(bounce);
        }
        if outcome::is_final(&env) {
            changes.remove.push(env.queue_id.clone());
        } else {
            changes.update.push(env);
        }
        self.spool.apply(changes)?.wait().await
    }

    /// Verified TLS for REQUIRETLS and TLS-only recipients; the domain's policy otherwise,
    /// where `TLS-Required: No` turns `required` into opportunistic (never for a smarthost
    /// login, which protects our credentials, not the message).
    fn policy_for(&self, env: &Envelope, domain: &str, tls_only: bool) -> TlsPolicy {
        if env.params.requiretls || tls_only {
            return TlsPolicy::Required;
        }
        match self.delivery.tls_policy(domain) {
            TlsPolicy::Required if env.params.tls_optional && !self.delivery.logs_in(domain) => TlsPolicy::Opportunistic,
            policy => policy,
        }
    }

    /// A message that cannot be read is retried in an hour, not in a hot loop.
    async fn park(&self, mut env: Envelope, why: &str) -> Result<(), SpoolError> {
        tracing::error!(queue_id = %env.queue_id, "{why}");
        let later = unix_now() + 3600;
        for r in env.recipients.iter_mut().filter(|r| r.state == RecipientState::Queued) {
            r.next_attempt = Some(later);
            r.last_reply = Some(why.to_string());
        }
        self.spool.update(&env)?.wait().await
    }

    fn log_results(&self, env: &Envelope, results: &[(usize, Attempted)], tally: &Tally, now: u64) {
        for (i, a) in results {
            let r = &env.recipients[*i];
            let status = match r.state {
                RecipientState::Delivered => "delivered",
                RecipientState::Failed => "bounced",
                RecipientState::Queued => "deferred",
            };
            tracing::info!(queue_id = %env.queue_id, to = %r.mailbox, status, remote = a.remote.as_deref().unwrap_or("-"), reply = r.last_reply.as_deref().unwrap_or(""), "delivery");
            if r.state == RecipientState::Delivered {
                let latency = match env.arrival_ms {
                    Some(ms) => unix_now_ms().saturating_sub(ms) as f64 / 1000.0,
                    None => now.saturating_sub(env.arrival) as f64,
                };
                metrics::histogram!(m::DELIVERY_LATENCY).record(latency);
            }
        }
        metrics::counter!(m::DELIVERED).increment(tally.delivered as u64);
        metrics::counter!(m::DEFERRED).increment(tally.deferred as u64);
        for f in &tally.failed {
            let class = if f.reply.code >= 500 { "5xx" } else { "4xx" };
            metrics::counter!(m::BOUNCED, "class" => class).increment(1);
        }
    }

    /// The report for this attempt (failures, delay warnings, relayed notices), if anyone
    /// should get one: the sender, or the postmaster when a bounce of ours failed. Null-sender
    /// mail gets none (no bounce loops).
    fn report(&self, env: &Envelope, tally: &Tally, original: &[u8], now: u64) -> Option<(Envelope, Vec<u8>)> {
        let postmaster = self.config.postmaster();
        let failures: Vec<_> = tally.failed.iter().filter(|f| dsn::wants_failure_notice(env, f.index)).cloned().collect();
        let to = match (&env.from, &env.identity) {
            (Some(sender), _) => sender.clone(),
            // Our own bounce failed; tell the postmaster, unless that is what failed.
            (None, Identity::Bounce) if !failures.is_empty() && failures.iter().all(|f| env.recipients[f.index].mailbox != postmaster) => {
                postmaster
            }
            (None, _) => {
                if !failures.is_empty() {
                    tracing::info!(queue_id = %env.queue_id, "no bounce for a null-sender message");
                }
                return None;
            }
        };
        let notices: Vec<_> = if env.from.is_some() {
            failures.into_iter().chain(tally.delayed.clone()).chain(tally.relayed.clone()).collect()
        } else {
            failures
        };
        if notices.is_empty() {
            return None;
        }
        let queue_id = self.spool.new_queue_id();
        let retry_until = Some(env.arrival + self.config.delivery.max_age.0.as_secs());
        let b = dsn::Report { hostname: &self.config.hostname.0, queue_id: &queue_id, to: format!("<{to}>"), now, retry_until };
        let body = dsn::report(&b, env, &notices, original);
        let envelope = Envelope::report(queue_id, to, &self.config.hostname.0, now);
        tracing::info!(queue_id = %env.queue_id, report = %envelope.queue_id, to = %envelope.recipients[0].mailbox, recipients = notices.len(), "delivery status notification queued");
        Some((envelope, body))
    }
}
