//! A spool full of deferred mail: restart time and memory.
//!
//! Fills a spool with N messages whose next attempt is a day away (through the library, with
//! 8 writers and group commit), then starts the `sluice` binary on it and measures the time
//! until it answers SMTP, and its resident memory (VmRSS, and the peak VmHWM) once settled.
//! The target (issue 4): 1,000,000 deferred messages, <= 512 MiB RSS, accepting within 30 s.
//!
//! `cargo bench --bench deferred_queue` runs 1,000,000 messages (DEFERRED_MESSAGES overrides);
//! under `cargo test` it is a 20,000-message smoke run.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice::config::SpoolConfig;
use sluice::smtp::address::{MailParams, Mailbox, RcptParams};
use sluice::spool::{Envelope, Identity, RecipientRecord, RecipientState, SledSpool, Spool};

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let n: usize =
        std::env::var("DEFERRED_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(if benchmarking { 1_000_000 } else { 20_000 });
    let dir = tempfile::tempdir().unwrap();
    let spool_cfg = SpoolConfig {
        path: dir.path().join("spool"),
        min_free_space: 0,
        cache_capacity: 64 << 20,
        segment_size: 64 << 20,
        ..SpoolConfig::default()
    };
    let body = format!("Subject: deferred\r\n\r\n{}\r\n", "x".repeat(1000));
    let tomorrow = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 86400;

    let started = Instant::now();
    let spool = SledSpool::open(&spool_cfg).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (spool, body) = (&spool, &body);
            s.spawn(move || {
                for i in (t..n).step_by(8) {
                    let env = Envelope {
                        queue_id: spool.new_queue_id(),
                        from: Some(Mailbox { local: "sender".into(), domain: "example.org".into() }),
                        params: MailParams::default(),
                        recipients: vec![RecipientRecord {
                            mailbox: Mailbox { local: format!("r{i}"), domain: "example.net".into() },
                            params: RcptParams::default(),
                            state: RecipientState::Queued,
                            attempts: 1,
                            last_reply: Some("451 4.3.0 try again later".into()),
                            next_attempt: Some(tomorrow),
                            delay_notified: false,
                            history: Vec::new(),
                        }],
                        client_ip: "127.0.0.1".parse().unwrap(),
                        helo: "client.example.org".into(),
                        identity: Identity::TrustedNetwork,
                        listener: "127.0.0.1:25".parse().unwrap(),
                        arrival: tomorrow - 86400,
                        arrival_ms: None,
                        body: None,
                        held: false,
                        message_id: None,
                    };
                    spool.store(env, &[body.as_bytes()]).unwrap().wait_blocking().unwrap();
                }
            });
        }
    });
    spool.close();
    drop(spool);
    let fill = started.elapsed();
    println!("filled {n} deferred messages in {:.1} s ({:.0}/s)", fill.as_secs_f64(), n as f64 / fill.as_secs_f64());

    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "hostname: relay.example.net\nspool: {{ path: {} }}\nadmin: {{ socket: {} }}\nmetrics: {{ address: null }}\nlisteners:\n  - {{ address: \"127.0.0.1:0\", mode: relay }}\ndns: {{ nameservers: [\"127.0.0.1:9\"] }}\ndelivery: {{ smarthost: \"[127.0.0.1]:9\" }}\n",
            spool_cfg.path.display(),
            dir.path().join("admin.sock").display()
        ),
    )
    .unwrap();
    let restart = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && log.read_line(&mut line).unwrap_or(0) > 0 {
        addr = line.split("address=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
        line.clear();
    }
    let addr = addr.expect("the daemon logs its listener");
    let mut greeting = [0u8; 64];
    let n_read = TcpStream::connect(&addr).unwrap().read(&mut greeting).unwrap();
    let accepting = restart.elapsed();
    assert!(greeting[..n_read].starts_with(b"220 "), "{:?}", String::from_utf8_lossy(&greeting[..n_read]));
    std::thread::sleep(Duration::from_secs(3));
    let (rss, peak) = (status_kib(child.id(), "VmRSS:"), status_kib(child.id(), "VmHWM:"));
    println!(
        "restart with {n} deferred messages: SMTP greeting after {:.2} s; RSS {} MiB (peak {} MiB) 3 s later",
        accepting.as_secs_f64(),
        rss / 1024,
        peak / 1024
    );
    let _ = child.kill();
    let _ = child.wait();
    // Drain the log pipe so the child never blocks on it while exiting.
    std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
}
