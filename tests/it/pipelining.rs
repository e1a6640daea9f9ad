//! PIPELINING (RFC 2920): a whole transaction in one write, answered in order.

use crate::common::TestRelay;

#[test]
fn a_pipelined_transaction_in_one_write_is_answered_in_order() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    let batch = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n";
    let replies = c.pipeline(batch, 4);
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 250, 250, 354]);
    // Body, end of data, and the next transaction in one more write.
    let replies = c.pipeline(b"Subject: p\r\n\r\none\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n", 4);
    assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250, 250, 250, 354]);
    let replies = c.pipeline(b"two\r\n.\r\nQUIT\r\n", 2);
    assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250, 221]);
    let stored = relay.stop_and_read();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].0.recipients.len(), 2);
    // Two recipients: no `for` clause, so neither learns of the other.
    assert!(!stored[0].1.contains("\tfor <"), "{}", stored[0].1);
}
