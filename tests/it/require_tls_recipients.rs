//! Recipients that require TLS: refused at RCPT over plain text, and delivered only over
//! verified TLS, never in plain text.

use crate::common::TestRelay;
use crate::delivery_mx::first_attempt;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn tls_only_recipients_never_travel_in_plain_text() {
    // The destination offers no STARTTLS at all.
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("bank.test", &[(10, "mx.bank.test")]).a("mx.bank.test", "127.0.0.1"));
    let relay = TestRelay::with_tls(&format!(
        "{}require_tls_recipients: [\"bank.test\"]\ndelivery:\n  port: {}\n  retry: [1s]\n",
        dns.config(),
        dest.addr.port()
    ));
    let mut plain = relay.client();
    plain.cmd("EHLO c.test");
    plain.cmd("MAIL FROM:<a@sender.test>");
    let r = plain.cmd("RCPT TO:<ceo@bank.test>");
    assert_eq!((r.code, r.text()), (530, "5.7.0 Must issue a STARTTLS command first: this recipient requires TLS".into()));

    let mut tls = relay.client();
    tls.cmd("EHLO c.test");
    assert_eq!(tls.cmd("STARTTLS").code, 220);
    tls.start_tls(&relay.certificate());
    assert_eq!(tls.send_mail("a@sender.test", &["ceo@bank.test"], "secret\r\n").code, 250);
    let reply = first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.starts_with("451 4.7.4"), "{reply}");
    assert!(dest.state.lock().unwrap().transactions.is_empty(), "nothing went out in plain text");
}
