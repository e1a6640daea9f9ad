//! The crash soak (`scripts/test.sh` runs it; `cargo test --test it crash_soak -- --ignored`):
//! 8 sessions send 2,000 messages through a `sluice run` process to Postfix's smtp-sink while
//! the process is killed with SIGKILL 10 times at random moments and restarted at once. Every
//! message that got its 250 must reach the sink at least once. A duplicate can only be a
//! transaction caught by a kill: sent, or answered but its outcome not yet on disk. So every
//! duplicated message's first copy must have reached the sink just before a kill (within
//! `CAUGHT`), never earlier: nothing already recorded as delivered is sent again.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Daemon;

const MESSAGES: usize = 2000;
const SESSIONS: usize = 8;
const KILLS: usize = 10;
const CONNECTIONS: usize = 4;
/// How long before a kill a first copy may have arrived and still be that kill's to repeat:
/// the outcome's group commit (a few ms) plus the debug build's slowness, with room.
const CAUGHT: Duration = Duration::from_millis(1000);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One message over a new connection; true only when the final dot got a 250.
fn send_one(addr: SocketAddr, n: usize) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut out = stream.try_clone()?;
        let mut input = BufReader::new(stream);
        let reply = |input: &mut BufReader<TcpStream>| -> std::io::Result<u16> {
            loop {
                let mut line = String::new();
                if input.read_line(&mut line)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
                }
            }
        };
        let mut step = |line: &str, want: u16, input: &mut BufReader<TcpStream>| -> std::io::Result<bool> {
            out.write_all(line.as_bytes())?;
            Ok(reply(input)? == want)
        };
        if reply(&mut input)? != 220 {
            return Ok(false);
        }
        let body =
            format!("Subject: soak {n}\r\nMessage-ID: <soak-{n}@sender.test>\r\n\r\nsoak-marker-{n}-end\r\n{}\r\n.\r\n", "x".repeat(512));
        Ok(step("EHLO soak.test\r\n", 250, &mut input)?
            && step("MAIL FROM:<a@sender.test>\r\n", 250, &mut input)?
            && step(&format!("RCPT TO:<r{n}@dest.test>\r\n"), 250, &mut input)?
            && step("DATA\r\n", 354, &mut input)?
            && step(&body, 250, &mut input)?)
    };
    attempt().unwrap_or(false)
}

fn start_sink(dir: &std::path::Path, port: u16) -> Child {
    let mut args: Vec<String> = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        args.extend(["-u".into(), "nobody".into()]);
    }
    args.extend(["-d".into(), format!("{}/m", dir.display()), format!("127.0.0.1:{port}"), "256".into()]);
    let child = Command::new("smtp-sink")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink (Debian package postfix)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A small generator, seeded from the clock (the seed is printed, so a run can be repeated).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
#[ignore = "a soak of about a minute; scripts/test.sh runs it"]
fn crash_soak() {
    let dir = tempfile::tempdir().unwrap();
    let dumps = dir.path().join("sink");
    std::fs::create_dir(&dumps).unwrap();
    // smtp-sink writes as nobody when run by root.
    std::fs::set_permissions(&dumps, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let sink_port = free_port();
    let mut sink = start_sink(&dumps, sink_port);
    let listen = free_port();
    let extra = format!(
        "listeners:\n  - {{ address: \"127.0.0.1:{listen}\", mode: relay }}\ndelivery:\n  smarthost: \"[127.0.0.1]:{sink_port}\"\n  retry: [1s]\n  max_connections_per_destination: {CONNECTIONS}\n  backoff: {{ initial: 1s, max: 2s, after_failures: 50 }}\n"
    );
    let state = dir.path().join("relay");
    std::fs::create_dir(&state).unwrap();
    let daemon = Arc::new(Mutex::new(Daemon::spawn(&state, &extra, &[])));
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();

    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(Mutex::new(Vec::new()));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("crash soak: seed {seed}");
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..SESSIONS {
            let (next, accepted) = (next.clone(), accepted.clone());
            s.spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= MESSAGES {
                        return;
                    }
                    if send_one(addr, n) {
                        accepted.lock().unwrap().push(n);
                    } else {
                        // The daemon is down: wait for it rather than spin through numbers.
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while TcpStream::connect(addr).is_err() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            });
        }
        let (daemon, done, next, kills) = (daemon.clone(), done.clone(), next.clone(), kills.clone());
        s.spawn(move || {
            let mut rng = Lcg(seed);
            for k in 0..KILLS {
                std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
                if next.load(Ordering::SeqCst) >= MESSAGES {
                    println!("crash soak: kill {} came after the last message was sent (deliveries still under way)", k + 1);
                }
                let mut d = daemon.lock().unwrap();
                kills.lock().unwrap().push(std::time::SystemTime::now());
                d.kill9();
                // Dropping the old handle would kill every process of this config, the new one too.
                std::mem::forget(std::mem::replace(&mut *d, Daemon::spawn(&state, &extra, &[])));
            }
            done.store(true, Ordering::SeqCst);
        });
    });
    let sent_for = started.elapsed();
    let config = sluice::config::Config::load(&daemon.lock().unwrap().config_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sluice::admin::queue_list(&config).map(|q| q.is_empty()).unwrap_or(false) {
        assert!(Instant::now() < deadline, "the queue did not drain: {:?}", sluice::admin::queue_list(&config).map(|q| q.len()));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = sink.kill();
    let _ = sink.wait();

    // Per message, when each copy was written by the sink.
    let mut copies: Vec<Vec<std::time::SystemTime>> = vec![Vec::new(); MESSAGES];
    for entry in std::fs::read_dir(&dumps).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(n) = text.split("soak-marker-").nth(1).and_then(|r| r.split('-').next()).and_then(|n| n.parse::<usize>().ok()) {
            copies[n].push(entry.metadata().unwrap().modified().unwrap());
        }
    }
    let arrivals: Vec<usize> = copies.iter().map(Vec::len).collect();
    let kills = kills.lock().unwrap().clone();
    let mut per_kill = vec![0usize; kills.len()];
    let mut uncaught = Vec::new();
    for (n, times) in copies.iter().enumerate().filter(|(_, t)| t.len() > 1) {
        let first = *times.iter().min().unwrap();
        let caught = kills.iter().position(|k| {
            k.duration_since(first).is_ok_and(|d| d <= CAUGHT) || first.duration_since(*k).is_ok_and(|d| d <= Duration::from_millis(100))
        });
        match caught {
            Some(k) => per_kill[k] += times.len() - 1,
            None => uncaught.push(n),
        }
    }
    let accepted = accepted.lock().unwrap().clone();
    let lost: Vec<usize> = accepted.iter().copied().filter(|&n| arrivals[n] == 0).collect();
    let duplicates: usize = arrivals.iter().map(|&a| a.saturating_sub(1)).sum();
    let unacknowledged_delivered = (0..MESSAGES).filter(|n| arrivals[*n] > 0 && !accepted.contains(n)).count();
    println!(
        "crash soak: {MESSAGES} messages over {SESSIONS} sessions in {:.1} s, {} kill -9; accepted {}, lost {}, duplicates {duplicates} (per kill {per_kill:?}; {CONNECTIONS} connections), delivered without a 250 seen by the client {unacknowledged_delivered}",
        sent_for.as_secs_f64(),
        kills.len(),
        accepted.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "accepted but never delivered: {lost:?}");
    assert!(uncaught.is_empty(), "sent twice though no kill caught the first copy: {uncaught:?}");
    assert!(accepted.len() > MESSAGES / 2, "too few accepted to mean anything: {}", accepted.len());
}
