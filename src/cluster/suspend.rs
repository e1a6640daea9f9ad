//! Suspensions shared by every node: a destination one node suspends (a 421, a 4.7.x reply,
//! unreachable after its backoff) is held on the others until the suspension ends. Kept as one
//! key per destination that expires with the suspension; each node asks about a destination
//! at most once a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;

/// How long a node trusts what it last heard of a destination's shared suspension.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Destinations remembered at most (a cache, not a record).
const MAX_REMEMBERED: usize = 10_000;

/// What a node last heard: when, and the suspension then in force (until, unix ms; why).
pub(super) type Heard = HashMap<String, (Instant, Option<(u64, String)>)>;

impl Cluster {
    /// Tells the other nodes: `destination` is suspended until `until_ms` (unix ms), `why`.
    pub fn share_suspension(self: &Arc<Self>, destination: &str, until_ms: u64, why: &str) {
        let Some(mut connection) = self.connection() else { return };
        let now_ms = unix_ms();
        if until_ms <= now_ms {
            return;
        }
        let (cluster, key) = (self.clone(), self.key("suspended", destination));
        let value = format!("{until_ms} {} {why}", self.node);
        tokio::spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(value).arg("PX").arg(until_ms - now_ms);
            match tokio::time::timeout(cluster.timeout, set.query_async::<()>(&mut connection)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => cluster.failed(&e),
                Err(_) => cluster.mark(false, "no answer within cluster.redis.timeout"),
            }
        });
    }

    /// Ends `destination`'s shared suspension (an operator's flush: the cause was mended).
    pub fn clear_suspension(self: &Arc<Self>, destination: &str) {
        self.heard.lock().expect("heard lock").remove(destination);
        let Some(mut connection) = self.connection() else { return };
        let (cluster, key) = (self.clone(), self.key("suspended", destination));
        tokio::spawn(async move {
            let mut del = redis::cmd("DEL");
            del.arg(&key);
            let _ = tokio::time::timeout(cluster.timeout, del.query_async::<()>(&mut connection)).await;
        });
    }

    /// The suspension another node put on `destination` that is still in force: until when
    /// (unix ms) and why, naming the node. None while Redis is away.
    pub async fn shared_suspension(self: &Arc<Self>, destination: &str) -> Option<(u64, String)> {
        let now_ms = unix_ms();
        if let Some((at, heard)) = self.heard.lock().expect("heard lock").get(destination)
            && at.elapsed() < FRESH_FOR
        {
            return heard.clone().filter(|(until, _)| *until > now_ms);
        }
        let mut connection = self.connection()?;
        let mut get = redis::cmd("GET");
        get.arg(self.key("suspended", destination));
        let value = match tokio::time::timeout(self.timeout, get.query_async::<Option<String>>(&mut connection)).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                self.failed(&e);
                return None;
            }
            Err(_) => {
                self.mark(false, "no answer within cluster.redis.timeout");
                return None;
            }
        };
        let heard = value.as_deref().and_then(parse);
        let mut remembered = self.heard.lock().expect("heard lock");
        if remembered.len() >= MAX_REMEMBERED {
            remembered.clear();
        }
        remembered.insert(destination.to_string(), (Instant::now(), heard.clone()));
        heard.filter(|(until, _)| *until > now_ms)
    }
}

/// `UNTIL_MS NODE WHY` as `share_suspension` writes it.
fn parse(value: &str) -> Option<(u64, String)> {
    let mut parts = value.splitn(3, ' ');
    let until = parts.next()?.parse().ok()?;
    let node = parts.next()?;
    let why = parts.next().unwrap_or("");
    Some((until, format!("{why} (suspended by node {node})")))
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_suspension_names_its_node() {
        assert_eq!(
            parse("1700000000000 relay-a 421 4.7.0 busy"),
            Some((1_700_000_000_000, "421 4.7.0 busy (suspended by node relay-a)".into()))
        );
        assert_eq!(parse("soon relay-a x"), None);
        assert_eq!(parse(""), None);
    }
}
