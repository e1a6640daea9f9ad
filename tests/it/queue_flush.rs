//! `sluice queue flush`: deferred mail goes out now, a suspended destination is resumed, and
//! the exit codes say what happened (0 done, 2 usage, 3 no such message, 69 no daemon).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, sluice, sluice_status};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn queue(config: &sluice::config::Config) -> Vec<sluice::admin::QueueEntry> {
    sluice::admin::queue_list(config).unwrap()
}

fn wait_for_attempt(config: &sluice::config::Config, rcpt: &str) -> sluice::admin::RecipientEntry {
    crate::common::wait_for_recipient(config, &format!("no attempt for {rcpt}"), |_, r| r.address == rcpt && r.last_reply.is_some())
}

#[test]
fn flush_sends_deferred_mail_now_and_resumes_a_suspended_destination() {
    // The first final dot is refused for now, the second throttles (421), then all is well.
    let dest = Dest::start(Behavior {
        after_dot: Arc::new(|n| match n {
            0 => "451 4.3.0 try again later".into(),
            1 => "421 4.7.28 slow down".into(),
            _ => "250 2.0.0 ok".into(),
        }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    // Retries an hour apart and a suspension of an hour: only a flush sends anything soon.
    let extra = format!(
        "{}delivery:\n  port: {}\n  retry: [1h]\n  backoff: {{ initial: 1h, max: 2h, after_failures: 5 }}\n",
        dns.config(),
        dest.addr.port()
    );
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["first@dest.test"], "Subject: one\r\n\r\nfirst\r\n").code, 250);
    let r = wait_for_attempt(&config, "first@dest.test");
    assert!(r.last_reply.unwrap().starts_with("451 4.3.0"));
    let id = queue(&config)[0].queue_id.clone();

    // By queue id: delivered now, not in an hour.
    let (code, out, err) = sluice_status(&["queue", "flush", "--config", &path, &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("1 message(s) flushed: {id}"));
    // That attempt meets the 421: the destination is suspended for an hour.
    let r = wait_for_attempt(&config, "first@dest.test");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sluice::admin::queue_summary(&config).unwrap().iter().any(|s| s.suspended.is_some()) {
        assert!(Instant::now() < deadline, "not suspended: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dest.state.lock().unwrap().transactions.is_empty());

    // By domain: the suspension ends and the message goes out.
    let (code, out, err) = sluice_status(&["queue", "flush", "--config", &path, "--domain", "dest.test", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("{{\"flushed\":[\"{id}\"]}}"));
    let got = dest.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].rcpts, ["first@dest.test"]);
    assert!(sluice::admin::queue_summary(&config).unwrap().iter().all(|s| s.suspended.is_none()));
    assert!(daemon.log_text().contains("queue flush"), "the flush is logged with its operator");

    // Usage, an unknown id, and no daemon.
    assert_eq!(sluice_status(&["queue", "flush", "--config", &path]).0, 2);
    let (code, _, err) = sluice_status(&["queue", "flush", "--config", &path, "NOSUCHID"]);
    assert_eq!(code, 3, "{err}");
    drop(daemon);
    let (code, _, err) = sluice_status(&["queue", "flush", "--config", &path, "--all"]);
    assert_eq!(code, 69, "{err}");
    let (ok, _, _) = sluice(&["queue", "list", "--config", &path]);
    assert!(ok, "listing still works without the daemon");
}
