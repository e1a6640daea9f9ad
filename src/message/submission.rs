//! Submission fix-ups (RFC 6409 section 8; draft-levine-rfc6409bis 4.1) for authenticated and
//! submission-port mail: Bcc fields are deleted so no recipient learns of the others, and an
//! empty Bcc is added when no To or Cc field remains. Pure: bytes in, bytes out.

/// The rewritten message, or `None` when nothing needs to change (the common case: no copy).
pub fn fix_recipient_headers(message: &[u8]) -> Option<Vec<u8>> {
    let (fields, body_start) = header_fields(message);
    let is = |range: &(usize, usize), name: &[u8]| field_name(&message[range.0..range.1]).eq_ignore_ascii_case(name);
    let has_bcc = fields.iter().any(|f| is(f, b"Bcc"));
    let has_to_or_cc = fields.iter().any(|f| is(f, b"To") || is(f, b"Cc"));
    if !has_bcc && has_to_or_cc {
        return None;
    }
    let mut out = Vec::with_capacity(message.len() + 8);
    for f in fields.iter().filter(|f| !is(f, b"Bcc")) {
        out.extend_from_slice(&message[f.0..f.1]);
    }
    if !has_to_or_cc {
        out.extend_from_slice(b"Bcc:\r\n");
    }
    out.extend_from_slice(&message[body_start..]);
    Some(out)
}

pub(crate) fn field_name(field: &[u8]) -> &[u8] {
    let end = memchr::memchr(b':', field).unwrap_or(field.len());
    field[..end].trim_ascii_end()
}

/// Byte ranges of each header field (with its folded continuation lines and CRLF), and where
/// the rest of the message (the empty line and the body) starts.
pub(crate) fn header_fields(message: &[u8]) -> (Vec<(usize, usize)>, usize) {
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = memchr::memchr(b'\n', &message[pos..]).map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..end];
        let folded = line.first().is_some_and(|&c| c == b' ' || c == b'\t');
        if folded && let Some(last) = fields.last_mut() {
            last.1 = end;
        } else if !folded && memchr::memchr(b':', line).is_some() && line != b"\r\n" {
            fields.push((pos, end));
        } else {
            // The empty line, or a line that is not a header field: the body starts here.
            break;
        }
        pos = end;
    }
    (fields, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(m: &str) -> Option<String> {
        fix_recipient_headers(m.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn removes_bcc_with_its_folded_lines() {
        let m = "From: a@x\r\nTo: b@y\r\nBcc: secret@z,\r\n hidden@z\r\nSubject: s\r\n\r\nBcc: body text stays\r\n";
        assert_eq!(fixed(m).unwrap(), "From: a@x\r\nTo: b@y\r\nSubject: s\r\n\r\nBcc: body text stays\r\n");
    }

    #[test]
    fn adds_empty_bcc_when_no_to_or_cc_remain() {
        assert_eq!(fixed("From: a@x\r\nBCC: s@z\r\n\r\nbody\r\n").unwrap(), "From: a@x\r\nBcc:\r\n\r\nbody\r\n");
        assert_eq!(fixed("From: a@x\r\n\r\nbody\r\n").unwrap(), "From: a@x\r\nBcc:\r\n\r\nbody\r\n");
    }

    #[test]
    fn leaves_ordinary_messages_alone() {
        assert_eq!(fixed("From: a@x\r\nCc: c@y\r\n\r\nbody\r\n"), None);
        assert_eq!(fixed("To: b@y\r\n\r\n"), None);
    }
}
