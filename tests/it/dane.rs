//! DANE over real sockets: the zones are served DNSSEC-signed by hickory-server (its own
//! signer, Ed25519, NSEC), the relay validates them from trust anchors it is given, and the MX
//! hosts are aiosmtpd (Python) and Sluice with certificates from the test's CA or self-signed.
//! DANE-EE and DANE-TA matches deliver; a TLSA set that matches nothing, or a host with TLSA
//! records and no STARTTLS, defers and nothing goes in plain text; bogus DNSSEC defers; DANE
//! wins over an MTA-STS policy that would refuse the host; an MX host whose addresses are
//! bogus is not used; domains that are not signed, or signed without TLSA records, are
//! delivered as before.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256, Sha512};

use crate::common::{TestRelay, wait_for_recipient};
use crate::mta_sts::{Aiosmtpd, PolicyHost, policy, send, tls_destination, wait_received};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::signed_dns::{SignedDns, SignedZone, Signing};
use crate::peers::test_ca::{TestCa, self_signed};

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

fn spki(pem: &Path) -> Vec<u8> {
    let der = der(pem);
    x509_parser::parse_x509_certificate(&der).unwrap().1.tbs_certificate.subject_pki.raw.to_vec()
}

/// `dest.test` and its MX host `mx.dest.test` on loopback, in the signed zone `test.`.
fn zone() -> SignedZone {
    SignedZone::new("test", Signing::Trusted).mx("dest.test", 10, "mx.dest.test").a("mx.dest.test", "127.0.0.1")
}

/// A relay delivering by MX on `port`, validating from `dns`'s anchors; `extra` adds
/// `delivery:` lines.
fn dane_relay(dir: &Path, dns: &SignedDns, port: u16, extra: &str) -> TestRelay {
    let anchors = dir.join(format!("anchors-{port}"));
    dns.write_anchors(&anchors);
    TestRelay::with_config(&format!(
        "{}delivery:\n  port: {port}\n  retry: [1s]\n  dane: {{ enabled: true, trust_anchors: {} }}\n{extra}",
        dns.config(),
        anchors.display()
    ))
}

fn wait_aiosmtpd(peer: &Aiosmtpd) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = peer.received().pop() {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "aiosmtpd got nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sluice queue summary` shows DANE as the TLS policy of dest.test's latest attempt.
fn dane_applied(relay: &TestRelay) -> bool {
    let rows = sluice::admin::queue_summary(&relay.config).unwrap();
    rows.iter().any(|r| r.destination == "dest.test" && r.tls_policy.as_deref() == Some("dane"))
}

/// Sends to `to`, waits for the attempt, and checks it was deferred with nothing arriving at
/// the MX host (`received` counts what it has); the reply the attempt got.
fn deferred_with_nothing_sent(relay: &TestRelay, to: &str, received: impl Fn() -> usize) -> String {
    send(relay, to);
    let r = wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    assert!(r.state == sluice::spool::RecipientState::Queued, "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(received(), 0, "the MX host got the mail: {r:?}");
    r.last_reply.unwrap_or_default()
}

#[test]
fn dane_ee_and_dane_ta_matches_are_delivered_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    // DANE-EE: a self-signed certificate for another name, its key's SHA-256 in the record.
    let cert = self_signed(dir.path(), "ee", &["not-the-mx.example"]);
    let peer = Aiosmtpd::start(dir.path(), Some(&cert));
    let dns = SignedDns::start(vec![zone().tlsa("mx.dest.test", peer.port, (3, 1, 1), &Sha256::digest(spki(&cert.cert)))]);
    let relay = dane_relay(dir.path(), &dns, peer.port, "");
    send(&relay, "b@dest.test");
    let got = wait_aiosmtpd(&peer);
    assert!(got.contains("Subject: sts"), "{got}");
    assert!(dane_applied(&relay), "opportunistic TLS would have delivered too");
    drop(relay);

    // DANE-TA: the CA's whole certificate (SHA-512) in the record; the chain and the MX name
    // are verified up to it. Sluice as the MX host sends the leaf only: the CA comes from the
    // record (2 0 0, the certificate itself).
    let ca = TestCa::new(dir.path());
    let destination = tls_destination(&ca.issue(dir.path(), "mx", &["mx.dest.test"], 2099));
    let port = destination.addr.port();
    let dns = SignedDns::start(vec![zone().tlsa("mx.dest.test", port, (2, 0, 0), &der(&ca.pem_path))]);
    let relay = dane_relay(dir.path(), &dns, port, "");
    send(&relay, "c@dest.test");
    wait_received(&destination);
    let stored = destination.stop_and_read();
    assert!(stored[0].1.contains("with ESMTPS id"), "{}", stored[0].1);
    assert!(dane_applied(&relay));
    drop(relay);

    let ca_digest = Sha512::digest(der(&ca.pem_path));
    let destination = tls_destination(&ca.issue(dir.path(), "mx2", &["mx.dest.test"], 2099));
    let port = destination.addr.port();
    // A record naming the CA by digest, with an unusable PKIX-EE record beside it.
    let dns =
        SignedDns::start(vec![zone().tlsa("mx.dest.test", port, (2, 0, 2), &ca_digest).tlsa("mx.dest.test", port, (1, 1, 1), &[0; 32])]);
    let relay = dane_relay(dir.path(), &dns, port, "");
    send(&relay, "d@dest.test");
    // Sluice sends no chain: the digest names a CA that is not in it, so it cannot match.
    let r = wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    assert!(r.state == sluice::spool::RecipientState::Queued, "{r:?}");
    assert!(sluice::admin::queue_list(&destination.config).unwrap().is_empty(), "took the mail without a matching chain");
}

#[test]
fn a_tlsa_set_that_matches_nothing_or_a_host_without_starttls_defers_and_nothing_goes_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "mx", &["mx.dest.test"]);
    let other = self_signed(dir.path(), "other", &["mx.dest.test"]);
    let peer = Aiosmtpd::start(dir.path(), Some(&cert));
    let dns = SignedDns::start(vec![zone().tlsa("mx.dest.test", peer.port, (3, 1, 1), &Sha256::digest(spki(&other.cert)))]);
    let relay = dane_relay(dir.path(), &dns, peer.port, "");
    let reply = deferred_with_nothing_sent(&relay, "b@dest.test", || peer.received().len());
    assert!(reply.contains("no TLSA record names the certificate"), "{reply}");
    drop(relay);

    // TLSA records, and a host that offers no STARTTLS (or has it stripped): never plain text.
    let plain = Dest::start(Behavior::default());
    let dns = SignedDns::start(vec![zone().tlsa("mx.dest.test", plain.addr.port(), (3, 1, 1), &Sha256::digest(spki(&cert.cert)))]);
    let relay = dane_relay(dir.path(), &dns, plain.addr.port(), "");
    let reply = deferred_with_nothing_sent(&relay, "c@dest.test", || plain.received().len());
    assert!(reply.to_ascii_lowercase().contains("tls"), "{reply}");
}

#[test]
fn bogus_dnssec_defers_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Dest::start(Behavior::default());
    // Signed with one key, anchored at another: every answer is bogus.
    let dns = SignedDns::start(vec![
        SignedZone::new("bogus", Signing::Mistrusted).mx("dest.bogus", 10, "mx.dest.bogus").a("mx.dest.bogus", "127.0.0.1"),
    ]);
    let relay = dane_relay(dir.path(), &dns, plain.addr.port(), "");
    let reply = deferred_with_nothing_sent(&relay, "b@dest.bogus", || plain.received().len());
    assert!(reply.contains("4.7.5") && reply.contains("DNSSEC"), "{reply}");
}

#[test]
fn an_mx_host_whose_addresses_are_bogus_is_not_used_even_without_dane() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Dest::start(Behavior::default());
    // The MX records validate; the host's zone does not: an attacker who forges its answers
    // must not get DANE turned off for it.
    let dns = SignedDns::start(vec![
        SignedZone::new("test", Signing::Trusted).mx("dest.test", 10, "mx.dest.bogus"),
        SignedZone::new("bogus", Signing::Mistrusted).a("mx.dest.bogus", "127.0.0.1"),
    ]);
    let relay = dane_relay(dir.path(), &dns, plain.addr.port(), "");
    let reply = deferred_with_nothing_sent(&relay, "b@dest.test", || plain.received().len());
    assert!(reply.contains("4.7.5") && reply.contains("mx.dest.bogus: its addresses"), "{reply}");
}

#[test]
fn dane_wins_over_an_mta_sts_policy_that_would_refuse_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let host = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "policy", &["mta-sts.dest.test"], 2099));
    // An enforced policy that names another MX host: alone, it defers (tests/it/mta_sts.rs).
    host.set("policy.txt", &policy("enforce", "mx.elsewhere.test"));
    let cert = self_signed(dir.path(), "mx", &["mx.dest.test"]);
    let peer = Aiosmtpd::start(dir.path(), Some(&cert));
    let dns = SignedDns::start(vec![zone().a("mta-sts.dest.test", "127.0.0.1").txt("_mta-sts.dest.test", "v=STSv1; id=20261204T1;").tlsa(
        "mx.dest.test",
        peer.port,
        (3, 1, 1),
        &Sha256::digest(spki(&cert.cert)),
    )]);
    let sts = format!("  tls_trust: [{}]\n  mta_sts: {{ port: {}, fetch_timeout: 5s }}\n", ca.pem_path.display(), host.port);
    let relay = dane_relay(dir.path(), &dns, peer.port, &sts);
    send(&relay, "b@dest.test");
    wait_aiosmtpd(&peer);
    assert_eq!(host.requests(), 1, "the policy was fetched, and DANE decided");
}

#[test]
fn unsigned_domains_and_signed_ones_without_tlsa_records_are_delivered_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Dest::start(Behavior::default());
    let dns = SignedDns::start(vec![
        zone(),
        SignedZone::new("plain", Signing::Unsigned).mx("dest.plain", 10, "mx.dest.plain").a("mx.dest.plain", "127.0.0.1"),
    ]);
    let relay = dane_relay(dir.path(), &dns, plain.addr.port(), "");
    // Signed, with a validated proof that there is no TLSA record; and not signed at all.
    send(&relay, "b@dest.test");
    send(&relay, "c@dest.plain");
    let got = plain.wait_for(2, Duration::from_secs(20));
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["b@dest.test", "c@dest.plain"]);
    let rows = sluice::admin::queue_summary(&relay.config).unwrap();
    for domain in ["dest.test", "dest.plain"] {
        let row = rows.iter().find(|r| r.destination == domain).unwrap_or_else(|| panic!("{domain}: {rows:?}"));
        assert_eq!(row.tls_policy.as_deref(), Some("opportunistic"), "{rows:?}");
    }
}

#[test]
fn a_dane_failure_is_reported_under_the_tlsa_policy_as_rfc_8460_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let reports = PolicyHost::start(dir.path(), &ca.issue(dir.path(), "reports", &["reports.test"], 2099));
    let cert = self_signed(dir.path(), "mx", &["mx.dest.test"]);
    let peer = Aiosmtpd::start(dir.path(), Some(&cert));
    let named = [0xAB_u8; 32];
    let rua = format!("v=TLSRPTv1; rua=https://reports.test:{}/v1/tlsrpt", reports.port);
    let dns = SignedDns::start(vec![
        zone().tlsa("mx.dest.test", peer.port, (3, 1, 1), &named).txt("_smtp._tls.dest.test", &rua).a("reports.test", "127.0.0.1"),
    ]);
    let settings = format!("  tls_trust: [{}]\n  tls_rpt: {{ period: 2s }}\n", ca.pem_path.display());
    let relay = dane_relay(dir.path(), &dns, peer.port, &settings);
    send(&relay, "b@dest.test");
    wait_for_recipient(&relay.config, "no attempt", |_, r| r.attempts >= 1);
    let report = reports.first_report();
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "tlsa", "{report}");
    assert_eq!(policy["policy"]["policy-string"], serde_json::json!([format!("3 1 1 {}", "AB".repeat(32))]), "{report}");
    assert_eq!(policy["policy"]["policy-domain"], "dest.test");
    assert_eq!(policy["policy"]["mx-host"], serde_json::json!(["mx.dest.test"]));
    assert_eq!(policy["summary"]["total-successful-session-count"], 0, "{report}");
    let detail = &policy["failure-details"][0];
    assert_eq!(detail["result-type"], "tlsa-invalid", "{report}");
    assert_eq!(detail["receiving-mx-hostname"], "mx.dest.test");
    assert!(peer.received().is_empty());
}

#[test]
fn requiretls_mail_goes_to_an_mx_host_dane_authenticates() {
    // The MX host is another Sluice, which offers REQUIRETLS after STARTTLS.
    let destination = TestRelay::with_tls("hostname: mx.dest.test\n");
    let port = destination.addr.port();
    let dns = SignedDns::start(vec![zone().tlsa("mx.dest.test", port, (3, 1, 1), &Sha256::digest(spki(&destination.certificate())))]);
    let files = tempfile::tempdir().unwrap();
    let anchors = files.path().join("anchors");
    dns.write_anchors(&anchors);
    let extra = format!(
        "{}delivery:\n  port: {port}\n  retry: [1s]\n  dane: {{ enabled: true, trust_anchors: {} }}\n",
        dns.config(),
        anchors.display()
    );
    let relay = TestRelay::with_config(&crate::common::tls_auth_yaml(files.path(), &extra));
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls(&files.path().join("cert.pem"));
    let r = c.send_lines("MAIL FROM:<a@sender.test> REQUIRETLS", &["RCPT TO:<b@dest.test>"], "Subject: secret\r\n\r\nx\r\n");
    assert_eq!(r.code, 250);
    wait_received(&destination);
    let stored = destination.stop_and_read();
    assert!(stored[0].0.params.requiretls, "REQUIRETLS was passed on");
    assert!(stored[0].1.contains("with ESMTPS"), "{}", stored[0].1);
}
