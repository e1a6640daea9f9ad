//! The Prometheus endpoint exports the intake and spool metrics.

use std::io::{Read, Write};

use crate::common::{Client, Daemon};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_count_connections_messages_rejections_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = crate::common::tls_auth_yaml(dir.path(), &format!("metrics: {{ address: \"127.0.0.1:{port}\" }}\n"));
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut t = Client::connect(daemon.addr);
    t.cmd("EHLO c.test");
    assert_eq!(t.cmd("STARTTLS").code, 220);
    t.start_tls(&dir.path().join("cert.pem"));
    t.cmd("EHLO c.test");
    assert_eq!(t.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    assert_eq!(t.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 503);
    t.cmd("QUIT");
    let mut f = Client::connect_from(daemon.addr, "127.0.0.2");
    f.cmd("EHLO c.test");
    assert_eq!(f.cmd("STARTTLS").code, 220);
    f.start_tls(&dir.path().join("cert.pem"));
    f.cmd("EHLO c.test");
    assert_eq!(f.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0Zebra-Password-42"))).code, 535);
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "Subject: m\r\n\r\nm\r\n").code, 250);
    let mut u = Client::connect_from(daemon.addr, "127.0.0.2");
    u.cmd("EHLO u.test");
    u.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(u.cmd("RCPT TO:<b@y.test>").code, 550);
    u.cmd("QUIT");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let text = scrape(port);
    let log = daemon.log_text();
    assert!(log.contains("authentication failed") && !log.contains("Zebra-Password-42"), "passwords never reach the log:\n{log}");
    for needle in [
        "sluice_intake_connections_total{listener=",
        "sluice_intake_messages_accepted_total 1",
        "sluice_intake_rejected_total{reason=\"relay_denied\"} 1",
        "sluice_intake_bytes_accepted_total",
        "sluice_spool_commit_latency_seconds_bucket",
        "sluice_spool_messages_per_fsync_bucket",
        "sluice_spool_messages 1",
        "sluice_spool_bytes ",
        "sluice_intake_tls_handshakes_total{version=\"TLSv1.3\"} 2",
        "sluice_intake_auth_total{result=\"success\"} 1",
        "sluice_intake_auth_total{result=\"failure\"} 1",
        "sluice_intake_rejected_total{reason=\"auth_failed\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

#[test]
fn delivery_metrics_count_outcomes_and_connections() {
    use crate::peers::dest::{Behavior, Dest};
    use crate::peers::dns::{TestDns, Zone};
    let dest = Dest::start(Behavior {
        rcpt: std::sync::Arc::new(|addr, _| if addr.starts_with("no@") { "550 5.1.1 no".into() } else { "250 2.1.5 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra =
        format!("{}metrics: {{ address: \"127.0.0.1:{port}\" }}\ndelivery:\n  port: {}\n  retry: [1s]\n", dns.config(), dest.addr.port());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    // One at a time, so the pool's reuse is deterministic: one connection, then reused.
    for i in 0..3 {
        let mut c = Client::connect(daemon.addr);
        assert_eq!(c.send_mail("", &[&format!("r{i}@dest.test")], "x\r\n").code, 250);
        dest.wait_for(i + 1, std::time::Duration::from_secs(20));
    }
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("", &["no@dest.test"], "x\r\n").code, 250);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut text = scrape(port);
    while !text.contains("sluice_delivery_bounced_total") {
        assert!(std::time::Instant::now() < deadline, "no bounce counted");
        std::thread::sleep(std::time::Duration::from_millis(50));
        text = scrape(port);
    }
    for needle in [
        "sluice_delivery_delivered_total 3",
        "sluice_delivery_bounced_total{reason=\"recipient\"} 1",
        "sluice_delivery_connections_opened_total 1",
        "sluice_delivery_connections_reused_total 3",
        "sluice_delivery_tls_total{version=\"none\"} 1",
        "sluice_delivery_latency_seconds_count 3",
        "sluice_delivery_attempts_total 4",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

/// The value of one series (`name{labels}` exactly as rendered), if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' '))).and_then(|v| v.parse().ok())
}

/// Scrapes until `ready` holds for the text (20 s at most).
fn scrape_until(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = scrape(port);
        if ready(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{what}:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn delivery_metrics_after_a_known_sequence() {
    use std::sync::Arc;

    use crate::peers::dest::{Behavior, Dest};
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(|rcpt, _| match rcpt {
            r if r.contains("nobody@") => "550 5.1.1 no such user".into(),
            r if r.contains("busy@") => "451 4.2.1 mailbox busy".into(),
            _ => "250 2.1.5 ok".into(),
        }),
        ..Behavior::default()
    });
    // A destination offering STARTTLS with a certificate nobody trusts, where TLS is required.
    let strict = crate::common::TestRelay::with_tls("hostname: strict.test\n");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "metrics: {{ address: \"127.0.0.1:{port}\", queue_census_interval: 200ms }}\n\
         delivery:\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\", \"strict.test\": \"[127.0.0.1]:{}\" }}\n  \
         tls_policies: {{ \"strict.test\": required }}\n  retry: [1h]\n",
        dest.addr.port(),
        strict.addr.port()
    );
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = Client::connect(daemon.addr);
    // sender.test has no route, and the test's name server is dead: its bounce meets a DNS failure.
    let to = ["ok@dest.test", "nobody@dest.test", "busy@dest.test"];
    assert_eq!(c.send_mail("app@sender.test", &to, "Subject: m\r\n\r\nm\r\n").code, 250);
    assert_eq!(c.send_mail("app@sender.test", &["x@strict.test"], "Subject: m\r\n\r\nm\r\n").code, 250);

    let text = scrape_until(port, "the sequence's metrics", |t| {
        series(t, "sluice_delivery_deferred_total{reason=\"dns\"}").is_some()
            && series(t, "sluice_delivery_deferred_total{reason=\"tls\"}").is_some()
            && series(t, "sluice_queue_messages{state=\"deferred\"}") == Some(3.0)
    });
    let expect = [
        ("sluice_delivery_delivered_total", 1.0),
        ("sluice_delivery_bounced_total{reason=\"recipient\"}", 1.0),
        ("sluice_delivery_deferred_total{reason=\"mailbox\"}", 1.0),
        ("sluice_delivery_deferred_total{reason=\"dns\"}", 1.0),
        ("sluice_delivery_deferred_total{reason=\"tls\"}", 1.0),
        ("sluice_delivery_tls_failures_total{kind=\"certificate\"}", 1.0),
        // Queued: busy@ (deferred), the bounce for nobody@ (deferred: DNS) and x@strict.test.
        ("sluice_queue_messages{state=\"deferred\"}", 3.0),
        ("sluice_queue_recipients{state=\"deferred\"}", 3.0),
        ("sluice_queue_messages{state=\"new\"}", 0.0),
        ("sluice_queue_messages{state=\"held\"}", 0.0),
        ("sluice_destination_suspended{destination=\"dest.test\"}", 0.0),
        ("sluice_accounting_dropped_total", 0.0), // there from the start, so alerts see a first drop
        ("sluice_accounting_waiting_records", 0.0),
    ];
    for (name, want) in expect {
        assert_eq!(series(&text, name), Some(want), "{name}:\n{text}");
    }
    assert!(series(&text, "sluice_dns_failures_total{type=\"mx\"}").is_some_and(|n| n >= 1.0), "{text}");
    let age = series(&text, "sluice_queue_oldest_message_age_seconds").unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    promtool_lints_clean(&text);
}

/// Prometheus's own linter on a real scrape (the Debian package `prometheus`, which
/// scripts/test.sh installs; required under CI).
fn promtool_lints_clean(text: &str) {
    use std::process::{Command, Stdio};
    let child =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => return eprintln!("promtool not run: {e}"),
        Err(e) => panic!("promtool: {e}"),
    };
    let body = text.split_once("\r\n\r\n").map_or(text, |(_, b)| b);
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
