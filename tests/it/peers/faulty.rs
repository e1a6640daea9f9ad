//! A fault-injecting destination: a small SMTP server that misbehaves on purpose, chosen by
//! the local part of the transaction's first recipient (as KumoMTA's test sinks do), or for
//! every transaction by the fault it was started with (per port). It records every body it
//! actually read, whatever it answered, so tests can compare what Sluice believes it
//! delivered with what arrived.
//!
//! Faults (local part or `Fault`):
//! - `data250`: DATA is answered `250` instead of `354`; no body is read.
//! - `mailextra` (per port only: MAIL comes before any recipient): an extra `250` line follows
//!   MAIL's reply.
//! - `rcpt252`: RCPT is answered `252`.
//! - `dotextra`: an extra `250` line follows the final dot's `250`, in the same write.
//! - `dotlate`: the extra line follows 300 ms later, when the connection is idle in a pool.
//! - `dotstall`: the body is read and never answered.
//! - `dotclose`: the body is read and the connection closed without a reply.
//! - `slow`: the final dot is answered after 300 ms.
//! - `hugereply`: RCPT is answered with a 20-line, 57 KB 550.
//!   Anything else is answered normally.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    MailExtra,
}

#[derive(Debug, Clone)]
pub struct Arrival {
    pub body: String,
}

#[derive(Default)]
pub struct FaultState {
    /// Every body read to its final dot, answered or not.
    pub arrivals: Vec<Arrival>,
    pub connections: usize,
    /// Bodies that came in BDAT chunks.
    pub chunked: usize,
    /// Open sessions, so `restart` can cut them.
    open: Vec<TcpStream>,
}

pub struct Faulty {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FaultState>>,
}

impl Faulty {
    /// Listens on 127.0.0.1 at a free port; `pipelining` decides whether EHLO offers it.
    pub fn start(pipelining: bool, fault: Fault) -> Faulty {
        Self::start_offering(pipelining, false, fault)
    }

    /// Offers PIPELINING and CHUNKING (RFC 3030): bodies may come with BDAT.
    pub fn start_chunking() -> Faulty {
        Self::start_offering(true, true, Fault::None)
    }

    fn start_offering(pipelining: bool, chunking: bool, fault: Fault) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FaultState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = shared.clone();
                {
                    let mut st = s.lock().unwrap();
                    st.connections += 1;
                    st.open.push(stream.try_clone().unwrap());
                }
                std::thread::spawn(move || {
                    let _ = session(stream, pipelining, chunking, fault, &s);
                });
            }
        });
        Faulty { addr, state }
    }

    /// Cuts every open session at once, as a next hop that restarts does; the listener stays.
    pub fn restart(&self) {
        for s in self.state.lock().unwrap().open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.lock().unwrap().arrivals.clone()
    }

    /// How many bodies containing `needle` arrived.
    pub fn copies(&self, needle: &str) -> usize {
        self.state.lock().unwrap().arrivals.iter().filter(|a| a.body.contains(needle)).count()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Waits until `n` bodies containing `needle` arrived (or panics after `limit`).
    pub fn wait_for(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.copies(needle) < n {
            assert!(Instant::now() < deadline, "{} of {n} copies of {needle:?} arrived", self.copies(needle));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The path between `<` and `>` of a MAIL or RCPT line.
fn path_of(line: &str) -> String {
    line.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p.to_string()).unwrap_or_default()
}

fn local_part(path: &str) -> String {
    path.split('@').next().unwrap_or("").to_ascii_lowercase()
}

fn huge_reply() -> String {
    let line = "x".repeat(2850);
    let mut r = String::new();
    for i in 0..19 {
        r.push_str(&format!("550-5.1.1 line {i} {line}\r\n"));
    }
    r.push_str("550 5.1.1 the end of a very long refusal\r\n");
    r
}

fn session(stream: TcpStream, pipelining: bool, chunking: bool, fault: Fault, s: &Mutex<FaultState>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 faulty.test ESMTP fault injector\r\n")?;
    let mut rcpts: Vec<String> = Vec::new();
    let mut chunks: Vec<u8> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let verb = cmd.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        let first = rcpts.first().map(|r| local_part(r)).unwrap_or_default();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let pipe = if pipelining { "250-PIPELINING\r\n" } else { "" };
                let chunk = if chunking { "250-CHUNKING\r\n" } else { "" };
                format!("250-faulty.test\r\n{pipe}{chunk}250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
            }
            "HELO" | "NOOP" => "250 2.0.0 ok\r\n".into(),
            "RSET" => {
                rcpts.clear();
                "250 2.0.0 reset\r\n".into()
            }
            "QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            "MAIL" => {
                rcpts.clear();
                match fault {
                    Fault::MailExtra => "250 2.1.0 ok\r\n250 2.0.0 extra\r\n".into(),
                    Fault::None => "250 2.1.0 ok\r\n".into(),
                }
            }
            "RCPT" => {
                let who = local_part(&path_of(&cmd));
                let r = match who.as_str() {
                    "rcpt252" => "252 2.1.5 cannot verify, will try\r\n".to_string(),
                    "hugereply" => huge_reply(),
                    _ => "250 2.1.5 ok\r\n".into(),
                };
                rcpts.push(path_of(&cmd));
                r
            }
            "BDAT" if chunking => {
                let mut words = cmd.split_ascii_whitespace().skip(1);
                let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let mut chunk = vec![0; size];
                std::io::Read::read_exact(&mut input, &mut chunk)?;
                chunks.extend_from_slice(&chunk);
                if words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST")) {
                    let body = String::from_utf8_lossy(&std::mem::take(&mut chunks)).into_owned();
                    let mut st = s.lock().unwrap();
                    st.arrivals.push(Arrival { body });
                    st.chunked += 1;
                    rcpts.clear();
                    "250 2.0.0 queued\r\n".into()
                } else {
                    format!("250 2.0.0 {size} octets\r\n")
                }
            }
            "DATA" if first == "data250" => "250 2.0.0 ok\r\n".into(),
            "DATA" if rcpts.iter().any(|r| local_part(r) == "hugereply") => "554 5.5.1 no valid recipients\r\n".into(),
            "DATA" => {
                out.write_all(b"354 go ahead\r\n")?;
                let Some(body) = read_body(&mut input)? else { return Ok(()) };
                s.lock().unwrap().arrivals.push(Arrival { body });
                let fault = first.clone();
                rcpts.clear();
                match fault.as_str() {
                    "dotextra" => "250 2.0.0 queued\r\n250 2.0.0 stale extra line\r\n".into(),
                    "dotlate" => {
                        out.write_all(b"250 2.0.0 queued\r\n")?;
                        std::thread::sleep(Duration::from_millis(300));
                        "250 2.0.0 stale extra line\r\n".into()
                    }
                    "dotstall" => {
                        // Hold the connection until the client gives up.
                        let mut rest = String::new();
                        while input.read_line(&mut rest).unwrap_or(0) > 0 {
                            rest.clear();
                        }
                        return Ok(());
                    }
                    "dotclose" => {
                        let _ = out.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    "slow" => {
                        std::thread::sleep(Duration::from_millis(300));
                        "250 2.0.0 queued\r\n".into()
                    }
                    _ => "250 2.0.0 queued\r\n".into(),
                }
            }
            _ => "500 5.5.2 unknown command\r\n".into(),
        };
        out.write_all(reply.as_bytes())?;
    }
}

/// The body up to the final dot, unstuffed; `None` when the client went away first.
fn read_body(input: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut body = String::new();
    loop {
        let mut l = String::new();
        if input.read_line(&mut l)? == 0 {
            return Ok(None);
        }
        if l == ".\r\n" {
            return Ok(Some(body));
        }
        body.push_str(l.strip_prefix('.').unwrap_or(&l));
    }
}
