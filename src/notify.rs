//! systemd's notification protocol (sd_notify), without libsystemd: one datagram per state
//! change to the socket named in `$NOTIFY_SOCKET`. READY=1 once listeners and spool are up
//! (and again after each reload, which begins with RELOADING=1), STOPPING=1 when the drain begins, and WATCHDOG=1 every half `$WATCHDOG_USEC` while the
//! daemon is healthy. Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. "READY=1") to systemd, if it is listening; errors are not fatal.
pub fn notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&path.to_string_lossy(), state);
    }
}

/// Sends `state` to the notification socket `path` (`@name` for an abstract socket).
pub fn notify_to(path: &str, state: &str) {
    let Ok(socket) = UnixDatagram::unbound() else { return };
    let sent = match path.strip_prefix('@') {
        // An abstract socket: its name starts with a NUL byte instead of '@'.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
        }
        None => socket.send_to(state.as_bytes(), path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, "sd_notify failed");
    }
}

/// CLOCK_MONOTONIC in microseconds, which systemd wants with RELOADING=1.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1000
}

/// How often to feed the watchdog (half its timeout), if systemd set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, must be ours (it is for Type=notify main processes).
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // An abstract socket, as systemd usually hands out.
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-test-{}", std::process::id());
        let abstract_listener = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1");
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
