//! Delivery against a destination that misbehaves (see `peers/faulty.rs`): whatever it does,
//! a recipient ends delivered only when the destination received the body, and each attempt
//! sends at most one copy.
//!
//! Retries are a minute apart here, so anything deferred that should not have been would not
//! arrive within a test's wait.

use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, TestRelay};
use crate::peers::dns::{TestDns, Zone};
use crate::peers::faulty::{Fault, Faulty};
use sluice::admin::{QueueEntry, RecipientEntry};

fn zone() -> Zone {
    // Bounces go to sender.test, whose null MX refuses them: only the test's own mail arrives.
    Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1").mx("sender.test", &[(0, ".")])
}

fn relay(dns: &TestDns, peer: &Faulty, delivery_extra: &str) -> TestRelay {
    TestRelay::with_config(&format!(
        "{}delivery:\n  port: {}\n  retry: [60s]\n  workers: 1\n{delivery_extra}",
        dns.config(),
        peer.addr.port()
    ))
}

fn queue(relay: &TestRelay) -> Vec<QueueEntry> {
    sluice::admin::queue_list(&relay.config).unwrap()
}

/// The recipient's queue entry once it has `attempts` attempts recorded.
fn after_attempts(relay: &TestRelay, rcpt: &str, attempts: u32) -> RecipientEntry {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = queue(relay).iter().flat_map(|e| e.recipients.clone()).find(|r| r.address == rcpt);
        if let Some(r) = found.filter(|r| r.attempts >= attempts) {
            return r;
        }
        assert!(Instant::now() < deadline, "{rcpt}: no attempt recorded: {:?}", queue(relay));
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn wait_until_empty(relay: &TestRelay, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !queue(relay).is_empty() {
        assert!(Instant::now() < deadline, "still queued: {:?}", queue(relay));
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn send(relay: &TestRelay, to: &[&str], tag: &str) {
    let mut c = relay.client();
    let r = c.send_mail("a@sender.test", to, &format!("Subject: {tag}\r\n\r\nbody {tag}\r\n"));
    assert_eq!(r.code, 250, "{}", r.text());
}

/// Each out-of-step reply defers the transaction as a protocol error (4.5.0): the destination
/// got no body, and Sluice does not think it did.
#[test]
fn out_of_step_replies_defer_and_nothing_is_called_delivered() {
    let dns = TestDns::start(zone());
    let cases = [
        ("DATA answered 250", true, Fault::None, "data250@dest.test"),
        ("extra line after MAIL, pipelined", true, Fault::MailExtra, "b@dest.test"),
        ("extra line after MAIL, lock-step", false, Fault::MailExtra, "b@dest.test"),
        ("RCPT answered 252", true, Fault::None, "rcpt252@dest.test"),
    ];
    for (what, pipelining, fault, rcpt) in cases {
        let peer = Faulty::start(pipelining, fault);
        let relay = relay(&dns, &peer, "");
        send(&relay, &[rcpt, "other@dest.test"], what);
        for r in [rcpt, "other@dest.test"] {
            let entry = after_attempts(&relay, r, 1);
            let reply = entry.last_reply.clone().unwrap_or_default();
            assert!(reply.starts_with("451 4.5.0") && reply.contains("protocol error"), "{what}: {r}: {entry:?}");
        }
        assert_eq!(peer.arrivals().len(), 0, "{what}: no body reached the destination");
    }
}

/// A stale line after the final dot's 250: in the same write it makes that reply untrustworthy
/// (deferred, one copy per attempt); arriving later, on the idle pooled connection, it must
/// not answer the next, unrelated message, which is delivered over a fresh connection.
#[test]
fn an_extra_line_after_the_final_reply_never_answers_the_next_message() {
    let dns = TestDns::start(zone());
    let peer = Faulty::start(true, Fault::None);
    let relay = relay(&dns, &peer, "");

    send(&relay, &["dotextra@dest.test"], "first");
    let entry = after_attempts(&relay, "dotextra@dest.test", 1);
    assert!(entry.last_reply.as_deref().unwrap_or("").starts_with("451 4.5.0"), "{entry:?}");
    assert_eq!(peer.copies("body first"), 1, "one copy for the one attempt");

    send(&relay, &["dotlate@dest.test"], "second");
    peer.wait_for("body second", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(600)); // the late line is now waiting on the idle connection
    let connections = peer.connections();
    send(&relay, &["plain@dest.test"], "third");
    peer.wait_for("body third", 1, Duration::from_secs(10));
    assert!(peer.connections() > connections, "the poisoned pooled connection was not reused");
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<String> = queue(&relay).iter().flat_map(|e| e.recipients.iter().map(|r| r.address.clone())).collect();
    assert_eq!(left, ["dotextra@dest.test"], "the second and third were delivered, and they arrived");
    assert_eq!((peer.copies("body second"), peer.copies("body third")), (1, 1));
}

/// A next hop that restarts leaves every pooled connection dead at once: the next messages
/// go out over fresh connections without a deferral (retries are a minute away here).
#[test]
fn a_restarted_next_hop_costs_no_deferral() {
    let dns = TestDns::start(zone());
    let peer = Faulty::start(true, Fault::None);
    let relay = relay(&dns, &peer, "  max_connections_per_destination: 8\n");
    // Slow final replies keep the eight deliveries overlapping: eight pooled connections.
    std::thread::scope(|s| {
        for t in 0..8 {
            let relay = &relay;
            s.spawn(move || send(relay, &["slow@dest.test"], &format!("before{t}")));
        }
    });
    wait_until_empty(&relay, Duration::from_secs(10));
    assert!(peer.connections() >= 4, "{} connections", peer.connections());
    peer.restart();
    std::thread::sleep(Duration::from_millis(200));
    // One at a time, so each attempt meets the dead connections alone.
    for t in 0..3 {
        send(&relay, &[&format!("s{t}@dest.test")], &format!("after{t}"));
        wait_until_empty(&relay, Duration::from_secs(10));
        assert_eq!(peer.copies(&format!("body after{t}")), 1, "after{t}");
    }
}

/// Once the body's final dot is out, a timeout or a close is an attempt: the message is
/// deferred and sent again only at its next retry, on a new connection or a reused one.
#[test]
fn a_stall_or_close_after_the_dot_is_one_attempt_and_one_copy() {
    let dns = TestDns::start(zone());
    let peer = Faulty::start(true, Fault::None);
    let relay = relay(&dns, &peer, "  timeouts: { final_dot: 1s }\n");
    send(&relay, &["dotstall@dest.test"], "stalled");
    let entry = after_attempts(&relay, "dotstall@dest.test", 1);
    assert!(entry.last_reply.as_deref().unwrap_or("").starts_with("451 4.4.2"), "{entry:?}");
    // A pooled connection first, then one that closes after the body.
    send(&relay, &["plain@dest.test"], "warm");
    peer.wait_for("body warm", 1, Duration::from_secs(10));
    send(&relay, &["dotclose@dest.test"], "closed");
    let entry = after_attempts(&relay, "dotclose@dest.test", 1);
    assert!(entry.last_reply.as_deref().unwrap_or("").contains("connection lost"), "{entry:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!((peer.copies("body stalled"), peer.copies("body closed")), (1, 1), "one copy per attempt");
    let attempts: Vec<u32> = queue(&relay).iter().map(|e| e.recipients[0].attempts).collect();
    assert_eq!(attempts, [1, 1]);
}

/// Twenty deliveries refused together are one outage: one suspension at the first level.
#[test]
fn a_burst_of_refused_connections_suspends_once_at_the_first_level() {
    let dns = TestDns::start(zone());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay = TestRelay::with_config(&format!(
        "{}delivery:\n  port: {closed}\n  retry: [60s]\n  backoff: {{ initial: 30s, max: 1h, after_failures: 3 }}\n",
        dns.config()
    ));
    std::thread::scope(|s| {
        for t in 0..20 {
            let relay = &relay;
            s.spawn(move || send(relay, &[&format!("r{t}@dest.test")], &format!("m{t}")));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (until, why) = loop {
        let rows = sluice::admin::queue_summary(&relay.config).unwrap();
        if let Some(s) = rows.iter().find(|r| r.destination == "dest.test").and_then(|r| r.suspended.clone())
            && queue(&relay).iter().all(|e| e.recipients[0].attempts >= 1 || e.recipients[0].last_reply.is_some())
        {
            break s;
        }
        assert!(Instant::now() < deadline, "not suspended: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(until <= now + 31, "the first level (30 s), not a higher one: until {until}, now {now}, {why}");
}

/// SIGTERM with deliveries under way: what is on the wire finishes, nothing new starts, and
/// the daemon exits as soon as that is done. After the restart the rest is delivered, none twice.
#[test]
fn sigterm_drains_what_is_under_way_and_starts_nothing_new() {
    let dns = TestDns::start(zone());
    let peer = Faulty::start(true, Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}delivery:\n  port: {}\n  retry: [1s]\n  workers: 1\n  max_connections_per_destination: 2\n",
        dns.config(),
        peer.addr.port()
    );
    let mut daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = Client::connect(daemon.addr);
    // Each final dot takes 300 ms to answer: 30 messages need about 4.5 s over 2 connections.
    for i in 0..30 {
        assert_eq!(c.send_mail("a@sender.test", &["slow@dest.test"], &format!("body n{i}.\r\n")).code, 250);
    }
    drop(c);
    peer.wait_for("body n", 2, Duration::from_secs(10));
    let started = Instant::now();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) }, 0);
    let at_signal = peer.arrivals().len();
    let status = daemon.child.wait().unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "exits once the deliveries under way end, took {took:?}");
    let at_exit = peer.arrivals().len();
    assert!(at_exit <= at_signal + 2, "no new transaction after SIGTERM: {at_signal} at the signal, {at_exit} at exit");

    let _restarted = Daemon::spawn(dir.path(), &extra, &[]);
    peer.wait_for("body n", 30, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..30 {
        assert_eq!(peer.copies(&format!("body n{i}.")), 1, "message {i}");
    }
}

/// A 20-line, 57 KB refusal: the bounce names the MX host and carries a short diagnostic.
#[test]
fn a_huge_refusal_bounces_with_a_capped_diagnostic_naming_the_host() {
    let zone =
        Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).mx("sender.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let peer = Faulty::start(true, Fault::None);
    let relay = relay(&dns, &peer, "");
    send(&relay, &["hugereply@dest.test"], "refused");
    peer.wait_for("Final-Recipient: rfc822; hugereply@dest.test", 1, Duration::from_secs(10));
    let bounce = peer.arrivals().into_iter().find(|a| a.body.contains("Final-Recipient")).unwrap().body;
    assert!(bounce.contains("Status: 5.1.1\r\nRemote-MTA: dns; mx.dest.test\r\n"), "{bounce}");
    let diag = bounce.split("Diagnostic-Code: ").nth(1).unwrap().split("\r\nLast-Attempt-Date").next().unwrap().replace("\r\n ", " ");
    assert!(diag.starts_with("smtp; 550 5.1.1 line 0 ") && diag.len() < 1000, "{} octets: {diag}", diag.len());
    assert!(bounce.len() < 10_000, "the whole bounce is {} octets", bounce.len());
}

/// To a next hop offering CHUNKING, the body goes in one BDAT chunk, unchanged (no dots
/// doubled); with `chunking: false` it goes with DATA.
#[test]
fn bodies_go_with_bdat_where_chunking_is_offered_and_unchanged() {
    let dns = TestDns::start(zone());
    for chunking in [true, false] {
        let peer = Faulty::start_chunking();
        let relay = relay(&dns, &peer, &format!("  chunking: {chunking}\n"));
        let mut c = relay.client();
        // Dot-stuffed for the test client's DATA: stored as ".a dot line" and "..two dots".
        let body = "Subject: chunks\r\n\r\n..a dot line\r\n...two dots\r\nlast line\r\n";
        assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], body).code, 250);
        peer.wait_for("last line", 1, Duration::from_secs(10));
        wait_until_empty(&relay, Duration::from_secs(10));
        let got = peer.arrivals()[0].body.clone();
        assert!(got.ends_with("\r\n\r\n.a dot line\r\n..two dots\r\nlast line\r\n"), "{got:?}");
        assert_eq!(peer.state.lock().unwrap().chunked, usize::from(chunking));
    }
}
