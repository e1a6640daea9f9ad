//! Hosts whose STARTTLS handshake failed (an old TLS stack, a broken certificate chain that
//! the server cannot even send): remembered for `delivery.starttls_failure_memory`, so mail to
//! them under opportunistic TLS goes in plain text at once instead of failing a handshake
//! first at every connection. Shared by every delivery worker; bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Hosts remembered at most; past that, the entry closest to its end makes room.
const MAX_HOSTS: usize = 10_000;

#[derive(Default)]
pub struct LegacyHosts {
    hosts: Mutex<HashMap<SocketAddr, (Instant, String)>>,
}

impl LegacyHosts {
    /// Remembers that `addr`'s handshake failed with `why`, for `memory` from `now`.
    pub fn remember(&self, addr: SocketAddr, why: &str, memory: Duration, now: Instant) {
        if memory.is_zero() {
            return;
        }
        let mut hosts = self.hosts.lock().expect("legacy hosts lock");
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(&addr) {
            hosts.retain(|_, (until, _)| *until > now);
            if hosts.len() >= MAX_HOSTS
                && let Some(first) = hosts.iter().min_by_key(|(_, (until, _))| *until).map(|(a, _)| *a)
            {
                hosts.remove(&first);
            }
        }
        hosts.insert(addr, (now + memory, why.to_string()));
    }

    /// Why `addr` is remembered at `now`, if it is.
    pub fn remembered(&self, addr: SocketAddr, now: Instant) -> Option<String> {
        let mut hosts = self.hosts.lock().expect("legacy hosts lock");
        match hosts.get(&addr) {
            Some((until, why)) if *until > now => Some(why.clone()),
            Some(_) => {
                hosts.remove(&addr);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_remembered_for_its_time_and_the_memory_is_bounded() {
        let hosts = LegacyHosts::default();
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.1:25".parse().unwrap();
        hosts.remember(a, "handshake failed", Duration::from_secs(60), now);
        assert_eq!(hosts.remembered(a, now + Duration::from_secs(59)).as_deref(), Some("handshake failed"));
        assert_eq!(hosts.remembered(a, now + Duration::from_secs(60)), None, "forgotten at its end");
        hosts.remember(a, "x", Duration::ZERO, now);
        assert_eq!(hosts.remembered(a, now), None, "a memory of 0 remembers nothing");
        for i in 0..MAX_HOSTS + 5 {
            let addr = SocketAddr::new(std::net::Ipv4Addr::from(i as u32).into(), 25);
            hosts.remember(addr, "x", Duration::from_secs(60 + i as u64), now);
        }
        assert_eq!(hosts.hosts.lock().unwrap().len(), MAX_HOSTS);
        let newest = SocketAddr::new(std::net::Ipv4Addr::from((MAX_HOSTS + 4) as u32).into(), 25);
        assert!(hosts.remembered(newest, now).is_some());
        assert!(hosts.remembered(SocketAddr::new(std::net::Ipv4Addr::from(0u32).into(), 25), now).is_none(), "the nearest end made room");
    }
}
