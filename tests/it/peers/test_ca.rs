//! A certificate authority of the test's own (rcgen), trusted by the relay through
//! `delivery.tls_trust`, and the certificates it issues: good, expired, for another name, or
//! self-signed beside it.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem_path: PathBuf,
}

/// A certificate and key in PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "Sluice Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.join("test-ca.pem");
        std::fs::write(&pem_path, cert.pem()).unwrap();
        TestCa { issuer: Issuer::new(params, key), pem_path }
    }

    /// A certificate for `names`, valid from 2020 to the end of `until_year`, as `stem`.pem.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str], until_year: i32) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = leaf_params(names);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until_year, 12, 31);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write(dir, stem, &cert.pem(), &key.serialize_pem())
    }
}

/// A self-signed certificate for `names`, from no CA anybody trusts.
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(names).self_signed(&key).unwrap();
    write(dir, stem, &cert.pem(), &key.serialize_pem())
}

/// A leaf for `names`, named after the first: rcgen's default name is what Sluice's own
/// generated certificates carry, which Sluice would replace at start.
fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params
}

fn write(dir: &Path, stem: &str, cert: &str, key: &str) -> Issued {
    let issued = Issued { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
    std::fs::write(&issued.cert, cert).unwrap();
    std::fs::write(&issued.key, key).unwrap();
    issued
}
