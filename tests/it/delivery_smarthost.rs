//! A smarthost that requires a login: another Sluice's submission port (AUTH after STARTTLS),
//! reached over TLS verified against `tls_trust`, with credentials from a file.

use std::time::{Duration, Instant};

use crate::common::TestRelay;
use crate::peers::dns::{TestDns, Zone};

fn relay_via(smarthost: &TestRelay, dns: &TestDns, password: &str) -> (TestRelay, tempfile::TempDir) {
    relay_via_with(smarthost, dns, password, "")
}

/// `extra` goes under `delivery:`.
fn relay_via_with(smarthost: &TestRelay, dns: &TestDns, password: &str, extra: &str) -> (TestRelay, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let password_file = files.path().join("smarthost.password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let relay = TestRelay::with_config(&format!(
        "{}delivery:\n  smarthost: \"[smart.test]:{}\"\n  smarthost_auth: {{ username: alice, password_file: {} }}\n  tls_trust: [{}]\n  retry: [1s]\n{extra}",
        dns.config(),
        smarthost.addr.port(),
        password_file.display(),
        smarthost.certificate().display()
    ));
    (relay, files)
}

fn smarthost() -> TestRelay {
    smarthost_on("submission")
}

fn smarthost_on(mode: &str) -> TestRelay {
    TestRelay::with_tls(&format!("hostname: smart.test\nlisteners:\n  - {{ address: \"127.0.0.1:0\", mode: {mode} }}\n"))
}

fn wait_for_arrival(smart: &TestRelay) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&smart.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached the smarthost");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn implicit_tls_reaches_a_submissions_smarthost_and_logs_in() {
    // The smarthost's port speaks TLS from the first byte (RFC 8314), as port 465 does.
    let smart = smarthost_on("submissions");
    let dns = TestDns::start(Zone::default().a("smart.test", "127.0.0.1"));
    let (relay, _files) = relay_via_with(&smart, &dns, "right", "  smarthost_tls: implicit\n");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@anywhere.test"], "Subject: implicit\r\n\r\nx\r\n").code, 250);
    wait_for_arrival(&smart);
    let stored = smart.stop_and_read();
    assert!(stored[0].1.contains(" with ESMTPSA id ") && stored[0].1.contains("(using TLSv1.3"), "{}", stored[0].1);
    assert_eq!(stored[0].0.identity, sluice::spool::Identity::Authenticated("alice".into()));
}

#[test]
fn implicit_tls_to_a_plain_text_port_defers_and_never_falls_back() {
    // A STARTTLS port greets in plain text: the handshake fails, and nothing is sent in clear.
    let smart = smarthost();
    let dns = TestDns::start(Zone::default().a("smart.test", "127.0.0.1"));
    let (relay, _files) = relay_via_with(&smart, &dns, "right", "  smarthost_tls: implicit\n");
    assert_eq!(relay.client().send_mail("a@sender.test", &["b@anywhere.test"], "x\r\n").code, 250);
    let reply = crate::delivery_mx::first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.starts_with("451 4.7.4") && reply.contains("TLS handshake failed"), "{reply}");
    assert!(sluice::admin::queue_list(&smart.config).unwrap().is_empty());
}

#[test]
fn relays_through_a_smarthost_with_a_login_over_verified_tls() {
    let smart = smarthost();
    let dns = TestDns::start(Zone::default().a("smart.test", "127.0.0.1"));
    let (relay, _files) = relay_via(&smart, &dns, "right");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@anywhere.test"], "Subject: via smarthost\r\n\r\nx\r\n").code, 250);
    wait_for_arrival(&smart);
    let stored = smart.stop_and_read();
    assert!(stored[0].1.contains(" with ESMTPSA id "), "{}", stored[0].1);
    assert_eq!(stored[0].0.identity, sluice::spool::Identity::Authenticated("alice".into()));
}

#[test]
fn a_refused_login_defers_with_the_smarthost_reply() {
    let smart = smarthost();
    let dns = TestDns::start(Zone::default().a("smart.test", "127.0.0.1"));
    let (relay, _files) = relay_via(&smart, &dns, "wrong");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@anywhere.test"], "x\r\n").code, 250);
    let reply = crate::delivery_mx::first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.starts_with("451 ") && reply.contains("login refused: 535 5.7.8"), "{reply}");
    assert!(sluice::admin::queue_list(&smart.config).unwrap().is_empty());
}

#[test]
fn opportunistic_implicit_tls_defers_rather_than_sending_in_plain_text() {
    // No login, so the policy is opportunistic: with STARTTLS that would fall back to plain
    // text; with implicit TLS the port is TLS-only, so there is nothing to fall back to.
    let smart = TestRelay::with_config("hostname: smart.test\n");
    let relay = TestRelay::with_config(&format!(
        "delivery:\n  smarthost: \"[127.0.0.1]:{}\"\n  smarthost_tls: implicit\n  retry: [1h]\n",
        smart.addr.port()
    ));
    assert_eq!(relay.client().send_mail("a@sender.test", &["b@anywhere.test"], "x\r\n").code, 250);
    let reply = crate::delivery_mx::first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.starts_with("451 ") && reply.contains("TLS handshake failed"), "{reply}");
    assert!(sluice::admin::queue_list(&smart.config).unwrap().is_empty(), "nothing went in plain text");
}
