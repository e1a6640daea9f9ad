//! PIPELINING (RFC 2920): a whole transaction in one write, answered in order; a client that
//! does not wait where it must (before EHLO granted PIPELINING, after EHLO, DATA, STARTTLS)
//! gets 554 5.5.0 and is disconnected, unless it has authenticated or its listener allows it.

use crate::common::{Client, TestRelay};

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

fn out_of_step(c: &mut Client, bytes: &[u8], replies_first: usize) {
    let replies = c.pipeline(bytes, replies_first + 1);
    let last = replies.last().unwrap();
    assert_eq!((last.code, last.text()), (554, "5.5.0 Error: SMTP protocol synchronization".to_string()), "{replies:?}");
    assert!(c.is_closed(), "the connection stays open");
}

#[test]
fn commands_pipelined_before_ehlo_granted_pipelining_close_the_session() {
    let relay = TestRelay::start();
    out_of_step(&mut relay.client(), b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\n", 0);
    let mut helo = relay.client();
    assert_eq!(helo.cmd("HELO client.test").code, 250);
    out_of_step(&mut helo, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n", 0);
    // Without EHLO or HELO at all, too.
    out_of_step(&mut relay.client(), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n", 0);
}

#[test]
fn message_data_sent_before_the_354_closes_the_session_and_stores_nothing() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    c.cmd("EHLO client.test");
    out_of_step(&mut c, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: early\r\n\r\nx\r\n.\r\n", 2);
    let mut noop = relay.client();
    noop.cmd("EHLO client.test");
    out_of_step(&mut noop, b"NOOP\r\nRSET\r\n", 0);
    assert!(relay.stop_and_read().is_empty());
}

#[test]
fn plaintext_pipelined_after_starttls_closes_the_session() {
    let relay = TestRelay::with_tls("");
    let mut c = relay.client();
    c.cmd("EHLO client.test");
    out_of_step(&mut c, b"STARTTLS\r\nRSET\r\n", 0);
}

#[test]
fn an_authenticated_client_and_a_listener_that_allows_it_may_pipeline_freely() {
    let relay = TestRelay::with_tls("");
    let mut c = relay.client();
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls(&relay.certificate());
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", sluice::smtp::sasl::encode("\0alice\0right"))).code, 235);
    let replies = c.pipeline(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: eager\r\n\r\nx\r\n.\r\n", 4);
    assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250, 250, 354, 250]);

    let legacy = TestRelay::with_config("listeners:\n  - { address: \"127.0.0.1:0\", mode: relay, forbid_unauth_pipelining: false }\n");
    let mut printer = legacy.client();
    let replies = printer.pipeline(b"HELO printer.lan\r\nMAIL FROM:<scan@lan.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n", 5);
    assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250, 250, 250, 354, 250]);
    assert_eq!(legacy.stop_and_read().len(), 1);
}
