//! A message rate shared by every node: one GCRA per destination, kept in Redis and advanced
//! by one Lua script, so reading and booking are one atomic step whoever asks. Time is the
//! Redis server's own (`TIME`, microseconds), so the nodes' clocks need not agree.

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;

/// KEYS[1]: the destination's theoretical arrival time (microseconds). ARGV[1]: the interval
/// between messages, ARGV[2]: the burst tolerance (both microseconds). Returns 0 when a message
/// may go now (and books it), else how many microseconds until one may.
const GCRA: &str = r"
redis.replicate_commands()
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allowed_at = tat - tolerance
if now < allowed_at then return allowed_at - now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
";

/// The same GCRA for a sender's accepted messages (`limits.messages_per_ip`/`_per_user`):
/// always books (the message was accepted already) and returns how far ahead of now, in
/// microseconds, the shared schedule now is (every node's messages counted).
const BOOK: &str = r"
redis.replicate_commands()
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return next_tat - now
";

impl Cluster {
    /// Counts an accepted message of `sender` (`ip:ADDR`, `user:NAME`) at the shared rate;
    /// how far ahead the sender's shared schedule is now (see `Gcra::learn`). Err while
    /// Redis is away.
    pub async fn book_intake(self: &Arc<Self>, sender: &str, interval: Duration, burst: u32) -> Result<Duration, ()> {
        self.run_gcra(BOOK, &self.key("intake", sender), interval, burst).await
    }

    /// Books a message of `destination` at the shared rate (one every `interval`, `burst` at
    /// once): Ok(zero) when it may go now, Ok(wait) when it must wait that long first (and
    /// ask again), Err when Redis did not answer (the caller keeps to its own share).
    pub async fn reserve_message(self: &Arc<Self>, destination: &str, interval: Duration, burst: u32) -> Result<Duration, ()> {
        self.run_gcra(GCRA, &self.key("rate", destination), interval, burst).await
    }

    async fn run_gcra(self: &Arc<Self>, lua: &str, key: &str, interval: Duration, burst: u32) -> Result<Duration, ()> {
        let mut connection = self.connection().ok_or(())?;
        let script = redis::Script::new(lua);
        let tolerance = interval * burst.saturating_sub(1);
        let mut invocation = script.key(key);
        invocation.arg(interval.as_micros() as u64).arg(tolerance.as_micros() as u64);
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
