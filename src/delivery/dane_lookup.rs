//! Which of a domain's MX hosts DANE authenticates (RFC 7672 2.2): only when the MX records
//! validate, and for each host only when its addresses do too, are its TLSA records looked
//! up; a host with usable ones is checked against them. A bogus or failed lookup on that path
//! makes the domain (for its MX records) or the host (for its TLSA records) unusable for now:
//! an attacker who can forge DNS answers must not be able to turn DANE off.

use std::sync::Arc;

use super::dane::{DaneAuth, Tlsa};
use super::route::Target;
use crate::config::IpFamily;
use crate::dns::dnssec::{SecureDns, Security, TlsaAnswer};
use crate::smtp::reply::{Enhanced, Reply};

/// Usable TLSA records kept per host: each is tried against every handshake's chain, and a
/// zone is free to publish hundreds.
const MAX_RECORDS: usize = 16;

/// The DNSSEC lookups `authenticate` needs; [`SecureDns`] in the product, a table in tests.
pub trait Validate: Sync {
    /// The verdict on the MX records, and their hosts (none: no MX records, implicit MX).
    fn mx(&self, domain: &str) -> impl Future<Output = (Security, Vec<String>)> + Send;
    fn addrs_security(&self, host: &str, family: IpFamily) -> impl Future<Output = Security> + Send;
    fn tlsa(&self, host: &str, port: u16) -> impl Future<Output = TlsaAnswer> + Send;
}

impl Validate for SecureDns {
    fn mx(&self, domain: &str) -> impl Future<Output = (Security, Vec<String>)> + Send {
        SecureDns::mx(self, domain)
    }
    fn addrs_security(&self, host: &str, family: IpFamily) -> impl Future<Output = Security> + Send {
        SecureDns::addrs_security(self, host, family)
    }
    fn tlsa(&self, host: &str, port: u16) -> impl Future<Output = TlsaAnswer> + Send {
        SecureDns::tlsa(self, host, port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneRoute {
    /// The MX records are not DNSSEC-signed: DANE does not apply.
    Unsigned(Vec<Target>),
    /// They validate: the targets, those of hosts with usable TLSA records carrying them; the
    /// hosts whose TLSA lookup failed are left out, and named with why.
    Signed { targets: Vec<Target>, left_out: Vec<(String, String)> },
    /// Nothing can be sent now.
    Defer(Reply),
}

impl DaneRoute {
    /// Whether any host is authenticated by DANE.
    pub fn applies(&self) -> bool {
        matches!(self, DaneRoute::Signed { targets, .. } if targets.iter().any(|t| t.dane.is_some()))
    }
}

/// The targets routing found for `domain` by its MX records, under DANE.
pub async fn authenticate(dns: &impl Validate, domain: &str, mut targets: Vec<Target>, family: IpFamily) -> DaneRoute {
    let validated = match dns.mx(domain).await {
        (Security::Secure, hosts) => hosts,
        (Security::Insecure, _) => return DaneRoute::Unsigned(targets),
        (Security::Bogus(why), _) => {
            let text = format!("DNSSEC validation of the MX records of {domain} failed: {why}");
            return DaneRoute::Defer(Reply::new(451, Enhanced(4, 7, 5), text));
        }
        (Security::Temporary(why), _) => {
            let text = format!("DNSSEC-validated MX lookup of {domain} failed: {why}");
            return DaneRoute::Defer(Reply::new(451, Enhanced(4, 4, 3), text));
        }
    };
    // Routing asked another resolver: only the hosts the validated answer names may go on
    // (an attacker could answer that resolver's questions and not this one's).
    let allowed = |host: &str| match validated.is_empty() {
        true => host.eq_ignore_ascii_case(domain),
        false => validated.iter().any(|v| v.eq_ignore_ascii_case(host)),
    };
    let found = targets.len();
    targets.retain(|t| allowed(&t.host));
    if targets.is_empty() && found > 0 {
        let text = format!("the MX hosts of {domain} found are not those its DNSSEC-validated MX records name");
        return DaneRoute::Defer(Reply::new(451, Enhanced(4, 7, 5), text));
    }
    let mut hosts: Vec<(String, u16)> = Vec::new();
    for t in &targets {
        if !hosts.iter().any(|(h, p)| *h == t.host && *p == t.addr.port()) {
            hosts.push((t.host.clone(), t.addr.port()));
        }
    }
    let mut left_out = Vec::new();
    for (host, port) in hosts {
        let records: Option<Arc<DaneAuth>> = match dns.addrs_security(&host, family).await {
            // Unsigned addresses: DANE does not apply to the host (RFC 7672 2.2.2).
            Security::Insecure => None,
            // Forged or unanswered: the host cannot be used now, or an attacker who drops
            // the one answer would turn DANE off for it.
            Security::Bogus(why) | Security::Temporary(why) => {
                targets.retain(|t| !(t.host == host && t.addr.port() == port));
                left_out.push((host, format!("its addresses: {why}")));
                continue;
            }
            Security::Secure => match dns.tlsa(&host, port).await {
                TlsaAnswer::Records(records) => {
                    let mut usable: Vec<Tlsa> = records.into_iter().filter(Tlsa::usable).collect();
                    if usable.len() > MAX_RECORDS {
                        tracing::warn!(
                            host,
                            records = usable.len(),
                            "more usable TLSA records than are kept; the first {MAX_RECORDS} are tried"
                        );
                        usable.truncate(MAX_RECORDS);
                    }
                    // A set with nothing usable is as if there were none (RFC 7672 2.2).
                    (!usable.is_empty()).then(|| Arc::new(DaneAuth { records: usable, domain: domain.to_string() }))
                }
                TlsaAnswer::None => None,
                TlsaAnswer::Failed(why) => {
                    targets.retain(|t| !(t.host == host && t.addr.port() == port));
                    left_out.push((host, why));
                    continue;
                }
            },
        };
        for t in targets.iter_mut().filter(|t| t.host == host && t.addr.port() == port) {
            t.dane = records.clone();
        }
    }
    if targets.is_empty() {
        let why: Vec<String> = left_out.iter().map(|(host, why)| format!("{host}: {why}")).collect();
        let text = format!("DNSSEC-validated lookups failed for every MX host of {domain} ({})", why.join("; "));
        return DaneRoute::Defer(Reply::new(451, Enhanced(4, 7, 5), text));
    }
    DaneRoute::Signed { targets, left_out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A lookup the table does not list is a test mistake, not an answer.
    #[derive(Default)]
    struct Table {
        mx: HashMap<String, (Security, Vec<String>)>,
        addrs: HashMap<String, Security>,
        tlsa: HashMap<String, TlsaAnswer>,
    }

    impl Validate for Table {
        async fn mx(&self, domain: &str) -> (Security, Vec<String>) {
            self.mx.get(domain).cloned().unwrap_or_else(|| panic!("MX {domain} looked up"))
        }
        async fn addrs_security(&self, host: &str, _: IpFamily) -> Security {
            self.addrs.get(host).cloned().unwrap_or_else(|| panic!("addresses of {host} looked up"))
        }
        async fn tlsa(&self, host: &str, port: u16) -> TlsaAnswer {
            let name = format!("_{port}._tcp.{host}");
            self.tlsa.get(&name).cloned().unwrap_or_else(|| panic!("TLSA {name} looked up"))
        }
    }

    fn ee() -> Tlsa {
        Tlsa { usage: 3, selector: 1, matching: 1, data: vec![7; 32] }
    }

    fn targets() -> Vec<Target> {
        vec![Target::new("mx1.d.test", ([127, 0, 0, 1], 25).into()), Target::new("mx2.d.test", ([127, 0, 0, 2], 25).into())]
    }

    fn run(table: &Table) -> DaneRoute {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(authenticate(table, "d.test", targets(), IpFamily::Any))
    }

    fn signed(table: &mut Table) {
        table.mx.insert("d.test".into(), (Security::Secure, vec!["mx1.d.test".into(), "mx2.d.test".into()]));
        table.addrs.insert("mx1.d.test".into(), Security::Secure);
        table.addrs.insert("mx2.d.test".into(), Security::Secure);
        table.tlsa.insert("_25._tcp.mx1.d.test".into(), TlsaAnswer::None);
        table.tlsa.insert("_25._tcp.mx2.d.test".into(), TlsaAnswer::None);
    }

    #[test]
    fn unsigned_mx_records_leave_the_targets_alone() {
        let mut table = Table::default();
        table.mx.insert("d.test".into(), (Security::Insecure, vec!["mx1.d.test".into()]));
        assert_eq!(run(&table), DaneRoute::Unsigned(targets()), "TLSA records are not even looked at (the table would panic)");
    }

    #[test]
    fn hosts_with_usable_records_carry_them_and_the_others_stay_as_they_were() {
        let mut table = Table::default();
        signed(&mut table);
        let unusable = Tlsa { usage: 1, selector: 1, matching: 1, data: vec![7; 32] };
        table.tlsa.insert("_25._tcp.mx1.d.test".into(), TlsaAnswer::Records(vec![ee(), unusable.clone()]));
        table.tlsa.insert("_25._tcp.mx2.d.test".into(), TlsaAnswer::Records(vec![unusable]));
        let route = run(&table);
        assert!(route.applies());
        let DaneRoute::Signed { targets, left_out } = route else { panic!() };
        assert_eq!(targets[0].dane.as_ref().map(|d| &d.records), Some(&vec![ee()]), "the unusable record is dropped");
        assert_eq!(targets[0].dane.as_ref().map(|d| d.domain.as_str()), Some("d.test"));
        assert_eq!(targets[1].dane, None, "a set with nothing usable is as if there were none");
        assert!(left_out.is_empty());
    }

    #[test]
    fn a_host_keeps_a_bounded_number_of_records() {
        let mut table = Table::default();
        signed(&mut table);
        let many: Vec<Tlsa> = (0..500).map(|i| Tlsa { data: vec![(i % 256) as u8; 32], ..ee() }).collect();
        table.tlsa.insert("_25._tcp.mx1.d.test".into(), TlsaAnswer::Records(many));
        let DaneRoute::Signed { targets, .. } = run(&table) else { panic!() };
        assert_eq!(targets[0].dane.as_ref().map(|d| d.records.len()), Some(MAX_RECORDS));
    }

    #[test]
    fn addresses_that_do_not_validate_keep_their_tlsa_records_unread() {
        let mut table = Table::default();
        signed(&mut table);
        table.addrs.insert("mx1.d.test".into(), Security::Insecure);
        table.tlsa.insert("_25._tcp.mx1.d.test".into(), TlsaAnswer::Records(vec![ee()]));
        let route = run(&table);
        assert!(!route.applies(), "{route:?}");
    }

    #[test]
    fn hosts_the_validated_mx_records_do_not_name_are_left_out() {
        let mut table = Table::default();
        signed(&mut table);
        table.mx.insert("d.test".into(), (Security::Secure, vec!["MX2.d.test".into()]));
        let DaneRoute::Signed { targets, .. } = run(&table) else { panic!() };
        assert_eq!(targets.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(), ["mx2.d.test"]);
        table.mx.insert("d.test".into(), (Security::Secure, vec!["mx.attacker.test".into()]));
        let DaneRoute::Defer(reply) = run(&table) else { panic!() };
        assert!(reply.lines[0].contains("not those its DNSSEC-validated MX records name"), "{reply:?}");
        // No MX records (validated): only the domain itself is its host.
        table.mx.insert("d.test".into(), (Security::Secure, vec![]));
        assert!(matches!(run(&table), DaneRoute::Defer(_)));
    }

    #[test]
    fn addresses_that_are_bogus_or_unanswered_leave_the_host_out() {
        let mut table = Table::default();
        signed(&mut table);
        table.addrs.insert("mx1.d.test".into(), Security::Bogus("forged".into()));
        table.addrs.insert("mx2.d.test".into(), Security::Temporary("timeout".into()));
        let DaneRoute::Defer(reply) = run(&table) else { panic!("a dropped answer must not turn DANE off") };
        assert!(reply.lines[0].contains("mx1.d.test: its addresses: forged"), "{reply:?}");
    }

    #[test]
    fn a_failed_tlsa_lookup_leaves_the_host_out_and_all_failed_defers() {
        let mut table = Table::default();
        signed(&mut table);
        table.tlsa.insert("_25._tcp.mx1.d.test".into(), TlsaAnswer::Failed("bogus".into()));
        let DaneRoute::Signed { targets, left_out } = run(&table) else { panic!() };
        assert_eq!(targets.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(), ["mx2.d.test"]);
        assert_eq!(left_out, [("mx1.d.test".to_string(), "bogus".to_string())]);
        table.tlsa.insert("_25._tcp.mx2.d.test".into(), TlsaAnswer::Failed("timeout".into()));
        let DaneRoute::Defer(reply) = run(&table) else { panic!() };
        assert_eq!((reply.code, reply.enhanced), (451, Some(Enhanced(4, 7, 5))));
        assert!(reply.lines[0].contains("mx1.d.test: bogus") && reply.lines[0].contains("mx2.d.test: timeout"), "{reply:?}");
    }

    #[test]
    fn bogus_or_unanswered_mx_records_defer() {
        let mut table = Table::default();
        table.mx.insert("d.test".into(), (Security::Bogus("bad signature".into()), vec![]));
        let DaneRoute::Defer(reply) = run(&table) else { panic!() };
        assert_eq!(reply.enhanced, Some(Enhanced(4, 7, 5)));
        table.mx.insert("d.test".into(), (Security::Temporary("timeout".into()), vec![]));
        let DaneRoute::Defer(reply) = run(&table) else { panic!() };
        assert_eq!(reply.enhanced, Some(Enhanced(4, 4, 3)));
    }
}
