//! RFC 3461 notices besides failures: one delay warning, and "relayed" when NOTIFY=SUCCESS
//! meets a next hop without DSN.

use std::sync::Arc;
use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn zone() -> Zone {
    Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).mx("sender.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1")
}

fn reports(dest: &Dest) -> Vec<String> {
    dest.state.lock().unwrap().transactions.iter().filter(|t| t.from.is_empty()).map(|t| t.body.clone()).collect()
}

#[test]
fn a_deferred_recipient_gets_one_delay_notice() {
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(|addr, _| if addr == "b@dest.test" { "451 4.2.1 try later".into() } else { "250 2.1.5 ok".into() }),
        ..Behavior::default()
    });
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, dest.addr.port(), "  delay_warning: 1s\n");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: slow\r\n\r\nsecret\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    let notice = &got[0];
    assert_eq!((notice.from.as_str(), notice.rcpts.clone()), ("", vec!["a@sender.test".to_string()]));
    for needle in ["Subject: Delayed Mail (still being retried)", "Action: delayed", "Status: 4.2.1", "Will-Retry-Until: ", "Subject: slow"]
    {
        assert!(notice.body.contains(needle), "missing {needle:?}:\n{}", notice.body);
    }
    assert!(!notice.body.contains("secret"), "headers only");
    // Further retries (every second) send no second notice.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(reports(&dest).len(), 1);
}

#[test]
fn notify_success_to_a_next_hop_without_dsn_is_reported_as_relayed() {
    let dest = Dest::start(Behavior::default());
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let reply = relay.client().send_lines(
        "MAIL FROM:<a@sender.test>",
        &["RCPT TO:<b@dest.test> NOTIFY=SUCCESS,FAILURE"],
        "Subject: tracked\r\n\r\nx\r\n",
    );
    assert_eq!(reply.code, 250);
    dest.wait_for(2, Duration::from_secs(20));
    let r = reports(&dest);
    assert_eq!(r.len(), 1);
    for needle in [
        "Subject: Successful Mail Delivery Report",
        "Final-Recipient: rfc822; b@dest.test",
        "Action: relayed",
        "Remote-MTA: dns; mx.dest.test",
    ] {
        assert!(r[0].contains(needle), "missing {needle:?}:\n{}", r[0]);
    }
}

#[test]
fn notify_success_to_a_dsn_capable_next_hop_is_left_to_it() {
    let mut extensions = Behavior::default().extensions;
    extensions.push("DSN".into());
    let dest = Dest::start(Behavior { extensions, ..Behavior::default() });
    let dns = TestDns::start(zone());
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let reply = relay.client().send_lines(
        "MAIL FROM:<a@sender.test> ENVID=e1",
        &["RCPT TO:<b@dest.test> NOTIFY=SUCCESS ORCPT=rfc822;b@dest.test"],
        "x\r\n",
    );
    assert_eq!(reply.code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    // NOTIFY and ORCPT went on with the message, so the next hop can report success itself.
    assert_eq!(got[0].rcpt_lines, ["RCPT TO:<b@dest.test> NOTIFY=SUCCESS ORCPT=rfc822;b@dest.test"]);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(reports(&dest).is_empty(), "no relayed notice from us");
}
