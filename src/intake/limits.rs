//! Concurrent connection limits, in total and per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::metrics as m;

pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
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
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits { max_total, max_per_ip, counts: Mutex::new(Counts::default()) })
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock().expect("limits lock");
        if c.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let per_ip = c.per_ip.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
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
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refusal::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refusal::Total));
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }
}
