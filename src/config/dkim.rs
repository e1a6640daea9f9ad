//! The `dkim` section: which mail is signed, with which selector and key (RFC 6376, RFC 8463).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Signatures to add: every entry whose `domain` matches the domain of the message's From
    /// address (and whose `users`, if any, include the sender) adds one, so an RSA and an
    /// Ed25519 entry for one domain sign with both.
    #[serde(default)]
    pub sign: Vec<DkimSignature>,
    /// Header fields signed when the message has them (default: a list for bulk mail, see
    /// docs/DKIM.md). `From` is always signed.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// Fields signed once more than they occur (oversigned), so none can be added after
    /// signing without breaking the signature.
    #[serde(default = "default_oversign")]
    pub oversign: Vec<String>,
    /// When set, signatures carry an expiry (`x=`) this long after signing.
    #[serde(default)]
    pub expire_after: Option<HumanDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSignature {
    /// The From domain this entry signs for: `example.com`, or `*.example.com` for its
    /// subdomains.
    pub domain: String,
    /// The selector (`s=`): the key's public half is published at
    /// `SELECTOR._domainkey.SIGNING_DOMAIN`.
    pub selector: String,
    /// The private key: PEM, RSA (2048 bits or more; PKCS #1 or PKCS #8) or Ed25519 (PKCS #8),
    /// as `sluice dkim keygen` or `openssl genpkey` write them. Read again on reload.
    pub key: PathBuf,
    /// The signing domain (`d=`); default: `domain` (for `*.example.com`, `example.com`).
    #[serde(default)]
    pub signing_domain: Option<String>,
    /// Only mail from these senders: authenticated users, client-certificate identities, local
    /// users, and HTTP API keys as `api-key:NAME` (default: everyone).
    #[serde(default)]
    pub users: Vec<String>,
}

impl Default for DkimConfig {
    fn default() -> Self {
        DkimConfig { sign: Vec::new(), headers: default_headers(), oversign: default_oversign(), expire_after: None }
    }
}

impl DkimSignature {
    /// The `d=` this entry signs with.
    pub fn d(&self) -> &str {
        self.signing_domain.as_deref().unwrap_or_else(|| self.domain.strip_prefix("*.").unwrap_or(&self.domain))
    }
}

fn default_headers() -> Vec<String> {
    [
        "From",
        "Reply-To",
        "Subject",
        "Date",
        "To",
        "Cc",
        "Message-ID",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "List-Id",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Feedback-ID",
    ]
    .map(String::from)
    .into()
}

fn default_oversign() -> Vec<String> {
    vec!["From".into()]
}

impl DkimConfig {
    /// Checks the entries and loads each key once, so a bad one fails `check-config` (and a
    /// reload) naming its key: `(key path, message)`.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let valid_name = |name: &str| !name.is_empty() && name.len() <= 255 && crate::smtp::address::check_domain(name).is_ok();
        for (i, s) in self.sign.iter().enumerate() {
            let at = |field: &str| format!("dkim.sign[{i}].{field}");
            if !valid_name(s.domain.strip_prefix("*.").unwrap_or(&s.domain)) {
                return Err((at("domain"), format!("{:?} is not a domain or *.domain", s.domain)));
            }
            if !valid_name(s.d()) {
                return Err((at("signing_domain"), format!("{:?} is not a domain", s.d())));
            }
            // A selector is dot-separated labels (RFC 6376 3.1), a name under _domainkey.
            if !valid_name(&s.selector) {
                return Err((at("selector"), format!("{:?} is not a selector (letters, digits, hyphens, dots)", s.selector)));
            }
            if self.sign[..i]
                .iter()
                .any(|o| o.d().eq_ignore_ascii_case(s.d()) && o.selector.eq_ignore_ascii_case(&s.selector) && o.domain == s.domain)
            {
                return Err((at("selector"), format!("{}._domainkey.{} is listed twice for {}", s.selector, s.d(), s.domain)));
            }
            crate::dkim::key::load(&s.key).map_err(|e| (at("key"), e.to_string()))?;
        }
        let bad = |name: &String| name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if let Some(name) = self.headers.iter().chain(&self.oversign).find(|n| bad(n)) {
            let key = if self.headers.contains(name) { "dkim.headers" } else { "dkim.oversign" };
            return Err((key.into(), format!("{name:?} is not a header field name")));
        }
        if self.headers.iter().any(|h| h.eq_ignore_ascii_case("DKIM-Signature")) {
            return Err(("dkim.headers".into(), "DKIM-Signature cannot be signed by the signature itself".into()));
        }
        Ok(())
    }
}
