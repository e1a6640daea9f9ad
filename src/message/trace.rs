//! Trace and fix-up header fields added at intake: Received (RFC 5321 4.4, RFC 3848),
//! Message-ID and Date when missing (RFC 5322 3.6), and hop counting for loop detection.
//! Pure functions over the message bytes; the clock is passed in.

use std::fmt::Write;
use std::net::IpAddr;

use super::date::rfc5322_date;
use crate::smtp::address::Mailbox;
use crate::smtp::server::TlsInfo;

/// What the header section of a message contains, as far as intake cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    pub received: usize,
    pub message_id: Option<String>,
    pub has_date: bool,
    /// `TLS-Required: No` (RFC 8689 5): the sender asks that recipient-side TLS policy be
    /// ignored for this message.
    pub tls_required_no: bool,
}

/// The longest Message-ID kept (a text line's limit, RFC 5322 2.1.1): it goes into the
/// envelope, the log and every accounting record of the message, so a client's 256 KiB of
/// folded header must not.
pub const MAX_MESSAGE_ID: usize = 998;

fn cap(id: &mut String) {
    if id.len() > MAX_MESSAGE_ID {
        let mut end = MAX_MESSAGE_ID;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        id.truncate(end);
    }
}

/// Scans the header section (up to the first empty line) for field names.
pub fn scan_headers(body: &[u8]) -> HeaderFacts {
    let mut facts = HeaderFacts::default();
    let mut pos = 0;
    let mut last_was_message_id = false;
    while pos < body.len() {
        let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i + 1);
        let line = &body[pos..end];
        pos = end;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            // Folded continuation of the previous field.
            if last_was_message_id && let Some(id) = facts.message_id.as_mut() {
                id.push_str(String::from_utf8_lossy(line).trim());
                cap(id);
            }
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            break;
        };
        let name = &line[..colon];
        last_was_message_id = name.eq_ignore_ascii_case(b"Message-ID");
        if name.eq_ignore_ascii_case(b"Received") {
            facts.received += 1;
        } else if last_was_message_id {
            let mut id = String::from_utf8_lossy(&line[colon + 1..]).trim().to_string();
            cap(&mut id);
            facts.message_id = Some(id);
        } else if name.eq_ignore_ascii_case(b"Date") {
            facts.has_date = true;
        } else if name.eq_ignore_ascii_case(b"TLS-Required") {
            facts.tls_required_no = String::from_utf8_lossy(&line[colon + 1..]).trim().eq_ignore_ascii_case("no");
        }
    }
    facts
}

/// The facts a Received field records.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    /// RFC 3848 / RFC 6531 protocol name: SMTP, ESMTP, UTF8SMTP.
    pub protocol: &'static str,
    pub queue_id: &'a str,
    /// Named only when the message has exactly one recipient, so Bcc recipients never leak.
    pub single_recipient: Option<&'a Mailbox>,
    pub unix_time: u64,
    /// TLS version and cipher, written as a comment (RFC 3848 names the protocol only).
    pub tls: Option<&'a TlsInfo>,
    /// The authenticated user, only when the operator asked for it in Received.
    pub identity: Option<&'a str>,
}

/// Builds the Received field, plus Message-ID and Date when the message lacks them.
pub fn prefix_fields(trace: &Trace<'_>, facts: &HeaderFacts) -> String {
    let mut out = String::with_capacity(256);
    let ip = match trace.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPv6:{v6}"),
        },
    };
    let date = rfc5322_date(trace.unix_time);
    let _ = write!(
        out,
        "Received: from {} ([{ip}])\r\n\tby {} (Sluice) with {} id {}",
        escape_helo(trace.helo),
        trace.hostname,
        trace.protocol,
        trace.queue_id
    );
    if let Some(tls) = trace.tls {
        let _ = write!(out, "\r\n\t(using {} with cipher {})", clean_comment(&tls.version), clean_comment(&tls.cipher));
    }
    if let Some(user) = trace.identity {
        let _ = write!(out, "\r\n\t(authenticated as {})", clean_comment(user));
    }
    if let Some(name) = trace.tls.and_then(|t| t.certificate_identity.as_deref()) {
        let _ = write!(out, "\r\n\t(client certificate {})", clean_comment(name));
    }
    if let Some(rcpt) = trace.single_recipient {
        let _ = write!(out, "\r\n\tfor <{rcpt}>");
    }
    end_received(&mut out, &date, trace.queue_id, trace.hostname, facts);
    out
}

/// Ends a Received field with its date, and adds Message-ID and Date when the message has none.
fn end_received(out: &mut String, date: &str, queue_id: &str, hostname: &str, facts: &HeaderFacts) {
    let _ = write!(out, "; {date}\r\n");
    if facts.message_id.is_none() {
        let _ = write!(out, "Message-ID: <{queue_id}@{hostname}>\r\n");
    }
    if !facts.has_date {
        let _ = write!(out, "Date: {date}\r\n");
    }
}

/// Received (plus Message-ID and Date when missing) for mail a local user submitted.
pub fn local_prefix(
    hostname: &str,
    queue_id: &str,
    user: &str,
    uid: u32,
    single: Option<&Mailbox>,
    unix_time: u64,
    facts: &HeaderFacts,
) -> String {
    let date = rfc5322_date(unix_time);
    let mut out = format!("Received: by {hostname} (Sluice) with local id {queue_id}\r\n\t(from user {} uid {uid})", clean_comment(user));
    if let Some(rcpt) = single {
        let _ = write!(out, "\r\n\tfor <{rcpt}>");
    }
    end_received(&mut out, &date, queue_id, hostname, facts);
    out
}

/// The HELO argument was syntax-checked, but it is client text: keep only characters that
/// cannot end the comment, fold the field or smuggle another header.
fn escape_helo(helo: &str) -> String {
    helo.chars().map(|c| if c.is_ascii_alphanumeric() || ".-:[]".contains(c) { c } else { '?' }).collect()
}

/// Text inside a Received comment: nothing that could close it or break the line.
fn clean_comment(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || "._@+-=".contains(c) { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_giant_folded_message_id_is_cut_to_a_line() {
        let mut head = b"Message-ID: <a".to_vec();
        for _ in 0..10_000 {
            head.extend_from_slice(b"\r\n\txxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\xc3\xa9");
        }
        head.extend_from_slice(b">\r\n\r\nbody");
        let id = super::scan_headers(&head).message_id.unwrap();
        assert!(id.len() <= super::MAX_MESSAGE_ID && id.len() > 900 && id.starts_with("<a"), "{}", id.len());
    }
    use super::*;

    #[test]
    fn scans_header_section_only() {
        let msg = b"Received: a\r\nreceived: b\r\n\tfolded\r\nMessage-ID:\r\n <x@y>\r\nDate: now\r\n\r\nReceived: in body\r\n";
        let f = scan_headers(msg);
        assert_eq!(f.received, 2);
        assert_eq!(f.message_id.as_deref(), Some("<x@y>"));
        assert!(f.has_date);
        assert_eq!(scan_headers(b"Subject: x\r\n\r\n"), HeaderFacts::default());
    }

    fn trace<'a>(rcpt: Option<&'a Mailbox>, helo: &'a str) -> Trace<'a> {
        Trace {
            helo,
            client_ip: "::ffff:192.0.2.7".parse().unwrap(),
            hostname: "relay.test",
            protocol: "ESMTP",
            queue_id: "0ABC",
            single_recipient: rcpt,
            unix_time: 0,
            tls: None,
            identity: None,
        }
    }

    #[test]
    fn received_names_one_recipient_only_when_there_is_exactly_one() {
        let m = Mailbox { local: "u".into(), domain: "d.org".into() };
        let with = prefix_fields(
            &trace(Some(&m), "c.test"),
            &HeaderFacts { has_date: true, message_id: Some("<a@b>".into()), ..Default::default() },
        );
        assert_eq!(
            with,
            "Received: from c.test ([192.0.2.7])\r\n\tby relay.test (Sluice) with ESMTP id 0ABC\r\n\tfor <u@d.org>; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let without = prefix_fields(&trace(None, "c.test"), &HeaderFacts::default());
        assert!(!without.contains("for <"));
        assert!(without.contains("Message-ID: <0ABC@relay.test>\r\n"));
        assert!(without.contains("Date: Thu, 1 Jan 1970"));
    }

    #[test]
    fn received_carries_tls_and_optionally_the_identity_as_comments() {
        let tls = TlsInfo { version: "TLSv1.3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into(), certificate_identity: None };
        let mut t = trace(None, "c.test");
        t.tls = Some(&tls);
        t.identity = Some("al)ice\r\n");
        let out = prefix_fields(&t, &HeaderFacts { has_date: true, message_id: Some("<a@b>".into()), ..Default::default() });
        assert!(out.contains("\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\t(authenticated as al?ice??); "), "{out}");
    }

    #[test]
    fn helo_text_cannot_break_the_field() {
        let out = prefix_fields(&trace(None, "bücher.de)\r\nX: y"), &HeaderFacts::default());
        assert!(out.starts_with("Received: from b?cher.de???X:?y ([192.0.2.7])"), "{out}");
    }
}
