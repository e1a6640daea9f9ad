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
        self.lookup(name, kind).await.0
    }

    /// The verdict on `name`'s RRset of `kind`, and its records when there are any.
    async fn lookup(&self, name: &str, kind: RecordType) -> (Security, Vec<Record>) {
        let Some(fq) = super::fqdn(name) else { return (Security::Insecure, Vec::new()) };
        if !self.anchored(&fq) {
            return (Security::Insecure, Vec::new());
        }
        match self.resolver.lookup(fq.clone(), kind).await {
            Ok(lookup) => {
                let answers: Vec<Record> = lookup.answers().iter().filter(|r| r.record_type() != RecordType::RRSIG).cloned().collect();
                let found: Vec<Record> = answers.iter().filter(|r| r.record_type() == kind).cloned().collect();
                // Every record of the answer counts, a CNAME leading to the records too.
                let verdict = if found.is_empty() {
                    Security::Bogus(format!("{name}: an answer without {kind} records"))
                } else {
                    judge(answers.iter())
                };
                (verdict, found)
            }
            Err(e) => (judge_error(&e, &fq), Vec::new()),
        }
    }

    /// The MX host names of `domain` as validated (empty: no MX records, implicit MX).
    pub async fn mx(&self, domain: &str) -> (Security, Vec<String>) {
        let (verdict, records) = self.lookup(domain, RecordType::MX).await;
        let hosts = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(mx.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        (verdict, hosts)
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
        let (verdict, records) = self.lookup(&format!("_{port}._tcp.{host}"), RecordType::TLSA).await;
        match verdict {
            Security::Secure if records.is_empty() => TlsaAnswer::None,
            Security::Secure => TlsaAnswer::Records(
                records
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

/// Secure when every record is; any bogus or unvalidated record makes the set bogus.
fn judge<'a>(records: impl Iterator<Item = &'a Record>) -> Security {
    let mut verdict = Security::Secure;
    for r in records {
        verdict = worse(
            verdict,
            match r.proof {
                Proof::Secure => Security::Secure,
                Proof::Insecure => Security::Insecure,
                Proof::Bogus => Security::Bogus(format!("{} {}: signature does not validate", r.name, r.record_type())),
                Proof::Indeterminate => Security::Bogus(format!("{} {}: not validated", r.name, r.record_type())),
            },
        );
    }
    verdict
}

/// A failed lookup of `asked`: a denial is as secure as the records that prove it, counting
/// only those of the name's own zones (an answer may carry records of any zone, and one from
/// a zone that really is unsigned must not make a signed name's denial look insecure).
fn judge_error(e: &NetError, asked: &Name) -> Security {
    match e {
        NetError::Dns(DnsError::DnssecBogus) => Security::Bogus("DNSSEC validation failed".into()),
        NetError::Dns(DnsError::Nsec { proof: Proof::Insecure, .. }) => Security::Insecure,
        NetError::Dns(DnsError::Nsec { proof, query, .. }) => Security::Bogus(format!("{query}: the proof of absence is {proof}")),
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            let authorities = nr.authorities.as_deref().unwrap_or_default();
            // The zone that answers for the name: its SOA, at or above the name.
            let apex = nr
                .soa
                .as_ref()
                .map(|soa| (soa.name.clone(), soa.proof))
                .or_else(|| authorities.iter().find(|r| r.record_type() == RecordType::SOA).map(|r| (r.name.clone(), r.proof)));
            let Some((apex, soa_proof)) = apex.filter(|(apex, _)| apex.zone_of(asked)) else {
                return Security::Bogus(format!("{asked}: a denial without the SOA of the name's zone"));
            };
            let proof: Vec<&Record> =
                authorities.iter().filter(|r| r.record_type() != RecordType::RRSIG && apex.zone_of(&r.name)).collect();
            let proven = proof.iter().any(|r| matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3));
            let soa = match soa_proof {
                Proof::Secure => Security::Secure,
                Proof::Insecure => Security::Insecure,
                other => Security::Bogus(format!("{apex} SOA: {other}")),
            };
            match worse(soa, judge(proof.iter().copied())) {
                Security::Secure if !proven => Security::Bogus(format!("{asked}: a signed denial without NSEC records")),
                verdict => verdict,
            }
        }
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

    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::dnssec::rdata::{DNSSECRData, NSEC};
    use hickory_resolver::proto::op::{Query, ResponseCode};
    use hickory_resolver::proto::rr::rdata::{A, SOA};

    fn name(n: &str) -> Name {
        Name::from_str(n).unwrap()
    }

    fn record(owner: &str, data: RData, proof: Proof) -> Record {
        let mut r = Record::from_rdata(name(owner), 60, data);
        r.proof = proof;
        r
    }

    fn a(proof: Proof) -> Record {
        record("mx.d.test.", RData::A(A([127, 0, 0, 1].into())), proof)
    }

    fn soa(owner: &str, proof: Proof) -> Record {
        let data = SOA::new(name("ns.d.test."), name("h.d.test."), 1, 1, 1, 1, 1);
        record(owner, RData::SOA(data), proof)
    }

    fn nsec(owner: &str, proof: Proof) -> Record {
        record(owner, RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(name("z.d.test."), [RecordType::A]))), proof)
    }

    /// A NODATA answer for `_25._tcp.mx.d.test.` TLSA with these authority records.
    fn denial(soa_record: Option<Record>, authorities: Vec<Record>) -> Security {
        let asked = name("_25._tcp.mx.d.test.");
        let mut nr = NoRecords::new(Query::query(asked.clone(), RecordType::TLSA), ResponseCode::NoError);
        nr.soa = soa_record.map(|r| {
            Box::new(
                r.map(|data| match data {
                    RData::SOA(soa) => Some(soa),
                    _ => None,
                })
                .unwrap(),
            )
        });
        nr.authorities = Some(authorities.into());
        judge_error(&NetError::Dns(DnsError::NoRecordsFound(nr)), &asked)
    }

    #[test]
    fn a_set_is_as_secure_as_its_least_secure_record() {
        assert_eq!(judge([a(Proof::Secure)].iter()), Security::Secure);
        assert_eq!(judge([a(Proof::Secure), a(Proof::Insecure)].iter()), Security::Insecure);
        assert!(matches!(judge([a(Proof::Secure), a(Proof::Bogus)].iter()), Security::Bogus(_)));
        assert!(matches!(judge([a(Proof::Indeterminate)].iter()), Security::Bogus(_)), "not validated is not insecure");
    }

    #[test]
    fn a_denial_is_secure_only_with_the_zones_signed_soa_and_nsec_proof() {
        let secure_soa = || Some(soa("d.test.", Proof::Secure));
        assert_eq!(denial(secure_soa(), vec![nsec("mx.d.test.", Proof::Secure)]), Security::Secure);
        assert!(matches!(denial(secure_soa(), vec![]), Security::Bogus(_)), "signed, but nothing proves the absence");
        assert!(matches!(denial(secure_soa(), vec![nsec("mx.d.test.", Proof::Bogus)]), Security::Bogus(_)));
        // A zone proven unsigned: its denial is insecure.
        assert_eq!(denial(Some(soa("d.test.", Proof::Insecure)), vec![]), Security::Insecure);
        // Records of another zone, really unsigned, do not speak for this name.
        let foreign = vec![soa("unsigned.example.", Proof::Insecure), nsec("unsigned.example.", Proof::Insecure)];
        assert!(matches!(denial(None, foreign.clone()), Security::Bogus(_)), "no SOA of the name's zone");
        assert!(matches!(denial(Some(soa("unsigned.example.", Proof::Insecure)), foreign), Security::Bogus(_)));
        // A secure SOA with an insecure foreign record beside it stays secure.
        let mixed = vec![nsec("mx.d.test.", Proof::Secure), soa("unsigned.example.", Proof::Insecure)];
        assert_eq!(denial(secure_soa(), mixed), Security::Secure);
    }

    #[test]
    fn failures_are_bogus_or_temporary() {
        let asked = name("d.test.");
        assert!(matches!(judge_error(&NetError::Dns(DnsError::DnssecBogus), &asked), Security::Bogus(_)));
        let timeout = NetError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(judge_error(&timeout, &asked), Security::Temporary(_)));
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
