//! Intake TLS: rustls (ring provider, TLS 1.2 and 1.3 only, rustls' modern suites), with the
//! certificate and key read from PEM files and reloaded when either file changes.

use std::fmt;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::smtp::server::TlsInfo;

/// How often the files' modification times are checked, at most.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A generated certificate is valid this long (from a day before it was made) ...
const GENERATED_DAYS: i64 = 365;
/// ... and replaced this long before it ends.
const RENEW_DAYS: i64 = 30;

/// Beside a generated certificate: its end (unix seconds). Only a certificate with one is
/// ever replaced; an operator's is never touched.
fn marker(certificate: &Path) -> PathBuf {
    PathBuf::from(format!("{}.generated", certificate.display()))
}

/// When the generated certificate at `certificate` must be replaced (unix seconds); None for
/// one Sluice did not generate. Versions before the marker generated rcgen's default (valid
/// until 4096, subject "rcgen self signed cert"): such a certificate is due now.
fn renewal_due(certificate: &Path) -> Option<u64> {
    match fs::read_to_string(marker(certificate)) {
        Ok(text) => Some(text.trim().parse::<u64>().ok()?.saturating_sub(RENEW_DAYS as u64 * 86400)),
        Err(_) => {
            let first = CertificateDer::pem_file_iter(certificate).ok()?.next()?.ok()?;
            memchr::memmem::find(first.as_ref(), b"rcgen self signed cert").map(|_| 0)
        }
    }
}

/// Writes a self-signed certificate for `hostname` if the configured files are missing and
/// `self_signed_if_missing` is set, or if the one it generated earlier ends within 30 days
/// (called at start, on reload and twice a day). Empty files count as missing: they are what
/// a power loss right after a first start leaves of files written without fsync (by an older
/// version, or by hand), and a generated certificate can always be generated again.
pub fn ensure_certificate(cfg: &TlsConfig, hostname: &str) -> Result<(), String> {
    let present = |p: &Path| fs::metadata(p).is_ok_and(|m| m.len() > 0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let due = renewal_due(&cfg.certificate).is_some_and(|at| now >= at);
    if present(&cfg.certificate) && present(&cfg.private_key) && !due {
        return Ok(());
    }
    if !cfg.self_signed_if_missing {
        return Err(format!("TLS certificate {} or key {} missing", cfg.certificate.display(), cfg.private_key.display()));
    }
    let (pem, key, end) = self_signed(hostname, now).map_err(|e| format!("generating a certificate: {e}"))?;
    for path in [&cfg.certificate, &cfg.private_key] {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    write_durably(&cfg.private_key, key.as_bytes(), 0o600)?;
    write_durably(&cfg.certificate, pem.as_bytes(), 0o644)?;
    write_durably(&marker(&cfg.certificate), end.to_string().as_bytes(), 0o644)?;
    tracing::warn!(certificate = %cfg.certificate.display(), hostname, until = end, "generated a self-signed TLS certificate; replace it with a real one");
    Ok(())
}

/// A self-signed certificate for `hostname` (subject and SAN), valid from yesterday for
/// `GENERATED_DAYS`: (certificate PEM, key PEM, its end in unix seconds).
fn self_signed(hostname: &str, now: u64) -> Result<(String, String, u64), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, hostname);
    name.push(rcgen::DnType::OrganizationName, "Sluice (self-signed)");
    params.distinguished_name = name;
    let today = (now / 86400) as i64;
    let date = |days: i64| {
        let (y, m, d) = crate::message::date::civil_from_days(days);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + GENERATED_DAYS);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), ((today + GENERATED_DAYS) * 86400) as u64))
}

/// Writes `path` so that after a crash or power loss it holds either nothing or all of
/// `bytes`: a temporary file, fsync, rename over, fsync of the directory. (The appliance's
/// boot test cuts the power right after the first start; without this the certificate came
/// back empty and the daemon could not start.)
fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, &provider()).map(Arc::new).map_err(|e| format!("{}: {e}", key.display()))
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the current certificate, re-reading the files when their modification time changes.
/// A reload that fails keeps the previous certificate and logs why.
struct ReloadingResolver {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingResolver").field("cert", &self.cert).finish()
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().ok()?;
        if s.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            s.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != s.stamps {
                match load(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(certificate = %self.cert.display(), "TLS certificate reloaded");
                        s.key = key;
                        s.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one")
                    }
                }
            }
        }
        Some(s.key.clone())
    }
}

/// Asks clients for a certificate without requiring one, and accepts any: which certificates
/// mean something is decided after the handshake, by fingerprint (`client_certificates`).
/// The handshake signature is still checked, so the client holds the certificate's key.
#[derive(Debug)]
struct AnyClientCertificate(Arc<CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds the acceptor (after [`ensure_certificate`]); with `client_certificates`, clients are
/// asked for a certificate.
pub fn acceptor(cfg: &TlsConfig, client_certificates: bool) -> Result<TlsAcceptor, String> {
    let key = load(&cfg.certificate, &cfg.private_key)?;
    let resolver = ReloadingResolver {
        cert: cfg.certificate.clone(),
        key: cfg.private_key.clone(),
        state: Mutex::new(Loaded { key, stamps: (modified(&cfg.certificate), modified(&cfg.private_key)), checked: Instant::now() }),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if client_certificates {
        builder.with_client_cert_verifier(Arc::new(AnyClientCertificate(provider())))
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Version and cipher suite names as logged and written into Received, and the identity of a
/// client certificate that `identify` knows by its SHA-256 fingerprint (lower-case hex).
pub fn info(conn: &rustls::ServerConnection, identify: impl Fn(&str) -> Option<String>) -> TlsInfo {
    use sha2::Digest;
    let (version, cipher) = crate::stream::tls_names(conn);
    let fingerprint = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|cert| sha2::Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02x}")).collect::<String>());
    let certificate_identity = fingerprint.as_deref().and_then(&identify);
    if let (Some(f), None) = (&fingerprint, &certificate_identity) {
        tracing::info!(fingerprint = %f, "unlisted client certificate: no rights");
    }
    TlsInfo { version, cipher, certificate_identity }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig { certificate: dir.join("tls/cert.pem"), private_key: dir.join("tls/key.pem"), self_signed_if_missing: true }
    }

    #[test]
    fn a_missing_or_empty_certificate_is_generated_and_a_real_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        ensure_certificate(&cfg, "relay.test").unwrap();
        let first = fs::read(&cfg.certificate).unwrap();
        assert!(first.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert_eq!(fs::metadata(&cfg.private_key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!cfg.certificate.with_extension("tmp").exists());
        // Kept as it is while present.
        ensure_certificate(&cfg, "relay.test").unwrap();
        assert_eq!(fs::read(&cfg.certificate).unwrap(), first);
        // What a power loss left of an unsynced write: generated again.
        fs::write(&cfg.certificate, b"").unwrap();
        ensure_certificate(&cfg, "relay.test").unwrap();
        assert!(fs::read(&cfg.certificate).unwrap().starts_with(b"-----BEGIN CERTIFICATE-----"));
    }
}
