//! A 4xx is retried on the schedule and then succeeds.

use std::time::{Duration, Instant};

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn a_temporary_failure_is_retried_then_delivered() {
    let dest = Dest::start(Behavior {
        after_dot: std::sync::Arc::new(|n| if n == 0 { "451 4.3.0 try again later".into() } else { "250 2.0.0 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let started = Instant::now();
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "x\r\n").code, 250);
    // First attempt deferred: the queue shows it with its reply.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = sluice::admin::queue_list(&relay.config).unwrap();
        if let Some(r) = q.first().map(|e| &e.recipients[0])
            && r.attempts == 1
        {
            assert!(r.last_reply.as_deref().unwrap_or("").starts_with("451 4.3.0"), "{r:?}");
            assert!(r.next_attempt.is_some());
            let (ok, table, _) = crate::common::sluice(&["queue", "list", "--config", &relay.config_path()]);
            assert!(
                ok && table.contains("b@dest.test  queued  attempts 1  next attempt ") && table.contains("last reply: 451 4.3.0"),
                "{table}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no deferral recorded: {q:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    dest.wait_for(1, Duration::from_secs(20));
    assert!(started.elapsed() >= Duration::from_secs(1), "the retry waited for its interval");
}
