//! DNSSEC-validated lookups for DANE (RFC 7672): a second resolver over the same name
//! servers that validates every answer up to the trust anchors (the root zone's keys built
//! into hickory, or a file of DNSKEY records). Kept apart from [`super::Dns`], which routing
//! uses: a domain whose DNSSEC is broken must still be found there, and DANE decides what its
//! brokenness means.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use crate::config::{DnsConfig, IpFamily};
use crate::delivery::dane::Tlsa;

/// What validation says of one RRset (or of its absence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Signed, and the signatures chain to a trust anchor: the answer, or the proof there is
    /// none, can be believed.
    Secure,
    /// Proven unsigned, or under no trust anchor: nothing DNSSEC says applies.
    Insecure,
    /// Signed but the signatures do not validate, or a proof is missing: an attacker's answer
    /// as far as we can tell.
    Bogus(String),
    /// No answer to judge (timeout, SERVFAIL).
    Temporary(String),
}

/// The TLSA records of an MX host, as DANE needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// A validated set; possibly with no usable record among them.
    Records(Vec<Tlsa>),
    /// Proven absent, or not secure: the host is not authenticated by DANE.
    None,
    /// Bogus, or no answer: the host must not be used now (RFC 7672 2.2).
    Failed(String),
}

/// The trust anchors of a file, and the names they are anchored at.
pub fn read_anchors(path: &Path) -> Result<(TrustAnchors, Vec<Name>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let anchors = TrustAnchors::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(';') && !l.starts_with('$')) {
        let owner = line.split_whitespace().next().unwrap_or(".");
        let name = Name::from_str(owner).map_err(|e| format!("{}: {owner}: {e}", path.display()))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(format!("{}: no DNSKEY record", path.display()));
    }
    Ok((anchors, names))
}

pub struct SecureDns {
    resolver: TokioResolver,
    /// Where validation starts: only names at or under one of these can be secure.
    anchored: Vec<Name>,
}

impl SecureDns {
    pub fn new(cfg: &DnsConfig, anchors: Option<&Path>) -> Result<SecureDns, String> {
        let (anchors, anchored) = match anchors {
            Some(path) => read_anchors(path)?,
            None => (TrustAnchors::default(), vec![Name::root()]),
        };
        let mut builder = super::builder(cfg)?.with_trust_anchor(Arc::new(anchors));
        let opts = builder.options_mut();
        opts.validate = true;
        // DNSSEC records are large: ask for them in EDNS0's bigger datagrams.
        opts.edns0 = true;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let resolver = builder.build().map_err(|e| format!("DNSSEC resolver: {e}"))?;
        Ok(SecureDns { resolver, anchored })
    }

    fn anchored(&self, name: &Name) -> bool {
        self.anchored.iter().any(|anchor| anchor.zone_of(name))
    }

    /// Validates `name`'s RRset of `kind` (MX, A, AAAA).
    pub async fn security(&self, name: &str, kind: RecordType) -> Security {
        let Some(fq) = super::fqdn(name) else { return Security::Insecure };
        if !self.anchored(&fq) {
            return Security::Insecure;
        }
        match self.resolver.lookup(fq, kind).await {
            Ok(lookup) => judge(lookup.answers().iter().filter(|r| r.record_type() == kind)),
            Err(e) => judge_error(&e),
        }
    }

    /// Validates every address family `family` asks for: secure only if each is.
    pub async fn addrs_security(&self, host: &str, family: IpFamily) -> Security {
        let kinds: &[RecordType] = match family {
            IpFamily::Any => &[RecordType::A, RecordType::AAAA],
            IpFamily::Ipv4 => &[RecordType::A],
            IpFamily::Ipv6 => &[RecordType::AAAA],
        };
        let mut worst = Security::Secure;
        for &kind in kinds {
            worst = worse(worst, self.security(host, kind).await);
        }
        worst
    }

    /// The TLSA records at `_PORT._tcp.HOST` (RFC 6698 3).
    pub async fn tlsa(&self, host: &str, port: u16) -> TlsaAnswer {
        let Some(fq) = super::fqdn(&format!("_{port}._tcp.{host}")) else { return TlsaAnswer::None };
        if !self.anchored(&fq) {
            return TlsaAnswer::None;
        }
        match self.resolver.lookup(fq, RecordType::TLSA).await {
            Ok(lookup) => {
                let answers: Vec<&Record> = lookup.answers().iter().filter(|r| r.record_type() == RecordType::TLSA).collect();
                match judge(answers.iter().copied()) {
                    Security::Secure => TlsaAnswer::Records(
                        answers
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::TLSA(t) => Some(Tlsa {
                                    usage: t.cert_usage.into(),
                                    selector: t.selector.into(),
                                    matching: t.matching.into(),
                                    data: t.cert_data.clone(),
                                }),
                                _ => None,
                            })
                            .collect(),
                    ),
                    Security::Insecure => TlsaAnswer::None,
                    Security::Bogus(why) | Security::Temporary(why) => TlsaAnswer::Failed(why),
                }
            }
            Err(e) => match judge_error(&e) {
                Security::Secure | Security::Insecure => TlsaAnswer::None,
                Security::Bogus(why) | Security::Temporary(why) => TlsaAnswer::Failed(why),
            },
        }
    }
}

/// The lesser of two verdicts: temporary over bogus (it may mend), bogus over insecure.
fn worse(a: Security, b: Security) -> Security {
    fn rank(s: &Security) -> u8 {
        match s {
            Security::Secure => 0,
            Security::Insecure => 1,
            Security::Bogus(_) => 2,
            Security::Temporary(_) => 3,
        }
    }
    if rank(&b) > rank(&a) { b } else { a }
}

/// Secure when every record is; any bogus record makes the set bogus.
fn judge<'a>(records: impl Iterator<Item = &'a Record>) -> Security {
    let mut verdict = Security::Secure;
    let mut any = false;
    for r in records {
        any = true;
        verdict = worse(
            verdict,
            match r.proof {
                Proof::Secure => Security::Secure,
                Proof::Insecure | Proof::Indeterminate => Security::Insecure,
                Proof::Bogus => Security::Bogus(format!("{} {}: signature does not validate", r.name, r.record_type())),
            },
        );
    }
    if any { verdict } else { Security::Insecure }
}

/// A failed lookup: a denial is as secure as the records that prove it.
fn judge_error(e: &NetError) -> Security {
    match e {
        NetError::Dns(DnsError::DnssecBogus) => Security::Bogus("DNSSEC validation failed".into()),
        NetError::Dns(DnsError::Nsec { proof: Proof::Bogus, query, .. }) => {
            Security::Bogus(format!("{query}: the proof of absence does not validate"))
        }
        NetError::Dns(DnsError::Nsec { .. }) => Security::Insecure,
        NetError::Dns(DnsError::NoRecordsFound(nr)) => match nr.authorities.as_deref() {
            Some(proof) if !proof.is_empty() => judge(proof.iter()),
            _ => Security::Insecure,
        },
        other => Security::Temporary(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worse_verdict_wins() {
        let bogus = Security::Bogus("b".into());
        assert_eq!(worse(Security::Secure, Security::Insecure), Security::Insecure);
        assert_eq!(worse(bogus.clone(), Security::Insecure), bogus);
        assert_eq!(worse(bogus, Security::Temporary("t".into())), Security::Temporary("t".into()));
    }

    #[test]
    fn an_anchor_file_names_its_zones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchors");
        let key = "test. 3600 IN DNSKEY 256 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=";
        std::fs::write(&path, format!("; a comment\n{key}\n")).unwrap();
        let (_, names) = read_anchors(&path).unwrap();
        assert_eq!(names, vec![Name::from_str("test.").unwrap()]);
        std::fs::write(&path, "; nothing\n").unwrap();
        assert!(read_anchors(&path).err().unwrap().contains("no DNSKEY"));
        std::fs::write(&path, "test. 3600 IN DNSKEY 256 3 15 !!!\n").unwrap();
        assert!(read_anchors(&path).is_err());
        assert!(read_anchors(&dir.path().join("missing")).is_err());
    }
}
