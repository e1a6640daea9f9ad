//! `sendmail -t`: recipients taken from To, Cc and Bcc, Bcc removed, From and Sender fixed up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::message::extract::{addresses, prepare};

fuzz_target!(|data: &[u8]| {
    let Some((&control, message)) = data.split_first() else { return };
    let full_name = (control & 2 != 0).then_some("Fuzz \"Name\"\r\n");
    let extracted = prepare(message, control & 1 != 0, "user@relay.test", full_name);
    // No Bcc address leaves with the message (an empty Bcc may be added).
    if let sluice::message::HeaderEnd::At(end) = sluice::message::header_end(&extracted.message, 0) {
        for line in extracted.message[..end].split(|&b| b == b'\n') {
            if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:") {
                assert!(line[4..].trim_ascii().is_empty(), "a Bcc left in: {:?}", String::from_utf8_lossy(line));
            }
        }
    }
    for r in &extracted.recipients {
        assert!(!r.contains(['\r', '\n']), "a recipient with a line break: {r:?}");
    }
    // `addresses` takes an unfolded field value.
    if let Ok(value) = std::str::from_utf8(message) {
        for a in addresses(&value.replace(['\r', '\n'], " ")) {
            assert!(!a.contains(['\r', '\n']));
        }
    }
});
