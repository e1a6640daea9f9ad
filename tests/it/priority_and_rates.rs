//! MT-PRIORITY (RFC 6710) at intake and in delivery order, and intake rate limits per client
//! IP and per authenticated user.

use std::time::Duration;

use crate::common::{Client, TestRelay};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn mt_priority_is_offered_taken_from_mail_and_defaulted_per_listener_and_user() {
    let files = tempfile::tempdir().unwrap();
    let extra = "listeners:\n  - { address: \"127.0.0.1:0\", mode: relay, default_priority: 2 }\n";
    let auth = format!(
        "auth: {{ users_file: {}/users, plaintext_networks: [\"127.0.0.1/32\"], failure_delay: 0s, user_priorities: {{ alice: -3 }} }}\n",
        files.path().display()
    );
    let relay = TestRelay::with_config(&crate::common::tls_auth_yaml(files.path(), &format!("{extra}{auth}")));
    let mut c = relay.client();
    assert!(c.cmd("EHLO c.test").lines.contains(&"MT-PRIORITY MIXER".to_string()));
    assert_eq!(c.send_lines("MAIL FROM:<given@x.test> MT-PRIORITY=5", &["RCPT TO:<b@y.test>"], "x\r\n").code, 250);
    assert_eq!(c.send_mail("listener@x.test", &["b@y.test"], "x\r\n").code, 250);
    let bad = {
        c.cmd("EHLO c.test");
        c.cmd("MAIL FROM:<bad@x.test> MT-PRIORITY=12")
    };
    assert_eq!((bad.code, bad.text().starts_with("5.5.4")), (501, true), "{bad:?}");
    let mut user = relay.client();
    user.cmd("EHLO c.test");
    assert_eq!(user.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    assert_eq!(user.send_mail("alice@x.test", &["b@y.test"], "x\r\n").code, 250);
    let stored = relay.stop_and_read();
    let priority = |from: &str| stored.iter().find(|(e, _)| e.from.as_ref().unwrap().to_string() == from).unwrap().0.params.priority;
    assert_eq!(priority("given@x.test"), Some(5));
    assert_eq!(priority("listener@x.test"), Some(2));
    assert_eq!(priority("alice@x.test"), Some(-3));
}

#[test]
fn higher_priority_overtakes_bulk_waiting_for_the_rate() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = TestRelay::with_config(&format!(
        "{}delivery:\n  port: {}\n  retry: [1s]\n  message_rate: \"4/s\"\n",
        dns.config(),
        dest.addr.port()
    ));
    let mut c = relay.client();
    for i in 0..6 {
        let r = c.send_lines("MAIL FROM:<bulk@x.test> MT-PRIORITY=-5", &[&format!("RCPT TO:<bulk{i}@dest.test>")], "x\r\n");
        assert_eq!(r.code, 250);
    }
    assert_eq!(c.send_lines("MAIL FROM:<urgent@x.test> MT-PRIORITY=9", &["RCPT TO:<urgent@dest.test>"], "x\r\n").code, 250);
    let got = dest.wait_for(7, Duration::from_secs(20));
    let order: Vec<&str> = got.iter().map(|t| t.from.as_str()).collect();
    let urgent = order.iter().position(|f| *f == "urgent@x.test").unwrap();
    assert!(urgent <= 3, "the urgent message came {urgent}th of {order:?}, behind bulk that was waiting");
}

#[test]
fn messages_per_ip_over_the_rate_get_451_at_mail() {
    let relay = TestRelay::with_config("limits: { messages_per_ip: \"2/h burst 2\" }\n");
    let mut c = relay.client();
    for _ in 0..2 {
        assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    }
    c.cmd("EHLO c.test");
    let r = c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text().starts_with("4.7.0 Too many messages from 127.0.0.1"), "{r:?}");
    // The session goes on: other commands still work.
    assert_eq!(c.cmd("NOOP").code, 250);
}

#[test]
fn messages_per_user_hold_for_an_authenticated_sender() {
    let files = tempfile::tempdir().unwrap();
    let auth = format!(
        "auth: {{ users_file: {}/users, plaintext_networks: [\"127.0.0.1/32\"], failure_delay: 0s }}\nlimits: {{ messages_per_user: \"1/h\" }}\n",
        files.path().display()
    );
    let relay = TestRelay::with_config(&crate::common::tls_auth_yaml(files.path(), &auth));
    let login = format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"));
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd(&login).code, 235);
    assert_eq!(c.send_mail("alice@x.test", &["b@y.test"], "x\r\n").code, 250);
    c.cmd("EHLO c.test");
    let r = c.cmd("MAIL FROM:<alice@x.test>");
    assert_eq!(r.code, 451);
    assert!(r.text().contains("user alice"), "{r:?}");
    // Without a login, the same client IP is not limited (no per-IP limit is set).
    let mut anonymous = Client::connect(relay.addr);
    assert_eq!(anonymous.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
}
