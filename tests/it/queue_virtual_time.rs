//! The queue on virtual time: the relay's runner reads a `ManualClock`, so waits of hours
//! (retry intervals, `max_age`) pass in a moment and their edges can be checked exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice::clock::{Clock, ManualClock};

use crate::common::TestRelay;
use crate::peers::dest::{Behavior, Dest};

fn relay_on(clock: &Arc<ManualClock>, dest: &Dest, delivery: &str) -> TestRelay {
    let routes = format!("  routes: {{ \"dest.test\": \"[127.0.0.1]:{0}\", \"sender.test\": \"[127.0.0.1]:{0}\" }}\n", dest.addr.port());
    TestRelay::with_clock(&format!("delivery:\n{routes}{delivery}"), clock.clone())
}

/// The arrival time is stamped by the wall clock, which may have passed into the next second
/// since the virtual one started: until the virtual clock catches up, nothing is due.
fn catch_up_with_the_arrival(clock: &ManualClock) {
    clock.advance(Duration::from_secs(2));
}

/// Waits (in real time) until the first recipient has `n` attempts recorded.
fn attempts_reach(relay: &TestRelay, n: u32) -> sluice::admin::RecipientEntry {
    crate::common::wait_for_recipient(&relay.config, &format!("attempt {n} was not recorded"), |_, r| r.attempts >= n)
}

#[test]
fn a_deferred_message_waits_out_its_retry_interval_and_not_a_second_less() {
    let dest = Dest::start(Behavior {
        after_dot: Arc::new(|n| if n == 0 { "451 4.3.0 try again later".into() } else { "250 2.0.0 accepted".into() }),
        ..Behavior::default()
    });
    let clock = ManualClock::at_system_time();
    let relay = relay_on(&clock, &dest, "  retry: [2h]\n");
    assert_eq!(relay.client().send_mail("a@sender.test", &["b@dest.test"], "Subject: later\r\n\r\nx\r\n").code, 250);
    catch_up_with_the_arrival(&clock);
    let first = attempts_reach(&relay, 1);
    let due = first.next_attempt.expect("a next attempt");
    assert_eq!(due, clock.now() + 7200, "the schedule's first interval from the attempt's time");

    // One second short of the interval: the runner wakes at the jump and still waits.
    clock.advance(Duration::from_secs(7199));
    std::thread::sleep(Duration::from_millis(500));
    assert!(dest.state.lock().unwrap().transactions.is_empty(), "retried early");
    assert_eq!(attempts_reach(&relay, 1).attempts, 1);

    clock.advance(Duration::from_secs(1));
    let got = dest.wait_for(1, Duration::from_secs(10));
    assert!(got[0].body.contains("Subject: later"));
    crate::common::wait_for_empty_queue(&relay.config, "the delivered message stayed queued");
}

#[test]
fn a_message_never_accepted_expires_at_max_age_and_its_sender_is_told() {
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = tries.clone();
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(move |rcpt, _| {
            if rcpt.contains("b@dest.test") {
                counted.fetch_add(1, Ordering::SeqCst);
                "451 4.2.1 mailbox busy".into()
            } else {
                "250 2.1.5 ok".into()
            }
        }),
        ..Behavior::default()
    });
    let clock = ManualClock::at_system_time();
    let relay = relay_on(&clock, &dest, "  retry: [1h]\n  max_age: 3h\n  delay_warning: 0s\n");
    assert_eq!(relay.client().send_mail("a@sender.test", &["b@dest.test"], "Subject: doomed\r\n\r\nx\r\n").code, 250);
    catch_up_with_the_arrival(&clock);
    attempts_reach(&relay, 1);
    // A few seconds over each hour keep every attempt due.
    for n in 2..=3 {
        clock.advance(Duration::from_secs(3605));
        let r = attempts_reach(&relay, n);
        assert_eq!(r.state, sluice::spool::RecipientState::Queued, "still within max_age after attempt {n}");
    }
    assert!(dest.state.lock().unwrap().transactions.is_empty(), "no bounce before max_age");
    clock.advance(Duration::from_secs(3605));
    let bounce = dest.wait_for(1, Duration::from_secs(10));
    assert_eq!(bounce[0].rcpts, vec!["a@sender.test".to_string()]);
    assert!(bounce[0].body.contains("Action: failed"), "{}", bounce[0].body);
    assert!(bounce[0].body.contains("451 4.2.1 mailbox busy"), "the last reply is reported: {}", bounce[0].body);
    assert_eq!(tries.load(Ordering::SeqCst), 4, "attempts at 0, 1 h, 2 h and 3 h");
    crate::common::wait_for_empty_queue(&relay.config, "the expired message stayed queued");
}

#[test]
fn a_destination_nobody_uses_leaves_the_metrics_when_it_is_forgotten() {
    let dest = Dest::start(Behavior::default());
    let clock = ManualClock::at_system_time();
    let port = crate::metrics_endpoint::free_port();
    let routes = format!("  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\n", dest.addr.port());
    let relay = TestRelay::with_clock(&format!("metrics: {{ address: \"127.0.0.1:{port}\" }}\ndelivery:\n{routes}"), clock.clone());
    assert_eq!(relay.client().send_mail("a@sender.test", &["b@dest.test"], "Subject: once\r\n\r\nx\r\n").code, 250);
    catch_up_with_the_arrival(&clock);
    let series = "sluice_destination_connections{destination=\"dest.test\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !crate::metrics_endpoint::scrape(port).contains(series) {
        assert!(std::time::Instant::now() < deadline, "the destination never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::common::wait_for_empty_queue(&relay.config, "the message was not delivered");
    // While it is still in use (its pooled connection idle for a while) it stays; once idle
    // and a prune has passed, it is gone, and nothing else went with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        clock.advance(Duration::from_secs(61));
        std::thread::sleep(Duration::from_millis(200));
        let text = crate::metrics_endpoint::scrape(port);
        if !text.contains(series) {
            assert!(text.contains("sluice_destinations_suspended 0"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the destination was never forgotten:\n{text}");
    }
}
