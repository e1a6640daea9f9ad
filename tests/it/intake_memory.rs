//! Bodies stream to the spool as they arrive: a large message costs a session a bounded
//! buffer, not its size in RAM; the header section is bounded on its own; a message's data
//! must come within `max_data_time` and at `min_data_rate` on average.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, TestRelay};

/// `size` bytes of message: a few header fields, then 76-character lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"Subject: large\r\nX-Test: streamed\r\n\r\n".to_vec();
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789012345\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

/// What follows the header section.
fn body_of(message: &[u8]) -> &[u8] {
    let at = message.windows(4).position(|w| w == b"\r\n\r\n").expect("a header section");
    &message[at + 4..]
}

/// The daemon's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn data(c: &mut Client, body: &[u8]) -> u16 {
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    c.cmd("RCPT TO:<b@y.test>");
    assert_eq!(c.cmd("DATA").code, 354);
    for piece in body.chunks(256 * 1024) {
        c.send(piece);
    }
    c.send(b".\r\n");
    c.reply().code
}

/// 16 sessions send a 12 MB message each at once to a `sluice run` process. Held in memory
/// whole, that is about 200 MB of bodies; streamed, the daemon's peak RSS grows by a few
/// buffers per session.
#[test]
fn sixteen_large_messages_at_once_do_not_pass_through_the_daemons_memory() {
    const SESSIONS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    // One large message first: the code it runs is paged in (file-backed, counted in RSS).
    assert_eq!(data(&mut Client::connect(daemon.addr), &message(1024 * 1024)), 250);
    let before = peak_rss_kib(daemon.child.id());
    let body = Arc::new(message(12 * 1024 * 1024));
    let addr = daemon.addr;
    let senders: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || data(&mut Client::connect(addr), &body))
        })
        .collect();
    let codes: Vec<u16> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(codes, vec![250; SESSIONS]);
    let grown_mib = (peak_rss_kib(daemon.child.id()) - before) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB for {SESSIONS} x 12 MB in flight");
    assert!(grown_mib < 64, "the daemon's peak RSS grew by {grown_mib} MiB");
    // And each arrived whole.
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    drop(daemon);
    let spool = sluice::spool::SledSpool::open(&config.spool).unwrap();
    let stored = sluice::spool::SpoolRead::list(&*spool).unwrap();
    assert_eq!(stored.len(), SESSIONS + 1);
    for env in stored.iter().filter(|e| e.body.is_some_and(|b| b.len > 2 * 1024 * 1024)) {
        let bytes = sluice::spool::SpoolRead::read_body(&*spool, env).unwrap();
        let at = bytes.windows(9).position(|w| w == b"Subject: ").expect("the message after our Received");
        assert!(bytes[at..] == body[..], "message {} differs from what was sent", env.queue_id);
    }
    assert_eq!(std::fs::read_dir(config.spool.path.join("incoming")).unwrap().count(), 0);
}

#[test]
fn a_large_message_arrives_whole_over_bdat_and_the_sendmail_socket() {
    let relay = TestRelay::start();
    let body = message(3 * 1024 * 1024);
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    c.cmd("RCPT TO:<b@y.test>");
    let (first, second) = body.split_at(1024 * 1024 + 7);
    c.send(format!("BDAT {}\r\n", first.len()).as_bytes());
    c.send(first);
    assert_eq!(c.reply().code, 250);
    c.send(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
    c.send(second);
    assert_eq!(c.reply().code, 250);

    let config = relay.config_path();
    let mut sendmail = std::process::Command::new(crate::common::sluice_bin())
        .args(["sendmail", "-C", &config, "c@y.test"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // sendmail reads lines and writes CRLF: the same bytes arrive.
    sendmail.stdin.take().unwrap().write_all(&body).unwrap();
    assert!(sendmail.wait().unwrap().success());
    let stored = relay.stop_and_read();
    assert_eq!(stored.len(), 2);
    for (_, text) in stored {
        // sendmail's header work adds fields (From, Date, Message-ID): compare the body.
        assert!(text.contains("Subject: large\r\n") && text.contains("X-Test: streamed\r\n"));
        assert!(body_of(text.as_bytes()) == body_of(&body), "the stored body differs");
    }
}

#[test]
fn a_header_section_over_max_header_size_gets_552_5_3_4_and_the_session_goes_on() {
    let relay = TestRelay::with_config("limits: { max_header_size: 4096 }\n");
    let mut fields: Vec<u8> = (0..200).flat_map(|i| format!("X-Field-{i}: some value\r\n").into_bytes()).collect();
    fields.extend_from_slice(b"\r\nbody\r\n");
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    c.cmd("RCPT TO:<b@y.test>");
    c.cmd("DATA");
    c.send(&fields);
    let r = c.cmd(".");
    assert_eq!((r.code, r.text()), (552, "5.3.4 Message header section exceeds 4096 bytes".to_string()));
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "Subject: small\r\n\r\nx\r\n").code, 250);
    assert_eq!(relay.stop_and_read().len(), 1);
}

#[test]
fn with_the_intake_memory_spent_large_bodies_still_arrive_and_long_headers_wait() {
    let relay = TestRelay::with_config("limits: { intake_memory: 0 }\n");
    let body = message(2 * 1024 * 1024);
    assert_eq!(data(&mut relay.client(), &body), 250, "the body goes to the spool after its free share");
    // 100 KiB of header fields need memory beyond the free 64 KiB, which there is none of.
    let mut fields: Vec<u8> = (0..4000).flat_map(|i| format!("X-Field-{i}: value\r\n").into_bytes()).collect();
    fields.extend_from_slice(b"\r\nbody\r\n");
    let mut c = relay.client();
    let r = data(&mut c, &fields);
    assert_eq!(r, 451);
    let stored = relay.stop_and_read();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.ends_with(std::str::from_utf8(&body).unwrap()));
}

#[test]
fn a_session_that_dies_mid_body_leaves_nothing_behind() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    c.cmd("RCPT TO:<b@y.test>");
    c.cmd("DATA");
    c.send(&message(4 * 1024 * 1024));
    // The body is past its in-memory share: its scratch file is open (the relay runs in this
    // process, so its descriptors are ours to see).
    let incoming = relay.config.spool.path.join("incoming");
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_scratch_files(&incoming) == 0 {
        assert!(Instant::now() < deadline, "no scratch file was opened for a 4 MB body");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(c);
    // The session's end closes it, and its blocks go with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_scratch_files(&incoming) > 0 {
        assert!(Instant::now() < deadline, "a scratch file is still open after its session died");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0, "scratch files have no name");
    assert!(relay.stop_and_read().is_empty());
}

/// Descriptors of this process open on files under `dir` (deleted ones included).
fn open_scratch_files(dir: &std::path::Path) -> usize {
    let dir = dir.to_str().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(dir))
        .count()
}

#[test]
fn data_that_trickles_in_below_min_data_rate_is_cut_off_with_421_4_4_2() {
    let relay = TestRelay::with_config("limits: { data_timeout: 1s, min_data_rate: 1000 }\n");
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    c.cmd("RCPT TO:<b@y.test>");
    assert_eq!(c.cmd("DATA").code, 354);
    // Each line comes well within data_timeout, but 20 bytes a quarter second is 80 B/s.
    let started = Instant::now();
    let reply = loop {
        c.send(b"a slow line of text\r\n");
        std::thread::sleep(Duration::from_millis(250));
        if let Some(r) = c.try_reply(Duration::from_millis(10)) {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
    };
    assert_eq!((reply.code, reply.text()), (421, "4.4.2 Message data arriving too slowly, closing connection".to_string()));
    assert!(started.elapsed() >= Duration::from_secs(1), "not before data_timeout");
}

#[test]
fn data_that_goes_on_past_max_data_time_is_cut_off_even_between_bdat_chunks() {
    let relay = TestRelay::with_config("limits: { data_timeout: 1s, max_data_time: 2s, min_data_rate: 0 }\n");
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    c.cmd("RCPT TO:<b@y.test>");
    let started = Instant::now();
    let reply = loop {
        // A chunk every half second, each within data_timeout of the last.
        c.send(b"BDAT 5\r\nabcde");
        let r = c.reply();
        if r.code != 250 {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
    };
    assert_eq!((reply.code, reply.text()), (421, "4.4.2 Message data took too long, closing connection".to_string()));
    assert!(started.elapsed() >= Duration::from_secs(2));
}
