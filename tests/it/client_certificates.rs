//! Client-certificate identities: a listed certificate (by SHA-256 fingerprint) relays like an
//! authenticated client; an unlisted one gets no rights and the session goes on anonymously.

use sha2::Digest;

use crate::common::{Client, ClientCert, TestRelay};

fn client_cert() -> (ClientCert, String) {
    let generated = rcgen::generate_simple_self_signed(vec!["scanner.lan.test".to_string()]).unwrap();
    let fingerprint = sha2::Sha256::digest(generated.cert.der()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    (ClientCert { cert_pem: generated.cert.pem(), key_pem: generated.signing_key.serialize_pem() }, fingerprint)
}

#[test]
fn a_listed_certificate_relays_and_an_unlisted_one_does_not() {
    let (listed, fingerprint) = client_cert();
    let (unlisted, _) = client_cert();
    let relay = TestRelay::with_tls(&format!(
        "trusted_networks: [\"127.0.0.1/32\"]\nclient_certificates: {{ \"{fingerprint}\": scanner-3 }}\nlisteners:\n  - {{ address: \"127.0.0.1:0\", mode: relay, request_client_certificates: true }}\n"
    ));

    let mut c = Client::connect_from(relay.addr, "127.0.0.2");
    c.cmd("EHLO scanner.lan.test");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls_with_cert(&relay.certificate(), &listed);
    assert_eq!(c.send_mail("scanner@lan.test", &["office@dest.test"], "Subject: scan\r\n\r\npdf\r\n").code, 250);

    let mut u = Client::connect_from(relay.addr, "127.0.0.2");
    u.cmd("EHLO other.lan.test");
    assert_eq!(u.cmd("STARTTLS").code, 220);
    u.start_tls_with_cert(&relay.certificate(), &unlisted);
    u.cmd("EHLO other.lan.test");
    u.cmd("MAIL FROM:<x@lan.test>");
    assert_eq!(u.cmd("RCPT TO:<office@dest.test>").code, 550, "no rights for an unlisted certificate");
    assert_eq!(u.cmd("NOOP").code, 250, "the session goes on");

    let stored = relay.stop_and_read();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0.identity, sluice::spool::Identity::Certificate("scanner-3".into()));
    assert!(stored[0].1.contains(" with ESMTPS id ") && stored[0].1.contains("\r\n\t(client certificate scanner-3)"), "{}", stored[0].1);
}
