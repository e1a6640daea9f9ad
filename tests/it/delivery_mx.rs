//! MX delivery end to end: DNS on loopback, a pipelined transaction to the destination.

use std::time::Duration;

use crate::common::TestRelay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

/// A relay that delivers over the test DNS to `port`, retrying every second.
pub fn delivering_relay(dns: &TestDns, port: u16, delivery_extra: &str) -> TestRelay {
    TestRelay::with_config(&format!("{}delivery:\n  port: {port}\n  retry: [1s]\n{delivery_extra}", dns.config()))
}

/// Waits until the first queued message's first recipient has an attempt recorded.
pub fn first_attempt(relay: &TestRelay) -> sluice::admin::RecipientEntry {
    crate::common::wait_for_recipient(&relay.config, "no attempt recorded", |_, r| r.attempts >= 1)
}

#[test]
fn mail_reaches_the_mx_host_in_one_pipelined_transaction() {
    // The destination answers MAIL only after it has read DATA: a lock-step client fails.
    let dest = Dest::start(Behavior { hold_mail_until_data: true, ..Behavior::default() });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test", "c@dest.test"], "Subject: mx\r\n\r\n..dotted line\r\nbody\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert!(!dest.state.lock().unwrap().lockstep_detected, "the relay did not pipeline");
    assert_eq!(got[0].from, "a@sender.test");
    assert_eq!(got[0].rcpts, ["b@dest.test", "c@dest.test"], "one transaction for one destination");
    assert!(got[0].body.contains("by relay.test (Sluice) with ESMTP id"), "{}", got[0].body);
    assert!(got[0].body.contains("\r\n.dotted line\r\nbody\r\n"), "dot-stuffing round trip: {}", got[0].body);
    // Delivered messages leave the queue.
    crate::common::wait_for_empty_queue(&relay.config, "message still queued");
}

#[test]
fn lines_longer_than_998_octets_are_broken_on_the_way_out() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = TestRelay::with_config(&format!(
        "{}limits: {{ max_line_length: 5000 }}\ndelivery:\n  port: {}\n  retry: [1s]\n",
        dns.config(),
        dest.addr.port()
    ));
    let long = "x".repeat(3000);
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], &format!("Subject: long\r\n\r\n{long}\r\nend\r\n")).code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    let body = &got[0].body;
    assert!(body.split("\r\n").all(|l| l.len() <= 998), "a line over 998 octets went out");
    assert!(body.replace("\r\n ", "").contains(&format!("\r\n{long}\r\nend\r\n")), "the long line does not unfold to the original");
}
