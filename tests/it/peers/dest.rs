//! A scriptable destination SMTP server: records what it receives, counts connections, and
//! answers each command as the test says.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type RcptRule = dyn Fn(&str, usize) -> String + Send + Sync;
type DotRule = dyn Fn(usize) -> String + Send + Sync;

#[derive(Clone)]
pub struct Behavior {
    pub greeting: String,
    pub extensions: Vec<String>,
    /// (recipient address, recipients accepted so far in this transaction) -> reply.
    pub rcpt: Arc<RcptRule>,
    /// Transaction number (0-based, over the server's life) -> reply to the final dot.
    pub after_dot: Arc<DotRule>,
    /// Answer MAIL only after DATA was read (5 s limit): only a pipelining client passes.
    pub hold_mail_until_data: bool,
    /// Close the connection after reading this many body lines, the first time only.
    pub drop_mid_data: Option<usize>,
}

impl Behavior {
    /// Every final dot deferred (451) until `open` turns true, then accepted.
    pub fn deferring_until(open: Arc<std::sync::atomic::AtomicBool>) -> Behavior {
        Behavior {
            after_dot: Arc::new(move |_| match open.load(std::sync::atomic::Ordering::SeqCst) {
                true => "250 2.0.0 ok".into(),
                false => "451 4.3.0 not now".into(),
            }),
            ..Behavior::default()
        }
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            greeting: "220 dest.test ESMTP test server".into(),
            extensions: vec!["PIPELINING".into(), "8BITMIME".into(), "SIZE 100000000".into(), "ENHANCEDSTATUSCODES".into()],
            rcpt: Arc::new(|_, _| "250 2.1.5 ok".into()),
            after_dot: Arc::new(|_| "250 2.0.0 accepted".into()),
            hold_mail_until_data: false,
            drop_mid_data: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub conn: usize,
    pub from: String,
    pub rcpts: Vec<String>,
    /// The accepted RCPT command lines as sent, parameters included.
    pub rcpt_lines: Vec<String>,
    pub body: String,
    /// When the final dot was accepted.
    pub at: std::time::Instant,
}

#[derive(Default)]
pub struct DestState {
    pub transactions: Vec<Received>,
    pub connections: usize,
    pub open: usize,
    pub max_open: usize,
    pub lockstep_detected: bool,
    dots: usize,
    dropped: bool,
    /// When each connection was accepted.
    pub opened: Vec<std::time::Instant>,
    /// STARTTLS commands received (each answered 220 and then the connection is closed: a
    /// TLS stack that fails every handshake). Offered when `extensions` lists STARTTLS.
    pub starttls: usize,
}

pub struct Dest {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<DestState>>,
}

impl Dest {
    pub fn start(behavior: Behavior) -> Dest {
        Self::start_on("127.0.0.1:0", behavior)
    }

    /// On a chosen address, e.g. 127.0.0.2 with the same port as another destination.
    pub fn start_on(addr: &str, behavior: Behavior) -> Dest {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(DestState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (b, s) = (behavior.clone(), shared.clone());
                std::thread::spawn(move || {
                    let conn = {
                        let mut st = s.lock().unwrap();
                        st.connections += 1;
                        st.opened.push(std::time::Instant::now());
                        st.open += 1;
                        st.max_open = st.max_open.max(st.open);
                        st.connections
                    };
                    // The socket closes only after the count drops, so a client that opens its
                    // next connection once this one closed is never counted twice.
                    let keep = stream.try_clone().ok();
                    let _ = session(stream, &b, &s, conn);
                    s.lock().unwrap().open -= 1;
                    drop(keep);
                });
            }
        });
        Dest { addr, state }
    }

    /// Waits until `n` transactions arrived (or panics after `limit`).
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.state.lock().unwrap().transactions.clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} transactions arrived", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The transactions that arrived so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().transactions.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
}

fn path_of(line: &str) -> String {
    line.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p.to_string()).unwrap_or_default()
}

fn session(stream: TcpStream, b: &Behavior, s: &Mutex<DestState>, conn: usize) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    write!(out, "{}\r\n", b.greeting)?;
    let (mut from, mut rcpts, mut accepted) = (String::new(), Vec::new(), 0usize);
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let verb = cmd.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let mut replies: Vec<String> = Vec::new();
        match verb.as_str() {
            "EHLO" => {
                let mut r = String::from("250-dest.test\r\n");
                for (i, e) in b.extensions.iter().enumerate() {
                    r.push_str(&format!("250{}{e}\r\n", if i + 1 == b.extensions.len() { ' ' } else { '-' }));
                }
                out.write_all(r.trim_end().as_bytes())?;
                out.write_all(b"\r\n")?;
                continue;
            }
            "HELO" | "RSET" | "NOOP" => {
                (from, rcpts, accepted) = (String::new(), Vec::new(), 0);
                replies.push("250 2.0.0 ok".into());
            }
            "QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            "STARTTLS" => {
                s.lock().unwrap().starttls += 1;
                out.write_all(b"220 2.0.0 ready\r\n")?;
                return Ok(());
            }
            "MAIL" => {
                from = path_of(&cmd);
                if b.hold_mail_until_data {
                    // Read the rest of the pipelined batch before answering anything.
                    input.get_ref().set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut batch = Vec::new();
                    loop {
                        let mut l = String::new();
                        match input.read_line(&mut l) {
                            Ok(0) => return Ok(()),
                            Ok(_) => {
                                let upper = l.trim_end().to_ascii_uppercase();
                                batch.push(l.trim_end().to_string());
                                if upper == "DATA" {
                                    break;
                                }
                            }
                            Err(_) => {
                                s.lock().unwrap().lockstep_detected = true;
                                out.write_all(b"451 4.3.0 expected a pipelined batch\r\n")?;
                                input.get_ref().set_read_timeout(Some(Duration::from_secs(30)))?;
                                break;
                            }
                        }
                    }
                    input.get_ref().set_read_timeout(Some(Duration::from_secs(30)))?;
                    if batch.last().map(|l| l.eq_ignore_ascii_case("DATA")) != Some(true) {
                        continue;
                    }
                    let mut all = vec!["250 2.1.0 ok".to_string()];
                    for l in &batch[..batch.len() - 1] {
                        let addr = path_of(l);
                        let r = (b.rcpt)(&addr, accepted);
                        if r.starts_with('2') {
                            accepted += 1;
                            rcpts.push(l.clone());
                        }
                        all.push(r);
                    }
                    all.push(if accepted > 0 { "354 go ahead".into() } else { "554 5.5.1 no valid recipients".into() });
                    out.write_all(format!("{}\r\n", all.join("\r\n")).as_bytes())?;
                    if accepted > 0 {
                        receive_body(&mut input, &mut out, b, s, conn, &from, &rcpts)?;
                    }
                    (rcpts, accepted) = (Vec::new(), 0);
                    continue;
                }
                replies.push("250 2.1.0 ok".into());
            }
            "RCPT" => {
                let addr = path_of(&cmd);
                let r = (b.rcpt)(&addr, accepted);
                if r.starts_with('2') {
                    accepted += 1;
                    rcpts.push(cmd.clone());
                }
                replies.push(r);
            }
            "DATA" => {
                if accepted == 0 {
                    replies.push("554 5.5.1 no valid recipients".into());
                } else {
                    out.write_all(b"354 go ahead\r\n")?;
                    receive_body(&mut input, &mut out, b, s, conn, &from, &rcpts)?;
                    (rcpts, accepted) = (Vec::new(), 0);
                    continue;
                }
            }
            _ => replies.push("500 5.5.2 unknown".into()),
        }
        for r in replies {
            out.write_all(format!("{r}\r\n").as_bytes())?;
        }
    }
}

fn receive_body(
    input: &mut BufReader<TcpStream>,
    out: &mut TcpStream,
    b: &Behavior,
    s: &Mutex<DestState>,
    conn: usize,
    from: &str,
    rcpts: &[String],
) -> std::io::Result<()> {
    let mut body = String::new();
    let mut lines = 0;
    loop {
        let mut l = String::new();
        if input.read_line(&mut l)? == 0 {
            return Ok(());
        }
        if l == ".\r\n" {
            break;
        }
        lines += 1;
        if b.drop_mid_data == Some(lines) && !std::mem::replace(&mut s.lock().unwrap().dropped, true) {
            // Simulate a crash mid-DATA, once: close without a reply.
            let _ = out.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        body.push_str(l.strip_prefix('.').unwrap_or(&l));
    }
    let n = {
        let mut st = s.lock().unwrap();
        st.dots += 1;
        st.dots - 1
    };
    let reply = (b.after_dot)(n);
    if reply.starts_with('2') {
        s.lock().unwrap().transactions.push(Received {
            conn,
            from: from.to_string(),
            rcpts: rcpts.iter().map(|l| path_of(l)).collect(),
            rcpt_lines: rcpts.to_vec(),
            body,
            at: std::time::Instant::now(),
        });
    }
    out.write_all(format!("{reply}\r\n").as_bytes())
}
