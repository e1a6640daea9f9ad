//! A message rate shared by every node: one GCRA per destination, kept in Redis and advanced
//! by one Lua script, so reading and booking are one atomic step whoever asks. Time is the
//! Redis server's own (`TIME`, microseconds), so the nodes' clocks need not agree.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;

/// One GCRA step. KEYS[1]: the theoretical arrival time (microseconds). ARGV[1]: the
/// interval between events, ARGV[2]: the burst tolerance (both microseconds), ARGV[3]: `book`
/// books the next free slot and returns how many microseconds until it comes (0: now), so
/// a node that sleeps until then loses no slot to the time it takes to ask again; `count`
/// books whatever (an accepted message) and returns how far ahead of now the schedule
/// runs, every node's events counted.
const GCRA: &str = r"
redis.replicate_commands()
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
if ARGV[3] == 'count' then return next_tat - now end
return wait
";

/// The script, hashed once (EVALSHA, and the hash is not computed again per message).
static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(GCRA));

impl Cluster {
    /// Counts an accepted message of `sender` (`ip:ADDR`, `user:NAME`) at the shared rate;
    /// how far ahead the sender's shared schedule is now (see `Gcra::learn`). Err while
    /// Redis is away.
    pub async fn book_intake(self: &Arc<Self>, sender: &str, interval: Duration, burst: u32) -> Result<Duration, ()> {
        self.run_gcra("count", &self.key("intake", sender), interval, burst).await
    }

    /// Books the next free slot for a message of `destination` at the shared rate (one every
    /// `interval`, `burst` at once): Ok(how long until it comes), zero for now; Err when
    /// Redis did not answer (the caller keeps to its own share).
    pub async fn book_message(self: &Arc<Self>, destination: &str, interval: Duration, burst: u32) -> Result<Duration, ()> {
        self.run_gcra("book", &self.key("rate", destination), interval, burst).await
    }

    /// One step of `key`'s GCRA in `mode` (`book` or `count`, see [`GCRA`]).
    async fn run_gcra(self: &Arc<Self>, mode: &str, key: &str, interval: Duration, burst: u32) -> Result<Duration, ()> {
        let mut connection = self.connection().ok_or(())?;
        let tolerance = interval * burst.saturating_sub(1);
        let mut invocation = SCRIPT.key(key);
        invocation.arg(interval.as_micros() as u64).arg(tolerance.as_micros() as u64).arg(mode);
        let answer = tokio::time::timeout(self.timeout, invocation.invoke_async::<u64>(&mut connection)).await;
        match answer {
            Ok(Ok(wait)) => {
                self.mark(true, "a shared rate was booked");
                Ok(Duration::from_micros(wait))
            }
            Ok(Err(e)) => {
                self.failed(&e);
                Err(())
            }
            Err(_) => {
                self.mark(false, "no answer within cluster.redis.timeout");
                Err(())
            }
        }
    }
}
