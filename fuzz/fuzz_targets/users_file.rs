//! The users file (`user:hash` lines) and the password hashes in it: parsed and judged without
//! being checked (a check costs tens of milliseconds by design).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::intake::{hash_problem, parse_users};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for (user, hash) in parse_users(text) {
        assert!(!user.contains('\n') && !user.contains(':'));
        let _ = hash_problem(&hash);
    }
});
