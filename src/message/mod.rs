//! Pure work on message content (no I/O): what the relay reads in, adds to or changes in a
//! message it carries.

pub mod date;
pub mod downgrade;
/// `sendmail -t`: the envelope from header fields (draft-levine-rfc6409bis section 5).
pub mod extract;
/// Submission fix-ups: Bcc removed, an empty Bcc where no To or Cc remains.
pub mod submission;
/// Trace fields: Received, and the Message-ID and Date a message lacks.
pub mod trace;

/// Where the header section ends, found line by line as a message arrives: at the empty line,
/// or at the first line that is neither a field nor a folded continuation (the rule of
/// `submission::header_fields`, which the header work uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEnd {
    /// The section ends at this offset (the empty line or the first body line starts here).
    At(usize),
    /// Not yet: every complete line so far is a field; scanning resumes at this offset.
    Open(usize),
}

/// Scans `message` from `from` (a line start, as returned by an earlier `Open`).
pub fn header_end(message: &[u8], from: usize) -> HeaderEnd {
    let mut pos = from;
    while let Some(i) = memchr::memchr(b'\n', &message[pos..]) {
        let end = pos + i + 1;
        let line = &message[pos..end];
        let folded = line.first().is_some_and(|&c| c == b' ' || c == b'\t');
        // A continuation needs a field before it (every line before `pos` was one).
        let continues = if folded { pos > 0 } else { memchr::memchr(b':', line).is_some() && line != b"\r\n" };
        if !continues {
            return HeaderEnd::At(pos);
        }
        pos = end;
    }
    HeaderEnd::Open(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_section_ends_at_the_empty_line_or_the_first_line_that_is_no_field() {
        let m = b"Subject: a\r\n b\r\nTo: x\r\n\r\nbody: not a field\r\n";
        assert_eq!(header_end(m, 0), HeaderEnd::At(23));
        assert_eq!(header_end(b"hello\r\nSubject: x\r\n", 0), HeaderEnd::At(0));
        assert_eq!(header_end(b"\r\nbody\r\n", 0), HeaderEnd::At(0));
        assert_eq!(header_end(b" folded first\r\n", 0), HeaderEnd::At(0), "a continuation needs a field before it");
        // Incomplete: resumes at the start of the unfinished line.
        assert_eq!(header_end(b"Subject: a\r\nTo: par", 0), HeaderEnd::Open(12));
        assert_eq!(header_end(b"Subject: a\r\nTo: part\r\n\r\n", 12), HeaderEnd::At(22));
    }

    #[test]
    fn it_agrees_with_the_header_work_on_where_the_body_starts() {
        for m in [&b"A: 1\r\nB: 2\r\n\r\nx"[..], b"A: 1\r\nnot a field\r\n", b"\r\n", b"A: 1\r\n\tmore\r\n\r\n", b"x\r\n", b" a: b\r\n"] {
            let (_, body_start) = submission::header_fields(m);
            assert_eq!(header_end(m, 0), HeaderEnd::At(body_start), "{:?}", String::from_utf8_lossy(m));
        }
    }
}
