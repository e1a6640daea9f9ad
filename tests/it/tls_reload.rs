//! The certificate is re-read from disk when its files change; no restart needed.

use std::time::Duration;

use crate::common::TestRelay;

#[test]
fn a_replaced_certificate_is_served_to_new_connections() {
    let relay = TestRelay::with_tls("");
    let old_cert = std::fs::read(relay.certificate()).unwrap();
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls(&relay.certificate());

    // Write a new key and certificate (as an operator renewing it would), then wait out the
    // one-second check interval.
    let tls = relay.config.tls.clone().unwrap();
    let fresh = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&tls.private_key, fresh.signing_key.serialize_pem()).unwrap();
    std::fs::write(&tls.certificate, fresh.cert.pem()).unwrap();
    assert_ne!(std::fs::read(&tls.certificate).unwrap(), old_cert);

    // A client that trusts only the new certificate can connect now.
    let mut n = relay.client();
    n.cmd("EHLO c.test");
    assert_eq!(n.cmd("STARTTLS").code, 220);
    n.start_tls(&relay.certificate());
    assert_eq!(n.cmd("NOOP").code, 250);
}
