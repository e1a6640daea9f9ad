//! One outbound connection: moves bytes between a transport and the sans-IO SMTP client.
//!
//! Output is written while input is read (see `transport.rs`), so a server that answers
//! before it has read a whole pipelined batch can never deadlock the two (RFC 2920 3.1). The
//! read buffer lives on the transport, so replies that arrive together are all kept.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::pool::Slot;
use super::route::Target;
use super::tls::TlsLink;
use super::tls_rpt::ResultType;
use super::transport::{IdleState, Sink, Transport};
use crate::config::ClientTimeouts;
use crate::smtp::client::{Client, ClientConfig, Event, Failure, Message, RcptOutcome, TlsPolicy, Waiting};

/// Why a connection ended before it could do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The SMTP dialogue failed (greeting refused, 421, protocol error, TLS unavailable, loop).
    Smtp(Failure),
    /// The TLS handshake failed (opportunistic TLS retries the host in plain text); what
    /// failed, as TLS-RPT names it.
    Tls(String, super::tls_rpt::ResultType),
    /// The peer closed the connection, or a read or write failed.
    Lost(String),
    /// A reply did not come, or a write did not go out, in time.
    Timeout(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Connect(e) => write!(f, "connect failed: {e}"),
            ConnError::Smtp(Failure::Greeting(r)) => write!(f, "greeting refused: {r}"),
            ConnError::Smtp(Failure::Closing(r)) => write!(f, "server closed the session: {r}"),
            ConnError::Smtp(Failure::Protocol(e)) => write!(f, "protocol error: {e}"),
            ConnError::Smtp(Failure::TlsUnavailable) => f.write_str("TLS required but not offered"),
            ConnError::Smtp(Failure::Loop) => f.write_str("the server greets with our own name (mail loop)"),
            ConnError::Smtp(Failure::Auth(r)) => write!(f, "login refused: {r}"),
            ConnError::Tls(e, _) => write!(f, "TLS handshake failed: {e}"),
            ConnError::Lost(e) => write!(f, "connection lost: {e}"),
            ConnError::Timeout(e) => write!(f, "timed out: {e}"),
        }
    }
}

/// What every outbound connection needs to know.
pub struct Settings {
    pub ehlo_name: String,
    pub our_hostname: String,
    pub source_address: Option<std::net::IpAddr>,
    pub timeouts: ClientTimeouts,
    /// Opportunistic TLS: any certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// Required TLS: WebPKI roots plus `delivery.tls_trust`, checked against the MX name.
    pub verified_tls: Arc<rustls::ClientConfig>,
    /// The same roots, for checking a certificate opportunistic TLS accepted anyway.
    pub observer: Arc<rustls::client::WebPkiServerVerifier>,
    /// Smarthost credentials (user, password).
    pub login: Option<(String, crate::smtp::sasl::Secret)>,
    /// `delivery.chunking`.
    pub chunking: bool,
    /// `delivery.starttls_failure_memory`: how long a failed STARTTLS handshake is remembered.
    pub starttls_failure_memory: std::time::Duration,
    /// Rises when a reload changes what connections are opened with (`opened_with`): a
    /// pooled connection opened under an older generation is closed instead of reused.
    pub generation: u64,
    /// What the generation stands for: the settings a connection is opened with, as text.
    pub opened_with: String,
}

/// The bytes under the SMTP dialogue: plain, or TLS after STARTTLS.
enum Link<T> {
    Plain(T),
    Tls(Box<TlsLink<T>>),
    /// Between giving the plain transport to the handshake and the handshake finishing.
    Closed,
}

fn not_connected() -> io::Error {
    io::ErrorKind::NotConnected.into()
}

impl<T: Transport> Link<T> {
    async fn read(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        match self {
            Link::Plain(t) => t.read(sink).await,
            Link::Tls(t) => t.read(sink).await,
            Link::Closed => Err(not_connected()),
        }
    }

    async fn write_all(&mut self, data: &[u8], block: Duration, sink: Sink<'_>) -> io::Result<()> {
        match self {
            Link::Plain(t) => t.write_all(data, block, sink).await,
            Link::Tls(t) => t.write_all(data, block, sink).await,
            Link::Closed => Err(not_connected()),
        }
    }

    async fn shutdown(&mut self) {
        match self {
            Link::Plain(t) => t.shutdown(),
            Link::Tls(t) => t.shutdown().await,
            Link::Closed => {}
        }
    }

    fn idle_state(&mut self) -> IdleState {
        match self {
            Link::Plain(t) => t.idle_state(),
            Link::Tls(t) => t.idle_state(),
            Link::Closed => IdleState::Closed,
        }
    }
}

pub struct Connection<T> {
    link: Link<T>,
    client: Client,
    out: Vec<u8>,
    pub target: Target,
    /// Transactions completed on this connection.
    pub deliveries: usize,
    /// Set when STARTTLS succeeded: `version cipher`.
    pub tls: Option<String>,
    /// With `hop.observe`, what was wrong with the certificate accepted (None: it was valid).
    pub tls_verdict: Option<(super::tls_rpt::ResultType, String)>,
    pub idle_since: Instant,
    pub policy: TlsPolicy,
    /// How it was set up (logged in with the smarthost credentials, ...).
    pub hop: super::Hop,
    /// The settings' generation it was opened under.
    pub generation: u64,
    slot: Slot,
}

impl<T> Connection<T> {
    /// The share of its connection cap this connection holds.
    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    pub fn is_ready(&self) -> bool {
        self.client.is_ready()
    }

    pub fn offers_dsn(&self) -> bool {
        self.client.capabilities().dsn
    }

    pub fn offers_rrvs(&self) -> bool {
        self.client.capabilities().rrvs
    }

    /// The last transaction was refused without a word sent (size, 8-bit, SMTPUTF8,
    /// REQUIRETLS against what the server offers): its replies are ours.
    pub fn refused_locally(&self) -> bool {
        self.client.refused_locally()
    }

    /// Whether the server answered any command of the last transaction; a failure before
    /// that, on a reused connection, means the connection had died while idle.
    pub fn transaction_answered(&self) -> bool {
        self.client.answered()
    }
}

impl<T: Transport> Connection<T> {
    /// Connects and runs greeting, EHLO and (policy permitting) STARTTLS.
    /// With `login`, the smarthost credentials are presented after TLS.
    pub async fn open(
        target: Target,
        policy: TlsPolicy,
        hop: super::Hop,
        settings: &Settings,
        slot: Slot,
    ) -> Result<Connection<T>, ConnError> {
        let transport = tokio::time::timeout(settings.timeouts.connect.0, T::connect(target.addr, settings.source_address))
            .await
            .map_err(|_| ConnError::Connect(format!("{} timed out", target.addr)))?
            .map_err(|e| ConnError::Connect(format!("{}: {e}", target.addr)))?;
        let auth = if hop.login { settings.login.clone() } else { None };
        let cfg = ClientConfig {
            ehlo_name: settings.ehlo_name.clone(),
            our_hostname: settings.our_hostname.clone(),
            tls: policy,
            auth,
            chunking: settings.chunking,
        };
        let mut client = Client::new(cfg);
        let (link, tls) = match hop.implicit_tls {
            true => {
                let tls = Self::handshake(transport, &target, policy, settings).await?;
                client.tls_at_connect();
                let described = tls.describe();
                (Link::Tls(Box::new(tls)), Some(described))
            }
            false => (Link::Plain(transport), None),
        };
        let mut conn = Connection {
            link,
            client,
            out: Vec::with_capacity(4096),
            target,
            deliveries: 0,
            tls,
            tls_verdict: None,
            idle_since: Instant::now(),
            policy,
            hop,
            generation: settings.generation,
            slot,
        };
        match conn.drive(settings, |e| matches!(e, Event::Ready)).await? {
            Event::Ready => Ok(conn),
            other => Err(ConnError::Lost(format!("unexpected {other:?}"))),
        }
    }

    /// Sends one transaction; the outcomes once the server has answered it. The connection is
    /// left ready for reuse when possible (after a clean 250, or after RSET).
    pub async fn transact(&mut self, msg: Message, settings: &Settings) -> Result<Vec<RcptOutcome>, ConnError> {
        let msg = match self.seven_bit(msg) {
            Ok(msg) => msg,
            Err(refusal) => return Ok(refusal),
        };
        self.client.send(msg, &mut self.out);
        let outcomes = match self.drive(settings, |e| matches!(e, Event::Done(_))).await {
            Ok(Event::Done(o)) => o,
            Ok(other) => return Err(ConnError::Lost(format!("unexpected {other:?}"))),
            // Refusals awaiting the RSET's answer stand when the connection is simply gone.
            Err(e @ (ConnError::Lost(_) | ConnError::Timeout(_))) => self.client.take_held().ok_or(e)?,
            Err(e) => return Err(e),
        };
        self.deliveries += 1;
        if !self.client.is_ready() {
            // A Done before Ready comes only with a failure after it (a 421 to RSET).
            let _ = self.drive(settings, |e| matches!(e, Event::Ready)).await;
        }
        self.idle_since = Instant::now();
        Ok(outcomes)
    }

    /// An 8-bit message for a server without 8BITMIME, converted to 7 bits (see
    /// `message::downgrade`); when it cannot be, a 5.6.3 refusal for every recipient. A message
    /// declared 8BITMIME whose body is plain ASCII just goes without the declaration.
    fn seven_bit(&mut self, mut msg: Message) -> Result<Message, Vec<RcptOutcome>> {
        if self.client.capabilities().eightbitmime {
            return Ok(msg);
        }
        if msg.body.is_ascii() {
            msg.params.body = None;
            return Ok(msg);
        }
        match crate::message::downgrade::to_seven_bit(&msg.body) {
            Ok(converted) => {
                metrics::counter!(crate::metrics::DELIVERY_CONVERTED_7BIT).increment(1);
                msg.body = Arc::new(converted);
                msg.params.body = None;
                Ok(msg)
            }
            Err(why) => {
                let text = format!("8-bit message, the destination lacks 8BITMIME, and it cannot be converted: {why}");
                let reply = crate::smtp::reply::Reply::new(554, crate::smtp::reply::Enhanced(5, 6, 3), text);
                self.client.note_local_refusal();
                Err(msg.recipients.iter().map(|_| RcptOutcome::Failed(reply.clone())).collect())
            }
        }
    }

    /// Whether this connection can wait in the pool or serve a transaction: ready, nothing
    /// unread after the last reply, and the peer neither closed it nor spoke unasked.
    pub fn idle_state(&mut self) -> IdleState {
        if !self.client.is_ready() {
            return IdleState::Closed;
        }
        if self.client.has_unread() {
            return IdleState::Unread;
        }
        self.link.idle_state()
    }

    /// QUIT, then wait (briefly) for the server to close: the slot this connection holds is
    /// freed when it drops, and the server must not see its next connection before this one ends.
    pub async fn quit(mut self, settings: &Settings) {
        self.client.quit(&mut self.out);
        let linger = async {
            let _ = self.flush(settings).await;
            self.link.shutdown().await;
            let mut ignore = |_: &[u8]| Ok(());
            while let Ok(n) = self.link.read(&mut ignore).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), linger).await;
    }

    /// Runs the dialogue until an event `stop` accepts; failures end it with an error.
    async fn drive(&mut self, settings: &Settings, stop: impl Fn(&Event) -> bool) -> Result<Event, ConnError> {
        loop {
            while let Some(event) = self.client.poll(&mut self.out) {
                match event {
                    Event::StartTls => {
                        self.flush(settings).await?;
                        self.upgrade(settings).await?;
                    }
                    Event::Failed(f) => return Err(ConnError::Smtp(f)),
                    e if stop(&e) => {
                        self.flush(settings).await?;
                        return Ok(e);
                    }
                    _ => {}
                }
            }
            if self.out.is_empty() {
                self.read_once(settings).await?;
            } else {
                self.flush(settings).await?;
            }
        }
    }

    fn reply_timeout(&self, t: &ClientTimeouts) -> Duration {
        match self.client.waiting() {
            Waiting::Greeting => t.greeting.0,
            Waiting::DataInit => t.data_init.0,
            Waiting::FinalDot => t.final_dot.0,
            Waiting::Command | Waiting::Idle => t.command.0,
        }
    }

    async fn read_once(&mut self, settings: &Settings) -> Result<(), ConnError> {
        let limit = self.reply_timeout(&settings.timeouts);
        let Connection { link, client, .. } = self;
        let sink = &mut |b: &[u8]| {
            client.feed(b);
            Ok(())
        };
        let read = link.read(sink);
        match tokio::time::timeout(limit, read).await {
            Err(_) => Err(ConnError::Timeout(format!("no reply within {limit:?}"))),
            Ok(Ok(0)) => Err(ConnError::Lost("connection closed by the server".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ConnError::Lost(e.to_string())),
        }
    }

    /// Writes the pending output while reading whatever the server sends meanwhile.
    async fn flush(&mut self, settings: &Settings) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Connection { link, client, out, .. } = self;
        let sink = &mut |b: &[u8]| {
            client.feed(b);
            Ok(())
        };
        let result = link.write_all(out, settings.timeouts.data_block.0, sink).await;
        out.clear();
        result.map_err(ConnError::from)?;
        client.written();
        Ok(())
    }

    /// The TLS handshake over `plain` (after STARTTLS, or at once for implicit TLS): the
    /// certificate checked against the host's TLSA records when it has them, else verified
    /// for the host's name under `required`, any under opportunistic.
    async fn handshake(plain: T, target: &Target, policy: TlsPolicy, settings: &Settings) -> Result<TlsLink<T>, ConnError> {
        let name =
            ServerName::try_from(target.host.clone()).map_err(|e| ConnError::Tls(e.to_string(), ResultType::CertificateHostMismatch))?;
        let config = match (&target.dane, policy) {
            (Some(auth), _) => super::dane::client_config(auth),
            (None, TlsPolicy::Required) => settings.verified_tls.clone(),
            (None, _) => settings.tls.clone(),
        };
        TlsLink::connect(plain, config, name, settings.timeouts.command.0).await.map_err(|e| {
            metrics::counter!(crate::metrics::DELIVERY_TLS_FAILURES, "kind" => super::tls::failure_kind(&e)).increment(1);
            let result = match (&target.dane, super::tls::result_type(&e)) {
                // No TLSA record matched what the host presented (RFC 8460 4.3.2.1).
                (Some(_), ResultType::ValidationFailure | ResultType::CertificateNotTrusted) => ResultType::TlsaInvalid,
                (_, other) => other,
            };
            ConnError::Tls(e.to_string(), result)
        })
    }

    async fn upgrade(&mut self, settings: &Settings) -> Result<(), ConnError> {
        let Link::Plain(plain) = std::mem::replace(&mut self.link, Link::Closed) else {
            return Err(ConnError::Tls("STARTTLS on a TLS connection".into(), ResultType::ValidationFailure));
        };
        let tls = Self::handshake(plain, &self.target, self.policy, settings).await?;
        if self.hop.observe && self.policy == TlsPolicy::Opportunistic {
            self.tls_verdict = super::tls::judge(&settings.observer, tls.peer_certificates(), &self.target.host);
        }
        self.tls = Some(tls.describe());
        self.link = Link::Tls(Box::new(tls));
        self.client.tls_established(&mut self.out);
        Ok(())
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut => ConnError::Timeout(e.to_string()),
            _ => ConnError::Lost(e.to_string()),
        }
    }
}
