//! Recipients split into one transaction per destination, and a 452 "too many recipients"
//! sends the rest in new transactions at once.

use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn one_transaction_per_destination_domain() {
    let dest = Dest::start(Behavior::default());
    let zone = Zone::default()
        .mx("one.test", &[(10, "mx.one.test")])
        .mx("two.test", &[(10, "mx.two.test")])
        .a("mx.one.test", "127.0.0.1")
        .a("mx.two.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["x@one.test", "y@two.test", "z@one.test"], "x\r\n").code, 250);
    let mut got: Vec<Vec<String>> = dest.wait_for(2, Duration::from_secs(20)).into_iter().map(|t| t.rcpts).collect();
    got.sort();
    assert_eq!(got, vec![vec!["x@one.test".to_string(), "z@one.test".to_string()], vec!["y@two.test".to_string()]]);
}

#[test]
fn recipients_over_a_452_limit_go_out_in_new_transactions() {
    let dest = Dest::start(Behavior {
        rcpt: std::sync::Arc::new(|_, accepted| if accepted >= 2 { "452 4.5.3 Too many recipients".into() } else { "250 2.1.5 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let rcpts: Vec<String> = (0..5).map(|i| format!("r{i}@dest.test")).collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &rcpt_refs, "x\r\n").code, 250);
    let got = dest.wait_for(3, Duration::from_secs(20));
    let sizes: Vec<usize> = got.iter().map(|t| t.rcpts.len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let mut all: Vec<String> = got.into_iter().flat_map(|t| t.rcpts).collect();
    all.sort();
    assert_eq!(all, rcpts);
}
