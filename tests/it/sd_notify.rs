//! The systemd notification protocol: READY=1 once the daemon accepts mail, WATCHDOG=1 at
//! half the watchdog interval, STOPPING=1 on SIGTERM. systemd's side is a datagram socket.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::common::{Client, Daemon};

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut daemon = Daemon::spawn_with(dir.path(), "", &[], |c| {
        c.env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "200000");
    });
    let mut buf = [0u8; 128];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    // By READY the daemon answers SMTP.
    assert_eq!(Client::connect(daemon.addr).cmd("NOOP").code, 250);
    // Fed every 100 ms.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let stopping = (0..20).map(|_| next()).find(|m| m != "WATCHDOG=1");
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    let _ = daemon.child.wait();
}
