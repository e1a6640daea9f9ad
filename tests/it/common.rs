//! Shared harness: a relay on 127.0.0.1:0 with its own spool, a raw SMTP client, and the
//! `sluice` binary for tests that must kill or trace a real process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::spool::{SledSpool, SpoolRead};

/// A relay running in a thread of its own with its own runtime, so tests can use blocking
/// clients without starving it.
pub struct TestRelay {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in config order.
    pub addrs: Vec<SocketAddr>,
    pub config: Config,
    /// The YAML the relay was started from.
    yaml: String,
    /// Directories holding files the config names (TLS, users), kept while the relay runs.
    extra_dirs: Vec<tempfile::TempDir>,
    /// Holds the spool and admin socket; removed when the relay is dropped.
    _dir: tempfile::TempDir,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The base config of every test relay; `extra` is appended (top-level keys it repeats win).
pub fn config_yaml(dir: &Path, extra: &str) -> String {
    let mut yaml = format!(
        "hostname: relay.test\nspool: {{ path: {spool} }}\nadmin: {{ socket: {admin} }}\nmetrics: {{ address: null }}\npostmaster: pm@admin.test\n",
        spool = dir.join("spool").display(),
        admin = dir.join("admin.sock").display()
    );
    let overridden: Vec<&str> = extra.lines().filter_map(|l| l.split_once(':').map(|(k, _)| k)).filter(|k| !k.starts_with(' ')).collect();
    yaml = yaml.lines().filter(|l| !overridden.iter().any(|k| l.starts_with(&format!("{k}:")))).map(|l| format!("{l}\n")).collect();
    // Tests never reach the system resolver: a dead loopback name server unless a test brings
    // its own, and delivery on hold unless a test configures it.
    if !extra.contains("dns:") {
        yaml.push_str("dns: { nameservers: [\"127.0.0.1:9\"], timeout: 1s }\n");
    }
    if !extra.contains("delivery:") {
        yaml.push_str("delivery: { paused: true }\n");
    }
    if !extra.contains("sendmail:") {
        yaml.push_str(&format!(
            "sendmail: {{ socket: {}, maildrop: {} }}\n",
            dir.join("sendmail.sock").display(),
            dir.join("maildrop").display()
        ));
    }
    if !extra.lines().any(|l| l.trim_start_matches("  - ").starts_with("listeners:") || l.starts_with("listeners:")) {
        yaml.push_str("listeners:\n  - { address: \"127.0.0.1:0\", mode: relay }\n");
    }
    yaml.push_str(&with_test_io(extra));
    yaml
}

/// `SLUICE_TEST_IO=epoll` (or `uring`) runs every delivering test relay on that I/O backend,
/// so CI runs the delivery tests on both; a test that sets `io:` itself keeps its own.
fn with_test_io(extra: &str) -> String {
    let Ok(io) = std::env::var("SLUICE_TEST_IO") else { return extra.to_string() };
    if extra.contains(" io:") || extra.contains("{ io:") {
        return extra.to_string();
    }
    if extra.contains("delivery:\n") {
        extra.replacen("delivery:\n", &format!("delivery:\n  io: {io}\n"), 1)
    } else {
        extra.replacen("delivery: {", &format!("delivery: {{ io: {io},"), 1)
    }
}

impl TestRelay {
    pub fn start() -> TestRelay {
        Self::with_config("")
    }

    pub fn with_config(extra: &str) -> TestRelay {
        Self::with_clock(extra, Arc::new(sluice::clock::SystemClock))
    }

    /// A relay whose queue runs on `clock` (a [`sluice::clock::ManualClock`] for virtual time).
    pub fn with_clock(extra: &str, clock: Arc<dyn sluice::clock::Clock>) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        let yaml = config_yaml(dir.path(), extra);
        // Loaded from its file, as the daemon is: a reload reads the file again.
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let config = Config::load(&path).unwrap();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let cfg = config.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let running = sluice::daemon::start_with_clock(cfg, clock).await.unwrap();
                addr_tx.send(running.listeners.clone()).unwrap();
                tokio::task::spawn_blocking(move || stop_rx.recv()).await.unwrap().ok();
                running.stop(Duration::from_secs(5)).await;
            });
        });
        let addrs: Vec<SocketAddr> = addr_rx.recv_timeout(Duration::from_secs(20)).expect("relay started");
        TestRelay { addr: addrs[0], addrs, config, yaml, extra_dirs: Vec::new(), _dir: dir, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Stops the relay and returns every stored message with its bytes.
    pub fn stop_and_read(mut self) -> Vec<(sluice::spool::Envelope, String)> {
        self.shutdown();
        let spool = SledSpool::open(&self.config.spool).unwrap();
        let out = spool.list().unwrap().into_iter().map(|e| {
            let body = String::from_utf8_lossy(&spool.read_body(&e).unwrap()).into_owned();
            (e, body)
        });
        let out = out.collect();
        spool.close();
        out
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A relay with TLS (self-signed for relay.test, generated at start), a users file holding
/// `alice` / `right` (bcrypt, cost 4, so debug tests stay fast), and `extra` config.
pub fn tls_auth_yaml(dir: &Path, extra: &str) -> String {
    let users = dir.join("users");
    std::fs::write(&users, format!("alice:{}\n", bcrypt::hash("right", 4).unwrap())).unwrap();
    let mut yaml =
        format!("tls: {{ certificate: {d}/cert.pem, private_key: {d}/key.pem, self_signed_if_missing: true }}\n", d = dir.display());
    if !extra.contains("auth:") {
        yaml.push_str(&format!("auth: {{ users_file: {}, failure_delay: 0s }}\n", users.display()));
    }
    yaml.push_str(extra);
    yaml
}

impl TestRelay {
    /// A relay from [`tls_auth_yaml`] whose files live in their own temporary directory.
    pub fn with_tls(extra: &str) -> TestRelay {
        let files = tempfile::tempdir().unwrap();
        let mut relay = TestRelay::with_config(&tls_auth_yaml(files.path(), extra));
        relay.extra_dirs.push(files);
        relay
    }

    /// A config file equivalent to this relay's, for running `sluice` commands against it.
    pub fn config_path(&self) -> String {
        let path = self._dir.path().join("config.yaml");
        std::fs::write(&path, &self.yaml).unwrap();
        path.to_str().unwrap().to_string()
    }

    pub fn certificate(&self) -> PathBuf {
        self.config.tls.as_ref().expect("TLS configured").certificate.clone()
    }
}

/// The byte stream under a test client: plain, then TLS after STARTTLS or for implicit TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Gone,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Gone => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Gone => Ok(()),
        }
    }
}

/// A client certificate and its key, as PEM.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// TLS to `relay.test`, trusting only the relay's own certificate (real verification).
fn tls_wrap(tcp: TcpStream, certificate: &Path) -> Conn {
    tls_wrap_with(tcp, certificate, None)
}

fn tls_wrap_with(tcp: TcpStream, certificate: &Path, client: Option<&ClientCert>) -> Conn {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(certificate).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()];
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
        None => config.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
    }
    Conn::Tls(Box::new(stream))
}

/// A blocking SMTP client that reads replies line by line.
pub struct Client {
    reader: BufReader<Conn>,
    pub greeting: Reply,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// All lines, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2, an untrusted client).
    pub fn connect_from(addr: SocketAddr, local: &str) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stream = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
            socket.connect(addr).await.unwrap().into_std().unwrap()
        });
        stream.set_nonblocking(false).unwrap();
        Self::from_stream(stream)
    }

    /// Connects from `local` and returns the first reply (for connections refused with 421).
    pub fn connect_refused(addr: SocketAddr, local: &str) -> (u16, String) {
        let c = Self::connect_from(addr, local);
        (c.greeting.code, c.greeting.text())
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self::from_conn(Conn::Plain(stream))
    }

    fn from_conn(conn: Conn) -> Client {
        let mut reader = BufReader::new(conn);
        let greeting = read_reply(&mut reader).expect("greeting");
        Client { reader, greeting }
    }

    /// Implicit TLS (RFC 8314): the handshake comes before the greeting.
    pub fn connect_tls(addr: SocketAddr, certificate: &Path) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self::from_conn(tls_wrap(tcp, certificate))
    }

    /// After a `220` to STARTTLS: runs the handshake on the same connection. Panics if the
    /// server sent anything beyond the 220 (it must not answer pipelined plaintext).
    /// As [`Client::start_tls`], presenting a client certificate.
    pub fn start_tls_with_cert(&mut self, certificate: &Path, client: &ClientCert) {
        assert!(self.reader.buffer().is_empty());
        let old = std::mem::replace(&mut self.reader, BufReader::new(Conn::Gone));
        let Conn::Plain(tcp) = old.into_inner() else { panic!("already TLS") };
        self.reader = BufReader::new(tls_wrap_with(tcp, certificate, Some(client)));
    }

    pub fn start_tls(&mut self, certificate: &Path) {
        assert!(self.reader.buffer().is_empty(), "bytes after the 220: {:?}", String::from_utf8_lossy(self.reader.buffer()));
        let old = std::mem::replace(&mut self.reader, BufReader::new(Conn::Gone));
        let Conn::Plain(tcp) = old.into_inner() else { panic!("already TLS") };
        self.reader = BufReader::new(tls_wrap(tcp, certificate));
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    pub fn reply(&mut self) -> Reply {
        read_reply(&mut self.reader).expect("a reply")
    }

    /// A reply, if one starts to arrive within `wait` (plain connections only).
    pub fn try_reply(&mut self, wait: Duration) -> Option<Reply> {
        if self.reader.buffer().is_empty() {
            let Conn::Plain(tcp) = self.reader.get_ref() else { panic!("try_reply needs a plain connection") };
            let tcp = tcp.try_clone().unwrap();
            tcp.set_read_timeout(Some(wait)).unwrap();
            let arrived = self.reader.fill_buf().is_ok_and(|b| !b.is_empty());
            tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            if !arrived {
                return None;
            }
        }
        Some(self.reply())
    }

    /// Sends one command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends bytes and reads `n` replies.
    pub fn pipeline(&mut self, bytes: &[u8], n: usize) -> Vec<Reply> {
        self.send(bytes);
        (0..n).map(|_| self.reply()).collect()
    }

    /// True when the server closed the connection (EOF before any further reply).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }

    /// EHLO, then the given MAIL and RCPT command lines (parameters and all, each must get
    /// 250), DATA, body, dot; returns the final reply.
    pub fn send_lines(&mut self, mail: &str, rcpts: &[&str], body: &str) -> Reply {
        assert_eq!(self.cmd("EHLO client.test").code, 250);
        assert_eq!(self.cmd(mail).code, 250, "{mail}");
        for rcpt in rcpts {
            assert_eq!(self.cmd(rcpt).code, 250, "{rcpt}");
        }
        assert_eq!(self.cmd("DATA").code, 354);
        self.send(body.as_bytes());
        self.send(b".\r\n");
        self.reply()
    }

    /// EHLO, MAIL, RCPT..., DATA, body, dot; returns the final reply.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        assert_eq!(self.cmd("EHLO client.test").code, 250);
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
        for t in to {
            assert_eq!(self.cmd(&format!("RCPT TO:<{t}>")).code, 250, "RCPT {t}");
        }
        assert_eq!(self.cmd("DATA").code, 354);
        self.send(body.as_bytes());
        self.send(b".\r\n");
        self.reply()
    }
}

fn read_reply(reader: &mut BufReader<Conn>) -> Option<Reply> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let code = line.get(..3)?.parse().ok()?;
        lines.push(line.get(4..).unwrap_or("").to_string());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Some(Reply { code, lines });
        }
    }
}

/// A `sluice run` child process whose listener address is read from its log.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub log: PathBuf,
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Daemon {
    /// Runs `prefix... sluice run --config <dir>/config.yaml`, writing a config for `dir`.
    pub fn spawn(dir: &Path, extra: &str, prefix: &[&str]) -> Daemon {
        Self::spawn_with(dir, extra, prefix, |_| {})
    }

    /// `spawn`, with `adjust` applied to the command first (a pre-exec hook, say).
    pub fn spawn_with(dir: &Path, extra: &str, prefix: &[&str], adjust: impl FnOnce(&mut Command)) -> Daemon {
        let config_path = dir.join("config.yaml");
        if !config_path.exists() {
            std::fs::write(&config_path, config_yaml(dir, extra)).unwrap();
        }
        let log = dir.join(format!("daemon-{}.log", SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend([sluice_bin(), "run", "--config", config_path.to_str().unwrap()]);
        let mut command = Command::new(args[0]);
        command.args(&args[1..]).env("SLUICE_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
        adjust(&mut command);
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("address=").nth(1))
                .and_then(|r| r.split_whitespace().next())
            {
                let addr = addr.parse().unwrap();
                return Daemon { child, addr, config_path, log };
            }
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        // SIGKILL every process whose command line names this config: under strace that is
        // the tracer and the daemon alike.
        let _ = Command::new("pkill").args(["-9", "-f", self.config_path.to_str().unwrap()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `sluice ARGS...` to completion; returns (exit code, stdout, stderr).
pub fn sluice_status(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(sluice_bin()).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `sluice ARGS...` to completion; returns (exit success, stdout, stderr).
pub fn sluice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sluice_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Waits (20 s at most) until a queued recipient matches `pick`; returns it. The queue is
/// read as `sluice queue list` reads it (`config`'s spool, the daemon's if one runs).
pub fn wait_for_recipient(
    config: &Config,
    what: &str,
    pick: impl Fn(&sluice::admin::QueueEntry, &sluice::admin::RecipientEntry) -> bool,
) -> sluice::admin::RecipientEntry {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = sluice::admin::queue_list(config).unwrap();
        if let Some(r) = q.iter().find_map(|e| e.recipients.iter().find(|r| pick(e, r)).cloned()) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {q:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (20 s at most) until nothing is queued.
pub fn wait_for_empty_queue(config: &Config, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sluice::admin::queue_list(config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
