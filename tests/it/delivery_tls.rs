//! Outbound STARTTLS: a Sluice delivering to another Sluice that offers TLS.

use std::time::{Duration, Instant};

use crate::common::TestRelay;
use crate::delivery_mx::delivering_relay;
use crate::peers::dns::{TestDns, Zone};

#[test]
fn delivery_uses_starttls_when_the_destination_offers_it() {
    // The destination: a relay with STARTTLS that keeps what it receives (delivery paused).
    // It needs a name of its own: a greeting with the sender's name is a loop.
    let destination = TestRelay::with_tls("hostname: dest.test\n");
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, destination.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: over tls\r\n\r\nx\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&destination.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = destination.stop_and_read();
    let body = &stored[0].1;
    // The destination's own Received field says how it was reached.
    assert!(body.starts_with("Received: from relay.test ([127.0.0.1])\r\n\tby dest.test (Sluice) with ESMTPS id "), "{body}");
    assert!(body.contains("(using TLSv1.3 with cipher"), "{body}");
}
