//! A maildrop file, which any member of the maildrop group can write: the JSON request line
//! and the message, taken in as the file's owner.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::message::extract::prepare;
use sluice::sendmail::maildrop;

fuzz_target!(|data: &[u8]| {
    if let Ok((request, message)) = maildrop::parse(data.to_vec()) {
        assert_eq!(message.len(), request.size);
        let _ = prepare(&message, request.extract, "user@relay.test", request.full_name.as_deref());
    }
});
