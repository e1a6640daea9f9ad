//! `/healthz` and `/readyz` on the metrics port of a real daemon: 200 when it can do its job,
//! 503 naming the check when the spool has failed (fsync errors injected by strace) or is
//! low on space; the port's other answers, and clients that misbehave.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon};
use crate::metrics_endpoint::free_port;

/// One request, raw; returns (status code, body).
fn get(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

fn path(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = get(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

fn daemon(dir: &std::path::Path, extra: &str, prefix: &[&str]) -> (Daemon, u16) {
    let port = free_port();
    let daemon = Daemon::spawn(dir, &format!("metrics: {{ address: \"127.0.0.1:{port}\" }}\n{extra}"), prefix);
    (daemon, port)
}

#[test]
fn a_healthy_relay_answers_200_and_the_port_refuses_what_it_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, port) = daemon(dir.path(), "", &[]);
    for p in ["/healthz", "/readyz"] {
        let (code, body) = path(port, p);
        assert_eq!(code, 200, "{p}: {body}");
        assert_eq!((body["status"].as_str(), body["spool"].as_str(), body["serving"].as_bool()), (Some("ok"), Some("ok"), Some(true)));
        assert_eq!(body["listeners_down"], serde_json::json!([]));
    }
    assert_eq!(get(port, "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").0, 404);
    assert_eq!(get(port, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").0, 405);
    assert_eq!(get(port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").0, 200);
    let (code, metrics) = get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("sluice_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{metrics}");
    let rss = metrics.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).expect("process figures");
    assert!(rss.parse::<f64>().unwrap() > 1e6, "{rss}");

    // Hostile clients: garbage is a 400, an idle connection and a header sent a byte at a time
    // do not hold up a scrape, and the port still answers afterwards.
    assert_eq!(get(port, "\x16\x03\x01garbage\r\n\r\n").0, 400);
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /hea").unwrap();
    let started = Instant::now();
    assert_eq!(path(port, "/healthz").0, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let huge = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "a".repeat(1 << 20));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(huge.as_bytes()); // refused with 431 or the connection closed
    assert_eq!(path(port, "/healthz").0, 200);
}

#[test]
fn low_space_on_the_spool_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    // No test machine has an exabyte free, so the threshold is always crossed.
    let (_daemon, port) = daemon(
        dir.path(),
        "spool: { path: SPOOL, min_free_space: 1000000000000000000 }\n"
            .replace("SPOOL", dir.path().join("spool").to_str().unwrap())
            .as_str(),
        &[],
    );
    let (code, body) = path(port, "/healthz");
    assert_eq!((code, body["spool"].as_str(), body["status"].as_str()), (503, Some("low_space"), Some("failing")), "{body}");
    assert_eq!(path(port, "/readyz").0, 503);
}

#[test]
fn a_failed_fsync_makes_the_relay_unhealthy_until_restarted() {
    let dir = tempfile::tempdir().unwrap();
    // Every fdatasync fails (start-up makes none, only commits do): the first message's commit
    // poisons the spool.
    let strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO"];
    let (daemon, port) = daemon(dir.path(), "", &strace);
    assert_eq!(path(port, "/healthz").0, 200, "healthy before any commit");
    let reply = Client::connect(daemon.addr).send_mail("a@x.test", &["b@y.test"], "x\r\n");
    assert_eq!(reply.code / 100, 4, "not accepted: {}", reply.text());
    let (code, body) = path(port, "/healthz");
    assert_eq!((code, body["spool"].as_str()), (503, Some("failed")), "{body}");
    assert_eq!(path(port, "/readyz").0, 503);
    // Restarted (as systemd does when the watchdog starves), on the same spool and port, it
    // recovers the spool and is healthy again.
    let mut daemon = daemon;
    daemon.kill9();
    let restarted = Daemon::spawn(dir.path(), "", &[]); // its config, port included, is kept
    let (code, body) = path(port, "/healthz");
    assert_eq!((code, body["spool"].as_str()), (200, Some("ok")), "{body}");
    drop(restarted);
}

/// A keep-alive connection to the metrics port, for asking while the daemon has no file
/// descriptor left to accept a new one.
struct KeepAlive(TcpStream);

impl KeepAlive {
    fn ask(&mut self, path: &str) -> (u16, String) {
        self.0.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.0.read(&mut chunk).unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|v| v.parse().ok()).unwrap();
                if body.len() >= length {
                    return (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string());
                }
            }
        }
    }
}

#[test]
fn a_listener_that_cannot_accept_is_named_until_it_can_again() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = daemon(dir.path(), "", &["prlimit", "--nofile=96", "--"]);
    let mut monitor = KeepAlive(TcpStream::connect(("127.0.0.1", port)).unwrap());
    monitor.0.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(monitor.ask("/healthz").0, 200);
    // Connect until the daemon runs out of descriptors: its accepts fail (EMFILE).
    let mut clients = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        clients.push(TcpStream::connect(daemon.addr).unwrap());
        std::thread::sleep(Duration::from_millis(5));
        let (code, body) = monitor.ask("/healthz");
        if code == 503 {
            break body;
        }
        assert!(Instant::now() < deadline && clients.len() < 500, "never unhealthy with {} clients", clients.len());
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["listeners_down"], serde_json::json!([daemon.addr.to_string()]), "{body}");
    assert_eq!(body["spool"], "ok");
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A successful accept is what clears it: offer one.
        let _c = TcpStream::connect(daemon.addr);
        std::thread::sleep(Duration::from_millis(100));
        if monitor.ask("/healthz").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still unhealthy after the clients left");
    }
}

/// A connection from `source` (any 127/8 address) to the port.
fn connect_from(source: &str, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
        stream.into_std().unwrap()
    })
}

/// Whether the port answers a request on this connection with 200 (false: closed on us).
fn answers(mut s: TcpStream) -> bool {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

#[test]
fn one_address_cannot_hold_every_metrics_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, port) = daemon(dir.path(), "", &[]);
    // Eight idle connections from one address are its share; the ninth is closed at once.
    let hogs: Vec<TcpStream> = (0..8).map(|_| connect_from("127.0.0.2", port)).collect();
    std::thread::sleep(Duration::from_millis(300)); // let the port accept all eight
    assert!(!answers(connect_from("127.0.0.2", port)), "a ninth connection from one address was served");
    // Another address (the real scraper) is still served.
    assert!(answers(connect_from("127.0.0.3", port)));
    // The share comes back as the hog's connections close.
    drop(hogs);
    let started = Instant::now();
    while !answers(connect_from("127.0.0.2", port)) {
        assert!(started.elapsed() < Duration::from_secs(5), "the address's share never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}
