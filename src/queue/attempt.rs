//! One attempt of one message, in named stages: load it, group its due recipients by
//! destination, try each group (route, TLS requirements, suspension, rate, send), then settle
//! the results into one spool change (states, retries, reports). Time comes from the runner's
//! clock, so what an attempt decides can be tested on virtual time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::dsn;
use super::mx_policy::MxPolicy;
use super::outcome::{self, RetryPolicy, Tally};
use super::runner::Runner;
use crate::accounting::{self, Event};
use crate::config::Config;
use crate::delivery::attempt::Attempted;
use crate::delivery::route::{self, Route, Target};
use crate::delivery::tls_rpt::PolicyKey;
use crate::metrics as m;
use crate::shaping::Bucket;
use crate::smtp::client::{Message, RcptOutcome, TlsPolicy};
use crate::smtp::reply::{Enhanced, Reply};
use crate::spool::{Changes, Envelope, Identity, RecipientState, SpoolError};

/// Bodies above this size are read on a blocking thread.
const BLOCKING_READ_THRESHOLD: u64 = 256 * 1024;

/// Recipients due now, by destination and by whether they must travel over TLS (those get
/// transactions of their own).
pub type Groups = BTreeMap<(String, bool), Vec<usize>>;

/// What trying the groups gathered: results (each an attempt) and recipients shaping held back
/// (not attempts: recipient, when to try again, why).
#[derive(Default)]
pub(super) struct Gathered {
    pub(super) results: Vec<(usize, Attempted)>,
    pub(super) postponed: Vec<(usize, u64, String)>,
    /// The operator whose `sluice queue bounce` (or `transfer`) these results are.
    pub(super) operator: Option<String>,
}

/// An attempt's spool change, and the accounting records to emit once it is durable.
pub(super) struct Settled {
    changes: Changes,
    records: Vec<accounting::Record>,
}

/// The recipients of `env` due at `now` (unix seconds), grouped.
pub fn due_groups(env: &Envelope, config: &Config, now: u64) -> Groups {
    let mut groups = Groups::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if r.state == RecipientState::Queued && r.next_attempt.unwrap_or(env.arrival) <= now {
            // `TLS-Required: No` sets the recipient side's policy aside (intake never sets
            // `tls_optional` together with REQUIRETLS).
            let tls_only = !env.params.tls_optional && config.requires_tls(&r.mailbox);
            let key = (route::destination_key(&r.mailbox.domain, config), tls_only);
            groups.entry(key).or_default().push(i);
        }
    }
    groups
}

impl Runner {
    /// One attempt for every due recipient of a message (every queued one when `flushed`),
    /// then one atomic spool change.
    pub(super) async fn attempt(&self, queue_id: &str, flushed: bool) -> Result<(), SpoolError> {
        let Some((env, body)) = self.load(queue_id).await? else { return Ok(()) };
        if env.held {
            return Ok(()); // Held since it was scheduled (or flushed): it waits for a release.
        }
        let due = if flushed { u64::MAX } else { self.clock.now() };
        let groups = due_groups(&env, &self.config(), due);
        let mut gathered = Gathered::default();
        let mut stop = self.delivery().stopping();
        for ((_, tls_only), indexes) in &groups {
            if *stop.borrow() {
                break;
            }
            self.try_group(&env, &body, *tls_only, indexes, &mut stop, &mut gathered).await;
        }
        if gathered.results.is_empty() && gathered.postponed.is_empty() {
            return Ok(()); // Stopped before anything was tried.
        }
        let settled = self.settle(env, gathered, &body);
        self.record(settled).await
    }

    /// Bounces every queued recipient of a message with `reply` (an operator's `queue bounce`):
    /// the same settling as an attempt's (states, the RFC 3464 report to the sender, removal),
    /// in one spool change.
    pub(super) async fn bounce_now(&self, queue_id: &str, reply: &Reply, operator: &str) -> Result<(), SpoolError> {
        let Some((env, body)) = self.load(queue_id).await? else { return Ok(()) };
        let results = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Queued)
            .map(|(i, _)| (i, Attempted::local(RcptOutcome::Failed(reply.clone()))))
            .collect();
        let settled = self.settle(env, Gathered { results, postponed: Vec::new(), operator: Some(operator.to_string()) }, &body);
        self.record(settled).await
    }

    /// Applies an attempt's change; its records follow once it is durable.
    pub(super) async fn record(&self, settled: Settled) -> Result<(), SpoolError> {
        self.spool().apply(settled.changes)?.wait().await?;
        settled.records.into_iter().for_each(|r| self.accounting.emit(r));
        Ok(())
    }

    /// The envelope and its body; `None` when the message is gone (or was just parked because
    /// its body cannot be read).
    pub(super) async fn load(&self, queue_id: &str) -> Result<Option<(Envelope, Arc<Vec<u8>>)>, SpoolError> {
        let spool = self.spool();
        let env = match spool.get(queue_id) {
            Ok(e) => e,
            Err(SpoolError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Small bodies are in the page cache and read in microseconds: a thread hop would cost more.
        let large = env.body.is_some_and(|b| b.len > BLOCKING_READ_THRESHOLD);
        let read = if large {
            let (spool, read) = (spool.clone(), env.clone());
            tokio::task::spawn_blocking(move || spool.read_body(&read)).await.unwrap_or_else(|e| Err(SpoolError::Io(e.to_string())))
        } else {
            spool.read_body(&env)
        };
        match read {
            Ok(b) => Ok(Some((env, Arc::new(b)))),
            Err(e) => self.park(env, &format!("message body unreadable: {e}")).await.map(|_| None),
        }
    }

    /// One destination's recipients: routed, checked against REQUIRETLS and suspension, then
    /// sent in transactions of at most the destination's recipients each.
    async fn try_group(
        &self,
        env: &Envelope,
        body: &Arc<Vec<u8>>,
        tls_only: bool,
        indexes: &[usize],
        stop: &mut tokio::sync::watch::Receiver<bool>,
        gathered: &mut Gathered,
    ) {
        metrics::counter!(m::DELIVERY_ATTEMPTS).increment(1);
        let domain = env.recipients[indexes[0]].mailbox.domain.clone();
        let delivery = self.delivery();
        match delivery.route(&domain).await {
            Route::Fail(reply) => {
                gathered.results.extend(indexes.iter().map(|&i| (i, Attempted::local(RcptOutcome::Failed(reply.clone())))))
            }
            Route::Defer(reply) => {
                gathered.results.extend(indexes.iter().map(|&i| (i, Attempted::local(RcptOutcome::Deferred(reply.clone())))))
            }
            Route::Targets(targets) => {
                let by_mx = route::next_hop(&domain.to_ascii_lowercase(), &self.config()).is_none() && !domain.starts_with('[');
                let MxPolicy { targets, enforced, testing, dane, reporting, published } = match by_mx {
                    true => match self.mx_policy(env, &domain, targets).await {
                        Ok(decided) => decided,
                        Err(outcome) => {
                            gathered.results.extend(indexes.iter().map(|&i| (i, Attempted::local(outcome.clone()))));
                            return;
                        }
                    },
                    false => MxPolicy { targets, enforced: false, testing: false, dane: false, reporting: None, published: None },
                };
                let bucket = delivery.shaper().bucket(&domain, &targets);
                if let Some((until, why)) = bucket.suspended(self.clock.now()) {
                    metrics::counter!(m::SHAPING_POSTPONED, "reason" => "suspended").increment(1);
                    let why = format!("Destination {} suspended: {why}", bucket.name);
                    gathered.postponed.extend(indexes.iter().map(|&i| (i, until, why.clone())));
                    return;
                }
                // Another node's suspension holds here too (`cluster.redis`).
                if let Some(cluster) = delivery.shaper().cluster()
                    && let Some((until_ms, why)) = cluster.shared_suspension(&bucket.name).await
                {
                    metrics::counter!(m::SHAPING_POSTPONED, "reason" => "suspended").increment(1);
                    let why = format!("Destination {} suspended: {why}", bucket.name);
                    gathered.postponed.extend(indexes.iter().map(|&i| (i, until_ms.div_ceil(1000), why.clone())));
                    return;
                }
                // An enforced MTA-STS policy: TLS with a certificate valid for the MX name.
                let policy = if enforced { TlsPolicy::Required } else { self.policy_for(env, &domain, tls_only) };
                bucket.note_tls_policy(match (enforced, testing, policy) {
                    _ if dane => "dane",
                    (true, _, _) => "mta-sts-enforce",
                    (_, true, TlsPolicy::Opportunistic) => "mta-sts-testing",
                    (_, _, TlsPolicy::Required) => "required",
                    (_, _, TlsPolicy::Opportunistic) => "opportunistic",
                    (_, _, TlsPolicy::Never) => "none",
                });
                let mut hop = delivery.hop(&domain);
                hop.observe = testing;
                let reporting = reporting.as_ref().map(|key| (key, published.as_ref()));
                self.send_chunks(env, body, &targets, &bucket, (policy, hop, reporting), indexes, stop, gathered).await;
            }
        }
    }

    /// Each transaction's worth of recipients takes a token of the destination's message rate
    /// (waiting in line by priority), then goes to a delivery worker. When the line is full,
    /// the rest go back to the queue on disk with their slot; when delivery stops, the rest
    /// stay as they were.
    #[allow(clippy::too_many_arguments)]
    async fn send_chunks(
        &self,
        env: &Envelope,
        body: &Arc<Vec<u8>>,
        targets: &[Target],
        bucket: &Arc<Bucket>,
        (policy, hop, reporting): (TlsPolicy, crate::delivery::Hop, Option<(&PolicyKey, Option<&crate::delivery::mta_sts::Policy>)>),
        indexes: &[usize],
        stop: &mut tokio::sync::watch::Receiver<bool>,
        gathered: &mut Gathered,
    ) {
        let delivery = self.delivery();
        let priority = env.params.priority.unwrap_or(0);
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
                let until = self.clock.now() + bucket.come_back_in(wait).as_secs_f64().ceil().max(1.0) as u64;
                let why = format!("Waiting for the message rate of {} ({})", bucket.name, queue.rate());
                gathered.postponed.extend(chunks[k..].iter().flat_map(|c| c.iter()).map(|&i| (i, until, why.clone())));
                break;
            }
            let msg = Message {
                from: env.from.clone(),
                params: env.params.clone(),
                recipients: chunk.iter().map(|&i| (env.recipients[i].mailbox.clone(), env.recipients[i].params.clone())).collect(),
                body: body.clone(),
            };
            let started = self.clock.now_ms();
            let report = delivery.send(targets.to_vec(), bucket.clone(), msg, policy, hop).await;
            for host in &report.hosts {
                let (relay, error) = (host.relay.as_str(), host.error.as_str());
                use crate::delivery::attempt::HostEventKind;
                match host.kind {
                    HostEventKind::PlaintextRetry => {
                        tracing::info!(queue_id = %env.queue_id, relay, error, "TLS handshake failed; retrying in plain text")
                    }
                    HostEventKind::PlaintextRemembered => tracing::info!(
                        queue_id = %env.queue_id,
                        relay,
                        error,
                        "plain text at once: this host's TLS handshake failed earlier (delivery.starttls_failure_memory)"
                    ),
                    HostEventKind::Failed => {
                        tracing::info!(queue_id = %env.queue_id, relay, error, "destination host failed; trying the next")
                    }
                }
            }
            if let Some((key, published)) = reporting {
                let allowed = |host: &str| published.is_none_or(|p| p.allows(host));
                delivery.tls_reports().record(key, &report, self.config().delivery.source_address, &allowed);
            }
            delivery.shaper().record(bucket, &report.signal, started, self.clock.now_ms());
            gathered.results.extend(chunk.iter().copied().zip(report.results).filter_map(|(i, r)| Some((i, r?))));
        }
    }

    /// The attempt's results on the envelope (states, next attempts, expiry), logged and
    /// counted, with the report anyone should get: one spool change.
    pub(super) fn settle(&self, mut env: Envelope, gathered: Gathered, body: &[u8]) -> Settled {
        let Gathered { mut results, postponed, operator } = gathered;
        let config = self.config();
        let d = &config.delivery;
        let schedule: Vec<Duration> = d.retry.iter().map(|r| r.0).collect();
        let delay_warning = Some(d.delay_warning.0).filter(|w| !w.is_zero());
        let policy = RetryPolicy { schedule: &schedule, max_age: d.max_age.0, delay_warning };
        let now = self.clock.now();
        outcome::postpone(&mut env, &postponed, &mut results, now, &policy);
        let tally = outcome::record(&mut env, &results, now, &policy);
        // One reading of the clock, so the log line and the record give the same delays.
        let delays = Delays::new(&env, self.clock.as_ref(), now);
        self.log_results(&env, &results, &tally, &delays);
        self.count_reasons(&env, &results, operator.is_some());
        let mut records = match self.accounting.enabled() {
            true => self.records(&env, &results, operator.as_deref(), &delays),
            false => Vec::new(),
        };
        let mut changes = Changes::default();
        if let Some(bounce) = self.report(&env, &tally, body, now) {
            if self.accounting.enabled() {
                records.push(dsn_record(&env, &bounce.0));
            }
            changes.store.push(bounce);
        }
        if outcome::is_final(&env) {
            changes.remove.push(env.queue_id.clone());
        } else {
            changes.update.push(env);
        }
        Settled { changes, records }
    }

    /// The accounting records of an attempt's results (recipients as they now stand).
    fn records(&self, env: &Envelope, results: &[(usize, Attempted)], operator: Option<&str>, delays: &Delays) -> Vec<accounting::Record> {
        let record = |(i, a): &(usize, Attempted)| {
            let r = &env.recipients[*i];
            let event = match (r.state, &a.outcome) {
                (RecipientState::Delivered, _) => Event::Delivered,
                (RecipientState::Queued, _) => Event::Deferred,
                (RecipientState::Failed, _) if operator.is_some() => Event::AdminBounce,
                (RecipientState::Failed, RcptOutcome::Failed(_)) => Event::Bounced,
                (RecipientState::Failed, _) => Event::Expired,
            };
            let mut rec = accounting::recipient_record(event, env, *i);
            let reply = match (&a.outcome, event) {
                // An expiry's verdict is ours (5.4.7); the reply text stored says both.
                (_, Event::Expired) => Some((554, outcome::EXPIRED)),
                // A reply without an enhanced code gets its class's (RFC 3463 3.1: X.0.0).
                (o, _) => o.reply().map(|reply| (reply.code, reply.enhanced.unwrap_or(Enhanced((reply.code / 100) as u8, 0, 0)))),
            };
            if let Some((code, enhanced)) = reply {
                rec.code = Some(code);
                rec.dsn = Some(enhanced.to_string());
            }
            if let Some(via) = &a.via {
                rec.mx = Some(via.host.clone());
                rec.ip = Some(via.addr.ip().to_string());
                rec.port = Some(via.addr.port());
                rec.tls = Some(via.tls.clone().unwrap_or_else(|| "none".into()));
            }
            let (queued, connect, transfer) = delays.parts(a);
            (rec.delay_ms, rec.queued_ms, rec.connect_ms, rec.transfer_ms) =
                (Some(delays.total_ms), Some(queued), Some(connect), Some(transfer));
            rec.next_attempt = r.next_attempt.filter(|_| event == Event::Deferred);
            rec.operator = operator.map(str::to_string);
            rec
        };
        results.iter().map(record).collect()
    }

    /// Verified TLS for REQUIRETLS and TLS-only recipients; the domain's policy otherwise,
    /// where `TLS-Required: No` turns `required` into opportunistic (never for a smarthost
    /// login, which protects our credentials, not the message).
    fn policy_for(&self, env: &Envelope, domain: &str, tls_only: bool) -> TlsPolicy {
        if env.params.requiretls || tls_only {
            return TlsPolicy::Required;
        }
        match self.delivery().tls_policy(domain) {
            TlsPolicy::Required if env.params.tls_optional && !self.delivery().logs_in(domain) => TlsPolicy::Opportunistic,
            policy => policy,
        }
    }

    /// A message that cannot be read is retried in an hour, not in a hot loop.
    async fn park(&self, mut env: Envelope, why: &str) -> Result<(), SpoolError> {
        tracing::error!(queue_id = %env.queue_id, "{why}");
        let later = self.clock.now() + 3600;
        for r in env.recipients.iter_mut().filter(|r| r.state == RecipientState::Queued) {
            r.next_attempt = Some(later);
            r.last_reply = Some(why.to_string());
        }
        self.spool().update(&env)?.wait().await
    }

    fn log_results(&self, env: &Envelope, results: &[(usize, Attempted)], tally: &Tally, delays: &Delays) {
        for (i, a) in results {
            let r = &env.recipients[*i];
            let status = match r.state {
                RecipientState::Delivered => "delivered",
                RecipientState::Failed => "bounced",
                RecipientState::Queued => "deferred",
            };
            let reply = a.outcome.reply();
            let dsn = reply.and_then(|r| r.enhanced).map(|e| e.to_string());
            let (queued_ms, connect_ms, transfer_ms) = delays.parts(a);
            tracing::info!(
                queue_id = %env.queue_id,
                to = format!("<{}>", r.mailbox).as_str(),
                status,
                relay = a.via.as_ref().map_or_else(|| "none".to_string(), ToString::to_string).as_str(),
                delay = secs(delays.total_ms).as_str(),
                delays = format!("{}/{}/{}", secs(queued_ms), secs(connect_ms), secs(transfer_ms)).as_str(),
                dsn = dsn.as_deref().unwrap_or("none"),
                code = reply.map_or(0, |r| r.code),
                tls = a.via.as_ref().and_then(|v| v.tls.as_deref()).unwrap_or("none"),
                attempt = r.attempts,
                size = env.body.as_ref().map_or(0, |b| b.len),
                reply = r.last_reply.as_deref().unwrap_or(""),
                "delivery"
            );
            if r.state == RecipientState::Delivered {
                metrics::histogram!(m::DELIVERY_LATENCY).record(delays.total_ms as f64 / 1000.0);
            }
        }
        metrics::counter!(m::DELIVERED).increment(tally.delivered as u64);
    }

    /// Deferrals and bounces by reason class; expiries and operators' bounces apart.
    fn count_reasons(&self, env: &Envelope, results: &[(usize, Attempted)], by_operator: bool) {
        for (i, a) in results {
            let reason = outcome::reason_class(&a.outcome, a.remote_said);
            match (env.recipients[*i].state, &a.outcome) {
                (RecipientState::Queued, _) => metrics::counter!(m::DEFERRED, "reason" => reason).increment(1),
                (RecipientState::Failed, _) if by_operator => metrics::counter!(m::BOUNCED, "reason" => "admin").increment(1),
                (RecipientState::Failed, RcptOutcome::Failed(_)) => metrics::counter!(m::BOUNCED, "reason" => reason).increment(1),
                (RecipientState::Failed, _) => metrics::counter!(m::BOUNCED, "reason" => "expired").increment(1),
                (RecipientState::Delivered, _) => {}
            }
        }
    }

    /// The report for this attempt (failures, delay warnings, relayed notices), if anyone
    /// should get one: the sender, or the postmaster when a bounce of ours failed. Null-sender
    /// mail gets none (no bounce loops).
    fn report(&self, env: &Envelope, tally: &Tally, original: &[u8], now: u64) -> Option<(Envelope, Vec<u8>)> {
        let config = self.config();
        let postmaster = config.postmaster();
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
        let queue_id = self.spool().new_queue_id();
        let retry_until = Some(env.arrival + config.delivery.max_age.0.as_secs());
        let b = dsn::Report { hostname: &config.hostname.0, queue_id: &queue_id, to: format!("<{to}>"), now, retry_until };
        let body = dsn::report(&b, env, &notices, original);
        let envelope = Envelope::report(queue_id, to, &config.hostname.0, now);
        tracing::info!(queue_id = %env.queue_id, report = %envelope.queue_id, to = format!("<{}>", envelope.recipients[0].mailbox).as_str(), recipients = notices.len(), "delivery status notification queued");
        Some((envelope, body))
    }
}

/// Postfix's delay and delays=a/b/c: from arrival to now, and its parts for one result: in
/// the queue (before this attempt and waiting in it), connecting, and the transaction.
struct Delays {
    total_ms: u64,
}

impl Delays {
    fn new(env: &Envelope, clock: &dyn crate::clock::Clock, now: u64) -> Delays {
        let total_ms = match env.arrival_ms {
            Some(ms) => clock.now_ms().saturating_sub(ms),
            None => now.saturating_sub(env.arrival) * 1000,
        };
        Delays { total_ms }
    }

    /// (queued, connect, transfer) in milliseconds.
    fn parts(&self, a: &Attempted) -> (u64, u64, u64) {
        let (connect, transfer) = a.via.as_ref().map_or((0, 0), |v| (v.connect_ms, v.transfer_ms));
        (self.total_ms.saturating_sub(connect + transfer), connect, transfer)
    }
}

/// Seconds with two decimals, as the delivery line writes delays.
fn secs(ms: u64) -> String {
    format!("{}.{:02}", ms / 1000, ms % 1000 / 10)
}

/// The `dsn_sent` record of `report`, a notification about `env`.
fn dsn_record(env: &Envelope, report: &Envelope) -> accounting::Record {
    let mut r = accounting::Record::new(Event::DsnSent, &env.queue_id, env.from.as_ref().map(|m| m.to_string()).unwrap_or_default());
    r.message_id = env.message_id.clone();
    r.report_id = Some(report.queue_id.clone());
    r.recipient = report.recipients.first().map(|r| r.mailbox.to_string());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{MailParams, Mailbox};
    use crate::spool::RecipientRecord;

    #[test]
    fn due_recipients_are_grouped_by_destination_and_tls_requirement() {
        let config = Config::parse("hostname: relay.test\nrequire_tls_recipients: [\"secure.test\"]\n", std::path::Path::new("/")).unwrap();
        let rcpt = |s: &str, next: u64| {
            let (l, d) = s.split_once('@').unwrap();
            RecipientRecord {
                next_attempt: Some(next),
                ..RecipientRecord::queued(Mailbox { local: l.into(), domain: d.into() }, Default::default(), 0)
            }
        };
        let mut env = Envelope::report("Q".into(), Mailbox { local: "x".into(), domain: "y.test".into() }, "relay.test", 0);
        env.params = MailParams::default();
        env.recipients = vec![
            rcpt("a@one.test", 100),
            rcpt("b@One.Test", 100),
            rcpt("c@two.test", 200),
            rcpt("d@secure.test", 100),
            rcpt("e@one.test", 100),
        ];
        env.recipients[4].state = RecipientState::Delivered;
        let groups = due_groups(&env, &config, 150);
        let got: Vec<((String, bool), Vec<usize>)> = groups.into_iter().collect();
        assert_eq!(got, [(("one.test".into(), false), vec![0, 1]), (("secure.test".into(), true), vec![3])]);
        assert_eq!(due_groups(&env, &config, 99).len(), 0, "nothing due yet");
    }
}
