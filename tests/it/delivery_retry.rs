//! A 4xx is retried on the schedule and then succeeds.

use std::time::{Duration, Instant};

use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn a_temporary_failure_is_retried_then_delivered() {
    let dest = Dest::start(Behavior {
        after_dot: std::sync::Arc::new(|n| if n == 0 { "451 4.3.0 try again later".into() } else { "250 2.0.0 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    // Three seconds: the schedule counts whole seconds, so the retry comes 2-3 s after the
    // first attempt, time enough to look at the queue in between.
    let relay = crate::common::TestRelay::with_config(&format!("{}delivery:\n  port: {}\n  retry: [3s]\n", dns.config(), dest.addr.port()));
    let (started, started_wall) = (Instant::now(), std::time::SystemTime::now());
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "x\r\n").code, 250);
    // First attempt deferred: the queue shows it with its reply.
    let deadline = Instant::now() + Duration::from_secs(10);
    let next_attempt = loop {
        let q = sluice::admin::queue_list(&relay.config).unwrap();
        if let Some(r) = q.first().map(|e| &e.recipients[0])
            && r.attempts == 1
        {
            assert!(r.last_reply.as_deref().unwrap_or("").starts_with("451 4.3.0"), "{r:?}");
            let next_attempt = r.next_attempt.expect("a next attempt");
            let (ok, table, _) = crate::common::sluice(&["queue", "list", "--config", &relay.config_path()]);
            assert!(
                ok && table.contains("b@dest.test  queued  attempts 1  next attempt ") && table.contains("last reply: 451 4.3.0"),
                "{table}"
            );
            break next_attempt;
        }
        assert!(Instant::now() < deadline, "no deferral recorded: {q:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let got = dest.wait_for(1, Duration::from_secs(20));
    // The schedule is in whole seconds: the retry comes no earlier than the recorded next
    // attempt (which may be less than the 1 s interval after the first attempt's instant).
    let arrived = started_wall + (got[0].at - started);
    let arrived = arrived.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(arrived >= next_attempt, "the retry waited for its time: arrived {arrived}, due {next_attempt}");
}
