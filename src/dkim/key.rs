//! DKIM private keys: read from PEM files, made by `sluice dkim keygen`, and their DNS records.
//!
//! Signing uses ring, which the TLS stack already brings: its RSA is constant-time, unlike the
//! pure-Rust `rsa` crate that mail-auth would otherwise sign with (RUSTSEC-2023-0071, the
//! Marvin timing attack). mail-auth does the canonicalization and the header field.

use std::fmt;
use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{Algorithm, HashContext, HashImpl, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// RSA keys shorter than this are refused (RFC 8301 3.2 wants at least 1024 and recommends
/// 2048; the large mailbox providers ask for 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// A private key, ready to sign.
pub enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Why a key file could not be used.
#[derive(Debug)]
pub enum KeyError {
    Read(String, std::io::Error),
    /// Not a PEM private key of a kind we sign with, or a damaged one.
    Unusable(String, String),
    /// An RSA key under `MIN_RSA_BITS`.
    TooShort(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read(path, e) => write!(f, "cannot read {path}: {e}"),
            KeyError::Unusable(path, why) => write!(f, "{path} is not a usable DKIM key: {why}"),
            KeyError::TooShort(path) => write!(f, "{path} is an RSA key under {MIN_RSA_BITS} bits, too short for DKIM"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Reads a PEM private key: RSA (PKCS #1 `RSA PRIVATE KEY` or PKCS #8 `PRIVATE KEY`) or
/// Ed25519 (PKCS #8, v1 as OpenSSL writes it or v2).
pub fn load(path: &Path) -> Result<Key, KeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| KeyError::Read(shown.clone(), e))?;
    parse(&pem).map_err(|e| match e {
        KeyError::Unusable(_, why) => KeyError::Unusable(shown, why),
        KeyError::TooShort(_) => KeyError::TooShort(shown),
        other => other,
    })
}

/// The same, from the file's bytes.
pub fn parse(pem: &[u8]) -> Result<Key, KeyError> {
    let unusable = |why: String| KeyError::Unusable(String::new(), why);
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| unusable(format!("no PEM private key found ({e})")))?;
    // ring refuses RSA keys under 2048 bits itself.
    let rsa_refused = |e: ring::error::KeyRejected| match e.to_string().as_str() {
        "TooSmall" => KeyError::TooShort(String::new()),
        _ => unusable(format!("RSA: {e}")),
    };
    let key = match &der {
        PrivateKeyDer::Pkcs1(k) => Key::Rsa(RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(rsa_refused)?),
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            match RsaKeyPair::from_pkcs8(der) {
                Ok(rsa) => Key::Rsa(rsa),
                Err(e) if e.to_string() == "TooSmall" => return Err(rsa_refused(e)),
                Err(rsa_error) => match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    Ok(ed) => Key::Ed25519(ed),
                    Err(ed_error) => return Err(unusable(format!("neither an RSA key ({rsa_error}) nor an Ed25519 key ({ed_error})"))),
                },
            }
        }
        PrivateKeyDer::Sec1(_) => return Err(unusable("an EC (SEC1) key; DKIM signs with RSA or Ed25519".into())),
        _ => return Err(unusable("an unknown kind of private key".into())),
    };
    if let Key::Rsa(rsa) = &key
        && rsa.public().modulus_len() * 8 < MIN_RSA_BITS
    {
        return Err(KeyError::TooShort(String::new()));
    }
    Ok(key)
}

impl Key {
    /// `rsa` or `ed25519`: the `k=` of the DNS record, and the metrics' algorithm label.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "rsa",
            Key::Ed25519(_) => "ed25519",
        }
    }

    /// The public key as the DNS record's `p=` carries it: for RSA the SubjectPublicKeyInfo
    /// (what `openssl rsa -pubout` writes and every verifier reads), for Ed25519 the 32 octets
    /// (RFC 8463 4.2).
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Key::Rsa(rsa) => rsa_spki(rsa.public().as_ref()),
            Key::Ed25519(ed) => ed.public_key().as_ref().to_vec(),
        }
    }

    /// The TXT record's text: `v=DKIM1; k=...; p=...`.
    pub fn dns_record(&self) -> String {
        let p = base64::engine::general_purpose::STANDARD.encode(self.public_key());
        format!("v=DKIM1; k={}; p={p}", self.kind())
    }

    /// Signs with it.
    pub fn sign(&self, input: impl Writable) -> Result<Vec<u8>, ring::error::Unspecified> {
        match self {
            Key::Rsa(rsa) => {
                let mut data = Vec::with_capacity(1024);
                input.write(&mut data);
                let mut signature = vec![0; rsa.public().modulus_len()];
                rsa.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), &data, &mut signature)?;
                Ok(signature)
            }
            // RFC 8463 3: ed25519-sha256 signs the SHA-256 hash of the canonicalized data.
            Key::Ed25519(ed) => {
                let mut hasher = Sha256::hasher();
                input.write(&mut hasher);
                Ok(ed.sign(hasher.complete().as_ref()).as_ref().to_vec())
            }
        }
    }
}

/// A key shared by the rules that use it, as mail-auth's signer wants it.
#[derive(Clone)]
pub struct SharedKey(pub std::sync::Arc<Key>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input).map_err(|_| {
            mail_auth::Error::Crypto(mail_auth::common::crypto::CryptoError::Library(format!("{} signing failed", self.0.kind())))
        })
    }

    fn algorithm(&self) -> Algorithm {
        match &*self.0 {
            Key::Rsa(_) => Algorithm::RsaSha256,
            Key::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }
}

/// Wraps a PKCS #1 RSAPublicKey in a SubjectPublicKeyInfo (RFC 5280 4.1; the algorithm is
/// rsaEncryption with NULL parameters, RFC 8017 A.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ALGORITHM: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = RSA_ALGORITHM.to_vec();
    der_push(&mut inner, 0x03, &bits);
    let mut out = Vec::new();
    der_push(&mut out, 0x30, &inner);
    out
}

fn der_push(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
}

/// A new key: its PEM text (PKCS #8 for Ed25519, PKCS #1 for RSA) and the key itself.
pub fn generate(algorithm: &str, rsa_bits: usize) -> Result<(String, Key), String> {
    let (label, der) = match algorithm {
        "ed25519" => {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| "no randomness for the key")?;
            ("PRIVATE KEY", doc.as_ref().to_vec())
        }
        "rsa" => {
            if !(MIN_RSA_BITS..=8192).contains(&rsa_bits) {
                return Err(format!("RSA keys are {MIN_RSA_BITS} to 8192 bits"));
            }
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(rsa_bits).map_err(|e| e.to_string())?;
            ("RSA PRIVATE KEY", pair.private_key().to_vec())
        }
        other => return Err(format!("unknown algorithm {other:?} (ed25519 or rsa)")),
    };
    let pem = pem_text(label, &der);
    let key = parse(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok((pem, key))
}

fn pem_text(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The TXT record as a zone file line: the text split into strings of at most 255 octets
/// (RFC 1035 3.3.14; a 2048-bit key's record is about 400).
pub fn zone_line(selector: &str, domain: &str, record: &str) -> String {
    let strings: Vec<String> = record.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    format!("{selector}._domainkey.{domain}. IN TXT ( {} )", strings.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_and_publish_their_public_half() {
        let (pem, key) = generate("ed25519", 0).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(key.public_key().len(), 32);
        assert!(key.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(parse(pem.as_bytes()).unwrap().public_key(), key.public_key());
        let (pem, key) = generate("rsa", 2048).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert_eq!(parse(pem.as_bytes()).unwrap().public_key(), key.public_key());
        // A SubjectPublicKeyInfo: SEQUENCE (two-octet length), then the rsaEncryption OID.
        let spki = key.public_key();
        assert_eq!(&spki[..4], &[0x30, 0x82, ((spki.len() - 4) >> 8) as u8, (spki.len() - 4) as u8]);
        assert_eq!(&spki[4..19], &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00]);
        assert!(generate("rsa", 1024).is_err());
        assert!(generate("dsa", 2048).is_err());
    }

    #[test]
    fn keys_openssl_writes_are_read_and_others_refused_with_the_reason() {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        let ed = openssl(&["genpkey", "-algorithm", "ed25519"]);
        assert_eq!(parse(&ed).unwrap().kind(), "ed25519");
        let rsa = openssl(&["genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"]);
        let key = parse(&rsa).unwrap();
        assert_eq!(key.kind(), "rsa");
        // The same public key as openssl's own SubjectPublicKeyInfo.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), &rsa).unwrap();
        let spki = openssl(&["pkey", "-in", dir.path().join("k.pem").to_str().unwrap(), "-pubout", "-outform", "DER"]);
        assert_eq!(key.public_key(), spki);
        let short = openssl(&["genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024"]);
        assert!(matches!(parse(&short), Err(KeyError::TooShort(_))));
        let why = {
            std::fs::write(dir.path().join("short.pem"), &short).unwrap();
            load(&dir.path().join("short.pem")).err().unwrap().to_string()
        };
        assert!(why.contains("short.pem is an RSA key under 2048 bits"), "{why}");
        let ec = openssl(&["genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let why = parse(&ec).err().expect("EC refused").to_string();
        assert!(why.contains("neither an RSA key") || why.contains("EC"), "{why}");
        assert!(matches!(parse(b"not a key"), Err(KeyError::Unusable(..))));
        let err = load(Path::new("/nonexistent/key.pem")).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn a_long_record_is_split_into_strings_of_255_octets() {
        let record = "x".repeat(600);
        let line = zone_line("s1", "example.com", &record);
        assert!(line.starts_with("s1._domainkey.example.com. IN TXT ( \""));
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.iter().map(|s| s.len()).collect::<Vec<_>>(), [255, 255, 90]);
    }
}
