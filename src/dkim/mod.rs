//! DKIM signing at intake (RFC 6376; Ed25519 per RFC 8463), once per message before the spool
//! commit, so a retry never signs again. Relaxed/relaxed canonicalization (mail-auth's), keys
//! signed with ring (`key`). What is signed is the message as the next hop will store it:
//! the delivery client folds lines over 998 octets, so the signer sees them folded the same
//! way (`LineFolder`); dot-stuffing is undone by the receiver. The one change delivery can
//! still make is the 8-bit to quoted-printable conversion for a next hop without 8BITMIME
//! (`message::downgrade`), which breaks the signature (RFC 6376 5.3 asks signers to convert
//! first; every large mailbox provider offers 8BITMIME).

pub mod key;
pub mod keygen;

use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};

use crate::config::{DkimConfig, matches_pattern};
use crate::message::submission::{field_name, header_fields};
use crate::smtp::client::LineFolder;
use key::{Key, SharedKey};

/// Messages up to this size signed with Ed25519 alone are signed where they are accepted
/// (about 30 us for 1 KiB, 50 us for 16 KiB); anything more goes to a blocking thread.
const QUICK_SIZE: usize = 16 * 1024;

/// The signing rules of one config generation, with their keys loaded.
pub struct Signer {
    rules: Vec<Rule>,
    headers: Vec<String>,
    oversign: Vec<String>,
    expire_after: Option<Duration>,
}

struct Rule {
    pattern: String,
    d: String,
    selector: String,
    key: Arc<Key>,
    users: Vec<String>,
}

/// The signatures one message gets, decided from its header section.
pub struct Plan {
    rules: Vec<usize>,
    /// The header fields to sign, as mail-auth takes them (oversigned names repeated).
    headers: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One signature made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub domain: String,
    pub selector: String,
    pub algorithm: &'static str,
}

/// The header fields to put on top of the message, and what they are.
pub struct Signed {
    pub fields: String,
    pub made: Vec<Made>,
}

impl Signed {
    /// `d/s/algorithm` of each signature, comma-separated, for the mail log.
    pub fn summary(&self) -> String {
        self.made.iter().map(|m| format!("{}/{}/{}", m.domain, m.selector, m.algorithm)).collect::<Vec<_>>().join(",")
    }
}

/// Why a message that should be signed was not.
#[derive(Debug)]
pub enum SignError {
    /// Reading the body's spooled part failed.
    Read(std::io::Error),
    /// The signature could not be made (a key the crypto library refused at signing time).
    Sign(String),
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::Read(e) => write!(f, "reading the message to sign it: {e}"),
            SignError::Sign(e) => write!(f, "DKIM signing failed: {e}"),
        }
    }
}

impl Signer {
    /// Loads every entry's key; `None` when nothing is to be signed. A key used by several
    /// entries is loaded once.
    pub fn load(config: &DkimConfig) -> Result<Option<Arc<Signer>>, String> {
        if config.sign.is_empty() {
            return Ok(None);
        }
        let mut keys: Vec<(std::path::PathBuf, Arc<Key>)> = Vec::new();
        let mut rules = Vec::new();
        for (i, s) in config.sign.iter().enumerate() {
            let key = match keys.iter().find(|(p, _)| *p == s.key) {
                Some((_, k)) => k.clone(),
                None => {
                    let k = Arc::new(key::load(&s.key).map_err(|e| format!("dkim.sign[{i}].key: {e}"))?);
                    keys.push((s.key.clone(), k.clone()));
                    k
                }
            };
            rules.push(Rule {
                pattern: s.domain.clone(),
                d: s.d().to_ascii_lowercase(),
                selector: s.selector.clone(),
                key,
                users: s.users.clone(),
            });
        }
        let mut headers: Vec<String> = Vec::new();
        for h in std::iter::once("From").chain(config.headers.iter().map(String::as_str)) {
            if !headers.iter().any(|k| k.eq_ignore_ascii_case(h)) {
                headers.push(h.to_string());
            }
        }
        Ok(Some(Arc::new(Signer { rules, headers, oversign: config.oversign.clone(), expire_after: config.expire_after.map(|d| d.0) })))
    }

    /// Which entries sign a message with this header section (ours and the client's fields),
    /// from `user` (the authenticated, certificate or local user). Unsigned: no From address.
    pub fn plan(&self, header_section: &[u8], user: Option<&str>) -> Plan {
        let (fields, _) = header_fields(header_section);
        let names: Vec<&[u8]> = fields.iter().map(|&(s, e)| field_name(&header_section[s..e])).collect();
        let from = fields.iter().zip(&names).find(|(_, n)| n.eq_ignore_ascii_case(b"From")).and_then(|(&(s, e), _)| {
            let field = &header_section[s..e];
            let value = String::from_utf8_lossy(&field[memchr::memchr(b':', field)? + 1..]);
            let first = crate::message::extract::addresses(&value).into_iter().next()?;
            let domain = first.rsplit_once('@')?.1.trim_end_matches('.').to_ascii_lowercase();
            (!domain.is_empty()).then_some(domain)
        });
        let Some(from) = from else { return Plan { rules: Vec::new(), headers: Vec::new() } };
        let rules = (0..self.rules.len())
            .filter(|&i| {
                let r = &self.rules[i];
                matches_pattern(&r.pattern, &from) && (r.users.is_empty() || user.is_some_and(|u| r.users.iter().any(|x| x == u)))
            })
            .collect();
        // Listed fields the message has (a listed field it lacks would be signed as absent, so
        // a later hop adding it breaks the signature: only `oversign` does that on purpose).
        let mut headers: Vec<String> =
            self.headers.iter().filter(|h| names.iter().any(|n| n.eq_ignore_ascii_case(h.as_bytes()))).cloned().collect();
        headers.extend(self.oversign.iter().cloned());
        Plan { rules, headers }
    }

    /// Whether signing a message of `size` octets with this plan takes only tens of
    /// microseconds: Ed25519 keys only (an RSA-2048 signature takes about half a
    /// millisecond) and a small message (hashing runs at about 600 MB/s here).
    pub fn is_quick(&self, plan: &Plan, size: usize) -> bool {
        size <= QUICK_SIZE && plan.rules.iter().all(|&i| matches!(*self.rules[i].key, Key::Ed25519(_)))
    }

    /// Signs the message `feed` hands over in pieces (blocking: the caller runs it off the
    /// async workers). Every planned signature is made in one pass over the message.
    pub fn sign(&self, plan: &Plan, feed: impl FnOnce(&mut dyn FnMut(&[u8])) -> std::io::Result<()>) -> Result<Signed, SignError> {
        let signers: Vec<_> = plan
            .rules
            .iter()
            .map(|&i| {
                let r = &self.rules[i];
                let signer = DkimSigner::from_key(SharedKey(r.key.clone()))
                    .domain(r.d.clone())
                    .selector(r.selector.clone())
                    .headers(plan.headers.iter().map(String::as_str))
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed);
                match self.expire_after {
                    Some(d) => signer.expiration(d.as_secs()),
                    None => signer,
                }
            })
            .collect();
        let mut streams: Vec<_> = signers.iter().map(|s| s.sign_streaming()).collect();
        let mut folder = LineFolder::default();
        let mut folded = Vec::new();
        feed(&mut |piece| {
            folded.clear();
            folder.push(piece, &mut folded);
            for stream in &mut streams {
                stream.write(&folded);
            }
        })
        .map_err(SignError::Read)?;
        folded.clear();
        folder.finish(&mut folded);
        let mut fields = String::new();
        let mut made = Vec::new();
        for (mut stream, &i) in streams.into_iter().zip(&plan.rules) {
            stream.write(&folded);
            let signature = stream.finish().map_err(|e| SignError::Sign(e.to_string()))?;
            fields.push_str(&signature.to_header());
            let r = &self.rules[i];
            made.push(Made { domain: r.d.clone(), selector: r.selector.clone(), algorithm: r.key.kind() });
        }
        Ok(Signed { fields, made })
    }
}
