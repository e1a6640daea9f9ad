//! Delivery status notifications (RFC 3464, RFC 3461): one multipart/report per event,
//! listing every recipient the sender is to hear about from it (failed, delayed, relayed).
//! Pure: the clock and ids are passed in.

use std::fmt::Write;

use super::outcome::{Action, Diagnostic, Notice, STORED_LINES, STORED_OCTETS};
use crate::message::date::rfc5322_date;
use crate::smtp::address::Ret;
use crate::spool::Envelope;

/// Originals larger than this are returned as headers only when RET was not given.
const FULL_RETURN_LIMIT: usize = 100 * 1024;

/// Whether the sender asked to hear about this recipient's failure (NOTIFY default: FAILURE).
pub fn wants_failure_notice(env: &Envelope, index: usize) -> bool {
    env.recipients[index].params.notify.is_none_or(|n| n.failure)
}

pub struct Report<'a> {
    pub hostname: &'a str,
    /// The report's own queue id (for Message-ID and the boundary).
    pub queue_id: &'a str,
    pub to: String,
    pub now: u64,
    /// For delay notices: when delivery will be given up (unix seconds).
    pub retry_until: Option<u64>,
}

/// RFC 3461 4 xtext: `+XX` escapes.
fn xtext_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Bytes, not str slices: a slice inside a multi-byte character would panic.
        if b[i] == b'+'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds the report (CRLF line ends) for `notices` of `env`.
pub fn report(b: &Report<'_>, env: &Envelope, notices: &[Notice], original: &[u8]) -> Vec<u8> {
    let date = rfc5322_date(b.now);
    let any = |a: Action| notices.iter().any(|n| n.action == a);
    let (subject, intro) = if any(Action::Failed) {
        ("Undelivered Mail Returned to Sender", "Your message could not be delivered to one or more recipients.")
    } else if any(Action::Delayed) {
        (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered yet to one or more recipients.\r\nDelivery will be retried; you need not send it again.",
        )
    } else {
        ("Successful Mail Delivery Report", "Your message was relayed to a server that sends no delivery notices.")
    };
    let boundary = format!("{}/{}", b.queue_id, b.hostname);
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{id}@{host}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n",
        host = b.hostname,
        to = b.to,
        id = b.queue_id,
    );
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis is the mail system at {host}.\r\n\r\n{intro}\r\n\r\n",
        host = b.hostname
    );
    for f in notices {
        let r = &env.recipients[f.index];
        let _ = write!(m, "<{}>: {}\r\n", r.mailbox, f.reply.summary(STORED_LINES, STORED_OCTETS));
        if let (Diagnostic::Remote(said), Some(host)) = (&f.diagnostic, &f.remote)
            && said != &f.reply
        {
            let _ = write!(m, "    {host} said: {}\r\n", said.summary(STORED_LINES, STORED_OCTETS));
        }
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; {}\r\nX-Sluice-Queue-ID: {}\r\n",
        b.hostname, env.queue_id
    );
    if let Some(envid) = &env.params.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", xtext_decode(envid));
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", rfc5322_date(env.arrival));
    for f in notices {
        let r = &env.recipients[f.index];
        let status = f.reply.enhanced.map(|e| e.to_string()).unwrap_or_else(|| format!("{}.0.0", f.reply.code / 100));
        let action = match f.action {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        };
        let _ = write!(m, "\r\nFinal-Recipient: rfc822; {}\r\n", r.mailbox);
        if let Some(orcpt) = &r.params.orcpt
            && let Some((kind, addr)) = orcpt.split_once(';')
        {
            let _ = write!(m, "Original-Recipient: {kind}; {}\r\n", xtext_decode(addr));
        }
        let _ = write!(m, "Action: {action}\r\nStatus: {status}\r\n");
        if let Some(remote) = &f.remote {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", mta_name(remote));
        }
        let diagnostic = match &f.diagnostic {
            Diagnostic::Remote(reply) => format!("smtp; {}", reply.summary(STORED_LINES, STORED_OCTETS)),
            Diagnostic::Local(text) => format!("X-Sluice; {text}"),
        };
        let _ = write!(m, "{}\r\nLast-Attempt-Date: {date}\r\n", folded("Diagnostic-Code", &diagnostic));
        if let (Action::Delayed, Some(until)) = (f.action, b.retry_until) {
            let _ = write!(m, "Will-Retry-Until: {}\r\n", rfc5322_date(until));
        }
    }
    // The whole original only with a failure, and then as RET asks; otherwise the headers.
    // A REQUIRETLS message's content goes back only as headers: the report itself travels
    // without REQUIRETLS (RFC 8689 5).
    // An original that no 7-bit next hop could take (see `message::downgrade`) would make the
    // report itself undeliverable there: then it goes back as headers, with any 8-bit octet
    // in them made '?' (the report must reach the sender; the headers say which message).
    let unconvertible = !original.is_ascii() && crate::message::downgrade::to_seven_bit(original).is_err();
    let headers_only = env.params.requiretls
        || unconvertible
        || match (any(Action::Failed), env.params.ret) {
            (false, _) | (true, Some(Ret::Hdrs)) => true,
            (true, Some(Ret::Full)) => false,
            (true, None) => original.len() > FULL_RETURN_LIMIT,
        };
    let mut out = m.into_bytes();
    if headers_only {
        let end = find_header_end(original);
        out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes());
        let start = out.len();
        out.extend_from_slice(&original[..end]);
        if unconvertible {
            out[start..].iter_mut().filter(|b| !b.is_ascii()).for_each(|b| *b = b'?');
        }
    } else {
        out.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes());
        out.extend_from_slice(original);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// A host for Remote-MTA: its name, or an address in brackets when only that is known.
fn mta_name(host: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() { format!("[{host}]") } else { host.to_string() }
}

/// `name: value`, folded at spaces so no line passes 78 octets where it can be helped.
fn folded(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for word in value.split(' ') {
        if line + 1 + word.len() > 78 && line > 1 {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + word.len();
    }
    out
}

/// The header section, up to and including the empty line (or everything if there is none).
fn find_header_end(message: &[u8]) -> usize {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{MailParams, Mailbox, Notify, RcptParams};
    use crate::smtp::reply::{Enhanced, Reply};
    use crate::spool::{Identity, RecipientRecord, RecipientState};

    fn env(ret: Option<Ret>) -> Envelope {
        let rcpt = |l: &str, orcpt: Option<&str>, notify: Option<Notify>| RecipientRecord {
            mailbox: Mailbox { local: l.into(), domain: "y.test".into() },
            params: RcptParams { notify, orcpt: orcpt.map(str::to_string), rrvs: None },
            state: RecipientState::Failed,
            attempts: 1,
            last_reply: None,
            next_attempt: None,
            delay_notified: false,
            history: Vec::new(),
        };
        Envelope {
            queue_id: "ORIG".into(),
            from: Some(Mailbox { local: "a".into(), domain: "x.test".into() }),
            params: MailParams { ret, envid: Some("env+2Bid".into()), ..MailParams::default() },
            recipients: vec![
                rcpt("gone", Some("rfc822;gone+2Bx@y.test"), None),
                rcpt("full", None, None),
                rcpt("quiet", None, Some(Notify { never: true, ..Notify::default() })),
            ],
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "c".into(),
            identity: Identity::TrustedNetwork,
            listener: "127.0.0.1:25".parse().unwrap(),
            arrival: 0,
            arrival_ms: None,
            body: None,
            held: false,
            message_id: None,
        }
    }

    fn notice(index: usize, action: Action, reply: Reply, remote: Option<&str>) -> Notice {
        let diagnostic = if remote.is_some() { Diagnostic::Remote(reply.clone()) } else { Diagnostic::Local(reply.to_string()) };
        Notice { index, action, reply, diagnostic, remote: remote.map(str::to_string) }
    }

    fn failures() -> Vec<Notice> {
        vec![
            notice(0, Action::Failed, Reply::new(550, Enhanced(5, 1, 1), "no such user"), Some("mx.y.test")),
            notice(1, Action::Failed, Reply::new(552, Enhanced(5, 2, 2), "mailbox full"), None),
        ]
    }

    fn text(ret: Option<Ret>, original: &[u8]) -> String {
        let b = Report { hostname: "relay.test", queue_id: "BOUNCE1", to: "<a@x.test>".into(), now: 60, retry_until: None };
        String::from_utf8(report(&b, &env(ret), &failures(), original)).unwrap()
    }

    #[test]
    fn delay_and_relayed_notices_carry_their_action_and_headers_only() {
        let notices = vec![
            notice(0, Action::Delayed, Reply::new(451, Enhanced(4, 4, 1), "no answer"), None),
            notice(1, Action::Relayed, Reply::new(250, Enhanced(2, 0, 0), "ok"), Some("old.test")),
        ];
        let b = Report { hostname: "relay.test", queue_id: "D1", to: "<a@x.test>".into(), now: 60, retry_until: Some(86400) };
        let t = String::from_utf8(report(&b, &env(Some(Ret::Full)), &notices, b"Subject: hi\r\n\r\nsecret\r\n")).unwrap();
        assert!(t.contains("Subject: Delayed Mail (still being retried)"), "{t}");
        assert!(t.contains("Action: delayed\r\nStatus: 4.4.1\r\n"), "{t}");
        assert!(t.contains("Will-Retry-Until: Fri, 2 Jan 1970 00:00:00 +0000"), "{t}");
        assert!(t.contains("Action: relayed\r\nStatus: 2.0.0\r\nRemote-MTA: dns; old.test"), "{t}");
        assert!(t.contains("text/rfc822-headers") && !t.contains("secret"), "headers only without a failure");
    }

    #[test]
    fn the_report_carries_every_rfc3464_field() {
        let t = text(None, b"Subject: hi\r\n\r\nbody\r\n");
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied\r\n",
            "Reporting-MTA: dns; relay.test\r\n",
            "Original-Envelope-Id: env+id\r\n",
            "Arrival-Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n",
            "Final-Recipient: rfc822; gone@y.test\r\nOriginal-Recipient: rfc822; gone+x@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\nLast-Attempt-Date: Thu, 1 Jan 1970 00:01:00 +0000\r\n",
            "Final-Recipient: rfc822; full@y.test\r\nAction: failed\r\nStatus: 5.2.2\r\nDiagnostic-Code: X-Sluice; 552 5.2.2 mailbox full\r\n",
            "Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n",
            "--BOUNCE1/relay.test--\r\n",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        assert_eq!(t.matches("Original-Recipient").count(), 1, "only where ORCPT was given");
        assert!(!t.contains("quiet@y.test"), "only the failures of this event");
    }

    /// A 57 KB, 20-line refusal becomes a short, folded Diagnostic-Code; an expiry names the
    /// remote's last reply as the diagnostic and our verdict in Status and the text.
    #[test]
    fn diagnostics_are_capped_folded_and_say_who_said_them() {
        let huge = Reply::parsed(550, (0..20).map(|i| format!("5.1.1 line {i} {}", "x".repeat(2850))).collect());
        let expired = Reply::new(554, Enhanced(5, 4, 7), "Delivery time expired after 3 attempts");
        let busy = Reply::new(451, Enhanced(4, 2, 1), "mailbox busy");
        let notices = vec![
            notice(0, Action::Failed, huge, Some("mx.y.test")),
            Notice {
                index: 1,
                action: Action::Failed,
                reply: expired,
                diagnostic: Diagnostic::Remote(busy),
                remote: Some("192.0.2.7".into()),
            },
        ];
        let b = Report { hostname: "relay.test", queue_id: "B2", to: "<a@x.test>".into(), now: 60, retry_until: None };
        let t = String::from_utf8(report(&b, &env(Some(Ret::Hdrs)), &notices, b"Subject: hi\r\n\r\nx\r\n")).unwrap();
        assert!(t.len() < 5000, "{} octets", t.len());
        assert!(t.lines().all(|l| l.len() <= 998), "no line over 998 octets");
        let diag = t.split("Diagnostic-Code: ").nth(1).unwrap().split("\r\nLast-Attempt-Date").next().unwrap().replace("\r\n ", " ");
        assert!(diag.starts_with("smtp; 550 5.1.1 line 0 ") && diag.len() < 1000 && diag.ends_with("..."), "{diag}");
        assert!(t.contains("Status: 5.4.7\r\nRemote-MTA: dns; [192.0.2.7]\r\nDiagnostic-Code: smtp; 451 4.2.1 mailbox busy\r\n"), "{t}");
        assert!(
            t.contains("<full@y.test>: 554 5.4.7 Delivery time expired after 3 attempts\r\n    192.0.2.7 said: 451 4.2.1 mailbox busy\r\n"),
            "{t}"
        );
    }

    /// The report must be deliverable to a 7-bit next hop even when the original is not.
    #[test]
    fn an_unconvertible_original_goes_back_as_ascii_headers() {
        let t = text(Some(Ret::Full), "Subject: Grüße\r\n\r\nbody é\r\n".as_bytes());
        assert!(t.is_ascii(), "{t}");
        assert!(t.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: Gr????e\r\n\r\n"), "{t}");
        assert!(!t.contains("body"), "{t}");
    }

    #[test]
    fn ret_hdrs_returns_the_header_section_only() {
        let t = text(Some(Ret::Hdrs), b"Subject: hi\r\n\r\nsecret body\r\n");
        assert!(t.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n\r\n"), "{t}");
        assert!(!t.contains("secret body"));
    }

    #[test]
    fn xtext_decoding_never_panics_on_odd_input() {
        assert_eq!(xtext_decode("a+2Bb"), "a+b");
        assert_eq!(xtext_decode("+é+"), "+é+");
        assert_eq!(xtext_decode("é+2"), "é+2");
    }

    #[test]
    fn notify_never_suppresses_the_notice() {
        let e = env(None);
        assert!(wants_failure_notice(&e, 0));
        assert!(!wants_failure_notice(&e, 2));
    }
}
