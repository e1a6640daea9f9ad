//! Submission refuses recipients whose domain publishes a null MX (RFC 7505) at RCPT with
//! 556 5.1.10, instead of queueing a certain bounce; the relay listener leaves it to the queue.

use crate::common::{Client, TestRelay};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn submission_refuses_null_mx_recipients_at_rcpt() {
    let dns = TestDns::start(
        Zone::default().mx("nomail.test", &[(0, ".")]).mx("mail.test", &[(10, "mx.mail.test")]).a("mx.mail.test", "127.0.0.1"),
    );
    let files = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}listeners:\n  - {{ address: \"127.0.0.1:0\", mode: relay }}\n  - {{ address: \"127.0.0.1:0\", mode: submission }}\nauth: {{ users_file: {}/users, plaintext_networks: [\"127.0.0.1/32\"], failure_delay: 0s }}\n",
        dns.config(),
        files.path().display()
    );
    let relay = TestRelay::with_config(&crate::common::tls_auth_yaml(files.path(), &extra));
    let mut sub = Client::connect(relay.addrs[1]);
    sub.cmd("EHLO c.test");
    assert_eq!(sub.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    assert_eq!(sub.cmd("MAIL FROM:<alice@mail.test>").code, 250);
    let refused = sub.cmd("RCPT TO:<bob@nomail.test>");
    assert_eq!((refused.code, refused.text()), (556, "5.1.10 Recipient domain nomail.test accepts no mail (null MX)".into()));
    assert_eq!(sub.cmd("RCPT TO:<carol@mail.test>").code, 250, "a domain with a real MX");
    assert_eq!(sub.cmd("RCPT TO:<dave@unknown.test>").code, 250, "other answers are left to the queue");
    // The relay listener does not look: the queue bounces it later.
    let mut relayed = Client::connect(relay.addrs[0]);
    relayed.cmd("EHLO c.test");
    assert_eq!(relayed.cmd("MAIL FROM:<a@mail.test>").code, 250);
    assert_eq!(relayed.cmd("RCPT TO:<bob@nomail.test>").code, 250);
}
