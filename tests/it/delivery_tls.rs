//! Outbound STARTTLS: a Sluice delivering to another Sluice that offers TLS; a host whose
//! handshake fails is sent to in plain text, at once for `starttls_failure_memory`.

use std::time::{Duration, Instant};

use crate::common::TestRelay;
use crate::delivery_mx::delivering_relay;
use crate::peers::dns::{TestDns, Zone};

#[test]
fn delivery_uses_starttls_when_the_destination_offers_it() {
    // The destination: a relay with STARTTLS that keeps what it receives (delivery paused).
    // It needs a name of its own: a greeting with the sender's name is a loop.
    let destination = TestRelay::with_tls("hostname: dest.test\n");
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, destination.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: over tls\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&destination.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = destination.stop_and_read();
    let body = &stored[0].1;
    // The destination's own Received field says how it was reached.
    assert!(body.starts_with("Received: from relay.test ([127.0.0.1])\r\n\tby dest.test (Sluice) with ESMTPS id "), "{body}");
    assert!(body.contains("(using TLSv1.3 with cipher"), "{body}");
}

/// A destination that offers STARTTLS and fails every handshake (220, then it hangs up).
fn broken_tls_destination() -> crate::peers::dest::Dest {
    use crate::peers::dest::{Behavior, Dest};
    let mut behavior = Behavior::default();
    behavior.extensions.push("STARTTLS".into());
    Dest::start(behavior)
}

#[test]
fn a_host_whose_starttls_failed_gets_plain_text_at_once_for_the_memory_s_time() {
    let dest = broken_tls_destination();
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    // Each message on a connection of its own, so each one shows what a new connection does.
    let relay = delivering_relay(&dns, dest.addr.port(), "  max_deliveries_per_connection: 1\n");
    for n in 0..3 {
        let mut c = relay.client();
        assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], &format!("Subject: {n}\r\n\r\nx\r\n")).code, 250);
        dest.wait_for(n + 1, Duration::from_secs(20));
    }
    let state = dest.state.lock().unwrap();
    assert_eq!(state.starttls, 1, "only the first connection tried the handshake");
    assert_eq!(state.connections, 4, "the failed handshake's connection, then one each in plain text");
}

#[test]
fn with_no_memory_every_connection_tries_the_handshake_again() {
    let dest = broken_tls_destination();
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, dest.addr.port(), "  max_deliveries_per_connection: 1\n  starttls_failure_memory: 0s\n");
    for n in 0..2 {
        let mut c = relay.client();
        assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], &format!("Subject: {n}\r\n\r\nx\r\n")).code, 250);
        dest.wait_for(n + 1, Duration::from_secs(20));
    }
    assert_eq!(dest.state.lock().unwrap().starttls, 2);
}
