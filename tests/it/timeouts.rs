//! An idle client is closed with 421 4.4.2 after the command timeout.

use std::time::{Duration, Instant};

use crate::common::TestRelay;

#[test]
fn idle_session_times_out_with_421() {
    let relay = TestRelay::with_config("limits: { command_timeout: 1s }\n");
    let mut c = relay.client();
    let started = Instant::now();
    let r = c.reply();
    assert_eq!((r.code, r.text()), (421, "4.4.2 Timeout waiting for input, closing connection".into()));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(c.is_closed());
}
