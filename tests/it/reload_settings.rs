//! What a reload puts in force besides listeners, networks, routes and rates (see
//! `reload.rs`): TLS files, the users file, client and recipient TLS policies, a listener's
//! settings at the same address, DNS servers, the retry schedule and destination limits, each
//! for new sessions and attempts only, while a delivery under way finishes where it started.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Client, TestRelay};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

/// [`crate::reload::reload_with`], which must succeed; its report.
fn reload_to(relay: &TestRelay, extra: &str) -> String {
    let (code, out, err) = crate::reload::reload_with(relay, extra);
    assert_eq!(code, 0, "reload refused: {out}{err}");
    out
}

/// TLS files and a users file holding `user` / `password`, in `dir`.
fn tls_and_users(dir: &Path, user: &str, password: &str) -> String {
    let users = dir.join("users");
    std::fs::write(&users, format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap())).unwrap();
    format!(
        "tls: {{ certificate: {d}/cert.pem, private_key: {d}/key.pem, self_signed_if_missing: true }}\nauth: {{ users_file: {u}, failure_delay: 0s }}\ntrusted_networks: [\"127.0.0.0/8\"]\n",
        d = dir.display(),
        u = users.display()
    )
}

fn login(c: &mut Client, user: &str, password: &str) -> u16 {
    c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode(&format!("\0{user}\0{password}")))).code
}

#[test]
fn new_tls_files_users_and_tls_policies_apply_to_new_sessions_and_old_ones_keep_theirs() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relay = TestRelay::with_config(&tls_and_users(a.path(), "alice", "right"));
    let mut before = relay.client();
    before.cmd("EHLO c.test");

    let policies = "starttls_policy: { require_tls: [\"127.0.0.2/32\"] }\nrequire_tls_recipients: [\"bank.test\"]\n";
    reload_to(&relay, &format!("{}{policies}", tls_and_users(b.path(), "bob", "secret")));
    let (old_cert, new_cert) = (a.path().join("cert.pem"), b.path().join("cert.pem"));
    assert_ne!(std::fs::read(&old_cert).unwrap(), std::fs::read(&new_cert).unwrap(), "a second certificate was made");

    // A new session from the address the new STARTTLS policy names: TLS first, with the new
    // certificate (the client trusts only that one), then only the new users file's user.
    let mut new = Client::connect_from(relay.addr, "127.0.0.2");
    new.cmd("EHLO c.test");
    let r = new.cmd("MAIL FROM:<a@x.test>");
    assert_eq!((r.code, r.text()), (530, "5.7.0 Must issue a STARTTLS command first".to_string()));
    assert_eq!(new.cmd("STARTTLS").code, 220);
    new.start_tls(&new_cert);
    new.cmd("EHLO c.test");
    assert_eq!(login(&mut new, "alice", "right"), 535, "the old users file is gone");
    assert_eq!(login(&mut new, "bob", "secret"), 235);

    // The new recipient policy: a bank.test recipient needs TLS.
    let mut plain = relay.client();
    plain.cmd("EHLO c.test");
    plain.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(plain.cmd("RCPT TO:<ceo@bank.test>").code, 530);

    // The session opened before the reload keeps its certificate and users.
    assert_eq!(before.cmd("STARTTLS").code, 220);
    before.start_tls(&old_cert);
    before.cmd("EHLO c.test");
    assert_eq!(login(&mut before, "alice", "right"), 235);
}

#[test]
fn a_listener_given_other_settings_at_the_same_address_serves_new_sessions_with_them() {
    let files = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listener = |mode: &str| format!("listeners:\n  - {{ address: \"127.0.0.1:{port}\", mode: {mode} }}\n");
    let tls = tls_and_users(files.path(), "alice", "right");
    let relay = TestRelay::with_config(&format!("{tls}{}", listener("relay")));
    let mut old = relay.client();
    old.cmd("EHLO c.test");

    let out = reload_to(&relay, &format!("{tls}{}", listener("submission")));
    assert!(out.contains(&format!("listeners changed: 127.0.0.1:{port}")), "{out}");
    let mut new = relay.client();
    new.cmd("EHLO c.test");
    let r = new.cmd("MAIL FROM:<a@x.test>");
    assert_eq!((r.code, r.text()), (530, "5.7.0 Authentication required".to_string()));
    assert_eq!(old.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250, "the relay session goes on as it began");
}

fn mx_delivery(dest: &Dest, dns: &str, delivery: &str) -> String {
    format!("{dns}delivery:\n  port: {}\n  retry: [1s]\n{delivery}", dest.addr.port())
}

#[test]
fn new_dns_servers_answer_the_next_attempt() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dead = "dns: { nameservers: [\"127.0.0.1:9\"], timeout: 1s }\n";
    let relay = TestRelay::with_config(&mx_delivery(&dest, dead, ""));
    assert_eq!(relay.client().send_mail("a@x.test", &["b@dest.test"], "Subject: dns\r\n\r\nx\r\n").code, 250);
    let first = crate::delivery_mx::first_attempt(&relay);
    assert_eq!(first.state, sluice::spool::RecipientState::Queued, "{first:?}");
    reload_to(&relay, &mx_delivery(&dest, &dns.config(), ""));
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert!(got[0].body.contains("Subject: dns"));
}

fn queued_from(relay: &TestRelay, from: &str) -> Option<sluice::admin::QueueEntry> {
    sluice::admin::queue_list(&relay.config).unwrap().into_iter().find(|e| e.from == from)
}

fn wait_for_attempt(relay: &TestRelay, from: &str) -> sluice::admin::RecipientEntry {
    crate::common::wait_for_recipient(&relay.config, &format!("no attempt for {from}"), |e, r| e.from == from && r.attempts >= 1)
}

#[test]
fn a_new_retry_schedule_times_the_next_deferral_and_leaves_scheduled_ones_alone() {
    // The first two transactions are deferred, the rest accepted.
    let dest = Dest::start(Behavior {
        after_dot: Arc::new(|n| if n < 2 { "451 4.3.0 later".into() } else { "250 2.0.0 accepted".into() }),
        ..Behavior::default()
    });
    let delivery =
        |retry: &str| format!("delivery:\n  retry: [{retry}]\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\n", dest.addr.port());
    let relay = TestRelay::with_config(&delivery("1h"));
    assert_eq!(relay.client().send_mail("one@x.test", &["b@dest.test"], "Subject: one\r\n\r\nx\r\n").code, 250);
    let one = wait_for_attempt(&relay, "one@x.test");
    let now = sluice::clock::Clock::now(&sluice::clock::SystemClock);
    assert!(one.next_attempt.unwrap() >= now + 3590, "{one:?}");

    reload_to(&relay, &delivery("2s"));
    assert_eq!(relay.client().send_mail("two@x.test", &["b@dest.test"], "Subject: two\r\n\r\nx\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert!(got[0].body.contains("Subject: two"), "the second message was retried on the new schedule");
    assert_eq!(queued_from(&relay, "one@x.test").unwrap().recipients[0].next_attempt, one.next_attempt, "already scheduled");
}

#[test]
fn a_destination_rate_set_by_a_reload_holds_the_next_messages() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = TestRelay::with_config(&mx_delivery(&dest, &dns.config(), ""));
    let mut c = relay.client();
    for i in 0..2 {
        assert_eq!(c.send_mail("a@x.test", &["b@dest.test"], &format!("Subject: free {i}\r\n\r\nx\r\n")).code, 250);
    }
    dest.wait_for(2, Duration::from_secs(20));

    reload_to(&relay, &mx_delivery(&dest, &dns.config(), "  destinations:\n    - { domains: [dest.test], message_rate: \"1/h\" }\n"));
    for i in 0..2 {
        assert_eq!(c.send_mail("a@x.test", &["b@dest.test"], &format!("Subject: paced {i}\r\n\r\nx\r\n")).code, 250);
    }
    dest.wait_for(3, Duration::from_secs(20));
    // The other waits its turn in the destination's line (for up to an hour), not sent.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dest.state.lock().unwrap().transactions.len(), 3, "one paced message went, one waits");
    assert_eq!(sluice::admin::queue_list(&relay.config).unwrap().len(), 1, "the waiting one is still queued");
}

#[test]
fn a_delivery_under_way_during_a_reload_finishes_at_its_old_next_hop() {
    // The old next hop takes a second and a half to accept the message.
    let old = Dest::start(Behavior {
        after_dot: Arc::new(|_| {
            std::thread::sleep(Duration::from_millis(1500));
            "250 2.0.0 accepted".into()
        }),
        ..Behavior::default()
    });
    let new = Dest::start(Behavior::default());
    let route = |to: &Dest| format!("delivery:\n  retry: [1s]\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\n", to.addr.port());
    let relay = TestRelay::with_config(&route(&old));
    assert_eq!(relay.client().send_mail("a@x.test", &["b@dest.test"], "Subject: slow\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.connections() == 0 {
        assert!(Instant::now() < deadline, "no delivery started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300)); // The body is sent; the dot's reply is awaited.
    reload_to(&relay, &route(&new));
    let got = old.wait_for(1, Duration::from_secs(10));
    assert!(got[0].body.contains("Subject: slow"));
    crate::common::wait_for_empty_queue(&relay.config, "the finished delivery stayed queued");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(new.connections(), 0, "nothing was sent again to the new next hop");
}
