//! STARTTLS policy per client network: a legacy LAN device relays in plain text from its own
//! address while its neighbour must STARTTLS first.

use crate::common::{Client, TestRelay};

#[test]
fn the_scanner_relays_in_plain_text_and_its_neighbour_must_use_tls() {
    let relay = TestRelay::with_tls(
        "trusted_networks: [\"127.0.0.0/8\"]\nstarttls_policy:\n  require_tls: [\"127.0.0.0/8\"]\n  allow_plaintext: [\"127.0.0.2/32\"]\n",
    );
    let mut scanner = Client::connect_from(relay.addr, "127.0.0.2");
    assert_eq!(scanner.send_mail("scanner@lan.test", &["office@dest.test"], "Subject: scan\r\n\r\npdf\r\n").code, 250);

    let mut neighbour = Client::connect_from(relay.addr, "127.0.0.3");
    neighbour.cmd("EHLO pc.lan.test");
    let r = neighbour.cmd("MAIL FROM:<pc@lan.test>");
    assert_eq!((r.code, r.text()), (530, "5.7.0 Must issue a STARTTLS command first".into()));
    assert_eq!(neighbour.cmd("STARTTLS").code, 220);
    neighbour.start_tls(&relay.certificate());
    assert_eq!(neighbour.send_mail("pc@lan.test", &["office@dest.test"], "x\r\n").code, 250);

    let stored = relay.stop_and_read();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().any(|(_, b)| b.contains(" with ESMTP id ")), "the scanner's mail came in plain text");
    assert!(stored.iter().any(|(_, b)| b.contains(" with ESMTPS id ")), "the neighbour's over TLS");
}
