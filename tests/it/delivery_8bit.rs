//! 8-bit mail to a next hop without 8BITMIME is converted to quoted-printable and delivered
//! (RFC 6152 would allow a bounce); what cannot be converted bounces 5.6.3.

use std::time::Duration;

use crate::delivery_mx::delivering_relay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn decode_qp(s: &str) -> Vec<u8> {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'=', Some(b'\r')) => i += 3,
            (b'=', _) => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[test]
fn an_8bit_message_reaches_a_7bit_server_as_quoted_printable() {
    // No 8BITMIME among the extensions.
    let dest = Dest::start(Behavior { extensions: vec!["PIPELINING".into(), "ENHANCEDSTATUSCODES".into()], ..Behavior::default() });
    let zone =
        Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).mx("sender.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let relay = delivering_relay(&dns, dest.addr.port(), "");
    let mut c = relay.client();
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd("MAIL FROM:<a@sender.test> BODY=8BITMIME").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@dest.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let text = "Grüße aus Köln, naïve façade = schön\r\n";
    let r =
        c.cmd(&format!("Subject: umlauts\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}."));
    assert_eq!(r.code, 250, "{}", r.text());
    // And one that cannot be converted (8-bit in a header) bounces to the sender.
    assert_eq!(c.cmd("MAIL FROM:<a@sender.test> BODY=8BITMIME").code, 250);
    assert_eq!(c.cmd("RCPT TO:<c@dest.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    assert_eq!(c.cmd("Subject: Grüße\r\n\r\nbody\r\n.").code, 250);

    let got = dest.wait_for(2, Duration::from_secs(20));
    let converted = got.iter().find(|t| t.rcpts == ["b@dest.test"]).expect("the convertible message arrived");
    assert!(!converted.rcpt_lines.is_empty());
    assert!(converted.body.is_ascii(), "{}", converted.body);
    assert_eq!(converted.body.matches("Content-Transfer-Encoding").count(), 1, "{}", converted.body);
    assert!(converted.body.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\n"), "{}", converted.body);
    let body = converted.body.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(decode_qp(body), text.as_bytes());
    let bounce = got.iter().find(|t| t.from.is_empty()).expect("a bounce for the unconvertible one");
    assert!(bounce.body.contains("Final-Recipient: rfc822; c@dest.test") && bounce.body.contains("Status: 5.6.3"), "{}", bounce.body);
    assert!(bounce.body.contains("cannot be converted: 8-bit octets in a header field"), "{}", bounce.body);
}
