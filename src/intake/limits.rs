//! Concurrent connection limits, in total and per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::Limits;
use crate::metrics as m;

/// The counts outlive a reload; the caps are the config's at each acquire, so a lowered cap
/// refuses new connections until enough of the old ones have ended.
pub struct ConnectionLimits {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// Holds one connection slot; released on drop.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnectionLimits { counts: Mutex::new(Counts::default()) })
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr, caps: &Limits) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock().expect("limits lock");
        if c.total >= caps.max_connections {
            return Err(Refusal::Total);
        }
        let per_ip = c.per_ip.entry(ip).or_insert(0);
        if *per_ip >= caps.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        *per_ip += 1;
        c.total += 1;
        metrics::gauge!(m::CONNECTIONS_ACTIVE).set(c.total as f64);
        Ok(Slot { limits: self.clone(), ip })
    }

    pub fn active(&self) -> usize {
        self.counts.lock().expect("limits lock").total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().expect("limits lock");
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        metrics::gauge!(m::CONNECTIONS_ACTIVE).set(c.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_ip_and_releases_on_drop() {
        let l = ConnectionLimits::new();
        let caps = Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a, &caps).unwrap();
        let _s2 = l.acquire(a, &caps).unwrap();
        assert_eq!(l.acquire(a, &caps).err(), Some(Refusal::PerIp));
        let _s3 = l.acquire(b, &caps).unwrap();
        assert_eq!(l.acquire(b, &caps).err(), Some(Refusal::Total));
        drop(s1);
        assert!(l.acquire(a, &caps).is_ok());
    }

    #[test]
    fn caps_changed_by_a_reload_count_the_connections_already_open() {
        let l = ConnectionLimits::new();
        let wide = Limits { max_connections: 3, max_connections_per_ip: 3, ..Limits::default() };
        let narrow = Limits { max_connections: 1, max_connections_per_ip: 1, ..Limits::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (s1, _s2) = (l.acquire(a, &wide).unwrap(), l.acquire(a, &wide).unwrap());
        assert_eq!(l.acquire(a, &narrow).err(), Some(Refusal::Total));
        drop(s1);
        assert_eq!(l.acquire(a, &narrow).err(), Some(Refusal::Total), "one is still open");
    }
}
