//! A 5xx bounces that recipient at once with an RFC 3464 report; the others are delivered.

use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

#[test]
fn a_rejected_recipient_bounces_with_every_dsn_field() {
    let dest = Dest::start(Behavior {
        rcpt: std::sync::Arc::new(
            |addr, _| if addr.starts_with("nobody@") { "550 5.1.1 no such user".into() } else { "250 2.1.5 ok".into() },
        ),
        ..Behavior::default()
    });
    let zone =
        Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).mx("sender.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let reply = relay.client().send_lines(
        "MAIL FROM:<a@sender.test> RET=HDRS ENVID=my+2Benv",
        &["RCPT TO:<ok@dest.test>", "RCPT TO:<nobody@dest.test> ORCPT=rfc822;orig+2Bnobody@dest.test"],
        "Subject: to bounce\r\n\r\nsecret body\r\n",
    );
    assert_eq!(reply.code, 250);
    // The original reaches ok@, and the bounce reaches the sender's MX with a null sender.
    let got = dest.wait_for(2, Duration::from_secs(20));
    let bounce = got.iter().find(|t| t.from.is_empty()).expect("a bounce with MAIL FROM:<>");
    assert_eq!(bounce.rcpts, ["a@sender.test"]);
    let b = &bounce.body;
    for needle in [
        "From: Mail Delivery System <MAILER-DAEMON@relay.test>",
        "Auto-Submitted: auto-replied",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Reporting-MTA: dns; relay.test",
        "Original-Envelope-Id: my+env",
        "Arrival-Date: ",
        "Final-Recipient: rfc822; nobody@dest.test",
        "Original-Recipient: rfc822; orig+nobody@dest.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.dest.test",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date: ",
        "Content-Type: text/rfc822-headers",
        "Subject: to bounce",
    ] {
        assert!(b.contains(needle), "missing {needle:?} in\n{b}");
    }
    assert!(!b.contains("secret body"), "RET=HDRS returns headers only");
    assert!(!b.contains("Final-Recipient: rfc822; ok@dest.test"), "only the failed recipient is listed");
}
