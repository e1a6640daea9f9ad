//! The DATA and BDAT body scanner. The same bytes fed whole or in two pieces must give the same
//! message, end and verdict; a clean message dot-stuffed again must scan back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::client::dot_stuff;
use sluice::smtp::data::BodyScanner;

const MAX_SIZE: usize = 1 << 16;
const MAX_LINE: usize = 200;

fn scan(dot: bool, pieces: &[&[u8]]) -> (Vec<u8>, usize, bool, Option<sluice::smtp::data::Violation>) {
    let mut scanner = if dot { BodyScanner::data(MAX_SIZE, MAX_LINE) } else { BodyScanner::chunks(MAX_SIZE, MAX_LINE) };
    let mut body = Vec::new();
    let mut consumed = 0;
    let mut ended = false;
    for piece in pieces {
        let (n, end) = scanner.feed(piece, &mut body);
        assert!(n <= piece.len());
        consumed += n;
        if end {
            ended = true;
            break;
        }
        assert_eq!(n, piece.len(), "the scanner consumes everything until the end marker");
    }
    if !dot {
        scanner.finish_chunks(&mut body);
    }
    (body, consumed, ended, scanner.violation())
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let dot = control & 1 == 0;
    let split = (control as usize >> 1) * input.len() / 128;
    let split = split.min(input.len());
    let whole = scan(dot, &[input]);
    let parts = scan(dot, &[&input[..split], &input[split..]]);
    // After a violation the message is dropped, and what was kept of it before means nothing.
    assert_eq!((whole.1, whole.2, whole.3), (parts.1, parts.2, parts.3), "splitting the input changed the verdict");
    if whole.3.is_none() {
        assert_eq!(whole.0, parts.0, "splitting the input changed the message");
    }
    let (body, _, ended, violation) = whole;
    if violation.is_none() {
        assert!(body.len() <= MAX_SIZE);
        if dot && ended {
            assert!(body.is_empty() || body.ends_with(b"\r\n"), "a clean DATA body ends with CRLF");
            let mut wire = Vec::new();
            dot_stuff(&body, &mut wire);
            wire.extend_from_slice(b".\r\n");
            let again = scan(true, &[&wire]);
            assert_eq!(again.0, body, "unstuffing what we stuffed gives the message back");
            assert!(again.2 && again.3.is_none());
            assert_eq!(again.1, wire.len());
        }
    }
});
