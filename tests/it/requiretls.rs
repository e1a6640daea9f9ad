//! REQUIRETLS (RFC 8689) end to end, and the `TLS-Required: No` header field.

use std::time::{Duration, Instant};

use crate::common::{Client, TestRelay};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn zone() -> Zone {
    Zone::default().a("mx.dest.test", "127.0.0.1").mx("other.test", &[(10, "mx.dest.test")])
}

/// A relay with TLS on intake, delivering per `delivery` (YAML lines under `delivery:`).
fn sender(dns: &TestDns, files: &std::path::Path, delivery: &str) -> TestRelay {
    let extra = format!("{}delivery:\n  retry: [1s]\n{delivery}", dns.config());
    TestRelay::with_config(&crate::common::tls_auth_yaml(files, &extra))
}

fn over_tls(relay: &TestRelay, files: &std::path::Path) -> Client {
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls(&files.join("cert.pem"));
    c
}

#[test]
fn requiretls_mail_travels_a_verified_route_that_offers_it_and_bounces_5_7_30_elsewhere() {
    // The destination is another Sluice: it offers REQUIRETLS after STARTTLS.
    let destination = TestRelay::with_tls("hostname: mx.dest.test\n");
    let bounces = Dest::start(Behavior::default());
    let dns = TestDns::start(zone());
    let files = tempfile::tempdir().unwrap();
    let relay = sender(
        &dns,
        files.path(),
        &format!(
            "  routes: {{ \"dest.test\": \"[mx.dest.test]:{}\", \"sender.test\": \"[127.0.0.1]:{}\" }}\n  tls_trust: [{}]\n",
            destination.addr.port(),
            bounces.addr.port(),
            destination.certificate().display()
        ),
    );
    let mut c = over_tls(&relay, files.path());
    let r = c.send_lines("MAIL FROM:<a@sender.test> REQUIRETLS", &["RCPT TO:<b@dest.test>"], "Subject: secret\r\n\r\nx\r\n");
    assert_eq!(r.code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&destination.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing arrived at the verified route");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Over MX records (not authenticated without DNSSEC or MTA-STS): no attempt, a bounce.
    let r = c.send_lines("MAIL FROM:<a@sender.test> REQUIRETLS", &["RCPT TO:<c@other.test>"], "Subject: secret too\r\n\r\nbody text\r\n");
    assert_eq!(r.code, 250);
    let got = bounces.wait_for(1, Duration::from_secs(20));
    assert!(got[0].body.contains("Status: 5.7.30"), "{}", got[0].body);
    assert!(got[0].body.contains("Subject: secret too") && !got[0].body.contains("body text"), "only the headers go back: {}", got[0].body);
    let stored = destination.stop_and_read();
    assert_eq!(stored.len(), 1, "the MX-routed message never reached the destination");
    assert!(stored[0].0.params.requiretls, "REQUIRETLS was passed on");
    assert!(stored[0].1.contains("with ESMTPS"), "{}", stored[0].1);
}

#[test]
fn tls_required_no_sets_the_recipient_side_policy_aside() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(zone());
    let files = tempfile::tempdir().unwrap();
    let relay = sender(
        &dns,
        files.path(),
        &format!("  routes: {{ \"plain.test\": \"[127.0.0.1]:{}\" }}\n  tls_policies: {{ \"plain.test\": required }}\n", dest.addr.port()),
    );
    let mut c = relay.client();
    // Without the field the policy holds: nothing goes to a host without STARTTLS.
    assert_eq!(c.send_mail("a@sender.test", &["held@plain.test"], "Subject: held\r\n\r\nx\r\n").code, 250);
    assert_eq!(c.send_mail("a@sender.test", &["b@plain.test"], "TLS-Required: No\r\nSubject: alert\r\n\r\nx\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, ["b@plain.test"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dest.state.lock().unwrap().transactions.len(), 1, "the message without TLS-Required: No stayed queued");
}
