//! The mail log's line format: one event per line, `event key=value ...`, the event's name first
//! and no module path. Every value goes through one quoting rule ([`write_value`]): bare when it
//! is plain, otherwise in double quotes with Rust's escapes, so whatever a client, a server or a
//! file chose can neither end the line nor pose as another field. Under systemd (stderr is the
//! journal) a line starts with its syslog priority (`<3>` for errors, `<4>` warnings, `<6>`
//! info) and no timestamp, the journal keeping its own; elsewhere with an RFC 3339 UTC time and
//! the level's name.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The line format for `sluice run` and the admin commands.
#[derive(Debug, Clone, Copy)]
pub struct MailLog {
    journald: bool,
    /// The module path after the level, for debugging (`SLUICE_LOG_TARGETS=1`).
    targets: bool,
}

impl MailLog {
    /// Journal priorities when stderr is the journal: systemd sets `JOURNAL_STREAM` to the
    /// device and inode of the stream it connected (a child's redirected stderr is not it).
    pub fn for_stderr() -> MailLog {
        let journald = std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| stderr_is(&v));
        MailLog { journald, targets: std::env::var_os("SLUICE_LOG_TARGETS").is_some_and(|v| v != "0") }
    }
}

fn stderr_is(journal_stream: &str) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    // SAFETY: fstat on fd 2 into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// syslog(3) priorities, as journald reads them from a `<N>` prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S, N> FormatEvent<S, N> for MailLog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if self.journald {
            write!(writer, "<{}>", priority(meta.level()))?;
        } else {
            write_time(&mut writer, std::time::SystemTime::now())?;
            write!(writer, " {} ", level_name(meta.level()))?;
        }
        if self.targets {
            write!(writer, "{}: ", meta.target())?;
        }
        let mut line = Line::default();
        event.record(&mut line);
        writer.write_str(&line.message)?;
        writer.write_str(&line.fields)?;
        writeln!(writer)
    }
}

/// `2026-12-02T13:30:01.123Z`
pub(crate) fn write_time(w: &mut impl Write, now: std::time::SystemTime) -> fmt::Result {
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = crate::message::date::civil_from_days((secs / 86_400) as i64);
    let day = secs % 86_400;
    write!(w, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", day / 3600, day / 60 % 60, day % 60, since.subsec_millis())
}

/// The event's text and its fields, as they are recorded.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn field(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            // The event's own text is written by us, never from a client; kept on one line.
            self.message.extend(value.chars().map(|c| if c.is_control() { ' ' } else { c }));
            return;
        }
        self.fields.push(' ');
        self.fields.push_str(field.name());
        self.fields.push('=');
        let _ = write_value(&mut self.fields, value);
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here too, with Display as their Debug.
        let text = format!("{value:?}");
        self.field(field, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, &value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, if value { "true" } else { "false" });
    }
}

/// A byte that may stand in a bare value: `key=value` splits at the first `=` and a field ends
/// at a space, so neither spaces, quotes nor backslashes are plain; nor is anything beyond
/// ASCII (it is shown, but quoted, so a reader can tell where it ends).
fn is_plain(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'\\')
}

/// One value: bare if plain and not empty, else `"..."` with Rust's escapes (`\"`, `\\`, `\n`,
/// `\u{1b}`, ...).
pub fn write_value(w: &mut impl Write, value: &str) -> fmt::Result {
    if !value.is_empty() && value.bytes().all(is_plain) {
        return w.write_str(value);
    }
    write!(w, "\"{}\"", value.escape_debug())
}

/// A session's id in the log: unique within a run, and (with the run's random prefix) across
/// runs, so `grep` finds one session's lines.
pub fn session_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
        u32::from_ne_bytes(b) & 0xff_ffff
    });
    format!("{prefix:06X}{:06X}", NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str) -> String {
        let mut s = String::new();
        write_value(&mut s, v).unwrap();
        s
    }

    #[test]
    fn plain_values_are_bare_and_the_rest_quoted_with_escapes() {
        assert_eq!(value("a@b.example"), "a@b.example");
        assert_eq!(value("mx.example[192.0.2.1]:25"), "mx.example[192.0.2.1]:25");
        assert_eq!(value("<a@b>"), "<a@b>");
        assert_eq!(value(""), "\"\"");
        assert_eq!(value("two words"), "\"two words\"");
        assert_eq!(value("x\nstatus=sent"), "\"x\\nstatus=sent\"");
        assert_eq!(value("q\"uote\\"), "\"q\\\"uote\\\\\"");
        assert_eq!(value("\u{1b}[31m"), "\"\\u{1b}[31m\"");
        assert_eq!(value("jörg"), "\"jörg\"");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let mut s = String::new();
        write_time(&mut s, std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_682_201_007)).unwrap();
        assert_eq!(s, "2025-12-02T13:30:01.007Z");
    }

    #[test]
    fn session_ids_differ() {
        let (a, b) = (session_id(), session_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
    }
}
