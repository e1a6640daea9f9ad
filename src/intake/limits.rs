//! Concurrent connection limits, in total and per client IP. Clients in `trusted_networks`
//! have a per-IP cap of their own and a reserve of the total that only they may use.

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

    pub fn acquire(self: &Arc<Self>, ip: IpAddr, trusted: bool, caps: &Limits) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock().expect("limits lock");
        let (total, per_ip_cap) = match trusted {
            true => (caps.max_connections, caps.max_connections_per_trusted_ip),
            false => (caps.max_connections.saturating_sub(caps.reserved_for_trusted), caps.max_connections_per_ip),
        };
        if c.total >= total {
            return Err(Refusal::Total);
        }
        let per_ip = c.per_ip.entry(ip).or_insert(0);
        if *per_ip >= per_ip_cap {
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

    /// At least 80% of `max_connections` in use: idle anonymous sessions get short timeouts.
    pub fn under_stress(&self, caps: &Limits) -> bool {
        self.active() * 5 >= caps.max_connections * 4
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
        let caps = Limits { max_connections: 3, max_connections_per_ip: 2, reserved_for_trusted: 0, ..Limits::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a, false, &caps).unwrap();
        let _s2 = l.acquire(a, false, &caps).unwrap();
        assert_eq!(l.acquire(a, false, &caps).err(), Some(Refusal::PerIp));
        let _s3 = l.acquire(b, false, &caps).unwrap();
        assert_eq!(l.acquire(b, false, &caps).err(), Some(Refusal::Total));
        drop(s1);
        assert!(l.acquire(a, false, &caps).is_ok());
    }

    #[test]
    fn caps_changed_by_a_reload_count_the_connections_already_open() {
        let l = ConnectionLimits::new();
        let wide = Limits { max_connections: 3, max_connections_per_ip: 3, reserved_for_trusted: 0, ..Limits::default() };
        let narrow = Limits { max_connections: 1, max_connections_per_ip: 1, reserved_for_trusted: 0, ..Limits::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (s1, _s2) = (l.acquire(a, false, &wide).unwrap(), l.acquire(a, false, &wide).unwrap());
        assert_eq!(l.acquire(a, false, &narrow).err(), Some(Refusal::Total));
        drop(s1);
        assert_eq!(l.acquire(a, false, &narrow).err(), Some(Refusal::Total), "one is still open");
    }

    #[test]
    fn trusted_clients_have_their_own_cap_and_a_reserve() {
        let l = ConnectionLimits::new();
        let caps = Limits {
            max_connections: 10,
            max_connections_per_ip: 2,
            max_connections_per_trusted_ip: 8,
            reserved_for_trusted: 4,
            ..Limits::default()
        };
        let (anon, app): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "10.0.0.5".parse().unwrap());
        let mut held = vec![l.acquire(anon, false, &caps).unwrap(), l.acquire(anon, false, &caps).unwrap()];
        assert_eq!(l.acquire(anon, false, &caps).err(), Some(Refusal::PerIp));
        for i in 3..=6 {
            held.push(l.acquire(format!("192.0.2.{i}").parse().unwrap(), false, &caps).unwrap());
        }
        // Six anonymous: the other four are the reserve.
        assert_eq!(l.acquire("192.0.2.9".parse().unwrap(), false, &caps).err(), Some(Refusal::Total));
        assert!(!l.under_stress(&caps));
        for _ in 0..4 {
            held.push(l.acquire(app, true, &caps).unwrap());
        }
        assert!(l.under_stress(&caps));
        assert_eq!(l.acquire(app, true, &caps).err(), Some(Refusal::Total));
        drop(held);
    }
}
