//! Implicit TLS on the submissions listener (RFC 8314).

use crate::common::{Client, TestRelay};

#[test]
fn submissions_is_tls_from_the_first_byte_and_requires_auth() {
    let relay = TestRelay::with_tls("listeners:\n  - { address: \"127.0.0.1:0\", mode: submissions }\n");
    let mut c = Client::connect_tls(relay.addr, &relay.certificate());
    assert_eq!(c.greeting.code, 220);
    let ehlo = c.cmd("EHLO c.test");
    assert!(ehlo.lines.contains(&"AUTH PLAIN LOGIN".to_string()) && !ehlo.lines.contains(&"STARTTLS".to_string()), "{ehlo:?}");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 530);
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    assert_eq!(c.send_mail("alice@x.test", &["b@y.test"], "To: b@y.test\r\nSubject: s\r\n\r\nhi\r\n").code, 250);
    let stored = relay.stop_and_read();
    assert!(stored[0].1.contains(" with ESMTPSA id "), "{}", stored[0].1);
    assert_eq!(stored[0].0.identity, sluice::spool::Identity::Authenticated("alice".into()));
}

#[test]
fn a_plaintext_client_on_the_tls_port_gets_nothing() {
    let relay = TestRelay::with_tls("listeners:\n  - { address: \"127.0.0.1:0\", mode: submissions }\n");
    let mut tcp = std::net::TcpStream::connect(relay.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    tcp.write_all(b"EHLO c.test\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("250"), "no SMTP without TLS");
}
