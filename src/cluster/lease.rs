//! Connection caps shared by every node. Each connection under a cap holds a lease: a member
//! of the cap's sorted set, scored by when it expires (the Redis clock, milliseconds). A node
//! renews its leases every third of `cluster.lease_ttl` while their connections are open, so
//! the leases of a node that crashed or lost its network expire by themselves within one TTL.
//!
//! Pooled connections are idle most of the time and would keep their leases forever: a node
//! refused a lease notes in Redis that it waits, and the other nodes, at their next renewal,
//! learn that someone does. Until that note lapses they close connections above their share
//! (the cap divided by `cluster.nodes`, rounded down) as they are put back, and any that stays
//! idle for 500 ms, so the cap is shared out rather than kept by whoever came first. A node's
//! own wait never makes it close its own connections.
//!
//! While Redis is away a node keeps to its share of each cap (at least one connection),
//! counted here. Leases so granted are not in Redis: once it is back, the next renewal finds
//! them missing, and their connections close when next idle. A lease Redis lost (it expired
//! while Redis was away) is treated the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Cluster;

/// KEYS[1]: the cap's leases; KEYS[2]: the nodes waiting for one (scored by when their
/// wait is forgotten). ARGV[1]: the new lease, ARGV[2]: the cap, ARGV[3]: the lease's time to
/// live, ARGV[4]: how long a refusal marks this node as waiting (both milliseconds), ARGV[5]:
/// this node. 1: granted; 0: the cap is full. A key lives as long as its latest member.
const ACQUIRE: &str = r"
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  expire_with_latest(KEYS[1])
  return 1
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[5])
expire_with_latest(KEYS[2])
return 0
";

/// KEYS as for [`ACQUIRE`]. ARGV[1]: the time to live, ARGV[2]: this node, ARGV[3...]: its
/// leases. The answer: how many other nodes wait for the cap, then the leases no longer there.
const RENEW: &str = r"
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local others = redis.call('ZCARD', KEYS[2])
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then others = others - 1 end
local answer = { tostring(others) }
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  else
    table.insert(answer, ARGV[i])
  end
end
expire_with_latest(KEYS[1])
return answer
";

/// What both scripts begin with: `now` (ms, the Redis clock), and a sorted set's key made
/// to live exactly as long as its latest member (an integer: PEXPIREAT refuses "1.7e+12").
const PRELUDE: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire_with_latest(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, string.format('%d', tonumber(last[2]))) end
end
";

static ACQUIRE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(&format!("{PRELUDE}{ACQUIRE}")));
static RENEW_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(&format!("{PRELUDE}{RENEW}")));

/// The first and the longest pause between asks for a lease on a full cap.
pub const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// While another node waits for a cap, a connection idle this long gives its lease up
/// whatever this node's share: an idle connection serves nobody.
const IDLE_WHEN_WANTED: Duration = Duration::from_millis(500);

/// The pause after `pause` between asks for a lease.
pub fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(LONGEST_PAUSE)
}

/// This node's leases under one cap.
pub(super) struct Cap {
    /// The sorted set, and the wanted mark (one hash slot: the cap's name is their tag).
    key: String,
    wanted_key: String,
    /// Leases this node holds under the cap (in Redis or not).
    held: AtomicUsize,
    /// The cap as last asked for, and this node's share of it.
    max: AtomicUsize,
    /// Until when another node is known to want the cap.
    wanted_until: Mutex<Option<Instant>>,
    /// The leases held in Redis, by member name, to be renewed.
    members: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// The caps this node holds leases under.
#[derive(Default)]
pub(super) struct Leases {
    caps: Mutex<HashMap<String, Arc<Cap>>>,
    next: AtomicU64,
}

/// One connection's share of a cap, given back when dropped.
pub struct Lease {
    cap: Arc<Cap>,
    /// Its member name when it is in Redis; None when granted while Redis was away.
    member: Option<String>,
    /// Redis no longer has it: the connection should close when idle.
    lost: Arc<AtomicBool>,
    /// Already taken off `held` by `should_yield`.
    yielded: AtomicBool,
    /// Granted while Redis was away: how many times Redis had come back then.
    away_epoch: u64,
    cluster: Arc<Cluster>,
}

impl Lease {
    /// Whether the connection holding it should close rather than wait idle (for `idle`, when
    /// it is idle): it was granted while Redis was away and Redis is back; Redis lost it;
    /// another node wants the cap and this node holds more than its share, or this
    /// connection has been idle for `IDLE_WHEN_WANTED`; or Redis is away and this node holds
    /// more than its share. True at most once per lease: it stops counting as held once it
    /// said so.
    pub fn should_yield(&self, idle: Option<Duration>) -> bool {
        if self.yielded.load(Ordering::Relaxed) {
            return true;
        }
        let up = self.cluster.is_up();
        if self.member.is_none() {
            // Redis came back since (not merely answering with errors, as a read-only
            // replica does, while the node keeps to its share).
            return up && self.cluster.returns() != self.away_epoch;
        }
        if self.lost.load(Ordering::Relaxed) {
            return true;
        }
        let max = self.cap.max.load(Ordering::Relaxed);
        let nodes = self.cluster.nodes as usize;
        let wanted = || self.cap.wanted_until.lock().expect("wanted lock").is_some_and(|until| until > Instant::now());
        let share = match up {
            false => (max / nodes).max(1),
            true if wanted() && idle.is_some_and(|idle| idle >= IDLE_WHEN_WANTED) => 0,
            true if wanted() => max / nodes,
            true => return false,
        };
        let mut held = self.cap.held.load(Ordering::SeqCst);
        while held > share {
            match self.cap.held.compare_exchange(held, held - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    self.yielded.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(now) => held = now,
            }
        }
        false
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.yielded.load(Ordering::Relaxed) {
            self.cap.held.fetch_sub(1, Ordering::SeqCst);
        }
        let Some(member) = self.member.take() else { return };
        self.cap.members.lock().expect("members lock").remove(&member);
        self.cluster.give_back(self.cap.key.clone(), vec![member]);
    }
}

/// An ask for a lease under way: unless answered, its lease is given back when it ends.
struct Asking<'a> {
    cluster: &'a Arc<Cluster>,
    key: &'a str,
    member: &'a str,
    answered: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.cluster.give_back(self.key.to_string(), vec![self.member.to_string()]);
        }
    }
}

/// What one ask for a lease found.
enum Asked {
    Granted(Lease),
    Full,
}

impl Cluster {
    /// A lease on `cap` (at most `max` connections on all nodes together) for one new
    /// connection, if one is free now. None counts as a wait (`sluice_cluster_lease_waits_total`).
    pub async fn try_lease(self: &Arc<Self>, cap: &str, max: usize) -> Option<Lease> {
        // Asked on the daemon's runtime: redis-rs reconnects on the runtime of the command
        // that found the connection lost, and a delivery worker's runtime is not the place
        // to drive every later Redis command from. A lease granted after its asker left is
        // dropped, so given back.
        let (cluster, name) = (self.clone(), cap.to_string());
        let asked = self.runtime.spawn(async move { cluster.ask_lease(&name, max).await }).await;
        match asked {
            Ok(Asked::Granted(lease)) => Some(lease),
            Ok(Asked::Full) | Err(_) => {
                metrics::counter!(crate::metrics::CLUSTER_LEASE_WAITS).increment(1);
                None
            }
        }
    }

    fn cap(&self, name: &str, max: usize) -> Arc<Cap> {
        let mut caps = self.leases.caps.lock().expect("caps lock");
        let cap = caps
            .entry(name.to_string())
            .or_insert_with(|| {
                // The hash tag keeps both keys in one slot of a Redis Cluster.
                let tag = format!("{{{name}}}");
                Arc::new(Cap {
                    key: self.key("conns", &tag),
                    wanted_key: self.key("wanted", &tag),
                    held: AtomicUsize::new(0),
                    max: AtomicUsize::new(max),
                    wanted_until: Mutex::new(None),
                    members: Mutex::new(HashMap::new()),
                })
            })
            .clone();
        cap.max.store(max, Ordering::Relaxed);
        cap
    }

    async fn ask_lease(self: &Arc<Self>, name: &str, max: usize) -> Asked {
        let cap = self.cap(name, max);
        let ttl = self.lease_ttl;
        if let Some(mut connection) = self.connection() {
            let member = format!("{}:{}", self.member_prefix, self.leases.next.fetch_add(1, Ordering::Relaxed));
            // Should the answer not come (a timeout, a drop at shutdown), Redis may have
            // granted it all the same: it is given back rather than left to expire.
            let mut asking = Asking { cluster: self, key: &cap.key, member: &member, answered: false };
            let mut invocation = ACQUIRE_SCRIPT.key(&cap.key);
            invocation
                .key(&cap.wanted_key)
                .arg(&member)
                .arg(max)
                .arg(ttl.as_millis() as u64)
                .arg((ttl / 3 * 2).as_millis() as u64)
                .arg(&self.member_prefix);
            match tokio::time::timeout(self.timeout, invocation.invoke_async::<u8>(&mut connection)).await {
                Ok(Ok(granted)) => {
                    asking.answered = true;
                    drop(asking);
                    self.mark(true, "a connection lease was asked for");
                    if granted == 0 {
                        return Asked::Full;
                    }
                    let lost = Arc::new(AtomicBool::new(false));
                    cap.members.lock().expect("members lock").insert(member.clone(), lost.clone());
                    cap.held.fetch_add(1, Ordering::SeqCst);
                    return Asked::Granted(Lease {
                        cap,
                        member: Some(member),
                        lost,
                        yielded: AtomicBool::new(false),
                        away_epoch: 0,
                        cluster: self.clone(),
                    });
                }
                Ok(Err(e)) => self.failed(&e),
                Err(_) => self.mark(false, "no answer within cluster.redis.timeout"),
            }
        }
        // Redis is away: this node's share, counted here.
        let share = (max / self.nodes as usize).max(1);
        let mut held = cap.held.load(Ordering::SeqCst);
        loop {
            if held >= share {
                return Asked::Full;
            }
            match cap.held.compare_exchange(held, held + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        let lost = Arc::new(AtomicBool::new(false));
        let away_epoch = self.returns();
        Asked::Granted(Lease { cap, member: None, lost, yielded: AtomicBool::new(false), away_epoch, cluster: self.clone() })
    }

    /// Removes `members` from the leases at `key`, in the background, on the daemon's runtime
    /// (a lease may be dropped on any thread). One that fails leaves them to expire.
    fn give_back(self: &Arc<Self>, key: String, members: Vec<String>) {
        // Even while Redis counts as away: the ask that timed out may have been granted.
        let Some(mut connection) = self.connection.get().cloned() else { return };
        let timeout = self.timeout;
        self.runtime.spawn(async move {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&key).arg(&members);
            let _ = tokio::time::timeout(timeout, zrem.query_async::<()>(&mut connection)).await;
        });
    }

    /// Gives back every lease this node holds in Redis (a clean stop: the next process would
    /// not renew them, and they would hold the caps until they expired).
    pub async fn release_all(self: &Arc<Self>) {
        let Some(mut connection) = self.connection() else { return };
        let caps: Vec<Arc<Cap>> = self.leases.caps.lock().expect("caps lock").values().cloned().collect();
        for cap in caps {
            let members: Vec<String> = cap.members.lock().expect("members lock").drain().map(|(m, _)| m).collect();
            if members.is_empty() {
                continue;
            }
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&cap.key).arg(&members);
            let _ = tokio::time::timeout(self.timeout, zrem.query_async::<()>(&mut connection)).await;
        }
    }

    /// Leases this node holds now, over every cap.
    pub fn leases_held(&self) -> usize {
        self.leases.caps.lock().expect("caps lock").values().map(|c| c.held.load(Ordering::Relaxed)).sum()
    }

    /// Renews this node's leases every third of the TTL, for as long as the daemon runs.
    pub(super) async fn renew_leases(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.lease_ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let caps: Vec<Arc<Cap>> = {
                let mut caps = self.leases.caps.lock().expect("caps lock");
                // A cap nothing refers to (no lease, no ask under way) is forgotten; a new
                // lease makes it again.
                caps.retain(|_, c| Arc::strong_count(c) > 1);
                caps.values().cloned().collect()
            };
            metrics::gauge!(crate::metrics::CLUSTER_LEASES_HELD).set(self.leases_held() as f64);
            for cap in caps {
                self.renew(&cap).await;
            }
        }
    }

    async fn renew(self: &Arc<Self>, cap: &Cap) {
        let Some(mut connection) = self.connection() else { return };
        let members: Vec<String> = cap.members.lock().expect("members lock").keys().cloned().collect();
        let mut invocation = RENEW_SCRIPT.key(&cap.key);
        invocation.key(&cap.wanted_key).arg(self.lease_ttl.as_millis() as u64).arg(&self.member_prefix);
        for member in &members {
            invocation.arg(member);
        }
        let answer = match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<String>>(&mut connection)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return self.failed(&e),
            Err(_) => return self.mark(false, "no answer within cluster.redis.timeout"),
        };
        let Some((others, lost)) = answer.split_first() else { return };
        let wanted = others.parse::<u64>().is_ok_and(|n| n > 0);
        *cap.wanted_until.lock().expect("wanted lock") = wanted.then(|| Instant::now() + self.lease_ttl / 3 * 2);
        let mut held = cap.members.lock().expect("members lock");
        for member in lost {
            if let Some(flag) = held.remove(member) {
                tracing::info!(lease = %member, "a connection lease expired while Redis was away: its connection closes when idle");
                flag.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u32) -> Arc<Cluster> {
        let config: crate::config::ClusterConfig =
            serde_norway::from_str(&format!("nodes: {nodes}\nredis: {{ url: \"redis://127.0.0.1:1\" }}")).unwrap();
        Cluster::start(&config, "relay.test").unwrap().unwrap()
    }

    #[tokio::test]
    async fn while_redis_is_away_a_node_keeps_to_its_share_of_a_cap() {
        let cluster = cluster(3);
        let a = cluster.ask_lease("dest", 6).await;
        let b = cluster.ask_lease("dest", 6).await;
        assert!(matches!((&a, &b), (Asked::Granted(_), Asked::Granted(_))), "6 / 3 nodes: two each");
        assert!(matches!(cluster.ask_lease("dest", 6).await, Asked::Full));
        assert!(
            matches!(cluster.ask_lease("other", 1).await, Asked::Granted(_)),
            "at least one, even when the cap is below the node count"
        );
        assert_eq!(cluster.leases_held(), 2, "the one on `other` was dropped at once");
        drop(a);
        assert!(matches!(cluster.ask_lease("dest", 6).await, Asked::Granted(_)), "a lease given back is free again");
        let Asked::Granted(lease) = b else { unreachable!() };
        assert!(!lease.should_yield(None), "granted while Redis is away: kept until it is back");
        cluster.up.store(true, Ordering::Relaxed);
        assert!(!lease.should_yield(None), "Redis answers but never came back (refusals): kept");
        cluster.returned.fetch_add(1, Ordering::Relaxed);
        assert!(lease.should_yield(None), "Redis is back and does not know it: its connection closes when idle");
    }

    #[tokio::test]
    async fn a_wanted_cap_makes_only_the_surplus_yield() {
        let cluster = cluster(2);
        let cap = cluster.cap("dest", 2);
        cluster.up.store(true, Ordering::Relaxed);
        let lease = || Lease {
            cap: cap.clone(),
            member: Some("m".into()),
            lost: Arc::new(AtomicBool::new(false)),
            yielded: AtomicBool::new(false),
            away_epoch: 0,
            cluster: cluster.clone(),
        };
        cap.held.store(2, Ordering::SeqCst);
        let (first, second) = (lease(), lease());
        assert!(!first.should_yield(None), "nobody wants the cap");
        *cap.wanted_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(5));
        assert!(first.should_yield(None), "2 held, share 1");
        assert!(first.should_yield(None), "it said so once and keeps saying so");
        assert!(!second.should_yield(None), "the share stays");
        assert!(!second.should_yield(Some(Duration::from_millis(100))), "idle a moment: the share stays");
        let third = lease();
        cap.held.fetch_add(1, Ordering::SeqCst);
        assert!(third.should_yield(Some(Duration::from_secs(1))), "idle a while: given up even within the share");
        drop(third);
        drop(first);
        assert_eq!(cap.held.load(Ordering::SeqCst), 1, "a yielded lease is not taken off twice");
        drop(second);
        assert_eq!(cap.held.load(Ordering::SeqCst), 0);
    }
}
