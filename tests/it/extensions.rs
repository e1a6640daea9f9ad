//! Each advertised extension, exercised over a socket.

use crate::common::TestRelay;

#[test]
fn ehlo_advertises_every_extension_and_helo_works_too() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    assert!(c.greeting.text().starts_with("relay.test ESMTP"), "{:?}", c.greeting);
    let ehlo = c.cmd("EHLO client.test");
    assert_eq!(ehlo.code, 250);
    for ext in ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"] {
        assert!(ehlo.lines.iter().any(|l| l == ext), "{ext} missing from {ehlo:?}");
    }
    let mut h = relay.client();
    assert_eq!(h.cmd("HELO client.test").code, 250);
    assert_eq!(h.send_mail_after_helo(), 250);
}

trait AfterHelo {
    fn send_mail_after_helo(&mut self) -> u16;
}

impl AfterHelo for crate::common::Client {
    fn send_mail_after_helo(&mut self) -> u16 {
        // No PIPELINING after HELO: one command at a time.
        assert_eq!(self.cmd("MAIL FROM:<a@x.test>").code, 250);
        assert_eq!(self.cmd("RCPT TO:<b@y.test>").code, 250);
        assert_eq!(self.cmd("DATA").code, 354);
        self.cmd("x\r\n.").code
    }
}

#[test]
fn size_parameter_over_the_limit_is_refused_at_mail() {
    let relay = TestRelay::with_config("limits: { max_message_size: 1000 }\n");
    let mut c = relay.client();
    assert!(c.cmd("EHLO c.test").lines.contains(&"SIZE 1000".to_string()));
    let r = c.cmd("MAIL FROM:<a@x.test> SIZE=1001");
    assert_eq!((r.code, r.text()), (552, "5.3.4 Message size exceeds fixed maximum message size".into()));
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> SIZE=999").code, 250);
}

#[test]
fn eightbitmime_smtputf8_and_dsn_parameters_are_kept_with_the_message() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO c.test").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<jörg@bücher.test> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=env+2Bid").code, 250);
    assert_eq!(c.cmd("RCPT TO:<zoë@例え.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;zoe@x.test").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send("Subject: caf\u{e9}\r\n\r\n8-bit body: \u{e9}\r\n.\r\n".as_bytes());
    assert_eq!(c.reply().code, 250);
    let stored = relay.stop_and_read();
    let (env, body) = &stored[0];
    assert!(env.params.smtputf8);
    assert_eq!(env.params.body, Some(sluice::smtp::address::Body::EightBitMime));
    assert_eq!(env.params.ret, Some(sluice::smtp::address::Ret::Hdrs));
    assert_eq!(env.params.envid.as_deref(), Some("env+2Bid"));
    let rcpt = &env.recipients[0];
    assert_eq!(rcpt.mailbox.to_string(), "zoë@例え.test");
    assert!(rcpt.params.notify.unwrap().success && rcpt.params.notify.unwrap().delay);
    assert_eq!(rcpt.params.orcpt.as_deref(), Some("rfc822;zoe@x.test"));
    assert!(body.contains("with UTF8SMTP id"), "{body}");
    assert!(body.contains("8-bit body: \u{e9}"));
}

#[test]
fn chunking_accepts_bdat_and_keeps_dots_verbatim() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO c.test").code, 250);
    let chunk1 = b"Subject: bdat\r\n\r\n.leading dot\r\n";
    let chunk2 = b"last line\r\n";
    let mut batch = format!("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT {}\r\n", chunk1.len()).into_bytes();
    batch.extend_from_slice(chunk1);
    batch.extend_from_slice(format!("BDAT {} LAST\r\n", chunk2.len()).as_bytes());
    batch.extend_from_slice(chunk2);
    let replies = c.pipeline(&batch, 4);
    assert_eq!(replies.iter().map(|r| r.code).collect::<Vec<_>>(), [250, 250, 250, 250]);
    assert!(replies[3].text().contains("queued as"));
    let stored = relay.stop_and_read();
    assert!(stored[0].1.ends_with("\r\n\r\n.leading dot\r\nlast line\r\n"), "{}", stored[0].1);
}

#[test]
fn vrfy_help_noop_rset_quit() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    assert_eq!(c.cmd("VRFY someone").code, 252);
    assert_eq!(c.cmd("HELP").code, 214);
    assert_eq!(c.cmd("NOOP").code, 250);
    assert_eq!(c.cmd("EHLO c.test").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 250);
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").code, 503, "RSET ended the transaction");
    let bye = c.cmd("QUIT");
    assert_eq!((bye.code, bye.text()), (221, "2.0.0 Bye".into()));
    assert!(c.is_closed());
}
