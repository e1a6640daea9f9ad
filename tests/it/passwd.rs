//! `sluice passwd USER` prints a users-file line that AUTH then accepts.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{TestRelay, sluice_bin};

#[test]
fn passwd_output_logs_in_and_bad_user_names_are_refused() {
    let mut child = Command::new(sluice_bin()).args(["passwd", "carol"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"c4rol's password\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("carol:$argon2id$"), "{line}");

    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("users"), &line).unwrap();
    let mut yaml = crate::common::tls_auth_yaml(files.path(), "");
    // tls_auth_yaml wrote its own users file; point AUTH at carol's instead.
    yaml = yaml.replace(&format!("{}/users", files.path().display()), &format!("{}/carol", files.path().display()));
    std::fs::write(files.path().join("carol"), &line).unwrap();
    let relay = TestRelay::with_config(&yaml);
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("STARTTLS");
    c.start_tls(&relay.certificate());
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0carol\0c4rol's password"))).code, 235);

    let bad = Command::new(sluice_bin()).args(["passwd", "a:b"]).stdin(Stdio::null()).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid user name"));
}
