//! SMTP smuggling: only CRLF.CRLF ends DATA; fake endings never yield a second message.

use crate::common::TestRelay;

#[test]
fn each_fake_ending_produces_at_most_one_message() {
    let endings: [&[u8]; 5] = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"];
    for ending in endings {
        let relay = TestRelay::start();
        let mut c = relay.client();
        c.cmd("EHLO c.test");
        c.cmd("MAIL FROM:<a@x.test>");
        c.cmd("RCPT TO:<b@y.test>");
        assert_eq!(c.cmd("DATA").code, 354);
        let mut payload = b"Subject: outer\r\n\r\nouter body".to_vec();
        payload.extend_from_slice(ending);
        payload.extend_from_slice(
            b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsend money\r\n.\r\n",
        );
        c.send(&payload);
        let r = c.reply();
        // Nothing in the payload was answered as a command: exactly one reply comes back.
        if ending.contains(&0) {
            // A next hop that drops NULs would see an end there: refused, never passed on.
            assert_eq!((r.code, r.text().as_str()), (550, "5.6.0 NUL characters are not allowed in messages"), "{ending:?}");
        } else {
            assert_eq!((r.code, r.text().as_str()), (550, "5.6.0 Bare CR or LF in message; lines must end with CRLF"), "{ending:?}");
        }
        assert_eq!(c.cmd("NOOP").code, 250, "{ending:?}: no stray replies queued");
        let stored = relay.stop_and_read();
        assert!(stored.len() <= 1, "{ending:?} produced {} messages", stored.len());
        for (env, _) in &stored {
            assert_eq!(env.from.as_ref().unwrap().to_string(), "a@x.test");
        }
    }
}
