//! SIGTERM drains: a delivery under way finishes and is recorded before the daemon exits, so a
//! restart does not send it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn sigterm_lets_a_delivery_under_way_finish() {
    // The destination takes a second to answer the final dot.
    let dest = Dest::start(Behavior {
        after_dot: Arc::new(|_| {
            std::thread::sleep(Duration::from_millis(1000));
            "250 2.0.0 accepted".into()
        }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}delivery:\n  port: {}\n  retry: [1s]\n", dns.config(), dest.addr.port());
    let mut daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "x\r\n").code, 250);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) }, 0);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "the daemon waited for the delivery");
    let log = daemon.log_text();
    assert!(log.contains("status=\"delivered\"") || log.contains("status=delivered"), "{log}");

    let _restarted = Daemon::spawn(dir.path(), &extra, &[]);
    let config = sluice::config::Config::load(&_restarted.config_path).unwrap();
    assert!(sluice::admin::queue_list(&config).unwrap().is_empty(), "the delivery was recorded before exit");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dest.state.lock().unwrap().transactions.len(), 1, "nothing sent twice");
}
