//! The process figures Prometheus's client libraries export under `process_*` (CPU, memory,
//! file descriptors, threads, start time), read from /proc/self when scraped.

use std::sync::OnceLock;

use super::text::Gauge;

/// Reads /proc/self and writes the `process_*` series; a figure that cannot be read is left
/// out (a kernel without /proc is not a reason to fail a scrape).
pub fn render(out: &mut String) {
    let ticks = clock_ticks();
    if let Some(stat) = read_stat() {
        Gauge::counter(out, "process_cpu_seconds_total", "User and system CPU time spent in seconds")
            .value((stat.utime + stat.stime) as f64 / ticks);
        Gauge::new(out, "process_threads", "Threads of the process").value(stat.threads as f64);
        Gauge::new(out, "process_virtual_memory_bytes", "Virtual memory size in bytes").value(stat.vsize as f64);
        Gauge::new(out, "process_resident_memory_bytes", "Resident memory size in bytes").value(stat.rss_pages as f64 * page_size());
    }
    // From /proc/stat's boot time where it can be read; the unit's ProcSubset=pid hides it,
    // and then the time the recorder was installed (the daemon's start) stands in.
    let start = read_stat().zip(boot_time()).map(|(stat, boot)| boot + stat.start_ticks as f64 / ticks).or_else(|| STARTED.get().copied());
    if let Some(start) = start {
        Gauge::new(out, "process_start_time_seconds", "Start time of the process since the epoch in seconds").value(start);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // Less the one read_dir itself holds open.
        Gauge::new(out, "process_open_fds", "Open file descriptors").value(fds.count().saturating_sub(1) as f64);
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        Gauge::new(out, "process_max_fds", "The limit on open file descriptors").value(limit.rlim_cur as f64);
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn read_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// proc(5) `stat`: the fields after the command name, which is in parentheses and may itself
/// hold spaces and parentheses (so the last `)` ends it).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let n = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat { utime: n(14)?, stime: n(15)?, threads: n(20)?, start_ticks: n(22)?, vsize: n(23)?, rss_pages: n(24)? })
}

static STARTED: OnceLock<f64> = OnceLock::new();

/// Notes the start time, for kernels that hide /proc/stat from us.
pub fn started() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let _ = STARTED.set(now);
}

fn boot_time() -> Option<f64> {
    static BOOT: OnceLock<Option<f64>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> f64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as f64 } else { 4096.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (evil) name (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s, Stat { utime: 250, stime: 50, threads: 7, start_ticks: 123456, vsize: 987654321, rss_pages: 2048 });
        assert_eq!(parse_stat("1 (truncated"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let s = read_stat().expect("/proc/self/stat");
        assert!(s.threads >= 1 && s.rss_pages > 0, "{s:?}");
    }
}
