//! kill -9 with a half-delivered message: after the restart, what was delivered is not sent
//! again and the rest is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn a_restart_delivers_the_rest_and_repeats_nothing() {
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(move |addr, _| {
            // later@ is refused until the relay has been restarted (the test flips `tries`).
            if addr == "later@two.test" && t.load(Ordering::SeqCst) == 0 { "451 4.3.0 not yet".into() } else { "250 2.1.5 ok".into() }
        }),
        ..Behavior::default()
    });
    let zone = Zone::default().mx("one.test", &[(10, "mx.test")]).mx("two.test", &[(10, "mx.test")]).a("mx.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}delivery:\n  port: {}\n  retry: [1s]\n", dns.config(), dest.addr.port());
    let mut daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["ok@one.test", "later@two.test"], "x\r\n").code, 250);
    dest.wait_for(1, Duration::from_secs(20));
    // Wait until the deferral is recorded, then crash.
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = sluice::admin::queue_list(&config).unwrap();
        let later = q.first().and_then(|e| e.recipients.iter().find(|r| r.address == "later@two.test").cloned());
        if later.is_some_and(|r| r.attempts >= 1) {
            break;
        }
        assert!(Instant::now() < deadline, "no deferral recorded: {q:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.kill9();
    tries.store(1, Ordering::SeqCst);
    let _restarted = Daemon::spawn(dir.path(), &extra, &[]);
    let got = dest.wait_for(2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let all: Vec<Vec<String>> = dest.state.lock().unwrap().transactions.iter().map(|t| t.rcpts.clone()).collect();
    assert_eq!(all, vec![vec!["ok@one.test".to_string()], vec!["later@two.test".to_string()]], "{got:?}");
}
