//! Building an envelope from header fields, as draft-levine-rfc6409bis section 5 says (what
//! `sendmail -t` does): every address of To, Cc and Bcc (group members included) becomes a
//! recipient; Bcc fields are removed, and an empty Bcc is added when no To or Cc remains; the
//! return path is the submitting user's identity, copied to Sender when it differs from From
//! (an existing Sender is replaced). A message without From gets one. Pure: bytes in, bytes out.

use super::submission::{field_name, fix_recipient_headers, header_fields};

/// The addresses of an RFC 5322 address list: `a@b`, `Name <a@b>`, `"x, y" <a@b>`,
/// `group: a@b, c@d;`, comments dropped.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut item = String::new();
    let (mut quoted, mut escaped, mut comment, mut angle) = (false, false, 0usize, false);
    let push = |item: &mut String, out: &mut Vec<String>| {
        let text = item.trim();
        let addr = match (text.find('<'), text.rfind('>')) {
            (Some(a), Some(b)) if a < b => text[a + 1..b].trim(),
            _ => text,
        };
        // A route (`<@a,@b:x@y>`) is obsolete syntax: keep the mailbox.
        let addr = addr.rsplit(':').next().unwrap_or(addr).trim();
        if !addr.is_empty() {
            out.push(addr.to_string());
        }
        item.clear();
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            if comment == 0 {
                item.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '"' => {
                quoted = !quoted;
                item.push(c);
            }
            '<' if !quoted => {
                angle = true;
                item.push(c);
            }
            '>' if !quoted => {
                angle = false;
                item.push(c);
            }
            // A group's display name ends at the colon; its members follow.
            ':' if !quoted && !angle => item.clear(),
            ',' | ';' if !quoted && !angle => push(&mut item, &mut out),
            _ => item.push(c),
        }
    }
    push(&mut item, &mut out);
    out
}

/// The unfolded value of a header field (`Name: value`).
fn value_of(field: &[u8]) -> String {
    let text = String::from_utf8_lossy(field);
    let value = text.split_once(':').map_or("", |(_, v)| v);
    // A bare CR goes too: an address must never carry a line break on to the envelope.
    value.replace(['\r', '\n'], "").trim().to_string()
}

/// What `-t` made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub message: Vec<u8>,
    /// From To, Cc and Bcc (only when asked to extract).
    pub recipients: Vec<String>,
}

/// Applies section 5 to `message`: recipients from To/Cc/Bcc when `extract`, Bcc removed (an
/// empty one added when no To or Cc remains), Sender set to `identity` when it differs from
/// From, and a From (`full_name <identity>`) added when there is none.
pub fn prepare(message: &[u8], extract: bool, identity: &str, full_name: Option<&str>) -> Extracted {
    let (fields, body_start) = header_fields(message);
    // Every address in the fields called `name`.
    let listed = |name: &[u8]| -> Vec<String> {
        fields
            .iter()
            .filter(|f| field_name(&message[f.0..f.1]).eq_ignore_ascii_case(name))
            .flat_map(|f| addresses(&value_of(&message[f.0..f.1])))
            .collect()
    };
    let recipients: Vec<String> =
        if extract { [b"To".as_slice(), b"Cc", b"Bcc"].iter().flat_map(|n| listed(n)).collect() } else { Vec::new() };
    let from = listed(b"From");
    // Everything but Sender (replaced below), in order.
    let mut head = Vec::with_capacity(message.len() + 128);
    for f in fields.iter().filter(|f| !field_name(&message[f.0..f.1]).eq_ignore_ascii_case(b"Sender")) {
        head.extend_from_slice(&message[f.0..f.1]);
    }
    if from.is_empty() {
        let name = full_name.map(|n| format!("\"{}\" ", n.replace(['"', '\\', '\r', '\n'], ""))).unwrap_or_default();
        head.extend_from_slice(format!("From: {name}<{identity}>\r\n").as_bytes());
    } else if !from.iter().any(|f| f.eq_ignore_ascii_case(identity)) {
        head.extend_from_slice(format!("Sender: <{identity}>\r\n").as_bytes());
    }
    head.extend_from_slice(&message[body_start..]);
    let message = fix_recipient_headers(&head).unwrap_or(head);
    Extracted { message, recipients }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_with_names_groups_quotes_and_comments() {
        assert_eq!(addresses("a@x.test"), ["a@x.test"]);
        assert_eq!(addresses("\"Doe, John\" <john@x.test>, jane@x.test (Jane)"), ["john@x.test", "jane@x.test"]);
        assert_eq!(addresses("team: b@x.test, C <c@x.test>;, d@x.test"), ["b@x.test", "c@x.test", "d@x.test"]);
        assert_eq!(addresses("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(addresses("<@relay.test:e@x.test>"), ["e@x.test"]);
        assert_eq!(addresses("\"a:b\" <q@x.test>"), ["q@x.test"]);
    }

    #[test]
    fn no_recipient_carries_a_line_break() {
        let e = prepare(b"To: a@x.test\rb, c@x.test\r\n\r\nbody\r\n", true, "u@relay.test", None);
        assert!(e.recipients.iter().all(|r| !r.contains(['\r', '\n'])), "{:?}", e.recipients);
    }

    fn text(e: &Extracted) -> String {
        String::from_utf8(e.message.clone()).unwrap()
    }

    #[test]
    fn section_5_envelope_from_headers() {
        let m = b"From: Alice <alice@x.test>\r\nSender: forged@x.test\r\nTo: b@y.test, list: c@y.test, d@y.test;\r\nCc: e@y.test\r\nBcc: hidden@y.test\r\nSubject: s\r\n\r\nTo: not@header.test\r\n";
        let e = prepare(m, true, "cron@host.test", None);
        assert_eq!(e.recipients, ["b@y.test", "c@y.test", "d@y.test", "e@y.test", "hidden@y.test"]);
        let t = text(&e);
        assert!(!t.contains("hidden@y.test") && !t.contains("forged"), "{t}");
        assert!(t.contains("Sender: <cron@host.test>\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\nTo: not@header.test\r\n"), "the body is left alone: {t}");
    }

    #[test]
    fn only_bcc_leaves_an_empty_bcc_and_a_missing_from_is_added() {
        let e = prepare(b"Bcc: a@y.test\r\nSubject: s\r\n\r\nbody\r\n", true, "www-data@host.test", Some("Web \"App\""));
        assert_eq!(e.recipients, ["a@y.test"]);
        let t = text(&e);
        assert!(t.contains("Bcc:\r\n") && !t.contains("a@y.test"), "{t}");
        assert!(t.contains("From: \"Web App\" <www-data@host.test>\r\n"), "{t}");
        assert!(!t.contains("Sender:"), "From is the identity: no Sender: {t}");
    }

    #[test]
    fn without_extract_the_headers_give_no_recipients() {
        let e = prepare(b"From: me@host.test\r\nTo: b@y.test\r\n\r\nx\r\n", false, "me@host.test", None);
        assert!(e.recipients.is_empty());
        assert_eq!(text(&e), "From: me@host.test\r\nTo: b@y.test\r\n\r\nx\r\n");
    }
}
