//! `sluice queue delete`: by id, domain or all, with --dry-run; a message being delivered is
//! removed once its attempt has recorded, never resurrected nor sent again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, sluice_status};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn ids(config: &sluice::config::Config) -> Vec<String> {
    sluice::admin::queue_list(config).unwrap().into_iter().map(|e| e.queue_id).collect()
}

#[test]
fn delete_by_id_domain_and_all_with_a_dry_run_first() {
    let dir = tempfile::tempdir().unwrap();
    // Delivery paused (the test default): everything stays queued.
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    let mut c = Client::connect(daemon.addr);
    for to in ["a@one.test", "b@two.test", "c@two.test"] {
        assert_eq!(c.send_mail("s@x.test", &[to], "x\r\n").code, 250);
    }
    let all = ids(&config);
    assert_eq!(all.len(), 3);

    let (code, out, _) = sluice_status(&["queue", "delete", "--config", &path, "--domain", "two.test", "--dry-run", "--json"]);
    assert_eq!(code, 0);
    let named: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(named["would be deleted"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(ids(&config).len(), 3, "a dry run removes nothing");

    let (code, out, _) = sluice_status(&["queue", "delete", "--config", &path, &all[0]]);
    assert_eq!((code, out.trim().to_string()), (0, format!("1 message(s) deleted: {}", all[0])));
    assert_eq!(ids(&config), all[1..]);
    assert_eq!(sluice_status(&["queue", "delete", "--config", &path, &all[0]]).0, 3, "gone: no such message");
    assert_eq!(sluice_status(&["queue", "delete", "--config", &path, "--all"]).0, 0);
    assert!(ids(&config).is_empty());
    assert!(daemon.log_text().contains("queue delete"), "logged with the operator");
}

#[test]
fn a_delete_racing_its_delivery_neither_resurrects_nor_resends() {
    // The destination takes 1.5 s to answer the final dot, then refuses for now (451): left
    // alone, the message would stay queued and be retried.
    let dest = Dest::start(Behavior {
        after_dot: Arc::new(|_| {
            std::thread::sleep(Duration::from_millis(1500));
            "451 4.3.0 later".into()
        }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}delivery:\n  port: {}\n  retry: [1s]\n", dns.config(), dest.addr.port());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("s@x.test", &["r@dest.test"], "x\r\n").code, 250);
    let id = ids(&config)[0].clone();
    // Wait until the destination holds the transaction (its dot answer pending).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dest.state.lock().unwrap().open == 0 {
        assert!(Instant::now() < deadline, "no delivery started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, err) = sluice_status(&["queue", "delete", "--config", &path, &id]);
    assert_eq!(code, 0, "{err}");
    // The attempt ends with 451 (a deferral that would be retried in 1 s); the message must
    // be gone after it, and stay gone.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(ids(&config).is_empty(), "resurrected: {:?}", sluice::admin::queue_list(&config));
    assert_eq!(dest.connections(), 1, "not tried again");
    // Removed after its attempt recorded, not under it: the attempt's own record succeeded.
    let log = daemon.log_text();
    assert!(!log.contains("could not be recorded") && !log.contains("after its attempt failed"), "{log}");
}
