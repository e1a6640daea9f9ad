//! A DNSSEC-signed authoritative server on loopback: hickory-server's in-memory zones, each
//! signed with an Ed25519 key of its own (NSEC for denials), on UDP and TCP. The trust anchors
//! a relay needs are written out as DNSKEY lines; a zone marked `Mistrusted` is signed with
//! one key and anchored at another, so every answer from it is bogus; an `Unsigned` one is
//! outside every anchor.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::dnssec::NxProofKind;
use hickory_server::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_server::proto::dnssec::rdata::DNSKEY;
use hickory_server::proto::dnssec::{DnssecSigner, SigningKey};
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, MX, NS, SOA, TLSA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Signed, its key among the anchors.
    Trusted,
    /// Signed, but anchored at another key: bogus.
    Mistrusted,
    /// Not signed, and under no anchor.
    Unsigned,
}

pub struct SignedZone {
    origin: String,
    signing: Signing,
    records: Vec<(String, RData)>,
}

fn name(n: &str) -> Name {
    Name::from_str(&format!("{}.", n.trim_end_matches('.'))).unwrap()
}

impl SignedZone {
    pub fn new(origin: &str, signing: Signing) -> SignedZone {
        SignedZone { origin: origin.into(), signing, records: Vec::new() }
    }
    pub fn mx(mut self, domain: &str, preference: u16, host: &str) -> Self {
        self.records.push((domain.into(), RData::MX(MX::new(preference, name(host)))));
        self
    }
    pub fn a(mut self, host: &str, ip: &str) -> Self {
        self.records.push((host.into(), RData::A(A(ip.parse::<Ipv4Addr>().unwrap()))));
        self
    }
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.records.push((name.into(), RData::TXT(TXT::new(vec![text.into()]))));
        self
    }
    /// A TLSA record at `_PORT._tcp.HOST`.
    pub fn tlsa(mut self, host: &str, port: u16, (usage, selector, matching): (u8, u8, u8), data: &[u8]) -> Self {
        let rdata = TLSA::new(CertUsage::from(usage), Selector::from(selector), Matching::from(matching), data.to_vec());
        self.records.push((format!("_{port}._tcp.{host}"), RData::TLSA(rdata)));
        self
    }
}

pub struct SignedDns {
    pub addr: SocketAddr,
    /// One DNSKEY line per signed zone.
    anchors: String,
}

fn key() -> Ed25519SigningKey {
    Ed25519SigningKey::from_pkcs8(&Ed25519SigningKey::generate_pkcs8().unwrap()).unwrap()
}

fn handler(zone: &SignedZone) -> (InMemoryZoneHandler, Option<DNSKEY>) {
    let origin = name(&zone.origin);
    let proof = (zone.signing != Signing::Unsigned).then_some(NxProofKind::Nsec);
    let mut handler = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny, proof);
    let ns = name(&format!("ns.{}", zone.origin));
    let soa = SOA::new(ns.clone(), name(&format!("hostmaster.{}", zone.origin)), 1, 3600, 600, 86_400, 60);
    handler.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    handler.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::NS(NS(ns.clone()))), 1);
    handler.upsert_mut(Record::from_rdata(ns, 60, RData::A(A(Ipv4Addr::LOCALHOST))), 1);
    for (owner, rdata) in &zone.records {
        handler.upsert_mut(Record::from_rdata(name(owner), 60, rdata.clone()), 1);
    }
    if zone.signing == Signing::Unsigned {
        return (handler, None);
    }
    let signing = key();
    let dnskey = DNSKEY::from_key(&signing.to_public_key().unwrap());
    let signer = DnssecSigner::new(dnskey.clone(), Box::new(signing), origin, Duration::from_secs(86_400));
    handler.add_zone_signing_key_mut(signer).unwrap();
    handler.secure_zone_mut().unwrap();
    let anchored = match zone.signing {
        Signing::Mistrusted => DNSKEY::from_key(&key().to_public_key().unwrap()),
        _ => dnskey,
    };
    (handler, Some(anchored))
}

impl SignedDns {
    /// Serves `zones` on 127.0.0.1 (UDP and TCP, one port) from a thread of its own.
    pub fn start(zones: Vec<SignedZone>) -> SignedDns {
        let mut catalog = Catalog::new();
        let mut anchors = String::new();
        for zone in &zones {
            let (handler, anchor) = handler(zone);
            if let Some(dnskey) = anchor {
                anchors.push_str(&format!("{}. 3600 IN DNSKEY {dnskey}\n", zone.origin.trim_end_matches('.')));
            }
            catalog.upsert(LowerName::new(&name(&zone.origin)), vec![Arc::new(handler)]);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = tcp.local_addr().unwrap();
                let udp = tokio::net::UdpSocket::bind(addr).await.unwrap();
                tx.send(addr).unwrap();
                let mut server = hickory_server::Server::new(catalog);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 64);
                let _ = server.block_until_done().await;
            });
        });
        SignedDns { addr: rx.recv().unwrap(), anchors }
    }

    /// Writes the trust anchors (a DNSKEY line per signed zone) to `path`.
    pub fn write_anchors(&self, path: &Path) {
        std::fs::write(path, &self.anchors).unwrap();
    }

    pub fn config(&self) -> String {
        format!("dns: {{ nameservers: [\"{}\"], timeout: 2s }}\n", self.addr)
    }
}
