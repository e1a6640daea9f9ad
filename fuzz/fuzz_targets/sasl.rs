//! SASL responses (RFC 4954): PLAIN, LOGIN and the raw line decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::sasl;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let _ = sasl::decode_line(line);
    let _ = sasl::decode_login(line);
    if let Ok(c) = sasl::decode_plain(line) {
        assert!(!c.username.is_empty());
        let again = sasl::decode_plain(&sasl::encode(&format!("{}\0{}\0{}", c.authzid, c.username, c.password.expose())))
            .expect("what PLAIN decoded encodes back");
        assert_eq!(again.username, c.username);
        assert_eq!(again.password.expose(), c.password.expose());
    }
});
