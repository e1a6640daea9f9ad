//! AUTH PLAIN and LOGIN (RFC 4954) with lettre over STARTTLS and implicit TLS, refusals, and
//! the brute-force limit.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

use crate::common::{Client, TestRelay};

const LISTENERS: &str = "listeners:\n  - { address: \"127.0.0.1:0\", mode: relay }\n  - { address: \"127.0.0.1:0\", mode: submission }\n  - { address: \"127.0.0.1:0\", mode: submissions }\n";

fn transport(relay: &TestRelay, port: u16, implicit: bool, mechanism: Mechanism, password: &str) -> SmtpTransport {
    let pem = std::fs::read(relay.certificate()).unwrap();
    let params =
        TlsParameters::builder("relay.test".into()).add_root_certificate(Certificate::from_pem(&pem).unwrap()).build_rustls().unwrap();
    let tls = if implicit { Tls::Wrapper(params) } else { Tls::Required(params) };
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .credentials(Credentials::new("alice".into(), password.into()))
        .authentication(vec![mechanism])
        .build()
}

fn email() -> Message {
    Message::builder()
        .from("alice@sender.test".parse::<Mailbox>().unwrap())
        .to("bob@dest.test".parse::<Mailbox>().unwrap())
        .subject("auth")
        .body(String::from("hello\r\n"))
        .unwrap()
}

#[test]
fn lettre_submits_with_plain_and_login_over_starttls_and_implicit_tls() {
    let relay = TestRelay::with_tls(LISTENERS);
    let (submission, submissions) = (relay.addrs[1].port(), relay.addrs[2].port());
    for (port, implicit, mechanism) in [
        (submission, false, Mechanism::Plain),
        (submission, false, Mechanism::Login),
        (submissions, true, Mechanism::Plain),
        (submissions, true, Mechanism::Login),
    ] {
        let t = transport(&relay, port, implicit, mechanism, "right");
        t.send(&email()).unwrap_or_else(|e| panic!("port {port} {mechanism:?}: {e}"));
    }
    assert_eq!(relay.stop_and_read().len(), 4);
}

#[test]
fn wrong_passwords_are_refused_535() {
    let relay = TestRelay::with_tls(LISTENERS);
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let err = transport(&relay, relay.addrs[1].port(), false, mechanism, "wrong").send(&email()).unwrap_err();
        assert!(err.to_string().contains("535"), "{mechanism:?}: {err}");
    }
    assert!(relay.stop_and_read().is_empty());
}

#[test]
fn auth_is_refused_in_plaintext_from_an_untrusted_address() {
    let relay = TestRelay::with_tls(LISTENERS);
    let mut c = Client::connect_from(relay.addr, "127.0.0.2");
    let ehlo = c.cmd("EHLO c.test");
    assert!(!ehlo.lines.iter().any(|l| l.starts_with("AUTH")), "{ehlo:?}");
    let r = c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right")));
    assert_eq!((r.code, r.text()), (538, "5.7.11 Encryption required for requested authentication mechanism".into()));
}

#[test]
fn plaintext_networks_allow_auth_without_tls_and_only_them() {
    let files = tempfile::tempdir().unwrap();
    let auth =
        format!("auth: {{ users_file: {}/users, plaintext_networks: [\"127.0.0.2/32\"], failure_delay: 0s }}\n", files.path().display());
    let relay = TestRelay::with_config(&crate::common::tls_auth_yaml(files.path(), &auth));
    let login = format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"));
    let mut listed = Client::connect_from(relay.addr, "127.0.0.2");
    assert!(listed.cmd("EHLO c.test").lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    assert_eq!(listed.cmd(&login).code, 235);
    let mut neighbour = Client::connect_from(relay.addr, "127.0.0.3");
    neighbour.cmd("EHLO c.test");
    assert_eq!(neighbour.cmd(&login).code, 538);
}

#[test]
fn authentication_lets_an_untrusted_client_relay() {
    let relay = TestRelay::with_tls(&format!("trusted_networks: [\"127.0.0.1/32\"]\n{LISTENERS}"));
    let mut c = Client::connect_from(relay.addr, "127.0.0.2");
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls(&relay.certificate());
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").code, 550, "not before AUTH");
    c.cmd("RSET");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").code, 250, "relay after AUTH");
}

#[test]
fn repeated_failures_lock_the_address_out_with_421() {
    let files = tempfile::tempdir().unwrap();
    let yaml = crate::common::tls_auth_yaml(
        files.path(),
        &format!(
            "trusted_networks: [\"10.0.0.0/8\"]\nauth: {{ users_file: {}/users, max_failures: 3, lockout: 1h, failure_delay: 0s }}\n{LISTENERS}",
            files.path().display()
        ),
    );
    let relay = TestRelay::with_config(&yaml);
    let wrong = format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0wrong"));
    let mut c = Client::connect_tls(relay.addrs[2], &relay.certificate());
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd(&wrong).code, 535);
    assert_eq!(c.cmd(&wrong).code, 535);
    let r = c.cmd(&wrong);
    assert_eq!(r.code, 421, "third failure locks out: {r:?}");
    assert!(r.text().starts_with("4.7.0"));
    assert!(c.is_closed());
    // The lockout covers new connections from the address, even with the right password.
    let mut again = Client::connect(relay.addrs[1]);
    assert_eq!(again.greeting.code, 421);
    assert!(again.is_closed());
    // Other addresses are not affected.
    let other = Client::connect_from(relay.addrs[1], "127.0.0.3");
    assert_eq!(other.greeting.code, 220);
}

#[test]
fn failures_are_delayed_and_an_unreadable_users_file_is_454() {
    let files = tempfile::tempdir().unwrap();
    let auth = format!("auth: {{ users_file: {}/users, failure_delay: 1s }}\n", files.path().display());
    let relay = TestRelay::with_config(&crate::common::tls_auth_yaml(files.path(), &auth));
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("STARTTLS");
    c.start_tls(&relay.certificate());
    c.cmd("EHLO c.test");
    let started = std::time::Instant::now();
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0wrong"))).code, 535);
    assert!(started.elapsed() >= std::time::Duration::from_millis(950), "failure answered after {:?}", started.elapsed());
    std::fs::remove_file(files.path().join("users")).unwrap();
    let r = c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right")));
    assert_eq!((r.code, r.text()), (454, "4.7.0 Temporary authentication failure".into()));
}

fn plain(user: &str, password: &str) -> String {
    format!("AUTH PLAIN {}", sluice::smtp::sasl::encode(&format!("\0{user}\0{password}")))
}

/// One valid account no longer clears the address's failures; a locked-out address in a
/// trusted network keeps relaying (only its AUTH is refused); parallel guesses beyond the
/// limit are refused without being checked.
#[test]
fn a_valid_login_clears_nothing_and_a_trusted_address_keeps_relaying() {
    let files = tempfile::tempdir().unwrap();
    let yaml = crate::common::tls_auth_yaml(
        files.path(),
        &format!(
            "auth: {{ users_file: {}/users, max_failures: 3, lockout: 1h, failure_delay: 0s, plaintext_networks: [\"127.0.0.0/8\"] }}\n",
            files.path().display()
        ),
    );
    let relay = TestRelay::with_config(&yaml);
    let attempt = |user: &str, password: &str| {
        let mut c = relay.client();
        c.cmd("EHLO c.test");
        c.cmd(&plain(user, password)).code
    };
    // Guesses at bob, with alice's good login in between: the third guess locks the address.
    assert_eq!(attempt("bob", "guess1"), 535);
    assert_eq!(attempt("alice", "right"), 235);
    assert_eq!(attempt("bob", "guess2"), 535);
    assert_eq!(attempt("alice", "right"), 235);
    assert_eq!(attempt("bob", "guess3"), 421, "a valid login in between cleared nothing");
    assert_eq!(attempt("alice", "right"), 421, "locked out, even with the right password");
    // 127.0.0.1 is in trusted_networks: its relaying goes on.
    let mut c = relay.client();
    assert_eq!(c.greeting.code, 220);
    assert_eq!(c.send_mail("app@x.test", &["b@y.test"], "x\r\n").code, 250);
}

/// Thirty guesses from one address at once, with `max_failures: 3`: at most three passwords
/// are checked (the daemon logs each check that fails); the rest are refused unchecked.
#[test]
fn parallel_guesses_beyond_the_limit_are_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let extra = crate::common::tls_auth_yaml(
        dir.path(),
        &format!(
            "auth: {{ users_file: {}/users, max_failures: 3, lockout: 1h, failure_delay: 0s, plaintext_networks: [\"127.0.0.0/8\"] }}\n",
            dir.path().display()
        ),
    );
    let daemon = crate::common::Daemon::spawn(dir.path(), &extra, &[]);
    let addr = daemon.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(30));
    let guesses: Vec<_> = (0..30)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect_from(addr, "127.0.0.1");
                c.cmd("EHLO c.test");
                barrier.wait();
                c.cmd(&plain("carol", &format!("guess{i}"))).code
            })
        })
        .collect();
    let codes: Vec<u16> = guesses.into_iter().map(|g| g.join().unwrap()).collect();
    assert!(codes.iter().all(|c| [535, 421].contains(c)), "{codes:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let checked = daemon.log_text().matches("authentication failed").count();
    assert!((1..=3).contains(&checked), "{checked} passwords checked: {codes:?}");
}
