//! The config loader: YAML in, a validated config or an error naming what is wrong.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::parse(text, Path::new("/nonexistent/sluice-fuzz"));
});
