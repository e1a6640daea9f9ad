//! Server replies as the delivery client reads them: the same bytes, fed whole or in pieces,
//! give the same replies and the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::reply::{Reply, ReplyParser};

fn read(pieces: &[&[u8]]) -> (Vec<Reply>, bool) {
    let mut parser = ReplyParser::default();
    let mut replies = Vec::new();
    for piece in pieces {
        parser.feed(piece);
        loop {
            match parser.next_reply() {
                Ok(Some(r)) => {
                    assert!((200..600).contains(&r.code));
                    let _ = r.summary(3, 200);
                    replies.push(r);
                }
                Ok(None) => break,
                Err(_) => return (replies, true),
            }
        }
        assert!(parser.consumed() <= parser.fed());
    }
    (replies, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let a = (control as usize) * input.len() / 256;
    let b = a + (input.len() - a) / 2;
    let whole = read(&[input]);
    let pieces = read(&[&input[..a], &input[a..b], &input[b..]]);
    assert_eq!(whole.0, pieces.0);
    // A line too long is seen only once enough has arrived, so only a clean run must agree.
    if !whole.1 {
        assert!(!pieces.1);
    }
});
