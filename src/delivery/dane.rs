//! DANE for SMTP (RFC 7672), the certificate check: TLSA records matched against the chain the
//! MX host presents, by a rustls verifier of our own that still verifies the handshake
//! signature. DANE-EE(3) trusts the leaf whose certificate or key the record names (no name,
//! chain or expiry check: the record is the authentication); DANE-TA(2) trusts a CA the record
//! names and verifies the chain to it, and the MX host name (or the recipient domain), as
//! WebPKI would. PKIX-TA(0) and
//! PKIX-EE(1) are unusable for SMTP (RFC 7672 3.1.3) and never match. Finding the records
//! (only with DNSSEC-authenticated answers) is the caller's.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256, Sha512};

/// One TLSA record (RFC 6698 2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// What DANE authenticates a host by: its usable TLSA records, and the recipient domain,
/// which a DANE-TA certificate may name instead of the MX host (RFC 7672 3.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DaneAuth {
    pub records: Vec<Tlsa>,
    pub domain: String,
}

pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;

impl Tlsa {
    /// Whether the record can authenticate anything: usage 2 or 3, selector 0 (the whole
    /// certificate) or 1 (its key), matching 0 (exact), 1 (SHA-256) or 2 (SHA-512) with data of
    /// the right length. A set with no usable record is as if there were none (RFC 7672 2.2).
    pub fn usable(&self) -> bool {
        let length_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_ok
    }

    /// Whether the record names this certificate (DER).
    pub fn matches(&self, certificate: &[u8]) -> bool {
        if !self.usable() {
            return false;
        }
        let selected = match self.selector {
            0 => certificate.to_vec(),
            _ => match x509_parser::parse_x509_certificate(certificate) {
                Ok((_, cert)) => cert.tbs_certificate.subject_pki.raw.to_vec(),
                Err(_) => return false,
            },
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            _ => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
        }
    }
}

/// The client TLS configuration for a host with these (usable) TLSA records. rustls sends
/// the MX host name as SNI, as RFC 7672 3.2.2 asks.
pub fn client_config(auth: &DaneAuth) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = DaneVerifier::new(auth.records.clone(), provider.clone());
    verifier.also_valid_for = ServerName::try_from(auth.domain.clone()).ok();
    let verifier = Arc::new(verifier);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2 and 1.3 are supported by the ring provider")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Verifies a server's chain against a TLSA set.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
    /// A name a DANE-TA certificate may carry instead of the one connected to.
    pub also_valid_for: Option<ServerName<'static>>,
}

impl DaneVerifier {
    /// With the usable records of `records` (the caller has checked there is at least one).
    pub fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier { records: records.into_iter().filter(Tlsa::usable).collect(), provider, also_valid_for: None }
    }

    fn ta_verified(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut last = rustls::Error::General("no TLSA record names the certificate or a CA of the chain presented".into());
        for record in self.records.iter().filter(|r| r.usage == DANE_TA) {
            // The trust anchor is in the chain, or (a whole certificate, exact) is the record.
            let in_chain = intermediates.iter().chain(std::iter::once(end_entity)).find(|c| record.matches(c));
            let anchor = match in_chain {
                Some(c) => c.clone().into_owned(),
                None if record.selector == 0 && record.matching == 0 => CertificateDer::from(record.data.clone()),
                None => continue,
            };
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor).is_err() {
                continue;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            for name in std::iter::once(server_name).chain(self.also_valid_for.as_ref()) {
                match verifier.verify_server_cert(end_entity, intermediates, name, &[], now) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.iter().any(|r| r.usage == DANE_EE && r.matches(end_entity)) {
            return Ok(ServerCertVerified::assertion());
        }
        self.ta_verified(end_entity, intermediates, server_name, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    struct Chain {
        leaf: Vec<u8>,
        ca: Vec<u8>,
    }

    fn chain(names: &[&str], not_after_year: i32) -> Chain {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "Test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let leaf = leaf_params.signed_by(&leaf_key, &Issuer::new(ca_params, ca_key)).unwrap();
        Chain { leaf: leaf.der().to_vec(), ca: ca.der().to_vec() }
    }

    fn spki(der: &[u8]) -> Vec<u8> {
        x509_parser::parse_x509_certificate(der).unwrap().1.tbs_certificate.subject_pki.raw.to_vec()
    }

    fn verify(records: Vec<Tlsa>, chain: &Chain, name: &str) -> Result<ServerCertVerified, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = DaneVerifier::new(records, provider);
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        let server = ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(&CertificateDer::from(chain.leaf.clone()), &[CertificateDer::from(chain.ca.clone())], &server, &[], now)
    }

    fn record(usage: u8, selector: u8, matching: u8, selected: &[u8]) -> Tlsa {
        let data = match matching {
            0 => selected.to_vec(),
            1 => Sha256::digest(selected).to_vec(),
            _ => Sha512::digest(selected).to_vec(),
        };
        Tlsa { usage, selector, matching, data }
    }

    #[test]
    fn dane_ee_trusts_the_named_leaf_whatever_its_name_or_dates() {
        // Expired long before "now", and for another name: DANE-EE checks neither.
        let c = chain(&["other.test"], 2021);
        assert!(verify(vec![record(3, 1, 1, &spki(&c.leaf))], &c, "mx.dest.test").is_ok());
        assert!(verify(vec![record(3, 0, 2, &c.leaf)], &c, "mx.dest.test").is_ok());
        assert!(verify(vec![record(3, 0, 0, &c.leaf)], &c, "mx.dest.test").is_ok());
        let other = chain(&["mx.dest.test"], 2030);
        assert!(verify(vec![record(3, 1, 1, &spki(&other.leaf))], &c, "mx.dest.test").is_err(), "another key");
        // The CA's key named as DANE-EE is not the leaf's.
        assert!(verify(vec![record(3, 1, 1, &spki(&c.ca))], &c, "mx.dest.test").is_err());
    }

    #[test]
    fn dane_ta_verifies_the_chain_and_the_name_to_the_named_ca() {
        let c = chain(&["mx.dest.test"], 2030);
        assert!(verify(vec![record(2, 0, 1, &c.ca)], &c, "mx.dest.test").is_ok());
        assert!(verify(vec![record(2, 1, 1, &spki(&c.ca))], &c, "mx.dest.test").is_ok());
        assert!(verify(vec![record(2, 0, 1, &c.ca)], &c, "mx2.dest.test").is_err(), "the name is checked");
        let expired = chain(&["mx.dest.test"], 2021);
        assert!(verify(vec![record(2, 0, 1, &expired.ca)], &expired, "mx.dest.test").is_err(), "expiry is checked");
        let stranger = chain(&["mx.dest.test"], 2030);
        assert!(verify(vec![record(2, 0, 1, &stranger.ca)], &c, "mx.dest.test").is_err(), "another CA");
        // The CA left out of the chain, but given whole in the record.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = DaneVerifier::new(vec![record(2, 0, 0, &c.ca)], provider);
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        let server = ServerName::try_from("mx.dest.test").unwrap();
        assert!(verifier.verify_server_cert(&CertificateDer::from(c.leaf.clone()), &[], &server, &[], now).is_ok());
    }

    #[test]
    fn dane_ta_also_takes_a_certificate_for_the_recipient_domain() {
        let c = chain(&["dest.test"], 2030);
        assert!(verify(vec![record(2, 0, 1, &c.ca)], &c, "mx.dest.test").is_err(), "the MX name alone");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut verifier = DaneVerifier::new(vec![record(2, 0, 1, &c.ca)], provider);
        verifier.also_valid_for = Some(ServerName::try_from("dest.test").unwrap());
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000));
        let server = ServerName::try_from("mx.dest.test").unwrap();
        let (leaf, ca) = (CertificateDer::from(c.leaf.clone()), [CertificateDer::from(c.ca.clone())]);
        assert!(verifier.verify_server_cert(&leaf, &ca, &server, &[], now).is_ok());
    }

    #[test]
    fn pkix_usages_and_malformed_records_are_unusable() {
        let c = chain(&["mx.dest.test"], 2030);
        for usage in [0, 1] {
            assert!(verify(vec![record(usage, 0, 1, &c.leaf)], &c, "mx.dest.test").is_err(), "usage {usage}");
        }
        assert!(!Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0; 31] }.usable(), "a SHA-256 is 32 octets");
        assert!(!Tlsa { usage: 3, selector: 2, matching: 1, data: vec![0; 32] }.usable());
        assert!(!Tlsa { usage: 3, selector: 1, matching: 3, data: vec![0; 32] }.usable());
        assert!(!record(3, 1, 1, b"x").matches(b"not a certificate"), "a leaf that is not DER matches no key");
    }
}
