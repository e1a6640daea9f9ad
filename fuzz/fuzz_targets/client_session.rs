//! The delivery client (sans-IO) against a hostile server: the input is what the server sends,
//! in reads split at 0xFF bytes. Whatever it sends, a recipient is reported delivered only by a
//! reply read after the message's end was written, and every transaction gets one outcome per
//! recipient.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice::smtp::address::{MailParams, Mailbox, RcptParams};
use sluice::smtp::client::{Client, ClientConfig, Event, Message, RcptOutcome, TlsPolicy};
use sluice::smtp::sasl::Secret;

fn message(recipients: usize) -> Message {
    let mb = |l: &str| Mailbox { local: l.into(), domain: "y.test".into() };
    Message {
        from: Some(Mailbox { local: "a".into(), domain: "x.test".into() }),
        params: MailParams::default(),
        recipients: ["b", "c", "d"].iter().take(recipients).map(|l| (mb(l), RcptParams::default())).collect(),
        body: Arc::new(b"Subject: x\r\n\r\n.hi\r\n".to_vec()),
    }
}

/// How many message ends (the DATA dot, or a BDAT LAST) the client has written.
fn ends(written: &[u8]) -> usize {
    let dots = written.windows(5).filter(|w| w == b"\r\n.\r\n").count();
    let last = written.windows(7).filter(|w| w == b" LAST\r\n").count();
    dots + last
}

fuzz_target!(|data: &[u8]| {
    let [setup, input @ ..] = data else { return };
    let tls = match setup % 3 {
        0 => TlsPolicy::Never,
        1 => TlsPolicy::Opportunistic,
        _ => TlsPolicy::Required,
    };
    let auth = (setup & 4 != 0).then(|| ("user".to_string(), Secret::new("pass".into())));
    let mut client = Client::new(ClientConfig {
        ehlo_name: "relay.test".into(),
        our_hostname: "relay.test".into(),
        tls,
        auth,
        chunking: setup & 8 != 0,
    });
    let mut written = Vec::new();
    let mut out = Vec::new();
    let mut sent: Vec<usize> = Vec::new();
    let mut done = 0;
    let mut delivered_transactions = 0;
    for read in input.split(|&b| b == 0xff) {
        let ends_before = ends(&written);
        client.feed(read);
        while let Some(event) = client.poll(&mut out) {
            match event {
                Event::Ready => {
                    if sent.len() < 3 {
                        let n = 1 + (*setup as usize >> 4) % 3;
                        sent.push(n);
                        client.send(message(n), &mut out);
                    }
                }
                Event::StartTls => {
                    written.extend_from_slice(&out);
                    out.clear();
                    client.tls_established(&mut out);
                }
                Event::Done(outcomes) => {
                    let expected = sent.get(done).copied().expect("a Done for a transaction never sent");
                    done += 1;
                    assert_eq!(outcomes.len(), expected, "one outcome per recipient");
                    if outcomes.iter().any(|o| matches!(o, RcptOutcome::Delivered(_))) {
                        delivered_transactions += 1;
                        assert!(delivered_transactions <= ends_before, "delivered before the message's end was written: {outcomes:?}");
                    }
                }
                Event::Failed(_) => return,
            }
        }
        written.extend_from_slice(&out);
        out.clear();
        client.written();
    }
});
