//! Failures over time: a connection dropped mid-DATA is retried; a message that stays
//! deferred past max_age bounces as expired.

use std::sync::Arc;
use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn zone() -> Zone {
    Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).mx("sender.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1")
}

#[test]
fn a_connection_dropped_mid_data_is_retried_and_delivered_once() {
    let dest = Dest::start(Behavior { drop_mid_data: Some(2), ..Behavior::default() });
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "line one\r\nline two\r\nline three\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert!(got[0].body.ends_with("line one\r\nline two\r\nline three\r\n"), "{}", got[0].body);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dest.state.lock().unwrap().transactions.len(), 1, "delivered once");
    assert!(dest.connections() >= 2, "the retry used a new connection");
}

#[test]
fn deferred_past_max_age_bounces_as_expired() {
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(|addr, _| if addr == "b@dest.test" { "451 4.2.1 mailbox busy".into() } else { "250 2.1.5 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, dest.addr.port(), "  max_age: 2s\n");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: slow\r\n\r\nx\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    let bounce = &got[0];
    assert_eq!((bounce.from.as_str(), bounce.rcpts.clone()), ("", vec!["a@sender.test".to_string()]));
    assert!(bounce.body.contains("Status: 5.4.7"), "{}", bounce.body);
    // The remote's last reply is the diagnostic; the expiry is ours.
    assert!(bounce.body.contains("Diagnostic-Code: smtp; 451 4.2.1 mailbox busy\r\n"), "{}", bounce.body);
    assert!(bounce.body.contains("Remote-MTA: dns; mx.dest.test\r\n"), "{}", bounce.body);
    assert!(bounce.body.contains("<b@dest.test>: 554 5.4.7 Delivery time expired after"), "{}", bounce.body);
}
