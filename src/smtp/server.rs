//! The intake session, sans-IO: bytes in, replies and events out.
//!
//! The driver feeds whatever it read with [`Session::feed`], then calls [`Session::poll`] until it
//! returns [`Event::NeedInput`] or [`Event::Close`], writing the output buffer once. All replies to
//! one pipelined batch therefore go out in one write (RFC 2920 3.2). A complete message is handed
//! out as [`Event::Message`]; the session then waits for [`Session::message_stored`] so that the
//! 250 is only written once the driver has made the message durable.

use std::net::IpAddr;
use std::sync::Arc;

use super::address::{MailParams, Mailbox, RcptParams};
use super::command::{self, Command, CommandError, Recipient};
use super::data::{BodyScanner, Violation};
use super::reply::{Reply, codes};
use super::sasl::Credentials;

mod auth;
mod tally;
pub use auth::AuthOutcome;
use auth::SaslStep;
use tally::Current;
pub use tally::{Refused, Tally};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Text line limit without CRLF.
    pub max_line: usize,
    /// After this many error replies the session is closed with 421.
    pub max_errors: usize,
    pub postmaster: Mailbox,
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// AUTH can be offered (a users file is configured).
    pub auth_available: bool,
    /// Submission rules: AUTH before MAIL (RFC 6409 4.3).
    pub require_auth: bool,
    /// Accept recipients at address literals (`user@[192.0.2.1]`).
    pub address_literals: bool,
    /// Recipients that may only be given over TLS.
    pub tls_only_recipients: RecipientRule,
    /// Ask the driver about each recipient's domain before accepting it (null MX on
    /// submission: RFC 7505 says refuse at once rather than queue a certain failure).
    pub check_recipient_domains: bool,
}

/// A test on recipients that policy outside the protocol supplies.
#[derive(Clone)]
pub struct RecipientRule(pub Arc<dyn Fn(&Mailbox) -> bool + Send + Sync>);

impl RecipientRule {
    pub fn never() -> RecipientRule {
        RecipientRule(Arc::new(|_| false))
    }

    pub fn matches(&self, m: &Mailbox) -> bool {
        (self.0)(m)
    }
}

impl std::fmt::Debug for RecipientRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecipientRule")
    }
}

/// The negotiated TLS parameters, for Received and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// The identity of a listed client certificate: relay rights, like AUTH.
    pub certificate_identity: Option<String>,
}

/// What the driver knows about the client when the session starts.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// Whether recipients at any domain are accepted without AUTH (trusted network).
    pub relay_allowed: bool,
    /// AUTH may be used without TLS from this address (`auth.plaintext_networks`).
    pub plaintext_auth: bool,
    /// Set for implicit TLS (RFC 8314): the session starts encrypted.
    pub tls: Option<TlsInfo>,
    /// The client must STARTTLS before MAIL (per-network policy).
    pub tls_required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    pub mailbox: Mailbox,
    pub params: RcptParams,
}

/// A complete transaction, handed to the driver for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub helo: String,
    /// EHLO (ESMTP) rather than HELO (SMTP), for the Received `with` clause.
    pub esmtp: bool,
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub recipients: Vec<Rcpt>,
    /// The message (CRLF line ends, unstuffed), less what the driver took with
    /// [`Session::swap_body`] while it arrived.
    pub body: Vec<u8>,
    pub tls: Option<TlsInfo>,
    /// The authenticated user, if any.
    pub identity: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Replies so far are in the output buffer; feed more input.
    NeedInput,
    /// Store this message, then call [`Session::message_stored`].
    Message(Box<Transaction>),
    /// Write the output (the 220), run the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// Check these credentials, then call [`Session::auth_result`].
    Authenticate(Credentials),
    /// Check this recipient domain, then call [`Session::recipient_checked`].
    CheckRecipient(String),
    /// Write the output buffer and close the connection.
    Close,
}

/// Which read timeout applies now (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Command,
    Data,
}

#[derive(Debug)]
struct Envelope {
    from: Option<Mailbox>,
    params: MailParams,
    recipients: Vec<Rcpt>,
    body: Vec<u8>,
    /// BDAT state: the scanner across chunks, and whether a chunk already failed (RFC 3030 2).
    chunks: Option<BodyScanner>,
    chunk_failed: bool,
}

impl Envelope {
    /// Already a recipient (the domain compared without case; the local part as given).
    fn names(&self, mailbox: &Mailbox) -> bool {
        self.recipients.iter().any(|r| r.mailbox.local == mailbox.local && r.mailbox.domain.eq_ignore_ascii_case(&mailbox.domain))
    }
}

#[derive(Debug)]
enum Phase {
    Command,
    /// Discarding an overlong line up to its LF, then answering with the reply.
    DiscardLine(Reply),
    /// Waiting for the client's next SASL response line.
    AuthResponse(SaslStep),
    AwaitingAuth,
    /// A recipient waits for the driver's verdict on its domain.
    AwaitingRecipientCheck(Box<Rcpt>),
    /// STARTTLS accepted; nothing is read until the driver reports the handshake.
    AwaitingTls,
    Data(BodyScanner),
    /// Reading a BDAT chunk: `accepted` chunks go to the envelope, others are read and dropped.
    Chunk {
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    AwaitingStore,
    Closed,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    client: ClientInfo,
    input: Vec<u8>,
    pos: usize,
    helo: Option<(String, bool)>,
    envelope: Option<Envelope>,
    phase: Phase,
    errors: usize,
    /// Set by the driver when the spool cannot take mail; MAIL is answered with it.
    mail_gate: Option<Reply>,
    /// Refusals written since the driver last took them (for the log and metrics).
    refusals: Vec<Refused>,
    /// Commands received, by verb.
    tally: Tally,
    /// The command being answered, for the refusals' log lines.
    current: Current,
    tls: Option<TlsInfo>,
    identity: Option<String>,
    /// Transactions begun (MAIL accepted), so the driver can tell whose body bytes it holds.
    transactions: u64,
    /// Close an unauthenticated session that pipelines where RFC 2920 does not allow it.
    forbid_unauth_pipelining: bool,
}

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, client: ClientInfo) -> Self {
        Session {
            cfg,
            input: Vec::new(),
            pos: 0,
            helo: None,
            envelope: None,
            phase: Phase::Command,
            errors: 0,
            mail_gate: None,
            refusals: Vec::new(),
            tally: Tally::default(),
            current: Current::default(),
            tls: client.tls.clone(),
            identity: None,
            transactions: 0,
            forbid_unauth_pipelining: false,
            client,
        }
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        Reply::plain(220, vec![format!("{} ESMTP Sluice ready", self.cfg.hostname)]).write_to(out);
    }

    /// Who sends: the AUTH identity, else that of a listed client certificate.
    pub fn sender_identity(&self) -> Option<&str> {
        self.identity.as_deref().or(self.tls.as_ref().and_then(|t| t.certificate_identity.as_deref()))
    }

    /// Tells the session that new transactions cannot be stored now (`None`: they can).
    pub fn set_mail_gate(&mut self, reply: Option<Reply>) {
        self.mail_gate = reply;
    }

    /// A transaction is under way (MAIL was accepted).
    pub fn in_transaction(&self) -> bool {
        self.envelope.is_some()
    }

    /// From now on, an unauthenticated client that sends more after a command it must wait
    /// on (RFC 2920 3.1: EHLO, DATA, VRFY, EXPN, NOOP; RFC 3207 STARTTLS; AUTH without an
    /// initial response), or anything after a command before EHLO granted PIPELINING, gets
    /// 554 5.5.0 and the connection is closed. A client that does not wait for the server's
    /// answers is not talking SMTP; smuggling and desynchronisation attacks are what does that.
    /// Off for `sendmail -bs`, which reads a whole dialogue from a file.
    pub fn forbid_unauth_pipelining(&mut self) {
        self.forbid_unauth_pipelining = true;
    }

    /// The client sent `cmd` with more input behind it where it should have waited.
    fn out_of_step(&self, cmd: &Command) -> bool {
        if !self.forbid_unauth_pipelining || self.identity.is_some() || self.pos >= self.input.len() {
            return false;
        }
        let pipelining = matches!(self.helo, Some((_, true)));
        !pipelining
            || matches!(
                cmd,
                Command::Ehlo(_)
                    | Command::Helo(_)
                    | Command::Data
                    | Command::StartTls
                    | Command::Vrfy
                    | Command::Expn
                    | Command::Noop
                    | Command::Auth { initial: None, .. }
            )
    }

    /// Message data is under way: in DATA, in a BDAT chunk, or between the chunks of one.
    pub fn receiving_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. }) || self.envelope.as_ref().is_some_and(|e| e.chunks.is_some())
    }

    /// Which transaction is (or was last) under way: it changes with every accepted MAIL.
    pub fn transaction_serial(&self) -> u64 {
        self.transactions
    }

    /// The message bytes received for the current transaction since the last call, once there
    /// are at least `at_least` of them, swapped into `into` (whose buffer, emptied, the
    /// session fills next: the two buffers go round instead of one allocated per piece). The
    /// driver moves a large body out as it arrives, so the session never holds more than
    /// about one read of it; the final [`Transaction::body`] holds only what was not taken.
    pub fn swap_body(&mut self, at_least: usize, into: &mut Vec<u8>) -> bool {
        let Some(envelope) = self.envelope.as_mut() else { return false };
        if envelope.body.len() < at_least.max(1) {
            return false;
        }
        into.clear();
        std::mem::swap(&mut envelope.body, into);
        true
    }

    pub fn waiting(&self) -> Waiting {
        match self.phase {
            Phase::Data(_) | Phase::Chunk { .. } => Waiting::Data,
            _ => Waiting::Command,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        // Compact consumed input so the buffer does not grow with the session.
        if self.pos > 0 && self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The result of storing the message from the last [`Event::Message`].
    pub fn message_stored(&mut self, result: Result<&str, Reply>, out: &mut Vec<u8>) {
        debug_assert!(matches!(self.phase, Phase::AwaitingStore));
        self.phase = Phase::Command;
        match result {
            Ok(queue_id) => codes::queued(queue_id).write_to(out),
            Err(reply) => self.reply(reply, out),
        }
    }

    /// The verdict on the domain of the recipient from the last [`Event::CheckRecipient`]:
    /// `None` accepts it, a reply refuses it.
    pub fn recipient_checked(&mut self, refusal: Option<Reply>, out: &mut Vec<u8>) {
        let Phase::AwaitingRecipientCheck(rcpt) = std::mem::replace(&mut self.phase, Phase::Command) else {
            debug_assert!(false, "recipient_checked without a recipient waiting");
            return;
        };
        match (refusal, self.envelope.as_mut()) {
            (Some(reply), _) => self.reply(reply, out),
            (None, Some(envelope)) => {
                if !envelope.names(&rcpt.mailbox) {
                    envelope.recipients.push(*rcpt);
                }
                codes::recipient_ok().write_to(out);
            }
            (None, None) => self.reply(codes::bad_sequence("Need MAIL before RCPT"), out),
        }
    }

    /// Closes the session with a reply (timeout, shutdown).
    pub fn close_with(&mut self, reply: Reply, out: &mut Vec<u8>) {
        reply.write_to(out);
        self.refusals.push(Refused { reply, command: None, from: self.transaction_sender(), to: None });
        self.phase = Phase::Closed;
    }

    /// Processes buffered input until more is needed, a message is complete, or the session ends.
    pub fn poll(&mut self, out: &mut Vec<u8>) -> Event {
        loop {
            match &mut self.phase {
                Phase::Closed => return Event::Close,
                Phase::AwaitingStore | Phase::AwaitingAuth | Phase::AwaitingTls | Phase::AwaitingRecipientCheck(_) => {
                    return Event::NeedInput;
                }
                Phase::AuthResponse(_) => {
                    if let Some(event) = self.read_sasl_line(out) {
                        return event;
                    }
                }
                Phase::Data(scanner) => {
                    let envelope = self.envelope.as_mut().expect("DATA phase has an envelope");
                    let (n, done) = scanner.feed(&self.input[self.pos..], &mut envelope.body);
                    self.pos += n;
                    if !done {
                        return Event::NeedInput;
                    }
                    let violation = scanner.violation();
                    if let Some(event) = self.finish_message(violation, out) {
                        return event;
                    }
                }
                Phase::Chunk { .. } => {
                    if let Some(event) = self.read_chunk(out) {
                        return event;
                    }
                }
                Phase::DiscardLine(_) => match memchr::memchr(b'\n', &self.input[self.pos..]) {
                    Some(i) => {
                        self.pos += i + 1;
                        let Phase::DiscardLine(reply) = std::mem::replace(&mut self.phase, Phase::Command) else { unreachable!() };
                        self.reply(reply, out);
                    }
                    None => {
                        self.pos = self.input.len();
                        return Event::NeedInput;
                    }
                },
                Phase::Command => {
                    let rest = &self.input[self.pos..];
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        if rest.len() > command::MAX_LINE {
                            self.pos = self.input.len();
                            self.phase = Phase::DiscardLine(overlong(rest).reply());
                        }
                        return Event::NeedInput;
                    };
                    let line_end = self.pos + lf;
                    let line_start = self.pos;
                    self.pos = line_end + 1;
                    let line = &self.input[line_start..line_end];
                    let result = match line.strip_suffix(b"\r") {
                        _ if lf + 1 > command::MAX_LINE => Err(overlong(line)),
                        None => Err(CommandError::Syntax("Bare LF in command line; use CRLF")),
                        Some(l) if l.contains(&b'\r') => Err(CommandError::Syntax("Bare CR in command line")),
                        Some(l) => command::parse(l),
                    };
                    self.current = Current::of(result.as_ref().ok(), &mut self.tally);
                    let event = match result {
                        Ok(cmd) if self.out_of_step(&cmd) => {
                            self.pos = self.input.len();
                            self.close_with(codes::out_of_step(), out);
                            Some(Event::Close)
                        }
                        Ok(cmd) => self.command(cmd, out),
                        Err(e) => {
                            self.reply(e.reply(), out);
                            None
                        }
                    };
                    if let Some(event) = event {
                        return event;
                    }
                }
            }
            if self.is_closed() {
                return Event::Close;
            }
        }
    }

    /// The refusals written since the last call, oldest first.
    pub fn take_refusals(&mut self) -> std::vec::Drain<'_, Refused> {
        self.refusals.drain(..)
    }

    /// The commands received so far, by verb.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The transaction's sender as the log shows it (`<a@b>`, `<>`).
    fn transaction_sender(&self) -> Option<String> {
        let envelope = self.envelope.as_ref()?;
        Some(envelope.from.as_ref().map_or_else(|| "<>".to_string(), |m| format!("<{m}>")))
    }

    /// Writes a reply, counting errors; closes on 421 or when the error budget is spent.
    fn reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        reply.write_to(out);
        if reply.code >= 400 {
            let from = self.current.from.clone().or_else(|| self.transaction_sender());
            let refused = Refused { reply: reply.clone(), command: self.current.verb, from, to: self.current.to.clone() };
            self.refusals.push(refused);
        }
        if reply.closes() {
            self.phase = Phase::Closed;
            return;
        }
        // Recipients over the limit count too: 10,000 RCPTs must not go on for ever.
        if reply.code >= 500 || reply.enhanced == Some(super::reply::Enhanced(4, 5, 3)) {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                codes::closing("Too many errors, closing connection").write_to(out);
                self.phase = Phase::Closed;
            }
        }
    }

    /// Runs one command; returns an event when the driver must act before the session goes on.
    fn command(&mut self, cmd: Command, out: &mut Vec<u8>) -> Option<Event> {
        match cmd {
            Command::Ehlo(name) => {
                self.envelope = None;
                let c = &self.cfg;
                let mut lines = vec![
                    format!("{} greets {}", c.hostname, name),
                    "PIPELINING".into(),
                    format!("SIZE {}", c.max_message_size),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "CHUNKING".into(),
                    // RFC 6710 9.2: priorities only reorder mail within this relay's queues.
                    "MT-PRIORITY MIXER".into(),
                    // RFC 7293: accepted and passed on (Sluice holds no mailboxes to check).
                    "RRVS".into(),
                ];
                if c.tls_available && self.tls.is_none() {
                    lines.push("STARTTLS".into());
                }
                // RFC 8689 4.1: REQUIRETLS is only meaningful (and accepted) over TLS.
                if self.tls.is_some() {
                    lines.push("REQUIRETLS".into());
                }
                if self.auth_offered() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                lines.push("DSN".into());
                self.helo = Some((name, true));
                Reply::plain(250, lines).write_to(out);
            }
            Command::Helo(name) => {
                self.envelope = None;
                Reply::plain(250, vec![self.cfg.hostname.clone()]).write_to(out);
                self.helo = Some((name, false));
            }
            Command::Mail { from, params } => {
                let reply = self.mail(from, params);
                self.reply(reply, out);
            }
            Command::Rcpt { to, params } => match self.rcpt(to, params) {
                Ok(rcpt)
                    if self.cfg.check_recipient_domains && !rcpt.mailbox.is_address_literal() && rcpt.mailbox != self.cfg.postmaster =>
                {
                    let domain = rcpt.mailbox.domain.clone();
                    self.phase = Phase::AwaitingRecipientCheck(Box::new(rcpt));
                    return Some(Event::CheckRecipient(domain));
                }
                Ok(rcpt) => {
                    // A recipient given twice gets one copy (the next hop would deliver two).
                    if let Some(envelope) = self.envelope.as_mut()
                        && !envelope.names(&rcpt.mailbox)
                    {
                        envelope.recipients.push(rcpt);
                    }
                    codes::recipient_ok().write_to(out);
                }
                Err(reply) => self.reply(reply, out),
            },
            Command::Data => match &self.envelope {
                None => self.reply(codes::bad_sequence("Need MAIL and RCPT first"), out),
                Some(e) if e.chunks.is_some() => self.reply(codes::bad_sequence("DATA not allowed after BDAT"), out),
                Some(e) if e.recipients.is_empty() => self.reply(codes::no_valid_recipients(), out),
                Some(_) => {
                    codes::start_data().write_to(out);
                    self.phase = Phase::Data(BodyScanner::data(self.cfg.max_message_size, self.cfg.max_line));
                }
            },
            Command::Bdat { size, last } => {
                let refusal = self.chunk_refusal(size);
                if let (Some(_), Some(e)) = (&refusal, self.envelope.as_mut()) {
                    // A refused chunk fails the transaction: later chunks are refused until RSET.
                    e.chunk_failed = true;
                }
                self.phase = Phase::Chunk { remaining: size, last, refusal };
            }
            Command::Rset => {
                self.envelope = None;
                codes::ok().write_to(out);
            }
            Command::Noop => codes::ok().write_to(out),
            Command::Help => codes::help().write_to(out),
            Command::Vrfy => codes::vrfy().write_to(out),
            Command::Expn => self.reply(codes::not_implemented("EXPN not available"), out),
            Command::Quit => {
                codes::bye().write_to(out);
                self.phase = Phase::Closed;
            }
            Command::StartTls => return self.start_tls(out),
            Command::Auth { mechanism, initial } => {
                return self.auth(&mechanism, initial.as_deref(), out);
            }
        }
        None
    }

    fn mail(&mut self, from: Option<Mailbox>, params: MailParams) -> Reply {
        if self.helo.is_none() {
            return codes::bad_sequence("Send EHLO or HELO first");
        }
        if self.envelope.is_some() {
            return codes::bad_sequence("Nested MAIL command");
        }
        if self.client.tls_required && self.tls.is_none() {
            return Reply::new(530, super::reply::Enhanced(5, 7, 0), "Must issue a STARTTLS command first");
        }
        if self.cfg.require_auth && self.identity.is_none() {
            return Reply::new(530, super::reply::Enhanced(5, 7, 0), "Authentication required");
        }
        if params.requiretls && self.tls.is_none() {
            return Reply::new(530, super::reply::Enhanced(5, 7, 10), "REQUIRETLS needs a TLS session: issue STARTTLS first");
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size as u64) {
            return codes::too_big();
        }
        if let Some(reply) = &self.mail_gate {
            return reply.clone();
        }
        self.envelope = Some(Envelope { from, params, recipients: Vec::new(), body: Vec::new(), chunks: None, chunk_failed: false });
        self.transactions += 1;
        codes::sender_ok()
    }

    /// The recipient, if every rule allows it; else the refusal.
    fn rcpt(&mut self, to: Recipient, params: RcptParams) -> Result<Rcpt, Reply> {
        let Some(envelope) = self.envelope.as_mut() else {
            return Err(codes::bad_sequence("Need MAIL before RCPT"));
        };
        let mailbox = match to {
            Recipient::Postmaster => self.cfg.postmaster.clone(),
            Recipient::Mailbox(m) if m.local.eq_ignore_ascii_case("postmaster") && m.domain.eq_ignore_ascii_case(&self.cfg.hostname) => {
                self.cfg.postmaster.clone()
            }
            Recipient::Mailbox(m) => {
                if m.is_address_literal() && !self.cfg.address_literals {
                    return Err(Reply::new(550, super::reply::Enhanced(5, 1, 2), "Recipients at address literals are not accepted"));
                }
                if self.tls.is_none() && self.cfg.tls_only_recipients.matches(&m) {
                    return Err(Reply::new(
                        530,
                        super::reply::Enhanced(5, 7, 0),
                        "Must issue a STARTTLS command first: this recipient requires TLS",
                    ));
                }
                if !m.is_ascii() && !envelope.params.smtputf8 {
                    return Err(CommandError::Address(super::address::AddressError::NeedsSmtpUtf8).reply());
                }
                // Sluice has no local mailboxes: every other recipient is relayed.
                let certified = self.tls.as_ref().is_some_and(|t| t.certificate_identity.is_some());
                if !self.client.relay_allowed && self.identity.is_none() && !certified {
                    return Err(codes::relay_denied());
                }
                m
            }
        };
        if envelope.recipients.len() >= self.cfg.max_recipients {
            return Err(codes::too_many_recipients());
        }
        Ok(Rcpt { mailbox, params })
    }

    fn chunk_refusal(&mut self, size: u64) -> Option<Reply> {
        let max = self.cfg.max_message_size;
        let Some(envelope) = self.envelope.as_mut() else {
            return Some(codes::bad_sequence("Need MAIL and RCPT before BDAT"));
        };
        if envelope.chunk_failed {
            return Some(codes::bad_sequence("Previous BDAT failed; send RSET"));
        }
        if envelope.recipients.is_empty() {
            return Some(codes::no_valid_recipients());
        }
        let scanner = envelope.chunks.get_or_insert_with(|| BodyScanner::chunks(max, self.cfg.max_line));
        if scanner.size() as u64 + size > max as u64 {
            return Some(codes::too_big());
        }
        None
    }

    /// Reads BDAT octets (all of them, even for a refused chunk), then answers the chunk.
    fn read_chunk(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        let Phase::Chunk { remaining, last, refusal } = &mut self.phase else { unreachable!() };
        let available = (self.input.len() - self.pos) as u64;
        let take = available.min(*remaining) as usize;
        let bytes = &self.input[self.pos..self.pos + take];
        if refusal.is_none() {
            let (scanner, body) = accepted_chunks(&mut self.envelope);
            scanner.feed(bytes, body);
        }
        self.pos += take;
        *remaining -= take as u64;
        if *remaining > 0 {
            return Some(Event::NeedInput);
        }
        let (last, refusal) = (*last, refusal.take());
        self.phase = Phase::Command;
        if let Some(reply) = refusal {
            self.reply(reply, out);
            return self.is_closed().then_some(Event::Close);
        }
        let (scanner, body) = accepted_chunks(&mut self.envelope);
        if !last {
            codes::chunk_ok(scanner.size() as u64).write_to(out);
            return None;
        }
        scanner.finish_chunks(body);
        let violation = scanner.violation();
        self.finish_message(violation, out)
    }

    /// The end of a message: a refusal for a violation, or the transaction for the driver.
    fn finish_message(&mut self, violation: Option<Violation>, out: &mut Vec<u8>) -> Option<Event> {
        let envelope = self.envelope.take().expect("a finished message has an envelope");
        self.phase = Phase::Command;
        let refusal = match violation {
            Some(Violation::BareLineEnding) => Some(codes::bad_line_endings()),
            Some(Violation::LineTooLong) => Some(codes::data_line_too_long()),
            Some(Violation::TooBig) => Some(codes::too_big()),
            Some(Violation::Nul) => Some(Reply::new(550, super::reply::Enhanced(5, 6, 0), "NUL characters are not allowed in messages")),
            None => None,
        };
        if let Some(reply) = refusal {
            self.reply(reply, out);
            return self.is_closed().then_some(Event::Close);
        }
        let (helo, esmtp) = self.helo.clone().expect("MAIL requires HELO");
        self.phase = Phase::AwaitingStore;
        Some(Event::Message(Box::new(Transaction {
            helo,
            esmtp,
            from: envelope.from,
            params: envelope.params,
            recipients: envelope.recipients,
            body: envelope.body,
            tls: self.tls.clone(),
            identity: self.identity.clone(),
        })))
    }
}

/// The error for a line too long to even parse: AUTH has its own code (RFC 4954 6).
fn overlong(line: &[u8]) -> CommandError {
    if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ") { CommandError::AuthLineTooLong } else { CommandError::LineTooLong }
}

/// The BDAT scanner and body of a transaction whose chunk was accepted (both exist by then).
fn accepted_chunks(envelope: &mut Option<Envelope>) -> (&mut BodyScanner, &mut Vec<u8>) {
    let envelope = envelope.as_mut().expect("accepted chunk has an envelope");
    let scanner = envelope.chunks.as_mut().expect("accepted chunk has a scanner");
    (scanner, &mut envelope.body)
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
