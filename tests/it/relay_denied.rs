//! Sluice is never an open relay: untrusted clients get 550 5.7.1 at RCPT.

use crate::common::{Client, TestRelay};

#[test]
fn untrusted_client_is_refused_at_rcpt_and_the_session_goes_on() {
    let relay = TestRelay::with_config("trusted_networks: [\"127.0.0.1/32\"]\n");
    let mut c = Client::connect_from(relay.addr, "127.0.0.2");
    assert_eq!(c.cmd("EHLO outsider.test").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@outside.test>").code, 250);
    let r = c.cmd("RCPT TO:<victim@elsewhere.test>");
    assert_eq!((r.code, r.text()), (550, "5.7.1 Relaying denied".into()));
    assert_eq!(c.cmd("DATA").code, 554);
    assert_eq!(c.cmd("NOOP").code, 250);
    drop(c);
    // The same request from the trusted address is accepted.
    let mut t = relay.client();
    assert_eq!(t.send_mail("a@inside.test", &["b@elsewhere.test"], "x\r\n").code, 250);
    assert_eq!(relay.stop_and_read().len(), 1);
}

#[test]
fn a_trusted_network_entry_admits_its_neighbour() {
    let relay = TestRelay::with_config("trusted_networks: [\"127.0.0.0/30\"]\n");
    let mut c = Client::connect_from(relay.addr, "127.0.0.2");
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
}
