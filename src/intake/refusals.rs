//! Refusals in the mail log: every refusal gets a line, until one client address has had
//! [`LINES_PER_WINDOW`] of them within [`WINDOW`]; the rest of that window is counted and
//! summarised in one line, so a flood (a botnet's relay probes, a looping client) cannot bury
//! the log or slow the daemon with its own writing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::smtp::server::Refused;

pub const LINES_PER_WINDOW: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; past this, windows that have ended are dropped.
const MAX_TRACKED: usize = 10_000;

#[derive(Default)]
pub struct RefusalLog {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u32,
}

impl RefusalLog {
    /// Logs a refusal written to `client` in session `session`, or counts it if this address
    /// has had its lines for this window.
    pub fn refused(&self, session: &str, client: IpAddr, refused: &Refused, now: Instant) {
        if !self.admit(client, now) {
            return;
        }
        let reply = &refused.reply;
        let dsn = reply.enhanced.map(|e| e.to_string());
        let text = reply.lines.first().map(String::as_str).unwrap_or("");
        let level_error = reply.code >= 500;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    session,
                    client = %client,
                    command = refused.command.unwrap_or("none"),
                    code = reply.code,
                    dsn = dsn.as_deref().unwrap_or("none"),
                    reason = reply.reason(),
                    from = refused.from.as_deref().unwrap_or(""),
                    to = refused.to.as_deref().unwrap_or(""),
                    text,
                    "refused"
                )
            };
        }
        // A refusal is the client's problem, not ours: never at error priority.
        if level_error { line!(warn) } else { line!(info) }
    }

    fn admit(&self, client: IpAddr, now: Instant) -> bool {
        let Ok(mut windows) = self.windows.lock() else { return true };
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&client) {
            windows.retain(|ip, w| !ended(w, now) || summarise(*ip, w));
        }
        let w = windows.entry(client).or_insert(Window { start: now, logged: 0, suppressed: 0 });
        if ended(w, now) {
            summarise(client, w);
            *w = Window { start: now, logged: 0, suppressed: 0 };
        }
        if w.logged < LINES_PER_WINDOW {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// At the end of a session from `client`: the summary of its window, if that has ended.
    pub fn settle(&self, client: IpAddr, now: Instant) {
        let Ok(mut windows) = self.windows.lock() else { return };
        if let Some(w) = windows.get_mut(&client)
            && ended(w, now)
        {
            summarise(client, w);
            windows.remove(&client);
        }
    }
}

fn ended(w: &Window, now: Instant) -> bool {
    now.duration_since(w.start) >= WINDOW
}

/// Logs what a window kept out of the log; false, so `retain` drops it.
fn summarise(client: IpAddr, w: &mut Window) -> bool {
    if w.suppressed > 0 {
        tracing::warn!(client = %client, refusals = w.suppressed, seconds = WINDOW.as_secs(), "refusals not logged one by one");
        w.suppressed = 0;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_threshold_refusals_are_counted_until_the_window_ends() {
        let log = RefusalLog::default();
        let (ip, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let admitted = (0..50).filter(|_| log.admit(ip, t0)).count();
        assert_eq!(admitted, LINES_PER_WINDOW as usize);
        assert!(log.admit(other, t0), "another address has its own window");
        assert_eq!(log.windows.lock().unwrap()[&ip].suppressed, 30);
        assert!(log.admit(ip, t0 + WINDOW), "a new window logs again");
        assert_eq!(log.windows.lock().unwrap()[&ip].suppressed, 0);
        log.settle(ip, t0 + WINDOW * 3);
        assert!(!log.windows.lock().unwrap().contains_key(&ip));
    }
}
