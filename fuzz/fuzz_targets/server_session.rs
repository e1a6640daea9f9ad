//! The server session (sans-IO) driven as the intake driver drives it. Input bytes are mapped
//! onto an SMTP alphabet (bytes below 0x30 stand for whole commands, keywords and line ends;
//! 0xF0 and above split the input into separate reads; the rest are themselves), so random
//! input reaches deep states: transactions, DATA, BDAT, AUTH dialogues, STARTTLS.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice::smtp::address::Mailbox;
use sluice::smtp::reply::{Enhanced, Reply};
use sluice::smtp::server::{AuthOutcome, ClientInfo, Event, RecipientRule, Session, SessionConfig, TlsInfo};

const TOKENS: [&[u8]; 48] = [
    b"EHLO client.test\r\n",
    b"HELO client.test\r\n",
    b"MAIL FROM:<a@x.test>",
    b"MAIL FROM:<>",
    b"RCPT TO:<b@y.test>",
    b"RCPT TO:<postmaster>",
    b"DATA\r\n",
    b"\r\n.\r\n",
    b"BDAT ",
    b" LAST",
    b"AUTH PLAIN ",
    b"AUTH LOGIN",
    b"AGFsaWNlAHJpZ2h0",
    b"YWxpY2U=",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b" SIZE=",
    b" BODY=8BITMIME",
    b" BODY=BINARYMIME",
    b" SMTPUTF8",
    b" RET=HDRS",
    b" ENVID=",
    b" NOTIFY=SUCCESS,DELAY",
    b" ORCPT=rfc822;",
    b" REQUIRETLS",
    b" MT-PRIORITY=",
    b" RRVS=",
    b" AUTH=<>",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b".",
    b"\0",
    b"Subject: x\r\n\r\n",
    b"@tls-only.test",
    b"@null.test",
    b"[127.0.0.1]",
    b"=",
    b"*\r\n",
    b"\xc3\xb6",
    b"\"q\\\"\"",
    b"1000",
    b"99999999999999999999",
    b"-",
];

fn config(bits: u8) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 4000,
        max_recipients: 4,
        max_line: 200,
        max_errors: 8,
        postmaster: Mailbox { local: "postmaster".into(), domain: "relay.test".into() },
        tls_available: bits & 1 != 0,
        auth_available: bits & 2 != 0,
        require_auth: bits & 4 != 0,
        address_literals: bits & 8 != 0,
        tls_only_recipients: RecipientRule(Arc::new(|m: &Mailbox| m.domain == "tls-only.test")),
        check_recipient_domains: bits & 16 != 0,
    })
}

fn tls_info() -> TlsInfo {
    TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_128_GCM_SHA256".into(), certificate_identity: None }
}

/// Every reply the session writes is whole lines of `ddd` and a space or hyphen.
fn check_replies(out: &[u8]) {
    assert!(out.is_empty() || out.ends_with(b"\r\n"), "partial reply line: {:?}", String::from_utf8_lossy(out));
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() >= 5 && line.ends_with(b"\r"), "bad reply line {:?}", String::from_utf8_lossy(line));
        assert!(line[..3].iter().all(u8::is_ascii_digit) && matches!(line[3], b' ' | b'-'));
        assert!((b'2'..=b'5').contains(&line[0]));
        assert!(!line[..line.len() - 1].contains(&b'\r'), "a CR inside a reply line");
    }
}

fuzz_target!(|data: &[u8]| {
    let [setup, driver, input @ ..] = data else { return };
    let cfg = config(*setup);
    let client = ClientInfo {
        ip: "192.0.2.1".parse().unwrap(),
        relay_allowed: setup & 32 != 0,
        plaintext_auth: setup & 64 != 0,
        tls: (setup & 128 != 0).then(tls_info),
        tls_required: driver & 64 != 0,
    };
    let mut session = Session::new(cfg.clone(), client);
    if driver & 128 != 0 {
        session.forbid_unauth_pipelining();
    }
    let mut out = Vec::new();
    session.greeting(&mut out);

    // The driver's answers come from `driver`'s low bits, rotated per event.
    let mut choices = driver.rotate_left(3) as u32 | (*driver as u32) << 8;
    let mut choose = |n: u32| {
        choices = choices.rotate_left(5) ^ 0x9e37_79b9;
        choices % n
    };
    let mut taken = Vec::new();
    let mut spare = Vec::new();
    let mut reads: Vec<Vec<u8>> = vec![Vec::new()];
    for &b in input {
        match b {
            0..0x30 => reads.last_mut().unwrap().extend_from_slice(TOKENS[b as usize]),
            0xf0.. => reads.push(Vec::new()),
            _ => reads.last_mut().unwrap().push(b),
        }
    }
    let mut messages = 0;
    let mut serial = session.transaction_serial();
    'reads: for read in reads {
        session.feed(&read);
        loop {
            match session.poll(&mut out) {
                Event::NeedInput => break,
                Event::Close => break 'reads,
                Event::Message(tx) => {
                    messages += 1;
                    assert!(!tx.recipients.is_empty(), "a message with no recipient");
                    assert!(tx.recipients.len() <= cfg.max_recipients);
                    assert!(taken.len() + tx.body.len() <= cfg.max_message_size, "a message over the size limit");
                    taken.clear();
                    let id = format!("ID{messages}");
                    match choose(4) {
                        0 => session.message_stored(Err(Reply::new(451, Enhanced(4, 3, 0), "spool busy")), &mut out),
                        _ => session.message_stored(Ok(&id), &mut out),
                    }
                }
                Event::StartTls => {
                    check_replies(&out);
                    out.clear();
                    session.tls_started(tls_info());
                }
                Event::Authenticate(c) => {
                    let outcome = match choose(3) {
                        0 => AuthOutcome::Failed,
                        1 => AuthOutcome::TemporaryFailure,
                        _ => AuthOutcome::Success(c.username),
                    };
                    session.auth_result(outcome, &mut out);
                }
                Event::CheckRecipient(domain) => {
                    let refusal = (domain == "null.test").then(|| Reply::new(556, Enhanced(5, 1, 10), "null MX"));
                    session.recipient_checked(refusal, &mut out);
                }
            }
            // The driver takes large bodies out as they arrive, per transaction.
            if session.transaction_serial() != serial {
                serial = session.transaction_serial();
                taken.clear();
            }
            if session.swap_body(64, &mut spare) {
                taken.extend_from_slice(&spare);
            }
            let _ = session.take_refusals().count();
        }
        check_replies(&out);
        out.clear();
    }
    check_replies(&out);
});
