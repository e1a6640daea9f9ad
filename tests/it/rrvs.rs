//! RRVS (RFC 7293): accepted at RCPT, carried with the message, passed on to a next hop that
//! offers it; to one that does not, a recipient without ";C" fails 5.7.19 and one with ";C"
//! goes on without the check.

use std::time::{Duration, Instant};

use crate::common::TestRelay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn rrvs_is_passed_on_or_handled_as_the_rfc_says() {
    // A next hop that offers RRVS: another Sluice.
    let capable = TestRelay::with_config("hostname: mx.capable.test\n");
    let plain = Dest::start(Behavior::default());
    let bounces = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default());
    let relay = TestRelay::with_config(&format!(
        "{}delivery:\n  retry: [1s]\n  routes: {{ \"capable.test\": \"[127.0.0.1]:{}\", \"plain.test\": \"[127.0.0.1]:{}\", \"sender.test\": \"[127.0.0.1]:{}\" }}\n",
        dns.config(),
        capable.addr.port(),
        plain.addr.port(),
        bounces.addr.port()
    ));
    let mut c = relay.client();
    assert!(c.cmd("EHLO c.test").lines.contains(&"RRVS".to_string()));
    let rcpts = [
        "RCPT TO:<a@capable.test> RRVS=2014-04-03T23:01:00Z",
        "RCPT TO:<checked@plain.test> RRVS=2014-04-03T23:01:00Z",
        "RCPT TO:<lenient@plain.test> RRVS=2014-04-03T23:01:00Z;C",
    ];
    assert_eq!(c.send_lines("MAIL FROM:<s@sender.test>", &rcpts, "Subject: rrvs\r\n\r\nx\r\n").code, 250);
    // The plain next hop gets only the ";C" recipient, without the parameter.
    let got = plain.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, ["lenient@plain.test"]);
    assert_eq!(got[0].rcpt_lines, ["RCPT TO:<lenient@plain.test>"]);
    // The other one bounces with 5.7.19.
    let bounce = bounces.wait_for(1, Duration::from_secs(20));
    assert!(
        bounce[0].body.contains("Final-Recipient: rfc822; checked@plain.test") && bounce[0].body.contains("Status: 5.7.19"),
        "{}",
        bounce[0].body
    );
    // The capable next hop got the parameter and keeps it with the message.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&capable.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing arrived at the RRVS-capable next hop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = capable.stop_and_read();
    assert_eq!(stored[0].0.recipients[0].params.rrvs.as_deref(), Some("2014-04-03T23:01:00Z"));
}
