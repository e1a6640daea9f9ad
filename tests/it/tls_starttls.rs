//! STARTTLS (RFC 3207) on the relay and submission listeners, with a generated certificate.

use crate::common::{Client, TestRelay};

const LISTENERS: &str = "listeners:\n  - { address: \"127.0.0.1:0\", mode: relay }\n  - { address: \"127.0.0.1:0\", mode: submission }\n";

#[test]
fn starttls_upgrades_and_the_session_starts_over() {
    let relay = TestRelay::with_tls(LISTENERS);
    let mut c = relay.client();
    let ehlo = c.cmd("EHLO c.test");
    assert!(ehlo.lines.contains(&"STARTTLS".to_string()), "{ehlo:?}");
    assert!(!ehlo.lines.iter().any(|l| l.starts_with("AUTH")), "no AUTH offered in plaintext: {ehlo:?}");
    let r = c.cmd("STARTTLS");
    assert_eq!((r.code, r.text()), (220, "2.0.0 Ready to start TLS".into()));
    c.start_tls(&relay.certificate());
    // Plaintext state is gone: EHLO is needed again, and now AUTH is offered, STARTTLS is not.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 503);
    let ehlo = c.cmd("EHLO c.test");
    assert!(ehlo.lines.contains(&"AUTH PLAIN LOGIN".to_string()) && !ehlo.lines.contains(&"STARTTLS".to_string()), "{ehlo:?}");
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "Subject: tls\r\n\r\nsecret\r\n").code, 250);
    let stored = relay.stop_and_read();
    let body = &stored[0].1;
    assert!(body.contains(" with ESMTPS id "), "{body}");
    assert!(body.contains("\r\n\t(using TLSv1.3 with cipher TLS13_"), "{body}");
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    // Where pipelining is not refused outright (see pipelining.rs), the plaintext is dropped.
    let relay = TestRelay::with_tls("listeners:\n  - { address: \"127.0.0.1:0\", mode: relay, forbid_unauth_pipelining: false }\n");
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    // One segment: STARTTLS and an RSET the attacker hopes will run inside the TLS session.
    c.send(b"STARTTLS\r\nRSET\r\n");
    assert_eq!(c.reply().code, 220);
    c.start_tls(&relay.certificate());
    // The first reply inside TLS must belong to VRFY (252), not to the smuggled RSET (250).
    let r = c.cmd("VRFY someone");
    assert_eq!(r.code, 252, "got {r:?}: the plaintext RSET was answered");
}

#[test]
fn submission_listener_refuses_mail_without_auth_and_auth_without_tls() {
    let relay = TestRelay::with_tls(LISTENERS);
    let mut c = Client::connect(relay.addrs[1]);
    c.cmd("EHLO c.test");
    let r = c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!((r.code, r.text()), (530, "5.7.0 Authentication required".into()));
    let r = c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right")));
    assert_eq!((r.code, r.text()), (538, "5.7.11 Encryption required for requested authentication mechanism".into()));
}
