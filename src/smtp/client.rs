//! The outbound SMTP client, sans-IO: replies in, commands and per-recipient outcomes out.
//!
//! One [`Client`] is one connection. The driver feeds what it read with [`Client::feed`] and
//! calls [`Client::poll`] for events, writing whatever the client appended to the output
//! buffer. [`Client::send`] starts a transaction when the client is ready. With PIPELINING
//! (RFC 2920) MAIL, every RCPT and DATA go out in one write, and the body with its final dot in
//! one more; without it, commands go lock-step.
//!
//! Replies are matched to commands one for one, and a reply that cannot belong where it falls
//! ends the connection as a protocol error: a positive DATA reply other than 354, a positive
//! RCPT reply other than 250/251, bytes after the last reply awaited, or a reply to the final
//! dot that arrived before the dot was written. Only the reply to the final dot delivers, and
//! outcomes of a transaction that ended otherwise are reported only once the RSET after it
//! was answered in step: a server whose replies have slipped out of step cannot make us call
//! undelivered mail delivered.

use std::collections::VecDeque;
use std::sync::Arc;

use super::address::{Body, MailParams, Mailbox, RcptParams};
use super::reply::{Enhanced, Reply, ReplyError, ReplyParser};
use super::sasl::{self, Secret};

mod wire;
pub use wire::{LineFolder, dot_stuff, last_chunk};
use wire::{mail_command, rcpt_command};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// Never send STARTTLS.
    Never,
    /// STARTTLS whenever offered (RFC 7435).
    Opportunistic,
    /// TLS or nothing: a server without STARTTLS is a temporary failure.
    Required,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub ehlo_name: String,
    /// A greeting naming this host means the route loops back to us (5.4.6).
    pub our_hostname: String,
    pub tls: TlsPolicy,
    /// Log in after EHLO (smarthosts). Sent only over TLS, never in plain text.
    pub auth: Option<(String, Secret)>,
    /// Send the body with BDAT (RFC 3030) to servers that offer CHUNKING and PIPELINING:
    /// envelope and body in one write, one round trip, no dot-stuffing.
    pub chunking: bool,
}

/// What the server's EHLO reply offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    /// SIZE with its limit (0: no fixed limit).
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub dsn: bool,
    pub chunking: bool,
    /// MT-PRIORITY (RFC 6710).
    pub mt_priority: bool,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// RRVS (RFC 7293).
    pub rrvs: bool,
    /// SASL mechanisms offered with AUTH (upper case).
    pub auth: Vec<String>,
}

impl Capabilities {
    fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities { esmtp: true, ..Capabilities::default() };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "CHUNKING" => caps.chunking = true,
                "MT-PRIORITY" => caps.mt_priority = true,
                "REQUIRETLS" => caps.requiretls = true,
                "RRVS" => caps.rrvs = true,
                "AUTH" => caps.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        caps
    }
}

/// One transaction to send: the envelope and the message (unstuffed, CRLF line ends).
#[derive(Debug, Clone)]
pub struct Message {
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub recipients: Vec<(Mailbox, RcptParams)>,
    pub body: Arc<Vec<u8>>,
}

impl Message {
    fn needs_smtputf8(&self) -> bool {
        self.params.smtputf8 || !self.from.as_ref().is_none_or(Mailbox::is_ascii) || self.recipients.iter().any(|(m, _)| !m.is_ascii())
    }

    fn is_8bit(&self) -> bool {
        self.params.body == Some(Body::EightBitMime) || !self.body.is_ascii()
    }
}

/// The result for one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(Reply),
    /// Try again later.
    Deferred(Reply),
    /// Bounce.
    Failed(Reply),
    /// 452 too many recipients (RFC 5321 4.5.3.1.10): send again in a new transaction now.
    Overflow,
}

impl RcptOutcome {
    /// The reply that decided it (none for an overflow, which is sent again).
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::Deferred(r) | RcptOutcome::Failed(r) => Some(r),
            RcptOutcome::Overflow => None,
        }
    }

    /// The outcome of a final reply (to the dot, or a refusal); 3xx never gets here.
    fn from_reply(reply: &Reply) -> RcptOutcome {
        if reply.code < 300 {
            RcptOutcome::Delivered(reply.clone())
        } else if reply.code < 500 {
            RcptOutcome::Deferred(reply.clone())
        } else {
            RcptOutcome::Failed(reply.clone())
        }
    }
}

/// Why the connection cannot be used any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The greeting was not 2xx (move on to the next host).
    Greeting(Reply),
    /// 421 or another reply that ends the session.
    Closing(Reply),
    /// The server's bytes are not SMTP, or its replies are out of step with our commands.
    Protocol(String),
    /// `TlsPolicy::Required`, but the server offers no STARTTLS (or refused it).
    TlsUnavailable,
    /// The greeting names our own host: the route loops (5.4.6).
    Loop,
    /// Our login was refused, or cannot be made (no TLS, no common mechanism).
    Auth(Reply),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transaction can be sent.
    Ready,
    /// Write the output (it ends with STARTTLS's 220 answer pending); run the TLS handshake and
    /// call [`Client::tls_established`].
    StartTls,
    /// The transaction finished: one outcome per recipient, in order.
    Done(Vec<RcptOutcome>),
    /// The connection is unusable. Any transaction in flight was not delivered.
    Failed(Failure),
}

/// Which timeout applies to the reply awaited now (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Greeting,
    Command,
    DataInit,
    FinalDot,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// AUTH; for LOGIN, `true` while the password is still to be sent.
    Auth(bool),
    Mail,
    Rcpt(usize),
    Data,
    Dot,
    /// `BDAT <size> LAST` with the whole body.
    Bdat,
    Rset,
    Quit,
}

impl Expect {
    /// The command this reply answers, for error texts.
    fn command(self) -> &'static str {
        match self {
            Expect::Greeting => "the greeting",
            Expect::Ehlo => "EHLO",
            Expect::Helo => "HELO",
            Expect::StartTls => "STARTTLS",
            Expect::Auth(_) => "AUTH",
            Expect::Mail => "MAIL",
            Expect::Rcpt(_) => "RCPT",
            Expect::Data => "DATA",
            Expect::Dot => "the final dot",
            Expect::Bdat => "BDAT LAST",
            Expect::Rset => "RSET",
            Expect::Quit => "QUIT",
        }
    }
}

struct Transaction {
    msg: Message,
    outcomes: Vec<Option<RcptOutcome>>,
    accepted: usize,
    /// MAIL failed: every recipient shares its reply.
    aborted: Option<Reply>,
    /// Lock-step: commands still to send, in order.
    unsent: VecDeque<Expect>,
    /// Only the dot was sent after 354 (no recipient was accepted).
    dot_only: bool,
}

pub struct Client {
    cfg: ClientConfig,
    parser: ReplyParser,
    caps: Capabilities,
    tls_active: bool,
    expect: VecDeque<Expect>,
    tx: Option<Transaction>,
    events: VecDeque<Event>,
    ready: bool,
    dead: bool,
    /// The body's last octets (final dot, or BDAT LAST chunk) are in the output, not yet
    /// reported written.
    final_unwritten: bool,
    /// How many octets had arrived when the body's last octets were written: a final reply
    /// that starts before that came while the body was still going out, and cannot answer it.
    written_at: Option<u64>,
    /// Where the reply being handled starts, in octets received.
    reply_start: u64,
    /// The server answered (other than with 421) a command of the transaction in flight.
    answered: bool,
    /// Outcomes of a transaction that ended without a clean 250, until RSET is answered.
    held: Option<Vec<RcptOutcome>>,
    /// The last transaction was refused here, before anything was sent.
    refused_locally: bool,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Client {
        Client {
            cfg,
            parser: ReplyParser::default(),
            caps: Capabilities::default(),
            tls_active: false,
            expect: VecDeque::from([Expect::Greeting]),
            tx: None,
            events: VecDeque::new(),
            ready: false,
            dead: false,
            final_unwritten: false,
            written_at: None,
            reply_start: 0,
            answered: false,
            held: None,
            refused_locally: false,
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_ready(&self) -> bool {
        self.ready && !self.dead
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn waiting(&self) -> Waiting {
        match self.expect.front() {
            None => Waiting::Idle,
            Some(Expect::Greeting) => Waiting::Greeting,
            Some(Expect::Data) => Waiting::DataInit,
            Some(Expect::Dot | Expect::Bdat) => Waiting::FinalDot,
            Some(_) => Waiting::Command,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.feed(bytes);
    }

    /// The driver wrote all output produced so far.
    pub fn written(&mut self) {
        if std::mem::take(&mut self.final_unwritten) {
            self.written_at = Some(self.parser.fed());
        }
    }

    /// Received bytes that are not part of a reply handled yet: on an idle connection, the
    /// server said something nobody asked for.
    pub fn has_unread(&self) -> bool {
        self.parser.pending() > 0
    }

    /// Whether the server answered any command of the transaction in flight (a 421 does not
    /// count: a server closing an idle connection sends one to whatever comes next).
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// The outcomes of a transaction that ended with a refusal, when the connection was lost
    /// while the RSET after it was still unanswered: nothing showed the replies out of step.
    pub fn take_held(&mut self) -> Option<Vec<RcptOutcome>> {
        self.held.take()
    }

    /// The last transaction's outcomes came from [`Client::send`]'s own checks, not the server.
    pub fn refused_locally(&self) -> bool {
        self.refused_locally
    }

    /// The driver refused a transaction itself, without calling [`Client::send`].
    pub fn note_local_refusal(&mut self) {
        self.refused_locally = true;
    }

    /// Processes received replies; returns the next event, or `None` when more input is needed.
    pub fn poll(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.dead {
                return None;
            }
            self.reply_start = self.parser.consumed();
            let reply = match self.parser.next_reply() {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(ReplyError::TooLong) => return Some(self.fail(Failure::Protocol("reply too long".into()))),
                Err(ReplyError::Malformed(text)) => return Some(self.fail(Failure::Protocol(format!("malformed reply: {text}")))),
            };
            let Some(expect) = self.expect.pop_front() else {
                return Some(self.fail(Failure::Protocol(format!("unexpected reply: {reply}"))));
            };
            // Nothing else is awaited, yet more bytes came: the server is out of step (or
            // injects data, as after STARTTLS). Whatever this reply says cannot be trusted.
            if self.expect.is_empty() && expect != Expect::Quit && self.parser.pending() > 0 {
                let what = expect.command();
                return Some(self.fail(Failure::Protocol(format!("unexpected data after the reply to {what} ({reply})"))));
            }
            self.handle(expect, reply, out);
        }
    }

    fn fail(&mut self, failure: Failure) -> Event {
        self.dead = true;
        self.ready = false;
        self.expect.clear();
        self.held = None;
        Event::Failed(failure)
    }

    fn out_of_step(&mut self, expect: Expect, reply: &Reply) {
        let what = expect.command();
        self.push_fail(Failure::Protocol(format!("out-of-step reply to {what}: {reply}")));
    }

    fn push_fail(&mut self, failure: Failure) {
        let e = self.fail(failure);
        self.events.push_back(e);
    }

    fn set_ready(&mut self) {
        self.ready = true;
        self.events.push_back(Event::Ready);
    }

    fn command(&mut self, out: &mut Vec<u8>, line: &str, expect: Expect) {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.expect.push_back(expect);
    }

    fn handle(&mut self, expect: Expect, reply: Reply, out: &mut Vec<u8>) {
        // 421 ends the session whatever was asked (RFC 5321 3.8). Refusals reported before
        // it stand: it was an answer in step.
        if reply.code == 421 && expect != Expect::Quit {
            if let Some(outcomes) = self.held.take() {
                self.events.push_back(Event::Done(outcomes));
            }
            return self.push_fail(Failure::Closing(reply));
        }
        match expect {
            Expect::Greeting => {
                if reply.code != 220 {
                    return self.push_fail(Failure::Greeting(reply));
                }
                let name = reply.lines.first().and_then(|l| l.split_ascii_whitespace().next()).unwrap_or("");
                if name.eq_ignore_ascii_case(&self.cfg.our_hostname) {
                    return self.push_fail(Failure::Loop);
                }
                let ehlo = format!("EHLO {}", self.cfg.ehlo_name);
                self.command(out, &ehlo, Expect::Ehlo);
            }
            Expect::Ehlo if reply.code == 250 => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.after_hello(out);
            }
            Expect::Ehlo if reply.is_permanent() => {
                let helo = format!("HELO {}", self.cfg.ehlo_name);
                self.command(out, &helo, Expect::Helo);
            }
            Expect::Helo if reply.code == 250 => {
                self.caps = Capabilities::default();
                self.after_hello(out);
            }
            Expect::Ehlo | Expect::Helo => self.push_fail(Failure::Closing(reply)),
            Expect::StartTls if reply.code == 220 => self.events.push_back(Event::StartTls),
            Expect::StartTls if self.cfg.tls == TlsPolicy::Required => self.push_fail(Failure::TlsUnavailable),
            // Opportunistic: a refused STARTTLS means going on in plain text.
            Expect::StartTls => self.after_tls_decision(out),
            Expect::Auth(true) if reply.code == 334 => {
                let password = self.cfg.auth.as_ref().map(|(_, p)| sasl::encode(p.expose())).unwrap_or_default();
                self.command(out, &password, Expect::Auth(false));
            }
            Expect::Auth(_) if reply.code == 235 => self.set_ready(),
            Expect::Auth(_) => self.push_fail(Failure::Auth(reply)),
            Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::Dot | Expect::Bdat => self.transaction_reply(expect, reply, out),
            Expect::Rset if reply.code == 250 => {
                if let Some(outcomes) = self.held.take() {
                    self.events.push_back(Event::Done(outcomes));
                }
                self.set_ready();
            }
            Expect::Rset => self.out_of_step(expect, &reply),
            Expect::Quit => self.dead = true,
        }
    }

    fn after_hello(&mut self, out: &mut Vec<u8>) {
        if !self.tls_active && self.cfg.tls != TlsPolicy::Never && self.caps.starttls {
            self.command(out, "STARTTLS", Expect::StartTls);
        } else if !self.tls_active && self.cfg.tls == TlsPolicy::Required {
            self.push_fail(Failure::TlsUnavailable);
        } else {
            self.after_tls_decision(out);
        }
    }

    /// TLS is settled (on, or off by policy or refusal): log in if asked to, then ready.
    fn after_tls_decision(&mut self, out: &mut Vec<u8>) {
        let Some((user, password)) = self.cfg.auth.clone() else { return self.set_ready() };
        let refuse = |text: &str| Failure::Auth(Reply::new(530, Enhanced(5, 7, 0), text.to_string()));
        if !self.tls_active {
            return self.push_fail(refuse("Not sending credentials without TLS"));
        }
        if self.caps.auth.iter().any(|m| m == "PLAIN") {
            let response = sasl::encode(&format!("\0{user}\0{}", password.expose()));
            self.command(out, &format!("AUTH PLAIN {response}"), Expect::Auth(false));
        } else if self.caps.auth.iter().any(|m| m == "LOGIN") {
            self.command(out, &format!("AUTH LOGIN {}", sasl::encode(&user)), Expect::Auth(true));
        } else {
            self.push_fail(refuse("The server offers neither AUTH PLAIN nor AUTH LOGIN"));
        }
    }

    /// TLS was set up before the greeting (implicit TLS, RFC 8314 3.3): the session never
    /// asks for STARTTLS and counts as encrypted (for AUTH and REQUIRETLS). Called before any
    /// input.
    pub fn tls_at_connect(&mut self) {
        self.tls_active = true;
    }

    /// The TLS handshake after [`Event::StartTls`] succeeded: EHLO again (RFC 3207 4.2).
    pub fn tls_established(&mut self, out: &mut Vec<u8>) {
        self.tls_active = true;
        self.caps = Capabilities::default();
        let ehlo = format!("EHLO {}", self.cfg.ehlo_name);
        self.command(out, &ehlo, Expect::Ehlo);
    }

    /// Ends the session politely.
    pub fn quit(&mut self, out: &mut Vec<u8>) {
        self.ready = false;
        self.command(out, "QUIT", Expect::Quit);
    }

    /// Starts a transaction (only when ready). A message this server cannot take (size,
    /// 8-bit, SMTPUTF8) is answered at once with `Done` and nothing is sent.
    pub fn send(&mut self, msg: Message, out: &mut Vec<u8>) {
        assert!(self.is_ready(), "send() needs a ready client");
        self.refused_locally = false;
        if let Some(reply) = self.refusal(&msg) {
            self.refused_locally = true;
            let outcomes = msg.recipients.iter().map(|_| RcptOutcome::Failed(reply.clone())).collect();
            self.events.push_back(Event::Done(outcomes));
            self.events.push_back(Event::Ready);
            return;
        }
        self.ready = false;
        self.answered = false;
        self.written_at = None;
        let mut commands: VecDeque<Expect> = (0..msg.recipients.len()).map(Expect::Rcpt).collect();
        commands.push_front(Expect::Mail);
        let chunked = self.cfg.chunking && self.caps.chunking && self.caps.pipelining;
        commands.push_back(if chunked { Expect::Bdat } else { Expect::Data });
        let n = msg.recipients.len();
        self.tx = Some(Transaction { msg, outcomes: vec![None; n], accepted: 0, aborted: None, unsent: commands, dot_only: false });
        if self.caps.pipelining {
            while self.send_next(out) {}
        } else {
            self.send_next(out);
        }
    }

    fn refusal(&self, msg: &Message) -> Option<Reply> {
        if let Some(max) = self.caps.size.filter(|&m| m > 0)
            && msg.body.len() as u64 > max
        {
            return Some(Reply::new(552, Enhanced(5, 3, 4), format!("Message too big for the destination (limit {max})")));
        }
        if msg.needs_smtputf8() && !self.caps.smtputf8 {
            return Some(Reply::new(553, Enhanced(5, 6, 7), "The destination does not support SMTPUTF8"));
        }
        if msg.is_8bit() && !self.caps.eightbitmime {
            return Some(Reply::new(554, Enhanced(5, 6, 3), "8-bit message and the destination lacks 8BITMIME"));
        }
        // RFC 8689 4.2.1: only over TLS verified for the host, to a host offering REQUIRETLS.
        if msg.params.requiretls && !(self.cfg.tls == TlsPolicy::Required && self.tls_active() && self.caps.requiretls) {
            return Some(Reply::new(
                550,
                Enhanced(5, 7, 30),
                "REQUIRETLS support required: the destination does not offer it over verified TLS",
            ));
        }
        None
    }

    /// Writes the next unsent command of the transaction; false when there is none.
    fn send_next(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(tx) = self.tx.as_mut() else { return false };
        let Some(next) = tx.unsent.pop_front() else { return false };
        let line = match next {
            Expect::Mail => mail_command(&tx.msg, &self.caps),
            Expect::Rcpt(i) => rcpt_command(&tx.msg.recipients[i], &self.caps),
            Expect::Bdat => {
                // The chunk goes whatever the RCPT replies: the server reads and drops it.
                last_chunk(&tx.msg.body, out);
                self.final_unwritten = true;
                self.expect.push_back(Expect::Bdat);
                return true;
            }
            _ => "DATA".to_string(),
        };
        self.command(out, &line, next);
        true
    }

    fn transaction_reply(&mut self, expect: Expect, reply: Reply, out: &mut Vec<u8>) {
        let pipelining = self.caps.pipelining;
        if self.tx.is_none() {
            return self.push_fail(Failure::Protocol("reply outside a transaction".into()));
        }
        self.answered = true;
        // A positive reply where only a refusal or one particular code may stand is out of
        // step: believing it could mark undelivered mail delivered.
        let positive = reply.code < 400;
        let premature = self.final_unwritten || self.written_at.is_some_and(|at| self.reply_start < at);
        let in_step = match expect {
            Expect::Mail => !positive || reply.code == 250,
            Expect::Rcpt(_) => !positive || matches!(reply.code, 250 | 251),
            Expect::Data => !positive || reply.code == 354,
            Expect::Dot | Expect::Bdat => !premature && ((200..300).contains(&reply.code) || !positive),
            _ => unreachable!("not a transaction reply"),
        };
        if !in_step {
            if matches!(expect, Expect::Dot | Expect::Bdat) && premature {
                return self.push_fail(Failure::Protocol(format!("a reply ({reply}) arrived before the end of the message was sent")));
            }
            return self.out_of_step(expect, &reply);
        }
        let Some(tx) = self.tx.as_mut() else { return };
        match expect {
            Expect::Mail => {
                if reply.code != 250 {
                    tx.aborted = Some(reply);
                    if !pipelining {
                        // Nothing more of this transaction goes out.
                        tx.unsent.clear();
                        return self.finish(out);
                    }
                }
            }
            Expect::Rcpt(i) => {
                if tx.aborted.is_none() {
                    tx.outcomes[i] = match reply.code {
                        250 | 251 => {
                            tx.accepted += 1;
                            None
                        }
                        452 if is_too_many_recipients(&reply) && tx.accepted > 0 => Some(RcptOutcome::Overflow),
                        _ => Some(RcptOutcome::from_reply(&reply)),
                    };
                }
                if !pipelining && matches!(tx.unsent.front(), Some(Expect::Data)) && tx.accepted == 0 {
                    // Lock-step and nobody accepted: no DATA at all.
                    tx.unsent.clear();
                    return self.finish(out);
                }
            }
            Expect::Data => {
                if reply.code == 354 {
                    if tx.accepted > 0 && tx.aborted.is_none() {
                        dot_stuff(&tx.msg.body, out);
                    } else {
                        // 354 after every RCPT failed: only the final dot.
                        tx.dot_only = true;
                    }
                    out.extend_from_slice(b".\r\n");
                    self.final_unwritten = true;
                    self.expect.push_back(Expect::Dot);
                    return;
                }
                if tx.aborted.is_none() {
                    set_accepted(tx, &reply);
                }
                return self.finish(out);
            }
            Expect::Dot => {
                if !tx.dot_only && tx.aborted.is_none() {
                    set_accepted(tx, &reply);
                }
                let clean = reply.code == 250 && !tx.dot_only && tx.aborted.is_none();
                return self.finish_with(out, clean);
            }
            Expect::Bdat => {
                let delivered = tx.accepted > 0 && tx.aborted.is_none();
                if delivered {
                    set_accepted(tx, &reply);
                }
                return self.finish_with(out, reply.code == 250 && delivered);
            }
            _ => unreachable!("not a transaction reply"),
        }
        if !pipelining {
            self.send_next(out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.finish_with(out, false);
    }

    /// Reports the outcomes: at once after a clean 250 (the connection is ready again), else
    /// once the RSET sent now is answered in step.
    fn finish_with(&mut self, out: &mut Vec<u8>, clean: bool) {
        let Some(tx) = self.tx.take() else { return };
        let shared = tx.aborted.clone();
        let outcomes = tx
            .outcomes
            .into_iter()
            .map(|o| match (&shared, o) {
                (Some(mail_reply), _) => RcptOutcome::from_reply(mail_reply),
                (None, Some(o)) => o,
                // Accepted at RCPT but the transaction ended before a final reply set it.
                (None, None) => RcptOutcome::Deferred(Reply::new(451, Enhanced(4, 4, 0), "Transaction ended without a final reply")),
            })
            .collect();
        if clean {
            self.events.push_back(Event::Done(outcomes));
            self.set_ready();
        } else {
            self.held = Some(outcomes);
            self.command(out, "RSET", Expect::Rset);
        }
    }
}

/// After DATA or the final dot: every recipient accepted at RCPT shares this reply.
fn set_accepted(tx: &mut Transaction, reply: &Reply) {
    for o in tx.outcomes.iter_mut().filter(|o| o.is_none()) {
        *o = Some(RcptOutcome::from_reply(reply));
    }
}

fn is_too_many_recipients(reply: &Reply) -> bool {
    reply.enhanced == Some(Enhanced(4, 5, 3)) || reply.lines.iter().any(|l| l.to_ascii_lowercase().contains("too many recipients"))
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
