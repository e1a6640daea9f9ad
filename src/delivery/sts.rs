//! Which MTA-STS policy holds for a recipient domain (RFC 8461 5.1): its `_mta-sts` TXT record,
//! the policy cached in the spool (its own shelf, by domain, until its max_age runs out) and a
//! fetch when the record's id differs from the cached one or nothing is cached. A failed
//! lookup or fetch keeps the cached policy; with none cached the domain has no policy. A
//! cached policy past half its max_age is fetched again in the background while it is used.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::mta_sts::{Policy, Record, parse_policy, parse_record};
use super::route::Target;
use super::sts_fetch::{FetchError, FetchSettings, fetch};
use crate::dns::{Dns, TxtAnswer};
use crate::metrics as m;
use crate::smtp::reply::{Enhanced, Reply};
use crate::spool::{Shelf, Spool};

/// Expired policies are swept from the spool at most this often (seconds).
const SWEEP_EVERY: u64 = 3600;

/// A policy as kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The TXT record's id when it was fetched.
    pub id: String,
    /// Unix seconds.
    pub fetched: u64,
    pub expires: u64,
    /// The policy file as served.
    pub text: String,
}

/// What to do for one delivery, from the TXT answer and the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No record and nothing cached: no policy.
    None,
    /// The cached policy holds.
    UseCached,
    /// The cached policy holds; fetch it again in the background (past half its max_age).
    Refresh,
    /// Fetch now (new id, or nothing cached); the cached policy, if any, if that fails.
    Fetch,
}

/// RFC 8461 5.1's reading. `record` is the valid record, if the lookup found one; a failed
/// lookup or an invalid record is `None` (the cache then decides).
pub fn plan(record: Option<&Record>, cached: Option<&Cached>, now: u64) -> Plan {
    match (record, cached) {
        (None, None) => Plan::None,
        (Some(_), None) => Plan::Fetch,
        (Some(r), Some(c)) if r.id != c.id => Plan::Fetch,
        (Some(_), Some(c)) if now >= c.fetched + (c.expires.saturating_sub(c.fetched)) / 2 => Plan::Refresh,
        (_, Some(_)) => Plan::UseCached,
    }
}

/// A failed fetch is not tried again for the same record id within this long (seconds):
/// a policy host that is down does not cost every attempt its fetch timeout.
const RETRY_FETCH_AFTER: u64 = 300;
/// Recent fetch results kept at most (one per domain).
const MAX_RECENT: usize = 10_000;

/// The policy store and the fetches under way.
pub struct Sts {
    store: Arc<dyn Spool>,
    /// Domains with a fetch under way: one at a time each, and no second background refresh.
    fetching: Mutex<HashSet<String>>,
    /// Wakes those waiting for a fetch (any domain's; each checks its own).
    fetched: tokio::sync::Notify,
    /// Per domain, the latest fetch: the record id, when, and what it found. Waiters take the
    /// claimer's result from here (even when keeping it in the spool failed), and a failure
    /// holds off the next fetch for the same id.
    recent: Mutex<HashMap<String, (String, u64, Found)>>,
    last_sweep: AtomicU64,
}

/// The policy found for a domain, and the fetch failure met on the way (for reports).
#[derive(Debug, Clone)]
pub struct Found {
    pub policy: Option<Policy>,
    pub failure: Option<FetchError>,
    /// Whether the domain may well have a policy that could not be had (its record lookup or
    /// policy fetch failed, nothing cached): mail that needs one waits rather than fails.
    pub unknown: bool,
}

impl Found {
    fn none() -> Found {
        Found { policy: None, failure: None, unknown: false }
    }
}

/// A fetch claimed for a domain; released when dropped, even when the fetch is cancelled.
struct Claim<'a> {
    sts: &'a Sts,
    domain: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.sts.fetching.lock().expect("fetching lock").remove(&self.domain);
        self.sts.fetched.notify_waiters();
    }
}

impl Sts {
    pub fn new(store: Arc<dyn Spool>) -> Arc<Sts> {
        Arc::new(Sts {
            store,
            fetching: Mutex::new(HashSet::new()),
            fetched: tokio::sync::Notify::new(),
            recent: Mutex::new(HashMap::new()),
            last_sweep: AtomicU64::new(0),
        })
    }

    /// The policy that holds for mail to `domain` (A-label form, lower case) at `now`.
    pub async fn discover(self: &Arc<Self>, domain: &str, dns: &Arc<Dns>, settings: &FetchSettings, now: u64) -> Found {
        let (record, lookup_failed) = match dns.txt(&format!("_mta-sts.{domain}")).await {
            TxtAnswer::Records(texts) => (parse_record(texts.iter().map(String::as_str)).ok(), false),
            TxtAnswer::None => (None, false),
            TxtAnswer::Temporary(why) => {
                tracing::debug!(domain, "MTA-STS record lookup failed: {why}");
                (None, true)
            }
        };
        let cached = self.cached(domain, now);
        let held = |found: Option<&Cached>| Found { policy: found.and_then(reading), failure: None, unknown: false };
        match plan(record.as_ref(), cached.as_ref(), now) {
            Plan::None => Found { unknown: lookup_failed, ..Found::none() },
            Plan::UseCached => held(cached.as_ref()),
            Plan::Refresh => {
                let id = record.map(|r| r.id).unwrap_or_default();
                if !self.failed_lately(domain, &id, now) && !self.is_fetching(domain) {
                    let (sts, domain, dns, settings) = (self.clone(), domain.to_string(), dns.clone(), settings.clone());
                    tokio::spawn(async move {
                        // Claimed inside the task, so the claim lives as long as the fetch.
                        if let Some(claim) = sts.claim(&domain) {
                            let result = sts.fetch_and_keep(&domain, &id, &dns, &settings, now).await;
                            sts.remember_fetch(&domain, &id, now, result, None);
                            drop(claim);
                        }
                    });
                }
                held(cached.as_ref())
            }
            Plan::Fetch => {
                let id = record.map(|r| r.id).unwrap_or_default();
                if self.failed_lately(domain, &id, now) {
                    return Found { unknown: cached.is_none(), ..held(cached.as_ref()) };
                }
                self.fetch_once(domain, &id, dns, settings, now, cached).await
            }
        }
    }

    /// Fetches unless another attempt is fetching this domain already; then waits for that
    /// one and takes what it found (a policy host that is down is not asked again by every
    /// message waiting for it).
    async fn fetch_once(
        &self,
        domain: &str,
        id: &str,
        dns: &Arc<Dns>,
        settings: &FetchSettings,
        now: u64,
        cached: Option<Cached>,
    ) -> Found {
        let Some(claim) = self.claim(domain) else {
            // Woken by any domain's fetch: wait on until this one's is over.
            loop {
                let notified = self.fetched.notified();
                if !self.is_fetching(domain) {
                    break;
                }
                notified.await;
            }
            let recent = self.recent.lock().expect("recent lock").get(domain).filter(|(was, _, _)| was == id).map(|(_, _, f)| f.clone());
            return match recent {
                Some(found) => Found { failure: None, ..found },
                None => Found { policy: cached.as_ref().and_then(reading), failure: None, unknown: cached.is_none() },
            };
        };
        let result = self.fetch_and_keep(domain, id, dns, settings, now).await;
        let found = self.remember_fetch(domain, id, now, result, cached);
        drop(claim);
        found
    }

    /// Keeps the latest fetch's result for waiters and for holding off a retry; what it means.
    fn remember_fetch(&self, domain: &str, id: &str, now: u64, result: Result<Policy, FetchError>, cached: Option<Cached>) -> Found {
        let found = match result {
            Ok(policy) => Found { policy: Some(policy), failure: None, unknown: false },
            Err(e) => Found { policy: cached.as_ref().and_then(reading), failure: Some(e), unknown: cached.is_none() },
        };
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() >= MAX_RECENT {
            recent.retain(|_, (_, at, _)| now.saturating_sub(*at) < RETRY_FETCH_AFTER);
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
        }
        recent.insert(domain.to_string(), (id.to_string(), now, found.clone()));
        found
    }

    /// Whether a fetch for this domain and id failed within `RETRY_FETCH_AFTER`.
    fn failed_lately(&self, domain: &str, id: &str, now: u64) -> bool {
        let recent = self.recent.lock().expect("recent lock");
        recent
            .get(domain)
            .is_some_and(|(was, at, found)| was == id && found.failure.is_some() && now.saturating_sub(*at) < RETRY_FETCH_AFTER)
    }

    async fn fetch_and_keep(
        &self,
        domain: &str,
        id: &str,
        dns: &Arc<Dns>,
        settings: &FetchSettings,
        now: u64,
    ) -> Result<Policy, FetchError> {
        match fetch(domain, dns.as_ref(), settings).await {
            Ok((text, policy)) => {
                metrics::counter!(m::MTA_STS_FETCHES, "result" => "ok").increment(1);
                tracing::info!(domain, id, mode = policy.mode.name(), max_age = policy.max_age, "MTA-STS policy fetched");
                let kept = Cached { id: id.to_string(), fetched: now, expires: now + policy.max_age, text };
                self.keep(domain, &kept, now).await;
                Ok(policy)
            }
            Err(e) => {
                metrics::counter!(m::MTA_STS_FETCHES, "result" => e.result_type().name()).increment(1);
                tracing::warn!(domain, id, "MTA-STS policy fetch failed: {e}");
                Err(e)
            }
        }
    }

    fn cached(&self, domain: &str, now: u64) -> Option<Cached> {
        let bytes = self.store.recall(Shelf::Policies, domain, now).ok().flatten()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn keep(&self, domain: &str, kept: &Cached, now: u64) {
        let Ok(bytes) = serde_json::to_vec(kept) else { return };
        let result = match self.store.remember(Shelf::Policies, domain, kept.expires, &bytes) {
            Ok(durable) => durable.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Used for this delivery all the same; the next one fetches again.
            tracing::warn!(domain, "keeping the MTA-STS policy failed: {e}");
        }
        // One sweep an hour at most, by whichever keep finds the hour over.
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= SWEEP_EVERY
            && self.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.forget_expired(Shelf::Policies, now));
        }
    }

    fn claim(&self, domain: &str) -> Option<Claim<'_>> {
        let fresh = self.fetching.lock().expect("fetching lock").insert(domain.to_string());
        fresh.then(|| Claim { sts: self, domain: domain.to_string() })
    }

    fn is_fetching(&self, domain: &str) -> bool {
        self.fetching.lock().expect("fetching lock").contains(domain)
    }
}

/// The targets an enforced policy allows (RFC 8461 4.1), in their order; none allowed is a
/// temporary failure (the MX records may be spoofed, or the policy not yet updated).
pub fn enforce(policy: &Policy, domain: &str, targets: &[Target]) -> Result<Vec<Target>, Reply> {
    let allowed: Vec<Target> = targets.iter().filter(|t| policy.allows(&t.host)).cloned().collect();
    if allowed.is_empty() {
        let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        let text = format!("MTA-STS policy of {domain} allows none of its MX hosts ({})", hosts.join(", "));
        return Err(Reply::new(451, Enhanced(4, 7, 5), text));
    }
    Ok(allowed)
}

/// A cached policy read again; one that no longer parses (kept by another version) is none.
fn reading(cached: &Cached) -> Option<Policy> {
    parse_policy(&cached.text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(id: &str, fetched: u64, max_age: u64) -> Cached {
        Cached { id: id.into(), fetched, expires: fetched + max_age, text: String::new() }
    }

    #[test]
    fn enforce_keeps_the_allowed_mx_hosts_in_order_and_defers_when_none_is() {
        let policy = parse_policy("version: STSv1\nmode: enforce\nmx: *.mail.test\nmx: mx.other.test\nmax_age: 86400\n").unwrap();
        let t = |host: &str, port: u16| Target::new(host, ([127, 0, 0, 1], port).into());
        let kept = enforce(&policy, "d.test", &[t("evil.test", 1), t("a.mail.test", 2), t("mx.other.test", 3)]).unwrap();
        assert_eq!(kept.iter().map(|t| t.addr.port()).collect::<Vec<_>>(), [2, 3]);
        let refused = enforce(&policy, "d.test", &[t("evil.test", 1), t("a.b.mail.test", 2)]).unwrap_err();
        assert_eq!((refused.code, refused.enhanced), (451, Some(Enhanced(4, 7, 5))));
        assert!(refused.lines[0].contains("evil.test, a.b.mail.test"), "{:?}", refused.lines);
    }

    #[test]
    fn the_cache_holds_until_the_id_changes_and_is_refreshed_past_half_its_age() {
        let record = |id: &str| Record { id: id.into() };
        assert_eq!(plan(None, None, 100), Plan::None);
        assert_eq!(plan(Some(&record("a")), None, 100), Plan::Fetch);
        assert_eq!(plan(Some(&record("b")), Some(&cached("a", 0, 1000)), 100), Plan::Fetch, "a new id");
        assert_eq!(plan(Some(&record("a")), Some(&cached("a", 0, 1000)), 100), Plan::UseCached);
        assert_eq!(plan(Some(&record("a")), Some(&cached("a", 0, 1000)), 500), Plan::Refresh);
        // No record (removed, or the lookup failed): the cached policy holds to its end.
        assert_eq!(plan(None, Some(&cached("a", 0, 1000)), 900), Plan::UseCached);
    }
}
