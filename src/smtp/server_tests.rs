//! In-memory session harness: one input batch in, one output buffer out, no sockets.

use super::*;

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_line: 998,
        max_errors: 20,
        postmaster: Mailbox { local: "postmaster".into(), domain: "relay.test".into() },
        tls_available: true,
        auth_available: true,
        require_auth: false,
        address_literals: false,
        tls_only_recipients: RecipientRule(Arc::new(|m: &Mailbox| m.domain == "tls-only.test")),
        check_recipient_domains: false,
    })
}

fn tls_info() -> TlsInfo {
    TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_128_GCM_SHA256".into(), certificate_identity: None }
}

struct Harness {
    session: Session,
    stored: Vec<Transaction>,
    next_id: u32,
}

impl Harness {
    fn new(relay_allowed: bool) -> Self {
        Self::with(
            config(),
            ClientInfo { ip: "127.0.0.1".parse().unwrap(), relay_allowed, plaintext_auth: false, tls: None, tls_required: false },
        )
    }

    fn with(cfg: Arc<SessionConfig>, client: ClientInfo) -> Self {
        Harness { session: Session::new(cfg, client), stored: Vec::new(), next_id: 0 }
    }

    /// Feeds one batch and returns everything the session wrote in response, storing messages
    /// and answering STARTTLS and AUTH as a driver would (alice/right is the only good login).
    fn send(&mut self, input: &[u8]) -> String {
        let mut out = Vec::new();
        self.session.feed(input);
        loop {
            match self.session.poll(&mut out) {
                Event::NeedInput | Event::Close => break,
                Event::Message(tx) => {
                    self.stored.push(*tx);
                    self.next_id += 1;
                    let id = format!("ID{}", self.next_id);
                    self.session.message_stored(Ok(&id), &mut out);
                }
                Event::StartTls => self.session.tls_started(tls_info()),
                Event::Authenticate(c) => {
                    let ok = c.username == "alice" && c.password.expose() == "right";
                    let outcome = if ok { AuthOutcome::Success(c.username) } else { AuthOutcome::Failed };
                    self.session.auth_result(outcome, &mut out);
                }
                // "null.test" stands for a domain with a null MX.
                Event::CheckRecipient(domain) => {
                    let refusal = (domain == "null.test").then(|| Reply::new(556, crate::smtp::reply::Enhanced(5, 1, 10), "null MX"));
                    self.session.recipient_checked(refusal, &mut out);
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn codes(&mut self, input: &[u8]) -> Vec<u16> {
        self.send(input).lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| l[..3].parse().unwrap()).collect()
    }
}

#[test]
fn answers_a_pipelined_transaction_in_one_batch() {
    let mut h = Harness::new(true);
    let out = h.send(b"EHLO c.test\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let codes: Vec<&str> = out.lines().filter(|l| l.as_bytes()[3] == b' ').map(|l| l.get(..9).unwrap_or(l)).collect();
    assert_eq!(codes, ["250 DSN", "250 2.1.0", "250 2.1.5", "354 2.0.0", "250 2.0.0", "221 2.0.0"]);
    assert_eq!(h.stored.len(), 1);
    assert_eq!(h.stored[0].body, b"Subject: t\r\n\r\nhi\r\n");
    assert!(h.session.is_closed());
}

#[test]
fn advertises_extensions() {
    let mut h = Harness::new(true);
    let out = h.send(b"EHLO c.test\r\n");
    for ext in ["PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"] {
        assert!(out.contains(&format!("250-{ext}\r\n")) || out.contains(&format!("250 {ext}\r\n")), "{ext} missing in {out}");
    }
}

#[test]
fn reply_codes_table() {
    let table: Vec<(&[u8], Vec<u16>)> = vec![
        (b"MAIL FROM:<a@x.org>\r\n", vec![503]),
        (b"EHLO c\r\nRCPT TO:<b@y.org>\r\n", vec![250, 503]),
        (b"EHLO c\r\nDATA\r\n", vec![250, 503]),
        (b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nDATA\r\n", vec![250, 250, 554]),
        (b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nMAIL FROM:<a@x.org>\r\n", vec![250, 250, 503]),
        (b"EHLO c\r\nMAIL FROM:<a@x.org> SIZE=1001\r\n", vec![250, 552]),
        (b"EHLO c\r\nMAIL FROM:<a@x.org> BOGUS=1\r\n", vec![250, 555]),
        (b"EHLO c\r\nMAIL FROM:<a@@x.org>\r\n", vec![250, 553]),
        (b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<j\xc3\xb6rg@y.org>\r\n", vec![250, 250, 553]),
        (b"EHLO c\r\nMAIL FROM:<> SMTPUTF8\r\nRCPT TO:<j\xc3\xb6rg@y.org>\r\n", vec![250, 250, 250]),
        (
            b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<1@y.org>\r\nRCPT TO:<2@y.org>\r\nRCPT TO:<3@y.org>\r\nRCPT TO:<4@y.org>\r\n",
            vec![250, 250, 250, 250, 250, 452],
        ),
        (b"VRFY someone\r\nNOOP\r\nHELP\r\nRSET\r\n", vec![252, 250, 214, 250]),
        (b"EXPN list\r\nXYZZY\r\n", vec![502, 500]),
        (b"EHLO c\nNOOP\r\n", vec![500, 250]),
        (b"EHLO c\rx\r\n", vec![500]),
        (b"HELO\r\nHELO not_valid\r\nHELO [1.2.3.4]\r\n", vec![501, 501, 250]),
        (b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@[192.0.2.1]>\r\n", vec![250, 250, 550]),
    ];
    for (input, expected) in table {
        let mut h = Harness::new(true);
        assert_eq!(h.codes(input), expected, "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn relay_is_denied_to_untrusted_clients_but_postmaster_is_accepted() {
    let mut h = Harness::new(false);
    let codes = h.codes(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<POSTMASTER@relay.test>\r\nDATA\r\nhi\r\n.\r\n");
    assert_eq!(codes, [250, 250, 550, 250, 250, 354, 250]);
    let out = Harness::new(false).send(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\n");
    assert!(out.ends_with("550 5.7.1 Relaying denied\r\n"), "{out}");
    let rcpts: Vec<String> = h.stored[0].recipients.iter().map(|r| r.mailbox.to_string()).collect();
    // Both name the postmaster: one copy.
    assert_eq!(rcpts, ["postmaster@relay.test"]);
}

#[test]
fn overlong_command_line_is_refused_and_session_goes_on() {
    let mut h = Harness::new(true);
    let mut input = b"NOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 5000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(h.codes(&input), [500, 250]);
}

#[test]
fn overlong_line_split_over_reads_is_discarded_not_parsed() {
    let mut h = Harness::new(true);
    assert_eq!(h.codes(&[b'x'; 2000]), Vec::<u16>::new());
    // The tail of the long line looks like a command, but it is discarded.
    assert_eq!(h.codes(b"QUIT\r\nNOOP\r\n"), [500, 250]);
    assert!(!h.session.is_closed());
}

#[test]
fn smuggled_commands_in_data_are_never_executed() {
    for ending in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n\x00.\r\n"] {
        let mut h = Harness::new(true);
        let mut input = b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nSubject: one\r\n\r\nbody".to_vec();
        input.extend_from_slice(ending);
        input.extend_from_slice(b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<victim@y.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n");
        let codes = h.codes(&input);
        assert!(h.stored.len() <= 1, "ending {ending:?} produced {} messages", h.stored.len());
        // Bare CR/LF endings and the NUL one are refused outright (5.6.0).
        assert_eq!(codes, [250, 250, 250, 354, 550], "ending {ending:?}");
        assert!(h.stored.is_empty());
    }
}

#[test]
fn too_big_data_is_read_to_the_end_and_refused() {
    let mut h = Harness::new(true);
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n".to_vec();
    for _ in 0..30 {
        input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    input.extend_from_slice(b".\r\nNOOP\r\n");
    assert_eq!(h.codes(&input), [250, 250, 250, 354, 552, 250]);
    assert!(h.stored.is_empty());
}

#[test]
fn bdat_chunks_make_one_message() {
    let mut h = Harness::new(true);
    let codes = h.codes(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\nd\r\nNOOP\r\n");
    assert_eq!(codes, [250, 250, 250, 250, 250, 250]);
    assert_eq!(h.stored[0].body, b"ab\r\ncd\r\n");
}

#[test]
fn bdat_chunk_split_across_reads() {
    let mut h = Harness::new(true);
    assert_eq!(h.codes(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 10 LAST\r\nhello"), [250, 250, 250]);
    assert_eq!(h.codes(b"\r\nabc"), [250]);
    assert_eq!(h.stored[0].body, b"hello\r\nabc\r\n");
}

#[test]
fn refused_bdat_octets_are_read_and_later_chunks_refused_until_rset() {
    let mut h = Harness::new(true);
    // The oversized chunk's octets contain a command that must not run.
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 1200\r\n".to_vec();
    let mut chunk = b"QUIT\r\n".to_vec();
    chunk.resize(1200, b'a');
    input.extend_from_slice(&chunk);
    input.extend_from_slice(b"BDAT 2 LAST\r\nok");
    input.extend_from_slice(b"RSET\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 4 LAST\r\nok\r\n");
    assert_eq!(h.codes(&input), [250, 250, 250, 552, 503, 250, 250, 250, 250]);
    assert_eq!(h.stored.len(), 1);
    assert!(!h.session.is_closed());
}

#[test]
fn bdat_without_transaction_is_refused_after_reading_octets() {
    let mut h = Harness::new(true);
    assert_eq!(h.codes(b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"), [250, 503, 250]);
}

#[test]
fn data_after_bdat_is_a_bad_sequence() {
    let mut h = Harness::new(true);
    assert_eq!(h.codes(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 2\r\nabDATA\r\n"), [250, 250, 250, 250, 503]);
}

#[test]
fn closes_after_twenty_errors() {
    let mut h = Harness::new(true);
    let out = h.send(&b"BOGUS\r\n".repeat(25));
    assert_eq!(out.matches("500 5.5.2").count(), 20);
    assert!(out.ends_with("421 4.7.0 Too many errors, closing connection\r\n"), "{out}");
    assert!(h.session.is_closed());
}

#[test]
fn http_request_closes_the_session() {
    let mut h = Harness::new(true);
    let out = h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("421 4.7.0"), "{out}");
    assert!(h.session.is_closed());
}

#[test]
fn mail_gate_refuses_new_transactions() {
    let mut h = Harness::new(true);
    h.session.set_mail_gate(Some(codes::disk_full()));
    assert_eq!(h.codes(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\n"), [250, 452]);
    h.session.set_mail_gate(None);
    assert_eq!(h.codes(b"MAIL FROM:<a@x.org>\r\n"), [250]);
}

#[test]
fn store_failure_is_reported_and_session_continues() {
    let mut h = Harness::new(true);
    let mut out = Vec::new();
    h.session.feed(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    let Event::Message(_) = h.session.poll(&mut out) else { panic!("no message") };
    // Pipelined NOOP is not answered before the message's own reply.
    assert_eq!(h.session.poll(&mut out), Event::NeedInput);
    h.session.message_stored(Err(codes::spool_failed()), &mut out);
    assert_eq!(h.session.poll(&mut out), Event::NeedInput);
    let out = String::from_utf8(out).unwrap();
    assert!(out.ends_with("451 4.3.0 Local error storing message, try again later\r\n250 2.0.0 OK\r\n"), "{out}");
}

#[test]
fn every_non_greeting_reply_has_an_enhanced_code() {
    let mut h = Harness::new(false);
    let out = h.send(b"HELO c\r\nEHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<postmaster>\r\nBDAT x\r\nDATA\r\n.\r\nVRFY\r\nNOOP\r\nRSET\r\nHELP\r\nFOO\r\nQUIT\r\n");
    let mut after_ehlo = false;
    for line in out.lines() {
        if line.starts_with("250 DSN") {
            after_ehlo = true;
            continue;
        }
        if !after_ehlo {
            continue;
        }
        let code = line.split(' ').nth(1).unwrap_or("");
        let looks_enhanced = code.split('.').count() == 3 && code.split('.').all(|p| p.parse::<u16>().is_ok());
        assert!(looks_enhanced, "no enhanced code on {line:?}");
    }
}

/// Deterministic pseudo-random input (xorshift), mapped onto SMTP fragments so it reaches deep
/// states: no input may panic the session, and every output line must be a well-formed reply.
#[test]
fn random_input_never_panics_and_replies_stay_well_formed() {
    const FRAGMENTS: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@x.org>\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<b@y.org>\r\n",
        b"RCPT TO:<Postmaster>\r\n",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 5 LAST\r\n",
        b"BDAT 99999999999\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b".\r\n",
        b"\r\n.\r\n",
        b"\n",
        b"\r",
        b".",
        b"\x00",
        b"\xff\xfe",
        b"text line\r\n",
        b"SIZE=5 ",
        b"<",
        b">",
        b"@",
        b" ",
        b"GET / HTTP/1.0\r\n",
        b"MAIL FROM:<\xc3\xa9@x>\r\n",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut h = Harness::new(next() % 2 == 0);
        let mut input = Vec::new();
        for _ in 0..(next() % 40) {
            input.extend_from_slice(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
            if next() % 10 == 0 {
                input.extend(std::iter::repeat_n(b'x', (next() % 1500) as usize));
            }
        }
        let mut out = String::new();
        let mut rest = &input[..];
        while !rest.is_empty() && !h.session.is_closed() {
            let take = 1 + (next() as usize % rest.len());
            out.push_str(&h.send(&rest[..take]));
            rest = &rest[take..];
        }
        for line in out.split_terminator("\r\n") {
            let b = line.as_bytes();
            assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'), "bad reply line {line:?}");
        }
        assert!(out.is_empty() || out.ends_with("\r\n"));
    }
}

fn b64(s: &str) -> String {
    crate::smtp::sasl::encode(s)
}

fn untrusted_over_tls() -> Harness {
    let client = ClientInfo {
        ip: "192.0.2.9".parse().unwrap(),
        relay_allowed: false,
        plaintext_auth: false,
        tls: Some(tls_info()),
        tls_required: false,
    };
    Harness::with(config(), client)
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets_the_session() {
    let mut h = Harness::new(true);
    let out = h.send(b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<a@x.org>\r\n");
    assert!(out.contains("250-STARTTLS\r\n"), "{out}");
    assert!(out.ends_with("220 2.0.0 Ready to start TLS\r\n"), "nothing answered after STARTTLS: {out}");
    // After the handshake the EHLO is forgotten and STARTTLS is no longer offered.
    assert_eq!(h.codes(b"MAIL FROM:<a@x.org>\r\n"), [503]);
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(!ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(h.codes(b"STARTTLS\r\n"), [503]);
}

#[test]
fn auth_is_neither_offered_nor_accepted_in_plaintext() {
    let mut h = Harness::new(false);
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let out = h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
    assert_eq!(out, "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
}

#[test]
fn plaintext_networks_may_auth_without_tls() {
    let client = ClientInfo { ip: "10.0.0.5".parse().unwrap(), relay_allowed: false, plaintext_auth: true, tls: None, tls_required: false };
    let mut h = Harness::with(config(), client);
    assert!(h.send(b"EHLO c\r\n").contains("AUTH PLAIN LOGIN"));
    assert_eq!(h.codes(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes()), [235]);
}

#[test]
fn auth_plain_and_login_flows_table() {
    let cases: Vec<(String, Vec<u16>)> = vec![
        (format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")), vec![235]),
        (format!("AUTH PLAIN {}\r\n", b64("alice\0alice\0right")), vec![235]),
        (format!("AUTH PLAIN {}\r\n", b64("\0alice\0wrong")), vec![535]),
        (format!("AUTH PLAIN {}\r\n", b64("bob\0alice\0right")), vec![535]),
        (format!("AUTH PLAIN\r\n{}\r\n", b64("\0alice\0right")), vec![334, 235]),
        (format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64("alice"), b64("right")), vec![334, 334, 235]),
        (format!("AUTH LOGIN {}\r\n{}\r\n", b64("alice"), b64("wrong")), vec![334, 535]),
        ("AUTH PLAIN\r\n*\r\n".into(), vec![334, 501]),
        ("AUTH LOGIN\r\n!!!\r\n".into(), vec![334, 501]),
        ("AUTH CRAM-MD5\r\n".into(), vec![504]),
        (format!("AUTH PLAIN {}\r\nAUTH PLAIN {}\r\n", b64("\0alice\0right"), b64("\0alice\0right")), vec![235, 503]),
        (format!("MAIL FROM:<a@x.org>\r\nAUTH PLAIN {}\r\n", b64("\0alice\0right")), vec![250, 503]),
    ];
    for (input, expected) in cases {
        let mut h = untrusted_over_tls();
        h.send(b"EHLO c\r\n");
        assert_eq!(h.codes(input.as_bytes()), expected, "{input:?}");
    }
}

#[test]
fn a_cancelled_auth_answers_501_5_7_0() {
    let mut h = untrusted_over_tls();
    h.send(b"EHLO c\r\n");
    assert!(h.send(b"AUTH LOGIN\r\n*\r\n").ends_with("501 5.7.0 Authentication cancelled\r\n"));
}

#[test]
fn overlong_auth_lines_are_500_5_5_6() {
    let mut h = untrusted_over_tls();
    h.send(b"EHLO c\r\n");
    let long = format!("AUTH PLAIN {}\r\n", "A".repeat(13000));
    assert!(h.send(long.as_bytes()).starts_with("500 5.5.6"));
    let out = h.send(format!("AUTH PLAIN\r\n{}\r\n", "A".repeat(13000)).as_bytes());
    assert!(out.ends_with("500 5.5.6 Authentication exchange line is too long\r\n"), "{out}");
    assert_eq!(h.codes(b"NOOP\r\n"), [250]);
}

#[test]
fn authentication_grants_relay_to_an_untrusted_client() {
    let mut h = untrusted_over_tls();
    h.send(b"EHLO c\r\n");
    assert_eq!(h.codes(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRSET\r\n"), [250, 550, 250]);
    h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
    assert_eq!(h.codes(b"MAIL FROM:<a@x.org> AUTH=<>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nx\r\n.\r\n"), [250, 250, 354, 250]);
    assert_eq!(h.stored[0].identity.as_deref(), Some("alice"));
    assert_eq!(h.stored[0].tls, Some(tls_info()));
}

#[test]
fn submission_requires_auth_before_mail() {
    let mut cfg = (*config()).clone();
    cfg.require_auth = true;
    let client = ClientInfo {
        ip: "127.0.0.1".parse().unwrap(),
        relay_allowed: true,
        plaintext_auth: false,
        tls: Some(tls_info()),
        tls_required: false,
    };
    let mut h = Harness::with(Arc::new(cfg), client);
    h.send(b"EHLO c\r\n");
    assert_eq!(h.send(b"MAIL FROM:<a@x.org>\r\n"), "530 5.7.0 Authentication required\r\n");
    h.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
    assert_eq!(h.codes(b"MAIL FROM:<a@x.org>\r\n"), [250]);
}

#[test]
fn a_client_that_must_use_tls_gets_530_at_mail_until_starttls() {
    let client = ClientInfo { ip: "10.0.0.9".parse().unwrap(), relay_allowed: true, plaintext_auth: false, tls: None, tls_required: true };
    let mut h = Harness::with(config(), client);
    h.send(b"EHLO c\r\n");
    assert_eq!(h.send(b"MAIL FROM:<a@x.org>\r\n"), "530 5.7.0 Must issue a STARTTLS command first\r\n");
    h.send(b"STARTTLS\r\n");
    h.send(b"EHLO c\r\n");
    assert_eq!(h.codes(b"MAIL FROM:<a@x.org>\r\n"), [250]);
}

#[test]
fn a_tls_only_recipient_is_refused_over_plain_text() {
    let mut h = Harness::new(true);
    h.send(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\n");
    let out = h.send(b"RCPT TO:<ceo@tls-only.test>\r\nRCPT TO:<b@y.org>\r\n");
    assert_eq!(out, "530 5.7.0 Must issue a STARTTLS command first: this recipient requires TLS\r\n250 2.1.5 Recipient OK\r\n");
    let mut t = untrusted_over_tls();
    t.send(b"EHLO c\r\n");
    t.send(format!("AUTH PLAIN {}\r\n", b64("\0alice\0right")).as_bytes());
    assert_eq!(t.codes(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<ceo@tls-only.test>\r\n"), [250, 250]);
}

#[test]
fn recipient_domains_are_checked_in_order_when_configured() {
    let cfg = Arc::new(SessionConfig { check_recipient_domains: true, ..(*config()).clone() });
    let client =
        ClientInfo { ip: "127.0.0.1".parse().unwrap(), relay_allowed: true, plaintext_auth: false, tls: None, tls_required: false };
    let mut h = Harness::with(cfg, client);
    // Pipelined: each RCPT waits for its verdict, the replies stay in order, the session goes on.
    let codes = h.codes(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@null.test>\r\nRCPT TO:<c@ok.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(codes, [250, 250, 556, 250, 250, 354, 250]);
    let rcpts: Vec<String> = h.stored[0].recipients.iter().map(|r| r.mailbox.to_string()).collect();
    assert_eq!(rcpts, ["c@ok.test", "postmaster@relay.test"]);
}

#[test]
fn requiretls_is_offered_and_accepted_only_over_tls() {
    let mut h = Harness::new(true);
    let plain = h.send(b"EHLO c\r\nMAIL FROM:<a@x.test> REQUIRETLS\r\n");
    assert!(!plain.contains("250-REQUIRETLS") && !plain.contains("250 REQUIRETLS"), "{plain}");
    assert!(plain.ends_with("530 5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS first\r\n"), "{plain}");
    h.send(b"STARTTLS\r\n");
    let secure = h.send(b"EHLO c\r\nMAIL FROM:<a@x.test> REQUIRETLS\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(secure.contains("250-REQUIRETLS\r\n"), "{secure}");
    assert!(h.stored[0].params.requiretls);
}

#[test]
fn a_recipient_given_twice_is_kept_once() {
    let mut h = Harness::new(true);
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<b@Y.ORG>\r\nRCPT TO:<B@y.org>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(out.matches("250 2.1.5").count(), 3, "{out}");
    let kept: Vec<String> = h.stored[0].recipients.iter().map(|r| r.mailbox.to_string()).collect();
    assert_eq!(kept, ["b@y.org", "B@y.org"], "the local part counts as given");
}

#[test]
fn recipients_over_the_limit_use_up_the_error_budget() {
    let cfg = Arc::new(SessionConfig { max_errors: 5, ..(*config()).clone() });
    let mut h = Harness::with(
        cfg,
        ClientInfo { ip: "127.0.0.1".parse().unwrap(), relay_allowed: true, plaintext_auth: false, tls: None, tls_required: false },
    );
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x.org>\r\n".to_vec();
    for i in 0..100 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@y.org>\r\n").as_bytes());
    }
    let out = h.send(&input);
    assert_eq!(out.matches("452 4.5.3").count(), 5, "{out}");
    assert!(out.trim_end().ends_with("421 4.7.0 Too many errors, closing connection"), "{out}");
    assert!(h.session.is_closed());
}

#[test]
fn a_nul_in_the_body_is_refused_5_6_0_and_the_session_goes_on() {
    let mut h = Harness::new(true);
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\nx\0y\r\n\0.\r\n.\r\nNOOP\r\n");
    assert!(out.contains("550 5.6.0 NUL characters are not allowed"), "{out}");
    assert!(out.trim_end().ends_with("250 2.0.0 OK"), "the dot after the NUL line was not an end: {out}");
    assert!(h.stored.is_empty());
}
