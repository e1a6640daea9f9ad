//! Submission fix-ups and trace fields for authenticated mail: Bcc removed, empty Bcc added
//! when no To/Cc remain, Received says ESMTPSA and names the user only when configured to.

use crate::common::{Client, TestRelay, tls_auth_yaml};

fn submit(relay: &TestRelay, body: &str) {
    let mut c = Client::connect_tls(relay.addr, &relay.certificate());
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    assert_eq!(c.send_mail("alice@x.test", &["to@y.test", "hidden@z.test"], body).code, 250);
}

const SUBMISSIONS: &str = "listeners:\n  - { address: \"127.0.0.1:0\", mode: submissions }\n";

#[test]
fn bcc_is_removed_and_received_has_no_login_by_default() {
    let relay = TestRelay::with_tls(SUBMISSIONS);
    submit(&relay, "From: alice@x.test\r\nTo: to@y.test\r\nBcc: hidden@z.test,\r\n  other@z.test\r\nSubject: s\r\n\r\nbody\r\n");
    submit(&relay, "From: alice@x.test\r\nBcc: hidden@z.test\r\nSubject: only bcc\r\n\r\nbody\r\n");
    let stored = relay.stop_and_read();
    let first = &stored[0].1;
    assert!(!first.contains("hidden@z.test") && !first.contains("other@z.test"), "{first}");
    assert!(first.contains("\r\nTo: to@y.test\r\nSubject: s\r\n\r\nbody\r\n"), "{first}");
    assert!(first.contains(" with ESMTPSA id ") && !first.contains("authenticated as"), "{first}");
    // Two recipients: no `for` clause either.
    assert!(!first.contains("\tfor <"), "{first}");
    let second = &stored[1].1;
    assert!(second.contains("\r\nBcc:\r\n") && !second.contains("hidden@z.test"), "{second}");
}

#[test]
fn received_names_the_user_when_configured() {
    let files = tempfile::tempdir().unwrap();
    let auth =
        format!("auth: {{ users_file: {}/users, received_identity: true, failure_delay: 0s }}\n{SUBMISSIONS}", files.path().display());
    let relay = TestRelay::with_config(&tls_auth_yaml(files.path(), &auth));
    submit(&relay, "To: to@y.test\r\n\r\nx\r\n");
    let stored = relay.stop_and_read();
    assert!(stored[0].1.contains("\r\n\t(authenticated as alice)"), "{}", stored[0].1);
}

#[test]
fn relay_mail_from_trusted_networks_is_not_rewritten() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "To: b@y.test\r\nBcc: kept@z.test\r\n\r\nx\r\n").code, 250);
    let stored = relay.stop_and_read();
    assert!(stored[0].1.contains("Bcc: kept@z.test"), "relay mail is passed on as is");
}
