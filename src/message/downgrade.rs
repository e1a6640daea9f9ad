//! 8-bit to 7-bit conversion for a next hop without 8BITMIME (RFC 6152 permits a bounce
//! instead; Postfix converts, and senders expect delivery). Every MIME entity whose body has
//! 8-bit octets is re-encoded quoted-printable (RFC 2045 6.7) and labelled so; multiparts and
//! message/rfc822 parts are walked into; 7-bit entities are left byte for byte as they were.
//!
//! What cannot be converted is refused (the message then bounces 5.6.3): 8-bit octets in a
//! header (that needs SMTPUTF8 or RFC 2047 words chosen by the author), in a multipart's
//! preamble or epilogue, in a body already labelled base64 or quoted-printable (it is broken),
//! or in a message/global part (internationalized mail, RFC 6532).

use std::fmt::Write;

/// Why a message cannot be sent as 7-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconvertible(pub &'static str);

impl std::fmt::Display for Unconvertible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Multiparts nested deeper than this are refused rather than walked (a hostile message could
/// nest thousands).
const MAX_DEPTH: usize = 16;

/// The message (CRLF line ends) with every 8-bit body quoted-printable.
pub fn to_seven_bit(message: &[u8]) -> Result<Vec<u8>, Unconvertible> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 8);
    entity(message, true, 0, &mut out)?;
    Ok(out)
}

fn is_7bit(bytes: &[u8]) -> bool {
    bytes.is_ascii() && !bytes.contains(&0)
}

/// Headers and body of an entity; the blank line between them belongs to the headers.
fn split(entity: &[u8]) -> (&[u8], &[u8]) {
    if entity.starts_with(b"\r\n") {
        return (&entity[..2], &entity[2..]);
    }
    match memchr::memmem::find(entity, b"\r\n\r\n") {
        Some(i) => (&entity[..i + 4], &entity[i + 4..]),
        None => (entity, &[]),
    }
}

/// The unfolded value of the first header field called `name`.
fn header(headers: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut value: Option<String> = None;
    for line in text.split("\r\n") {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((field, rest)) = line.split_once(':')
                    && field.trim().eq_ignore_ascii_case(name)
                {
                    value = Some(rest.to_string());
                }
            }
        }
    }
    value.map(|v| v.trim().to_string())
}

/// `type/subtype` in lower case, and the boundary parameter if any.
fn content_type(headers: &[u8]) -> (String, Option<String>) {
    let Some(value) = header(headers, "Content-Type") else { return ("text/plain".into(), None) };
    let mut parts = value.split(';');
    let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let boundary = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    });
    (kind, boundary)
}

/// The headers without any Content-Transfer-Encoding field (folded lines included), with
/// `encoding` added before the blank line (and MIME-Version at the top level if missing).
fn relabel(headers: &[u8], encoding: &str, top: bool, out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(headers);
    let body = text.strip_suffix("\r\n").unwrap_or(&text);
    let mut skipping = false;
    for line in body.split_inclusive("\r\n") {
        if line.starts_with([' ', '\t']) {
            if !skipping {
                out.extend_from_slice(line.as_bytes());
            }
            continue;
        }
        skipping = line.split_once(':').is_some_and(|(f, _)| f.trim().eq_ignore_ascii_case("Content-Transfer-Encoding"));
        if !skipping && line != "\r\n" {
            out.extend_from_slice(line.as_bytes());
        }
    }
    if top && header(headers, "MIME-Version").is_none() {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    let _ = write!(Bytes(out), "Content-Transfer-Encoding: {encoding}\r\n\r\n");
}

fn entity(data: &[u8], top: bool, depth: usize, out: &mut Vec<u8>) -> Result<(), Unconvertible> {
    if is_7bit(data) {
        out.extend_from_slice(data);
        return Ok(());
    }
    if depth > MAX_DEPTH {
        return Err(Unconvertible("MIME parts nested too deep to convert"));
    }
    let (headers, body) = split(data);
    if !is_7bit(headers) {
        return Err(Unconvertible("8-bit octets in a header field"));
    }
    let (kind, boundary) = content_type(headers);
    let encoding = header(headers, "Content-Transfer-Encoding").unwrap_or_default().to_ascii_lowercase();
    if kind.starts_with("multipart/") {
        let Some(boundary) = boundary else { return Err(Unconvertible("a multipart without a boundary")) };
        relabel(headers, "7bit", top, out);
        return multipart(body, &boundary, depth, out);
    }
    if kind == "message/rfc822" {
        relabel(headers, "7bit", top, out);
        return entity(body, false, depth + 1, out);
    }
    if kind.starts_with("message/") {
        return Err(Unconvertible("an 8-bit message/* part other than message/rfc822"));
    }
    if matches!(encoding.as_str(), "base64" | "quoted-printable") {
        return Err(Unconvertible("8-bit octets in a body labelled base64 or quoted-printable"));
    }
    relabel(headers, "quoted-printable", top, out);
    quoted_printable(body, out);
    Ok(())
}

/// Walks the parts between `--boundary` lines, converting each.
fn multipart(body: &[u8], boundary: &str, depth: usize, out: &mut Vec<u8>) -> Result<(), Unconvertible> {
    let delimiter = format!("--{boundary}");
    let mut lines_at = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i + 1);
        let line = &body[start..end];
        if line.starts_with(delimiter.as_bytes()) {
            let rest = &line[delimiter.len()..];
            let closing = rest.starts_with(b"--");
            if rest.trim_ascii().is_empty() || closing {
                lines_at.push((start, end, closing));
                if closing {
                    break;
                }
            }
        }
        start = end;
    }
    let Some(&(first, _, _)) = lines_at.first() else { return Err(Unconvertible("a multipart whose boundary never appears")) };
    let preamble = &body[..first];
    if !is_7bit(preamble) {
        return Err(Unconvertible("8-bit octets in a multipart preamble"));
    }
    out.extend_from_slice(preamble);
    for (i, &(line_start, line_end, closing)) in lines_at.iter().enumerate() {
        let line = &body[line_start..line_end];
        // What follows a closing delimiter's `--` is copied as it is, like the epilogue.
        if closing && !is_7bit(line) {
            return Err(Unconvertible("8-bit octets in a multipart epilogue"));
        }
        out.extend_from_slice(line);
        if closing {
            let epilogue = &body[line_end..];
            if !is_7bit(epilogue) {
                return Err(Unconvertible("8-bit octets in a multipart epilogue"));
            }
            out.extend_from_slice(epilogue);
            return Ok(());
        }
        // The CRLF before the next delimiter belongs to the delimiter (RFC 2046 5.1.1).
        let next = lines_at.get(i + 1).map_or(body.len(), |n| n.0);
        let part = &body[line_end..next];
        let (part, crlf) = match part.strip_suffix(b"\r\n") {
            Some(p) if lines_at.get(i + 1).is_some() => (p, &b"\r\n"[..]),
            _ => (part, &b""[..]),
        };
        entity(part, false, depth + 1, out)?;
        out.extend_from_slice(crlf);
    }
    Ok(())
}

/// RFC 2045 6.7: CRLF stays a hard line break; `=`, controls and 8-bit octets become `=XX`;
/// space and tab at a line's end too; lines are cut at 76 characters with soft breaks.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = body;
    while !rest.is_empty() {
        let (line, hard_break, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]), true, &rest[i + 1..]),
            None => (rest, false, &[][..]),
        };
        let mut width = 0;
        for (k, &b) in line.iter().enumerate() {
            let at_end = k + 1 == line.len();
            let literal = ((b == b' ' || b == b'\t') && !at_end) || ((33..=126).contains(&b) && b != b'=');
            let need = if literal { 1 } else { 3 };
            if width + need > 75 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            width += need;
        }
        if hard_break {
            out.extend_from_slice(b"\r\n");
        }
        rest = next;
    }
}

/// `write!` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(s: &str) -> String {
        String::from_utf8(to_seven_bit(s.as_bytes()).unwrap()).unwrap()
    }

    /// Decodes quoted-printable, for checking that the conversion keeps the content.
    fn decode_qp(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' && b.get(i + 1) == Some(&b'\r') {
                i += 3;
            } else if b[i] == b'=' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn a_plain_8bit_message_becomes_quoted_printable_with_mime_labels() {
        let text = "Grüße aus Köln = schön\r\nzweite Zeile mit Leerzeichen am Ende \r\n";
        let got = convert(&format!("From: a@x.test\r\nSubject: hi\r\n\r\n{text}"));
        let (headers, body) = got.split_once("\r\n\r\n").unwrap();
        assert_eq!(headers, "From: a@x.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable");
        assert!(body.is_ascii() && body.lines().all(|l| l.len() <= 76), "{body}");
        assert!(body.contains("Gr=C3=BC=C3=9Fe") && body.contains("=3D") && body.contains("Ende=20\r\n"), "{body}");
        assert_eq!(decode_qp(body), text.as_bytes());
    }

    #[test]
    fn long_lines_get_soft_breaks_and_decode_to_the_original() {
        let text = format!("{}\r\n", "é".repeat(200));
        let got = convert(&format!("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}"));
        let body = got.split_once("\r\n\r\n").unwrap().1;
        assert!(body.lines().all(|l| l.len() <= 76));
        assert_eq!(decode_qp(body), text.as_bytes());
        assert_eq!(got.matches("Content-Transfer-Encoding").count(), 1, "the 8bit label is replaced: {got}");
    }

    #[test]
    fn only_the_8bit_parts_of_a_multipart_change() {
        let msg = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nnaïve\r\n--b1--\r\nepilogue\r\n";
        let got = convert(msg);
        assert!(got.is_ascii());
        assert!(got.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b1\r\n"), "{got}");
        assert!(got.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--b1--\r\nepilogue\r\n"), "{got}");
    }

    #[test]
    fn an_attached_message_is_converted_inside() {
        let msg = "Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nfaçade\r\n";
        let got = convert(msg);
        assert!(got.contains("Content-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nfa=C3=A7ade\r\n"), "{got}");
    }

    #[test]
    fn what_cannot_be_converted_is_refused() {
        for msg in [
            "Subject: Grüße\r\n\r\nbody\r\n",
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\u{e9}\r\n",
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n\u{e9}\r\n--b\r\n\r\nx\r\n--b--\r\n",
            "Content-Type: multipart/mixed\r\n\r\n\u{e9}\r\n",
            "Content-Type: message/global\r\n\r\n\u{e9}\r\n",
            // Found by the `message` fuzz target: 8-bit bytes after a closing delimiter's `--`
            // were copied into the "7-bit" result.
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n\u{e9}\r\n--b--\u{e9}\r\n",
        ] {
            assert!(to_seven_bit(msg.as_bytes()).is_err(), "{msg:?}");
        }
    }

    #[test]
    fn a_7bit_message_is_left_byte_for_byte() {
        let msg = "Subject: hi\r\n\r\nplain\r\n";
        assert_eq!(convert(msg), msg);
    }

    #[test]
    fn deep_nesting_is_refused_not_walked() {
        let mut msg = String::from("x\u{e9}\r\n");
        for _ in 0..40 {
            msg = format!("Content-Type: message/rfc822\r\n\r\n{msg}");
        }
        assert!(to_seven_bit(msg.as_bytes()).is_err());
    }
}

#[cfg(test)]
mod never_panics {
    use super::*;

    /// Messages built at random from MIME-ish pieces (and random bytes): the conversion never
    /// panics, and what it returns for an 8-bit message is always 7-bit.
    #[test]
    fn random_mime_never_panics_and_converts_to_7bit() {
        const PIECES: &[&str] = &[
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n",
            "Content-Type: message/rfc822\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "Subject: x\r\n",
            " folded\r\n",
            "\r\n",
            "--b\r\n",
            "--b--\r\n",
            "plain text = with space \r\n",
            "ü\u{e9}\u{7}\r\n",
            "\u{0}",
            "\r",
            "\n",
        ];
        let mut seed: u64 = 0x5eed_1234_abcd_0001;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..20_000 {
            let mut msg = Vec::new();
            for _ in 0..next() % 24 {
                match next() % 8 {
                    0 => msg.extend((0..next() % 40).map(|_| (next() % 256) as u8)),
                    _ => msg.extend_from_slice(PIECES[next() % PIECES.len()].as_bytes()),
                }
            }
            if let Ok(out) = to_seven_bit(&msg) {
                assert!(is_7bit(&out) || is_7bit(&msg), "{:?} -> {:?}", String::from_utf8_lossy(&msg), String::from_utf8_lossy(&out));
            }
        }
    }
}
