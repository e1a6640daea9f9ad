//! One command line, as the server session hands it to the parser (CRLF removed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::command;

fuzz_target!(|line: &[u8]| {
    if let Err(e) = command::parse(line) {
        // Every refusal must make a well-formed reply line.
        let reply = e.reply();
        let bytes = reply.to_bytes();
        assert!(bytes.ends_with(b"\r\n") && bytes.len() >= 5);
    }
});
