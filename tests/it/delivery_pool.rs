//! Pooling: many messages to one destination share a few reused connections.

use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn twenty_messages_use_at_most_the_configured_connections() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    // One worker: reuse is then exact. Several workers share the cap (see the next test).
    let relay = delivering_relay(&dns, dest.addr.port(), "  max_connections_per_destination: 2\n  workers: 1\n");
    std::thread::scope(|s| {
        for t in 0..4 {
            let relay = &relay;
            s.spawn(move || {
                for i in 0..5 {
                    let mut c = relay.client();
                    assert_eq!(c.send_mail("a@sender.test", &[&format!("r{t}x{i}@dest.test")], "x\r\n").code, 250);
                }
            });
        }
    });
    let got = dest.wait_for(20, Duration::from_secs(30));
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|t| t.conn <= 2), "every message came over one of the first two connections");
    let st = dest.state.lock().unwrap();
    assert!(st.max_open <= 2, "{} connections were open at once", st.max_open);
    assert!(st.connections <= 2, "{} connections opened for 20 messages", st.connections);
}

/// Four workers share one destination's cap of three: never more open at once, and the three
/// connections carry every message.
#[test]
fn workers_share_the_cap_of_one_destination() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, dest.addr.port(), "  max_connections_per_destination: 3\n  workers: 4\n");
    std::thread::scope(|s| {
        for t in 0..6 {
            let relay = &relay;
            s.spawn(move || {
                for i in 0..10 {
                    let mut c = relay.client();
                    assert_eq!(c.send_mail("a@sender.test", &[&format!("r{t}x{i}@dest.test")], "x\r\n").code, 250);
                }
            });
        }
    });
    let got = dest.wait_for(60, Duration::from_secs(30));
    assert_eq!(got.len(), 60);
    let st = dest.state.lock().unwrap();
    assert!(st.max_open <= 3, "{} connections were open at once", st.max_open);
    // Jobs go where connections are, so none is closed to make room for another.
    assert!(st.connections <= 3, "{} connections opened for 60 messages", st.connections);
}
