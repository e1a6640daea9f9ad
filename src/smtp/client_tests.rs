//! The client against scripted replies: what it writes, and what it reports.

use super::wire::{MAX_LINE, fold_line};
use super::*;
use crate::smtp::address::Ret;

fn cfg(tls: TlsPolicy) -> ClientConfig {
    ClientConfig { ehlo_name: "relay.test".into(), our_hostname: "relay.test".into(), tls, auth: None, chunking: true }
}

fn mb(s: &str) -> Mailbox {
    let (l, d) = s.split_once('@').unwrap();
    Mailbox { local: l.into(), domain: d.into() }
}

fn message(rcpts: &[&str], body: &str) -> Message {
    Message {
        from: Some(mb("a@x.test")),
        params: MailParams::default(),
        recipients: rcpts.iter().map(|r| (mb(r), RcptParams::default())).collect(),
        body: Arc::new(body.as_bytes().to_vec()),
    }
}

/// Drives a client: feed server bytes, collect what it wrote and the events.
struct Script {
    client: Client,
    written: Vec<u8>,
    events: Vec<Event>,
}

impl Script {
    fn new(tls: TlsPolicy) -> Self {
        Script { client: Client::new(cfg(tls)), written: Vec::new(), events: Vec::new() }
    }

    fn server(&mut self, bytes: &str) -> String {
        self.written.clear();
        self.client.feed(bytes.as_bytes());
        while let Some(e) = self.client.poll(&mut self.written) {
            self.events.push(e);
        }
        // The driver reports the output written before it reads again.
        self.client.written();
        String::from_utf8(self.written.clone()).unwrap()
    }

    fn send(&mut self, msg: Message) -> String {
        self.written.clear();
        self.client.send(msg, &mut self.written);
        while let Some(e) = self.client.poll(&mut self.written) {
            self.events.push(e);
        }
        // The driver reports the output written before it reads again.
        self.client.written();
        String::from_utf8(self.written.clone()).unwrap()
    }

    fn ready(tls: TlsPolicy, ehlo: &str) -> Self {
        let mut s = Script::new(tls);
        assert_eq!(s.server("220 mx.dest.test ESMTP\r\n"), "EHLO relay.test\r\n");
        s.server(ehlo);
        assert_eq!(s.events.pop(), Some(Event::Ready));
        s
    }

    fn done(&mut self) -> Vec<RcptOutcome> {
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Done(o) => Some(o.clone()),
                _ => None,
            })
            .expect("a Done event")
    }
}

const PIPELINED: &str = "250-mx.dest.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 DSN\r\n";

#[test]
fn pipelines_the_envelope_in_one_write_and_the_body_in_another() {
    let mut s = Script::ready(TlsPolicy::Opportunistic, PIPELINED);
    let sent = s.send(message(&["b@y.test", "c@y.test"], "Subject: x\r\n\r\n.hidden dot\r\n"));
    assert_eq!(sent, "MAIL FROM:<a@x.test> SIZE=27\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n");
    let body = s.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n");
    assert_eq!(body, "Subject: x\r\n\r\n..hidden dot\r\n.\r\n");
    assert_eq!(s.server("250 2.0.0 queued as X\r\n"), "");
    let outcomes = s.done();
    assert!(matches!(&outcomes[0], RcptOutcome::Delivered(r) if r.code == 250));
    assert!(matches!(&outcomes[1], RcptOutcome::Failed(r) if r.enhanced == Some(Enhanced(5, 1, 1))));
    assert_eq!(s.events.last(), Some(&Event::Ready), "clean 250: reusable without RSET");
}

#[test]
fn lock_step_without_pipelining() {
    let mut s = Script::ready(TlsPolicy::Never, "250-mx\r\n250 8BITMIME\r\n");
    assert_eq!(s.send(message(&["b@y.test", "c@y.test"], "x\r\n")), "MAIL FROM:<a@x.test>\r\n");
    assert_eq!(s.server("250 ok\r\n"), "RCPT TO:<b@y.test>\r\n");
    assert_eq!(s.server("250 ok\r\n"), "RCPT TO:<c@y.test>\r\n");
    assert_eq!(s.server("250 ok\r\n"), "DATA\r\n");
    assert_eq!(s.server("354 go\r\n"), "x\r\n.\r\n");
    s.server("250 ok\r\n");
    assert!(s.done().iter().all(|o| matches!(o, RcptOutcome::Delivered(_))));
}

#[test]
fn lock_step_skips_data_when_no_recipient_is_accepted() {
    let mut s = Script::ready(TlsPolicy::Never, "250-mx\r\n250 8BITMIME\r\n");
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("250 ok\r\n");
    assert_eq!(s.server("550 5.1.1 unknown\r\n"), "RSET\r\n");
    assert!(s.events.is_empty(), "outcomes wait for the RSET to be answered in step");
    s.server("250 reset\r\n");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(_)));
    assert_eq!(s.events.last(), Some(&Event::Ready));
}

#[test]
fn only_the_dot_is_sent_when_data_gets_354_after_every_rcpt_failed() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "secret body\r\n"));
    let after = s.server("250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
    assert_eq!(after, ".\r\n");
    assert_eq!(s.server("554 5.5.1 no valid recipients\r\n"), "RSET\r\n");
    s.server("250 reset\r\n");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.code == 550));
}

#[test]
fn a_refused_mail_command_applies_to_every_recipient() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test", "c@y.test"], "x\r\n"));
    let out = s.server("451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n");
    assert_eq!(out, "RSET\r\n");
    s.server("250 reset\r\n");
    assert!(s.done().iter().all(|o| matches!(o, RcptOutcome::Deferred(r) if r.code == 451)));
}

#[test]
fn final_dot_reply_decides_for_every_accepted_recipient() {
    for (reply, deferred) in [("452 4.3.1 full\r\n", true), ("554 5.6.0 rejected\r\n", false)] {
        let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
        s.send(message(&["b@y.test", "c@y.test"], "x\r\n"));
        s.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(s.server(reply), "RSET\r\n");
        s.server("250 reset\r\n");
        for o in s.done() {
            assert_eq!(matches!(o, RcptOutcome::Deferred(_)), deferred, "{reply}");
            assert_eq!(matches!(o, RcptOutcome::Failed(_)), !deferred, "{reply}");
        }
    }
}

#[test]
fn too_many_recipients_overflow_into_a_new_transaction() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["1@y.test", "2@y.test", "3@y.test"], "x\r\n"));
    s.server("250 ok\r\n250 ok\r\n452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n354 go\r\n");
    s.server("250 ok\r\n");
    let o = s.done();
    assert!(matches!(o[0], RcptOutcome::Delivered(_)));
    assert_eq!(&o[1..], &[RcptOutcome::Overflow, RcptOutcome::Overflow]);
}

#[test]
fn ehlo_refused_falls_back_to_helo_without_extensions() {
    let mut s = Script::new(TlsPolicy::Opportunistic);
    s.server("220 old.test SMTP\r\n");
    assert_eq!(s.server("502 5.5.1 what?\r\n"), "HELO relay.test\r\n");
    s.server("250 old.test\r\n");
    assert_eq!(s.events.last(), Some(&Event::Ready));
    // No PIPELINING after HELO: lock-step, and no SIZE parameter.
    assert_eq!(s.send(message(&["b@y.test"], "x\r\n")), "MAIL FROM:<a@x.test>\r\n");
}

#[test]
fn starttls_when_offered_then_ehlo_again() {
    let mut s = Script::new(TlsPolicy::Opportunistic);
    s.server("220 mx ESMTP\r\n");
    assert_eq!(s.server("250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n"), "STARTTLS\r\n");
    s.server("220 2.0.0 go ahead\r\n");
    assert_eq!(s.events.last(), Some(&Event::StartTls));
    let mut out = Vec::new();
    s.client.tls_established(&mut out);
    assert_eq!(out, b"EHLO relay.test\r\n");
    s.server("250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(s.events.last(), Some(&Event::Ready));
    assert!(s.client.tls_active());
}

#[test]
fn tls_policies_table() {
    // (policy, EHLO reply, STARTTLS reply, expected last event)
    let cases = [
        (TlsPolicy::Required, "250-mx\r\n250 PIPELINING\r\n", None, Event::Failed(Failure::TlsUnavailable)),
        (TlsPolicy::Required, "250-mx\r\n250 STARTTLS\r\n", Some("454 4.7.0 no TLS\r\n"), Event::Failed(Failure::TlsUnavailable)),
        (TlsPolicy::Opportunistic, "250-mx\r\n250 STARTTLS\r\n", Some("454 4.7.0 no TLS\r\n"), Event::Ready),
        (TlsPolicy::Never, "250-mx\r\n250 STARTTLS\r\n", None, Event::Ready),
    ];
    for (policy, ehlo, starttls, expected) in cases {
        let mut s = Script::new(policy);
        s.server("220 mx\r\n");
        s.server(ehlo);
        if let Some(r) = starttls {
            s.server(r);
        }
        assert_eq!(s.events.last(), Some(&expected), "{policy:?} {ehlo:?}");
    }
}

#[test]
fn greeting_refusals_421_and_loops_fail_the_connection() {
    let cases = [
        ("554 5.7.1 go away\r\n", "greeting"),
        ("421 4.3.2 busy\r\n", "closing"),
        ("220 relay.test ESMTP\r\n", "loop"),
        ("garbage\r\n", "protocol"),
    ];
    for (greeting, kind) in cases {
        let mut s = Script::new(TlsPolicy::Never);
        s.server(greeting);
        let failed = match s.events.last() {
            Some(Event::Failed(Failure::Greeting(_))) => "greeting",
            Some(Event::Failed(Failure::Closing(_))) => "closing",
            Some(Event::Failed(Failure::Loop)) => "loop",
            Some(Event::Failed(Failure::Protocol(_))) => "protocol",
            other => panic!("{greeting:?}: {other:?}"),
        };
        assert_eq!(failed, kind);
    }
}

#[test]
fn a_421_mid_transaction_fails_the_connection() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("250 ok\r\n421 4.7.0 closing\r\n");
    assert!(matches!(s.events.last(), Some(Event::Failed(Failure::Closing(r))) if r.code == 421));
    assert!(!s.client.is_ready());
}

#[test]
fn messages_the_server_cannot_take_fail_without_a_word_sent() {
    let mut s = Script::ready(TlsPolicy::Never, "250-mx\r\n250-SIZE 10\r\n250 PIPELINING\r\n");
    assert_eq!(s.send(message(&["b@y.test"], "0123456789abcdef\r\n")), "");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.enhanced == Some(Enhanced(5, 3, 4))));
    assert_eq!(s.events.last(), Some(&Event::Ready));
    assert_eq!(s.send(message(&["b@y.test"], "caf\u{e9}\r\n")), "");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.enhanced == Some(Enhanced(5, 6, 3))));
    let mut utf8 = message(&["zo\u{eb}@y.test"], "x\r\n");
    utf8.params.smtputf8 = true;
    assert_eq!(s.send(utf8), "");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.enhanced == Some(Enhanced(5, 6, 7))));
}

#[test]
fn mt_priority_goes_only_to_a_next_hop_that_offers_it() {
    let mut with = Script::ready(TlsPolicy::Never, "250-mx\r\n250-PIPELINING\r\n250 MT-PRIORITY MIXER\r\n");
    let mut m = message(&["b@y.test"], "x\r\n");
    m.params.priority = Some(-4);
    assert_eq!(with.send(m.clone()), "MAIL FROM:<a@x.test> MT-PRIORITY=-4\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    let mut without = Script::ready(TlsPolicy::Never, "250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(without.send(m), "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
}

#[test]
fn dsn_and_8bit_parameters_are_passed_on_when_offered() {
    let mut s = Script::ready(TlsPolicy::Never, "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 DSN\r\n");
    let mut m = message(&["b@y.test"], "caf\u{e9}\r\n");
    m.params.ret = Some(Ret::Hdrs);
    m.params.envid = Some("ID+2B1".into());
    m.params.smtputf8 = true;
    m.recipients[0].1 = RcptParams {
        notify: Some(crate::smtp::address::Notify { success: true, failure: true, ..Default::default() }),
        orcpt: Some("rfc822;b@y.test".into()),
        rrvs: None,
    };
    let sent = s.send(m);
    assert_eq!(
        sent,
        "MAIL FROM:<a@x.test> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=ID+2B1\r\nRCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.test\r\nDATA\r\n"
    );
}

#[test]
fn dot_stuffing_table() {
    let cases: [(&[u8], &[u8]); 6] = [
        (b".\r\n", b"..\r\n"),
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n"),
        (b"no final newline", b"no final newline\r\n"),
        (b"", b""),
        (b"a\r\nb\r\n.c\r\nd\r\ne", b"a\r\nb\r\n..c\r\nd\r\ne\r\n"),
        (b"x\n.y\n", b"x\n..y\n\r\n"),
    ];
    for (input, expected) in cases {
        let mut out = Vec::new();
        dot_stuff(input, &mut out);
        assert_eq!(out, expected, "{input:?}");
    }
}

/// Line by line, as dot_stuff was first written: what the run-copying version must match.
fn dot_stuff_line_by_line(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.split_inclusive(|&b| b == b'\n') {
        let doubled = chunk[0] == b'.';
        if doubled {
            out.push(b'.');
        }
        let content = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        let limit = MAX_LINE - usize::from(doubled);
        if content.len() <= limit {
            out.extend_from_slice(chunk);
        } else {
            fold_line(content, limit, &mut out);
            out.extend_from_slice(&chunk[content.len()..]);
        }
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn dot_stuffing_matches_the_line_by_line_version_on_mixed_bodies() {
    let long = vec![b'z'; 1200];
    let pieces: [&[u8]; 7] = [b".", b"ab", b"\r\n", b"\n", b"\r", b"..", &long];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut body = Vec::new();
        for _ in 0..(seed % 24) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            body.extend_from_slice(pieces[(seed % pieces.len() as u64) as usize]);
        }
        let mut out = Vec::new();
        dot_stuff(&body, &mut out);
        assert_eq!(out, dot_stuff_line_by_line(&body), "{:?}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn lines_over_998_octets_are_broken_with_crlf_space() {
    // 2,500 octets with a two-byte character straddling the first break, then a dot line.
    let mut long = vec![b'a'; 997];
    long.extend_from_slice("é".as_bytes());
    long.extend(std::iter::repeat_n(b'b', 1501));
    let mut body = long.clone();
    body.extend_from_slice(b"\r\n.");
    body.extend(std::iter::repeat_n(b'c', 998));
    body.extend_from_slice(b"\r\nshort\r\n");
    let mut out = Vec::new();
    dot_stuff(&body, &mut out);
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect();
    assert!(lines.iter().all(|l| l.len() <= 998), "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
    // The character moved whole to the continuation line.
    assert_eq!(lines[0], &long[..997]);
    assert!(lines[1].starts_with(" é".as_bytes()));
    // Unfolding (removing CRLF SP) gives the original line back.
    let unfolded: Vec<u8> =
        [lines[0], lines[1], lines[2]].iter().enumerate().flat_map(|(i, l)| if i == 0 { l } else { &l[1..] }).copied().collect();
    assert_eq!(unfolded, long);
    // The dot line: doubled, so 997 octets fit after the extra dot.
    assert_eq!(lines[3].len(), 998);
    assert!(lines[3].starts_with(b".."));
    assert_eq!(lines[4], b" cc");
    assert_eq!(lines[5], b"short");
    // Lines at the limit are left alone.
    let mut exact = vec![b'x'; 998];
    exact.extend_from_slice(b"\r\n");
    let mut out = Vec::new();
    dot_stuff(&exact, &mut out);
    assert_eq!(out, exact);
}

/// What a next hop stores after DATA: the dot-stuffed text with its leading dots removed.
fn unstuffed(wire: &[u8]) -> Vec<u8> {
    wire.split_inclusive(|&b| b == b'\n').flat_map(|l| l.strip_prefix(b".").unwrap_or(l)).copied().collect()
}

#[test]
fn the_line_folder_gives_what_data_and_bdat_deliver_whatever_the_pieces() {
    let long = vec![b'z'; 1200];
    let mut accent = vec![b'y'; 996];
    accent.extend_from_slice("éé".as_bytes());
    let pieces: [&[u8]; 9] = [b".", b"ab", b"\r\n", b"\n", b"\r", b"..", &long, &accent, "ü".as_bytes()];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut body = Vec::new();
        for _ in 0..(next() % 16) {
            body.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        let mut bdat = Vec::new();
        last_chunk(&body, &mut bdat);
        let bdat = bdat[bdat.iter().position(|&b| b == b'\n').unwrap() + 1..].to_vec();
        let mut data = Vec::new();
        dot_stuff(&body, &mut data);
        assert_eq!(unstuffed(&data), bdat, "DATA and BDAT deliver the same text: {:?}", String::from_utf8_lossy(&body));
        // Fed in random pieces, the folder gives the same.
        let mut folder = LineFolder::default();
        let mut out = Vec::new();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let n = 1 + (next() as usize % 1500).min(rest.len() - 1);
            folder.push(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        folder.finish(&mut out);
        assert_eq!(out, bdat, "{:?}", String::from_utf8_lossy(&body));
    }
}

fn with_login(tls: TlsPolicy) -> Script {
    let mut s = Script::new(tls);
    s.client = Client::new(ClientConfig { auth: Some(("alice".into(), sasl::Secret::new("pw".into()))), ..cfg(tls) });
    s
}

#[test]
fn logs_in_with_plain_after_starttls() {
    let mut s = with_login(TlsPolicy::Required);
    s.server("220 smart.test ESMTP\r\n");
    assert_eq!(s.server("250-smart\r\n250-STARTTLS\r\n250 AUTH LOGIN PLAIN\r\n"), "STARTTLS\r\n");
    s.server("220 go\r\n");
    let mut out = Vec::new();
    s.client.tls_established(&mut out);
    let auth = s.server("250-smart\r\n250-PIPELINING\r\n250 AUTH LOGIN PLAIN\r\n");
    assert_eq!(auth, format!("AUTH PLAIN {}\r\n", sasl::encode("\0alice\0pw")));
    s.server("235 2.7.0 ok\r\n");
    assert_eq!(s.events.last(), Some(&Event::Ready));
}

#[test]
fn logs_in_with_login_when_plain_is_not_offered() {
    let mut s = with_login(TlsPolicy::Required);
    s.server("220 smart.test ESMTP\r\n");
    s.server("250-smart\r\n250 STARTTLS\r\n");
    s.server("220 go\r\n");
    let mut out = Vec::new();
    s.client.tls_established(&mut out);
    assert_eq!(s.server("250-smart\r\n250 AUTH LOGIN\r\n"), format!("AUTH LOGIN {}\r\n", sasl::encode("alice")));
    assert_eq!(s.server("334 UGFzc3dvcmQ6\r\n"), format!("{}\r\n", sasl::encode("pw")));
    s.server("535 5.7.8 bad credentials\r\n");
    assert!(matches!(s.events.last(), Some(Event::Failed(Failure::Auth(r))) if r.code == 535));
}

#[test]
fn credentials_never_go_out_in_plain_text() {
    let mut s = with_login(TlsPolicy::Opportunistic);
    s.server("220 smart.test ESMTP\r\n");
    let out = s.server("250-smart\r\n250 AUTH PLAIN\r\n");
    assert!(!out.contains("AUTH"), "{out}");
    assert!(matches!(s.events.last(), Some(Event::Failed(Failure::Auth(_)))));
}

/// Server replies are untrusted: random bytes, split anywhere, at any point of a session,
/// must never panic the client, and every event must be one of the documented ones.
#[test]
fn random_server_bytes_never_panic_the_client() {
    const PIECES: &[&str] = &[
        "220 mx ESMTP\r\n",
        "250-mx\r\n",
        "250-PIPELINING\r\n",
        "250-STARTTLS\r\n",
        "250-AUTH PLAIN\r\n",
        "250 SIZE 5\r\n",
        "250 ok\r\n",
        "354 go\r\n",
        "452 4.5.3 Too many recipients\r\n",
        "550 5.1.1 no\r\n",
        "421 bye\r\n",
        "334 \r\n",
        "235 ok\r\n",
        "220 go\r\n",
        "\r\n",
        "\n",
        "25",
        "0-",
        "999 x\r\n",
        "\u{e9}\u{e9}",
        "250-\r\n251 x\r\n",
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let tls = [TlsPolicy::Never, TlsPolicy::Opportunistic, TlsPolicy::Required][round % 3];
        let mut client =
            Client::new(ClientConfig { auth: (round % 2 == 0).then(|| ("u".into(), sasl::Secret::new("p".into()))), ..cfg(tls) });
        let mut out = Vec::new();
        let mut input = String::new();
        for _ in 0..(next() % 30) {
            input.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        let bytes = input.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let take = 1 + (next() as usize % (bytes.len() - at));
            client.feed(&bytes[at..at + take]);
            at += take;
            while let Some(event) = client.poll(&mut out) {
                match event {
                    Event::StartTls => client.tls_established(&mut out),
                    Event::Ready if next() % 2 == 0 => client.send(message(&["b@y.test", "c@y.test"], "x\r\n"), &mut out),
                    _ => {}
                }
            }
        }
    }
}

/// A client past STARTTLS with `policy`, the server's second EHLO answered with `caps`.
fn over_tls(policy: TlsPolicy, caps: &str) -> Script {
    let mut s = Script::new(policy);
    s.server("220 mx.test ESMTP\r\n");
    assert_eq!(s.server("250-mx\r\n250 STARTTLS\r\n"), "STARTTLS\r\n");
    s.server("220 go\r\n");
    let mut out = Vec::new();
    s.client.tls_established(&mut out);
    s.server(caps);
    s
}

#[test]
fn requiretls_goes_only_over_verified_tls_to_a_host_that_offers_it() {
    let mut m = message(&["b@y.test"], "x\r\n");
    m.params.requiretls = true;
    let mut ok = over_tls(TlsPolicy::Required, "250-mx\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n");
    assert_eq!(ok.send(m.clone()), "MAIL FROM:<a@x.test> REQUIRETLS\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    // Not offered, or TLS only opportunistic: nothing is sent, the recipient fails 5.7.30.
    for (policy, caps) in [
        (TlsPolicy::Required, "250-mx\r\n250 PIPELINING\r\n"),
        (TlsPolicy::Opportunistic, "250-mx\r\n250-PIPELINING\r\n250 REQUIRETLS\r\n"),
    ] {
        let mut s = over_tls(policy, caps);
        assert_eq!(s.send(m.clone()), "", "{policy:?} {caps:?}");
        assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.enhanced == Some(Enhanced(5, 7, 30))));
    }
}

fn failure(s: &Script) -> Option<&Failure> {
    s.events.iter().find_map(|e| match e {
        Event::Failed(f) => Some(f),
        _ => None,
    })
}

fn delivered_anything(s: &Script) -> bool {
    s.events.iter().any(|e| matches!(e, Event::Done(o) if o.iter().any(|o| matches!(o, RcptOutcome::Delivered(_)))))
}

/// Server replies that do not fit the command they fall on, with and without PIPELINING:
/// each ends the connection as a protocol error and nothing is reported delivered.
#[test]
fn out_of_step_replies_are_protocol_errors_never_deliveries() {
    let lock_step = "250-mx\r\n250 8BITMIME\r\n";
    let cases: &[(&str, &str, &[&str])] = &[
        ("250 to DATA instead of 354", PIPELINED, &["250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n"]),
        ("an extra line after MAIL's reply, pipelined", PIPELINED, &["250 ok\r\n250 extra\r\n250 ok\r\n354 go\r\n"]),
        ("an extra line after MAIL's reply, lock-step, together", lock_step, &["250 ok\r\n250 extra\r\n"]),
        ("an extra line after MAIL's reply, lock-step, later", lock_step, &["250 ok\r\n", "250 extra\r\n", "250 ok\r\n", "354 go\r\n"]),
        ("252 to RCPT", PIPELINED, &["250 ok\r\n252 2.1.5 cannot verify\r\n354 go\r\n"]),
        ("a 2xx other than 250 to MAIL", PIPELINED, &["251 odd\r\n250 ok\r\n354 go\r\n"]),
        ("354 to the final dot", PIPELINED, &["250 ok\r\n250 ok\r\n354 go\r\n", "354 again\r\n"]),
        ("an extra line right after 354", PIPELINED, &["250 ok\r\n250 ok\r\n354 go\r\n250 early\r\n"]),
        ("an extra line after the dot's 250, together", PIPELINED, &["250 ok\r\n250 ok\r\n354 go\r\n", "250 queued\r\n250 extra\r\n"]),
    ];
    for (what, ehlo, replies) in cases {
        let mut s = Script::ready(TlsPolicy::Never, ehlo);
        s.send(message(&["b@y.test"], "x\r\n"));
        for r in *replies {
            s.server(r);
        }
        assert!(matches!(failure(&s), Some(Failure::Protocol(_))), "{what}: {:?}", s.events);
        assert!(!delivered_anything(&s), "{what}: {:?}", s.events);
        assert!(!s.client.is_ready(), "{what}: never reused");
    }
}

/// A reply that arrives while the body is still being written cannot answer the final dot.
#[test]
fn a_reply_before_the_dot_was_written_is_not_the_answer_to_it() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.written.clear();
    s.client.feed(b"250 ok\r\n250 ok\r\n354 go\r\n");
    while let Some(e) = s.client.poll(&mut s.written) {
        s.events.push(e);
    }
    assert!(s.written.ends_with(b".\r\n"), "the body is in the output");
    // Bytes arrive while the driver is still writing the body.
    s.client.feed(b"250 2.0.0 too early\r\n");
    s.client.written();
    while let Some(e) = s.client.poll(&mut s.written) {
        s.events.push(e);
    }
    assert!(matches!(failure(&s), Some(Failure::Protocol(t)) if t.contains("before the end of the message")), "{:?}", s.events);
    assert!(!delivered_anything(&s));
}

#[test]
fn an_unsolicited_reply_on_an_idle_connection_is_unread_data() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.client.feed(b"250 stale\r\n");
    assert!(s.client.has_unread());
}

/// A RSET answered out of step throws away the refusals it was to confirm; a 421 or a lost
/// connection does not (they say nothing about order).
#[test]
fn refusals_stand_only_once_the_rset_after_them_is_answered_in_step() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n");
    s.server("354 go\r\n");
    assert!(matches!(failure(&s), Some(Failure::Protocol(_))));
    assert!(!s.events.iter().any(|e| matches!(e, Event::Done(_))), "{:?}", s.events);

    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n");
    s.server("421 4.3.2 shutting down\r\n");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.code == 550));

    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n");
    assert!(matches!(s.client.take_held().as_deref(), Some([RcptOutcome::Failed(_)])));
}

#[test]
fn a_421_to_the_first_command_is_not_an_answer() {
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("421 4.4.2 idle timeout\r\n");
    assert!(!s.client.answered());
    let mut s = Script::ready(TlsPolicy::Never, PIPELINED);
    s.send(message(&["b@y.test"], "x\r\n"));
    s.server("250 ok\r\n");
    assert!(s.client.answered());
}

const CHUNKING: &str = "250-mx.dest.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n";

#[test]
fn bdat_sends_envelope_and_body_in_one_write_without_dot_stuffing() {
    let mut s = Script::ready(TlsPolicy::Never, CHUNKING);
    let sent = s.send(message(&["b@y.test", "c@y.test"], ".dot line\r\nend"));
    assert_eq!(sent, "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nBDAT 16 LAST\r\n.dot line\r\nend\r\n");
    assert_eq!(s.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 queued\r\n"), "");
    let o = s.done();
    assert!(matches!(&o[0], RcptOutcome::Delivered(r) if r.code == 250));
    assert!(matches!(&o[1], RcptOutcome::Failed(r) if r.code == 550));
    assert_eq!(s.events.last(), Some(&Event::Ready));
}

#[test]
fn bdat_refused_after_every_rcpt_failed_delivers_nothing() {
    let mut s = Script::ready(TlsPolicy::Never, CHUNKING);
    s.send(message(&["b@y.test"], "x\r\n"));
    assert_eq!(s.server("250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"), "RSET\r\n");
    s.server("250 reset\r\n");
    assert!(matches!(&s.done()[0], RcptOutcome::Failed(r) if r.code == 550));
}

/// With BDAT the envelope's replies may come while the chunk is still being written; the
/// chunk's own reply may not.
#[test]
fn a_bdat_reply_that_arrives_before_the_chunk_was_written_is_out_of_step() {
    for (during_write, after, ok) in [
        ("250 ok\r\n250 ok\r\n", "250 queued\r\n", true),
        ("250 ok\r\n250 ok\r\n250 too early\r\n", "", false),
        ("250 ok\r\n250 ok\r\n25", "0 queued\r\n", false),
    ] {
        let mut s = Script::ready(TlsPolicy::Never, CHUNKING);
        s.written.clear();
        s.client.send(message(&["b@y.test"], "x\r\n"), &mut s.written);
        s.client.feed(during_write.as_bytes());
        s.client.written();
        s.server(after);
        assert_eq!(delivered_anything(&s), ok, "{during_write:?}: {:?}", s.events);
        assert_eq!(failure(&s).is_some(), !ok, "{during_write:?}: {:?}", s.events);
    }
}

#[test]
fn bdat_only_with_pipelining_and_when_configured() {
    let mut s = Script::ready(TlsPolicy::Never, "250-mx\r\n250-CHUNKING\r\n250 8BITMIME\r\n");
    assert_eq!(s.send(message(&["b@y.test"], "x\r\n")), "MAIL FROM:<a@x.test>\r\n");
    let mut c =
        Script { client: Client::new(ClientConfig { chunking: false, ..cfg(TlsPolicy::Never) }), written: Vec::new(), events: Vec::new() };
    c.server("220 mx ESMTP\r\n");
    c.server(CHUNKING);
    assert!(c.send(message(&["b@y.test"], "x\r\n")).ends_with("DATA\r\n"));
}
