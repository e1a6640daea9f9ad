//! Paths and ESMTP parameters of MAIL and RCPT. The first byte picks the parser, so one corpus
//! covers all three.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::address::{parse_mail_params, parse_mailbox, parse_rcpt_params};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 3 {
        0 => {
            let utf8 = which & 0x80 != 0;
            if let Ok(mailbox) = parse_mailbox(text, utf8) {
                // What we accept, we write back out (Received, DSNs, the next hop's RCPT) in a
                // form that parses to the same mailbox.
                let again = parse_mailbox(&mailbox.to_string(), utf8).expect("a parsed mailbox prints as a valid one");
                assert_eq!(again, mailbox);
                assert!(utf8 || mailbox.is_ascii());
            }
        }
        1 => {
            let _ = parse_mail_params(text);
        }
        _ => {
            let _ = parse_rcpt_params(text);
        }
    }
});
