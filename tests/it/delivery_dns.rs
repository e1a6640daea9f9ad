//! DNS outcomes: null MX and NXDOMAIN bounce without a connection; SERVFAIL defers and never
//! falls back to the address record.

use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn bounce_for(dest: &Dest, rcpt_domain: &str) -> String {
    let got = dest.wait_for(1, Duration::from_secs(20));
    let b = got.iter().find(|t| t.from.is_empty()).unwrap_or_else(|| panic!("no bounce for {rcpt_domain}"));
    b.body.clone()
}

#[test]
fn null_mx_bounces_5_1_10_and_nxdomain_5_1_2() {
    for (domain, status) in [("nomail.test", "5.1.10"), ("missing.test", "5.1.2")] {
        let dest = Dest::start(Behavior::default());
        let zone = Zone::default()
            .mx("nomail.test", &[(0, ".")])
            .a("nomail.test", "127.0.0.1")
            .mx("sender.test", &[(10, "mx.sender.test")])
            .a("mx.sender.test", "127.0.0.1");
        let dns = TestDns::start(zone);
        let relay = delivering_relay(&dns, dest.addr.port(), "");
        let mut c = relay.client();
        assert_eq!(c.send_mail("a@sender.test", &[&format!("b@{domain}")], "x\r\n").code, 250);
        let body = bounce_for(&dest, domain);
        assert!(body.contains(&format!("Final-Recipient: rfc822; b@{domain}")), "{body}");
        assert!(body.contains(&format!("Status: {status}")), "{domain}: {body}");
        assert!(!body.contains("Remote-MTA"), "no host was contacted for {domain}");
        let got = dest.state.lock().unwrap().transactions.clone();
        assert!(got.iter().all(|t| t.rcpts != [format!("b@{domain}")]), "nothing was delivered to {domain}");
    }
}

#[test]
fn servfail_defers_and_never_falls_back_to_a_records() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().servfail("flaky.test").a("flaky.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@flaky.test"], "x\r\n").code, 250);
    let reply = crate::delivery_mx::first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.starts_with("451 4.4.3"), "{reply}");
    assert_eq!(dest.connections(), 0, "no connection after SERVFAIL");
}

/// A CNAME loop says nothing about the domain: deferred as a DNS failure (4.4.3), not bounced
/// as a domain that does not exist.
#[test]
fn a_cname_loop_defers_instead_of_bouncing() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().cname("loop.test", "loop2.test").cname("loop2.test", "loop.test"));
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@loop.test"], "x\r\n").code, 250);
    let reply = crate::delivery_mx::first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.starts_with("451 4.4.3") && reply.contains("CNAME loop"), "{reply}");
}
