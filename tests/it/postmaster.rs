//! RCPT TO:<Postmaster> (any case, no domain) is always accepted and routed (RFC 5321 4.5.1).

use crate::common::{Client, TestRelay};

#[test]
fn postmaster_is_accepted_from_anyone_and_routed_to_the_configured_address() {
    let relay = TestRelay::start();
    let mut c = Client::connect_from(relay.addr, "127.0.0.2");
    let r = c.send_mail("someone@outside.test", &["PostMaster"], "Subject: hi\r\n\r\nhello\r\n");
    assert_eq!(r.code, 250, "{r:?}");
    let stored = relay.stop_and_read();
    assert_eq!(stored[0].0.recipients[0].mailbox.to_string(), "pm@admin.test");
}
