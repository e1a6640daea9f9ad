//! Logs that cannot be forged: what a client or a server chose (AUTH user names, addresses,
//! the Message-ID, TLS strings, replies) is quoted and escaped, so one event is one line and
//! no value poses as another field.

use std::io::Write;

use crate::common::{Client, Daemon};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn client_values_are_quoted_and_cannot_start_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let mut f = std::fs::File::create(&users).unwrap();
    writeln!(f, "alice:{}", bcrypt::hash("right", 4).unwrap()).unwrap();
    let extra = format!("auth: {{ users_file: {}, failure_delay: 0s, plaintext_networks: [\"127.0.0.1/32\"] }}\n", users.display());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO c.test");
    // A user name with a line break and a forged event after it.
    let forged = b"\0admin\n2026-01-01T00:00:00Z  INFO sluice: authenticated user=root client=10.0.0.1\0wrong";
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", b64(forged))).code, 535);
    // A quoted local part that looks like fields, and a Message-ID that does, with an escape.
    assert_eq!(c.cmd("MAIL FROM:<\"a status=delivered\"@x.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"Message-ID: <x@y> queue_id=FAKE123 status=delivered \x1b[31m\r\nSubject: s\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.reply().code, 250);
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = daemon.log_text();
    for line in log.lines() {
        assert!(line.starts_with("20") && line.contains("Z "), "a line that is not an event: {line:?}\n{log}");
    }
    let failed = log.lines().find(|l| l.contains("authentication failed")).expect(&log);
    assert!(failed.contains(r#"user="admin\n2026-01-01T00:00:00Z  INFO sluice: authenticated user=root client=10.0.0.1""#), "{failed}");
    let accepted = log.lines().find(|l| l.contains(" info accepted ")).expect(&log);
    assert!(accepted.contains(r#"from="<\"a status=delivered\"@x.test>""#), "{accepted}");
    assert!(accepted.contains(r#"message_id="<x@y> queue_id=FAKE123 status=delivered \u{1b}[31m""#), "{accepted}");
    assert!(accepted.contains(" tls=none ") && accepted.contains(" identity=trusted-network "), "{accepted}");
    assert!(!log.contains('\x1b'), "an escape byte reached the log");
}
