//! Client TLS driven by hand over any transport: rustls turns plaintext into records and
//! back, and the transport moves the records. tokio-rustls would need AsyncRead/AsyncWrite,
//! which io_uring streams do not have; one implementation serves both backends.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme};

use super::transport::{IdleState, Sink, Transport, closed_by_peer};

pub struct TlsLink<T> {
    inner: T,
    session: ClientConnection,
    /// Decrypted bytes not yet handed on.
    plain: Vec<u8>,
    /// Records waiting to be written.
    records: Vec<u8>,
}

/// What kind of failure a failed handshake was, for `sluice_delivery_tls_failures_total`.
pub fn failure_kind(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::TimedOut {
        return "timeout";
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => "certificate",
        _ => "handshake",
    }
}

/// A failed handshake as a TLS-RPT result type (RFC 8460 4.3.2.1): which certificate check
/// failed, or `validation-failure` for anything else.
pub fn result_type(e: &io::Error) -> super::tls_rpt::ResultType {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(e) => rustls_result_type(e),
        None => super::tls_rpt::ResultType::ValidationFailure,
    }
}

fn rustls_result_type(e: &rustls::Error) -> super::tls_rpt::ResultType {
    use super::tls_rpt::ResultType;
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => ResultType::CertificateHostMismatch,
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => ResultType::CertificateExpired,
            C::UnknownIssuer | C::BadSignature => ResultType::CertificateNotTrusted,
            _ => ResultType::ValidationFailure,
        },
        _ => ResultType::ValidationFailure,
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Feeds received records to the session and collects what they decrypt to.
fn absorb(session: &mut ClientConnection, mut bytes: &[u8], plain: &mut Vec<u8>) -> io::Result<()> {
    while !bytes.is_empty() {
        if session.read_tls(&mut bytes)? == 0 {
            return Err(invalid("TLS session refused more input"));
        }
        // The rustls error is kept whole, so a failed handshake can be told apart by kind.
        let state = session.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let start = plain.len();
            plain.resize(start + n, 0);
            session.reader().read_exact(&mut plain[start..])?;
        }
    }
    Ok(())
}

impl<T: Transport> TlsLink<T> {
    /// Runs the handshake over `inner` (already past STARTTLS); `limit` bounds the whole of it.
    pub async fn connect(
        inner: T,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
    ) -> io::Result<TlsLink<T>> {
        let session = ClientConnection::new(config, name).map_err(invalid)?;
        let mut link = TlsLink { inner, session, plain: Vec::new(), records: Vec::new() };
        tokio::time::timeout(limit, link.handshake(limit))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(link)
    }

    async fn handshake(&mut self, limit: Duration) -> io::Result<()> {
        while self.session.is_handshaking() {
            self.send_records(limit).await?;
            if self.session.is_handshaking() && self.session.wants_read() {
                let TlsLink { inner, session, plain, .. } = self;
                if inner.read(&mut |b| absorb(session, b, plain)).await? == 0 {
                    return Err(closed_by_peer());
                }
            }
        }
        self.send_records(limit).await
    }

    /// Writes every record the session has ready, absorbing what arrives meanwhile.
    async fn send_records(&mut self, block: Duration) -> io::Result<()> {
        let TlsLink { inner, session, plain, records } = self;
        while session.wants_write() {
            records.clear();
            session.write_tls(records)?;
            inner.write_all(records, block, &mut |b| absorb(session, b, plain)).await?;
        }
        Ok(())
    }

    fn hand_on(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        let n = self.plain.len();
        if n > 0 {
            sink(&self.plain)?;
            self.plain.clear();
        }
        Ok(n)
    }

    /// The chain the server sent.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        self.session.peer_certificates().unwrap_or_default()
    }

    /// `version cipher` of the session, for logs and metrics.
    pub fn describe(&self) -> String {
        let (version, cipher) = crate::stream::tls_names(&self.session);
        format!("{version} {cipher}")
    }
}

impl<T: Transport> TlsLink<T> {
    pub async fn read(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        loop {
            if !self.plain.is_empty() {
                return self.hand_on(sink);
            }
            let TlsLink { inner, session, plain, .. } = self;
            if inner.read(&mut |b| absorb(session, b, plain)).await? == 0 {
                return Ok(0);
            }
            // A key update asks for an answer.
            if self.session.wants_write() {
                self.send_records(Duration::from_secs(60)).await?;
            }
        }
    }

    pub async fn write_all(&mut self, mut data: &[u8], block: Duration, sink: Sink<'_>) -> io::Result<()> {
        while !data.is_empty() {
            // The session buffers a bounded amount of plaintext: write it in turns.
            let n = self.session.writer().write(data)?;
            data = &data[n..];
            self.send_records(block).await?;
            self.hand_on(sink)?;
            if n == 0 && !self.session.wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Decrypted bytes not handed on count as unread, as do records waiting on the socket.
    pub fn idle_state(&mut self) -> IdleState {
        if !self.plain.is_empty() { IdleState::Unread } else { self.inner.idle_state() }
    }

    pub async fn shutdown(&mut self) {
        self.session.send_close_notify();
        let _ = self.send_records(Duration::from_secs(5)).await;
        self.inner.shutdown();
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

/// The roots verified TLS trusts: the WebPKI roots and `extra` PEM files.
pub fn roots(extra: &[std::path::PathBuf]) -> Result<Arc<rustls::RootCertStore>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for path in extra {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            roots.add(cert.map_err(|e| format!("{}: {e}", path.display()))?).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(Arc::new(roots))
}

/// Checks a certificate chain for `host` without refusing it: for sessions under an MTA-STS
/// policy in testing mode, whose failures TLS-RPT reports while the mail goes on.
pub fn observer(roots: Arc<rustls::RootCertStore>) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider).build().map_err(|e| e.to_string())
}

/// What `verifier` says of the chain a server sent for `host`: None when it is valid.
pub fn judge(
    verifier: &rustls::client::WebPkiServerVerifier,
    chain: &[CertificateDer<'static>],
    host: &str,
) -> Option<(super::tls_rpt::ResultType, String)> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Some((super::tls_rpt::ResultType::ValidationFailure, "no certificate".into()));
    };
    let name = match ServerName::try_from(host.to_string()) {
        Ok(name) => name,
        Err(e) => return Some((super::tls_rpt::ResultType::CertificateHostMismatch, e.to_string())),
    };
    match verifier.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now()) {
        Ok(_) => None,
        Err(e) => Some((rustls_result_type(&e), e.to_string())),
    }
}

/// The client TLS configuration for required STARTTLS, trusting `roots`.
pub fn verified_tls(roots: Arc<rustls::RootCertStore>) -> Result<Arc<rustls::ClientConfig>, String> {
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
