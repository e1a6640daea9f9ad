//! `sluice queue bounce`: every queued recipient fails with the operator's status and reason,
//! the sender gets an RFC 3464 report, and the message leaves the queue.

use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, sluice_status};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn bounce_reports_to_the_sender_with_the_given_status_and_reason() {
    // Mail to dest.test is refused for now; reports to sender.test are taken.
    let dest = Dest::start(Behavior {
        rcpt: std::sync::Arc::new(|addr, _| if addr.ends_with("@dest.test") { "451 4.2.1 busy".into() } else { "250 2.1.5 ok".into() }),
        ..Behavior::default()
    });
    let zone =
        Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).mx("sender.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}delivery:\n  port: {}\n  retry: [1h]\n", dns.config(), dest.addr.port());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["r@dest.test", "s@dest.test"], "Subject: stuck\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let q = sluice::admin::queue_list(&config).unwrap();
        if let Some(e) = q.iter().find(|e| e.recipients.iter().all(|r| r.attempts >= 1)) {
            break e.queue_id.clone();
        }
        assert!(Instant::now() < deadline, "no deferral: {q:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sluice_status(&["queue", "bounce", "--config", &path, &id, "--status", "4.0.0"]).0, 1, "a temporary status is refused");
    let (code, out, err) = sluice_status(&["queue", "bounce", "--config", &path, &id, "--status", "5.7.1", "--reason", "Stuck too long"]);
    assert_eq!(code, 0, "{out}{err}");
    let got = dest.wait_for(1, Duration::from_secs(10));
    let report = &got[0];
    assert_eq!((report.from.as_str(), report.rcpts.clone()), ("", vec!["a@sender.test".to_string()]));
    for needle in
        ["Final-Recipient: rfc822; r@dest.test", "Final-Recipient: rfc822; s@dest.test", "Status: 5.7.1", "Stuck too long (bounced by"]
    {
        assert!(report.body.contains(needle), "missing {needle:?}: {}", report.body);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while sluice::admin::queue_list(&config).unwrap().iter().any(|e| e.queue_id == id) {
        assert!(Instant::now() < deadline, "the bounced message is still queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(daemon.log_text().contains("queue bounce"));
}
