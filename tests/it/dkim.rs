//! DKIM signing at intake, checked by software nobody here wrote: dkimpy (Debian's
//! python3-dkim) verifies what the destination received, with the public keys served by the
//! test DNS server. Keys come from `sluice dkim keygen` (RSA) and from openssl (Ed25519).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Client, Daemon, sluice, sluice_bin};
use crate::peers::dest::{Behavior, Dest, Received};
use crate::peers::dns::{TestDns, Zone};

const VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/peers/dkim_verify.py");

/// The TXT text from the zone line `sluice dkim keygen` / `record` print.
fn record_of(output: &str) -> String {
    let line = output.lines().find(|l| l.contains(" IN TXT ")).unwrap_or_else(|| panic!("no zone line in {output}"));
    line.split('"').skip(1).step_by(2).collect()
}

/// An RSA key made by `sluice dkim keygen`, an Ed25519 key by openssl, and the zone with both.
fn keys(dir: &Path) -> Zone {
    let rsa = dir.join("rsa1.key");
    let (ok, out, err) =
        sluice(&["dkim", "keygen", "--domain", "sender.test", "--selector", "rsa1", "--algorithm", "rsa", "--out", rsa.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("rsa1._domainkey.sender.test. IN TXT ( \"v=DKIM1; k=rsa; p="), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&rsa).unwrap().permissions().mode() & 0o777, 0o600);
    // Never over an existing key.
    let (ok, _, err) = sluice(&["dkim", "keygen", "--domain", "sender.test", "--selector", "rsa1", "--out", rsa.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
    let rsa_record = record_of(&out);
    let ed = dir.join("ed1.pem");
    let status = Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out", ed.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let (ok, out, err) = sluice(&["dkim", "record", "--key", ed.to_str().unwrap(), "--domain", "sender.test", "--selector", "ed1"]);
    assert!(ok, "{err}");
    let ed_record = record_of(&out);
    assert!(ed_record.starts_with("v=DKIM1; k=ed25519; p="), "{ed_record}");
    Zone::default().txt("rsa1._domainkey.sender.test", &rsa_record).txt("ed1._domainkey.sender.test", &ed_record)
}

/// dkimpy's verdict on each signature of `message`: (d, s, a, h, ok).
fn verify(message: &str, dns: &TestDns) -> Vec<serde_json::Value> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(message.as_bytes()).unwrap();
    let out = Command::new("/usr/bin/python3")
        .args([VERIFIER, file.path().to_str().unwrap(), &dns.addr.ip().to_string(), &dns.addr.port().to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("python3 with dkimpy (python3-dkim)");
    assert!(out.status.success(), "the verifier failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both signatures there, made by the two keys, and both verified.
fn assert_both_verify(message: &Received, dns: &TestDns) {
    let results = verify(&message.body, dns);
    let algorithms: Vec<&str> = results.iter().map(|r| r["a"].as_str().unwrap()).collect();
    assert_eq!(algorithms.len(), 2, "{results:?}\n{}", message.body);
    assert!(algorithms.contains(&"rsa-sha256") && algorithms.contains(&"ed25519-sha256"), "{results:?}");
    for r in &results {
        assert_eq!(r["ok"], true, "dkimpy does not verify {r}\n{}", message.body);
        assert_eq!(r["d"], "sender.test");
        // From oversigned: listed once more than it occurs.
        let h = r["h"].as_str().unwrap().to_ascii_lowercase();
        assert_eq!(h.split(':').filter(|n| *n == "from").count(), 2, "{h}");
    }
}

fn dkim_config(dir: &Path, dest: &Dest) -> String {
    format!(
        "delivery:\n  smarthost: \"[127.0.0.1]:{port}\"\n  retry: [1s]\nlimits: {{ max_line_length: 4000 }}\ndkim:\n  sign:\n    - {{ domain: sender.test, selector: rsa1, key: {d}/rsa1.key }}\n    - {{ domain: sender.test, selector: ed1, key: {d}/ed1.pem }}\n    - {{ domain: \"*.sender.test\", selector: ed1, key: {d}/ed1.pem, users: [nobody-here] }}\n",
        port = dest.addr.port(),
        d = dir.display()
    )
}

#[test]
fn smtp_and_sendmail_mail_is_signed_with_rsa_and_ed25519_and_dkimpy_verifies_both() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start(keys(dir.path()));
    let daemon = Daemon::spawn(dir.path(), &dkim_config(dir.path(), &dest), &[]);
    let from = "From: Sender <news@sender.test>\r\nTo: b@dest.test\r\n";
    // 8-bit text with trailing spaces; lines over 998 octets (one of them starting with a dot,
    // which DATA doubles) that delivery folds; dot-stuffed lines; and a body of 300 KiB, most
    // of which waits in a scratch file while it is signed.
    let long = "x".repeat(2500);
    let dotted = format!(".{}", "y".repeat(1500));
    let big: String = (0..6000).map(|i| format!("line {i:05} of a large body, with enough words to fill it\r\n")).collect();
    let bodies = [
        format!(
            "{from}Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln  \r\nnaïve façade\t\r\n"
        ),
        format!("{from}Subject: long lines\r\n\r\n{long}\r\n.{dotted}\r\nshort\r\n"),
        format!("{from}Subject: dots\r\n\r\n..\r\n...two\r\n.. leading\r\nend\r\n"),
        format!("{from}Subject: large\r\n\r\n{big}"),
    ];
    for body in &bodies {
        let mut c = Client::connect(daemon.addr);
        let r = c.send_lines("MAIL FROM:<a@sender.test> BODY=8BITMIME", &["RCPT TO:<b@dest.test>"], body);
        assert_eq!(r.code, 250, "{}", r.text());
    }
    // A domain nobody signs for, and a subdomain whose entry is for another user: unsigned.
    for from in ["x@other.test", "x@news.sender.test"] {
        let mut c = Client::connect(daemon.addr);
        let r = c.send_mail(from, &["u@dest.test"], &format!("From: {from}\r\nSubject: unsigned\r\n\r\nhi\r\n"));
        assert_eq!(r.code, 250);
    }
    // The sendmail command line, bare LF as cron writes it.
    let mut child = Command::new(sluice_bin())
        .args(["sendmail", "-C", daemon.config_path.to_str().unwrap(), "-t", "-i"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"From: cron@sender.test\nTo: s@dest.test\nSubject: from cron\n\nreport\n.\n").unwrap();
    assert!(child.wait().unwrap().success());

    let got = dest.wait_for(7, Duration::from_secs(30));
    for subject in ["8bit", "long lines", "dots", "large", "from cron"] {
        let message = got.iter().find(|m| m.body.contains(&format!("Subject: {subject}\r\n"))).expect(subject);
        assert_both_verify(message, &dns);
    }
    let long_lines = got.iter().find(|m| m.body.contains("Subject: long lines")).unwrap();
    assert!(long_lines.body.lines().all(|l| l.len() <= 998), "delivery folded the long lines");
    for m in got.iter().filter(|m| m.rcpts == ["u@dest.test"]) {
        assert!(!m.body.contains("DKIM-Signature"), "{}", m.body);
    }
    // Tampering is caught: the verifier is not a rubber stamp.
    let dots = got.iter().find(|m| m.body.contains("Subject: dots")).unwrap();
    let tampered = Received { body: dots.body.replace("\r\nend\r\n", "\r\nEnd\r\n"), ..dots.clone() };
    assert_ne!(tampered.body, dots.body);
    assert!(verify(&tampered.body, &dns).iter().all(|r| r["ok"] == false));
    let log = daemon.log_text();
    assert!(log.contains("dkim=sender.test/rsa1/rsa,sender.test/ed1/ed25519"), "{log}");
    assert!(log.contains("dkim=none"), "{log}");
}

#[test]
fn a_reload_puts_a_new_key_in_force_and_a_bad_key_fails_check_config_and_the_reload() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let mut zone = keys(dir.path());
    let (ok, out, err) = sluice(&[
        "dkim",
        "keygen",
        "--domain",
        "sender.test",
        "--selector",
        "ed2",
        "--algorithm",
        "ed25519",
        "--out",
        dir.path().join("ed2.key").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    zone = zone.txt("ed2._domainkey.sender.test", &record_of(&out));
    let dns = TestDns::start(zone);
    let one = |selector: &str, key: &str| {
        format!(
            "delivery:\n  smarthost: \"[127.0.0.1]:{}\"\n  retry: [1s]\ndkim:\n  sign:\n    - {{ domain: sender.test, selector: {selector}, key: {}/{key} }}\n",
            dest.addr.port(),
            dir.path().display()
        )
    };
    let daemon = Daemon::spawn(dir.path(), &one("ed1", "ed1.pem"), &[]);
    let config = daemon.config_path.to_str().unwrap().to_string();
    let send = |subject: &str| {
        let mut c = Client::connect(daemon.addr);
        let r = c.send_mail("a@sender.test", &["b@dest.test"], &format!("From: a@sender.test\r\nSubject: {subject}\r\n\r\nhello\r\n"));
        assert_eq!(r.code, 250, "{}", r.text());
    };
    send("before");

    // A key that is not a key: check-config names the entry and its line; reload refuses it
    // and the running key stays in force.
    std::fs::write(dir.path().join("bad.key"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let base = std::fs::read_to_string(&config).unwrap();
    let entry = |selector: &str, key: &str| format!("selector: {selector}, key: {}/{key} }}", dir.path().display());
    let with = |selector: &str, key: &str| {
        assert!(base.contains(&entry("ed1", "ed1.pem")));
        base.replace(&entry("ed1", "ed1.pem"), &entry(selector, key))
    };
    std::fs::write(&config, with("bad", "bad.key")).unwrap();
    let (ok, _, err) = sluice(&["check-config", "--config", &config]);
    assert!(!ok && err.contains("dkim.sign[0].key: ") && err.contains("bad.key") && err.contains("at line"), "{err}");
    let (ok, _, err) = sluice(&["reload", "--config", &config]);
    assert!(!ok && err.contains("dkim.sign[0].key"), "{err}");
    send("after a refused reload");

    std::fs::write(&config, with("ed2", "ed2.key")).unwrap();
    let (ok, _, err) = sluice(&["reload", "--config", &config]);
    assert!(ok, "{err}");
    send("after the reload");

    let got = dest.wait_for(3, Duration::from_secs(30));
    for (subject, selector) in [("before", "ed1"), ("after a refused reload", "ed1"), ("after the reload", "ed2")] {
        let m = got.iter().find(|m| m.body.contains(&format!("Subject: {subject}\r\n"))).expect(subject);
        let results = verify(&m.body, &dns);
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!((results[0]["s"].as_str(), results[0]["ok"].as_bool()), (Some(selector), Some(true)), "{subject}: {results:?}");
    }
}

#[test]
fn http_mail_with_8bit_text_and_long_lines_is_signed_with_rsa_and_ed25519_and_dkimpy_verifies_both() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start(keys(dir.path()));
    let (key, line) = crate::http_api::new_key("news", "inject");
    std::fs::write(dir.path().join("api.keys"), format!("{line}\n")).unwrap();
    let config = format!(
        "{}http_listeners: [{{ address: \"127.0.0.1:0\" }}]\napi: {{ keys_file: {}/api.keys }}\n",
        dkim_config(dir.path(), &dest),
        dir.path().display()
    );
    let daemon = Daemon::spawn(dir.path(), &config, &[]);
    let addr = crate::http_api::http_addr(&daemon);
    let post = |body: serde_json::Value| {
        let (status, _, text) =
            crate::http_api::curl(addr, "POST", "/api/v1/messages", Some(&key), "application/json", body.to_string().as_bytes());
        (status, serde_json::from_str::<serde_json::Value>(&text).unwrap())
    };
    let long = "x".repeat(2500);
    let dotted = format!(".{}", "y".repeat(1500));
    // Built by the API: 8-bit text with trailing white space and a line too long to send as it is.
    let (status, answer) = post(serde_json::json!({
        "from": "Sender <news@sender.test>", "to": ["a@dest.test"], "subject": "built Grüße",
        "text": format!("Grüße aus Köln  \nnaïve façade\t\n{long}\n"),
        "html": "<p>Grüße aus Köln</p>"
    }));
    assert_eq!(status, 202, "{answer}");
    // Raw: 8-bit as it came, and lines over 998 octets (within limits.max_line_length) that
    // delivery folds, one starting with a dot.
    let raw = format!(
        "From: news@sender.test\nTo: b@dest.test\nSubject: raw 8bit\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGrüße  \n{long}\n{dotted}\nend\n"
    );
    let (status, answer) = post(serde_json::json!({"envelope": {"from": "news@sender.test", "to": ["b@dest.test"]}, "raw": raw}));
    assert_eq!(status, 202, "{answer}");
    // A line longer than limits.max_line_length is refused as SMTP's DATA refuses it.
    let too_long = format!("From: news@sender.test\n\n{}\n", "z".repeat(4001));
    let (status, problem) = post(serde_json::json!({"envelope": {"from": "news@sender.test", "to": ["c@dest.test"]}, "raw": too_long}));
    assert_eq!((status, problem["pointer"].as_str()), (422, Some("/raw")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("line 3 is 4001 octets"), "{problem}");

    let got = dest.wait_for(2, Duration::from_secs(30));
    for rcpt in ["a@dest.test", "b@dest.test"] {
        let message = got.iter().find(|m| m.rcpts == [rcpt]).expect(rcpt);
        assert_both_verify(message, &dns);
        assert!(message.body.lines().all(|l| l.len() <= 998), "no line over 998 octets left: {rcpt}");
    }
    let raw = got.iter().find(|m| m.rcpts == ["b@dest.test"]).unwrap();
    assert!(raw.body.contains("\r\nGrüße  \r\n"), "8-bit sent as it came: {}", raw.body);
}
