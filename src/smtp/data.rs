//! Message body reception: DATA with dot-unstuffing and strict CRLF rules, and BDAT chunks.
//!
//! SMTP smuggling is closed here: the end of DATA is only `CRLF . CRLF`. A bare CR or bare LF
//! marks the message as bad, and the receiver keeps reading and discarding until the real end,
//! so no byte of the message can ever be read as a command.

/// Default text line limit without CRLF (RFC 5321 4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A CR or LF that is not part of a CRLF pair.
    BareLineEnding,
    /// A line longer than the configured limit.
    LineTooLong,
    /// The message exceeds the maximum size.
    TooBig,
    /// A NUL byte: RFC 5321 and 6152 allow none without BINARYMIME, and a next hop that drops
    /// them could see an end of data where there was none (`CRLF NUL . CRLF`).
    Nul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the very beginning).
    LineStart,
    /// Saw `.` at the start of a line (DATA only).
    Dot,
    /// Saw `.` CR at the start of a line (DATA only).
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
}

/// Scans body bytes for line-ending violations, limits, and (in DATA mode) the end marker.
#[derive(Debug)]
pub struct BodyScanner {
    state: State,
    dot_mode: bool,
    line_len: usize,
    max_line: usize,
    max_size: usize,
    size: usize,
    violation: Option<Violation>,
}

impl BodyScanner {
    /// A scanner for DATA: dot-unstuffing and `CRLF.CRLF` detection.
    pub fn data(max_size: usize, max_line: usize) -> Self {
        Self::new(true, max_size, max_line)
    }

    /// A scanner for BDAT chunks: no dot handling, the same line rules.
    pub fn chunks(max_size: usize, max_line: usize) -> Self {
        Self::new(false, max_size, max_line)
    }

    fn new(dot_mode: bool, max_size: usize, max_line: usize) -> Self {
        BodyScanner { state: State::LineStart, dot_mode, line_len: 0, max_line, max_size, size: 0, violation: None }
    }

    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Bytes of message received so far (after unstuffing), counted even past the limit.
    pub fn size(&self) -> usize {
        self.size
    }

    fn violate(&mut self, v: Violation) {
        // The first violation decides the reply; later ones change nothing.
        self.violation.get_or_insert(v);
    }

    fn push(&mut self, body: &mut Vec<u8>, bytes: &[u8]) {
        self.size += bytes.len();
        if self.size > self.max_size {
            self.violate(Violation::TooBig);
        }
        if self.violation.is_none() {
            body.extend_from_slice(bytes);
        }
    }

    fn add_line_bytes(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > self.max_line {
            self.violate(Violation::LineTooLong);
        }
    }

    /// Feeds input; appends message bytes to `body` (nothing once a violation is found).
    /// Returns how many input bytes were consumed and whether the DATA end marker was seen.
    /// In DATA mode, bytes after the end marker are not consumed: they are the next commands.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Mid => {
                    // Fast path: copy the run of ordinary bytes up to the next CR, LF or NUL.
                    let run = memchr::memchr3(b'\r', b'\n', 0, &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        self.add_line_bytes(run);
                        self.push(body, &input[i..i + run]);
                        i += run;
                        continue;
                    }
                    if b == 0 {
                        self.violate(Violation::Nul);
                    } else {
                        self.line_ending_byte(b);
                    }
                }
                State::LineStart => {
                    self.line_len = 0;
                    if self.dot_mode && b == b'.' {
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                        continue;
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                    } else {
                        // Dot-stuffed line: the leading dot is dropped (RFC 5321 4.5.2).
                        self.add_line_bytes(1);
                        self.state = State::Mid;
                        continue;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return (i + 1, true);
                    }
                    // ".\r" then something else: a bare CR; the line so far was the dot.
                    self.violate(Violation::BareLineEnding);
                    self.state = State::Mid;
                    continue;
                }
                State::Cr => {
                    if b == b'\n' {
                        self.push(body, b"\r\n");
                        self.state = State::LineStart;
                    } else {
                        self.violate(Violation::BareLineEnding);
                        self.state = State::Mid;
                        continue;
                    }
                }
            }
            i += 1;
        }
        (i, false)
    }

    /// In `Mid`, a CR starts a pair; a LF alone is a violation and does not start a line, so a
    /// following `.` can never end the message.
    fn line_ending_byte(&mut self, b: u8) {
        if b == b'\r' {
            self.state = State::Cr;
        } else {
            self.violate(Violation::BareLineEnding);
        }
    }

    /// BDAT LAST: the message ends where the chunks end. A trailing bare CR is a violation; a
    /// last line without CRLF gets one, so the stored message is well formed.
    pub fn finish_chunks(&mut self, body: &mut Vec<u8>) {
        match self.state {
            State::Cr => self.violate(Violation::BareLineEnding),
            State::Mid => self.push(body, b"\r\n"),
            _ => {}
        }
        self.state = State::LineStart;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_anywhere_fails_the_message_and_the_end_is_still_found() {
        for input in [&b"a\0b\r\n.\r\n"[..], b"\0\r\n.\r\n", b"x\r\n\0.\r\n.\r\n", b".\0\r\n.\r\n"] {
            let (_, n, done, v) = run_data(input);
            assert_eq!((n, done, v), (input.len(), true, Some(Violation::Nul)), "{input:?}");
        }
        let mut s = BodyScanner::chunks(100, 998);
        s.feed(b"in a chunk \0\r\n", &mut Vec::new());
        assert_eq!(s.violation(), Some(Violation::Nul));
    }

    fn run_data(input: &[u8]) -> (Vec<u8>, usize, bool, Option<Violation>) {
        let mut s = BodyScanner::data(1 << 20, MAX_TEXT_LINE);
        let mut body = Vec::new();
        let (n, done) = s.feed(input, &mut body);
        (body, n, done, s.violation())
    }

    #[test]
    fn unstuffs_and_finds_end() {
        let (body, n, done, v) = run_data(b"a\r\n..b\r\n.\r\nQUIT\r\n");
        assert_eq!(body, b"a\r\n.b\r\n");
        assert_eq!(n, 11);
        assert!(done);
        assert_eq!(v, None);
    }

    #[test]
    fn empty_message_ends_at_first_dot_line() {
        let (body, n, done, _) = run_data(b".\r\n");
        assert!(body.is_empty() && done && n == 3);
    }

    #[test]
    fn smuggling_endings_are_not_ends_table() {
        // Each input contains a fake end marker followed by a smuggled command, then nothing.
        let table: [&[u8]; 5] = [
            b"x\n.\nMAIL FROM:<a@b.org>\r\n",
            b"x\n.\r\nMAIL FROM:<a@b.org>\r\n",
            b"x\r.\r\nMAIL FROM:<a@b.org>\r\n",
            b"x\r\n.\rMAIL FROM:<a@b.org>\r\n",
            b"x\r\n\x00.\r\nMAIL FROM:<a@b.org>\r\n",
        ];
        for input in table {
            let (_, n, done, _) = run_data(input);
            assert!(!done, "{input:?} must not end the message");
            assert_eq!(n, input.len(), "everything is consumed as message content");
        }
    }

    #[test]
    fn bare_line_endings_are_violations_table() {
        let table: [&[u8]; 4] = [b"a\nb\r\n.\r\n", b"a\rb\r\n.\r\n", b"a\r\n.\rb\r\n.\r\n", b"\n.\r\n.\r\n"];
        for input in table {
            let (_, _, done, v) = run_data(input);
            assert!(done, "{input:?}");
            assert_eq!(v, Some(Violation::BareLineEnding), "{input:?}");
        }
    }

    #[test]
    fn finds_end_split_across_feeds() {
        let mut s = BodyScanner::data(1 << 20, MAX_TEXT_LINE);
        let mut body = Vec::new();
        for piece in [&b"hello\r"[..], b"\n", b".", b"\r", b"\n"] {
            let (n, done) = s.feed(piece, &mut body);
            assert_eq!(n, piece.len());
            if done {
                assert_eq!(body, b"hello\r\n");
                return;
            }
        }
        panic!("end not found");
    }

    #[test]
    fn enforces_line_and_size_limits() {
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run_data(&long).3, Some(Violation::LineTooLong));
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run_data(&ok).3, None);

        let mut s = BodyScanner::data(10, MAX_TEXT_LINE);
        let mut body = Vec::new();
        let (_, done) = s.feed(b"0123456789\r\nmore\r\n.\r\n", &mut body);
        assert!(done);
        assert_eq!(s.violation(), Some(Violation::TooBig));
        assert!(body.len() <= 10, "nothing is kept past the limit");
    }

    #[test]
    fn chunks_keep_dots_and_terminate_last_line() {
        let mut s = BodyScanner::chunks(1 << 20, MAX_TEXT_LINE);
        let mut body = Vec::new();
        assert_eq!(s.feed(b".\r\nline", &mut body), (7, false));
        s.finish_chunks(&mut body);
        assert_eq!(body, b".\r\nline\r\n");
        assert_eq!(s.violation(), None);
    }
}
