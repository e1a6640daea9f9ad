//! `sluice queue hold` / `release`: held mail is never dispatched, stays held across a
//! restart, shows as held, and goes out once released.

use std::time::Duration;

use crate::common::{Client, Daemon, sluice_status};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn held_mail_waits_across_a_restart_until_released() {
    // The destination refuses for now the first time, so the message is queued to hold.
    let dest = Dest::start(Behavior {
        after_dot: std::sync::Arc::new(|n| if n == 0 { "451 4.3.0 later".into() } else { "250 2.0.0 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    // Retried every 2 s were it not held (the schedule counts whole seconds: the retry comes
    // 1-2 s after the first attempt, later than the hold below).
    let extra = format!("{}delivery:\n  port: {}\n  retry: [2s]\n", dns.config(), dest.addr.port());
    let mut daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("s@x.test", &["r@dest.test"], "x\r\n").code, 250);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let id = loop {
        let q = sluice::admin::queue_list(&config).unwrap();
        if let Some(e) = q.iter().find(|e| e.recipients[0].attempts >= 1) {
            break e.queue_id.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no deferral");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (code, out, err) = sluice_status(&["queue", "hold", "--config", &path, &id]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(3500));
    assert!(dest.state.lock().unwrap().transactions.is_empty(), "held mail was sent");
    let (_, table, _) = sluice_status(&["queue", "list", "--config", &path]);
    assert!(table.contains(&format!("{id} (held)")), "{table}");

    // Across a restart: still held, still not sent; flushing does not release it.
    daemon.kill9();
    let _daemon = Daemon::spawn(dir.path(), &extra, &[]);
    assert_eq!(sluice_status(&["queue", "flush", "--config", &path, &id]).0, 0);
    std::thread::sleep(Duration::from_millis(3500));
    assert!(dest.state.lock().unwrap().transactions.is_empty(), "held mail was sent after the restart");
    assert!(sluice::admin::queue_list(&config).unwrap()[0].held);

    let (code, out, err) = sluice_status(&["queue", "release", "--config", &path, &id]);
    assert_eq!(code, 0, "{out}{err}");
    let got = dest.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].rcpts, ["r@dest.test"]);
}
