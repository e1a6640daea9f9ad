//! What intake and delivery do to a received message's header section: the end of the
//! header, the trace facts, submission fix-ups and the 8-bit to 7-bit downgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::message::{HeaderEnd, downgrade, header_end, submission, trace};

fuzz_target!(|message: &[u8]| {
    // The streaming body buffer resumes the scan where an earlier read left it.
    let whole = header_end(message, 0);
    let prefix = &message[..message.len() / 2];
    if let HeaderEnd::Open(resume) = header_end(prefix, 0) {
        assert_eq!(header_end(message, resume), whole, "resuming the scan moved the header's end");
    }
    let _ = trace::scan_headers(message);
    if let Some(fixed) = submission::fix_recipient_headers(message) {
        let _ = trace::scan_headers(&fixed);
    }
    if let Ok(seven) = downgrade::to_seven_bit(message) {
        assert!(seven.is_ascii(), "the downgrade left 8-bit bytes");
    }
});
