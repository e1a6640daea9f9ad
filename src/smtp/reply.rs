//! SMTP replies with enhanced status codes (RFC 5321 4.2, RFC 2034/3463/5248).
//!
//! The server writes them; the delivery client (a later issue) parses them.

use std::fmt;

/// An enhanced status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One reply: a code, an optional enhanced code, and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Self {
        Reply { code, enhanced: Some(enhanced), lines: vec![text.into()] }
    }

    /// A reply without an enhanced code (greeting, HELO/EHLO: RFC 2034 section 3).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply { code, enhanced: None, lines }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Whether the session ends after this reply (421 always closes, RFC 5321 3.8).
    pub fn closes(&self) -> bool {
        self.code == 421
    }

    /// Appends the wire form: `code-` on every line but the last, `code ` on the last.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
            return;
        }
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = sanitize(line);
            match self.enhanced {
                Some(e) => out.extend_from_slice(format!("{}{sep}{e} {line}\r\n", self.code).as_bytes()),
                None => out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes()),
            }
        }
    }

    /// A short label for refusals, used to count rejections by reason.
    pub fn reason(&self) -> &'static str {
        let e = self.enhanced.unwrap_or(Enhanced(0, 0, 0));
        match (self.code, e.1, e.2) {
            (550, 7, 1) => "relay_denied",
            (554, 4, 6) => "too_many_hops",
            (552, 3, 4) => "too_big",
            (452, 5, 3) => "too_many_recipients",
            (452, 3, 1) => "disk_full",
            (451, 3, 0) | (421, 3, 0) => "spool_error",
            (550, 6, 0) => "bad_message_data",
            (553, _, _) => "bad_address",
            (555, _, _) | (501, _, _) => "bad_arguments",
            (503, _, _) => "bad_sequence",
            (554, 5, 1) => "no_valid_recipients",
            (421, 4, 2) => "timeout",
            (530, 7, 0) => "auth_required",
            (538, 7, 11) => "encryption_required",
            (535, 7, 8) => "auth_failed",
            (421, 7, 0) if self.lines.first().is_some_and(|l| l.contains("authentication")) => "auth_locked_out",
            (421, _, _) => "closing",
            (500, _, _) | (502, _, _) => "syntax",
            _ => "other",
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.lines.join(" / ");
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, text),
            None => write!(f, "{} {}", self.code, text),
        }
    }
}

/// Reply text may echo client input; a CR or LF there would forge extra reply lines.
fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b == b'\r' || b == b'\n') { text.replace(['\r', '\n'], " ").into() } else { text.into() }
}

/// The replies the server session uses, named by meaning so call sites read as policy.
pub mod codes {
    use super::{Enhanced as E, Reply};

    pub fn ok() -> Reply {
        Reply::new(250, E(2, 0, 0), "OK")
    }
    pub fn sender_ok() -> Reply {
        Reply::new(250, E(2, 1, 0), "Sender OK")
    }
    pub fn recipient_ok() -> Reply {
        Reply::new(250, E(2, 1, 5), "Recipient OK")
    }
    pub fn start_data() -> Reply {
        Reply::new(354, E(2, 0, 0), "End data with <CR><LF>.<CR><LF>")
    }
    pub fn queued(queue_id: &str) -> Reply {
        Reply::new(250, E(2, 0, 0), format!("OK queued as {queue_id}"))
    }
    pub fn chunk_ok(octets: u64) -> Reply {
        Reply::new(250, E(2, 0, 0), format!("{octets} octets received"))
    }
    pub fn bye() -> Reply {
        Reply::new(221, E(2, 0, 0), "Bye")
    }
    pub fn vrfy() -> Reply {
        Reply::new(252, E(2, 5, 0), "Cannot VRFY user, but will accept message and attempt delivery")
    }
    pub fn help() -> Reply {
        Reply::new(214, E(2, 0, 0), "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT")
    }
    pub fn bad_sequence(text: &str) -> Reply {
        Reply::new(503, E(5, 5, 1), text)
    }
    pub fn syntax(text: &str) -> Reply {
        Reply::new(500, E(5, 5, 2), text)
    }
    pub fn not_implemented(text: &str) -> Reply {
        Reply::new(502, E(5, 5, 1), text)
    }
    pub fn bad_arguments(text: &str) -> Reply {
        Reply::new(501, E(5, 5, 4), text)
    }
    pub fn bad_parameter(text: &str) -> Reply {
        Reply::new(555, E(5, 5, 4), text)
    }
    pub fn bad_address(text: &str) -> Reply {
        Reply::new(553, E(5, 1, 3), text)
    }
    pub fn too_big() -> Reply {
        Reply::new(552, E(5, 3, 4), "Message size exceeds fixed maximum message size")
    }
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, E(4, 5, 3), "Too many recipients")
    }
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, E(5, 5, 1), "No valid recipients")
    }
    pub fn relay_denied() -> Reply {
        Reply::new(550, E(5, 7, 1), "Relaying denied")
    }
    pub fn too_many_hops() -> Reply {
        Reply::new(554, E(5, 4, 6), "Too many hops (mail loop?)")
    }
    pub fn bad_line_endings() -> Reply {
        Reply::new(550, E(5, 6, 0), "Bare CR or LF in message; lines must end with CRLF")
    }
    pub fn data_line_too_long() -> Reply {
        Reply::new(550, E(5, 6, 0), "Message line too long")
    }
    pub fn closing(text: &str) -> Reply {
        Reply::new(421, E(4, 7, 0), text)
    }
    pub fn timeout() -> Reply {
        Reply::new(421, E(4, 4, 2), "Timeout waiting for input, closing connection")
    }
    pub fn spool_failed() -> Reply {
        Reply::new(451, E(4, 3, 0), "Local error storing message, try again later")
    }
    pub fn spool_unavailable() -> Reply {
        Reply::new(421, E(4, 3, 0), "Mail system unavailable (spool error), closing connection")
    }
    pub fn disk_full() -> Reply {
        Reply::new(452, E(4, 3, 1), "Insufficient system storage, try again later")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_single_line_with_enhanced_code() {
        assert_eq!(codes::relay_denied().to_bytes(), b"550 5.7.1 Relaying denied\r\n");
    }

    #[test]
    fn writes_multiline_without_enhanced_code() {
        let r = Reply::plain(250, vec!["host".into(), "PIPELINING".into(), "DSN".into()]);
        assert_eq!(r.to_bytes(), b"250-host\r\n250-PIPELINING\r\n250 DSN\r\n");
    }

    #[test]
    fn strips_line_breaks_from_echoed_text() {
        let r = Reply::new(501, Enhanced(5, 5, 4), "bad\r\n250 forged");
        assert_eq!(r.to_bytes(), b"501 5.5.4 bad  250 forged\r\n");
    }
}
