//! MTA-STS over real sockets: the policy is served over HTTPS by Python's http.server with a
//! certificate from the test's own CA (trusted through `delivery.tls_trust`), the TXT record
//! by the test DNS server. `enforce` delivers only over TLS verified for the MX name and
//! never in plain text; `testing` delivers as before; a policy that is not served as RFC 8461
//! says (a redirect, another type, too large, an untrusted certificate) is no policy; a
//! cached policy outlives a restart, a policy host that went away and a failing `_mta-sts`
//! lookup; a policy host that never answers is no policy once `fetch_timeout` has passed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Daemon, TestRelay, wait_for_recipient};
use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};
use crate::peers::test_ca::{Issued, TestCa, self_signed};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/peers/sts_server.py");

/// `https://mta-sts.dest.test/` on loopback.
pub(crate) struct PolicyHost {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl PolicyHost {
    pub(crate) fn start(dir: &Path, cert: &Issued) -> PolicyHost {
        let dir = dir.join("policy-host");
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("python3")
            .args([SERVER, dir.to_str().unwrap(), cert.cert.to_str().unwrap(), cert.key.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("no port from the policy host: {line:?}"));
        PolicyHost { child, port, dir }
    }

    pub(crate) fn set(&self, file: &str, content: &str) {
        std::fs::write(self.dir.join(file), content).unwrap();
    }

    pub(crate) fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("requests")).unwrap_or_default().lines().count()
    }

    /// The first report POSTed to this host (waits up to 30 s), as JSON.
    pub(crate) fn first_report(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = std::fs::read(self.dir.join("posted-0")) {
                return report_json(&body);
            }
            assert!(Instant::now() < deadline, "no report posted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PolicyHost {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn zone() -> Zone {
    zone_with_id("20261204T1")
}

fn zone_with_id(id: &str) -> Zone {
    Zone::default()
        .mx("dest.test", &[(10, "mx.dest.test")])
        .a("mx.dest.test", "127.0.0.1")
        .a("mta-sts.dest.test", "127.0.0.1")
        .txt("_mta-sts.dest.test", &format!("v=STSv1; id={id};"))
}

/// The relay's `delivery:` lines for MTA-STS against the policy host.
pub(crate) fn sts_settings(ca: &TestCa, host: &PolicyHost) -> String {
    format!("  tls_trust: [{}]\n  mta_sts: {{ port: {}, fetch_timeout: 5s }}\n", ca.pem_path.display(), host.port)
}

/// A Sluice destination with STARTTLS and `cert`, keeping what it receives.
pub(crate) fn tls_destination(cert: &Issued) -> TestRelay {
    TestRelay::with_config(&format!(
        "hostname: dest.test\ntls: {{ certificate: {}, private_key: {} }}\n",
        cert.cert.display(),
        cert.key.display()
    ))
}

pub(crate) fn wait_received(destination: &TestRelay) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&destination.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids: Vec<String> = sluice::admin::queue_list(&destination.config).unwrap().iter().map(|e| e.queue_id.clone()).collect();
    ids.join(",")
}

pub(crate) fn send(relay: &TestRelay, to: &str) {
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &[to], "Subject: sts\r\n\r\nx\r\n").code, 250);
}

#[test]
fn enforce_delivers_over_tls_verified_for_the_mx_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    host.set("policy.txt", &policy("enforce", "*.dest.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, destination.addr.port(), &sts_settings(&ca, &host));
    send(&relay, "b@dest.test");
    wait_received(&destination);
    let stored = destination.stop_and_read();
    assert!(stored[0].1.contains("with ESMTPS id"), "{}", stored[0].1);
    assert_eq!(host.requests(), 1, "fetched once");
}

/// Each case: the destination's certificate (None: a server without STARTTLS) and the
/// policy's mx pattern; enforce defers them all and nothing is sent in plain text.
#[test]
fn enforce_defers_rather_than_send_without_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    let dns = TestDns::start(zone());

    // STARTTLS stripped (or never offered): deferred, the plain-text server sees no mail.
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let plain = Dest::start(Behavior::default());
    let relay = delivering_relay(&dns, plain.addr.port(), &sts_settings(&ca, &host));
    send(&relay, "b@dest.test");
    let r = wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    assert!(r.last_reply.as_deref().unwrap_or("").to_ascii_lowercase().contains("tls"), "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(plain.received().is_empty(), "sent in plain text despite the policy");
    let rows = sluice::admin::queue_summary(&relay.config).unwrap();
    let row = rows.iter().find(|r| r.destination == "dest.test").expect("dest.test in the summary");
    assert_eq!(row.tls_policy.as_deref(), Some("mta-sts-enforce"), "{rows:?}");
    drop(relay);

    // An MX host the policy does not name: deferred before any connection.
    host.set("policy.txt", &policy("enforce", "mx.elsewhere.test"));
    let relay = delivering_relay(&dns, plain.addr.port(), &sts_settings(&ca, &host));
    send(&relay, "c@dest.test");
    let r = wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    assert!(r.last_reply.as_deref().unwrap_or("").contains("allows none of its MX hosts (mx.dest.test)"), "{r:?}");
    assert!(plain.received().is_empty());
    drop(relay);

    // Certificates that do not prove the MX name: expired, for another name, self-signed.
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let bad = [
        ca.issue(dir.path(), "expired", &["mx.dest.test"], 2021),
        ca.issue(dir.path(), "misnamed", &["mx.other.test"], 2099),
        self_signed(dir.path(), "self", &["mx.dest.test"]),
    ];
    for cert in &bad {
        let destination = tls_destination(cert);
        let relay = delivering_relay(&dns, destination.addr.port(), &sts_settings(&ca, &host));
        send(&relay, "d@dest.test");
        let r = wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
        assert!(r.state == sluice::spool::RecipientState::Queued, "{}: {r:?}", cert.cert.display());
        std::thread::sleep(Duration::from_millis(500));
        assert!(sluice::admin::queue_list(&destination.config).unwrap().is_empty(), "{} took the mail", cert.cert.display());
    }
}

#[test]
fn testing_mode_delivers_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    host.set("policy.txt", &policy("testing", "mx.elsewhere.test"));
    let plain = Dest::start(Behavior::default());
    let rua = format!("v=TLSRPTv1; rua=https://mta-sts.dest.test:{}/v1/tlsrpt", host.port);
    let dns = TestDns::start(zone().txt("_smtp._tls.dest.test", &rua));
    let settings = format!("{}  tls_rpt: {{ period: 2s }}\n", sts_settings(&ca, &host));
    let relay = delivering_relay(&dns, plain.addr.port(), &settings);
    send(&relay, "b@dest.test");
    assert_eq!(plain.wait_for(1, Duration::from_secs(20))[0].rcpts, ["b@dest.test"]);
    assert_eq!(host.requests(), 1);
    // What enforce would have refused: the MX host outside the policy (and no STARTTLS).
    let report = host.first_report();
    let summary = &report["policies"][0]["summary"];
    let counts = (summary["total-successful-session-count"].as_u64(), summary["total-failure-session-count"].as_u64());
    assert_eq!(counts, (Some(0), Some(1)), "{report}");
    assert_eq!(report["policies"][0]["failure-details"][0]["result-type"], "validation-failure", "{report}");
}

/// Served wrong, the enforce policy is no policy: mail goes to the plain-text server as it
/// would without MTA-STS, after the policy host was asked.
#[test]
fn a_policy_served_other_than_rfc_8461_says_is_no_policy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let dns = TestDns::start(zone());
    let plain = Dest::start(Behavior::default());
    let good = ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099);
    // (what, the policy host's certificate, files that make it serve the policy wrong)
    type Case<'a> = (&'a str, Issued, &'a [(&'a str, &'a str)]);
    let cases: [Case; 5] = [
        ("a redirect", good, &[("status", "301")]),
        ("text/html", ca.issue(dir.path(), "p2", &["mta-sts.dest.test"], 2099), &[("content_type", "text/html")]),
        ("a 404", ca.issue(dir.path(), "p3", &["mta-sts.dest.test"], 2099), &[("status", "404")]),
        ("a self-signed certificate", self_signed(dir.path(), "p4", &["mta-sts.dest.test"]), &[]),
        ("a certificate for another name", ca.issue(dir.path(), "p5", &["www.dest.test"], 2099), &[]),
    ];
    for (n, (what, cert, files)) in cases.into_iter().enumerate() {
        let host = PolicyHost::start(&dir.path().join(n.to_string()), &cert);
        host.set("policy.txt", &policy("enforce", "mx.elsewhere.test"));
        for (file, content) in files {
            host.set(file, content);
        }
        let relay = delivering_relay(&dns, plain.addr.port(), &sts_settings(&ca, &host));
        send(&relay, &format!("r{n}@dest.test"));
        let got = plain.wait_for(n + 1, Duration::from_secs(20));
        assert!(got.iter().any(|m| m.rcpts == [format!("r{n}@dest.test")]), "{what}: not delivered");
        let asked = host.requests();
        let handshake_refused = what.contains("certificate");
        assert_eq!(asked, if handshake_refused { 0 } else { 1 }, "{what}: requests seen by the policy host");
    }
    // Larger than 64 KiB.
    let host = PolicyHost::start(&dir.path().join("large"), &ca.issue(dir.path(), "p6", &["mta-sts.dest.test"], 2099));
    let padding: String = (0..1200).map(|i| format!("x-pad{i}: {}\r\n", "p".repeat(50))).collect();
    host.set("policy.txt", &format!("{}{padding}", policy("enforce", "mx.elsewhere.test")));
    let relay = delivering_relay(&dns, plain.addr.port(), &sts_settings(&ca, &host));
    send(&relay, "large@dest.test");
    plain.wait_for(6, Duration::from_secs(20));
}

#[test]
fn a_cached_policy_holds_across_a_restart_while_its_host_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let mut host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let plain = Dest::start(Behavior::default());
    let dns = TestDns::start(zone());
    let settings = sts_settings(&ca, &host);
    let delivery = |port: u16| format!("{}delivery:\n  port: {port}\n  retry: [1h]\n{settings}", dns.config());
    let spool_dir = dir.path().join("relay");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let mut daemon = Daemon::spawn(&spool_dir, &delivery(destination.addr.port()), &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: first\r\n\r\nx\r\n").code, 250);
    wait_received(&destination);
    assert!(daemon.log_text().contains("MTA-STS policy fetched"), "{}", daemon.log_text());
    daemon.kill9();
    host.stop();

    // Restarted with the MX now a plain-text server and the policy host gone: the cached
    // enforce policy still holds, so the mail waits.
    std::fs::remove_file(spool_dir.join("config.yaml")).unwrap();
    let daemon = Daemon::spawn(&spool_dir, &delivery(plain.addr.port()), &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["c@dest.test"], "Subject: second\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.log_text().contains("deferred") {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(plain.received().is_empty(), "sent in plain text: the cached policy was lost");
    // The record's id is the cached one: nothing was fetched (the host is gone anyway).
    let log = daemon.log_text();
    assert!(!log.contains("MTA-STS policy fetch"), "{log}");
}

#[test]
fn a_policy_host_that_never_answers_is_no_policy_and_a_failing_txt_lookup_keeps_the_cached_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    // Takes connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let plain = Dest::start(Behavior::default());
    let dns = TestDns::start(zone());
    let settings = format!("  tls_trust: [{}]\n  mta_sts: {{ port: {silent_port}, fetch_timeout: 2s }}\n", ca.pem_path.display());
    let relay = delivering_relay(&dns, plain.addr.port(), &settings);
    let started = Instant::now();
    send(&relay, "b@dest.test");
    let got = plain.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, ["b@dest.test"], "no policy could be had: delivered as before");
    assert!(started.elapsed() >= Duration::from_secs(2), "the fetch was waited for up to fetch_timeout");
    drop(relay);

    // A cached enforce policy, then the _mta-sts lookup fails (SERVFAIL) and the MX host is
    // a plain-text server: the cached policy holds and the mail waits.
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let delivery = |port: u16| format!("{}delivery:\n  port: {port}\n  retry: [1h]\n{}", dns.config(), sts_settings(&ca, &host));
    let spool_dir = dir.path().join("relay");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let mut daemon = Daemon::spawn(&spool_dir, &delivery(destination.addr.port()), &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["c@dest.test"], "Subject: first\r\n\r\nx\r\n").code, 250);
    wait_received(&destination);
    daemon.kill9();
    dns.replace(zone().servfail_txt("_mta-sts.dest.test"));
    std::fs::remove_file(spool_dir.join("config.yaml")).unwrap();
    let daemon = Daemon::spawn(&spool_dir, &delivery(plain.addr.port()), &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["d@dest.test"], "Subject: second\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.log_text().contains("deferred") {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(plain.received().len(), 1, "only the first, policy-less message went in plain text");
    assert_eq!(host.requests(), 1, "no fetch without a record to compare the cached id with");
}

/// The JSON of a gzipped report, read by Python's gzip and json modules.
fn report_json(gzipped: &[u8]) -> serde_json::Value {
    let mut child = Command::new("python3")
        .args(["-c", "import gzip, json, sys; print(json.dumps(json.loads(gzip.decompress(sys.stdin.buffer.read()))))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(gzipped).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not a gzipped JSON report");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tls_reports_go_by_mail_and_https_and_a_failed_post_is_tried_again() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let names = ["mta-sts.dest.test", "reports.test", "mta-sts.reports.test"];
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &names, 2099));
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    host.set("post_status", "503");
    // The MX of dest.test and of reports.test is the same Sluice, which keeps what it gets.
    // reports.test publishes the same enforce policy, which does not allow its own MX name,
    // and asks for TLS reports itself: its report mail must go all the same (RFC 8460 3), and
    // not be counted (else a report about the reports, every period, for ever).
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let rua = format!("v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://reports.test:{}/v1/tlsrpt", host.port);
    let dns = TestDns::start(
        zone()
            .txt("_smtp._tls.dest.test", &rua)
            .mx("reports.test", &[(10, "mx.reports.test")])
            .a("mx.reports.test", "127.0.0.1")
            .a("reports.test", "127.0.0.1")
            .a("mta-sts.reports.test", "127.0.0.1")
            .txt("_mta-sts.reports.test", "v=STSv1; id=r1;")
            .txt("_smtp._tls.reports.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"),
    );
    let settings = format!("{}  max_deliveries_per_connection: 1\n  tls_rpt: {{ period: 3s }}\n", sts_settings(&ca, &host));
    let relay = delivering_relay(&dns, destination.addr.port(), &settings);
    send(&relay, "b@dest.test");
    send(&relay, "c@dest.test");

    // Reports come at each 3-second period's end; the two sessions may fall in one or two.
    // The first POST is refused with 503; the report is kept and posted again once it is 200.
    let posts = || -> Vec<(Vec<u8>, String)> {
        (0..50)
            .map_while(|n| {
                let body = std::fs::read(host.dir.join(format!("posted-{n}"))).ok()?;
                Some((body, std::fs::read_to_string(host.dir.join(format!("posted-{n}.type"))).unwrap_or_default()))
            })
            .collect()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("no refused POST", &|| !posts().is_empty());
    let refused = posts()[0].clone();
    assert_eq!(refused.1, "application/tlsrpt+gzip 503 /v1/tlsrpt");
    let refused_id = report_json(&refused.0)["report-id"].clone();
    host.set("post_status", "200");
    wait("the refused report was not posted again", &|| {
        posts().iter().any(|(body, kind)| kind.contains(" 200 ") && report_json(body)["report-id"] == refused_id)
    });
    // Every session reported once, by each way: two successes under the enforced policy.
    std::thread::sleep(Duration::from_secs(4));
    let mut by_id = std::collections::BTreeMap::new();
    for (body, kind) in posts() {
        if kind.contains(" 200 ") {
            let report = report_json(&body);
            by_id.insert(report["report-id"].as_str().unwrap().to_string(), report);
        }
    }
    let successes: u64 = by_id.values().map(|r| r["policies"][0]["summary"]["total-successful-session-count"].as_u64().unwrap()).sum();
    assert_eq!(successes, 2, "{by_id:?}");
    for report in by_id.values() {
        let policy = &report["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "sts", "{report}");
        assert_eq!(policy["policy"]["policy-domain"], "dest.test");
        assert_eq!(policy["policy"]["mx-host"], serde_json::json!(["mx.dest.test"]));
        assert_eq!(policy["summary"]["total-failure-session-count"], 0, "{report}");
        assert_eq!(report["contact-info"], "pm@admin.test");
    }

    let stored = destination.stop_and_read();
    let mails: Vec<&String> =
        stored.iter().filter(|(e, _)| e.recipients[0].mailbox.to_string() == "tlsrpt@reports.test").map(|(_, m)| m).collect();
    assert!(mails.iter().all(|m| !m.contains("TLS-Report-Domain: reports.test")), "the report mail's own session was reported");
    assert_eq!(mails.len(), by_id.len(), "a mail for each report");
    for mail in mails {
        assert!(mail.contains("\r\nTLS-Report-Domain: dest.test\r\nTLS-Report-Submitter: relay.test\r\n"), "{mail}");
        assert!(mail.contains("Subject: Report Domain: dest.test Submitter: relay.test Report-ID: <"), "{mail}");
        assert!(mail.contains("Content-Type: multipart/report; report-type=\"tlsrpt\""), "{mail}");
        // The attachment, as a mail reader would take it apart.
        let encoded: String = mail
            .split("Content-Disposition: attachment; filename=\"admin.test!dest.test!")
            .nth(1)
            .and_then(|rest| rest.split_once("\r\n\r\n"))
            .map(|(_, b64)| b64.lines().take_while(|l| !l.starts_with("--")).collect())
            .expect("the report attachment");
        let mailed = report_json(&base64::engine::general_purpose::STANDARD.decode(encoded).unwrap());
        let posted = &by_id[mailed["report-id"].as_str().unwrap()];
        assert_eq!(mailed["policies"], posted["policies"], "the same report both ways");
    }
}

#[test]
fn a_tls_report_names_each_failure_with_its_result_type_and_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test", "reports.test"], 2099));
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "misnamed", &["mx.other.test"], 2099));
    let rua = format!("v=TLSRPTv1; rua=https://reports.test:{}/v1/tlsrpt", host.port);
    let dns = TestDns::start(zone().txt("_smtp._tls.dest.test", &rua).a("reports.test", "127.0.0.1"));
    let settings = format!("{}  tls_rpt: {{ period: 2s }}\n", sts_settings(&ca, &host));
    let relay = delivering_relay(&dns, destination.addr.port(), &settings);
    send(&relay, "b@dest.test");
    wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    let report = host.first_report();
    let policy = &report["policies"][0];
    assert_eq!(policy["summary"]["total-successful-session-count"], 0, "{report}");
    assert!(policy["summary"]["total-failure-session-count"].as_u64() >= Some(1), "{report}");
    let detail = &policy["failure-details"][0];
    assert_eq!(detail["result-type"], "certificate-host-mismatch", "{report}");
    assert_eq!(detail["receiving-mx-hostname"], "mx.dest.test");
    assert_eq!(detail["receiving-ip"], "127.0.0.1");
    assert_eq!(detail["sending-mta-ip"], "127.0.0.1");
    assert!(sluice::admin::queue_list(&destination.config).unwrap().is_empty(), "nothing sent over the misnamed certificate");
}

#[test]
fn a_new_record_id_fetches_the_policy_again_and_the_same_id_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    // First published without the MX host: the mail waits.
    host.set("policy.txt", &policy("enforce", "mx.elsewhere.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, destination.addr.port(), &sts_settings(&ca, &host));
    send(&relay, "b@dest.test");
    wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    // The policy file changes but the record's id does not: the cached policy still holds.
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    wait_for_recipient(&relay.config, "no second attempt", |_, r| r.attempts >= 3);
    assert!(sluice::admin::queue_list(&destination.config).unwrap().is_empty());
    assert_eq!(host.requests(), 1, "fetched once for one id");
    // A new id: fetched again at the next attempt, and the mail goes.
    dns.replace(zone_with_id("20261204T2"));
    wait_received(&destination);
    assert_eq!(host.requests(), 2);
}

#[test]
fn testing_mode_reports_what_enforce_would_have_refused_while_the_mail_goes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test", "reports.test"], 2099));
    host.set("policy.txt", &policy("testing", "mx.dest.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "expired", &["mx.dest.test"], 2021));
    let rua = format!("v=TLSRPTv1; rua=https://reports.test:{}/v1/tlsrpt", host.port);
    let dns = TestDns::start(zone().txt("_smtp._tls.dest.test", &rua).a("reports.test", "127.0.0.1"));
    let settings = format!("{}  tls_rpt: {{ period: 2s }}\n", sts_settings(&ca, &host));
    let relay = delivering_relay(&dns, destination.addr.port(), &settings);
    send(&relay, "b@dest.test");
    wait_received(&destination);
    let report = host.first_report();
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-string"][1], "mode: testing", "{report}");
    assert_eq!(policy["summary"]["total-successful-session-count"], 0, "{report}");
    assert_eq!(policy["summary"]["total-failure-session-count"], 1, "{report}");
    assert_eq!(policy["failure-details"][0]["result-type"], "certificate-expired", "{report}");
}

/// Python's aiosmtpd on a free loopback port, keeping mail in a Maildir; with STARTTLS when
/// given a certificate.
pub(crate) struct Aiosmtpd {
    child: Child,
    pub(crate) port: u16,
    maildir: PathBuf,
}

impl Aiosmtpd {
    pub(crate) fn start(dir: &Path, cert: Option<&Issued>) -> Aiosmtpd {
        let port = crate::metrics_endpoint::free_port();
        let maildir = dir.join(format!("maildir-{port}"));
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"]);
        cmd.arg(&maildir);
        if let Some(cert) = cert {
            cmd.arg("--tlscert").arg(&cert.cert).arg("--tlskey").arg(&cert.key);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("python3 -m aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Aiosmtpd { child, port, maildir }
    }

    pub(crate) fn received(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        entries.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect()
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn enforce_with_aiosmtpd_delivers_over_its_starttls_and_defers_when_it_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let dns = TestDns::start(zone());
    let with_tls = Aiosmtpd::start(dir.path(), Some(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099)));
    let relay = delivering_relay(&dns, with_tls.port, &sts_settings(&ca, &host));
    send(&relay, "b@dest.test");
    let deadline = Instant::now() + Duration::from_secs(20);
    while with_tls.received().is_empty() {
        assert!(Instant::now() < deadline, "aiosmtpd got nothing over STARTTLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(relay);

    let without = Aiosmtpd::start(dir.path(), None);
    let relay = delivering_relay(&dns, without.port, &sts_settings(&ca, &host));
    send(&relay, "c@dest.test");
    let r = wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    assert!(r.last_reply.as_deref().unwrap_or("").contains("TLS"), "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(without.received().is_empty(), "sent in plain text to aiosmtpd despite the policy");
}

#[test]
fn the_periods_counts_so_far_outlive_a_stop_and_are_reported_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    host.set("policy.txt", &policy("enforce", "mx.dest.test"));
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let rua = format!("v=TLSRPTv1; rua=https://mta-sts.dest.test:{}/v1/tlsrpt", host.port);
    let dns = TestDns::start(zone().txt("_smtp._tls.dest.test", &rua));
    let settings = sts_settings(&ca, &host);
    let config = |period: &str| {
        format!(
            "{}delivery:\n  port: {}\n  retry: [1s]\n{settings}  tls_rpt: {{ period: {period} }}\n",
            dns.config(),
            destination.addr.port()
        )
    };
    let relay_dir = dir.path().join("relay");
    std::fs::create_dir_all(&relay_dir).unwrap();
    // A day's period: nothing is reported before the stop.
    let daemon = Daemon::spawn(&relay_dir, &config("1d"), &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: before\r\n\r\nx\r\n").code, 250);
    wait_received(&destination);
    let path = daemon.config_path.to_str().unwrap().to_string();
    assert!(Command::new("pkill").args(["-TERM", "-f", &path]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("pgrep").args(["-f", &path]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read(host.dir.join("posted-0")).is_err(), "reported before its period ended");
    // The next run, with a short period and no mail of its own, reports the session.
    std::fs::remove_file(relay_dir.join("config.yaml")).unwrap();
    let _daemon = Daemon::spawn(&relay_dir, &config("2s"), &[]);
    let report = host.first_report();
    assert_eq!(report["policies"][0]["summary"]["total-successful-session-count"], 1, "{report}");
}
