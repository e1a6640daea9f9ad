//! The accounting stream: one JSON line per event in a message's life (received, delivered,
//! deferred, bounced, expired, DSN sent, held, released, deleted, bounced by an operator),
//! for billing, analytics and "what bounced today and why" (`jq`). `docs/ACCOUNTING.md`
//! documents it; `contrib/accounting.schema.json` is its schema.
//!
//! Records are handed to a writer thread through a bounded channel: the caller never waits
//! on the file. When the writer falls that far behind (a stalled disk), records are dropped,
//! counted and logged, and mail goes on: accounting must never hold delivery back.

mod build;
mod file;
mod record;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use build::{message_record, recipient_record};
pub use file::Settings;
pub use record::{Event, Record, SCHEMA_VERSION};

use crate::metrics as m;
use file::RotatingFile;

/// Records that may wait for the writer; past this they are dropped.
pub const BUFFERED_RECORDS: usize = 65_536;

/// And the octets they may hold (a record naming a thousand recipients is large).
pub const BUFFERED_BYTES: usize = 64 << 20;

/// How often the writer looks for records: they reach the file within about this long.
const POLL: Duration = Duration::from_millis(50);

/// Under a backlog the writer still looks at new settings and reopen requests this often.
const CONTROL_EVERY: usize = 1024;

/// Drops are logged at most this often (with how many there were).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

enum Msg {
    Record(Box<Record>, usize),
    /// Answered once everything sent before it is written.
    Flush(mpsc::Sender<()>),
}

#[derive(Default)]
struct Control {
    /// New settings to put in force (`Some(None)`: turn the stream off).
    settings: Option<Option<Settings>>,
    reopen: bool,
}

/// What the handle and the writer share.
#[derive(Default)]
struct Shared {
    control: Mutex<Control>,
    /// Records and octets waiting in the channel.
    waiting: AtomicUsize,
    waiting_bytes: AtomicUsize,
    /// When the writer last found the channel empty (unix ms): the lag while records wait.
    drained_at_ms: AtomicU64,
    closing: AtomicBool,
    /// Held by a test to stop the writer before its next drain, as a stuck disk would.
    #[cfg(test)]
    gate: Mutex<()>,
}

/// The handle every part that has something to record holds.
pub struct Accounting {
    enabled: AtomicBool,
    sender: SyncSender<Msg>,
    shared: Arc<Shared>,
    /// [`BUFFERED_BYTES`], smaller in tests.
    max_bytes: usize,
    dropped: AtomicU64,
    drops: Mutex<Drops>,
    /// Told when the writer has ended.
    ended: Mutex<Option<Receiver<()>>>,
}

#[derive(Default)]
struct Drops {
    since_logged: u64,
    logged: Option<Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether the file in `settings` can be opened for appending (created, mode 0640, if
/// missing): a start or reload that names one that cannot is refused rather than dropping
/// every record.
pub fn check(settings: &Settings) -> Result<(), String> {
    file::open(&settings.path).map(|_| ()).map_err(|e| format!("accounting.path {}: {e}", settings.path.display()))
}

impl Accounting {
    /// Starts the writer thread with `settings` (`None`: off until a reload turns it on).
    pub fn start(settings: Option<Settings>) -> Arc<Accounting> {
        Self::with_limits(settings, BUFFERED_RECORDS, BUFFERED_BYTES)
    }

    fn with_limits(settings: Option<Settings>, capacity: usize, max_bytes: usize) -> Arc<Accounting> {
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared::default());
        shared.control.lock().expect("accounting control lock").settings = Some(settings.clone());
        shared.drained_at_ms.store(now_ms(), Ordering::Relaxed);
        let (ended_tx, ended_rx) = mpsc::channel();
        let accounting = Arc::new(Accounting {
            enabled: AtomicBool::new(settings.is_some()),
            sender,
            shared: shared.clone(),
            max_bytes,
            dropped: AtomicU64::new(0),
            drops: Mutex::default(),
            ended: Mutex::new(Some(ended_rx)),
        });
        std::thread::Builder::new()
            .name("sluice-accounting".into())
            .spawn({
                let accounting = Arc::downgrade(&accounting);
                move || {
                    Writer { file: None, receiver, shared, accounting, error_logged: None }.run();
                    let _ = ended_tx.send(());
                }
            })
            .expect("spawning the accounting writer");
        accounting
    }

    /// Whether records are wanted: callers check before building one.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Hands a record to the writer, or drops it (counted, logged) when the writer is behind.
    pub fn emit(&self, record: Record) {
        if !self.enabled() {
            return;
        }
        let weight = record.weight();
        let s = &self.shared;
        if s.waiting_bytes.fetch_add(weight, Ordering::Relaxed) + weight > self.max_bytes {
            s.waiting_bytes.fetch_sub(weight, Ordering::Relaxed);
            return self.dropped("the writer is behind", 1);
        }
        s.waiting.fetch_add(1, Ordering::Relaxed);
        if self.sender.try_send(Msg::Record(Box::new(record), weight)).is_err() {
            s.waiting.fetch_sub(1, Ordering::Relaxed);
            s.waiting_bytes.fetch_sub(weight, Ordering::Relaxed);
            self.dropped("the writer is behind", 1);
        }
    }

    /// Puts new settings in force (a reload): another file, rotation limits, on or off.
    /// Records emitted before go where the settings in force then said.
    pub fn configure(&self, settings: Option<Settings>) {
        self.enabled.store(settings.is_some(), Ordering::Relaxed);
        self.shared.control.lock().expect("accounting control lock").settings = Some(settings);
    }

    /// Opens the file again (SIGUSR1, after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.control.lock().expect("accounting control lock").reopen = true;
    }

    /// Waits (10 s at most) until every record emitted before is in the file (tests).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut msg = Msg::Flush(tx);
        loop {
            match self.sender.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(POLL);
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Writes what is buffered and stops the writer (waiting 5 s at most: a disk that hangs
    /// must not hold the shutdown); later records are not written.
    pub fn close(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some(ended) = self.ended.lock().expect("accounting ended lock").take() {
            let _ = ended.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Records dropped since start.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The writer's state as series, read at scrape time (so a stalled writer shows).
    pub fn render(&self, out: &mut String) {
        let waiting = self.shared.waiting.load(Ordering::Relaxed);
        let lag = match waiting {
            0 => 0.0,
            _ => now_ms().saturating_sub(self.shared.drained_at_ms.load(Ordering::Relaxed)) as f64 / 1000.0,
        };
        crate::metrics::text::Gauge::new(out, "sluice_accounting_waiting_records", "Accounting records waiting for the writer")
            .value(waiting as f64);
        crate::metrics::text::Gauge::new(
            out,
            "sluice_accounting_lag_seconds",
            "While records wait: how long since the writer last caught up (0 when none wait)",
        )
        .value(lag);
    }

    fn dropped(&self, why: &str, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        metrics::counter!(m::ACCOUNTING_DROPPED).increment(count);
        let Ok(mut drops) = self.drops.try_lock() else { return };
        drops.since_logged += count;
        if drops.logged.is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY) {
            tracing::error!(records = drops.since_logged, why, "accounting records dropped");
            drops.since_logged = 0;
            drops.logged = Some(Instant::now());
        }
    }
}

struct Writer {
    file: Option<RotatingFile>,
    receiver: Receiver<Msg>,
    shared: Arc<Shared>,
    /// Weak, so the handle's last owner going away ends the thread.
    accounting: std::sync::Weak<Accounting>,
    /// When a write error was last logged.
    error_logged: Option<Instant>,
}

/// How a drain of the channel ended.
#[derive(PartialEq, Eq)]
enum Drained {
    Empty,
    /// `CONTROL_EVERY` records written and more waiting.
    Budget,
    /// Every handle is gone.
    Gone,
}

impl Writer {
    /// Wakes every [`POLL`] and writes what came meanwhile in one batch. It never blocks in
    /// the channel, so a sender never has to wake it: waking a parked thread for each record
    /// cost more than writing it.
    fn run(mut self) {
        self.take_control(); // the file is open before the first record comes
        loop {
            std::thread::sleep(POLL);
            loop {
                self.take_control();
                match self.drain(Some(CONTROL_EVERY)) {
                    Drained::Budget => continue,
                    Drained::Empty => break,
                    Drained::Gone => return self.flush(),
                }
            }
            self.flush();
            self.shared.drained_at_ms.store(now_ms(), Ordering::Relaxed);
            if self.shared.closing.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Writes waiting records (at most `budget`), answering flushes in order.
    fn drain(&mut self, budget: Option<usize>) -> Drained {
        #[cfg(test)]
        let shared = self.shared.clone();
        #[cfg(test)]
        let _gate = shared.gate.lock().expect("test gate");
        let mut written = 0;
        loop {
            if budget.is_some_and(|b| written >= b) {
                return Drained::Budget;
            }
            match self.receiver.try_recv() {
                Ok(Msg::Record(record, weight)) => {
                    self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                    self.shared.waiting_bytes.fetch_sub(weight, Ordering::Relaxed);
                    self.write(&record);
                    written += 1;
                }
                Ok(Msg::Flush(answer)) => {
                    self.flush();
                    let _ = answer.send(());
                }
                Err(TryRecvError::Empty) => return Drained::Empty,
                Err(TryRecvError::Disconnected) => return Drained::Gone,
            }
        }
    }

    fn take_control(&mut self) {
        let control = std::mem::take(&mut *self.shared.control.lock().expect("accounting control lock"));
        if let Some(settings) = control.settings {
            // What was emitted under the old settings goes where they said (or, turning the
            // stream off, is still written): a reload drops nothing.
            if self.file.is_some() {
                self.drain(None);
            }
            self.install(settings);
        }
        if control.reopen
            && let Some(file) = &mut self.file
            && let Err(failed) = file.reopen()
        {
            let path = file.settings().path.clone();
            self.write_failed(&path, failed);
        }
    }

    fn install(&mut self, settings: Option<Settings>) {
        match (&mut self.file, settings) {
            (Some(file), Some(s)) if *file.settings() == s => {}
            (_, None) => self.close_file(),
            (_, Some(s)) => {
                let path = s.path.clone();
                self.close_file(); // flushed and synced before the new one opens
                match RotatingFile::open(s) {
                    Ok(file) => self.file = Some(file),
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "opening the accounting file failed"),
                }
            }
        }
    }

    fn write(&mut self, record: &Record) {
        let Some(file) = &mut self.file else {
            self.dropped("the accounting file could not be opened", 1);
            return;
        };
        if let Err(failed) = file.write(&record.to_line()) {
            let path = file.settings().path.clone();
            self.write_failed(&path, failed);
        }
    }

    fn flush(&mut self) {
        if let Some(file) = &mut self.file
            && let Err(failed) = file.flush()
        {
            let path = file.settings().path.clone();
            self.write_failed(&path, failed);
        }
    }

    fn close_file(&mut self) {
        if let Some(file) = self.file.take() {
            let path = file.settings().path.clone();
            if let Err(failed) = file.close() {
                self.write_failed(&path, failed);
            }
        }
    }

    /// The lost records are counted (and summarised by `accounting records dropped`); the
    /// error itself is logged once per [`DROP_LOG_EVERY`], not on every batch of a full disk.
    fn write_failed(&mut self, path: &std::path::Path, failed: file::WriteFailed) {
        if self.error_logged.is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY) {
            tracing::error!(path = %path.display(), error = %failed, "writing the accounting file failed");
            self.error_logged = Some(Instant::now());
        }
        self.dropped("the accounting file could not be written", failed.lost);
    }

    fn dropped(&self, why: &str, count: u64) {
        if count > 0
            && let Some(accounting) = self.accounting.upgrade()
        {
            accounting.dropped(why, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> Settings {
        Settings { path: dir.join("acct.jsonl"), max_size: 1 << 20, keep: 2 }
    }

    fn read(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn records_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let acct = Accounting::start(Some(settings(dir.path())));
        for n in 0..100 {
            acct.emit(Record::new(Event::Delivered, &format!("Q{n}"), String::new()));
        }
        acct.flush();
        let got = read(&dir.path().join("acct.jsonl"));
        assert_eq!(got.len(), 100);
        assert_eq!(got[99]["queue_id"], "Q99");
        acct.close();
    }

    #[test]
    fn off_writes_nothing_and_a_reload_turns_it_on() {
        let dir = tempfile::tempdir().unwrap();
        let acct = Accounting::start(None);
        assert!(!acct.enabled());
        acct.emit(Record::new(Event::Received, "Q0", String::new()));
        acct.configure(Some(settings(dir.path())));
        acct.emit(Record::new(Event::Received, "Q1", String::new()));
        acct.flush();
        let got = read(&dir.path().join("acct.jsonl"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["queue_id"], "Q1");
        acct.close();
    }

    #[test]
    fn a_full_buffer_drops_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // The writer is kept busy by a file it cannot open (a directory): nothing is lost
        // silently, and emit never blocks.
        let acct = Accounting::with_limits(Some(Settings { path: dir.path().into(), max_size: 10, keep: 0 }), 4, BUFFERED_BYTES);
        let started = Instant::now();
        for n in 0..10_000 {
            acct.emit(Record::new(Event::Delivered, &format!("Q{n}"), String::new()));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        acct.flush();
        assert_eq!(acct.shared.waiting.load(Ordering::Relaxed), 0);
        // Each was dropped either at emit (buffer full) or by the writer (no file): counted.
        assert_eq!(acct.dropped_total(), 10_000);
        acct.close();
        acct.emit(Record::new(Event::Delivered, "late", String::new())); // after close: ignored
    }

    #[test]
    fn large_records_are_bounded_by_octets_not_only_by_count() {
        // Records naming a thousand recipients each, against a 1 MiB bound: the writer (asleep
        // for its first 50 ms) cannot take them as fast as they come, so most are dropped at
        // emit; what was taken reaches the file, and every record is one or the other.
        let dir = tempfile::tempdir().unwrap();
        let acct = Accounting::with_limits(Some(settings(dir.path())), BUFFERED_RECORDS, 1 << 20);
        let big = |n: usize| Record {
            recipients: (0..1000).map(|r| format!("recipient-{r:04}@destination.example")).collect(),
            ..Record::new(Event::Received, &format!("Q{n}"), String::new())
        };
        let records: Vec<Record> = (0..100).map(big).collect();
        assert!(records[0].weight() > 50_000, "{}", records[0].weight());
        for r in records {
            acct.emit(r);
        }
        acct.flush();
        let written = read(&dir.path().join("acct.jsonl")).len() as u64;
        assert!(written < 30, "{written} written past a 1 MiB bound");
        assert_eq!(written + acct.dropped_total(), 100);
        assert_eq!(acct.shared.waiting_bytes.load(Ordering::Relaxed), 0);
        acct.close();
    }

    fn series(text: &str, name: &str) -> f64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap()
    }

    #[test]
    fn a_stalled_writer_shows_its_lag_and_waiting_records() {
        let dir = tempfile::tempdir().unwrap();
        let acct = Accounting::start(Some(settings(dir.path())));
        acct.flush(); // the writer is running
        // Once the test holds the gate, the writer drains nothing more.
        let stall = acct.shared.gate.lock().unwrap();
        for n in 0..5 {
            acct.emit(Record::new(Event::Delivered, &format!("Q{n}"), String::new()));
        }
        std::thread::sleep(Duration::from_millis(400));
        let mut text = String::new();
        acct.render(&mut text);
        assert_eq!(series(&text, "sluice_accounting_waiting_records"), 5.0, "{text}");
        let lag = series(&text, "sluice_accounting_lag_seconds");
        assert!(lag >= 0.4, "{text}");
        drop(stall);
        acct.flush();
        let mut text = String::new();
        acct.render(&mut text);
        assert_eq!(series(&text, "sluice_accounting_lag_seconds"), 0.0, "{text}");
        assert_eq!(read(&dir.path().join("acct.jsonl")).len(), 5);
        acct.close();
    }
}
