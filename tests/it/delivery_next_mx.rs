//! A refused connection or a 5xx greeting moves on to the next MX host.

use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn a_failing_primary_mx_falls_back_to_the_secondary() {
    let good = Dest::start(Behavior::default());
    let port = good.addr.port();
    // 127.0.0.2: greets with 554. 127.0.0.3: nothing listens (connection refused).
    let _bad =
        Dest::start_on(&format!("127.0.0.2:{port}"), Behavior { greeting: "554 5.3.2 not accepting mail".into(), ..Behavior::default() });
    let zone = Zone::default()
        .mx("dest.test", &[(10, "mx1.dest.test"), (20, "mx2.dest.test"), (30, "mx3.dest.test")])
        .a("mx1.dest.test", "127.0.0.3")
        .a("mx2.dest.test", "127.0.0.2")
        .a("mx3.dest.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let relay = delivering_relay(&dns, port, "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "x\r\n").code, 250);
    let got = good.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, ["b@dest.test"]);
}
