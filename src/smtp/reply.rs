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
            (554, 5, 0) => "out_of_step",
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

/// Why a server's reply could not be parsed (the connection is unusable after this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    Malformed(String),
    TooLong,
}

/// Longest reply line and whole reply the client accepts; RFC 5321 says 512 per line, but
/// real servers send more, and a bound is all that matters here.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY: usize = 64 * 1024;

/// Incremental parser for server replies (the client side). Bytes past the first reply stay
/// buffered for the next one, so pipelined replies that arrive together are all kept.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// Octets fed over the connection's life.
    fed: u64,
    buf: Vec<u8>,
    pos: usize,
    lines: Vec<String>,
    code: Option<u16>,
    size: usize,
}

impl ReplyParser {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.fed += bytes.len() as u64;
        // Drop what was parsed: on a long-lived pooled connection whose replies arrive split
        // across reads, keeping it would grow the buffer for the connection's life.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a complete reply.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Octets fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Where the replies taken so far end, counted in octets fed.
    pub fn consumed(&self) -> u64 {
        self.fed - self.pending() as u64
    }

    /// The next complete reply, if one has fully arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                // The longest line allowed may be here whole but for its LF (and its CR).
                return if rest.len() > MAX_REPLY_LINE + 1 { Err(ReplyError::TooLong) } else { Ok(None) };
            };
            let raw = &rest[..lf];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            self.pos += lf + 1;
            self.size += line.len();
            if line.len() > MAX_REPLY_LINE || self.size > MAX_REPLY {
                return Err(ReplyError::TooLong);
            }
            let text = String::from_utf8_lossy(line);
            let code: u16 = text
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ReplyError::Malformed(text.chars().take(80).collect()))?;
            if self.code.is_some_and(|c| c != code) {
                return Err(ReplyError::Malformed(format!("reply code changed within a reply: {text}")));
            }
            self.code = Some(code);
            let (last, body) = match line.get(3) {
                None => (true, ""),
                Some(b' ') => (true, text.get(4..).unwrap_or("")),
                Some(b'-') => (false, text.get(4..).unwrap_or("")),
                Some(_) => return Err(ReplyError::Malformed(text.chars().take(80).collect())),
            };
            self.lines.push(body.to_string());
            if last {
                let lines = std::mem::take(&mut self.lines);
                self.code = None;
                self.size = 0;
                return Ok(Some(Reply::parsed(code, lines)));
            }
        }
    }
}

impl Reply {
    /// Builds a received reply, moving a leading enhanced status code (RFC 2034) out of the
    /// text of every line into `enhanced`.
    pub fn parsed(code: u16, lines: Vec<String>) -> Reply {
        let class = (code / 100) as u8;
        let enhanced = lines.first().and_then(|l| parse_enhanced(l)).filter(|e| e.0 == class);
        let lines = match enhanced {
            Some(e) => {
                let prefix = e.to_string();
                lines.into_iter().map(|l| l.strip_prefix(&prefix).map(|r| r.trim_start().to_string()).unwrap_or(l)).collect()
            }
            None => lines,
        };
        Reply { code, enhanced, lines }
    }

    /// The reply as one line of printable ASCII, at most `max_lines` of its lines and about
    /// `max_octets` long: for the spool, logs and bounces, where a server's 57 KB refusal or
    /// its control bytes have no place.
    pub fn summary(&self, max_lines: usize, max_octets: usize) -> String {
        let mut text = match self.enhanced {
            Some(e) => format!("{} {e} ", self.code),
            None => format!("{} ", self.code),
        };
        let lines = self.lines.iter().take(max_lines.max(1));
        text.push_str(&lines.cloned().collect::<Vec<_>>().join(" / "));
        let mut clean: String = text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
        if self.lines.len() > max_lines || clean.len() > max_octets {
            clean.truncate(max_octets.saturating_sub(4));
            clean.push_str(" ...");
        }
        clean
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

/// The enhanced status code a text starts with (`5.1.1 ...`), if any.
pub fn parse_enhanced(text: &str) -> Option<Enhanced> {
    let word = text.split_ascii_whitespace().next()?;
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000).then_some(Enhanced(class, subject, detail))
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
    pub fn header_too_big(limit: usize) -> Reply {
        Reply::new(552, E(5, 3, 4), format!("Message header section exceeds {limit} bytes"))
    }
    /// The intake memory budget could not hold a header section.
    pub fn intake_busy() -> Reply {
        Reply::new(451, E(4, 3, 0), "Too much mail arriving at once, try again later")
    }
    pub fn data_too_long() -> Reply {
        Reply::new(421, E(4, 4, 2), "Message data took too long, closing connection")
    }
    pub fn data_too_slow() -> Reply {
        Reply::new(421, E(4, 4, 2), "Message data arriving too slowly, closing connection")
    }
    /// A client that did not wait for a reply it had to (RFC 2920 3.1); the session closes.
    pub fn out_of_step() -> Reply {
        Reply::new(554, E(5, 5, 0), "Error: SMTP protocol synchronization")
    }
    /// Input before the greeting (RFC 5321 3.1: the client waits for it).
    pub fn spoke_first() -> Reply {
        Reply::new(554, E(5, 5, 0), "Error: SMTP protocol synchronization (input before the greeting)")
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
    fn parses_pipelined_and_multiline_replies_table() {
        let mut p = ReplyParser::default();
        p.feed(b"220-mx.example ESMTP\r\n220 ready\r\n250-mx greets\r\n250-PIPELINING\r\n250 SIZE 1000\r\n550 5.1.1 no such user\r\n25");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!((r.code, r.lines.clone()), (220, vec!["mx.example ESMTP".to_string(), "ready".to_string()]));
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.lines, ["mx greets", "PIPELINING", "SIZE 1000"]);
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!((r.code, r.enhanced, r.lines[0].as_str()), (550, Some(Enhanced(5, 1, 1)), "no such user"));
        assert_eq!(p.next_reply(), Ok(None), "a partial reply waits for more bytes");
        p.feed(b"0 ok\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().code, 250);
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [&b"hello\r\n"[..], b"250-a\r\n251 b\r\n", b"999 x\r\n", b"25x ok\r\n"] {
            let mut p = ReplyParser::default();
            p.feed(bad);
            assert!(p.next_reply().is_err(), "{bad:?}");
        }
        let mut p = ReplyParser::default();
        p.feed(&vec![b'2'; 5000]);
        assert_eq!(p.next_reply(), Err(ReplyError::TooLong));
    }

    #[test]
    fn a_longest_line_split_before_its_lf_is_the_same_as_one_read() {
        let line = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE - 4));
        let mut whole = ReplyParser::default();
        whole.feed(line.as_bytes());
        assert!(whole.next_reply().unwrap().is_some());
        let mut split = ReplyParser::default();
        split.feed(&line.as_bytes()[..line.len() - 1]);
        assert_eq!(split.next_reply(), Ok(None), "the CR is not part of the line's length");
        split.feed(b"\n");
        assert!(split.next_reply().unwrap().is_some());
    }

    #[test]
    fn parsed_replies_do_not_stay_in_the_buffer() {
        // Every read ends inside the next reply, so the buffer is never read to its end.
        let mut p = ReplyParser::default();
        p.feed(b"25");
        for _ in 0..1000 {
            p.feed(b"0 ok\r\n25");
            assert!(p.next_reply().unwrap().is_some());
            assert_eq!(p.next_reply(), Ok(None));
        }
        assert!(p.buf.capacity() < 1024, "the buffer grew to {}", p.buf.capacity());
    }

    #[test]
    fn a_bare_code_line_and_a_mismatched_enhanced_class_are_kept_as_text() {
        let mut p = ReplyParser::default();
        p.feed(b"250\r\n450 5.1.1 odd\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().lines, [""]);
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!((r.enhanced, r.lines[0].as_str()), (None, "5.1.1 odd"));
    }

    #[test]
    fn a_summary_is_short_printable_and_says_it_was_cut() {
        let r = Reply::parsed(550, vec!["5.1.1 first".into(), "second\u{7}é".into(), "third".into()]);
        assert_eq!(r.summary(5, 1000), "550 5.1.1 first / second?? / third");
        assert_eq!(r.summary(2, 1000), "550 5.1.1 first / second?? ...");
        let long = Reply::parsed(550, vec!["x".repeat(5000)]);
        assert_eq!(long.summary(5, 100).len(), 100);
        assert!(long.summary(5, 100).ends_with(" ..."));
    }

    #[test]
    fn strips_line_breaks_from_echoed_text() {
        let r = Reply::new(501, Enhanced(5, 5, 4), "bad\r\n250 forged");
        assert_eq!(r.to_bytes(), b"501 5.5.4 bad  250 forged\r\n");
    }
}
