//! One outbound connection: moves bytes between a socket and the sans-IO SMTP client.
//!
//! Output is written while input is read, so a server that answers before it has read a whole
//! pipelined batch can never deadlock the two (RFC 2920 3.1). The read buffer lives on the
//! connection, so replies that arrive together are all kept (pipelining depends on it).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use super::route::Target;
use crate::config::ClientTimeouts;
use crate::smtp::client::{Client, ClientConfig, Event, Failure, Message, RcptOutcome, TlsPolicy, Waiting};
use crate::stream;

type Stream = stream::Stream<tokio_rustls::client::TlsStream<TcpStream>>;

const READ_BUFFER: usize = 16 * 1024;

/// Why a connection ended before it could do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// TCP connect failed or timed out.
    Connect(String),
    /// The SMTP dialogue failed (greeting refused, 421, protocol error, TLS unavailable, loop).
    Smtp(Failure),
    /// The TLS handshake failed (opportunistic TLS retries the host in plain text).
    Tls(String),
    /// The peer closed the connection, a read or write failed, or a reply timed out.
    Lost(String),
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
            ConnError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnError::Lost(e) => write!(f, "connection lost: {e}"),
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
    /// Smarthost credentials (user, password).
    pub login: Option<(String, crate::smtp::sasl::Secret)>,
}

pub struct Connection {
    stream: Stream,
    client: Client,
    buf: Vec<u8>,
    out: Vec<u8>,
    pub target: Target,
    /// Transactions completed on this connection.
    pub deliveries: usize,
    /// Set when STARTTLS succeeded: `version cipher`.
    pub tls: Option<String>,
    pub idle_since: Instant,
    pub policy: TlsPolicy,
    /// Logged in with the smarthost credentials.
    pub login: bool,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Connects and runs greeting, EHLO and (policy permitting) STARTTLS.
    /// With `login`, the smarthost credentials are presented after TLS.
    pub async fn open(
        target: Target,
        policy: TlsPolicy,
        login: bool,
        settings: &Settings,
        permit: OwnedSemaphorePermit,
    ) -> Result<Connection, ConnError> {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| ConnError::Connect(e.to_string()))?;
        if let Some(source) = settings.source_address {
            socket.bind(SocketAddr::new(source, 0)).map_err(|e| ConnError::Connect(format!("bind {source}: {e}")))?;
        }
        let tcp = tokio::time::timeout(settings.timeouts.connect.0, socket.connect(target.addr))
            .await
            .map_err(|_| ConnError::Connect(format!("{} timed out", target.addr)))?
            .map_err(|e| ConnError::Connect(format!("{}: {e}", target.addr)))?;
        // Without NODELAY each pipelined write waits for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let auth = if login { settings.login.clone() } else { None };
        let cfg = ClientConfig { ehlo_name: settings.ehlo_name.clone(), our_hostname: settings.our_hostname.clone(), tls: policy, auth };
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            client: Client::new(cfg),
            buf: vec![0; READ_BUFFER],
            out: Vec::with_capacity(4096),
            target,
            deliveries: 0,
            tls: None,
            idle_since: Instant::now(),
            policy,
            login,
            _permit: permit,
        };
        match conn.drive(settings, |e| matches!(e, Event::Ready)).await? {
            Event::Ready => Ok(conn),
            other => Err(ConnError::Lost(format!("unexpected {other:?}"))),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.client.is_ready()
    }

    pub fn offers_dsn(&self) -> bool {
        self.client.capabilities().dsn
    }

    /// Sends one transaction; the outcomes once the server has answered it. The connection is
    /// left ready for reuse when possible (after a clean 250, or after RSET).
    pub async fn transact(&mut self, msg: Message, settings: &Settings) -> Result<Vec<RcptOutcome>, ConnError> {
        self.client.send(msg, &mut self.out);
        let outcomes = match self.drive(settings, |e| matches!(e, Event::Done(_))).await? {
            Event::Done(o) => o,
            other => return Err(ConnError::Lost(format!("unexpected {other:?}"))),
        };
        self.deliveries += 1;
        if !self.client.is_ready() {
            // Waiting for the RSET reply; a failure here only costs the connection.
            let _ = self.drive(settings, |e| matches!(e, Event::Ready)).await;
        }
        self.idle_since = Instant::now();
        Ok(outcomes)
    }

    pub async fn quit(mut self, settings: &Settings) {
        self.client.quit(&mut self.out);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.flush(settings)).await;
        let _ = self.stream.shutdown().await;
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
        match tokio::time::timeout(limit, self.stream.read(&mut self.buf)).await {
            Err(_) => Err(ConnError::Lost(format!("no reply within {limit:?}"))),
            Ok(Ok(0)) => Err(ConnError::Lost("connection closed by the server".into())),
            Ok(Ok(n)) => {
                self.client.feed(&self.buf[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(ConnError::Lost(e.to_string())),
        }
    }

    /// Writes the pending output while reading whatever the server sends meanwhile.
    async fn flush(&mut self, settings: &Settings) -> Result<(), ConnError> {
        let data = std::mem::take(&mut self.out);
        let block = settings.timeouts.data_block.0;
        let (mut rd, mut wr) = tokio::io::split(&mut self.stream);
        let mut written = 0;
        while written < data.len() {
            tokio::select! {
                r = tokio::time::timeout(block, wr.write(&data[written..])) => match r {
                    Err(_) => return Err(ConnError::Lost(format!("write stalled for {block:?}"))),
                    Ok(Err(e)) => return Err(ConnError::Lost(e.to_string())),
                    Ok(Ok(0)) => return Err(ConnError::Lost("write returned 0".into())),
                    Ok(Ok(n)) => written += n,
                },
                r = rd.read(&mut self.buf) => match r {
                    Ok(0) => return Err(ConnError::Lost("connection closed by the server".into())),
                    Ok(n) => self.client.feed(&self.buf[..n]),
                    Err(e) => return Err(ConnError::Lost(e.to_string())),
                },
            }
        }
        wr.flush().await.map_err(|e| ConnError::Lost(e.to_string()))
    }

    async fn upgrade(&mut self, settings: &Settings) -> Result<(), ConnError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ConnError::Tls("STARTTLS on a TLS connection".into()));
        };
        let name = ServerName::try_from(self.target.host.clone()).map_err(|e| ConnError::Tls(e.to_string()))?;
        let config = if self.policy == TlsPolicy::Required { settings.verified_tls.clone() } else { settings.tls.clone() };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(settings.timeouts.command.0, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnError::Tls("handshake timed out".into()))?
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        let (_, session) = tls.get_ref();
        let (version, cipher) = stream::tls_names(session);
        self.tls = Some(format!("{version} {cipher}"));
        self.stream = Stream::Tls(Box::new(tls));
        self.client.tls_established(&mut self.out);
        Ok(())
    }
}

/// Opportunistic TLS (RFC 7435): any certificate is accepted, because the alternative is
/// plain text. Signatures are still checked, so the session keys are the server's.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client TLS configuration for required STARTTLS: the WebPKI roots and `extra` PEM files.
pub fn verified_tls(extra: &[std::path::PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for path in extra {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            roots.add(cert.map_err(|e| format!("{}: {e}", path.display()))?).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client TLS configuration for opportunistic STARTTLS.
pub fn opportunistic_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3 are supported by the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Lost(e.to_string())
    }
}
