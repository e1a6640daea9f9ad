//! An authoritative DNS server on loopback (hickory-server with a table as its zone), so
//! delivery tests never touch the system resolver. Names listed as SERVFAIL answer that to MX.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, MX, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

#[derive(Default, Clone)]
pub struct Zone {
    pub mx: HashMap<String, Vec<(u16, String)>>,
    pub a: HashMap<String, Vec<Ipv4Addr>>,
    pub servfail: HashSet<String>,
    /// Names whose TXT queries get SERVFAIL.
    pub servfail_txt: HashSet<String>,
    /// name -> target: every query for the name is answered with this CNAME alone.
    pub cname: HashMap<String, String>,
    /// name -> TXT records, each one text (split into strings of 255 octets when served).
    pub txt: HashMap<String, Vec<String>>,
}

impl Zone {
    pub fn mx(mut self, domain: &str, records: &[(u16, &str)]) -> Self {
        self.mx.insert(domain.into(), records.iter().map(|(p, h)| (*p, h.to_string())).collect());
        self
    }
    pub fn a(mut self, host: &str, ip: &str) -> Self {
        self.a.entry(host.into()).or_default().push(ip.parse().unwrap());
        self
    }
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.cname.insert(name.into(), target.into());
        self
    }
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.txt.entry(name.to_ascii_lowercase()).or_default().push(text.into());
        self
    }
    pub fn servfail_txt(mut self, name: &str) -> Self {
        self.servfail_txt.insert(name.into());
        self
    }
    pub fn servfail(mut self, domain: &str) -> Self {
        self.servfail.insert(domain.into());
        self
    }
}

struct Handler(Arc<std::sync::RwLock<Zone>>);

fn name(n: &str) -> Name {
    let mut name = Name::from_utf8(n).unwrap();
    name.set_fqdn(true);
    name
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let info = request.request_info().expect("one query");
        let qname = info.query.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let qtype = info.query.query_type();
        // A copy, so no lock is held across the send; a test may replace the zone meanwhile.
        let zone = &self.0.read().unwrap().clone();
        let builder = MessageResponseBuilder::from_message_request(request);
        // SERVFAIL for MX only: an A record is there, so a resolver that fell back to it would
        // be caught delivering.
        if (qtype == RecordType::MX && zone.servfail.contains(&qname)) || (qtype == RecordType::TXT && zone.servfail_txt.contains(&qname)) {
            let msg = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            return response.send_response(msg).await.expect("send");
        }
        let exists =
            zone.mx.contains_key(&qname) || zone.a.contains_key(&qname) || zone.cname.contains_key(&qname) || zone.txt.contains_key(&qname);
        let mut records = Vec::new();
        if let Some(target) = zone.cname.get(&qname) {
            records.push(Record::from_rdata(name(&qname), 60, RData::CNAME(CNAME(name(target)))));
        }
        match qtype {
            _ if zone.cname.contains_key(&qname) => {}
            RecordType::MX => {
                for (pref, host) in zone.mx.get(&qname).into_iter().flatten() {
                    records.push(Record::from_rdata(name(&qname), 60, RData::MX(MX::new(*pref, name(host)))));
                }
            }
            RecordType::TXT => {
                for text in zone.txt.get(&qname).into_iter().flatten() {
                    let strings = text.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
                    // A short TTL: tests change TXT records (an MTA-STS id) while a relay runs.
                    records.push(Record::from_rdata(name(&qname), 1, RData::TXT(TXT::new(strings))));
                }
            }
            RecordType::A => {
                for ip in zone.a.get(&qname).into_iter().flatten() {
                    records.push(Record::from_rdata(name(&qname), 60, RData::A(A(*ip))));
                }
            }
            _ => {}
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = if exists { ResponseCode::NoError } else { ResponseCode::NXDomain };
        let msg = builder.build(metadata, records.iter(), [], [], []);
        response.send_response(msg).await.expect("send")
    }
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<std::sync::RwLock<Zone>>,
}

impl TestDns {
    /// Serves `zone` on a UDP port of 127.0.0.1 from a thread of its own until the process ends.
    pub fn start(zone: Zone) -> TestDns {
        let (tx, rx) = std::sync::mpsc::channel();
        let zone = Arc::new(std::sync::RwLock::new(zone));
        let served = zone.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                tx.send(socket.local_addr().unwrap()).unwrap();
                let mut server = hickory_server::Server::new(Handler(served));
                server.register_socket(socket);
                let _ = server.block_until_done().await;
            });
        });
        TestDns { addr: rx.recv().unwrap(), zone }
    }

    /// Serves `zone` from now on (answers already cached by a resolver stay for their TTL).
    pub fn replace(&self, zone: Zone) {
        *self.zone.write().unwrap() = zone;
    }

    pub fn config(&self) -> String {
        format!("dns: {{ nameservers: [\"{}\"], timeout: 2s }}\n", self.addr)
    }
}
