//! `tls: required` for a domain: a certificate valid for the MX name, or no delivery at all.

use std::time::{Duration, Instant};

use crate::common::TestRelay;
use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn zone() -> Zone {
    Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1")
}

/// The last reply of the first attempt for the only queued message.
fn deferral(relay: &TestRelay) -> String {
    crate::delivery_mx::first_attempt(relay).last_reply.unwrap_or_default()
}

#[test]
fn a_server_without_starttls_gets_nothing() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, dest.addr.port(), "  tls_policies: { \"dest.test\": required }\n");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "secret\r\n").code, 250);
    let reply = deferral(&relay);
    assert!(reply.starts_with("451 4.7.4") && reply.contains("TLS required but not offered"), "{reply}");
    assert!(dest.state.lock().unwrap().transactions.is_empty(), "nothing sent in plain text");
}

#[test]
fn an_untrusted_certificate_is_refused_and_a_trusted_one_is_used() {
    let destination = TestRelay::with_tls("hostname: mx.dest.test\n");
    let dns = TestDns::start(zone());
    let port = destination.addr.port();

    let untrusting = delivering_relay(&dns, port, "  tls_policies: { \"dest.test\": required }\n");
    let mut c = untrusting.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "secret\r\n").code, 250);
    let reply = deferral(&untrusting);
    assert!(reply.starts_with("451 4.7.4") && reply.contains("TLS handshake failed"), "{reply}");
    assert!(sluice::admin::queue_list(&destination.config).unwrap().is_empty());

    let trust = format!("  tls_policies: {{ \"dest.test\": required }}\n  tls_trust: [{}]\n", destination.certificate().display());
    let trusting = delivering_relay(&dns, port, &trust);
    let mut c = trusting.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: verified\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&destination.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing arrived over verified TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = destination.stop_and_read();
    assert!(stored[0].1.contains("with ESMTPS id") && stored[0].1.contains("Subject: verified"), "{}", stored[0].1);
}
